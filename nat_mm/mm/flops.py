"""FLOP counting for neighborhood attention in mmengine's FLOP analyzer.

mmengine's :class:`~mmengine.analysis.FlopAnalyzer` traces a model with ``torch.jit`` and counts
each traced operator with a handle; it has none for our compiled ops (``nat_mm::na2d_forward``
and the unfused ``na2d_qk_forward``/``na2d_av_forward``). Following mmengine's convention for a
matmul (one multiply-add is one FLOP), neighborhood attention costs two contractions over the
``kh * kw`` window, ``q.k`` and ``attn.v``, each ``B * H * W * heads * kh * kw * D``:

    na2d:    2 * B * H * W * heads * kh * kw * D
    na2d_qk: B * H * W * heads * kh * kw * D
    na2d_av: B * H * W * heads * kh * kw * D

which reproduces the FLOPs in the NAT and DiNAT papers. The softmax, the rpb addition and the
scale are not counted, as mmengine does not count them for other attention either. Without the
compiled extension the pure-PyTorch path runs two ``einsum`` calls that mmengine's einsum handle
already counts the same way.

Example:
    >>> from mmengine.analysis import FlopAnalyzer
    >>> from nat_mm.mm.flops import add_na_flop_handles
    >>> analyzer = add_na_flop_handles(FlopAnalyzer(model, inputs))  # doctest: +SKIP
    >>> analyzer.total()  # doctest: +SKIP
"""
from typing import Any, List, Tuple

from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape

__all__ = ['na2d_flop_jit', 'na2d_qk_flop_jit', 'na2d_av_flop_jit', 'NA_FLOP_HANDLES',
           'add_na_flop_handles']


def _int_pair(val: Any, what: str) -> Tuple[int, int]:
    """Read an ``int[]`` argument of a traced op (a constant or a ``prim::ListConstruct``)."""
    value = val.toIValue()
    if value is None and val.node().kind() == 'prim::ListConstruct':
        value = [v.toIValue() for v in val.node().inputs()]
    if value is None or len(value) != 2 or any(v is None for v in value):
        raise ValueError(f'cannot read {what} of a traced neighborhood-attention op: {val}')
    return int(value[0]), int(value[1])


def _tensor_shape(val: Any, what: str) -> List[int]:
    shape = get_shape(val)
    if shape is None or len(shape) != 5:
        raise ValueError(f'expected a traced 5-D {what}, got shape {shape}')
    return shape


def na2d_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``nat_mm::na2d_forward(q, k, v, rpb, kernel_size, dilation, scale)``: q.k and attn.v."""
    batch, height, width, heads, dim = _tensor_shape(inputs[0], 'query [B, H, W, heads, D]')
    kh, kw = _int_pair(inputs[4], 'kernel_size')
    return 2 * batch * height * width * heads * kh * kw * dim


def na2d_qk_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``nat_mm::na2d_qk_forward(q, k, rpb, kernel_size, dilation)``: q.k."""
    batch, height, width, heads, dim = _tensor_shape(inputs[0], 'query [B, H, W, heads, D]')
    kh, kw = _int_pair(inputs[3], 'kernel_size')
    return batch * height * width * heads * kh * kw * dim


def na2d_av_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``nat_mm::na2d_av_forward(attn, v, kernel_size, dilation)``: attn.v."""
    batch, height, width, heads, window = _tensor_shape(inputs[0],
                                                        'attn [B, H, W, heads, kh*kw]')
    dim = _tensor_shape(inputs[1], 'value [B, H, W, heads, D]')[4]
    return batch * height * width * heads * window * dim


NA_FLOP_HANDLES = {
    'nat_mm::na2d_forward': na2d_flop_jit,
    'nat_mm::na2d_qk_forward': na2d_qk_flop_jit,
    'nat_mm::na2d_av_forward': na2d_av_flop_jit,
}


def add_na_flop_handles(analyzer: FlopAnalyzer) -> FlopAnalyzer:
    """Register the neighborhood-attention handles on ``analyzer`` and return it.

    Args:
        analyzer (FlopAnalyzer): mmengine's FLOP analyzer for a model that uses NAT/DiNAT.

    Returns:
        FlopAnalyzer: the same analyzer, for chaining.
    """
    return analyzer.set_op_handle(**NA_FLOP_HANDLES)
