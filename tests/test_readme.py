"""The README and the documentation pages: their examples run as written, the README stays
short and its links land, and what they quote agrees."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"


def python_block(path: Path, heading: str) -> str:
    """The first ```python block after ``heading`` in ``path``."""
    text = path.read_text()
    section = text[text.index(f"\n{heading}\n"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_in_python_example_runs_and_learns(glue_dir, tmp_path, monkeypatch, capsys):
    code = python_block(README, "## In Python")
    code = code.replace('"../shared/glue"', repr(str(glue_dir)))
    monkeypatch.chdir(tmp_path)  # its run directory goes under runs/ here
    namespace: dict = {}
    exec(compile(code, "README.md (In Python)", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    result = namespace["result"]
    # Five epochs of AA on SST-2 score above the majority class on its test set.
    assert result["test"]["accuracy"] > result["majority"]["accuracy"]
    assert (tmp_path / "runs" / "python-example" / "result.json").is_file()
    # The shared folder predicts with the run's labels, one prediction per text.
    predictions = ast.literal_eval(printed[-1])
    assert [sorted(p["probabilities"]) for p in predictions] == [["negative", "positive"]] * 2
    assert all(p["label"] in ("negative", "positive") for p in predictions)
    assert (tmp_path / "exports" / "python-example" / "adapters.safetensors").is_file()


@pytest.mark.slow
def test_the_python_api_pages_model_example_runs(capsys):
    code = python_block(DOCS / "python-api.md", "## Building the model yourself")
    exec(compile(code, "docs/python-api.md (Building the model yourself)", "exec"), {})
    assert capsys.readouterr().out.splitlines() == ["mean", "(1, 2)"]


def test_the_python_api_page_includes_the_readme_example_and_the_tutorial():
    page = (DOCS / "python-api.md").read_text()
    assert '--8<-- "README.md:python-example"' in page
    assert '--8<-- "docs/tutorial.py"' in page and (DOCS / "tutorial.py").is_file()
    readme = README.read_text()
    start, end = readme.index("[start:python-example]"), readme.index("[end:python-example]")
    assert "```python" in readme[start:end]  # the section the page includes is the example


def test_the_readme_is_short():
    assert len(README.read_text().splitlines()) <= 300


def slugs(path: Path) -> set[str]:
    """The anchors mkdocs gives the headings of ``path`` (its toc's slugify)."""
    from markdown.extensions.toc import slugify

    found: set[str] = set()
    fenced = False
    for line in path.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("#"):
            slug = slugify(line.lstrip("#").strip().replace("`", ""), "-")
            n = 0
            while (slug if n == 0 else f"{slug}_{n}") in found:
                n += 1
            found.add(slug if n == 0 else f"{slug}_{n}")
    return found


def test_the_readmes_links_into_the_docs_land():
    links = re.findall(r"\]\(((?:docs/)[^)#]*)(#[^)]*)?\)", README.read_text())
    assert links
    for target, anchor in links:
        assert (REPO / target).is_file(), target
        if anchor:
            assert anchor[1:] in slugs(REPO / target), f"{target}{anchor}"


def test_the_main_jobs_printed_lines_agree_between_readme_and_quickstart():
    def printed(path: Path) -> list[str]:
        return [line for line in path.read_text().splitlines()
                if line.startswith(("sst2 aa (minilm", "selected layers: [1, 3]"))]

    assert printed(README) == printed(DOCS / "quickstart.md")
    assert len(printed(README)) == 2 and "test accuracy 0.6583" in printed(README)[0]


def test_user_documentation_quotes_no_commit_hashes():
    for path in [README, *DOCS.rglob("*.md")]:
        hashes = re.findall(r"`([0-9a-f]{7,40})`", path.read_text())
        assert not [h for h in hashes if re.search(r"[a-f]", h) and re.search(r"\d", h)], path
