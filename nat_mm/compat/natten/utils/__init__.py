"""NATTEN 0.17's argument helpers (``natten.utils``), for code that calls them directly.

As in NATTEN, these only normalise types (an int becomes an ``na_dim``-tuple) and raise
``ValueError`` for anything else; the odd-kernel and map-size rules are checked by the ops.
"""
import math
from typing import Any, Optional, Tuple

import torch

from . import log

__all__ = ['check_all_args', 'check_causal_arg', 'check_dilation_arg', 'check_kernel_size_arg',
           'get_device_cc', 'get_num_na_weights', 'log']


def _tuple_arg(name: str, na_dim: int, value: Any, kind: type) -> tuple:
    if not 0 < na_dim < 4:
        raise ValueError(f'na_dim must be 1, 2 or 3, got {na_dim!r}')
    if isinstance(value, (tuple, list)) and len(value) == na_dim and all(
            isinstance(v, kind) for v in value):
        return tuple(value)
    if isinstance(value, kind):
        return (value,) * na_dim
    raise ValueError(f'Invalid value for `{name}`; expected {kind.__name__} or a tuple of '
                     f'{na_dim}, got {value!r}')


def check_kernel_size_arg(na_dim: int, kernel_size: Any) -> Tuple[int, ...]:
    return _tuple_arg('kernel_size', na_dim, kernel_size, int)


def check_dilation_arg(na_dim: int, dilation: Any) -> Tuple[int, ...]:
    return _tuple_arg('dilation', na_dim, 1 if dilation is None else dilation, int)


def check_causal_arg(na_dim: int, is_causal: Any) -> Tuple[bool, ...]:
    return _tuple_arg('is_causal', na_dim, False if is_causal is None else is_causal, bool)


def check_all_args(na_dim: int, kernel_size: Any, dilation: Any,
                   is_causal: Any) -> Tuple[tuple, tuple, tuple]:
    """``(kernel_size, dilation, is_causal)`` as ``na_dim``-tuples, as NATTEN 0.17 returned."""
    return (check_kernel_size_arg(na_dim, kernel_size), check_dilation_arg(na_dim, dilation),
            check_causal_arg(na_dim, is_causal))


def get_num_na_weights(kernel_size: Tuple[int, ...]) -> int:
    """Neighbours per query: the product of the kernel sizes."""
    if not isinstance(kernel_size, tuple):
        raise ValueError(f'Expected `kernel_size` to be a tuple; got {type(kernel_size)}')
    return math.prod(kernel_size)


def get_device_cc(device_index: Optional[int] = None) -> int:
    """CUDA compute capability as ``10 * major + minor`` (0 without CUDA)."""
    if not torch.cuda.is_available():
        return 0
    major, minor = torch.cuda.get_device_capability(device_index)
    return major * 10 + minor
