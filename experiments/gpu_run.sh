#!/usr/bin/env bash
# Both systems' accelerator benchmark on one GPU, in one command per machine.
#
#   bash experiments/gpu_run.sh prepare       # here, with PyPI: AdapterHub's wheels into .whl/
#   bash experiments/gpu_run.sh run OUT_DIR   # on the GPU machine (no network needed)
#
# `run` uses the GPU machine's own python3 with its jax, flax, optax, orbax and
# transformers for aa_jax (experiments/gpu_bench.py: BERT-large with random weights,
# baseline, AA and AA-focused, float32 and bfloat16), then installs the wheels of .whl/
# into a folder of their own (AdapterHub's `adapters` 1.3 needs transformers 4.57, and
# that transformers needs huggingface-hub < 1 and tokenizers <= 0.23.0) and times
# AdapterHub's seq_bn adapter on the same BERT-large shapes (experiments/peer_adapterhub.py)
# in float32 with TF32 products (what XLA does by default on NVIDIA GPUs), in float32
# without TF32, and in bfloat16. Records go to OUT_DIR/gpu_bench.jsonl and
# OUT_DIR/peer.jsonl as each phase ends, so a run cut short still tells where the time went.
# PYTHON and PEER_PYTHON (default python3), GPU_BENCH_ARGS, PEER_ARGS, PEER_DEVICE
# (default cuda) and WHEELS_DIR (default .whl) change what runs; the CPU test
# (tests/test_gpu_bench.py) uses them to run the script on a tiny model.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(adapters==1.3.0 transformers==4.57.6 huggingface-hub==0.36.0 tokenizers==0.22.1)

case "${1:-}" in
prepare)
  mkdir -p .whl
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
  ;;
run)
  out="${2:?usage: gpu_run.sh run OUT_DIR}"
  mkdir -p "$out"
  python="${PYTHON:-python3}"
  peer_python="${PEER_PYTHON:-$python}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 \
    | tee "$out/gpu.txt" || true
  "$python" -c 'import sys, jax, flax, optax; print("python", sys.version.split()[0], "jax",
    jax.__version__, "flax", flax.__version__, "optax", optax.__version__)' | tee -a "$out/gpu.txt"
  # aa_jax: at most 7 minutes, so that the peer always runs (246 s on an H200, plus about
  # a minute since the FLOPs are counted on the host CPU).
  # shellcheck disable=SC2086
  PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 \
    timeout "${GPU_BENCH_TIMEOUT:-420}" "$python" experiments/gpu_bench.py \
    --out "$out/gpu_bench.jsonl" ${GPU_BENCH_ARGS:-} 2>"$out/gpu_bench.err"
  echo "gpu_bench exit status $?"; tail -5 "$out/gpu_bench.err"
  wheels="${WHEELS_DIR:-.whl}"
  if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
    echo "No wheels in $wheels/: run 'bash experiments/gpu_run.sh prepare' where PyPI can be" \
      "reached, and carry .whl to this machine; AdapterHub was not timed." | tee "$out/peer.err"
    exit 1
  fi
  site="${TMPDIR:-/tmp}/aa_jax_peer_site"
  "$peer_python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$wheels"/*.whl || exit 1
  for variant in "--dtype float32 --float32-matmul high" "--dtype float32" "--dtype bfloat16"; do
    # shellcheck disable=SC2086
    PYTHONPATH="$site" timeout 100 "$peer_python" experiments/peer_adapterhub.py --model bert-large \
      --device "${PEER_DEVICE:-cuda}" $variant ${PEER_ARGS:-} 2>>"$out/peer.err" \
      | tee -a "$out/peer.jsonl"
  done
  tail -5 "$out/peer.err"
  ;;
*)
  echo "usage: bash experiments/gpu_run.sh prepare | run OUT_DIR" >&2
  exit 2
  ;;
esac
