"""Build and load the CUDA emulator: the real ``csrc/cuda/*.cu`` compiled for the host.

``load()`` compiles ``runtime.cpp``, ``na2d_cuda_emu.cpp`` and ``na2d_tiled_emu.cpp`` (which
include the real ``csrc/cuda/*.cu``) and ``selftest.cpp`` with ``cuda_emu.h`` force-included, and loads the
result, which registers the ops ``torch.ops.nat_mm_cuda_emu.*`` (the six na2d ops, on CPU tensors)
and ``torch.ops.nat_emu_selftest.run``. The build is cached under ``$NAT_MM_CACHE/cuda_emu``
(default ``~/.cache/nat_mm``) in a directory named after a hash of every source it reads, so a
change in ``csrc/`` or here rebuilds it and nothing else does.

``NAT_EMU_ASAN=1`` builds with AddressSanitizer; the process must then run with libasan preloaded
(``make test-cuda-asan`` does that).
"""
import hashlib
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]  # the checkout
CSRC = ROOT / 'csrc'
SOURCES = ['runtime.cpp', 'na2d_cuda_emu.cpp', 'na2d_tiled_emu.cpp', 'selftest.cpp']
# Grid-stride loops of the kernels cap their grids at this many blocks: small, so that every loop
# runs more than once on the tests' small shapes.
MAX_BLOCKS = 2


def _source_hash(flags):
    files = sorted(p for d in (HERE, CSRC) for p in d.rglob('*')
                   if p.suffix in {'.h', '.cpp', '.cu'})
    digest = hashlib.sha256(' '.join(flags).encode())
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def asan_enabled() -> bool:
    return os.environ.get('NAT_EMU_ASAN', '') not in ('', '0')


def load(verbose: bool = False) -> str:
    """Build (if needed) and load the emulator; returns the path of the loaded library."""
    import torch
    from torch.utils import cpp_extension

    flags = ['-O2', '-std=c++20', '-pthread', '-fvisibility=hidden', '-include',
             str(HERE / 'cuda_emu.h'), f'-DNAT_MAX_BLOCKS={MAX_BLOCKS}']
    ldflags = ['-pthread', '-Wl,-Bsymbolic']
    if asan_enabled():
        flags += ['-fsanitize=address', '-fno-omit-frame-pointer', '-g']
        ldflags += ['-fsanitize=address']
    name = f'nat_mm_cuda_emu_{_source_hash(flags)}' + ('_asan' if asan_enabled() else '')
    cache = Path(os.environ.get('NAT_MM_CACHE', Path.home() / '.cache' / 'nat_mm'))
    build_dir = cache / 'cuda_emu' / name
    build_dir.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name=name,
        sources=[str(HERE / s) for s in SOURCES],
        extra_cflags=flags,
        extra_ldflags=ldflags,
        # the stubs first: they replace the few ATen/c10 CUDA headers the .cu includes
        extra_include_paths=[str(HERE / 'stubs'), str(CSRC), str(HERE)],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=verbose)
    return str(build_dir / f'{name}.so')


if __name__ == '__main__':
    print(load(verbose=True))
