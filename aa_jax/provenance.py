"""Which code a run ran, as its ``result.json`` records it (``code``).

The package's version, and where the package sits in a git checkout: the commit, the ids
of the ``aa_jax/`` tree and of ``uv.lock`` at that commit (two runs with the same ids ran
the same library and dependencies, whatever else the commits between them changed, such
as results a sweep committed), and whether the working tree was clean. A tree is clean
when ``git status`` lists nothing outside ``experiments/results/``, where sweeps write
while they run; otherwise the changed paths are listed.

The record is taken once per process, at its first call: the modules a process imported
are the code it runs, even if the checkout changes later.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from aa_jax import __version__

ROOT = Path(__file__).resolve().parent.parent
# Paths a sweep writes while it runs; changes there are results, not code.
NOT_CODE = ("experiments/results", "docs/results.md")
# Paths whose content decides what a run computes: the library and its locked dependencies.
CODE_PATHS = ("aa_jax", "uv.lock")
MAX_LISTED = 20


def git(*args: str, cwd: Path = ROOT) -> str:
    """``git args`` in ``cwd`` (hooks and the file-system monitor off), its output without trailing space;
    raises CalledProcessError or OSError."""
    return subprocess.run(["git", "-c", "core.fsmonitor=false", *args], cwd=cwd, check=True,
                          capture_output=True, text=True, timeout=60).stdout.rstrip()


@functools.cache
def code_record() -> dict:
    """``{"version", "commit", "tree", "clean"[, "changed"]}`` of this process's code; only
    ``version`` outside a git checkout (an installed package), and ``git_error`` beside it
    where git could not tell (no commit yet, git missing or timing out)."""
    return checkout_record(ROOT)


def checkout_record(root: Path) -> dict:
    """:func:`code_record` of the checkout at ``root``, taken now."""
    record: dict = {"version": f"aa_jax {__version__}"}
    if not (root / ".git").exists() or not (root / "aa_jax").is_dir():
        return record
    try:
        commit = git("rev-parse", "HEAD", cwd=root)
        status = git("status", "--porcelain=v1", "--untracked-files=normal", "--", ".",
                     *(f":(exclude){p}" for p in NOT_CODE), cwd=root)
    except (OSError, subprocess.SubprocessError) as e:
        stderr = getattr(e, "stderr", None) or str(e)
        return {**record, "git_error": " ".join(str(stderr).split())[:200]}
    tree = {}
    for path in CODE_PATHS:
        try:  # an untracked path has no id at the commit: it shows as a change below
            tree[path] = git("rev-parse", f"HEAD:{path}", cwd=root)
        except (OSError, subprocess.SubprocessError):
            pass
    changed = sorted({line[3:] for line in status.splitlines() if line.strip()})
    record.update(commit=commit, tree=tree, clean=not changed)
    if changed:
        record["changed"] = changed[:MAX_LISTED] + (
            [f"... and {len(changed) - MAX_LISTED} more"] if len(changed) > MAX_LISTED else [])
    return record


def describe(code) -> str:
    """One line for a recorded ``code`` (a record, or the plain string of aa_jax 0.4 and
    earlier)."""
    if not isinstance(code, dict):
        return str(code)
    text = str(code.get("version", "aa_jax ?"))
    if code.get("commit"):
        text += f" at {str(code['commit'])[:12]}"
        if code.get("clean") is False:
            text += " with uncommitted changes"
    if code.get("protocol"):
        text += f", {code['protocol']}"
    return text
