#!/usr/bin/env bash
# Set up nat_mm's OpenMMLab stack on the lent GPU machine, from the files carried in .whl/.
#
# The GPU machine has Python 3.12, torch, timm, nvcc and ninja, but no OpenMMLab packages and no
# network: run tools/gpu/fetch_wheels.sh here first, carry .whl with the device tool, and run this
# there (`bash tools/gpu/bootstrap.sh`, from the repo root). Steps, each logged with a time stamp:
#   1. install the carried wheels into a target folder (default /tmp/site) with pip --target;
#   2. build mmcv 2.1.0 from the carried sdist with its CUDA ops (FORCE_CUDA=1, C++20 as
#      tools/setup_env.sh does, no pkg_resources, no build isolation, TORCH_CUDA_ARCH_LIST=9.0)
#      and install it there; the wheel is cached ($NAT_MM_CACHE/wheels, default ~/.cache/nat_mm)
#      and the build folder is kept (--work), so a run cut off by a time limit resumes where
#      ninja stopped;
#   3. build nat_mm's extension in place (python setup.py build_ext --inplace);
#   4. check `import mmcv.ops, mmdet, mmseg, nat_mm`, that mmcv and nat_mm were built with CUDA,
#      and run one CUDA op of each; write an env file to source before using them.
# Idempotent: a second run reuses everything (seconds). The first takes a few minutes on 16 cores
# (mmcv's 59 CUDA files, about 30 s each on one core for sm_90, and 77 C++ files; then nat_mm's
# kernels); if the device tool's 10-minute limit stops it, run it again while the machine is warm.
#
# Usage: bash tools/gpu/bootstrap.sh [options]
#   --wheels DIR       carried wheels and the mmcv sdist (default: .whl; env NAT_MM_WHEEL_DIR)
#   --target DIR       pip --target folder (default: /tmp/site; env NAT_MM_TARGET)
#   --work DIR         mmcv build folder, logs, env.sh (default: /tmp/nat_mm_gpu; env NAT_MM_WORK)
#   --python PY        interpreter (default: python3; env PYTHON)
#   --mmcv-wheel WHL   install this mmcv wheel instead of building one (env NAT_MM_MMCV_WHEEL)
#   --cpu              no CUDA: mmcv and nat_mm with CPU ops only (env NAT_MM_BOOTSTRAP_CPU=1).
#                      Automatic when torch sees no GPU; NAT_MM_BOOTSTRAP_CPU=0 forces CUDA builds
#   --skip-ext         do not build nat_mm's extension (use the one there, or none)
#   --jobs N           parallel compile jobs (default: nproc; env MAX_JOBS)
# When the CUDA build of mmcv fails, the log's end is printed and the script stops;
# NAT_MM_MMCV_FALLBACK=1 builds mmcv with CPU ops only instead, with a warning (segmentation then
# runs on the GPU; mmdet's RoIAlign/NMS on CUDA tensors do not). Then: source
# /tmp/nat_mm_gpu/env.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WHEELS="${NAT_MM_WHEEL_DIR:-$ROOT/.whl}"
TARGET="${NAT_MM_TARGET:-/tmp/site}"
WORK="${NAT_MM_WORK:-/tmp/nat_mm_gpu}"
PY="${PYTHON:-python3}"
MMCV_WHEEL="${NAT_MM_MMCV_WHEEL:-}"
CPU_MODE="${NAT_MM_BOOTSTRAP_CPU:-auto}"
SKIP_EXT=0
JOBS="${MAX_JOBS:-$(nproc)}"
ARCHS="${TORCH_CUDA_ARCH_LIST:-9.0}"
CACHE="${NAT_MM_CACHE:-${HOME:-/tmp}/.cache/nat_mm}"
FALLBACK="${NAT_MM_MMCV_FALLBACK:-0}"
MMCV_VERSION=2.1.0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --target) TARGET="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --mmcv-wheel) MMCV_WHEEL="$2"; shift 2 ;;
    --cpu) CPU_MODE=1; shift ;;
    --skip-ext) SKIP_EXT=1; shift ;;
    --jobs) JOBS="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bootstrap.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

START=$(date +%s)
STEP_START=$START
STEP=setup
log() { printf '[bootstrap %s +%4ss] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - START ))" "$*"; }
step() {
  [ "$STEP" = setup ] || log "$STEP: done in $(( $(date +%s) - STEP_START )) s"
  STEP="$1"; STEP_START=$(date +%s); log "== $STEP"
}
die() { printf 'bootstrap.sh: %s\n' "$*" >&2; exit 1; }
on_exit() {
  local rc=$?
  [ $rc -eq 0 ] || log "FAILED in step \"$STEP\" (exit $rc) after $(( $(date +%s) - START )) s"
}
trap on_exit EXIT

[ -d "$WHEELS" ] || die "no wheel folder $WHEELS: run tools/gpu/fetch_wheels.sh on a machine with \
network and carry .whl (device tool: carry [\".whl\"]), or pass --wheels DIR"
command -v "$PY" >/dev/null || die "no Python interpreter '$PY' (--python)"
mkdir -p "$TARGET" "$WORK/logs"
TARGET="$(cd "$TARGET" && pwd)"
WORK="$(cd "$WORK" && pwd)"
export PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# ---------------------------------------------------------------------------------------------
step "environment"
ENVLINE="$("$PY" - <<'PYENV'
import sys
import torch
gpu = torch.cuda.is_available()
name = torch.cuda.get_device_name(0).replace(' ', '_') if gpu else '-'
print(f'{sys.version.split()[0]} cp{sys.version_info[0]}{sys.version_info[1]} '
      f'{torch.__version__.split("+")[0]} {torch.version.cuda or "none"} {int(gpu)} {name}')
PYENV
)" || die "$PY cannot import torch"
read -r PYVER PYTAG TORCH_VERSION TORCH_CUDA HAVE_GPU GPU_NAME <<<"$ENVLINE"
CUDA_HOME_FOUND="$("$PY" - "$ROOT/nat_mm/ops/_build.py" <<'PYCUDA'
import importlib.util, sys
spec = importlib.util.spec_from_file_location('_nat_mm_build', sys.argv[1])
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)
print(build.find_cuda_home() or '')
PYCUDA
)"
if [ "$CPU_MODE" = auto ]; then
  if [ "$HAVE_GPU" = 1 ] && [ -n "$CUDA_HOME_FOUND" ]; then CPU_MODE=0; else CPU_MODE=1; fi
fi
if [ "$CPU_MODE" = 0 ] && [ -z "$CUDA_HOME_FOUND" ]; then
  die "CUDA builds asked for, but no CUDA toolkit (nvcc) found; set CUDA_HOME"
fi
log "python $PYVER ($PY), torch $TORCH_VERSION (CUDA $TORCH_CUDA), GPU: $GPU_NAME," \
  "toolkit: ${CUDA_HOME_FOUND:-none}, jobs: $JOBS"
if [ "$CPU_MODE" = 1 ]; then
  log "mode: CPU only (no FORCE_CUDA; nat_mm with NAT_MM_NO_CUDA=1)"
  FLAVOUR="$(uname -m)"  # the key tools/setup_env.sh caches its CPU build under
else
  export CUDA_HOME="$CUDA_HOME_FOUND"
  log "mode: CUDA, TORCH_CUDA_ARCH_LIST=$ARCHS, CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" \
    --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'))"
  FLAVOUR="$(uname -m)-cuda$TORCH_CUDA-sm${ARCHS//[;. ]/_}"
fi

# ---------------------------------------------------------------------------------------------
step "install the carried wheels into $TARGET"
shopt -s nullglob
WHLS=("$WHEELS"/*.whl)
shopt -u nullglob
[ ${#WHLS[@]} -gt 0 ] || die "no wheels in $WHEELS (run tools/gpu/fetch_wheels.sh)"
STAMP="$TARGET/.nat_mm_wheels"
LISTING="$(cd "$WHEELS" && ls -l --time-style=+%s ./*.whl | awk '{ print $5, $6, $7 }')"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$LISTING" ]; then
  log "${#WHLS[@]} wheels already installed (same files as last time)"
else
  "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$TARGET" "${WHLS[@]}"
  echo "$LISTING" >"$STAMP"
  log "installed ${#WHLS[@]} wheels"
fi

# ---------------------------------------------------------------------------------------------
step "mmcv $MMCV_VERSION"
mmcv_state() {  # prints 'cuda', 'cpu', or nothing when mmcv with ops is not importable
  "$PY" - "$MMCV_VERSION" 2>/dev/null <<'PYMMCV' || true
import sys
import mmcv
from mmcv.ops import get_compiling_cuda_version  # fails when mmcv has no compiled ops
assert mmcv.__version__ == sys.argv[1], mmcv.__version__
print('cpu' if get_compiling_cuda_version() == 'not available' else 'cuda')
PYMMCV
}
build_mmcv() {  # $1 = cuda|cpu; the wheel ends up in $2
  local kind="$1" out="$2" src="$WORK/build/mmcv-$MMCV_VERSION-$1"
  local buildlog="$WORK/logs/mmcv_$1.log"
  local sdist="$WHEELS/mmcv-$MMCV_VERSION.tar.gz" pid n
  [ -f "$sdist" ] || die "no $sdist: run tools/gpu/fetch_wheels.sh"
  if [ ! -f "$src/setup.py" ]; then
    mkdir -p "$src"
    tar -xzf "$sdist" -C "$src" --strip-components=1
    # torch >= 2.1 headers need C++20 with current compilers; mmcv forces C++14/17.
    sed -i 's/-std=c++14/-std=c++20/g; s/-std=c++17/-std=c++20/g' "$src/setup.py"
    # setuptools >= 82 has no pkg_resources: take the same three names from the stdlib/packaging.
    local stdlib='from importlib.metadata import PackageNotFoundError as DistributionNotFound'
    stdlib+='\nfrom importlib.metadata import distribution as get_distribution'
    stdlib+='\nfrom packaging.version import parse as parse_version'
    local pkgres='from pkg_resources import DistributionNotFound, get_distribution, parse_version'
    sed -i "s/^$pkgres\$/$stdlib/" "$src/setup.py"
    grep -q '^from packaging.version import parse as parse_version' "$src/setup.py" \
      || die "could not patch mmcv's setup.py (pkg_resources import not found)"
  else
    log "resuming the build in $src (delete it to start afresh)"
  fi
  local envs=(MMCV_WITH_OPS=1 MAX_JOBS="$JOBS")
  if [ "$kind" = cuda ]; then
    envs+=(FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCHS")
    # Minimal toolkits lack cuBLAS/cuSPARSE headers that ATen's CUDA headers include; torch's
    # wheels carry them (nat_mm/ops/_build.py finds them the same way).
    local incs
    incs="$("$PY" - "$ROOT/nat_mm/ops/_build.py" "$CUDA_HOME" <<'PYINC'
import importlib.util, sys
spec = importlib.util.spec_from_file_location('_nat_mm_build', sys.argv[1])
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)
print(':'.join(build.cuda_library_includes(sys.argv[2])))
PYINC
)"
    [ -z "$incs" ] || envs+=(CPATH="$incs${CPATH:+:$CPATH}")
  else
    envs+=(FORCE_CUDA=0 CUDA_VISIBLE_DEVICES=)
  fi
  log "building mmcv with $kind ops: ${envs[*]} (log: $buildlog)"
  rm -f "$src"/dist_wheel/mmcv-*.whl
  (cd "$src" && env "${envs[@]}" "$PY" -m pip wheel -v --no-deps --no-build-isolation \
    --no-index -w "$src/dist_wheel" . >"$buildlog" 2>&1) &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 30
    n=$(find "$src/build" -name '*.o' 2>/dev/null | wc -l)
    kill -0 "$pid" 2>/dev/null && log "  ... $n objects compiled"
  done
  if ! wait "$pid"; then
    log "mmcv $kind build FAILED; the end of $buildlog:"
    grep -E 'error|Error' "$buildlog" | head -20 || true
    tail -30 "$buildlog"
    return 1
  fi
  mkdir -p "$out"
  mv "$src"/dist_wheel/mmcv-*.whl "$out/"
}

WANT=$([ "$CPU_MODE" = 1 ] && echo cpu || echo cuda)
STATE="$(mmcv_state)"
if [ "$STATE" = "$WANT" ]; then
  log "mmcv $MMCV_VERSION with $STATE ops already in $TARGET"
else
  CACHED="$CACHE/wheels/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$PYTAG-$FLAVOUR"
  if [ -z "$MMCV_WHEEL" ]; then
    MMCV_WHEEL="$(ls "$CACHED"/mmcv-*.whl 2>/dev/null | head -1 || true)"
    [ -z "$MMCV_WHEEL" ] || log "reusing the cached wheel $MMCV_WHEEL"
  fi
  if [ -z "$MMCV_WHEEL" ]; then
    if build_mmcv "$WANT" "$CACHED"; then
      MMCV_WHEEL="$(ls "$CACHED"/mmcv-*.whl | head -1)"
    elif [ "$WANT" = cuda ] && [ "$FALLBACK" = 1 ]; then
      log "WARNING: NAT_MM_MMCV_FALLBACK=1: falling back to mmcv with CPU ops only"
      CACHED="$CACHE/wheels/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$PYTAG-$(uname -m)"
      build_mmcv cpu "$CACHED" || die "mmcv did not build, with CUDA ops nor without"
      MMCV_WHEEL="$(ls "$CACHED"/mmcv-*.whl | head -1)"
    else
      die "mmcv did not build (see $WORK/logs/mmcv_$WANT.log)"
    fi
  fi
  [ -f "$MMCV_WHEEL" ] || die "no mmcv wheel $MMCV_WHEEL"
  "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$TARGET" "$MMCV_WHEEL"
  STATE="$(mmcv_state)"
  [ -n "$STATE" ] || die "mmcv from $MMCV_WHEEL does not import with its ops (python: $PY)"
  log "installed $(basename "$MMCV_WHEEL") ($STATE ops)"
fi

# ---------------------------------------------------------------------------------------------
step "nat_mm extension"
if [ "$SKIP_EXT" = 1 ]; then
  log "skipped (--skip-ext)"
else
  EXT_ENV=(MAX_JOBS="$JOBS")
  if [ "$CPU_MODE" = 1 ]; then EXT_ENV+=(NAT_MM_NO_CUDA=1); else
    EXT_ENV+=(TORCH_CUDA_ARCH_LIST="$ARCHS"); fi
  log "python setup.py build_ext --inplace with ${EXT_ENV[*]} (log: $WORK/logs/nat_mm_ext.log)"
  if ! (cd "$ROOT" && env "${EXT_ENV[@]}" "$PY" setup.py build_ext --inplace \
        >"$WORK/logs/nat_mm_ext.log" 2>&1); then
    grep -E 'error' "$WORK/logs/nat_mm_ext.log" | head -20 || true
    tail -30 "$WORK/logs/nat_mm_ext.log"
    die "nat_mm's extension did not build"
  fi
  log "$(grep -cE '^\[[0-9]+/[0-9]+\]' "$WORK/logs/nat_mm_ext.log" || true) ninja steps;" \
    "$(grep -oE 'nat_mm/_C[^ ]*\.so' "$WORK/logs/nat_mm_ext.log" | tail -1)"
fi

# ---------------------------------------------------------------------------------------------
step "check"
cat >"$WORK/env.sh" <<ENV
# Written by tools/gpu/bootstrap.sh: source it before using nat_mm with OpenMMLab here.
export PYTHONPATH="$TARGET:$ROOT\${PYTHONPATH:+:\$PYTHONPATH}"
ENV
(cd "$ROOT" && PYTHONPATH="$TARGET:$ROOT" NAT_MM_NO_JIT=1 "$PY" - "$CPU_MODE" "$SKIP_EXT") \
  <<'PYCHECK'
import sys
import warnings

cpu_mode, skip_ext = sys.argv[1] == '1', sys.argv[2] == '1'
warnings.filterwarnings('ignore')
import torch
import mmcv
import mmcv.ops
import mmdet
import mmengine
import mmseg
import nat_mm
from mmcv.ops import get_compiling_cuda_version
from nat_mm.ops import extension_has_cuda, extension_loaded

mmcv_cuda = get_compiling_cuda_version()
print(f'mmengine {mmengine.__version__}, mmcv {mmcv.__version__} (ops built with CUDA: '
      f'{mmcv_cuda}), mmdet {mmdet.__version__}, mmseg {mmseg.__version__}')
for module in (mmcv, mmdet, mmseg, nat_mm):
    print(f'  {module.__name__:<7} from {module.__file__}')
from mmdet.registry import MODELS as DET
from mmseg.registry import MODELS as SEG
assert DET.get('NAT') is not None and SEG.get('DiNAT') is not None, 'nat_mm not registered'
print(f'nat_mm: extension loaded {extension_loaded()}, with CUDA {extension_has_cuda()}; '
      'NAT/DiNAT registered in mmdet and mmseg')
from mmengine.config import Config  # `mmdet::` / `mmseg::` bases need pkg_resources
for config in ('configs/det/mask_rcnn_nat_tiny_3x.py', 'configs/seg/upernet_nat_tiny_160k.py'):
    assert Config.fromfile(config).model.backbone.type == 'NAT', config
print('configs load (mmdet:: and mmseg:: bases found)')
problems = []
if not skip_ext and not extension_loaded():
    problems.append('nat_mm._C did not load')
if not cpu_mode:
    if mmcv_cuda == 'not available':
        print('WARNING: mmcv has CPU ops only: detectors fail on CUDA tensors (RoIAlign, NMS)')
    else:
        boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.]], device='cuda')
        keep = mmcv.ops.nms(boxes, torch.tensor([0.9, 0.8], device='cuda'), 0.5)[1]
        print(f'mmcv.ops.nms on CUDA: kept {keep.tolist()}')
    if not skip_ext and not extension_has_cuda():
        problems.append('nat_mm._C has no CUDA kernels')
    elif not skip_ext:
        from nat_mm.ops import na2d
        q = torch.randn(1, 14, 14, 2, 32, device='cuda')
        out = na2d(q, q, q, kernel_size=7)
        ref = na2d(q.cpu(), q.cpu(), q.cpu(), kernel_size=7)
        err = (out.cpu() - ref).abs().max().item()
        print(f'nat_mm na2d on CUDA vs CPU: max abs diff {err:.2e}')
        if err > 1e-4:
            problems.append(f'na2d on CUDA differs from the CPU by {err}')
if problems:
    sys.exit('check failed: ' + '; '.join(problems))
PYCHECK
step "finished"
log "total $(( $(date +%s) - START )) s; now: source $WORK/env.sh"
