"""Build settings for the ``nat_mm._C`` extension, shared by setup.py and the JIT fallback.

Kept free of package imports so setup.py can load it by path before nat_mm is installed.
"""
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional

CSRC = Path(__file__).resolve().parents[2] / 'csrc'
CPU_SOURCES = ['ops.cpp', 'cpu/na2d_cpu.cpp']
CUDA_SOURCES = ['cuda/na2d_cuda.cu', 'cuda/na2d_tiled.cu']
# TORCH_CUDA_ARCH_LIST when no GPU is visible at build time: the build must run on every GPU that
# torch 2.14 (CUDA 13) supports, sm_75 to sm_120. A cubin for sm_XY runs on every sm_XZ with Z >= Y
# of the same major, so one cubin per major family does it: 7.5 (T4), 8.0 (A100, and A10, L4,
# RTX 30/40), 9.0 (H100/H200), 10.0 (B200/B300), 12.0 (RTX 50, RTX PRO); plus PTX of the newest
# for GPUs after it (compiled by the driver at first use). Minor revisions (8.6, 8.9) get no cubin
# of their own: our kernels use nothing they add, and each arch costs build time (nvcc compiles
# the device code once per arch: about 40 s each on a 2-core machine).
DEFAULT_CUDA_ARCHS = '7.5;8.0;9.0;10.0;12.0+PTX'


def cpu_flags() -> List[str]:
    """C++ flags: C++20 (torch 2.14's headers need it), -O3, OpenMP, vectorisable loops (no errno
    or FP traps, so exp and selects vectorise), fused multiply-adds (gcc turns contraction off in
    ISO C++ modes), and AVX2/FMA when this CPU has them.

    ``-fopenmp`` is what makes the kernels multi-threaded: ``at::parallel_for`` is a header
    template that runs its body serially unless the including file is compiled with OpenMP.

    The extension is built on the machine that runs it (editable install or JIT), so the build
    machine's CPU decides. ``NAT_MM_CPU_FLAGS`` (space separated) replaces the ISA flags.
    """
    flags = ['-O3', '-std=c++20', '-fopenmp', '-fno-math-errno', '-fno-trapping-math',
             '-ffp-contract=fast']
    if 'NAT_MM_CPU_FLAGS' in os.environ:
        return flags + os.environ['NAT_MM_CPU_FLAGS'].split()
    try:
        cpuinfo = Path('/proc/cpuinfo').read_text()
    except OSError:
        return flags
    have = set()
    for line in cpuinfo.splitlines():
        if line.startswith('flags'):
            have = set(line.split(':', 1)[1].split())
            break
    if {'avx2', 'fma'} <= have:
        flags += ['-mavx2', '-mfma']
    return flags


def cpu_link_flags() -> List[str]:
    """Linker flags: OpenMP's runtime (libgomp.so.1, the one torch loads, so there is only one)."""
    return ['-fopenmp']


def cuda_flags() -> List[str]:
    """nvcc flags; ``-lineinfo`` maps device code to source lines for compute-sanitizer and
    profilers at no run-time cost."""
    return ['-O3', '-std=c++20', '-lineinfo', '--expt-relaxed-constexpr', '-DNAT_MM_WITH_CUDA',
            '-U__CUDA_NO_HALF_OPERATORS__', '-U__CUDA_NO_HALF_CONVERSIONS__',
            '-U__CUDA_NO_BFLOAT16_CONVERSIONS__', '-U__CUDA_NO_HALF2_OPERATORS__']


def find_cuda_home() -> Optional[str]:
    """The CUDA toolkit: $CUDA_HOME / $CUDA_PATH, else /usr/local/cuda, else nvcc's real location.

    torch looks at ``which nvcc`` first, which finds wrapper scripts such as /usr/local/bin/nvcc
    and then takes /usr/local for the toolkit; so we settle it before torch does.
    """
    for var in ('CUDA_HOME', 'CUDA_PATH'):
        if os.environ.get(var):
            return os.environ[var]
    if Path('/usr/local/cuda/bin/nvcc').is_file():
        return '/usr/local/cuda'
    nvcc = shutil.which('nvcc')
    return str(Path(nvcc).resolve().parents[1]) if nvcc else None


def cuda_library_includes(cuda_home: str) -> List[str]:
    """Headers ATen's CUDA headers need (cuBLAS, cuSPARSE) when the toolkit lacks them.

    Minimal toolkits ship nvcc and the runtime only; torch's CUDA wheels carry the library
    headers under site-packages/nvidia/cu*/include, for the same CUDA version as torch.
    """
    if (Path(cuda_home) / 'include' / 'cusparse.h').is_file():
        return []
    try:
        import nvidia
    except ImportError:
        return []
    return [str(p) for root in nvidia.__path__ for p in sorted(Path(root).glob('cu*/include'))
            if (p / 'cusparse.h').is_file()]


def settle_cuda_home() -> Optional[str]:
    """Set ``CUDA_HOME`` from :func:`find_cuda_home` when unset; call it before
    ``torch.utils.cpp_extension`` is imported, which reads it once. Returns the toolkit or None."""
    cuda_home = find_cuda_home()
    if cuda_home and not os.environ.get('CUDA_HOME'):
        os.environ['CUDA_HOME'] = cuda_home
    return cuda_home


def extension_config(cuda_home: Optional[str]) -> Dict:
    """What ``nat_mm._C`` is built from, for setup.py and the JIT build alike.

    The CUDA kernels are included when ``cuda_home`` (torch's ``cpp_extension.CUDA_HOME``) is a
    toolkit and ``NAT_MM_NO_CUDA`` is unset; then, with no GPU visible and no
    ``TORCH_CUDA_ARCH_LIST`` given, the arch list becomes :data:`DEFAULT_CUDA_ARCHS`.

    Returns:
        dict: ``with_cuda``, ``sources`` (paths relative to the repository root), ``cxx_flags``,
        ``cuda_flags``, ``include_dirs`` and ``link_flags``.
    """
    with_cuda = cuda_home is not None and not os.environ.get('NAT_MM_NO_CUDA')
    config = dict(with_cuda=with_cuda, sources=[f'csrc/{s}' for s in CPU_SOURCES],
                  cxx_flags=cpu_flags(), cuda_flags=[], include_dirs=[str(CSRC)],
                  link_flags=cpu_link_flags())
    if with_cuda:
        import torch

        if not torch.cuda.is_available() and not os.environ.get('TORCH_CUDA_ARCH_LIST'):
            os.environ['TORCH_CUDA_ARCH_LIST'] = DEFAULT_CUDA_ARCHS
        config['sources'] += [f'csrc/{s}' for s in CUDA_SOURCES]
        config['cxx_flags'] += ['-DNAT_MM_WITH_CUDA']
        config['cuda_flags'] = cuda_flags()
        config['include_dirs'] += cuda_library_includes(cuda_home)
    return config
