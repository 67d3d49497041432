"""Map sizes of the NAT-family backbones (NAT, DiNAT, DiNAT_s) and where their attention pads.

Every level halves its map with rounding up: NAT's stem is two 3x3 stride-2 convs with padding
1 and its downsamplers 3x3 stride-2 convs with padding 1; DiNAT_s pads its input to a multiple of
4 before the 4x4 patch embedding and odd maps by one before each patch merging. So level ``i`` of
an input of length ``L`` (per axis) is ``ceil(L / (4 * 2**i))`` long (:func:`level_size`), the
one rounding rule that the benchmarks and the export use too.

Each :class:`~nat_mm.models.NeighborhoodAttention2D` zero-pads a map shorter than its
``min_map_size`` (``kernel_size * dilation``) on an axis; :func:`padded_layers` and
:func:`same_padding_range` ask the backbone's own attention modules, so the answer follows the
model (its kernel size and dilations, whatever the preset).

Example:
    >>> from nat_mm.models import NAT
    >>> backbone = NAT(arch='mini')
    >>> [level_size(100, i) for i in range(4)]
    [25, 13, 7, 4]
    >>> same_padding_range(backbone, 100)  # level 2 unpadded from 97 px, level 3 padded to 192
    (97, 192)
"""
import math
from typing import List, Tuple

from torch import nn

__all__ = ['STEM_STRIDE', 'level_size', 'level_sizes', 'lengths_with_level_size',
           'attention_layers', 'padded_layers', 'same_padding_range']

#: The stride of level 0.
STEM_STRIDE = 4


def level_size(length: int, level: int) -> int:
    """``ceil(length / (4 * 2**level))``: the map length at ``level`` for an input ``length``."""
    return -(-length // (STEM_STRIDE * 2 ** level))


def level_sizes(length: int, num_levels: int = 4) -> List[int]:
    """:func:`level_size` of every level."""
    return [level_size(length, i) for i in range(num_levels)]


def lengths_with_level_size(length: int, level: int) -> Tuple[int, int]:
    """The input lengths ``(min, max)`` whose map at ``level`` is as long as ``length``'s."""
    stride = STEM_STRIDE * 2 ** level
    size = level_size(length, level)
    return stride * (size - 1) + 1, stride * size


def attention_layers(backbone: nn.Module) -> List[Tuple[int, int, nn.Module]]:
    """``[(level, layer, attention module)]`` of a NAT-family backbone, in forward order
    (``backbone.levels[level].blocks[layer].attn``)."""
    return [(i, j, block.attn) for i, level in enumerate(backbone.levels)
            for j, block in enumerate(level.blocks)]


def padded_layers(backbone: nn.Module, height: int, width: int) -> List[Tuple[bool, bool]]:
    """Per attention layer (forward order), whether it pads its map on each axis ``(H, W)`` for
    a ``height x width`` input."""
    out = []
    for i, _, attn in attention_layers(backbone):
        pad_b, pad_r = attn.padding(level_size(height, i), level_size(width, i))
        out.append((pad_b > 0, pad_r > 0))
    return out


def same_padding_range(backbone: nn.Module, length: int) -> Tuple[int, float]:
    """The input lengths around ``length`` at which every attention layer of ``backbone`` pads
    (or does not pad) its map exactly as at ``length``, as ``(min, max)``; ``max`` is inf when no
    layer pads at ``length``.

    A layer at level ``i`` with ``min_map_size`` m pads a map of ``ceil(L / s)`` < m tokens
    (``s = 4 * 2**i``), i.e. for ``L <= s * (m - 1)``: these thresholds bound the range.
    """
    thresholds = {STEM_STRIDE * 2 ** i * (attn.min_map_size - 1)
                  for i, _, attn in attention_layers(backbone)}
    below = [t for t in thresholds if t < length]
    above = [t for t in thresholds if t >= length]
    return max(below, default=0) + 1, min(above, default=math.inf)
