"""The accelerator benchmark's phases, on the CPU with a tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_bench_prints_one_record_per_phase_and_method(tiny_checkpoint, tmp_path):
    """Through experiments/gpu_run.sh, the one command of a device session; with no
    AdapterHub wheels it says so after the benchmark instead of timing the peer."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHON=sys.executable,
               WHEELS_DIR=str(tmp_path / "no-wheels"),
               GPU_BENCH_ARGS=f"--model {tiny_checkpoint} --batch-size 4 --length 16 "
                              "--repeats 1 --peak-size 64 --methods baseline,aa,aa_focused "
                              "--dtypes float32,bfloat16")
    proc = subprocess.run(["bash", "experiments/gpu_run.sh", "run", str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gpu_bench exit status 0" in proc.stdout
    assert "No wheels in" in proc.stdout and "AdapterHub was not timed" in proc.stdout
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    out = tmp_path / "out" / "gpu_bench.jsonl"
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
    phases = [r["phase"] for r in records]
    assert phases[:4] == ["startup", "matmul_peak", "matmul_peak", "weights"]
    assert phases[4:] == ["compile", "steps"] * 6
    elapsed = [r["elapsed_s"] for r in records]
    assert elapsed == sorted(elapsed)
    runs = [(r["method"], r["dtype"]) for r in records if r["phase"] == "steps"]
    assert runs == [(m, d) for d in ("float32", "bfloat16")
                    for m in ("baseline", "aa", "aa_focused")]
    for r in records:
        if r["phase"] == "steps":
            assert r["train_step_s"] > 0 and r["compile_s"] > 0
    proc = subprocess.run([sys.executable, "experiments/gpu_bench.py", "--help"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert "Phases" in proc.stdout and "elapsed_s" in proc.stdout
    proc = subprocess.run(["bash", "experiments/gpu_run.sh"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr
