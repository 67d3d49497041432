"""Argument checks of the NATTEN compatibility layer, in NATTEN's names and tensor layouts.

They run before anything reaches ``nat_mm.ops``, so a mistake is reported in the caller's terms
(``natten2dqkrpb``, ``[B, heads, H, W, D]``) rather than in nat_mm's heads-last ones. The rules are
NATTEN's (0.14 ``natten_cpu_commons.h``, 0.17 ``pytorch/helpers.h`` ``CheckArgs`` /
``CheckArgsAgainstDim``): odd kernels greater than 1, dilation >= 1, and ``L >= k * d`` on
every axis.
"""
from typing import Any, Optional, Sequence, Tuple

import torch

__all__ = ['NattenArgumentError']

_AXES = {1: ('L',), 2: ('H', 'W')}


class NattenArgumentError(ValueError, RuntimeError):
    """A bad kernel size, dilation or map size.

    A ``ValueError`` (nat_mm's convention) that is also a ``RuntimeError``, the type NATTEN's C++
    checks raised, so ``except RuntimeError`` written for NATTEN still catches it.
    """


def reject_unsupported(op: str, tensors: Sequence[Optional[torch.Tensor]] = (),
                       is_causal: Any = False, additional_keys: Optional[torch.Tensor] = None,
                       additional_values: Optional[torch.Tensor] = None) -> None:
    """Raise ``NotImplementedError`` naming the NATTEN feature nat_mm does not have."""
    causal = is_causal if isinstance(is_causal, (tuple, list)) else (is_causal,)
    if any(bool(c) for c in causal):
        raise NotImplementedError(
            f'{op}: causal neighborhood attention is not supported by nat_mm.compat.natten, '
            f'got is_causal={is_causal!r}')
    for name, extra in (('additional_keys', additional_keys),
                        ('additional_values', additional_values)):
        if extra is not None:
            raise NotImplementedError(
                f'{op}: {name} (attention to extra tokens beyond the neighbourhood) is not '
                'supported by nat_mm.compat.natten')
    if any(isinstance(t, torch.Tensor) and t.is_nested for t in tensors):
        raise NotImplementedError(f'{op}: nested tensors are not supported by '
                                  'nat_mm.compat.natten; pass one padded batch')


def _dims(op: str, name: str, value: Any, na_dim: int) -> Tuple[int, ...]:
    """An int expands to ``na_dim`` copies; a tuple or list must hold ``na_dim`` ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * na_dim
    if (isinstance(value, (tuple, list)) and len(value) == na_dim
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        return tuple(value)
    raise TypeError(f'{op}: {name} must be an int or a tuple of {na_dim} int(s), got {value!r}')


def kernel_and_dilation(op: str, kernel_size: Any, dilation: Any,
                        na_dim: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Normalise ``kernel_size`` and ``dilation`` (None means 1) to ``na_dim``-tuples.

    Raises:
        TypeError: not an int or a tuple of ints (bools are rejected).
        NattenArgumentError: an even kernel or one <= 1, or a dilation < 1.
    """
    kernel = _dims(op, 'kernel_size', kernel_size, na_dim)
    if any(k <= 1 or k % 2 == 0 for k in kernel):
        raise NattenArgumentError(f'{op}: kernel_size must be an odd number greater than 1 on '
                                  f'each axis, got kernel_size={kernel_size!r}')
    dil = _dims(op, 'dilation', 1 if dilation is None else dilation, na_dim)
    if any(d < 1 for d in dil):
        raise NattenArgumentError(f'{op}: dilation must be >= 1 on each axis, '
                                  f'got dilation={dilation!r}')
    return kernel, dil


def check_rank(op: str, name: str, t: Any, layout: str) -> None:
    """``t`` must be a tensor with as many axes as ``layout`` names, e.g. ``[B, heads, L, D]``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'{op}: {name} must be a torch.Tensor, got {type(t).__name__}')
    rank = layout.count(',') + 1
    if t.dim() != rank:
        raise ValueError(f'{op}: {name} must be {rank}-D {layout}, got {name}.shape='
                         f'{tuple(t.shape)}')


def check_same_shape(op: str, a_name: str, a: torch.Tensor, b_name: str,
                     b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f'{op}: {a_name} and {b_name} must have the same shape, got '
                         f'{a_name}.shape={tuple(a.shape)}, {b_name}.shape={tuple(b.shape)}')


def check_map_size(op: str, spatial: Sequence[int], kernel: Tuple[int, ...],
                   dilation: Tuple[int, ...]) -> None:
    """Require ``L >= kernel_size * dilation`` on every axis, NATTEN's rule."""
    for axis, length, k, d in zip(_AXES[len(spatial)], spatial, kernel, dilation):
        if length < k * d:
            raise NattenArgumentError(
                f'{op}: input axes must be greater than or equal to the product of kernel size '
                f'and dilation: {axis}={length} < {k} * {d} = {k * d}; got map '
                f'{tuple(spatial)}, kernel_size={kernel}, dilation={dilation}. (The '
                'NeighborhoodAttention1D/2D modules zero-pad smaller maps.)')


def check_rpb(op: str, rpb: Optional[torch.Tensor], heads: int,
              kernel: Tuple[int, ...]) -> None:
    """``rpb`` must be ``[heads, 2k-1]`` (1-D) or ``[heads, 2kh-1, 2kw-1]`` (2-D)."""
    if rpb is None:
        return
    if not isinstance(rpb, torch.Tensor):
        raise TypeError(f'{op}: rpb must be a torch.Tensor or None, got {type(rpb).__name__}')
    expected = (heads,) + tuple(2 * k - 1 for k in kernel)
    if tuple(rpb.shape) != expected:
        names = 'heads, 2*k-1' if len(kernel) == 1 else 'heads, 2*kh-1, 2*kw-1'
        raise ValueError(f'{op}: rpb must be [{names}] = {list(expected)}, '
                         f'got rpb.shape={tuple(rpb.shape)}')


def check_attn(op: str, attn: torch.Tensor, value: torch.Tensor, kernel: Tuple[int, ...],
               layout: str) -> None:
    """``attn`` must be ``value``'s shape with the last axis replaced by the window size."""
    window = 1
    for k in kernel:
        window *= k
    expected = tuple(value.shape[:-1]) + (window,)
    if tuple(attn.shape) != expected:
        raise ValueError(f'{op}: attn must be {layout} = {list(expected)} for value.shape='
                         f'{tuple(value.shape)} and kernel_size={kernel}, '
                         f'got attn.shape={tuple(attn.shape)}')
