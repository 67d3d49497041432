"""NATTEN 0.14-0.17's functional API on nat_mm's kernels (``natten.functional``).

Each function keeps its NATTEN signature, defaults and tensor layouts (read from NATTEN's tagged
sources, ``src/natten/functional.py``):

- 0.14 ``natten{1,2}dqkrpb(query, key, rpb, kernel_size, dilation)``, ``natten{1,2}dqk`` and
  ``natten{1,2}dav(attn, value, kernel_size, dilation)``; 0.15 ``na{1,2}d_qk_with_bias``; 0.17
  ``na{1,2}d_qk(..., rpb=None)`` and ``na{1,2}d_av``: heads first, ``[B, heads, L, D]`` /
  ``[B, heads, H, W, D]``, attention weights ``[B, heads, L, k]`` / ``[B, heads, H, W, kh*kw]``
  with slot ``ki * kw + kj``; no scale (scale the query first).
- 0.17 fused ``na{1,2}d(query, key, value, kernel_size, dilation=1, is_causal=False, rpb=None,
  scale=None, ...)``: heads last, ``[B, L, heads, D]`` / ``[B, H, W, heads, D]``; ``scale``
  defaults to ``D ** -0.5`` (NATTEN's ``scale or D ** -0.5``: 0 also means the default).

1-D runs as nat_mm's 2-D op on a one-row map (kernel ``(1, k)``). ``rpb`` is cast to the key's
dtype and ``attn`` to the value's, as NATTEN 0.17 did (under autocast the bias parameter stays
float32). Outputs are contiguous in the caller's layout. 3-D, causal masks, additional keys/values
and nested tensors raise ``NotImplementedError``.
"""
from typing import Any, Dict, Optional, Tuple

import torch

from ...ops import na2d as _na2d
from ...ops import na2d_av as _na2d_av
from ...ops import na2d_qk as _na2d_qk
from . import _checks

__all__ = [
    'natten1dqkrpb', 'natten1dqk', 'natten1dav', 'natten2dqkrpb', 'natten2dqk', 'natten2dav',
    'na1d_qk_with_bias', 'na2d_qk_with_bias', 'na1d_qk', 'na1d_av', 'na2d_qk', 'na2d_av', 'na1d',
    'na2d', 'natten3dqkrpb', 'natten3dqk', 'natten3dav', 'na3d_qk_with_bias', 'na3d_qk',
    'na3d_av', 'na3d'
]

_HEADS_FIRST = {1: '[B, heads, L, D]', 2: '[B, heads, H, W, D]'}
_HEADS_FIRST_ATTN = {1: '[B, heads, L, k]', 2: '[B, heads, H, W, kh*kw]'}
_HEADS_LAST = {1: '[B, L, heads, D]', 2: '[B, H, W, heads, D]'}


def _from_heads_first(t: torch.Tensor, na_dim: int) -> torch.Tensor:
    """``[B, heads, H, W, X]`` or ``[B, heads, L, X]`` -> nat_mm's ``[B, H, W, heads, X]`` view."""
    if na_dim == 2:
        return t.permute(0, 2, 3, 1, 4)
    return t.permute(0, 2, 1, 3).unsqueeze(1)  # one-row map: [B, 1, L, heads, X]


def _to_heads_first(t: torch.Tensor, na_dim: int) -> torch.Tensor:
    """nat_mm's ``[B, H, W, heads, X]`` -> the caller's heads-first layout, contiguous."""
    if na_dim == 2:
        return t.permute(0, 3, 1, 2, 4).contiguous()
    return t.squeeze(1).permute(0, 2, 1, 3).contiguous()


def _as_2d(kernel: Tuple[int, ...], dilation: Tuple[int, ...],
           rpb: Optional[torch.Tensor]) -> Tuple[Tuple[int, int], Tuple[int, int], Any]:
    """1-D arguments as those of the one-row 2-D op; 2-D ones unchanged."""
    if len(kernel) == 2:
        return kernel, dilation, rpb
    return (1, kernel[0]), (1, dilation[0]), None if rpb is None else rpb.unsqueeze(1)


def _qk(op: str, na_dim: int, query, key, rpb, kernel_size, dilation, is_causal=False,
        additional_keys=None) -> torch.Tensor:
    _checks.reject_unsupported(op, (query, key, rpb), is_causal, additional_keys)
    kernel, dil = _checks.kernel_and_dilation(op, kernel_size, dilation, na_dim)
    _checks.check_rank(op, 'query', query, _HEADS_FIRST[na_dim])
    _checks.check_rank(op, 'key', key, _HEADS_FIRST[na_dim])
    _checks.check_same_shape(op, 'query', query, 'key', key)
    _checks.check_rpb(op, rpb, query.shape[1], kernel)
    _checks.check_map_size(op, query.shape[2:-1], kernel, dil)
    if rpb is not None:
        rpb = rpb.to(key.dtype)
    kernel, dil, rpb = _as_2d(kernel, dil, rpb)
    attn = _na2d_qk(_from_heads_first(query, na_dim), _from_heads_first(key, na_dim), kernel,
                    dil, rpb=rpb)
    return _to_heads_first(attn, na_dim)


def _av(op: str, na_dim: int, attn, value, kernel_size, dilation, is_causal=False,
        additional_values=None) -> torch.Tensor:
    _checks.reject_unsupported(op, (attn, value), is_causal, additional_values=additional_values)
    kernel, dil = _checks.kernel_and_dilation(op, kernel_size, dilation, na_dim)
    _checks.check_rank(op, 'attn', attn, _HEADS_FIRST_ATTN[na_dim])
    _checks.check_rank(op, 'value', value, _HEADS_FIRST[na_dim])
    _checks.check_attn(op, attn, value, kernel, _HEADS_FIRST_ATTN[na_dim])
    _checks.check_map_size(op, value.shape[2:-1], kernel, dil)
    attn = attn.to(value.dtype)  # softmax under autocast returns float32
    kernel, dil, _ = _as_2d(kernel, dil, None)
    out = _na2d_av(_from_heads_first(attn, na_dim), _from_heads_first(value, na_dim), kernel, dil)
    return _to_heads_first(out, na_dim)


def _fused(op: str, na_dim: int, query, key, value, kernel_size, dilation, is_causal, rpb, scale,
           additional_keys, additional_values) -> torch.Tensor:
    _checks.reject_unsupported(op, (query, key, value, rpb), is_causal, additional_keys,
                               additional_values)
    kernel, dil = _checks.kernel_and_dilation(op, kernel_size, dilation, na_dim)
    for name, t in (('query', query), ('key', key), ('value', value)):
        _checks.check_rank(op, name, t, _HEADS_LAST[na_dim])
    _checks.check_same_shape(op, 'query', query, 'key', key)
    _checks.check_same_shape(op, 'query', query, 'value', value)
    _checks.check_rpb(op, rpb, query.shape[-2], kernel)
    _checks.check_map_size(op, query.shape[1:-2], kernel, dil)
    scale = scale or query.shape[-1] ** -0.5
    if rpb is not None:
        rpb = rpb.to(query.dtype)
    kernel, dil, rpb = _as_2d(kernel, dil, rpb)
    if na_dim == 1:  # [B, L, heads, D] -> a one-row map [B, 1, L, heads, D]
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
    out = _na2d(query, key, value, kernel, dil, rpb=rpb, scale=scale)
    return out.squeeze(1) if na_dim == 1 else out


# NATTEN 0.14 (deprecated aliases up to 0.17.4). kernel_size and dilation were ints there; tuples
# are accepted too.


def natten1dqkrpb(query: torch.Tensor, key: torch.Tensor, rpb: Optional[torch.Tensor],
                  kernel_size: int, dilation: int) -> torch.Tensor:
    """1-D neighborhood logits ``q.k + rpb`` (NATTEN 0.14).

    Args:
        query (Tensor): ``[B, heads, L, D]``, already scaled.
        key (Tensor): ``[B, heads, L, D]``.
        rpb (Tensor, optional): ``[heads, 2k-1]``, or None for no bias.
        kernel_size (int): Odd window size ``k`` > 1.
        dilation (int): >= 1; ``L >= k * dilation`` is required.

    Returns:
        Tensor: ``[B, heads, L, k]``.

    Raises:
        NattenArgumentError: an even or too small kernel, dilation < 1, or ``L < k * d``.
    """
    return _qk('natten1dqkrpb', 1, query, key, rpb, kernel_size, dilation)


def natten1dqk(query: torch.Tensor, key: torch.Tensor, kernel_size: int,
               dilation: int) -> torch.Tensor:
    """:func:`natten1dqkrpb` without the bias (NATTEN 0.14)."""
    return _qk('natten1dqk', 1, query, key, None, kernel_size, dilation)


def natten1dav(attn: torch.Tensor, value: torch.Tensor, kernel_size: int,
               dilation: int) -> torch.Tensor:
    """Weighted sum of each query's 1-D neighbourhood of values (NATTEN 0.14).

    Args:
        attn (Tensor): ``[B, heads, L, k]`` weights.
        value (Tensor): ``[B, heads, L, D]``.
        kernel_size (int): Odd window size ``k`` > 1.
        dilation (int): >= 1.

    Returns:
        Tensor: ``[B, heads, L, D]``.
    """
    return _av('natten1dav', 1, attn, value, kernel_size, dilation)


def natten2dqkrpb(query: torch.Tensor, key: torch.Tensor, rpb: Optional[torch.Tensor],
                  kernel_size: int, dilation: int) -> torch.Tensor:
    """2-D neighborhood logits ``q.k + rpb`` (NATTEN 0.14; what HF transformers' Dinat calls).

    Args:
        query (Tensor): ``[B, heads, H, W, D]``, already scaled.
        key (Tensor): ``[B, heads, H, W, D]``.
        rpb (Tensor, optional): ``[heads, 2k-1, 2k-1]``, or None for no bias.
        kernel_size (int): Odd window size ``k`` > 1 (an int means ``(k, k)``).
        dilation (int): >= 1; ``H, W >= k * dilation`` is required.

    Returns:
        Tensor: ``[B, heads, H, W, k*k]``, slot ``ki * k + kj``.

    Raises:
        NattenArgumentError: an even or too small kernel, dilation < 1, or a map smaller than
            ``k * dilation``.
    """
    return _qk('natten2dqkrpb', 2, query, key, rpb, kernel_size, dilation)


def natten2dqk(query: torch.Tensor, key: torch.Tensor, kernel_size: int,
               dilation: int) -> torch.Tensor:
    """:func:`natten2dqkrpb` without the bias (NATTEN 0.14)."""
    return _qk('natten2dqk', 2, query, key, None, kernel_size, dilation)


def natten2dav(attn: torch.Tensor, value: torch.Tensor, kernel_size: int,
               dilation: int) -> torch.Tensor:
    """Weighted sum of each query's 2-D neighbourhood of values (NATTEN 0.14).

    Args:
        attn (Tensor): ``[B, heads, H, W, k*k]`` weights, slot ``ki * k + kj``.
        value (Tensor): ``[B, heads, H, W, D]``.
        kernel_size (int): Odd window size ``k`` > 1.
        dilation (int): >= 1.

    Returns:
        Tensor: ``[B, heads, H, W, D]``.
    """
    return _av('natten2dav', 2, attn, value, kernel_size, dilation)


# NATTEN 0.15


def na1d_qk_with_bias(query: torch.Tensor, key: torch.Tensor, bias: Optional[torch.Tensor],
                      kernel_size: int, dilation: int,
                      additional_keys: Optional[torch.Tensor] = None) -> torch.Tensor:
    """NATTEN 0.15's name for :func:`natten1dqkrpb` (``bias`` is the rpb)."""
    return _qk('na1d_qk_with_bias', 1, query, key, bias, kernel_size, dilation,
               additional_keys=additional_keys)


def na2d_qk_with_bias(query: torch.Tensor, key: torch.Tensor, bias: Optional[torch.Tensor],
                      kernel_size: int, dilation: int,
                      additional_keys: Optional[torch.Tensor] = None) -> torch.Tensor:
    """NATTEN 0.15's name for :func:`natten2dqkrpb` (``bias`` is the rpb)."""
    return _qk('na2d_qk_with_bias', 2, query, key, bias, kernel_size, dilation,
               additional_keys=additional_keys)


# NATTEN 0.17: unfused ops heads first, fused ops heads last.


def na1d_qk(query: torch.Tensor, key: torch.Tensor, kernel_size, dilation=1,
            additional_keys: Optional[torch.Tensor] = None, is_causal=False,
            rpb: Optional[torch.Tensor] = None) -> torch.Tensor:
    """1-D neighborhood logits ``q.k + rpb`` (NATTEN 0.17).

    Args:
        query (Tensor): ``[B, heads, L, D]``, already scaled.
        key (Tensor): ``[B, heads, L, D]``.
        kernel_size (int | tuple[int]): Odd window size > 1.
        dilation (int | tuple[int]): >= 1. Defaults to 1.
        additional_keys (Tensor, optional): Not supported; must be None. Defaults to None.
        is_causal (bool | tuple[bool]): Not supported; must be False. Defaults to False.
        rpb (Tensor, optional): ``[heads, 2k-1]``. Defaults to None.

    Returns:
        Tensor: ``[B, heads, L, k]``.

    Raises:
        NotImplementedError: ``is_causal``, ``additional_keys`` or nested tensors.
        NattenArgumentError: an even or too small kernel, dilation < 1, or ``L < k * d``.
    """
    return _qk('na1d_qk', 1, query, key, rpb, kernel_size, dilation, is_causal, additional_keys)


def na1d_av(attn: torch.Tensor, value: torch.Tensor, kernel_size, dilation=1,
            additional_values: Optional[torch.Tensor] = None, is_causal=False) -> torch.Tensor:
    """1-D weighted sum of neighbourhood values (NATTEN 0.17).

    Args:
        attn (Tensor): ``[B, heads, L, k]``.
        value (Tensor): ``[B, heads, L, D]``.
        kernel_size (int | tuple[int]): Odd window size > 1.
        dilation (int | tuple[int]): >= 1. Defaults to 1.
        additional_values (Tensor, optional): Not supported; must be None. Defaults to None.
        is_causal (bool | tuple[bool]): Not supported; must be False. Defaults to False.

    Returns:
        Tensor: ``[B, heads, L, D]``.
    """
    return _av('na1d_av', 1, attn, value, kernel_size, dilation, is_causal, additional_values)


def na2d_qk(query: torch.Tensor, key: torch.Tensor, kernel_size, dilation=1,
            additional_keys: Optional[torch.Tensor] = None, is_causal=False,
            rpb: Optional[torch.Tensor] = None) -> torch.Tensor:
    """2-D neighborhood logits ``q.k + rpb`` (NATTEN 0.17).

    Args:
        query (Tensor): ``[B, heads, H, W, D]``, already scaled.
        key (Tensor): ``[B, heads, H, W, D]``.
        kernel_size (int | tuple[int, int]): Odd window size(s) > 1; an int means ``(k, k)``.
        dilation (int | tuple[int, int]): >= 1. Defaults to 1.
        additional_keys (Tensor, optional): Not supported; must be None. Defaults to None.
        is_causal (bool | tuple[bool, bool]): Not supported; must be False. Defaults to False.
        rpb (Tensor, optional): ``[heads, 2kh-1, 2kw-1]``. Defaults to None.

    Returns:
        Tensor: ``[B, heads, H, W, kh*kw]``, slot ``ki * kw + kj``.

    Raises:
        NotImplementedError: ``is_causal``, ``additional_keys`` or nested tensors.
        NattenArgumentError: an even or too small kernel, dilation < 1, or a map smaller than
            ``kernel_size * dilation``.
    """
    return _qk('na2d_qk', 2, query, key, rpb, kernel_size, dilation, is_causal, additional_keys)


def na2d_av(attn: torch.Tensor, value: torch.Tensor, kernel_size, dilation=1,
            additional_values: Optional[torch.Tensor] = None, is_causal=False) -> torch.Tensor:
    """2-D weighted sum of neighbourhood values (NATTEN 0.17).

    Args:
        attn (Tensor): ``[B, heads, H, W, kh*kw]``, slot ``ki * kw + kj``.
        value (Tensor): ``[B, heads, H, W, D]``.
        kernel_size (int | tuple[int, int]): Odd window size(s) > 1.
        dilation (int | tuple[int, int]): >= 1. Defaults to 1.
        additional_values (Tensor, optional): Not supported; must be None. Defaults to None.
        is_causal (bool | tuple[bool, bool]): Not supported; must be False. Defaults to False.

    Returns:
        Tensor: ``[B, heads, H, W, D]``.
    """
    return _av('na2d_av', 2, attn, value, kernel_size, dilation, is_causal, additional_values)


def na1d(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size, dilation=1,
         is_causal=False, rpb: Optional[torch.Tensor] = None, scale: Optional[float] = None,
         additional_keys: Optional[torch.Tensor] = None,
         additional_values: Optional[torch.Tensor] = None,
         xformers_kwargs: Optional[Dict] = None) -> torch.Tensor:
    """Fused 1-D neighborhood attention, heads last (NATTEN 0.17).

    Args:
        query (Tensor): ``[B, L, heads, D]``.
        key (Tensor): ``[B, L, heads, D]``.
        value (Tensor): ``[B, L, heads, D]``.
        kernel_size (int | tuple[int]): Odd window size > 1.
        dilation (int | tuple[int]): >= 1. Defaults to 1.
        is_causal (bool | tuple[bool]): Not supported; must be False. Defaults to False.
        rpb (Tensor, optional): ``[heads, 2k-1]``; unlike NATTEN 0.17, it is trainable here.
            Defaults to None.
        scale (float, optional): Multiplies ``q.k``. Defaults to ``D ** -0.5``.
        additional_keys (Tensor, optional): Not supported; must be None. Defaults to None.
        additional_values (Tensor, optional): Not supported; must be None. Defaults to None.
        xformers_kwargs (dict, optional): Used by NATTEN only with additional keys/values;
            ignored. Defaults to None.

    Returns:
        Tensor: ``[B, L, heads, D]``.
    """
    return _fused('na1d', 1, query, key, value, kernel_size, dilation, is_causal, rpb, scale,
                  additional_keys, additional_values)


def na2d(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size, dilation=1,
         is_causal=False, rpb: Optional[torch.Tensor] = None, scale: Optional[float] = None,
         additional_keys: Optional[torch.Tensor] = None,
         additional_values: Optional[torch.Tensor] = None,
         xformers_kwargs: Optional[Dict] = None) -> torch.Tensor:
    """Fused 2-D neighborhood attention, heads last (NATTEN 0.17).

    Args:
        query (Tensor): ``[B, H, W, heads, D]``.
        key (Tensor): ``[B, H, W, heads, D]``.
        value (Tensor): ``[B, H, W, heads, D]``.
        kernel_size (int | tuple[int, int]): Odd window size(s) > 1; an int means ``(k, k)``.
        dilation (int | tuple[int, int]): >= 1. Defaults to 1.
        is_causal (bool | tuple[bool, bool]): Not supported; must be False. Defaults to False.
        rpb (Tensor, optional): ``[heads, 2kh-1, 2kw-1]``; unlike NATTEN 0.17, it is trainable
            here. Defaults to None.
        scale (float, optional): Multiplies ``q.k``. Defaults to ``D ** -0.5``.
        additional_keys (Tensor, optional): Not supported; must be None. Defaults to None.
        additional_values (Tensor, optional): Not supported; must be None. Defaults to None.
        xformers_kwargs (dict, optional): Used by NATTEN only with additional keys/values;
            ignored. Defaults to None.

    Returns:
        Tensor: ``[B, H, W, heads, D]``.
    """
    return _fused('na2d', 2, query, key, value, kernel_size, dilation, is_causal, rpb, scale,
                  additional_keys, additional_values)


def _no_3d(name: str):
    def unsupported(*args, **kwargs):
        raise NotImplementedError(
            f'natten.functional.{name}: 3-D neighborhood attention is not supported by '
            'nat_mm.compat.natten (nat_mm has 2-D kernels; 1-D runs on a one-row map)')

    unsupported.__name__ = unsupported.__qualname__ = name
    unsupported.__doc__ = f"NATTEN's 3-D ``{name}``: not supported, raises NotImplementedError."
    return unsupported


natten3dqkrpb = _no_3d('natten3dqkrpb')
natten3dqk = _no_3d('natten3dqk')
natten3dav = _no_3d('natten3dav')
na3d_qk_with_bias = _no_3d('na3d_qk_with_bias')
na3d_qk = _no_3d('na3d_qk')
na3d_av = _no_3d('na3d_av')
na3d = _no_3d('na3d')
