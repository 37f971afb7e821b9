"""mkdocs hooks (``hooks`` in mkdocs.yml); not a page of the site.

* The sweeps' figures stay beside their results (``experiments/results/<sweep>/figures``);
  they are added to the site as ``figures/<sweep>/<name>.png``, so that pages can show them
  and a missing one fails the strict build like any broken link.
* The API reference's table of the names ``aa_jax`` exports is made from ``_EXPORTS`` in
  ``aa_jax/__init__.py`` at every build, with each name's first docstring line, so that it
  cannot fall behind; a name whose module no API page documents fails the strict build.
* Docstrings name objects with Sphinx roles (:func:`train`); mkdocstrings renders the
  role's name as text before the code, which the reader does not need.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parents[1]
SWEEPS_WITH_FIGURES = ("paper_v2", "paper")
EXPORTS_MARKER = "<!-- the names aa_jax exports -->"

# Constants have no docstring; what the table says of them.
CONSTANTS = {
    "METHODS": "The methods, by name (`--method`).",
    "KINDS": "The adapter kinds, by name (`--adapter`).",
    "FAMILIES": "The model families, by their checkpoints' `model_type`.",
    "SELECTORS": "How switched layers are gated, by name (`gumbel`, `topk`).",
    "PROTOCOLS": "The learning rates of `--protocol`, by name.",
}

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|exc|const):"
                   r"<code>([^<]*)</code>")


def on_files(files, config):
    for sweep in SWEEPS_WITH_FIGURES:
        for png in sorted((REPO / "experiments" / "results" / sweep / "figures").glob("*.png")):
            files.append(File.generated(config, f"figures/{sweep}/{png.name}",
                                        abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    if EXPORTS_MARKER in markdown:
        markdown = markdown.replace(EXPORTS_MARKER, exports_table())
    return markdown


def on_page_content(html, page, config, files):
    return _ROLE.sub(_code, html)


def _code(match: re.Match) -> str:
    name = match.group(1)
    if name.startswith("~"):  # Sphinx: show the last component only
        name = name[1:].rsplit(".", 1)[-1]
    return f"<code>{name}</code>"


# -- the exported names -----------------------------------------------------------------

def exports() -> dict[str, str]:
    """``_EXPORTS`` of ``aa_jax/__init__.py``: name -> module, read without importing."""
    tree = ast.parse((REPO / "aa_jax" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError("aa_jax/__init__.py has no _EXPORTS")


def _module_file(module: str) -> Path:
    path = REPO.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def definition(module: str, name: str, hops: int = 3) -> tuple[str, str]:
    """Where ``name`` of ``module`` is defined (following ``from x import name``), and the
    first line of its docstring ("" for a constant, which has none)."""
    tree = ast.parse(_module_file(module).read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                and node.name == name:
            return module, _summary(ast.get_docstring(node) or "")
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return module, ""
        if isinstance(node, ast.ImportFrom) and node.module and hops and any(
                a.name == name and a.asname is None for a in node.names):
            return definition(node.module, name, hops - 1)
    return module, ""


def _summary(docstring: str) -> str:
    """The docstring's first sentence, at most about 160 characters, as Markdown text."""
    paragraph = " ".join(docstring.split("\n\n")[0].split())
    paragraph = paragraph.replace("e.g. ", "e.g.\0").replace("i.e. ", "i.e.\0")
    end = re.search(r"\.(\s+(?=[A-Z(`])|$)", paragraph)
    text = (paragraph[:end.start() + 1] if end else paragraph).replace("\0", " ")
    if len(text) > 160:
        text = text[:160].rsplit(" ", 1)[0]
        while text.count("`") % 2:  # not in the middle of a code span
            text = text[:text.rindex("`")].rstrip("`")
        text = text.rstrip() + " …"
    return text.replace("|", "\\|").replace("<", "&lt;")


def exports_table() -> str:
    rows = ["| name | what | module |", "|---|---|---|"]
    for name, module in exports().items():
        where, summary = definition(module, name)
        # Constants have no docstring, so mkdocstrings renders no entry: link the module.
        target = f"{where}.{name}" if summary else module
        summary = summary or CONSTANTS.get(name, "")
        rows.append(f"| [`{name}`][{target}] | {summary} | `{module}` |")
    return "\n".join(rows)
