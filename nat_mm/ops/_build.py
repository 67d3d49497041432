"""Build settings for the ``nat_mm._C`` extension, shared by setup.py and the JIT fallback.

Kept free of package imports so setup.py can load it by path before nat_mm is installed.
"""
import os
import shutil
from pathlib import Path
from typing import List, Optional

CSRC = Path(__file__).resolve().parents[2] / 'csrc'
CPU_SOURCES = ['ops.cpp', 'cpu/na2d_cpu.cpp']
CUDA_SOURCES = ['cuda/na2d_cuda.cu']
DEFAULT_CUDA_ARCHS = '8.0;9.0'


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
    return ['-O3', '-std=c++20', '--expt-relaxed-constexpr', '-DNAT_MM_WITH_CUDA',
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
