"""Build (and check) a copy of nat_mm's CUDA kernels whose grids are capped at a few blocks, so
that every grid-stride loop of the kernels runs several times on the GPU.

Why: the kernels cap their grids at ``NAT_MAX_BLOCKS`` blocks (csrc/cuda/launch.h; 2^20 in the
real build) and loop over the rest, a path the real build never takes at test sizes. This copy is
the real ``csrc/cuda/na2d_cuda.cu`` and ``na2d_tiled.cu`` compiled with
``-DNAT_MAX_BLOCKS=<--max-blocks>`` (default 2, as nat_mm/testing/cuda_emu/build.py does for the
emulator)
and ``-DNAT_MM_CUDA_LIBRARY=nat_mm_capped`` (with ``NAT_MM_CUDA_KEY=CUDA``), plus
tools/gpu/capped_ops.cpp, which defines the schemas in that library; so its ops are
``torch.ops.nat_mm_capped.*`` on CUDA tensors and ``nat_mm._C``'s stay untouched in the same
process. It links with ``-Wl,-Bsymbolic``: its ``nat_mm::`` functions bind to themselves, not to
``nat_mm._C``'s namesakes.

How: ``torch.utils.cpp_extension.load`` (ninja, incremental) with nat_mm/ops/_build.py's nvcc
flags, for ``TORCH_CUDA_ARCH_LIST`` (``--arch``; default: the visible GPU's), into
``--build-dir`` (default ``$NAT_MM_CHECK_WORK/capped``, ``/tmp/nat_mm_check/capped``). nvcc's
output is printed (``NVCC_APPEND_FLAGS`` applies: check.sh adds ptxas' report). Runs on one build
directory take turns through a lock that dies with its holder (flock); under it torch's own lock
file is removed (older torch blocks while that file exists, so one left by a run killed at a time
limit would block every later run).
A run with nothing changed rebuilds nothing and only loads the library.

``--check`` then runs the six ops of tools/gpu/sanitize_cases.py (nat_mm/testing/op_cases.py)
against the float64 oracle on the loaded library (``--kernels``: the NAT_MM_CUDA_KERNEL values,
read by its C++ at every call).

``--emulator`` uses the CUDA emulator of the tests instead (nat_mm/testing/cuda_emu/build.py: the
same .cu
compiled for the host with the same cap, library ``nat_mm_cuda_emu``, CPU tensors): what
``tools/gpu/check.sh --cpu-dry-run`` checks, on a machine without a GPU.

Usage:
    python tools/gpu/build_capped.py --check               # on the GPU machine
    python tools/gpu/build_capped.py --arch 9.0             # build only (nvcc, no GPU needed)
    python tools/gpu/build_capped.py --emulator --check     # on the CPU
"""
import argparse
import contextlib
import fcntl
import importlib.util
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NAMESPACE = 'nat_mm_capped'
SOURCES = [ROOT / 'csrc/cuda/na2d_cuda.cu', ROOT / 'csrc/cuda/na2d_tiled.cu',
           HERE / 'capped_ops.cpp']


def _build_settings():
    """nat_mm/ops/_build.py, loaded by path (as setup.py does): no nat_mm import needed."""
    spec = importlib.util.spec_from_file_location('_nat_mm_build', ROOT / 'nat_mm/ops/_build.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def default_build_dir() -> Path:
    return Path(os.environ.get('NAT_MM_CHECK_WORK', '/tmp/nat_mm_check')) / 'capped'


@contextlib.contextmanager
def build_lock(build_dir: Path):
    """Hold an exclusive flock on ``build_dir``; remove a torch build lock a killed run left."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / '.build_capped.lock', 'w') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # waits for a build in progress
        # torch's own lock file: older torch (FileBaton) blocks while the file exists, so one
        # left by a killed build would block every later one; nobody builds here now.
        stale = build_dir / 'lock'
        if stale.exists():
            stale.unlink()
        yield


def nvcc_flags(build, max_blocks: int):
    return build.cuda_flags() + [
        f'-DNAT_MAX_BLOCKS={max_blocks}', f'-DNAT_MM_CUDA_LIBRARY={NAMESPACE}',
        '-DNAT_MM_CUDA_KEY=CUDA', '-DNAT_MM_CUDA_DEVICE_TYPE=c10::DeviceType::CUDA']


def build_capped(build_dir: Path, max_blocks: int = 2, arch=None, verbose=True) -> str:
    """Compile (if needed) and load the capped library; returns the path of the loaded .so."""
    build = _build_settings()
    cuda_home = build.settle_cuda_home()  # before torch.utils.cpp_extension reads CUDA_HOME
    if cuda_home is None:
        raise RuntimeError('build_capped: no CUDA toolkit (nvcc) found; set CUDA_HOME')
    if arch:
        os.environ['TORCH_CUDA_ARCH_LIST'] = arch
    from torch.utils import cpp_extension

    print(f"build_capped: NAT_MAX_BLOCKS={max_blocks}, TORCH_CUDA_ARCH_LIST="
          f"{os.environ.get('TORCH_CUDA_ARCH_LIST', '(the visible GPUs)')}, "
          f"NVCC_APPEND_FLAGS={os.environ.get('NVCC_APPEND_FLAGS', '')!r}, in {build_dir}",
          flush=True)
    start = time.perf_counter()
    with build_lock(build_dir):
        cpp_extension.load(
            name=NAMESPACE,
            sources=[str(s) for s in SOURCES],
            extra_cflags=['-O2', '-std=c++20'],
            extra_cuda_cflags=nvcc_flags(build, max_blocks),
            extra_ldflags=['-Wl,-Bsymbolic'],
            extra_include_paths=[str(build.CSRC)] + build.cuda_library_includes(cuda_home),
            build_directory=str(build_dir),
            with_cuda=True,
            is_python_module=False,
            verbose=verbose)
    libs = sorted(build_dir.glob(f'{NAMESPACE}*.so'), key=lambda p: p.stat().st_mtime)
    print(f'build_capped: loaded {libs[-1] if libs else "?"} '
          f'({time.perf_counter() - start:.0f} s)', flush=True)
    return str(libs[-1]) if libs else ''


def load_emulator() -> str:
    """Build (if needed) and load the CUDA emulator, nat_mm/testing/cuda_emu (NAT_MAX_BLOCKS=2,
    CPU tensors)."""
    sys.path.insert(0, str(ROOT))  # the checkout's nat_mm
    from nat_mm.testing.cuda_emu import build as emu_build

    start = time.perf_counter()
    path = emu_build.load()
    print(f'build_capped: loaded the CUDA emulator {path} (NAT_MAX_BLOCKS='
          f'{emu_build.MAX_BLOCKS}; {time.perf_counter() - start:.0f} s)', flush=True)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--max-blocks', type=int, default=2,
                        help='NAT_MAX_BLOCKS of the copy (default: 2)')
    parser.add_argument('--arch', default=None,
                        help='TORCH_CUDA_ARCH_LIST, e.g. 9.0 (default: the visible GPU)')
    parser.add_argument('--build-dir', type=Path, default=None,
                        help='default: $NAT_MM_CHECK_WORK/capped (/tmp/nat_mm_check/capped)')
    parser.add_argument('--emulator', action='store_true',
                        help='load the CUDA emulator of the tests instead (CPU; no GPU needed)')
    parser.add_argument('--check', action='store_true',
                        help="then check the library's six ops against the float64 oracle")
    parser.add_argument('--kernels', nargs='+', default=['reference', 'tiled'],
                        choices=['reference', 'tiled', 'auto'],
                        help='NAT_MM_CUDA_KERNEL values for --check (default: reference tiled)')
    args = parser.parse_args(argv)
    # A SIGTERM (a time limit) unwinds through torch's `finally`, which releases its build lock.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.emulator:
        load_emulator()
        namespace, device = 'nat_mm_cuda_emu', 'cpu'
    else:
        build_capped(args.build_dir or default_build_dir(), args.max_blocks, args.arch)
        namespace, device = NAMESPACE, 'cuda'
    if not args.check:
        return 0
    sys.path.insert(0, str(ROOT))  # the checkout's nat_mm
    from nat_mm.testing.op_cases import RawOps, run_cases

    print(f'sanitize_cases: torch.ops.{namespace} on {device}, kernels '
          f'{" ".join(args.kernels)}', flush=True)
    return 1 if run_cases(RawOps(namespace), device, args.kernels) else 0


if __name__ == '__main__':
    sys.exit(main())
