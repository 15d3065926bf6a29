#!/usr/bin/env bash
# Every accelerator measurement of issue 8, as one prepared run sized for one call of the
# device tool (a GPU lent for ~15 minutes in all, at most 10 per command): throughput of
# every strategy at N=16 and 64 with the matmul ceilings, the PyTorch peer at N=64, the
# kernels, and bfloat16 vs float32 accuracy. Each step has its own time limit, so one that
# runs long costs only itself; the limits add up to 540 s (60 s under the tool's cap),
# environment check included. The JSON files land in $OUT (default benchmarks/out); the
# exit status is 1 if any step failed.
#
#   bash benchmarks/device_check.sh            # on the GPU machine, from the repository root
#   QUICK=1 bash benchmarks/device_check.sh    # a smoke run of the same steps (CPU, ~5 min)
#   PYTHON="python3 -S" ...                    # another interpreter (word-split)
#
# Runs from the source tree (PYTHONPATH), so it needs no install beyond what the device
# image has (jax with CUDA, flax, optax, orbax-checkpoint, chex, PyTorch); it says which
# of the package's imports are missing before it starts. Without PyTorch the peer step
# is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
read -r -a PY <<< "${PYTHON:-python3}"
LOG="$OUT/device_check.log"
: > "$LOG"
FAILED=()

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || FAILED+=("$name")
}

# Limits (full run): 40 + 10 + 190 + 130 + 80 + 90 = 540 s.
step environment 40 "${PY[@]}" benchmarks/env_check.py
if command -v nvidia-smi >/dev/null; then
  timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    | tee -a "$LOG"
fi
HAVE_TORCH=1
"${PY[@]}" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)" \
  || HAVE_TORCH=
peer() {  # the PyTorch peer, or a line saying why not
  if [ -n "$HAVE_TORCH" ]; then step torch_peer "$@"; else
    echo "=== torch_peer: skipped (PyTorch is not installed)" | tee -a "$LOG"; fi
}

if [ -n "${QUICK:-}" ]; then
  step throughput 400 "${PY[@]}" benchmarks/train_throughput.py --members 4 --steps 2 \
    --rounds 1 --no-headroom --out "$OUT/train_throughput.json"
  peer 200 "${PY[@]}" benchmarks/torch_peer.py --members 4 --steps 2 --rounds 1 \
    --jax-strategies sequential,vmap_matmul --out "$OUT/torch_peer.json"
  step kernels 200 "${PY[@]}" benchmarks/kernels.py --quick --out "$OUT/kernels.json"
  step precision 200 "${PY[@]}" benchmarks/precision.py --quick --out "$OUT/precision.json"
else
  step throughput 190 "${PY[@]}" benchmarks/train_throughput.py --members 16,64 \
    --strategies sequential,unrolled,vmap,vmap_matmul --steps 10 --rounds 3 \
    --out "$OUT/train_throughput.json"
  peer 130 "${PY[@]}" benchmarks/torch_peer.py --members 64 --steps 10 --rounds 3 \
    --out "$OUT/torch_peer.json"
  step kernels 80 "${PY[@]}" benchmarks/kernels.py --out "$OUT/kernels.json"
  step precision 90 "${PY[@]}" benchmarks/precision.py --members 16 --steps 400 \
    --out "$OUT/precision.json"
fi
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "failed: ${FAILED[*]}; JSON and the log in $OUT" | tee -a "$LOG"
  exit 1
fi
echo "done; JSON and the log in $OUT" | tee -a "$LOG"
