#!/usr/bin/env bash
# The one command to run on an H100/H200 machine: what is there, the GPU tests, the
# benchmark table at the sizes the issues name, and a short summary last.
#   bash bench/device_check.sh OUTDIR
# Writes at most 8 files into OUTDIR (no subfolders): device_check.log, pytest.log,
# bench.csv, bandwidth.png, error_vs_bits.png, summary.txt. Needs no network: the
# machine's own torch, triton and cupy are used; the project installs with --no-deps.
set -uo pipefail
out="${1:?usage: bench/device_check.sh OUTDIR}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
log="$out/device_check.log"
exec > >(tee "$log") 2>&1
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
start=$(date +%s)

echo "## machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
python3 - <<'PY'
import importlib
for name in ("numpy", "torch", "triton", "cupy", "bitsandbytes"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except Exception as exc:
        print(f"{name}: not available ({type(exc).__name__})")
PY

echo "## install (no dependencies, no network)"
if ! python3 -m pip install -q --no-deps --no-build-isolation -e .; then
  # no usable setuptools there: lay the package out as installed (kernels/ inside it)
  tree="$(mktemp -d)"
  mkdir "$tree/gpuquant"
  ln -s "$PWD"/gpuquant/* "$tree/gpuquant/"
  ln -s "$PWD/kernels" "$tree/gpuquant/kernels"
  export PYTHONPATH="$tree${PYTHONPATH:+:$PYTHONPATH}"
  echo "editable install failed; using the source tree through $tree"
fi
python3 -c "import gpuquant.kernels, gpuquant; print('gpuquant from', gpuquant.__file__)"

echo "## GPU tests"
timeout 330 python3 -m pytest -q -m "gpu or not slow" -p no:cacheprovider \
  tests/test_gpu.py tests/test_triton_kernels.py 2>&1 | tee "$out/pytest.log" | tail -25
tests_rc=${PIPESTATUS[0]}

echo "## benchmark (float16 8192x8192; percentile and entropy at 2^24, percentile at 2^28)"
ops8k=minmax-channel,minmax-group,quant-int8-channel,quant-int4-g128-sym,quant-int4-g128-asym
ops8k=$ops8k,dequant-int8-channel,dequant-int4-g128,dynamic-per-token,percentile-channel,mse-channel
timeout 200 python3 -m bench --ops "$ops8k" --sizes 8192x8192 --dtypes float16 --out "$out" \
  --repeats 5
timeout 120 python3 -m bench --ops percentile-tensor,entropy-tensor --sizes 4096x4096,16384x16384 \
  --dtypes float16 --out "$out" --repeats 3 --plots > "$out/summary.txt.part" 2>&1
cat "$out/summary.txt.part"

echo
echo "## summary ($(( $(date +%s) - start )) s)"
{
  echo "GPU tests: $( [ "$tests_rc" = 0 ] && echo PASS || echo "FAIL (rc $tests_rc)" ) - $(tail -1 "$out/pytest.log")"
  python3 - "$out/bench.csv" <<'PY'
import sys
sys.path.insert(0, ".")
from bench.harness import load_rows, summary
print("\n".join(summary(load_rows(sys.argv[1]))) or "no benchmark rows")
PY
} | tee "$out/summary.txt"
rm -f "$out/summary.txt.part"
