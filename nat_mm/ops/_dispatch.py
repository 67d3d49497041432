"""Which implementation runs the fused ``na2d`` for a tensor: the ``NAT_MM_CUDA_KERNEL`` rules.

For CUDA tensors, ``NAT_MM_CUDA_KERNEL`` (read at every eager call, and once when
``torch.compile`` traces) selects:

- ``auto`` (default, or unset): the Triton kernels for float16 and bfloat16 on GPUs of compute
  capability 8.0 and newer when triton imports; otherwise the compiled C++ CUDA kernels (the tiled
  ones where they apply, else the reference ones); without those, Triton (float32 too), and only
  then the pure-PyTorch implementation (with a warning). A choice made by analysis, not yet by
  measurement on a GPU (tools/gpu/check.sh measures it).
- ``triton``: the Triton kernels (nat_mm/ops/_triton_kernels.py);
- ``tiled`` / ``reference``: the C++ CUDA kernels of that kind (the C++ reads the variable);
- ``flex``: torch's FlexAttention over 2-D tiles of tokens (nat_mm/ops/_flex.py).

A forced choice that cannot run raises ``RuntimeError`` saying why; nothing falls back silently.
The variable concerns the fused op: ``na2d_qk`` and ``na2d_av`` always run the C++ kernels
(``auto`` for them under ``triton`` and ``flex``). CPU tensors always take the C++ CPU kernels
(or the pure-PyTorch implementation when the extension is missing).
"""
import os
import warnings

import torch

from ._extension import extension_has_cuda, extension_loaded, load_extension
from ._library import register

ENV = 'NAT_MM_CUDA_KERNEL'
CUDA_KERNELS = ('auto', 'triton', 'tiled', 'reference', 'flex')
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def cuda_kernel_setting() -> str:
    """The value of ``NAT_MM_CUDA_KERNEL`` (``auto`` when unset or empty), checked."""
    value = os.environ.get(ENV) or 'auto'
    if value not in CUDA_KERNELS:
        raise ValueError(f'{ENV} must be one of {", ".join(CUDA_KERNELS)}, got {value!r}')
    return value


def triton_unavailable_reason(dtype: torch.dtype, device: torch.device):
    """Why the Triton kernels cannot serve ``dtype`` on ``device``, or None when they can."""
    from . import _triton

    return _triton.unavailable_reason(dtype, device)


def _extension_cuda_missing_reason() -> str:
    if not extension_loaded():
        return 'the compiled nat_mm extension is not available (pip install -e . builds it)'
    return ('the compiled nat_mm extension has no CUDA kernels (it was built without a CUDA '
            'toolkit; rebuild with one visible: pip install --no-build-isolation -e .)')


def _flex_unavailable_reason():
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError as error:
        return f'this torch has no FlexAttention ({error})'
    return None


def cuda_backend(dtype: torch.dtype, device: torch.device) -> str:
    """``'triton'``, ``'extension'`` (the C++ CUDA kernels), ``'flex'`` or ``'torch'`` for a
    fused na2d on a CUDA ``device``; raises ``RuntimeError`` when a forced choice cannot run."""
    choice = cuda_kernel_setting()
    if choice == 'auto':
        triton_ok = triton_unavailable_reason(dtype, device) is None
        if dtype in _LOW_PRECISION and triton_ok:
            return 'triton'
        if extension_has_cuda():
            return 'extension'
        return 'triton' if triton_ok else 'torch'
    if choice == 'triton':
        why = triton_unavailable_reason(dtype, device)
    elif choice == 'flex':
        why = _flex_unavailable_reason()
    else:  # tiled, reference
        why = None if extension_has_cuda() else _extension_cuda_missing_reason()
    if why is not None:
        raise RuntimeError(f'{ENV}={choice}, but that kernel cannot run here: {why}')
    return 'extension' if choice in ('tiled', 'reference') else choice


# torch.compile runs it at trace time and keeps the result as a constant (no graph break on the
# device queries inside). This is what torch.compiler.assume_constant_result sets; the decorator
# itself imports torch._dynamo, seconds at every `import nat_mm.ops`.
cuda_backend._dynamo_marked_constant = True


_warned_devices = set()


def use_compiled_kernels(t: torch.Tensor, stacklevel: int = 3) -> bool:
    """Whether the compiled C++ kernels serve tensors on ``t``'s device (warns once per device
    type when they do not: the pure-PyTorch implementation is slow). ``stacklevel`` points the
    warning at the caller of the public op."""
    if not load_extension():
        return False
    register()
    if t.device.type == 'cpu' or (t.device.type == 'cuda' and extension_has_cuda()):
        return True
    if t.device.type not in _warned_devices:
        _warned_devices.add(t.device.type)
        warnings.warn(
            f'nat_mm: no compiled neighborhood-attention kernel for device {t.device.type!r} in '
            'this build; using the slow pure-PyTorch implementation. Rebuild the extension where '
            'the CUDA toolkit is visible: pip install --no-build-isolation -e .',
            RuntimeWarning, stacklevel=stacklevel)
    return False


def fused_backend(query: torch.Tensor) -> str:
    """``'extension'``, ``'triton'``, ``'flex'`` or ``'torch'``: what runs a fused na2d on
    ``query``'s device (see the module docstring)."""
    if query.device.type == 'cuda':
        backend = cuda_backend(query.dtype, query.device)
        if backend not in ('extension', 'torch'):
            return backend
    return 'extension' if use_compiled_kernels(query, stacklevel=4) else 'torch'
