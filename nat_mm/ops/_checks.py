"""Argument checks for the neighborhood-attention functions.

Three layers, as in NATTEN: one ``check_*_arg`` per argument that returns the normalised tuple,
tensor checks (device, dtype, rank, shapes), then checks against the input (L >= k * d). Public
entry points validate; kernels trust what they are given.
"""
from typing import Optional, Sequence, Tuple, Union

import torch

IntOrPair = Union[int, Sequence[int]]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_pair(name: str, value: IntOrPair, op: str) -> Tuple[int, int]:
    """Expand an int to ``(v, v)`` and check a pair of ints; bools are rejected."""
    if isinstance(value, (bool, torch.Tensor)) or not isinstance(value, (int, tuple, list)):
        raise TypeError(f'{op}: {name} must be an int or a pair of ints, got {value!r}')
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in pair):
        raise TypeError(f'{op}: {name} must be an int or a pair of ints, got {value!r}')
    return pair


def check_kernel_size_arg(kernel_size: IntOrPair, op: str = 'na2d') -> Tuple[int, int]:
    """Return ``kernel_size`` as ``(kh, kw)``; each must be an odd int >= 1.

    A kernel of 1 on one axis is what 1-D neighborhood attention on a one-row map needs
    (``nat_mm.compat.natten``'s ``na1d*`` run as ``(1, k)``).
    """
    pair = _check_pair('kernel_size', kernel_size, op)
    if any(k < 1 or k % 2 == 0 for k in pair):
        raise ValueError(f'{op}: kernel_size must be odd and >= 1 on each axis, '
                         f'got {kernel_size=}')
    return pair


def check_dilation_arg(dilation: IntOrPair, op: str = 'na2d') -> Tuple[int, int]:
    """Return ``dilation`` as ``(dh, dw)``; each must be an int >= 1."""
    pair = _check_pair('dilation', dilation, op)
    if any(d < 1 for d in pair):
        raise ValueError(f'{op}: dilation must be >= 1 on each axis, got {dilation=}')
    return pair


def check_scale_arg(scale: Optional[float], head_dim: int, op: str = 'na2d') -> float:
    """Return the softmax scale, ``head_dim ** -0.5`` when ``scale`` is None."""
    if scale is None:
        return head_dim ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f'{op}: scale must be a float or None, got {scale!r}')
    return float(scale)


def check_tensors(op: str, **tensors: Optional[torch.Tensor]) -> None:
    """Check that the named tensors are floating, on one device and of one dtype."""
    first_name, first = None, None
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'{op}: {name} must be a torch.Tensor, got {type(t).__name__}')
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f'{op}: {name} must be float16, bfloat16, float32 or float64, '
                            f'got {name}.dtype={t.dtype}')
        if first is None:
            first_name, first = name, t
            continue
        if t.device != first.device:
            raise ValueError(f'{op}: all tensors must be on one device, got '
                             f'{first_name}.device={first.device}, {name}.device={t.device}')
        if t.dtype != first.dtype:
            raise TypeError(f'{op}: all tensors must have one dtype, got '
                            f'{first_name}.dtype={first.dtype}, {name}.dtype={t.dtype}')


def check_rank5(op: str, name: str, t: torch.Tensor, layout: str) -> None:
    if t.dim() != 5:
        raise ValueError(f'{op}: {name} must be 5-D {layout}, got {name}.shape={tuple(t.shape)}')


def check_same_shape(op: str, **tensors: torch.Tensor) -> None:
    items = list(tensors.items())
    name0, t0 = items[0]
    for name, t in items[1:]:
        if t.shape != t0.shape:
            raise ValueError(f'{op}: {name0} and {name} must have the same shape '
                             f'[B, H, W, heads, D], got {name0}.shape={tuple(t0.shape)}, '
                             f'{name}.shape={tuple(t.shape)}')


def check_map_size(op: str, shape: Sequence[int], kernel_size: Tuple[int, int],
                   dilation: Tuple[int, int]) -> None:
    """Require ``L >= k * d`` on both map axes."""
    for axis, length, k, d in zip(('H', 'W'), shape, kernel_size, dilation):
        if length < k * d:
            raise ValueError(
                f'{op}: the map is too small on axis {axis}: {axis}={length}, but kernel_size * '
                f'dilation = {k} * {d} = {k * d} is the minimum; got (H, W)={tuple(shape)}, '
                f'{kernel_size=}, {dilation=}. (The NAT/DiNAT backbones zero-pad small maps '
                f'before attention.)')


def check_rpb(op: str, rpb: Optional[torch.Tensor], heads: int,
              kernel_size: Tuple[int, int]) -> None:
    if rpb is None:
        return
    expected = (heads, 2 * kernel_size[0] - 1, 2 * kernel_size[1] - 1)
    if tuple(rpb.shape) != expected:
        raise ValueError(f'{op}: rpb must be [heads, 2*kh-1, 2*kw-1] = {list(expected)}, '
                         f'got rpb.shape={tuple(rpb.shape)}')


def check_attn(op: str, attn: torch.Tensor, value: torch.Tensor,
               kernel_size: Tuple[int, int]) -> None:
    expected = tuple(value.shape[:4]) + (kernel_size[0] * kernel_size[1],)
    if tuple(attn.shape) != expected:
        raise ValueError(f'{op}: attn must be [B, H, W, heads, kh*kw] = {list(expected)} for '
                         f'value.shape={tuple(value.shape)} and {kernel_size=}, '
                         f'got attn.shape={tuple(attn.shape)}')
