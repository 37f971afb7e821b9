"""Multi-host training through jax.distributed: two processes on localhost (one CPU device
each) train what one process with two devices trains."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aa_jax.distributed import initialize
from aa_jax.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_an_incomplete_environment_is_refused_in_one_sentence():
    assert initialize({}) is False
    with pytest.raises(UserError, match="AA_JAX_NUM_PROCESSES and AA_JAX_PROCESS_ID"):
        initialize({"AA_JAX_COORDINATOR": "127.0.0.1:1234"})
    with pytest.raises(UserError, match="between 0 and AA_JAX_NUM_PROCESSES - 1"):
        initialize({"AA_JAX_COORDINATOR": "127.0.0.1:1234", "AA_JAX_NUM_PROCESSES": "2",
                    "AA_JAX_PROCESS_ID": "2"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _history(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_train_what_one_process_with_two_devices_trains(
        tmp_path, tiny_checkpoint, fake_glue):
    args = [sys.executable, "-m", "aa_jax.cli", "train", "--model", str(tiny_checkpoint),
            "--glue-dir", str(fake_glue), "--task", "rte", "--method", "aa",
            "--train-size", "32", "--epochs", "3", "--batch-size", "8", "--max-length", "32",
            "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
    env.update(JAX_PLATFORMS="cpu", AA_JAX_ALLOCATOR="system")

    one = tmp_path / "one"
    ref = subprocess.run(args + ["--out", str(one)], cwd=REPO, capture_output=True, text=True,
                         timeout=600, env={**env, "XLA_FLAGS":
                                           "--xla_force_host_platform_device_count=2"})
    assert ref.returncode == 0, ref.stderr[-2000:]

    two = tmp_path / "two"
    port = _free_port()
    procs = [subprocess.Popen(args + ["--out", str(two)], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**env, "AA_JAX_COORDINATOR": f"127.0.0.1:{port}",
                                   "AA_JAX_NUM_PROCESSES": "2", "AA_JAX_PROCESS_ID": str(i)})
             for i in (0, 1)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    for i, out in enumerate(outputs):
        assert f"process {i} of 2; 2 devices in all" in out

    a, b = _history(one), _history(two)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [1, 2, 3]
    # The same program on the same two-device mesh; only the all-reduce differs (in
    # process against gloo), which may round differently in float32.
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-5)
    ra = json.loads((one / "result.json").read_text())
    rb = json.loads((two / "result.json").read_text())
    assert ra["selected_layers"] == rb["selected_layers"]
    assert ra["best_epoch"] == rb["best_epoch"]
    for k, v in ra["test"].items():
        assert rb["test"][k] == pytest.approx(v, abs=1e-6)
    assert (two / "checkpoints").is_dir()
