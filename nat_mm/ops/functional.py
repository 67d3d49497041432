"""Functional 2-D neighborhood attention with NAT semantics (relative positional bias, dilation).

Layout is heads-last, as in current NATTEN: ``[B, H, W, heads, D]``. Each query attends to the
``kh x kw`` keys of its (dilated) neighbourhood; at the borders the window shifts inward, so every
query sees exactly ``kh * kw`` keys. Both map axes must satisfy ``L >= k * d``.

Tensors go to the compiled ``nat_mm::`` ops when the extension has a kernel for their device, else
to the pure-PyTorch implementation (with a warning, once). On CUDA, the fused ``na2d`` may take
the Triton kernels or FlexAttention instead: ``NAT_MM_CUDA_KERNEL`` (see ``_dispatch.py``).
"""
from typing import Optional

import torch

from . import _checks, _dispatch, _torch_impl
from ._checks import IntOrPair
from ._dispatch import use_compiled_kernels


def _check_qkv(op, kernel_size, dilation, **tensors):
    kernel_size = _checks.check_kernel_size_arg(kernel_size, op)
    dilation = _checks.check_dilation_arg(dilation, op)
    _checks.check_tensors(op, **tensors)
    for name, t in tensors.items():
        if t is not None and name != 'rpb':
            _checks.check_rank5(op, name, t, '[B, H, W, heads, D]')
    return kernel_size, dilation


def na2d(query: torch.Tensor,
         key: torch.Tensor,
         value: torch.Tensor,
         kernel_size: IntOrPair,
         dilation: IntOrPair = 1,
         rpb: Optional[torch.Tensor] = None,
         scale: Optional[float] = None) -> torch.Tensor:
    """Fused 2-D neighborhood attention: ``softmax(scale * q.k + rpb) @ v`` per neighbourhood.

    Args:
        query (Tensor): ``[B, H, W, heads, D]``. Strided views (e.g. slices of one qkv projection)
            are accepted without copying as long as the last axis is contiguous.
        key (Tensor): ``[B, H, W, heads, D]``, same shape, dtype and device as ``query``.
        value (Tensor): ``[B, H, W, heads, D]``, same shape, dtype and device as ``query``.
        kernel_size (int | tuple[int, int]): odd window size ``(kh, kw)``; an int means
            ``(k, k)``.
        dilation (int | tuple[int, int]): ``(dh, dw)`` >= 1; an int means ``(d, d)``.
            Defaults to 1.
        rpb (Tensor, optional): relative positional bias ``[heads, 2*kh-1, 2*kw-1]``, added to
            the logits. Defaults to None.
        scale (float, optional): multiplies ``q.k``. Defaults to ``D ** -0.5``.

    Returns:
        Tensor: ``[B, H, W, heads, D]``, contiguous.

    Raises:
        TypeError: non-tensor or integer inputs, mixed dtypes, bad argument types.
        ValueError: wrong rank or shapes, even or non-positive kernel, dilation < 1, a map smaller
            than ``kernel_size * dilation`` on either axis, rpb of the wrong shape, tensors on
            different devices.

    Example:
        >>> q = k = v = torch.randn(1, 14, 14, 2, 32)
        >>> na2d(q, k, v, kernel_size=7, dilation=2).shape
        torch.Size([1, 14, 14, 2, 32])
    """
    op = 'na2d'
    kernel_size, dilation = _check_qkv(op, kernel_size, dilation, query=query, key=key,
                                       value=value, rpb=rpb)
    _checks.check_same_shape(op, query=query, key=key, value=value)
    _checks.check_rpb(op, rpb, query.shape[3], kernel_size)
    _checks.check_map_size(op, query.shape[1:3], kernel_size, dilation)
    scale = _checks.check_scale_arg(scale, query.shape[4], op)
    backend = _dispatch.fused_backend(query)
    if backend == 'extension':
        out, _ = torch.ops.nat_mm.na2d_forward(query, key, value, rpb, kernel_size, dilation,
                                               scale)
        return out
    if backend == 'triton':
        from . import _triton
        return _triton.na2d(query, key, value, kernel_size, dilation, rpb, scale)
    if backend == 'flex':
        from . import _flex
        return _flex.na2d_flex(query, key, value, kernel_size, dilation, rpb, scale)
    return _torch_impl.na2d(query, key, value, kernel_size, dilation, rpb, scale)


def na2d_qk(query: torch.Tensor,
            key: torch.Tensor,
            kernel_size: IntOrPair,
            dilation: IntOrPair = 1,
            rpb: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Neighborhood logits ``q.k + rpb`` (no scale: scale ``query`` first, as NAT does).

    Args:
        query (Tensor): ``[B, H, W, heads, D]``.
        key (Tensor): ``[B, H, W, heads, D]``, same shape, dtype and device as ``query``.
        kernel_size (int | tuple[int, int]): odd window size; an int means ``(k, k)``.
        dilation (int | tuple[int, int]): >= 1; an int means ``(d, d)``. Defaults to 1.
        rpb (Tensor, optional): ``[heads, 2*kh-1, 2*kw-1]``. Defaults to None.

    Returns:
        Tensor: ``[B, H, W, heads, kh*kw]``; the last axis is the window slot ``ki * kw + kj``.
    """
    op = 'na2d_qk'
    kernel_size, dilation = _check_qkv(op, kernel_size, dilation, query=query, key=key, rpb=rpb)
    _checks.check_same_shape(op, query=query, key=key)
    _checks.check_rpb(op, rpb, query.shape[3], kernel_size)
    _checks.check_map_size(op, query.shape[1:3], kernel_size, dilation)
    if use_compiled_kernels(query):
        return torch.ops.nat_mm.na2d_qk_forward(query, key, rpb, kernel_size, dilation)
    return _torch_impl.na2d_qk(query, key, kernel_size, dilation, rpb)


def na2d_av(attn: torch.Tensor,
            value: torch.Tensor,
            kernel_size: IntOrPair,
            dilation: IntOrPair = 1) -> torch.Tensor:
    """Weighted sum of each query's neighbourhood of values.

    Args:
        attn (Tensor): ``[B, H, W, heads, kh*kw]`` weights, slot ``ki * kw + kj``.
        value (Tensor): ``[B, H, W, heads, D]``.
        kernel_size (int | tuple[int, int]): odd window size; an int means ``(k, k)``.
        dilation (int | tuple[int, int]): >= 1; an int means ``(d, d)``. Defaults to 1.

    Returns:
        Tensor: ``[B, H, W, heads, D]``.
    """
    op = 'na2d_av'
    kernel_size, dilation = _check_qkv(op, kernel_size, dilation, attn=attn, value=value)
    _checks.check_attn(op, attn, value, kernel_size)
    _checks.check_map_size(op, value.shape[1:3], kernel_size, dilation)
    if use_compiled_kernels(value):
        return torch.ops.nat_mm.na2d_av_forward(attn, value, kernel_size, dilation)
    return _torch_impl.na2d_av(attn, value, kernel_size, dilation)
