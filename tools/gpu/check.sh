#!/usr/bin/env bash
# One command for a lent GPU machine: build nat_mm's CUDA kernels, test them on the GPU, run them
# under compute-sanitizer, and benchmark them against their peers; logs and JSON under $OUT.
#
# Needs only what a bare lent machine has (Python 3.12, torch, timm, nvcc, ninja, pytest,
# compute-sanitizer): no OpenMMLab packages, no wheels, no network. From the repo root:
#   bash tools/gpu/check.sh              # on the GPU machine (device tool: timeout_s >= 540)
#   bash tools/gpu/check.sh --cpu-dry-run   # here: the same plumbing, CPU-runnable parts only
# Steps, in this order, each with a time stamp and its own timeout; a failing step does not stop
# the later ones, and every step's timeout is cut to what is left of the total budget:
#   env        GPU, driver, torch, nvcc, compute-sanitizer
#   build      python setup.py build_ext --inplace, TORCH_CUDA_ARCH_LIST = the visible GPU's
#              capability (e.g. 9.0) only, MAX_JOBS = nproc; then checks nat_mm._C has CUDA
#   tests      pytest tests/test_ops.py tests/test_benchmark_op.py -k cuda (CHECK_PYTEST_ARGS
#              replaces these arguments; it is split on spaces)
#   memcheck   compute-sanitizer --tool memcheck on tools/gpu/sanitize_cases.py: the six ops
#   racecheck  (na2d/na2d_qk/na2d_av forward and backward), NAT_MM_CUDA_KERNEL=reference and
#              =tiled, small maps, values checked against the float64 oracle too
#   bench      tools/benchmark_op.py --device cuda --shapes 800x1216 (NAT-Tiny's four layers)
#              per dtype (bfloat16, float16, float32), backends nat_mm_ref nat_mm sdpa flex
# Dry run (--cpu-dry-run, or automatic when torch sees no GPU): env; no build (the extension
# must be built already: make setup); tests/test_benchmark_op.py -m "not slow"; sanitize_cases.py
# on the CPU kernels without a sanitizer; the benchmark on the CPU on the tiny `smoke` shape.
#
# Output under $OUT (default ./gpu_out; at most 7 files, as the device tool returns 8):
#   check.log (everything, time-stamped), summary.txt (one line per step), build.log,
#   bench_<dtype>.json (rows, written after every layer), bench_tables.txt
#
# Usage: bash tools/gpu/check.sh [options]
#   --cpu-dry-run      skip the GPU steps (see above)
#   --budget S         total seconds for all steps (default 480; dry run 900)
#   --skip STEP        skip a step (repeatable): env build tests memcheck racecheck bench
#   --dtypes "D ..."   benchmark dtypes (default "bfloat16 float16 float32")
#   --backends "B ..." benchmark backends (default "nat_mm_ref nat_mm sdpa flex"; flex compiles
#                      once per layer, dtype and mode: most of the benchmark's time)
#   --repeats N        benchmark repeats (default 20; dry run 1)
#   --python PY        interpreter (default: python3, or .venv/bin/python where it exists)
# Exit status: 0 when every step that ran passed and none was cut short by the budget, else 1.
# Steps the budget cut can be finished on the still-warm machine (its in-place build is kept):
#   bash tools/gpu/check.sh --skip build --skip tests --skip memcheck --skip racecheck --dtypes ...
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -x "$ROOT/.venv/bin/python" ]; then PY="${PYTHON:-$ROOT/.venv/bin/python}"; fi
PY="${PYTHON:-${PY:-python3}}"
OUT="${OUT:-./gpu_out}"
DRY=0
BUDGET=
SKIP=" "
DTYPES="bfloat16 float16 float32"
BACKENDS="nat_mm_ref nat_mm sdpa flex"
REPEATS=
RESERVE=5  # seconds kept for the summary

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-dry-run) DRY=1; shift ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --skip) SKIP+="$2 "; shift 2 ;;
    --dtypes) DTYPES="$2"; shift 2 ;;
    --backends) BACKENDS="$2"; shift 2 ;;
    --repeats) REPEATS="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

mkdir -p "$OUT" || { echo "check.sh: cannot create $OUT" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/check.log"
SUMMARY="$OUT/summary.txt"
: >"$LOG"
: >"$SUMMARY"
cd "$ROOT" || exit 2
# The checkout's nat_mm first (tools/*.py run as scripts); a missing extension fails loudly
# instead of starting a JIT build (NAT_MM_NO_JIT= allows one).
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NAT_MM_NO_JIT="${NAT_MM_NO_JIT-1}"
START=$(date +%s)
FAILED=0
log() { printf '[check %s +%4ss] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - START ))" "$*" \
  | tee -a "$LOG"; }
record() {  # step, status, rc, seconds
  printf '%-18s %-8s rc=%-4s %5ss\n' "$1" "$2" "$3" "$4" | tee -a "$SUMMARY" >/dev/null
  case "$2" in ok|skipped) ;; *) FAILED=1 ;; esac
}

# run_step NAME CAP CMD...: run CMD with timeout min(CAP, what is left), output into check.log.
run_step() {
  local name="$1" cap="$2" left t0 rc status
  shift 2
  if [[ "$SKIP" == *" ${name%%:*} "* ]]; then
    log "== $name: skipped (--skip)"; record "$name" skipped - 0; return 0
  fi
  left=$(( START + BUDGET - RESERVE - $(date +%s) ))
  if [ "$left" -lt 15 ]; then
    log "== $name: NOT RUN, the ${BUDGET} s budget is spent"; record "$name" no-time - 0
    return 1
  fi
  [ "$cap" -le "$left" ] || cap=$left
  log "== $name (timeout ${cap} s): $*"
  t0=$(date +%s)
  # bash -c: CMD may be one of the functions below (exported); timeout signals its whole group.
  timeout -k 10 "$cap" bash -c '"$@"' "$name" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  case "$rc" in 0) status=ok ;; 124|137) status=timeout ;; *) status=FAILED ;; esac
  [ "$rc" = 0 ] || echo | tee -a "$LOG"  # a killed step may leave its last line unfinished
  log "== $name: $status (rc $rc) in $(( $(date +%s) - t0 )) s"
  record "$name" "$status" "$rc" "$(( $(date +%s) - t0 ))"
  return "$rc"
}

# --------------------------------------------------------------------------------------------
HAVE_GPU="$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null)"
if [ "$HAVE_GPU" != 1 ] && [ "$DRY" = 0 ]; then
  log "no GPU visible to $PY (torch.cuda.is_available() is not True): switching to --cpu-dry-run"
  DRY=1
fi
if [ "$DRY" = 1 ]; then BUDGET="${BUDGET:-900}"; REPEATS="${REPEATS:-1}"; else
  BUDGET="${BUDGET:-480}"; REPEATS="${REPEATS:-20}"; fi
log "nat_mm tools/gpu/check.sh: mode $([ "$DRY" = 1 ] && echo cpu-dry-run || echo gpu)," \
  "budget ${BUDGET} s, python $PY, OUT=$OUT"

env_info() {
  "$PY" - <<'PYENV'
import os, platform, sys
import torch
print(f'python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__} '
      f'(CUDA {torch.version.cuda}), {os.cpu_count()} CPUs, {platform.machine()}')
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f'GPU: {p.name}, capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, '
          f'{p.total_memory / 2**30:.0f} GiB, shared memory per block (opt-in) '
          f'{getattr(p, "shared_memory_per_block_optin", "?")} B')
sys.path.insert(0, 'nat_mm/ops')
from _build import find_cuda_home  # noqa: E402  (the toolkit setup.py will use)
print(f'CUDA toolkit: {find_cuda_home()}')
PYENV
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit \
      --format=csv || true
  fi
  if command -v nvcc >/dev/null; then nvcc --version | tail -2; fi
  if [ -n "$SANITIZER" ]; then "$SANITIZER" --version | head -2; else
    echo "compute-sanitizer: not found"; fi
}

find_sanitizer() {
  local home c
  home="$("$PY" -c 'import sys; sys.path.insert(0, "nat_mm/ops")
from _build import find_cuda_home
print(find_cuda_home() or "")' 2>/dev/null)"
  for c in "$(command -v compute-sanitizer 2>/dev/null)" "$home/bin/compute-sanitizer" \
      "$home/compute-sanitizer/compute-sanitizer" /usr/local/cuda/bin/compute-sanitizer; do
    if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return; fi
  done
}
SANITIZER="$(find_sanitizer)"

build_ext() {
  local arch
  arch="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')" || return 1
  echo "TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=$(nproc) $PY setup.py build_ext --inplace" \
    "(full log: $OUT/build.log)"
  if ! env TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" "$PY" setup.py build_ext --inplace \
      >"$OUT/build.log" 2>&1; then
    grep -E 'error|Error' "$OUT/build.log" | head -30
    tail -20 "$OUT/build.log"
    return 1
  fi
  grep -iE 'warning' "$OUT/build.log" | grep -v 'Wunused' | head -10 || true
  "$PY" -c 'from nat_mm.ops import extension_has_cuda as c; import sys
print("nat_mm._C loaded, with CUDA:", c()); sys.exit(0 if c() else 1)'
}

sanitize() {  # tool
  if [ -z "$SANITIZER" ]; then echo "compute-sanitizer not found"; return 1; fi
  local extra=()
  [ "$1" = racecheck ] && extra=(--racecheck-report analysis)
  # No caching allocator: every tensor is its own allocation, so overruns hit its bounds.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool "$1" ${extra[@]+"${extra[@]}"} \
    --error-exitcode 1 \
    --print-limit 20 "$PY" tools/gpu/sanitize_cases.py --kernels reference tiled
}

bench() {  # dtype device shapes backends...
  local dtype="$1" device="$2" shapes="$3"
  shift 3
  # shellcheck disable=SC2086
  "$PY" tools/benchmark_op.py --device "$device" --dtype "$dtype" --shapes $shapes \
    --backends "$@" --repeats "$REPEATS" --json "$OUT/bench_$dtype.json" \
    | tee -a "$OUT/bench_tables.txt"
  return "${PIPESTATUS[0]}"
}
export -f env_info build_ext sanitize bench
export PY OUT SANITIZER REPEATS

# --------------------------------------------------------------------------------------------
run_step env 60 env_info
if [ "$DRY" = 0 ]; then
  run_step build 240 build_ext
  PYTEST_ARGS=(tests/test_ops.py tests/test_benchmark_op.py -k cuda)
  [ -z "${CHECK_PYTEST_ARGS:-}" ] || read -ra PYTEST_ARGS <<<"$CHECK_PYTEST_ARGS"
  run_step tests 120 "$PY" -m pytest -q -p no:cacheprovider --maxfail=5 "${PYTEST_ARGS[@]}"
  run_step memcheck 100 sanitize memcheck
  run_step racecheck 100 sanitize racecheck
  for dtype in $DTYPES; do
    # shellcheck disable=SC2086
    run_step "bench:$dtype" 170 bench "$dtype" cuda 800x1216 $BACKENDS
  done
else
  log "== build: skipped in the dry run (uses the extension built by make setup)"
  record build skipped - 0
  PYTEST_ARGS=(tests/test_benchmark_op.py -m 'not slow')
  [ -z "${CHECK_PYTEST_ARGS:-}" ] || read -ra PYTEST_ARGS <<<"$CHECK_PYTEST_ARGS"
  run_step tests 300 "$PY" -m pytest -q -p no:cacheprovider --maxfail=5 "${PYTEST_ARGS[@]}"
  run_step sanitize-cases:cpu 120 "$PY" tools/gpu/sanitize_cases.py --device cpu
  run_step bench:float32 400 bench float32 cpu smoke nat_mm flex gather
fi

# --------------------------------------------------------------------------------------------
if [ -s "$OUT/bench_tables.txt" ]; then  # the tables again, last, where a log's tail shows them
  log "== benchmark tables ($OUT/bench_tables.txt)"
  cat "$OUT/bench_tables.txt"
fi
log "== summary ($(( $(date +%s) - START )) s of ${BUDGET} s)"
tee -a "$LOG" <"$SUMMARY"
ls -l "$OUT" | tee -a "$LOG"
exit "$FAILED"
