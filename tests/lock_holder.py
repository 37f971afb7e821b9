"""A process that holds a lock file (:func:`aa_jax.run_lock.hold`) until it is killed, for the
tests of what a second process on the same run or sweep does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOLDER = """
import sys, time
from aa_jax import run_lock
with run_lock.hold(sys.argv[1], "the test's lock"):
    print("held", flush=True)
    time.sleep(600)
"""


def hold_in_subprocess(lock: Path) -> subprocess.Popen:
    """Starts the holder of ``lock`` (its folder created) and returns once it holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line != "held\n":
        proc.kill()
        raise AssertionError(f"the holder did not take {lock}: {proc.communicate()[1]}")
    return proc


def stop(proc: subprocess.Popen) -> None:
    """Kills the holder (SIGKILL: it cannot release anything itself)."""
    proc.kill()
    proc.communicate()
