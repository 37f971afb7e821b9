"""The README's "In Python" example runs as written."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_in_python_example_runs_and_learns(glue_dir, tmp_path, monkeypatch, capsys):
    text = (REPO / "README.md").read_text()
    section = text[text.index("## In Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace('"../shared/glue"', repr(str(glue_dir)))
    monkeypatch.chdir(tmp_path)  # its run directory goes under runs/ here
    namespace: dict = {}
    exec(compile(code, "README.md (In Python)", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == ["mean", "(1, 2)"]
    result = namespace["result"]
    # Five epochs of AA on SST-2 score above the majority class on its test set.
    assert result["test"]["accuracy"] > result["majority"]["accuracy"]
    assert (tmp_path / "runs" / "python-example" / "result.json").is_file()
    # The shared folder predicts with the run's labels, one prediction per text.
    predictions = ast.literal_eval(printed[-1])
    assert [sorted(p["probabilities"]) for p in predictions] == [["negative", "positive"]] * 2
    assert all(p["label"] in ("negative", "positive") for p in predictions)
    assert (tmp_path / "exports" / "python-example" / "adapters.safetensors").is_file()
