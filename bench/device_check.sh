#!/usr/bin/env bash
# The one command to run on an H100/H200 machine, in under 8 minutes: what is there, the GPU
# tests, the launch-parameter sweep, the benchmark table at issue 9's sizes, the host time of
# a repeated call, and a summary last.
#   bash bench/device_check.sh OUTDIR            on the GPU machine
#   bash bench/device_check.sh --dry-run OUTDIR  the same steps on the CPU (Triton interpreter,
#                                                tiny sizes), in about 2 minutes: proves the script
# Writes 9 files into OUTDIR (no subfolders): device_check.log, pytest.log, tuning.json (the
# swept table: copy it over gpuquant/backends/tuning.json to adopt it), bench.csv,
# sass_rows.json (static SASS figures next to the times: docs/KERNELS.md),
# host_overhead.json, bandwidth.png, error_vs_bits.png, summary.txt. Needs no network: the
# machine's own torch, triton and cupy are used; the project installs with --no-deps.
# Every step runs under its own `timeout`, and no step starts past the budget, so one hang
# cannot eat the session.
set -uo pipefail
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
out="${1:?usage: bench/device_check.sh [--dry-run] OUTDIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
exec > >(tee "$out/device_check.log") 2>&1
export PYTHONUNBUFFERED=1
BUDGET=${DEVICE_CHECK_BUDGET_S:-460}  # seconds for all steps; the summary comes after
# each step's own limit (seconds); no step runs past the budget whatever its limit
CAP_TESTS=150 CAP_TUNE=110 TUNE_BUDGET=90 CAP_BENCH=120 CAP_SASS=90 CAP_HOST=40 CAP_CAL=60
start=$(date +%s)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
declare -a steps=()
if [ "$dry" = 1 ]; then
  export TRITON_INTERPRET=1
  big=64x256 cal=32x256,64x256 dev=(--device cpu) tune=(--dry-run) host=(--seconds 0.2)
  CAP_HOST=90  # the interpreter's first calls of every measured op, on a shared CPU
else
  unset TRITON_INTERPRET
  big=8192x8192 cal=4096x4096,16384x16384 dev=(--device cuda)
  tune=(--budget-s "$TUNE_BUDGET") host=(--device cuda)
fi

# step NAME SECONDS CMD...: CMD under `timeout`, at most SECONDS and never past the budget.
step() {
  local name=$1 limit=$2 left rc
  shift 2
  left=$(( BUDGET - ($(date +%s) - start) ))
  (( limit > left )) && limit=$left
  if (( limit < 10 )); then
    echo "## $name: skipped, the budget is spent"
    steps+=("$name: SKIPPED (budget spent)")
    return 99
  fi
  echo "## $name (at most $limit s; $(( $(date +%s) - start )) s in)"
  timeout -k 10 "$limit" "$@"
  rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    steps+=("$name: TIMED OUT after $limit s")
  else
    steps+=("$name: $( [ "$rc" = 0 ] && echo ok || echo "FAILED (rc $rc)")")
  fi
  return "$rc"
}

machine() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    || echo "no nvidia-smi"
  python3 - <<'PY'
import importlib
for name in ("numpy", "torch", "triton", "cupy", "bitsandbytes"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except Exception as exc:
        print(f"{name}: not available ({type(exc).__name__})")
PY
}
export -f machine
step "machine" 30 bash -c machine

if ! step "install (no dependencies, no network)" 90 \
    python3 -m pip install -q --no-deps --no-build-isolation -e .; then
  # no usable setuptools there: the source tree is the package as installed
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  echo "editable install failed; using the source tree"
fi
python3 -c "import gpuquant.kernels, gpuquant; print('gpuquant from', gpuquant.__file__)"

# the kernel tests (on CUDA here; under the interpreter in a dry run), then every other
# gpu-marked test of the suite
gpu_files=$(grep -l "mark.gpu" tests/test_*.py | grep -v -e test_gpu.py -e test_triton_kernels.py \
  | tr '\n' ' ')
step "GPU tests" "$CAP_TESTS" bash -c "set -o pipefail; python3 -m pytest -q -p no:cacheprovider \
  -m 'gpu or not slow' tests/test_gpu.py tests/test_triton_kernels.py 2>&1 \
  | tee '$out/pytest.log' | tail -25"
tests_rc=$?
if [ -n "$gpu_files" ]; then
  step "other gpu-marked tests" 60 bash -c "set -o pipefail; python3 -m pytest -q \
    -p no:cacheprovider -m gpu $gpu_files 2>&1 | tee -a '$out/pytest.log' | tail -5" \
    || tests_rc=$?
fi

step "tuning sweep (into OUTDIR, not the package)" "$CAP_TUNE" \
  python3 -m bench.tune "${tune[@]}" --out "$out/tuning.json"
tuning=()
[ -s "$out/tuning.json" ] && tuning=(--tuning "$out/tuning.json")

ops=minmax-channel,minmax-group,quant-int8-channel,quant-int4-g128-sym,quant-int4-g128-asym
ops=$ops,dequant-int8-channel,dequant-int4-g128,dynamic-per-token,dynamic-per-token-small
ops=$ops,percentile-channel,mse-channel
step "benchmark (float16 $big; percentile-channel and mse-channel too)" "$CAP_BENCH" \
  python3 -m bench "${dev[@]}" "${tuning[@]}" --ops "$ops" --sizes "$big" --dtypes float16 \
  --out "$out" --repeats 5

# the static SASS figures of the standard calls (x 8192x8192 float16) next to the benchmark's
# times: rows for ../shared/sass/measurements.json, to recalibrate the model (docs/KERNELS.md);
# compiled for sm_90 (never interpreted, in a dry run too)
step "static SASS figures next to the measured times" "$CAP_SASS" \
  env -u TRITON_INTERPRET python3 -m bench.sass_rows --out "$out/sass_rows.json" --bench-csv "$out/bench.csv" \
  --gpu "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"

step "host time of a repeated call" "$CAP_HOST" \
  bash -c "python3 -m bench --host-overhead ${host[*]} > '$out/host_overhead.json'"
cat "$out/host_overhead.json" 2>/dev/null; echo

step "calibration benchmark (percentile and entropy at $cal) and plots" "$CAP_CAL" \
  python3 -m bench "${dev[@]}" "${tuning[@]}" --ops percentile-tensor,entropy-tensor \
  --sizes "$cal" --dtypes float16 --out "$out" --repeats 3 --plots

echo
echo "## summary ($(( $(date +%s) - start )) s)"
{
  [ "$dry" = 1 ] && echo "DRY RUN on the CPU (Triton interpreter): no figure below is a GPU result"
  echo "GPU tests: $( [ "$tests_rc" = 0 ] && echo PASS || echo "FAIL (rc $tests_rc)" ) -" \
    "$(tail -1 "$out/pytest.log" 2>/dev/null)"
  printf '%s\n' "${steps[@]}"
  [ -s "$out/tuning.json" ] && python3 -c "import json, sys; \
print('tuning table:', json.load(open(sys.argv[1]))['measured_on'])" "$out/tuning.json"
  python3 - "$out" "$dry" <<'PY'
import json, os, sys
sys.path.insert(0, ".")
from bench.harness import load_rows, summary
out, dry = sys.argv[1], sys.argv[2] == "1"
path = os.path.join(out, "bench.csv")
rows = load_rows(path) if os.path.exists(path) else []
print("# targets" + (" (CPU figures: the GPU targets are judged on a GPU only)" if dry else ""))
print("\n".join(summary(rows)) if rows else "no benchmark rows")
try:
    host = json.load(open(os.path.join(out, "host_overhead.json")))
except (OSError, ValueError) as exc:
    print(f"host overhead: not measured ({type(exc).__name__})")
    host = {}
for op, f in host.items():
    if "error" in f:
        print(f"FAIL  host {op:<24} {f['error'][:100]}")
        continue
    ok = f["python_calls"] <= 40 and f["launches"] == 1 and (dry or f["host_us"] <= 25)
    print(f"{'PASS' if ok else 'FAIL'}  host {op:<24} {f['python_calls']} python calls "
          f"(<= 40), {f['launches']} launches (1), {f['host_us']} us host time"
          f"{' (CPU, recorded launches)' if dry else ' (<= 25 us)'}")
PY
} | tee "$out/summary.txt"
echo "files in $out: $(ls "$out" | wc -l)"
