#!/usr/bin/env bash
# Every accelerator measurement of issue 8, as one prepared run sized for one call of the
# device tool (a GPU lent for ~15 minutes in all, at most 10 per command): throughput of
# every strategy at N=16 and 64 with the matmul ceilings, the PyTorch peer at N=64, the
# kernels, and bfloat16 vs float32 accuracy. Each step has its own time limit, so one that
# runs long costs only itself; the JSON files land in $OUT (default benchmarks/out).
#
#   bash benchmarks/device_check.sh            # on the GPU machine, from the repository root
#   QUICK=1 bash benchmarks/device_check.sh    # a smoke run of the same steps (CPU, ~5 min)
#
# Runs from the source tree (PYTHONPATH), so it needs no install beyond what the device
# image has (jax with CUDA, flax, optax, orbax-checkpoint, chex, PyTorch); it says which
# of the package's imports are missing before it starts.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
LOG="$OUT/device_check.log"
: > "$LOG"

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
}

"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, platform
missing = [m for m in ("jax", "flax", "optax", "orbax.checkpoint", "chex", "numpy", "matplotlib",
                       "tqdm", "torch") if importlib.util.find_spec(m.split(".")[0]) is None]
print("python", platform.python_version(), "| missing:", ", ".join(missing) or "nothing")
import jax
print("jax", jax.__version__, "| backend", jax.default_backend(), "|", jax.devices())
try:
    import flax, torch
    print("flax", flax.__version__, "| torch", torch.__version__,
          "| torch cuda", torch.cuda.is_available())
except ImportError as e:
    print("import:", e)
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv | tee -a "$LOG"

if [ -n "${QUICK:-}" ]; then
  step throughput 300 "$PY" benchmarks/train_throughput.py --members 4 --steps 2 --rounds 1 \
    --no-headroom --out "$OUT/train_throughput.json"
  step torch_peer 200 "$PY" benchmarks/torch_peer.py --members 4 --steps 2 --rounds 1 \
    --jax-strategies sequential,vmap_matmul --out "$OUT/torch_peer.json"
  step kernels 200 "$PY" benchmarks/kernels.py --quick --out "$OUT/kernels.json"
  step precision 200 "$PY" benchmarks/precision.py --quick --out "$OUT/precision.json"
else
  step throughput 240 "$PY" benchmarks/train_throughput.py --members 16,64 \
    --strategies sequential,unrolled,vmap,vmap_matmul --steps 10 --rounds 3 \
    --out "$OUT/train_throughput.json"
  step torch_peer 150 "$PY" benchmarks/torch_peer.py --members 64 --steps 10 --rounds 3 \
    --out "$OUT/torch_peer.json"
  step kernels 90 "$PY" benchmarks/kernels.py --out "$OUT/kernels.json"
  step precision 90 "$PY" benchmarks/precision.py --members 16 --steps 400 \
    --out "$OUT/precision.json"
fi
echo "done; JSON and the log in $OUT" | tee -a "$LOG"
