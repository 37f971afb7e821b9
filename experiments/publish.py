"""A finished run's place in the results folder: its files copied in whole or not at all,
the failure record of a run that raised, and git commits of either with the sweep's tables
refreshed (``--commit``).

The processes of one sweep (``--workers``) do all of this one at a time, inside
:func:`publishing`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from aa_jax.checkpoint import write_json_atomic, write_text_atomic
from aa_jax.errors import StorageError, storage_error
from experiments.grid import REPO, Point, Sweep, run_name

COPIED = ("config.json", "metrics.jsonl", "architecture.json", "result.json")  # result last


def published_config(sweep: Sweep, text: str) -> str:
    """A run's config.json as the results folder keeps it: without the absolute paths of
    its inputs on the machine that ran it (``resolved``'s ``*_abs``; the checksums stay),
    and an architecture taken from a
    run in ``<repo>/experiments/results/`` is named relative to ``<repo>``, as a clone
    finds it, whichever folder the sweep ran from (training reads it relative to there)."""
    config = json.loads(text)
    resolved = config.get("resolved")
    if isinstance(resolved, dict) and any(k.endswith("_abs") for k in resolved):
        # where the inputs lay on the machine that ran it
        config["resolved"] = {k: v for k, v in resolved.items() if not k.endswith("_abs")}
        text = json.dumps(config, indent=2) + "\n"
    arch = config.get("architecture")
    root = sweep.results.resolve().parent
    if not arch or root.name != "results" or root.parent.name != "experiments":
        return text
    where = Path(arch).resolve()
    if root not in where.parents:
        return text
    config["architecture"] = where.relative_to(root.parent.parent).as_posix()
    return json.dumps(config, indent=2) + "\n"


def published_result(sweep: Sweep, point: Point, text: str) -> dict:
    """A run's result.json as the results folder keeps it: with the label the sweep ran it
    under, and its ``code`` record (see :mod:`aa_jax.provenance`) with the sweep's
    protocol version where the sweep states one (``"protocol_version"``), so that the
    aggregator refuses to pool runs of one sweep made before and after its protocol
    changed."""
    result = {**json.loads(text), "label": point.label}
    version = sweep.spec.get("protocol_version")
    code = result.get("code")
    if version is not None and isinstance(code, dict):
        result["code"] = {**code, "protocol": f"{sweep.name} protocol {version}"}
    elif version is not None and code:  # the plain string of aa_jax 0.4 and earlier
        result["code"] = f"{code}, {sweep.name} protocol {version}"
    return result


def publish(sweep: Sweep, point: Point) -> Path:
    """Copies a finished run's files into the results folder, whole or not at all: they are
    assembled in a hidden sibling folder that is then renamed into place (replacing what
    the run's folder held: a failed.json, an earlier copy)."""
    src, dst = sweep.work_dir(point), sweep.result_dir(point)
    tmp, old = (dst.with_name(f".{dst.name}.{what}") for what in ("publishing", "replaced"))
    try:
        for leftover in (tmp, old):  # of a publish that was killed (the sweep is locked)
            shutil.rmtree(leftover, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in COPIED:
            text = (src / name).read_text()
            if name == "config.json":
                text = published_config(sweep, text)
            elif name == "result.json":  # the label the sweep ran it under
                text = json.dumps(published_result(sweep, point, text), indent=2) + "\n"
            write_text_atomic(tmp / name, text)
        if dst.exists():
            dst.rename(old)
        try:
            tmp.rename(dst)
        except BaseException:
            if old.exists() and not dst.exists():
                old.rename(dst)
            raise
    except (OSError, StorageError) as e:
        error = storage_error(dst, e)  # named after the run's folder, not the hidden one
        if error is None:
            raise
        raise error from None
    finally:
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)
    return dst


def records_inputs(sweep: Sweep, point: Point) -> bool:
    """Whether the sweep records the rational inputs of ``point``'s run: where it runs the
    method of the sweep's ``learned`` label (AA, and AA with one setting changed, as the
    STS-B study's labels do)."""
    learned = sweep.role("learned")
    methods = {p.settings.get("method") for p in sweep.points if p.label == learned}
    return point.settings.get("method") in methods


def record_inputs(sweep: Sweep, point: Point, backbone) -> None:
    """Figure 3's input distributions of an AA run (see rational_inputs.py); a failure
    here is reported and leaves the run as it is."""
    from experiments.rational_inputs import rational_inputs

    try:
        record = rational_inputs(sweep.work_dir(point), backbone)
    except Exception as e:  # noqa: BLE001
        print(f"    (no rational inputs for {run_name(point)}: {type(e).__name__}: {e})",
              file=sys.stderr)
        return
    for d in (sweep.work_dir(point), sweep.result_dir(point)):
        write_json_atomic(d / "rational_inputs.json", record)


def record_failure(sweep: Sweep, point: Point, error: BaseException) -> None:
    dst = sweep.result_dir(point)
    dst.mkdir(parents=True, exist_ok=True)
    write_json_atomic(dst / "failed.json", {
        "run": run_name(point), "error": f"{type(error).__name__}: {error}",
        "traceback": traceback.format_exception(error)[-6:],
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


@contextlib.contextmanager
def publishing(sweep: Sweep) -> Iterator[None]:
    """Waits for, then holds, the sweep's publishing lock: the processes of one sweep
    (``--workers``) publish, record failures and commit one at a time, so that a commit's
    tables count exactly the runs on disk, and so in the commit."""
    sweep.work.mkdir(parents=True, exist_ok=True)
    with open(sweep.work / ".publish.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def commit_results(sweep: Sweep, points: list[Point], message: str) -> None:
    """Commits the result folders of ``points`` (a result or a failure record) with the
    tables refreshed to include them (:func:`refresh_tables`); inside :func:`publishing`."""
    git_commit([*(sweep.result_dir(p) for p in points), *refresh_tables(sweep)], message)


def refresh_tables(sweep: Sweep) -> list[Path]:
    """The sweep's TABLE.md (and the results page's excerpt of it, if it has one)
    rewritten to include the runs finished and failed so far, so that a commit of results
    carries tables that agree with them; a failure is reported, and what was not rewritten
    is left as it was."""
    # Imported here: the tables' statistics (scipy, statsmodels) load only once a run is
    # committed, not in every sweep process.
    from experiments.page import refresh

    try:
        return refresh(sweep)
    except Exception as e:  # noqa: BLE001 - the run itself is kept and committed
        print(f"    (tables not refreshed: {type(e).__name__}: {' '.join(str(e).split())})",
              file=sys.stderr, flush=True)
        return []


def git_commit(paths: list[Path], message: str) -> None:
    """Commits ``paths`` only (whatever else is staged stays staged); retries on a lock."""
    rel = [str(p.relative_to(REPO)) for p in paths]
    for attempt in range(10):
        add = subprocess.run(["git", "add", "--", *rel], cwd=REPO, capture_output=True,
                             text=True)
        commit = add.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", message, "--", *rel], cwd=REPO,
            capture_output=True, text=True)
        if commit and commit.returncode == 0:
            return
        time.sleep(2 + attempt)
    print(f"    (could not commit {', '.join(rel)}; commit it by hand)", file=sys.stderr)
