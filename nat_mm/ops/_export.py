"""Decompositions of the ``nat_mm::`` ops into standard torch ops, for export (ONNX and others).

A program from ``torch.export`` keeps our compiled ops as ``nat_mm::na2d_forward`` (and the qk/av
pair) nodes, which no exporter or runtime outside this process knows. Their decompositions here
are the pure-PyTorch path of :mod:`._torch_impl` (gather the window, einsum, softmax), so the
maths exists once: ``ep.run_decompositions(export_decompositions())`` swaps every ``nat_mm::``
node for that path, with symbolic H and W kept symbolic.

Example:
    >>> ep = torch.export.export(model, (x,))  # doctest: +SKIP
    >>> ep = ep.run_decompositions(export_decompositions())  # doctest: +SKIP
    >>> torch.onnx.export(ep, (x,), 'model.onnx', dynamo=True)  # doctest: +SKIP
"""
from typing import Callable, Dict, List, Optional, Tuple

import torch

from . import _torch_impl
from ._extension import load_extension

__all__ = ['export_decompositions']


def _pair(value: List[int]) -> Tuple[int, int]:
    return int(value[0]), int(value[1])


def _na2d_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: Optional[torch.Tensor],
                  kernel_size: List[int], dilation: List[int],
                  scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``nat_mm::na2d_forward``: ``(out [B, H, W, heads, D], logsumexp [B, H, W, heads])``."""
    kernel_size, dilation = _pair(kernel_size), _pair(dilation)
    logits = _torch_impl.na2d_qk(q * scale, k, kernel_size, dilation, rpb)
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    lse = torch.logsumexp(logits.to(lse_dtype), dim=-1)
    out = _torch_impl.na2d_av(logits.softmax(dim=-1), v, kernel_size, dilation)
    return out.contiguous(), lse


def _na2d_qk_forward(q: torch.Tensor, k: torch.Tensor, rpb: Optional[torch.Tensor],
                     kernel_size: List[int], dilation: List[int]) -> torch.Tensor:
    """``nat_mm::na2d_qk_forward``: logits ``[B, H, W, heads, kh*kw]``."""
    return _torch_impl.na2d_qk(q, k, _pair(kernel_size), _pair(dilation), rpb).contiguous()


def _na2d_av_forward(attn: torch.Tensor, v: torch.Tensor, kernel_size: List[int],
                     dilation: List[int]) -> torch.Tensor:
    """``nat_mm::na2d_av_forward``: ``[B, H, W, heads, D]``."""
    return _torch_impl.na2d_av(attn, v, _pair(kernel_size), _pair(dilation)).contiguous()


def export_decompositions() -> Dict[Callable, Callable]:
    """The decomposition table for ``ExportedProgram.run_decompositions``: every forward
    ``nat_mm::`` op mapped to the pure-PyTorch path.

    Inference programs hold only forward ops; a program exported for training would also hold
    the backward ops, which have no entry (export those with the compiled kernels).

    Returns:
        dict: ``{torch.ops.nat_mm.na2d_forward.default: fn, ...}``; empty when the compiled
        kernels are not loaded (then the model already runs, and exports, the pure-PyTorch
        path).
    """
    if not load_extension():
        return {}
    ops = torch.ops.nat_mm
    return {
        ops.na2d_forward.default: _na2d_forward,
        ops.na2d_qk_forward.default: _na2d_qk_forward,
        ops.na2d_av_forward.default: _na2d_av_forward,
    }
