#!/usr/bin/env bash
# Create .venv/ in the repo root and install nat_mm's pinned stack (requirements/constraints.txt).
#
# Idempotent: every step is skipped when its result is already there. mmcv 2.1.0 exists only as an
# sdist and needs two fixes to build against torch 2.14 (C++20 instead of its forced C++17, no
# build isolation so it sees our torch); the built wheel is cached outside the repo in
# $NAT_MM_CACHE (default ~/.cache/nat_mm), keyed by the mmcv, torch and Python versions, so a second
# setup on the same machine takes seconds instead of ~11 minutes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONSTRAINTS="$ROOT/requirements/constraints.txt"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
CACHE="${NAT_MM_CACHE:-$HOME/.cache/nat_mm}"
PYTHON="${PYTHON:-python3.11}"

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
pin() { sed -n "s/^$1==//p" "$CONSTRAINTS"; }
# This machine's pip config lists local index folders that are sometimes absent: drop that noise.
quiet_pip() { "$PY" -m pip "$@" 2> >(grep -v 'is neither a file nor a directory' >&2); }
pip_install() { quiet_pip install --quiet -c "$CONSTRAINTS" "$@"; }

if [ ! -x "$PY" ]; then
  log "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi

log "base tools and torch $(pin torch)"
pip_install setuptools wheel ninja torch torchvision numpy

# mmcv: build once from the sdist, then reuse the cached wheel.
MMCV_VERSION="$(pin mmcv)"
TORCH_VERSION="$(pin torch)"
PYTAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
WHEEL_DIR="$CACHE/wheels/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$PYTAG-$(uname -m)"
if ! "$PY" -c "import mmcv, sys; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" 2>/dev/null; then
  if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
    log "building mmcv $MMCV_VERSION with ops from the sdist (about 11 minutes on 2 cores)"
    BUILD="$(mktemp -d)"
    trap 'rm -rf "$BUILD"' EXIT
    quiet_pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
      -d "$BUILD" "mmcv==$MMCV_VERSION"
    tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD"
    SRC="$BUILD/mmcv-$MMCV_VERSION"
    # torch 2.14's headers need C++20; mmcv's setup.py forces C++17.
    sed -i 's/-std=c++14/-std=c++20/g; s/-std=c++17/-std=c++20/g; s#/std:c++14#/std:c++20#g; s#/std:c++17#/std:c++20#g' "$SRC/setup.py"
    mkdir -p "$BUILD/dist"
    (cd "$SRC" && MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      quiet_pip wheel --quiet --no-deps --no-build-isolation -w "$BUILD/dist" .)
    mkdir -p "$WHEEL_DIR"
    mv "$BUILD"/dist/mmcv-*.whl "$WHEEL_DIR/"
  else
    log "reusing cached mmcv wheel in $WHEEL_DIR"
  fi
  pip_install --no-deps "$WHEEL_DIR"/mmcv-*.whl
fi

log "OpenMMLab, timm and test dependencies"
pip_install mmcv=="$MMCV_VERSION" mmengine mmdet mmsegmentation ftfy regex timm pycocotools \
  opencv-python pytest pytest-xdist hypothesis natten onnx onnxruntime onnxscript matplotlib \
  model-index

log "nat_mm (editable) and its extension"
pip_install --no-deps --no-build-isolation -e "$ROOT"

log "checking imports"
"$PY" - <<'PYCHECK'
import mmcv.ops  # fails loudly when mmcv was built without its ops
import mmdet, mmseg, mmengine, timm
import nat_mm
from nat_mm.ops import extension_loaded
if not extension_loaded():
    raise SystemExit('nat_mm._C did not load: the extension did not build')
print(f'mmcv {mmcv.__version__} (ops OK), mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, '
      f'mmengine {mmengine.__version__}, timm {timm.__version__}, nat_mm extension OK')
PYCHECK
touch "$VENV/.nat_mm_setup_done"
log "done"
