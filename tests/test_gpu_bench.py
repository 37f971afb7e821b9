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
    out = tmp_path / "bench.jsonl"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "experiments/gpu_bench.py", "--model", str(tiny_checkpoint),
         "--batch-size", "4", "--length", "16", "--repeats", "1", "--peak-size", "64",
         "--methods", "baseline,aa,aa_focused", "--dtypes", "float32,bfloat16",
         "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
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
