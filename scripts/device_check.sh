#!/usr/bin/env bash
# One-command GPU check of pallas_kernels: install (no network, no deps), report the device, run
# the GPU tests, the kernel benchmarks and the block-size variants. Everything lands in the folder given as $1.
#
#   bash scripts/device_check.sh /tmp/device_out   # H200: 109 s at 2 N without the variants
#
# Assumes Python + jax (CUDA) preinstalled. Works (and reports the CPU device) without a GPU too.
# Env: PYTHON (default python3), BENCH_ARGS (extra args for bench_kernels.py, e.g. "--small"),
#      BENCH_IMPLS (backends compared in the same run; default "xla mosaic_gpu" on a GPU).
# Quick CPU check of the script itself (interpreted kernels, tiny shapes, ~3 min):
#   BENCH_ARGS="--tiny --interpret" BENCH_IMPLS="xla mosaic_gpu" \
#   VARIANT_ARGS="--ns 4096 --k 64 --iters 2 --interpret" bash scripts/device_check.sh /tmp/dc
set -u -o pipefail
OUT="${1:?usage: scripts/device_check.sh OUT_DIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"
START=$(date +%s)
log() { echo "[device_check $(($(date +%s) - START))s] $*" | tee -a "$OUT/summary.txt"; }

# 1. Install from the working tree without dependencies or network, into $OUT/site so the
#    machine's environment is left alone (INSTALL_SYSTEM=1 installs into the environment instead);
#    PYTHONPATH=checkout always, so tests and scripts import this working tree whatever pip did.
TARGET=(--target "$OUT/site")
[ "${INSTALL_SYSTEM:-0}" = 1 ] && TARGET=()
if "$PY" -m pip install --no-deps --no-build-isolation --no-index --quiet "${TARGET[@]}" . \
  >"$OUT/install.log" 2>&1; then
  log "installed project (pip --no-deps --no-build-isolation ${TARGET[*]})"
else
  log "pip install failed (see install.log); using PYTHONPATH=$REPO"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# 2. The device.
timeout 120 "$PY" - >"$OUT/device.txt" 2>&1 <<'PYEOF'
import jax, platform
print("python", platform.python_version(), "jax", jax.__version__)
print("backend", jax.default_backend())
for d in jax.devices():
    print("device", d, "|", d.device_kind)
from pallas_kernels import _compat, available_implementations
print("mosaic_gpu importable", _compat.has_mosaic_gpu(), "| pallas tpu importable", _compat.has_pallas_tpu())
print("pallas_kernels implementations here", available_implementations())
PYEOF
cat "$OUT/device.txt" | tee -a "$OUT/summary.txt"
command -v nvidia-smi >/dev/null && nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1

# 3. GPU tests (skip with a reason on a machine without a GPU): the paper-shape checks, then the
#    mosaic_gpu kernel tests, which run compiled on a GPU (interpreted on CPU; f32 cases skip there).
#    A per-test timeout (pytest-timeout, where installed) stops a hung kernel from eating the budget.
export PYTHONUNBUFFERED=1
PT_TIMEOUT=()
"$PY" -c "import pytest_timeout" 2>/dev/null && PT_TIMEOUT=(--timeout "${TEST_TIMEOUT:-90}" --timeout-method thread)
timeout "${GPU_TESTS_S:-120}" "$PY" -m pytest -m gpu tests/pallas_kernels tests/kernels -q -rs \
  -p no:cacheprovider "${PT_TIMEOUT[@]}" >"$OUT/pytest_gpu.log" 2>&1
log "pytest -m gpu tests/pallas_kernels tests/kernels: exit $? ($(tail -n 1 "$OUT/pytest_gpu.log"))"
if [ "$(head -n 2 "$OUT/device.txt" | tail -n 1)" = "backend gpu" ]; then
  timeout "${MGPU_TESTS_S:-120}" "$PY" -m pytest tests/kernels -q -rs -p no:cacheprovider \
    "${PT_TIMEOUT[@]}" >"$OUT/pytest_mosaic_gpu.log" 2>&1
  log "pytest tests/kernels (compiled mosaic_gpu): exit $? ($(tail -n 1 "$OUT/pytest_mosaic_gpu.log"))"
fi

# 4. Benchmarks; the JSON is rewritten after each N, so a timeout keeps the finished sizes.
IMPLS=()
[ -n "${BENCH_IMPLS:-}" ] && IMPLS=(--impls $BENCH_IMPLS)
timeout "${BENCH_S:-240}" "$PY" scripts/bench_kernels.py --out "$OUT/bench_kernels.json" "${IMPLS[@]}" ${BENCH_ARGS:-} \
  >"$OUT/bench_kernels.log" 2>&1
log "bench_kernels: exit $? -> $OUT/bench_kernels.json"
tail -n 40 "$OUT/bench_kernels.log" | tee -a "$OUT/summary.txt"
# 5. Block-size variants and per-stage times (tuning data; VARIANTS=0 skips it).
if [ "${VARIANTS:-1}" = 1 ]; then
  timeout "${VARIANTS_S:-200}" "$PY" scripts/bench_kernel_variants.py \
    --out "$OUT/bench_kernel_variants.json" ${VARIANT_ARGS:-} >"$OUT/bench_kernel_variants.log" 2>&1
  log "bench_kernel_variants: exit $? -> $OUT/bench_kernel_variants.json"
  tail -n 60 "$OUT/bench_kernel_variants.log" | tee -a "$OUT/summary.txt"
fi
# 6. The real-model path (a SmolLM2-shaped decoder, random weights: the GPU machine has no registry
#    access): prefill and decode tok/s for dense vs TokenSelect (REAL_MODEL=0 skips it).
if [ "${REAL_MODEL:-1}" = 1 ]; then
  timeout "${REAL_MODEL_S:-180}" "$PY" scripts/bench_real_model.py --lengths "${REAL_LENGTHS:-8192,32768}" \
    --out "$OUT/bench_real_model.json" >"$OUT/bench_real_model.log" 2>&1
  log "bench_real_model: exit $? -> $OUT/bench_real_model.json"
  tail -n 12 "$OUT/bench_real_model.log" | tee -a "$OUT/summary.txt"
fi
log "done in $(($(date +%s) - START)) s"
