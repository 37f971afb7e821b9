"""A sweep's committed result records: reading them (a damaged one is named, never taken
for an unfinished run), their scores, and how and where each run computed, which decides
whether runs may be pooled in one cell."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

from aa_jax.errors import UserError
from aa_jax.provenance import CODE_PATHS, describe, git
from experiments.grid import RESULTS, Sweep, run_name


# -- reading ----------------------------------------------------------------------------

def read_results(sweep: Sweep) -> tuple[dict, dict]:
    """The finished results and the failure records of a sweep's points, by run name.

    The runner writes every file whole, so a result.json (or failed.json) that does not
    read is damaged: it is named, never counted as an unfinished run."""
    done, failed = {}, {}
    for p in sweep.points:
        d = sweep.result_dir(p)
        if (d / "result.json").exists():
            done[run_name(p)] = read_record(d / "result.json", "test")
        elif (d / "failed.json").exists():
            failed[run_name(p)] = read_record(d / "failed.json", "error")
    return done, failed


def read_record(path: Path, key: str) -> dict:
    """A result.json or failed.json: a JSON object with ``key``, or one sentence naming it."""
    try:
        record = json.loads(path.read_text())
        problem = None if isinstance(record, dict) and key in record else f"no {key!r} entry"
    except (OSError, ValueError, RecursionError) as e:
        problem = str(e).split(":")[0] if isinstance(e, ValueError) else (e.strerror or str(e))
    if problem is not None:
        raise UserError(f"{path} is damaged ({problem}); restore it with git checkout -- "
                        f"{path}, or delete {path.parent} so that the sweep runs it again.")
    return record


def majority_scores() -> dict[str, dict]:
    """The majority-class test score of each task, from any result that records it (every
    run of a task has the same test set)."""
    out: dict[str, dict] = {}
    for f in sorted(RESULTS.glob("*/*/result.json")):
        if f.parent.name.startswith("."):  # a run being published
            continue
        r = read_record(f, "test")
        if "majority" in r:
            out.setdefault(r["task"], r["majority"])
    return out


def score(r: dict, split: str = "test") -> float:
    return r[split][r["select_metric"]]


# -- how the runs computed --------------------------------------------------------------

def where_run(done: dict) -> str:
    """Which devices the finished runs trained on, and how many trained as seeds together
    (results written before the device was recorded ran on a CPU, one seed at a time)."""
    if not done:
        return ""
    devices: dict[str, list[dict]] = {}
    for r in done.values():
        backend, _, kind = r.get("device", "cpu").partition(": ")
        name = backend if kind in ("", backend) else f"{backend} ({kind})"
        devices.setdefault(name, []).append(r)
    together = sum(len(r.get("seeds_together") or []) > 1 for r in done.values())
    return ("Trained on " + ", ".join(
                f"{d}: {len(rs)} runs" + (cpu_counts(rs) if d.startswith("cpu") else "")
                for d, rs in sorted(devices.items()))
            + (f" ({together} of them with other seeds as one vmapped program)"
               if together else "") + ". ")


def cpu_counts(runs: list[dict]) -> str:
    """How many CPUs a device's runs could use, where any recorded it (``cpus``): on a CPU,
    a product split among fewer threads rounds differently. Empty where none did."""
    cpus: dict[int | None, int] = {}
    for r in runs:
        cpus[r.get("cpus")] = cpus.get(r.get("cpus"), 0) + 1
    if not set(cpus) - {None}:
        return ""
    parts = [f"{n} on {c} CPU{'s' if c != 1 else ''}" for c, n in sorted(
        (c, n) for c, n in cpus.items() if c is not None)]
    if None in cpus:
        parts.append(f"{cpus[None]} with no CPU count recorded")
    return " (" + ", ".join(parts) + ")"


def variant(r: dict) -> str:
    """How a run computed, as far as it changes the numbers: its matmul precision (the
    device's own where it is ``default``: float32 on a CPU, TF32 on a recent GPU), the
    code version and the sweep's protocol, and whether the tree had uncommitted changes
    (the commit itself is checked apart: :func:`check_commits`). Results written before
    these were recorded ran at the default precision (on a CPU where no device is
    recorded) and name no code version."""
    precision = r.get("precision", "default")
    if precision == "default":
        precision = f"default on {str(r.get('device', 'cpu')).split(':')[0].strip()}"
    code = r.get("code")
    if isinstance(code, dict):
        changed = hashlib.sha256(json.dumps(code.get("changed"), sort_keys=True).encode())
        code = describe({k: v for k, v in code.items() if k != "commit"}) + (
            f" with uncommitted changes ({changed.hexdigest()[:8]})"
            if code.get("clean") is False else "") + (
            "" if code.get("commit") else ", no commit recorded")
    return precision + (f", {code}" if code else "")


def mixed_cells(sweep: Sweep, done: dict) -> list[str]:
    """The cells (label, task, size and other grid values; seeds pooled) whose finished
    runs differ in :func:`variant`, each as ``"task label size: variant ×n, ..."``."""
    cells: dict[tuple, dict[str, int]] = {}
    for p in sweep.points:
        r = done.get(run_name(p))
        if r is None:
            continue
        rest = tuple(sorted((k, str(v)) for k, v in p.cell.items() if k != "seed"))
        counts = cells.setdefault((p.settings.get("task"), p.label,
                                   p.settings.get("train_size"), rest), {})
        counts[variant(r)] = counts.get(variant(r), 0) + 1
    return [f"{task} {label} {size}: " + ", ".join(f"{v} ×{n}" for v, n in counts.items())
            for (task, label, size, _), counts in cells.items() if len(counts) > 1]


def check_mixed(sweep: Sweep, done: dict, allow: bool) -> list[str]:
    """The mixed cells, which a table may pool only when told to (``--allow-mixed``, or
    ``"allow_mixed": true`` in a sweep that predates the precision and code fields)."""
    check_commits(sweep, done)
    mixed = mixed_cells(sweep, done)
    if mixed and not (allow or sweep.spec.get("allow_mixed") is True):
        raise UserError(f"Sweep {sweep.name} would pool runs of different precisions, devices "
                        f"or code versions in {len(mixed)} cell(s) ({'; '.join(mixed[:3])}"
                        f"{'; ...' if len(mixed) > 3 else ''}); rerun them alike, or pass "
                        f"--allow-mixed to pool them and list them on the page.")
    return mixed


# -- which commit each run ran ----------------------------------------------------------

COMMIT = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")  # SHA-1 or SHA-256, in full


def code_trees(sweep: Sweep, done: dict) -> dict[tuple, dict[str, str]]:
    """Per task, size and other grid values (the labels compared there pooled), the
    recorded code of the runs that name a commit: ``{tree ids: commit}``, one commit per
    distinct ``aa_jax/`` tree and ``uv.lock`` (see :mod:`aa_jax.provenance`). A commit
    that is not a full hexadecimal id is refused in one sentence (a result file is read
    as possibly hostile, and the id goes to git)."""
    cells: dict[tuple, dict[str, str]] = {}
    for p in sweep.points:
        code = (done.get(run_name(p)) or {}).get("code")
        if not isinstance(code, dict) or not code.get("commit"):
            continue
        commit = code["commit"]
        if not isinstance(commit, str) or not COMMIT.fullmatch(commit):
            raise UserError(f"{sweep.result_dir(p) / 'result.json'} names the commit "
                            f"{str(commit)[:50]!r}, which is not a full git commit id; "
                            f"restore the file with git checkout, or delete its folder so "
                            f"that the sweep runs it again.")
        rest = tuple(sorted((k, str(v)) for k, v in p.cell.items() if k != "seed"))
        key = (p.settings.get("task"), p.settings.get("train_size"), rest)
        tree = json.dumps(code.get("tree") or {"commit": commit}, sort_keys=True)
        cells.setdefault(key, {}).setdefault(tree, commit)
    return cells


def code_changes(first: str, second: str, repo: Path) -> list[str]:
    """The commits between two commits (either way) that changed the library or the lock
    (:data:`aa_jax.provenance.CODE_PATHS`), merges included; raises UserError where the
    history lacks one."""
    try:
        out = git("log", "--full-history", "--format=%H", "--end-of-options",
                  f"{first}...{second}", "--", *CODE_PATHS, cwd=repo)
    except (OSError, subprocess.SubprocessError):
        raise UserError(f"The runs name commits {first[:12]} and {second[:12]}, which this "
                        f"clone's history at {repo} does not hold both of; fetch the full "
                        f"history (git fetch --unshallow) and aggregate again.") from None
    return out.split()


def check_commits(sweep: Sweep, done: dict, repo: Path | None = None) -> None:
    """Refuses a task and size whose runs (of every label, since labels are compared
    there) ran different code: commits whose ``aa_jax/`` tree or ``uv.lock`` differ,
    unless every commit between them that changed either is in the sweep's
    ``"same_numerics"`` list (commits stated to change nothing numerical; at least 7
    hexadecimal digits each). Trees that differ with no such commit between them are
    refused too."""
    from aa_jax.provenance import ROOT

    allowed = sweep.spec.get("same_numerics", [])
    if not isinstance(allowed, list) or not all(
            isinstance(c, str) and re.fullmatch(r"[0-9a-f]{7,64}", c) for c in allowed):
        raise UserError(f"Sweep {sweep.name}: \"same_numerics\" must be a list of commit "
                        f"ids of at least 7 hexadecimal digits.")
    for (task, size, _), trees in code_trees(sweep, done).items():
        commits = list(trees.values())
        for other in commits[1:]:
            between = code_changes(commits[0], other, repo or ROOT)
            changes = [c for c in between if not any(c.startswith(a) for a in allowed)]
            if changes or not between:
                named = (f"{len(changes)} commit(s) changed aa_jax/ or uv.lock "
                         f"({', '.join(c[:12] for c in changes[:3])})" if changes else
                         "their aa_jax/ or uv.lock differ")
                raise UserError(
                    f"Sweep {sweep.name}: {task} at {size} pools runs of commits "
                    f"{commits[0][:12]} and {other[:12]}, between which {named}; rerun "
                    f"them on one commit, or list those commits under \"same_numerics\" "
                    f"in the sweep file if they change nothing numerical.")
