#!/usr/bin/env bash
# Download, here, the Python packages the lent GPU machine lacks, for tools/gpu/bootstrap.sh there.
#
# The GPU machine (device tool, nvidia-h100-x1 / nvidia-h200) has Python 3.12, torch, timm, nvcc
# and ninja but no OpenMMLab packages and no network; files reach it only inside the repo's working
# tree (64 MiB in all, carried ignored folders included). This script fills .whl/ (in .gitignore;
# another --dest inside the repo goes into .git/info/exclude; carried with `carry: [".whl"]`) with:
#   - manylinux / pure-Python wheels of mmengine, mmdet, mmsegmentation and those of their runtime
#     requirements that the machine's image lacks (tools/gpu/device_packages.txt lists what it
#     has); torch, torchvision, timm, numpy, scipy, opencv, ... are NOT carried;
#   - the mmcv 2.1.0 sdist, which bootstrap.sh builds there with its CUDA ops.
# Versions come from requirements/constraints.txt where it pins them, else from PINS below (what
# .venv resolved here). It then checks every wheel's Requires-Dist against what is carried plus
# what the machine has, keeps exactly one file per package, and fails if .whl/ is over the limit.
#
# Usage: tools/gpu/fetch_wheels.sh [--dest DIR] [--python-version 3.12] [--limit-mib 55]
# Env:   PYTHON (the pip to download with; default .venv/bin/python, else python3)
# Idempotent: files already in DEST are kept; files of other versions are removed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CONSTRAINTS="$ROOT/requirements/constraints.txt"
DEVICE_PACKAGES="$ROOT/tools/gpu/device_packages.txt"
DEST="$ROOT/.whl"
PYVER=3.12
LIMIT_MIB=55
if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"; fi
PYTHON="${PYTHON:-python3}"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dest) DEST="$2"; shift 2 ;;
    --python-version) PYVER="$2"; shift 2 ;;
    --limit-mib) LIMIT_MIB="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "fetch_wheels.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
PYTAG="cp${PYVER/./}"

# Packages to carry as wheels; a bare name takes its version from constraints.txt. setuptools:
# mmengine imports pkg_resources at run time (config `mmdet::` bases), which setuptools >= 82
# dropped; the carried one shadows the machine's through PYTHONPATH.
PACKAGES=(mmengine mmdet mmsegmentation pycocotools ftfy setuptools)
# Versions for those not pinned in constraints.txt (as .venv resolved them with the pins).
PINS=(addict==2.4.0 yapf==0.43.0 platformdirs==4.14.8 termcolor==3.3.0 terminaltables==3.1.10
      shapely==2.2.0 prettytable==3.18.0 wcwidth==0.9.4)
SDIST=mmcv  # built there, with its CUDA ops, by bootstrap.sh

log() { printf '[fetch %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'fetch_wheels.sh: %s\n' "$*" >&2; exit 1; }
pin() {
  local v
  v="$(sed -n "s/^$1==//p" "$CONSTRAINTS")"
  [ -n "$v" ] || die "$1 has no pin in $CONSTRAINTS; add one or give NAME==VERSION in PINS"
  echo "$1==$v"
}
# This machine's pip config lists local index folders that are sometimes absent: drop that noise.
quiet_pip() { "$PYTHON" -m pip "$@" 2> >(grep -v 'is neither a file nor a directory' >&2); }

# Keep the wheel folder out of git (and so out of the working tree but for `carry`).
case "$DEST/" in
  "$ROOT"/*)
    EXCLUDE="$(cd "$ROOT" && git rev-parse --git-path info/exclude 2>/dev/null || true)"
    if [ -n "$EXCLUDE" ]; then
      case "$EXCLUDE" in /*) ;; *) EXCLUDE="$ROOT/$EXCLUDE" ;; esac
      PATTERN="/${DEST#"$ROOT"/}/"
      mkdir -p "$(dirname "$EXCLUDE")"
      if ! grep -qxF "$PATTERN" "$EXCLUDE" 2>/dev/null; then
        echo "$PATTERN" >>"$EXCLUDE"
        log "added $PATTERN to $EXCLUDE"
      fi
    fi ;;
esac

SPECS=()
for p in "${PACKAGES[@]}"; do SPECS+=("$(pin "$p")"); done
SPECS+=("${PINS[@]}")
MMCV_SPEC="$(pin "$SDIST")"

log "downloading ${#SPECS[@]} wheels for CPython $PYVER (manylinux x86_64 or pure) into $DEST"
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
  manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
quiet_pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" \
  --implementation cp --abi "$PYTAG" --abi abi3 --abi none "${PLATFORMS[@]}" -d "$DEST" \
  "${SPECS[@]}"

log "downloading the $MMCV_SPEC sdist"
if ! ls "$DEST/${SDIST}-${MMCV_SPEC#*==}.tar.gz" >/dev/null 2>&1; then
  quiet_pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
    -d "$DEST" "$MMCV_SPEC"
fi

log "checking versions and requirements"
"$PYTHON" - "$DEST" "$PYVER" "$DEVICE_PACKAGES" "$MMCV_SPEC" "${SPECS[@]}" <<'PYCHECK'
"""One file per package, the pinned version, and every requirement carried or on the device."""
import os
import re
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

dest, pyver, device_file, mmcv_spec, *specs = sys.argv[1:]
dest = Path(dest)
wanted = {canonicalize_name(s.split('==')[0]): s.split('==')[1] for s in specs + [mmcv_spec]}
device = {canonicalize_name(line.strip()) for line in Path(device_file).read_text().splitlines()
          if line.strip() and not line.startswith('#')}
# Markers as on the device: CPython 3.12 (or --python-version), Linux x86_64.
env = dict(python_version=pyver, python_full_version=pyver + '.0', sys_platform='linux',
           platform_system='Linux', platform_machine='x86_64', os_name='posix',
           implementation_name='cpython', platform_python_implementation='CPython', extra='')

files = {}
for path in sorted(dest.iterdir()):
    if path.name.endswith('.whl'):
        name, version, *_ = parse_wheel_filename(path.name)
    elif path.name.endswith('.tar.gz'):
        name, version = parse_sdist_filename(path.name)
    else:
        print(f'  leaving {path.name}: not a wheel or sdist')
        continue
    name = canonicalize_name(name)
    if name not in wanted or str(version) != wanted[name]:
        print(f'  removing {path.name}: not in the list (now {name} {wanted.get(name, "-")})')
        path.unlink()
        continue
    if name in files:
        sys.exit(f'two files for {name}: {files[name].name} and {path.name}')
    files[name] = path
missing = sorted(set(wanted) - set(files))
if missing:
    sys.exit(f'not downloaded: {missing}')


def metadata(path):
    if path.name.endswith('.whl'):
        with zipfile.ZipFile(path) as zf:
            text = zf.read(next(n for n in zf.namelist()
                                if re.fullmatch(r'[^/]+\.dist-info/METADATA', n))).decode()
        return Parser().parsestr(text).get_all('Requires-Dist') or []
    with tarfile.open(path) as tf:  # mmcv: setup.py reads requirements/runtime.txt
        member = next(m for m in tf.getmembers() if m.name.endswith('requirements/runtime.txt'))
        lines = tf.extractfile(member).read().decode().splitlines()
        return [line.strip() for line in lines if line.strip() and not line.startswith('#')]


problems = []
for name, path in sorted(files.items()):
    needs = []
    for line in metadata(path):
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        dep = canonicalize_name(req.name)
        where = 'carried' if dep in files else 'device' if dep in device else None
        if where is None and dep in ('opencv-python', 'opencv-python-headless') and \
                'opencv-python-headless' in device:
            where = 'device (headless)'  # cv2 is cv2: the headless build serves mmengine/mmcv
        if where is None:
            problems.append(f'{path.name} needs {line!r}: neither carried nor on the device')
        needs.append(f'{req.name}[{where or "MISSING"}]')
    size = os.path.getsize(path) / 2**20
    print(f'  {path.name:<62} {size:6.2f} MiB  needs: {", ".join(needs) or "-"}')
if problems:
    sys.exit('\n'.join(problems) + '\nadd them to PINS in tools/gpu/fetch_wheels.sh')
PYCHECK

TOTAL=$(du -cb "$DEST"/* | tail -1 | cut -f1)
TOTAL_MIB=$(awk -v b="$TOTAL" 'BEGIN { printf "%.1f", b / 1048576 }')
# What else travels: tracked files and untracked files git does not ignore.
TREE=$(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
  | xargs -0 -r stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
TREE_MIB=$(awk -v b="$TREE" 'BEGIN { printf "%.1f", b / 1048576 }')
log "$(find "$DEST" -maxdepth 1 -type f | wc -l) files, $TOTAL_MIB MiB in $DEST;" \
  "working tree without it: $TREE_MIB MiB (64 MiB travel in all)"
if awk -v t="$TOTAL" -v l="$LIMIT_MIB" 'BEGIN { exit !(t > l * 1048576) }'; then
  die "$DEST holds $TOTAL_MIB MiB, over the $LIMIT_MIB MiB limit (--limit-mib)"
fi
case "$DEST/" in
  "$ROOT"/*) log "done: carry it with the device tool (carry: [\"${DEST#"$ROOT"/}\"]) and run" \
    "'bash tools/gpu/bootstrap.sh' there" ;;
  *) log "done" ;;
esac
