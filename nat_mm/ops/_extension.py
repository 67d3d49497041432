"""Finding the compiled kernels (``nat_mm._C``).

Order: a prebuilt ``nat_mm._C`` (built by ``pip install -e .`` / ``python setup.py build_ext``),
else a JIT build with ninja into a cache directory (source checkouts only) of the CPU kernels, and
of the CUDA kernels too when a CUDA toolkit is found (as setup.py decides, ``NAT_MM_NO_CUDA=1``
skips them), else the pure-PyTorch path with one warning that names the command to build the
extension. Set ``NAT_MM_NO_JIT=1`` to skip the JIT build.
"""
import importlib
import os
import warnings
from pathlib import Path

import torch

from ._build import CSRC, extension_config, settle_cuda_home

_BUILD_HINT = 'pip install --no-build-isolation -e . (or `make setup`) in the nat_mm checkout'
_state = {'loaded': None, 'error': None}


def _jit_build() -> None:
    if not (CSRC / 'ops.cpp').is_file():
        raise ImportError(f'no csrc/ next to the package ({CSRC}) to build from')
    settle_cuda_home()  # before torch.utils.cpp_extension reads CUDA_HOME
    from torch.utils import cpp_extension

    config = extension_config(cpp_extension.CUDA_HOME)
    with_cuda = config['with_cuda']
    cache = Path(os.environ.get('NAT_MM_CACHE', Path.home() / '.cache' / 'nat_mm'))
    build_dir = cache / ('jit_cuda' if with_cuda else 'jit')
    build_dir.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name='nat_mm_C_jit_cuda' if with_cuda else 'nat_mm_C_jit',
        sources=[str(CSRC.parent / s) for s in config['sources']],
        extra_cflags=config['cxx_flags'],
        extra_cuda_cflags=config['cuda_flags'],
        extra_ldflags=config['link_flags'],
        extra_include_paths=config['include_dirs'],
        build_directory=str(build_dir),
        with_cuda=with_cuda,
        is_python_module=False,
        verbose=False)
    if not with_cuda and torch.version.cuda is not None:
        warnings.warn(
            'nat_mm: built the CPU kernels just in time, without CUDA kernels (no CUDA toolkit '
            'found, or NAT_MM_NO_CUDA is set): CUDA tensors will use the slow pure-PyTorch '
            f'implementation. Build with a CUDA toolkit: {_BUILD_HINT}', RuntimeWarning,
            stacklevel=3)


def load_extension() -> bool:
    """Load the compiled kernels once; return whether they are available."""
    if _state['loaded'] is not None:
        return _state['loaded']
    try:
        importlib.import_module('nat_mm._C')
        _state['loaded'] = True
    except ImportError as prebuilt_error:
        try:
            if os.environ.get('NAT_MM_NO_JIT'):
                raise ImportError('NAT_MM_NO_JIT is set') from None
            _jit_build()
            _state['loaded'] = True
        except Exception as jit_error:  # noqa: BLE001 - any build failure means: use the fallback
            _state['loaded'] = False
            _state['error'] = f'{prebuilt_error}; JIT build: {jit_error}'
            warnings.warn(
                'nat_mm: the compiled neighborhood-attention kernels (nat_mm._C) are not '
                f'available ({_state["error"]}); using the slow pure-PyTorch implementation. '
                f'Build them with: {_BUILD_HINT}', RuntimeWarning, stacklevel=2)
    return _state['loaded']


def extension_loaded() -> bool:
    """Whether the compiled kernels (CPU, and CUDA if built with it) are in use."""
    return load_extension()


def extension_has_cuda() -> bool:
    """Whether the loaded extension was compiled with its CUDA kernels."""
    return load_extension() and bool(torch.ops.nat_mm.has_cuda())
