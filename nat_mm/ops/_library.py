"""Fake (meta) kernels and autograd for the ``nat_mm::`` dispatcher ops declared in csrc/ops.cpp.

Fake kernels compute shapes only, so ``torch.compile(fullgraph=True)`` traces through the ops.
Each forward's backward calls another registered op (which has its own fake kernel), so the
backward is traceable too. Registered once, when the extension loads.
"""
from typing import List, Optional

import torch

_registered = False


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _empty_like_rank5(t: torch.Tensor) -> torch.Tensor:
    # Outputs are allocated contiguous whatever the input strides.
    return t.new_empty(t.shape)


def _drpb(rpb_like: Optional[torch.Tensor], q: torch.Tensor, kernel_size: List[int]):
    if rpb_like is None:
        return q.new_empty((0,))
    heads = q.shape[3]
    return q.new_empty((heads, 2 * kernel_size[0] - 1, 2 * kernel_size[1] - 1))


def _register_fakes() -> None:
    lib = torch.library

    @lib.register_fake('nat_mm::na2d_forward')
    def _(q, k, v, rpb, kernel_size, dilation, scale):
        lse = q.new_empty(q.shape[:4], dtype=_lse_dtype(q.dtype))
        return _empty_like_rank5(q), lse

    @lib.register_fake('nat_mm::na2d_backward')
    def _(grad_out, q, k, v, rpb, out, lse, kernel_size, dilation, scale):
        return (_empty_like_rank5(q), _empty_like_rank5(k), _empty_like_rank5(v),
                _drpb(rpb, q, kernel_size))

    @lib.register_fake('nat_mm::na2d_qk_forward')
    def _(q, k, rpb, kernel_size, dilation):
        return q.new_empty((*q.shape[:4], kernel_size[0] * kernel_size[1]))

    @lib.register_fake('nat_mm::na2d_qk_backward')
    def _(grad_attn, q, k, has_rpb, kernel_size, dilation):
        return (_empty_like_rank5(q), _empty_like_rank5(k),
                _drpb(q if has_rpb else None, q, kernel_size))

    @lib.register_fake('nat_mm::na2d_av_forward')
    def _(attn, v, kernel_size, dilation):
        return _empty_like_rank5(v)

    @lib.register_fake('nat_mm::na2d_av_backward')
    def _(grad_out, attn, v, kernel_size, dilation):
        return attn.new_empty(attn.shape), _empty_like_rank5(v)


def register_fused_autograd(forward: str, backward_op) -> None:
    """Autograd of a fused forward op ``(q, k, v, rpb, kernel_size, dilation, scale) -> (out,
    lse)`` through ``backward_op(grad_out, q, k, v, rpb, out, lse, kernel_size, dilation, scale)
    -> (dq, dk, dv, drpb)``: the C++ ops' pair, and the Triton ops' pair (ops/_triton.py)."""

    def setup_context(ctx, inputs, output):
        q, k, v, rpb, kernel_size, dilation, scale = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, rpb, out, lse)
        ctx.kernel_size, ctx.dilation, ctx.scale = kernel_size, dilation, scale
        ctx.mark_non_differentiable(lse)

    def backward(ctx, grad_out, grad_lse):
        q, k, v, rpb, out, lse = ctx.saved_tensors
        dq, dk, dv, drpb = backward_op(grad_out.contiguous(), q, k, v, rpb, out, lse,
                                       ctx.kernel_size, ctx.dilation, ctx.scale)
        return dq, dk, dv, (drpb if rpb is not None else None), None, None, None

    torch.library.register_autograd(forward, backward, setup_context=setup_context)


def _register_autograd() -> None:
    ops = torch.ops.nat_mm
    register_fused_autograd('nat_mm::na2d_forward', ops.na2d_backward)

    def qk_setup(ctx, inputs, output):
        q, k, rpb, kernel_size, dilation = inputs
        ctx.save_for_backward(q, k)
        ctx.has_rpb = rpb is not None
        ctx.kernel_size, ctx.dilation = kernel_size, dilation

    def qk_backward(ctx, grad_attn):
        q, k = ctx.saved_tensors
        dq, dk, drpb = ops.na2d_qk_backward(grad_attn.contiguous(), q, k, ctx.has_rpb,
                                            ctx.kernel_size, ctx.dilation)
        return dq, dk, (drpb if ctx.has_rpb else None), None, None

    torch.library.register_autograd('nat_mm::na2d_qk_forward', qk_backward,
                                    setup_context=qk_setup)

    def av_setup(ctx, inputs, output):
        attn, v, kernel_size, dilation = inputs
        ctx.save_for_backward(attn, v)
        ctx.kernel_size, ctx.dilation = kernel_size, dilation

    def av_backward(ctx, grad_out):
        attn, v = ctx.saved_tensors
        dattn, dv = ops.na2d_av_backward(grad_out.contiguous(), attn, v, ctx.kernel_size,
                                         ctx.dilation)
        return dattn, dv, None, None

    torch.library.register_autograd('nat_mm::na2d_av_forward', av_backward,
                                    setup_context=av_setup)


def register() -> None:
    """Register fake kernels and autograd for the loaded extension's ops (idempotent)."""
    global _registered
    if _registered:
        return
    _register_fakes()
    _register_autograd()
    _registered = True
