"""What the neighborhood attention of a NAT-family backbone looks at (torch only).

- :func:`record_attention`: a context manager in which every
  :class:`~nat_mm.models.NeighborhoodAttention2D` of a model keeps its attention weights
  (its documented ``save_attention`` flag and ``attention_weights`` attribute).
- :func:`attention_maps`: one forward of a NAT/DiNAT/DiNAT_s backbone, the weights of every
  layer with its level, kernel, dilation and map size.
- :func:`neighbourhood`: the tokens one query of a layer attends to, with their weights.
- :func:`receptive_fields`: the image pixels that can influence a query's token after each
  layer: the neighbourhoods (the ops' own window indices), the 3x3 stride-2 downsamplers and the
  stem, composed back to the pixels.

Example:
    >>> from nat_mm.models import NAT
    >>> backbone = NAT(arch='mini')
    >>> maps = attention_maps(backbone, torch.randn(1, 3, 64, 64))
    >>> maps[0]['size'], tuple(maps[0]['weights'].shape)  # level 0: 16x16 tokens, 2 heads
    ((16, 16), (16, 16, 2, 49))
    >>> fields = receptive_fields(maps, (64, 64), (32, 32))
    >>> int(fields[0].any(1).sum())  # 7 tokens 4 px apart, 7 px each through the stem
    31
"""
import contextlib
from typing import Iterator, List, Tuple

import torch
from torch import nn

from ..ops._torch_impl import window_indices
from .geometry import STEM_STRIDE, attention_layers
from .layers import NeighborhoodAttention2D

__all__ = ['record_attention', 'attention_maps', 'neighbourhood', 'receptive_fields']


@contextlib.contextmanager
def record_attention(model: nn.Module) -> Iterator[List[NeighborhoodAttention2D]]:
    """Record the attention weights of every NeighborhoodAttention2D in ``model`` inside the
    block.

    Each forward inside the block leaves ``module.attention_weights`` (``[B, Hp, Wp, heads,
    kh*kw]`` float32, over the padded map) on every attention module; read them inside the block:
    on exit the modules' ``save_attention`` flags are restored and the weights dropped. The
    outputs stay those of the model (the weights are computed explicitly, with ``na2d_qk`` and a
    softmax, and applied with ``na2d_av``); attention dropout still applies in training mode.

    Args:
        model (nn.Module): Any module holding NeighborhoodAttention2D layers.

    Yields:
        list[NeighborhoodAttention2D]: The attention modules, in ``model.modules()`` order.
    """
    modules = [m for m in model.modules() if isinstance(m, NeighborhoodAttention2D)]
    saved = [m.save_attention for m in modules]
    try:
        for m in modules:
            m.save_attention = True
        yield modules
    finally:
        for m, flag in zip(modules, saved):
            m.save_attention = flag
            m.attention_weights = None


def attention_maps(backbone: nn.Module, inputs: torch.Tensor) -> List[dict]:
    """Run ``backbone`` in eval mode on ``inputs`` ``[1, 3, H, W]`` and return its attention.

    The backbone is left in eval mode.

    Args:
        backbone (nn.Module): NAT, DiNAT or DiNAT_s (``levels[i].blocks[j].attn``).
        inputs (Tensor): ``[1, 3, H, W]``, the normalised image.

    Returns:
        list[dict]: Per attention layer in forward order: ``level``, ``layer``,
        ``kernel_size``, ``dilation``, ``size`` (the layer's map ``(H, W)``) and ``weights``
        ``[Hp, Wp, heads, kh*kw]`` (``Hp, Wp``: the map after the padding of small maps).
    """
    layers = attention_layers(backbone)
    sizes = {}
    hooks = [attn.register_forward_pre_hook(
        lambda module, args, key=(i, j): sizes.__setitem__(key, tuple(args[0].shape[1:3])))
        for i, j, attn in layers]
    backbone.eval()
    try:
        with record_attention(backbone), torch.no_grad():
            backbone(inputs)
            maps = [dict(level=i, layer=j, kernel_size=attn.kernel_size, dilation=attn.dilation,
                         size=sizes[(i, j)], weights=attn.attention_weights[0])
                    for i, j, attn in layers]
    finally:
        for hook in hooks:
            hook.remove()
    return maps


def _axis_windows(length: int, padded: int, kernel: int, dilation: int) -> torch.Tensor:
    """Key positions ``[length, k]`` of every query on one axis of a map padded to ``padded``
    (the ops' window rule)."""
    keys, _ = window_indices(padded, kernel, dilation, torch.device('cpu'))
    return keys[:length]


def _window_incidence(length: int, padded: int, kernel: int, dilation: int) -> torch.Tensor:
    """``A [length, length]``: A[q, j] = 1 when key j (inside the map) is in query q's window."""
    A = torch.zeros(length, padded)
    A.scatter_(1, _axis_windows(length, padded, kernel, dilation), 1.0)
    return A[:, :length]


def _conv_incidence(out_len: int, in_len: int) -> torch.Tensor:
    """``A [out_len, in_len]`` of a 3x3, stride-2, padding-1 convolution along one axis."""
    A = torch.zeros(out_len, in_len)
    for p in range(out_len):
        A[p, max(0, 2 * p - 1):min(in_len, 2 * p + 2)] = 1.0
    return A


def neighbourhood(layer: dict, point: Tuple[int, int]) -> dict:
    """The query token of ``point`` (pixel ``(y, x)``) in a layer of :func:`attention_maps`,
    its neighbours and their weights.

    Returns:
        dict: ``level``, ``layer``, ``dilation``, ``stride``, ``query`` ``[qy, qx]`` (in the
        level's token grid), ``rows`` and ``cols`` (the neighbours' rows and columns, k each)
        and ``weights`` ``[heads, k, k]`` float32.
    """
    H, W = layer['size']
    Hp, Wp, heads, _ = layer['weights'].shape
    k, d = layer['kernel_size'], layer['dilation']
    stride = STEM_STRIDE * 2 ** layer['level']
    qy, qx = min(point[0] // stride, H - 1), min(point[1] // stride, W - 1)
    rows = _axis_windows(Hp, Hp, k, d)[qy]
    cols = _axis_windows(Wp, Wp, k, d)[qx]
    weights = layer['weights'][qy, qx].float().reshape(heads, k, k)
    return dict(level=layer['level'], layer=layer['layer'], dilation=d, stride=stride,
                query=[int(qy), int(qx)], rows=rows.tolist(), cols=cols.tolist(),
                weights=weights)


def receptive_fields(maps: List[dict], image_size: Tuple[int, int],
                     point: Tuple[int, int]) -> List[torch.Tensor]:
    """For each layer of :func:`attention_maps`, the boolean ``[H, W]`` image mask of the pixels
    that can influence the token holding ``point`` (pixel ``(y, x)``) after that layer.

    For NAT and DiNAT: their stem (two 3x3 stride-2 convs) and downsamplers (3x3 stride 2) are
    composed with the windows; DiNAT_s's patch embedding and merging are not modelled.

    NAT's field grows by ``k - 1`` tokens a layer; DiNAT's dilated layers make it jump.
    """
    stem = [tuple(image_size)]
    for _ in range(2):
        stem.append(tuple(-(-s // 2) for s in stem[-1]))
    fields = []
    for n, layer in enumerate(maps):
        level = layer['level']
        H, W = layer['size']
        stride = STEM_STRIDE * 2 ** level
        mask = torch.zeros(H, W)
        mask[min(point[0] // stride, H - 1), min(point[1] // stride, W - 1)] = 1.0
        for prev in reversed(maps[:n + 1]):  # back through the layers, then the downsamplers
            if prev['level'] != level:
                h, w = prev['size']
                mask = _conv_incidence(H, h).T @ mask @ _conv_incidence(W, w)
                level, (H, W) = prev['level'], (h, w)
            Hp, Wp = prev['weights'].shape[:2]
            k, d = prev['kernel_size'], prev['dilation']
            mask = _window_incidence(H, Hp, k, d).T @ mask @ _window_incidence(W, Wp, k, d)
            mask = (mask > 0).float()
        for (h, w), (H, W) in ((stem[1], stem[2]), (stem[0], stem[1])):  # the stem's two convs
            mask = (_conv_incidence(H, h).T @ mask @ _conv_incidence(W, w) > 0).float()
        fields.append(mask > 0)
    return fields
