"""The README's "In Python" example runs as written."""

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
    assert capsys.readouterr().out.splitlines()[0] == "(1, 2)"
    result = namespace["result"]
    # Three epochs of AA on SST-2 score above the majority class on its test set.
    assert result["test"]["accuracy"] > result["majority"]["accuracy"]
    assert (tmp_path / "runs" / "python-example" / "result.json").is_file()
