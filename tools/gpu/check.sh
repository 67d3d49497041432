#!/usr/bin/env bash
# One command for a lent GPU machine: build nat_mm's CUDA kernels, test every GPU path on the GPU,
# run the C++ kernels under compute-sanitizer, and time every backend against its peers per layer
# and in the whole backbone; then say which backend NAT_MM_CUDA_KERNEL=auto should pick per dtype.
# Logs and JSON under $OUT.
#
# Needs only what a bare lent machine has (Python 3.12, torch, triton, timm, nvcc, ninja, pytest,
# pytest-xdist, compute-sanitizer): no OpenMMLab packages, no wheels, no network. From the repo
# root:
#   bash tools/gpu/check.sh                 # on the GPU machine (device tool: timeout_s 540)
#   bash tools/gpu/check.sh --cpu-dry-run   # here: the same plumbing, CPU-runnable parts only
#
# Three phases. Every step has a time stamp, its own log and a timeout, cut to what is left of the
# total budget; a failing step does not stop the later ones. Steps marked (bg) run in the
# background, beside the phase's other steps: compiling and correctness checks overlap, timings
# never do (phase 3 starts on a quiet machine).
#  Phase 1: compile
#   env           GPU, driver, torch, triton, timm, nvcc, compute-sanitizer; which benchmark_op.py
#                 backends exist here
#   tests-triton  (bg) pytest tests/ops/test_triton.py -k "bfloat16 or not float16" -n 6: the Triton
#                 kernels compiled, against the float64 oracle, in bfloat16 (GPU only) and float32
#                 (float16 ran in the interpreter; CHECK_TRITON_PYTEST_ARGS replaces the args)
#   warm-triton   (bg) tools/gpu/warm.py: the benchmark's first calls of the triton backend, per
#                 NAT-Tiny layer, dtype and mode: the autotuner's candidates compiled into Triton's
#                 disk cache, so the timed steps only load them
#   warm-flex     (bg) the same for flex and flex_tiled (torch.compile per layer, dtype and mode;
#                 Inductor's caches), 4 compile threads; stopped when phase 2 is done
#   capped-build  (bg) tools/gpu/build_capped.py: the CUDA kernels again with -DNAT_MAX_BLOCKS=2,
#                 as torch.ops.nat_mm_capped.* (see the capped step)
#   build         python setup.py build_ext --inplace, TORCH_CUDA_ARCH_LIST = the visible GPU's
#                 capability (e.g. 9.0) only, MAX_JOBS = nproc, NVCC_APPEND_FLAGS="-Xptxas -v
#                 -Xptxas -warn-spills" (ptxas' registers, stack frames and spills per kernel in
#                 build.log; tools/gpu/summarize.py spills condenses them into the summary);
#                 then checks that nat_mm._C has CUDA kernels
#  Phase 2: correctness (needs the build)
#   memcheck      (bg) compute-sanitizer on tools/gpu/sanitize_cases.py: the six ops (na2d/na2d_qk/
#   racecheck     (bg) na2d_av forward and backward) with NAT_MM_CUDA_KERNEL=reference and =tiled,
#   synccheck     (bg) small maps, values checked against the float64 oracle too. memcheck,
#   initcheck     (bg) racecheck and synccheck check our kernels only (--kernel-name
#                 regex=nat_mm|na2d; CHECK_SANITIZER_FILTER replaces it, empty: all kernels);
#                 initcheck checks all, since a filtered initcheck does not see the writes of the
#                 kernels it skips (torch.randn's) and reports their reads as uninitialized.
#                 --sanitize-triton adds the Triton kernels to memcheck (one tile config)
#   tests-flex    (bg) pytest tests/ops/test_flex.py and the flex tests of tests/tools/test_benchmark_op.py
#                 (compiled FlexAttention on CUDA vs the oracle); sanitize_cases.py --kernels flex
#   capped        (bg) build_capped.py --check: the capped library's six ops against the oracle,
#                 reference and tiled kernels: every grid-stride loop runs several times
#   tests         pytest tests/ops/test_ops.py tests/tools/test_benchmark_op.py -k "cuda and not flex" -n 4:
#                 the C++ CUDA kernels (CHECK_PYTEST_ARGS replaces the args; split on spaces)
#  Phase 3: timings, one at a time (NAT-Tiny's four layers at 800x1216: benchmark_op.py --shapes
#  800x1216, 20 repeats, medians, forward and forward+backward; nat_mm = auto always runs too)
#   bench:bfloat16   backends triton tiled nat_mm_ref sdpa (--backends)
#   bench:float16    the same
#   backbone      tools/benchmark_backbone.py --swin timm --nat-kernels triton tiled: NAT-Tiny
#                 (each kernel) vs timm's Swin-T at 800x1216 in bf16, inference and a training
#                 step, 10 repeats
#   flex:bfloat16    backends flex flex_tiled (--flex-backends; compiled once per layer and mode)
#   flex:float16     the same
#   bench:float32    the bench backends in float32
#  Then the summary: one line per step, each dtype's backends ranked by their summed medians,
#  the backbone table, and per dtype the backend auto should pick (the fastest of triton / tiled /
#  nat_mm_ref by the summed fwd+bwd median over the layers: tools/gpu/summarize.py report).
# Dry run (--cpu-dry-run, or automatic when torch sees no GPU): each GPU-only step says "skipped
# (no GPU)"; the others run on the CPU: env; no build (the extension must be built already: make
# setup); tests-triton = one interpreter case; warm-flex and flex:float32 = flex on the `smoke`
# shape; capped-build / capped = the CUDA emulator of the tests (nat_mm/testing/cuda_emu: the same .cu for
# the host, NAT_MAX_BLOCKS=2) and sanitize_cases.py's checks on it; the sanitizer steps = one
# sanitize-cases:cpu step (the CPU kernels, no sanitizer); tests = tests/tools/test_benchmark_op.py -m
# "not slow"; tests-flex = a few quick tests/ops/test_flex.py tests; bench:float32 = nat_mm and gather
# on `smoke`; backbone = the CPU at 64x96 with timm's Swin; then the summary of that JSON.
# pytest runs with tests/conftest.py, which needs no OpenMMLab package (the GPU machine has none).
#
# Output under $OUT (default ./gpu_out; 6 files, the device tool returns 8):
#   check.log (everything, time-stamped), summary.txt (steps, tables, recommendations),
#   build.log (both builds' nvcc/ptxas output), bench.json (every benchmark row, merged after each
#   bench/flex step, with the GPU and auto's current picks), bench_tables.txt, backbone.json
# Scratch under $NAT_MM_CHECK_WORK (default /tmp/nat_mm_check): each step's own JSON and logs, the
# capped build. A full run starts it afresh; a run with --skip or --only keeps it, so a second call
# on the still-warm machine merges the first call's benchmark rows with its own.
#
# Usage: bash tools/gpu/check.sh [options]
#   --cpu-dry-run        skip the GPU steps (see above)
#   --budget S           total seconds for all steps (default 480; dry run 900)
#   --skip STEP          skip a step (repeatable; a quoted list works too). STEP is a step name
#                        (bench:float16), its base (bench: every dtype) or a group: sanitize
#                        (the four tools), warm (warm-triton warm-flex)
#   --only "STEP ..."    run only these steps (same names), e.g. --only "flex:float16 bench:float32"
#   --dtypes "D ..."     bench dtypes (default "bfloat16 float16 float32")
#   --flex-dtypes "D ..."  flex dtypes (default "bfloat16 float16")
#   --backends "B ..."   bench backends (default "triton tiled nat_mm_ref sdpa")
#   --flex-backends "B ..."  flex backends (default "flex flex_tiled")
#   --repeats N          benchmark repeats (default 20; dry run 1)
#   --sanitize-triton    memcheck the Triton kernels too
#   --python PY          interpreter (default: python3, or .venv/bin/python where it exists)
# Exit status: 0 when every step that ran passed and none was cut short by the budget, else 1.
# Expected on an H100/H200 (16 cores; an estimate before any run, see the summary's times): phase
# 1 about 2 min (the build), phase 2 about 1.5 min, phase 3 about 4 min. Steps the budget cut are
# finished on the still-warm machine (its in-place build and caches are kept), e.g.:
#   bash tools/gpu/check.sh --only "flex:float16 bench:float32"
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -x "$ROOT/.venv/bin/python" ]; then PY="${PYTHON:-$ROOT/.venv/bin/python}"; fi
PY="${PYTHON:-${PY:-python3}}"
OUT="${OUT:-./gpu_out}"
WORK="${NAT_MM_CHECK_WORK:-/tmp/nat_mm_check}"
DRY=0
BUDGET=
SKIP=" "
ONLY=" "
DTYPES="bfloat16 float16 float32"
FLEX_DTYPES="bfloat16 float16"
BACKENDS="triton tiled nat_mm_ref sdpa"
FLEX_BACKENDS="flex flex_tiled"
REPEATS=
SANITIZE_TRITON=0
RESERVE=15  # seconds kept for the summary
NVCC_REPORT="-Xptxas -v -Xptxas -warn-spills"
SANITIZER_FILTER="${CHECK_SANITIZER_FILTER-regex=nat_mm|na2d}"

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-dry-run) DRY=1; shift ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --skip) SKIP+="$2 "; shift 2 ;;
    --only) ONLY+="$2 "; shift 2 ;;
    --dtypes) DTYPES="$2"; shift 2 ;;
    --flex-dtypes) FLEX_DTYPES="$2"; shift 2 ;;
    --backends) BACKENDS="$2"; shift 2 ;;
    --flex-backends) FLEX_BACKENDS="$2"; shift 2 ;;
    --repeats) REPEATS="$2"; shift 2 ;;
    --sanitize-triton) SANITIZE_TRITON=1; shift ;;
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
CONTINUATION=0
[ "$SKIP$ONLY" = "  " ] || CONTINUATION=1
if [ "$CONTINUATION" = 0 ]; then rm -rf "$WORK/json" "$WORK/logs" "$WORK/notes"; fi
mkdir -p "$WORK/json" "$WORK/logs" "$WORK/notes" || { echo "check.sh: cannot create $WORK" >&2
  exit 2; }
WORK="$(cd "$WORK" && pwd)"
cd "$ROOT" || exit 2
# The checkout's nat_mm first (tools/*.py run as scripts); a missing extension fails loudly
# instead of starting a JIT build (NAT_MM_NO_JIT= allows one).
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 NAT_MM_CHECK_WORK="$WORK"
export NAT_MM_NO_JIT="${NAT_MM_NO_JIT-1}"
START=$(date +%s)
FAILED=0
log() { printf '[check %s +%4ss] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - START ))" "$*" \
  | tee -a "$LOG"; }
record() {  # step, status, rc, seconds[, note]
  printf '%-18s %-8s rc=%-4s %5ss%s\n' "$1" "$2" "$3" "$4" "${5:+  $5}" >>"$SUMMARY"
  case "$2" in ok|skipped|stopped) ;; *) FAILED=1 ;; esac
}
left() { echo $(( START + BUDGET - RESERVE - $(date +%s) )); }

# selected NAME: not skipped, and in --only when given; NAME, its base before ':' or its group.
group_of() { case "$1" in memcheck|racecheck|synccheck|initcheck) echo sanitize ;;
  warm-*) echo warm ;; *) echo - ;; esac; }
listed() {  # list name
  local base="${2%%:*}" group
  group="$(group_of "$2")"
  [[ "$1" == *" $2 "* || "$1" == *" $base "* || "$1" == *" $group "* ]]
}
selected() {
  if listed "$SKIP" "$1"; then return 1; fi
  [ "$ONLY" = " " ] || listed "$ONLY" "$1"
}
not_selected() {  # name: log and record why it does not run
  local why=--skip
  listed "$SKIP" "$1" || why=--only
  log "== $1: skipped ($why)"
  record "$1" skipped - 0
}
status_of() { case "$1" in 0) echo ok ;; 98) echo skipped ;; 124|137) echo timeout ;;
  *) echo FAILED ;; esac; }
note_of() { [ -s "$WORK/notes/$1" ] && head -1 "$WORK/notes/$1"; }

# run_step NAME CAP CMD...: run CMD in the foreground with timeout min(CAP, what is left).
# A step may write a one-line note for the summary to $STEP_NOTE; exit status 98 = nothing to do.
run_step() {
  local name="$1" cap="$2" rc t0 status
  shift 2
  selected "$name" || { not_selected "$name"; return 0; }
  if [ "$(left)" -lt 15 ]; then
    log "== $name: NOT RUN, the ${BUDGET} s budget is spent"; record "$name" no-time - 0
    return 1
  fi
  [ "$cap" -le "$(left)" ] || cap=$(left)
  log "== $name (timeout ${cap} s): $*"
  t0=$(date +%s)
  rm -f "$WORK/notes/$name"
  # bash -c: CMD may be one of the functions below (exported); timeout signals its whole group.
  STEP_NOTE="$WORK/notes/$name" timeout -k 10 "$cap" bash -c '"$@"' "$name" "$@" </dev/null 2>&1 \
    | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  status="$(status_of "$rc")"
  [ "$rc" = 0 ] || echo | tee -a "$LOG"  # a killed step may leave its last line unfinished
  log "== $name: $status (rc $rc) in $(( $(date +%s) - t0 )) s"
  record "$name" "$status" "$rc" "$(( $(date +%s) - t0 ))" "$(note_of "$name")"
  return "$rc"
}

# bg_start NAME CAP CMD...: the same in the background, output into $WORK/logs/NAME.log;
# bg_wait NAME [stop] collects it (stop: end it first if it still runs; not a failure).
declare -A BG_PID BG_T0
BG_ORDER=()
bg_start() {
  local name="$1" cap="$2"
  shift 2
  selected "$name" || { not_selected "$name"; return 0; }
  if [ "$(left)" -lt 15 ]; then
    log "== $name: NOT RUN, the ${BUDGET} s budget is spent"; record "$name" no-time - 0
    return 1
  fi
  [ "$cap" -le "$(left)" ] || cap=$(left)
  log "== $name (background, timeout ${cap} s; log at its end): $*"
  rm -f "$WORK/notes/$name"
  STEP_NOTE="$WORK/notes/$name" timeout -k 10 "$cap" bash -c '"$@"' "$name" "$@" </dev/null \
    >"$WORK/logs/$name.log" 2>&1 &
  BG_PID[$name]=$!
  BG_T0[$name]=$(date +%s)
  BG_ORDER+=("$name")
}
bg_wait() {
  local name="$1" stop="${2:-}" pid rc status lines secs
  pid="${BG_PID[$name]:-}"
  [ -n "$pid" ] || return 0
  unset "BG_PID[$name]"
  if [ -n "$stop" ] && kill -0 "$pid" 2>/dev/null; then
    log "== $name: stopping it (what it compiled stays cached)"
    kill -TERM "$pid" 2>/dev/null
    stop=stopped
  fi
  wait "$pid"
  rc=$?
  status="$(status_of "$rc")"
  [ "$stop" != stopped ] || status=stopped
  # its own run time: until its log's last write (it may have ended before this wait)
  secs=$(( $(stat -c %Y "$WORK/logs/$name.log" 2>/dev/null || date +%s) - ${BG_T0[$name]} ))
  log "== $name (background) output:"
  cat "$WORK/logs/$name.log" >>"$LOG"
  lines=$(wc -l <"$WORK/logs/$name.log")
  [ "$lines" -le 40 ] || echo "   ... $((lines - 40)) lines in $LOG"
  tail -n 40 "$WORK/logs/$name.log"
  log "== $name: $status (rc $rc) in $secs s (background, collected at" \
    "+$(( $(date +%s) - START )) s)"
  record "$name" "$status" "$rc" "$secs" "$(note_of "$name")"
}
bg_wait_all() {  # every background step still running, in the order they started
  local name
  for name in "${BG_ORDER[@]}"; do [ -z "${BG_PID[$name]:-}" ] || bg_wait "$name"; done
}
no_gpu() { log "== $1: skipped (no GPU)"; record "$1" skipped - 0; }

# --------------------------------------------------------------------------------------------
HAVE_GPU="$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null)"
if [ "$HAVE_GPU" != 1 ] && [ "$DRY" = 0 ]; then
  log "no GPU visible to $PY (torch.cuda.is_available() is not True): switching to --cpu-dry-run"
  DRY=1
fi
if [ "$DRY" = 1 ]; then
  BUDGET="${BUDGET:-900}"; REPEATS="${REPEATS:-1}"; DEVICE=cpu; SHAPES=smoke
  DTYPES=float32; FLEX_DTYPES=float32; BACKENDS=gather
else
  BUDGET="${BUDGET:-480}"; REPEATS="${REPEATS:-20}"; DEVICE=cuda; SHAPES=800x1216
fi
log "nat_mm tools/gpu/check.sh: mode $([ "$DRY" = 1 ] && echo cpu-dry-run || echo gpu)," \
  "budget ${BUDGET} s, python $PY, OUT=$OUT, scratch $WORK" \
  "($([ "$CONTINUATION" = 1 ] && echo 'kept: --skip/--only' || echo fresh))"

env_info() {
  "$PY" - "$DEVICE" "$WORK/backends.txt" <<'PYENV'
import importlib.util, os, platform, sys
import torch
device, backends_file = sys.argv[1:3]
print(f'python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__} '
      f'(CUDA {torch.version.cuda}), {os.cpu_count()} CPUs, {platform.machine()}')
versions = []
for name in ('triton', 'timm', 'pytest', 'xdist', 'hypothesis', 'mmengine'):
    if importlib.util.find_spec(name) is None:
        versions.append(f'{name} -')
        continue
    module = __import__(name)
    versions.append(f'{name} {getattr(module, "__version__", "?")}')
print('packages: ' + ', '.join(versions))
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f'GPU: {p.name}, capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, '
          f'{p.total_memory / 2**30:.0f} GiB, L2 {getattr(p, "L2_cache_size", 0) / 2**20:.0f} MiB, '
          f'shared memory per block (opt-in) '
          f'{getattr(p, "shared_memory_per_block_optin", "?")} B')
sys.path.insert(0, 'nat_mm/ops')
from _build import find_cuda_home  # noqa: E402  (the toolkit setup.py will use)
print(f'CUDA toolkit: {find_cuda_home()}')
from nat_mm.utils.na_benchmark import make_backends  # noqa: E402
names = sorted(make_backends(device))
print(f'benchmark_op.py backends on {device}: {" ".join(names)}')
with open(backends_file, 'w') as f:
    f.write(' '.join(names) + '\n')
PYENV
  local rc=$?
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit \
      --format=csv || true
  fi
  if command -v nvcc >/dev/null; then nvcc --version | tail -2; fi
  if [ -n "$SANITIZER" ]; then "$SANITIZER" --version | head -2; else
    echo "compute-sanitizer: not found"; fi
  echo "tree: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')," \
    "$(git -C "$ROOT" status --short 2>/dev/null | wc -l) paths changed"
  return "$rc"
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
  echo "TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=$(nproc) NVCC_APPEND_FLAGS='$NVCC_REPORT'" \
    "$PY setup.py build_ext --inplace (full log: $OUT/build.log)"
  if ! env TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$(nproc)" \
      NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:+$NVCC_APPEND_FLAGS }$NVCC_REPORT" \
      "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
    grep -E 'error|Error' "$OUT/build.log" | head -30
    tail -20 "$OUT/build.log"
    return 1
  fi
  grep -iE 'warning' "$OUT/build.log" | grep -v -e Wunused -e 'Registers are spilled' | head -10
  "$PY" tools/gpu/summarize.py spills "$OUT/build.log" | tee "$WORK/spills.txt"
  head -1 "$WORK/spills.txt" >"$STEP_NOTE"
  "$PY" -c 'from nat_mm.ops import extension_has_cuda as c; import sys
print("nat_mm._C loaded, with CUDA:", c()); sys.exit(0 if c() else 1)'
}

capped() {  # build | check
  local args=()
  [ "$1" = check ] && args=(--check)
  if [ "$DRY" = 1 ]; then
    "$PY" tools/gpu/build_capped.py --emulator "${args[@]}"
    return
  fi
  # nvcc's output (ptxas' report) goes to capped-build.nvcc.log, appended to build.log later.
  set -o pipefail
  env TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS=4 \
    NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:+$NVCC_APPEND_FLAGS }$NVCC_REPORT" \
    "$PY" tools/gpu/build_capped.py "${args[@]}" 2>&1 | tee -a "$WORK/logs/capped-build.nvcc.log" \
    | { grep -v -e '^ptxas info' -e 'bytes stack frame' -e '^\[[0-9]*/[0-9]*\]' \
        -e 'Registers are spilled' || true; }
}

sanitize() {  # tool
  if [ -z "$SANITIZER" ]; then echo "compute-sanitizer not found"; return 1; fi
  local extra=() kernels=(reference tiled)
  [ "$1" = racecheck ] && extra+=(--racecheck-report analysis)
  # A filtered initcheck misses the writes of the kernels it skips (torch.randn's) and reports
  # their reads as uninitialized: it checks every kernel.
  [ "$1" = initcheck ] || [ -z "$SANITIZER_FILTER" ] || extra+=(--kernel-name "$SANITIZER_FILTER")
  [ "$1" = memcheck ] && [ "$SANITIZE_TRITON" = 1 ] && kernels+=(triton)
  echo "$1: ${extra[*]:-every kernel}; sanitize_cases.py --kernels ${kernels[*]}" >"$STEP_NOTE"
  # No caching allocator: every tensor is its own allocation, so overruns hit its bounds.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool "$1" ${extra[@]+"${extra[@]}"} \
    --error-exitcode 1 --print-limit 20 "$PY" tools/gpu/sanitize_cases.py --kernels "${kernels[@]}"
}

run_pytest() {  # suite: cuda | triton | flex
  local args=() n=0 override=
  case "$1" in
    cuda) n=4; override="${CHECK_PYTEST_ARGS:-}"
      args=(tests/ops/test_ops.py tests/tools/test_benchmark_op.py -k "cuda and not flex") ;;
    triton) n=6; override="${CHECK_TRITON_PYTEST_ARGS:-}"
      args=(tests/ops/test_triton.py -k "bfloat16 or not float16") ;;
    flex) n=4; override="${CHECK_FLEX_PYTEST_ARGS:-}"
      args=(tests/ops/test_flex.py tests/tools/test_benchmark_op.py -k flex -m "not slow") ;;
  esac
  if [ "$DRY" = 1 ]; then
    n=0
    case "$1" in
      cuda) args=(tests/tools/test_benchmark_op.py -m "not slow") ;;
      triton) args=(tests/ops/test_triton.py -k "tile-edges-k3-float32-rpb or opcheck") ;;
      flex) args=(tests/ops/test_flex.py -m "not slow" -k "reshape or bad_order or cached") ;;
    esac
  fi
  [ -z "$override" ] || read -ra args <<<"$override"
  local xdist=()
  if [ "$n" -gt 0 ] && "$PY" -c 'import xdist' 2>/dev/null; then xdist=(-n "$n"); fi
  "$PY" -m pytest -q -p no:cacheprovider --maxfail=10 ${xdist[@]+"${xdist[@]}"} "${args[@]}"
}

tests_flex() {
  local rc=0
  run_pytest flex || rc=$?
  if [ "$DRY" = 0 ]; then
    "$PY" tools/gpu/sanitize_cases.py --kernels flex || rc=$?
  fi
  return "$rc"
}

pick_backends() {  # wanted...: those benchmark_op.py offers here (env step's list); notes others
  local offered b picked=()
  offered=" $(cat "$WORK/backends.txt" 2>/dev/null) "
  for b in "$@"; do
    if [ "$offered" = "  " ] || [[ "$offered" == *" $b "* ]]; then picked+=("$b"); else
      echo "benchmark_op.py has no backend '$b' here: left out" >&2; fi
  done
  echo "${picked[*]}"
}

merge_bench() {
  "$PY" tools/gpu/summarize.py merge "$OUT/bench.json" "$WORK"/json/bench_*.json \
    --env "$WORK/json/env.json" >/dev/null 2>&1 || echo "summarize.py merge failed"
}

bench() {  # dtype part backends...: NAT-Tiny's layers through benchmark_op.py
  local dtype="$1" part="$2" backends rc
  shift 2
  backends="$(pick_backends "$@")"
  [ -n "$backends" ] || { echo "no backend to run"; return 98; }
  # shellcheck disable=SC2086
  "$PY" tools/benchmark_op.py --device "$DEVICE" --dtype "$dtype" --shapes $SHAPES \
    --backends $backends --repeats "$REPEATS" \
    --json "$WORK/json/bench_${dtype}${part:+_$part}.json" | tee -a "$OUT/bench_tables.txt"
  rc=${PIPESTATUS[0]}
  merge_bench
  return "$rc"
}

warm() {  # backends...: compile ahead (tools/gpu/warm.py)
  local backends
  backends="$(pick_backends "$@")"
  [ -n "$backends" ] || { echo "no backend to compile"; return 98; }
  if [ "$DRY" = 1 ]; then
    # shellcheck disable=SC2086
    "$PY" tools/gpu/warm.py --device cpu --backends $backends --dtypes $FLEX_DTYPES \
      --shapes smoke --modes fwd
    return
  fi
  local dtypes="$DTYPES"
  [[ "$backends" != *flex* ]] || dtypes="$FLEX_DTYPES"
  # shellcheck disable=SC2086
  "$PY" tools/gpu/warm.py --device cuda --backends $backends --dtypes $dtypes --shapes $SHAPES
}

backbone() {
  if [ "$DRY" = 1 ]; then
    "$PY" tools/benchmark_backbone.py --device cpu --shape 64 96 --swin timm --repeats 1 \
      --warmup 0 --json "$OUT/backbone.json"
    return
  fi
  "$PY" tools/benchmark_backbone.py --device cuda --dtype bfloat16 --swin timm \
    --nat-kernels triton tiled --repeats "${CHECK_BACKBONE_REPEATS:-10}" --warmup 2 \
    --json "$OUT/backbone.json"
}

auto_picks() {  # env.json: the GPU and what nat_mm's auto picks today per dtype (after the build)
  "$PY" - "$WORK/json/env.json" <<'PYAUTO'
import json, sys
import torch
info = dict(torch=torch.__version__, gpu=None, auto={})
if torch.cuda.is_available():
    from nat_mm.ops import _dispatch
    info['gpu'] = torch.cuda.get_device_name(0)
    for name in ('bfloat16', 'float16', 'float32'):
        try:
            info['auto'][name] = _dispatch.cuda_backend(getattr(torch, name), torch.device('cuda'))
        except Exception as error:  # noqa: BLE001 - say why in the summary
            info['auto'][name] = f'error: {error}'
with open(sys.argv[1], 'w') as f:
    json.dump(info, f)
print(f"auto today: {info['auto'] or '(no GPU)'}")
PYAUTO
}

export -f env_info build_ext capped sanitize run_pytest tests_flex pick_backends merge_bench \
  bench warm backbone
export PY OUT WORK SANITIZER REPEATS DRY DEVICE SHAPES DTYPES FLEX_DTYPES NVCC_REPORT \
  SANITIZER_FILTER SANITIZE_TRITON ROOT

# --- phase 1: compile ------------------------------------------------------------------------
run_step env 45 env_info
ARCH=
if [ "$DRY" = 0 ]; then
  ARCH="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
fi
export ARCH
bg_start tests-triton 240 run_pytest triton
if [ "$DRY" = 1 ]; then no_gpu warm-triton; else bg_start warm-triton 240 warm triton; fi
# shellcheck disable=SC2086
bg_start warm-flex 400 env TORCHINDUCTOR_COMPILE_THREADS=4 bash -c 'warm "$@"' warm $FLEX_BACKENDS
if selected capped || selected capped-build; then bg_start capped-build 300 capped build
else not_selected capped-build; fi
if [ "$DRY" = 1 ]; then
  log "== build: skipped (no GPU): the dry run uses the extension make setup built"
  record build skipped - 0
else
  run_step build 300 build_ext
fi

# --- phase 2: correctness --------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
  for tool in memcheck racecheck synccheck initcheck; do no_gpu "$tool"; done
  bg_start sanitize-cases:cpu 180 "$PY" tools/gpu/sanitize_cases.py --device cpu
else
  for tool in memcheck racecheck synccheck initcheck; do bg_start "$tool" 240 sanitize "$tool"; done
fi
bg_start tests-flex 240 tests_flex
bg_start capped 300 capped check
run_step tests 200 run_pytest cuda
for name in "${BG_ORDER[@]}"; do [ "$name" = warm-flex ] || bg_wait "$name"; done
bg_wait warm-flex stop
# capped-build's nvcc output, after the main build's in build.log
if [ -s "$WORK/logs/capped-build.nvcc.log" ]; then
  { echo; echo "==== tools/gpu/build_capped.py (NAT_MAX_BLOCKS=2)"
    cat "$WORK/logs/capped-build.nvcc.log"; } >>"$OUT/build.log"
fi

# --- phase 3: timings, one at a time ---------------------------------------------------------
for dtype in $DTYPES; do
  # shellcheck disable=SC2086
  [ "$dtype" = float32 ] || run_step "bench:$dtype" 150 bench "$dtype" "" $BACKENDS
done
run_step backbone 150 backbone
for dtype in $FLEX_DTYPES; do
  # shellcheck disable=SC2086
  run_step "flex:$dtype" 240 bench "$dtype" flex $FLEX_BACKENDS
done
for dtype in $DTYPES; do
  # shellcheck disable=SC2086
  [ "$dtype" != float32 ] || run_step "bench:$dtype" 150 bench "$dtype" "" $BACKENDS
done
bg_wait_all  # none should be left; a --only run may leave one

# --- summary ---------------------------------------------------------------------------------
if [ -s "$OUT/bench_tables.txt" ]; then  # the tables again, last, where a log's tail shows them
  log "== benchmark tables ($OUT/bench_tables.txt)"
  cat "$OUT/bench_tables.txt"
fi
log "== summary ($(( $(date +%s) - START )) s of ${BUDGET} s)"
auto_picks 2>&1 | tail -1 | tee -a "$LOG"
merge_bench
if [ -s "$WORK/spills.txt" ]; then { echo; cat "$WORK/spills.txt"; } >>"$SUMMARY"; fi
echo >>"$SUMMARY"
"$PY" tools/gpu/summarize.py report "$OUT/bench.json" --backbone "$OUT/backbone.json" \
  >>"$SUMMARY" 2>&1 || echo "summarize.py report failed" >>"$SUMMARY"
tee -a "$LOG" <"$SUMMARY"
ls -l "$OUT" | tee -a "$LOG"
exit "$FAILED"
