"""DiNAT_s: the Swin-layout DiNAT variant (Hassani & Shi, 2022), torch and timm only.

The official ``DiNAT_s`` (``detection/dinats.py`` of SHI-Labs/Neighborhood-Attention-Transformer)
is Swin Transformer's layout with neighborhood / dilated neighborhood attention in place of
(shifted) window attention: a 4x4 stride-4 patch embedding with a norm, NA layers with MLP ratio
4 and no layer scale, Swin's patch merging between levels, and a norm per output. It shares the
NA layer with NAT (:class:`~nat_mm.models.NATLayer`, same names ``norm1``, ``attn.qkv``,
``attn.rpb``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``) and the level container with
NAT (:class:`~nat_mm.models.NATBlock`); only the stem, the downsampler and the layout differ.

Module names are the official ones, so official checkpoints load without renaming:
``patch_embed.proj``, ``patch_embed.norm``, ``layers.{i}.blocks.{j}.*``,
``layers.{i}.downsample.{norm,reduction}`` and the output norms ``norm{i}``.

Small maps are handled as in NAT (and as NATTEN 0.14 did for the official models): a map smaller
than ``kernel_size * dilation`` is zero-padded bottom/right inside the attention.
"""
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import NABackbone
from .nat import NATBlock

__all__ = ['PatchEmbed', 'PatchMerging', 'DiNATsBlock', 'DiNAT_s']


class PatchEmbed(nn.Module):
    """Stem: a ``patch_size`` x ``patch_size`` convolution with the same stride, then a norm.

    The image is zero-padded bottom/right to a multiple of ``patch_size`` first, so any size
    works and the output is ``[B, ceil(H / p), ceil(W / p), C]``.

    Args:
        patch_size (int): Patch size and stride. Defaults to 4.
        in_channels (int): Input image channels. Defaults to 3.
        embed_dims (int): Output channels ``C``. Defaults to 96.
        norm_layer (type, optional): Norm after the projection; None for none. Defaults to
            ``nn.LayerNorm``.
    """

    def __init__(self, patch_size: int = 4, in_channels: int = 3, embed_dims: int = 96,
                 norm_layer=nn.LayerNorm) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dims, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dims) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map an image ``[B, in_channels, H, W]`` to tokens ``[B, ceil(H/p), ceil(W/p), C]``."""
        p = self.patch_size
        pad_b, pad_r = -x.shape[2] % p, -x.shape[3] % p
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        x = self.proj(x).permute(0, 2, 3, 1)
        return self.norm(x) if self.norm is not None else x

    def extra_repr(self) -> str:
        return f'patch_size={self.patch_size}'


class PatchMerging(nn.Module):
    """Swin's downsampler: gather 2x2 neighbours into ``4C`` channels, norm, project to ``2C``.

    The four neighbours are concatenated in the order (0, 0), (1, 0), (0, 1), (1, 1) (row, col
    offset), as in Swin and the official DiNAT_s; an odd map is zero-padded bottom/right first.

    Args:
        dim (int): Input channels ``C``.
        norm_layer (type): Norm over the ``4C`` gathered channels. Defaults to ``nn.LayerNorm``.
    """

    def __init__(self, dim: int, norm_layer=nn.LayerNorm) -> None:
        super().__init__()
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, H, W, C]`` to ``[B, ceil(H/2), ceil(W/2), 2C]``."""
        H, W = x.shape[1:3]
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        # each [B, ceil(H/2), ceil(W/2), C]; concatenated -> [B, ceil(H/2), ceil(W/2), 4C]
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      dim=-1)
        return self.reduction(self.norm(x))


class DiNATsBlock(NATBlock):
    """One DiNAT_s level: :class:`NATBlock`'s layers, then an optional :class:`PatchMerging`.

    Takes the arguments of :class:`NATBlock`; ``downsample=True`` appends a PatchMerging
    (instead of NAT's convolutional downsampler).
    """

    def __init__(self, dim: int, *args, downsample: bool = True, norm_layer=nn.LayerNorm,
                 **kwargs) -> None:
        super().__init__(dim, *args, downsample=False, norm_layer=norm_layer, **kwargs)
        self.downsample = PatchMerging(dim, norm_layer) if downsample else None


class DiNAT_s(NABackbone):
    """DiNAT_s backbone: Swin's layout with (dilated) neighborhood attention.

    A sibling of :class:`~nat_mm.models.NAT` on the same base,
    :class:`~nat_mm.models.NABackbone`, so the same contract (``out_indices``,
    ``frozen_stages`` with mmdet Swin's semantics, ``with_cp``, ``init_cfg``, ``norm_eval``;
    four NCHW maps at strides 4, 8, 16, 32 for any input size), with the official DiNAT_s stem
    (:class:`PatchEmbed`), levels (:class:`DiNATsBlock`, with a :class:`PatchMerging`) and
    module names (``layers.{i}`` instead of NAT's ``levels.{i}``). ``dilations`` defaults to
    the official preset for ``task`` (docs/design.md section 10).

    Args:
        arch (str): Preset in :attr:`arch_settings` ('tiny', 'small', 'base', 'large').
            Defaults to 'tiny'.
        embed_dims (int, optional): Channels ``C`` of level 0. Defaults to None (preset).
        depths (Sequence[int], optional): Layers per level. Defaults to None (preset).
        num_heads (Sequence[int], optional): Heads per level. Defaults to None (preset).
        mlp_ratio (float, optional): MLP width ratio. Defaults to None (preset: 4).
        kernel_size (int): Odd neighbourhood size. Defaults to 7.
        dilations (Sequence[Sequence[int]], optional): One list per level with one dilation per
            layer; None takes the ``task`` preset. Defaults to None.
        task (str): Dilation preset, 'det' or 'seg'; ignored when ``dilations`` is given.
            Defaults to 'det'.
        patch_size (int): Stem patch size. Defaults to 4.
        drop_path_rate (float): Stochastic depth, increasing linearly to this value over all
            layers. Defaults to 0.2.
        attn_drop_rate (float): Attention dropout rate. Defaults to 0.
        drop_rate (float): Dropout rate after the stem, the attention and in the MLPs.
            Defaults to 0.
        qkv_bias (bool): Bias in the qkv projections. Defaults to True.
        in_channels (int): Input image channels. Defaults to 3.
        out_indices (Sequence[int]): Levels whose outputs are returned. Defaults to
            (0, 1, 2, 3).
        frozen_stages (int): -1 freezes nothing, 0 the stem, ``i >= 1`` the stem, levels
            ``0 .. i-1`` and their output norms. Defaults to -1.
        norm_eval (bool): Keep the norms in eval mode during training. Defaults to False.
        with_cp (bool): Activation checkpointing per layer. Defaults to False.
        init_cfg (dict | list[dict], optional): Initialisation config (see
            :class:`~nat_mm.models.NABackbone`). Defaults to None.

    Raises:
        ValueError: an unknown ``arch`` or ``task``, ``depths`` without a dilation preset and
            no ``dilations``, and the errors of :class:`~nat_mm.models.NABackbone`.
        TypeError: see :class:`~nat_mm.models.NABackbone`.

    Example:
        >>> model = DiNAT_s(arch='tiny', depths=(1, 1, 1, 1), dilations=[[1]] * 4).eval()
        >>> [tuple(o.shape) for o in model(torch.randn(1, 3, 64, 50))]
        [(1, 96, 16, 13), (1, 192, 8, 7), (1, 384, 4, 4), (1, 768, 2, 2)]
    """

    arch_settings: Dict[str, dict] = {
        'tiny': dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                     mlp_ratio=4.),
        'small': dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                      mlp_ratio=4.),
        'base': dict(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                     mlp_ratio=4.),
        'large': dict(embed_dims=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48),
                      mlp_ratio=4.),
    }

    # task -> level-2 depth -> dilations per level (official DiNAT_s configs).
    dilation_presets: Dict[str, Dict[int, List[List[int]]]] = {
        'det': {
            6: [[1, 28], [1, 14], [1, 3, 1, 5, 1, 7], [1, 3]],
            18: [[1, 28], [1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3]],
        },
        'seg': {
            6: [[1, 16], [1, 8], [1, 2, 1, 3, 1, 4], [1, 2]],
            18: [[1, 16], [1, 8], [1, 2, 1, 3, 1, 4] * 3, [1, 2]],
        },
    }

    def __init__(self,
                 arch: str = 'tiny',
                 embed_dims: Optional[int] = None,
                 depths: Optional[Sequence[int]] = None,
                 num_heads: Optional[Sequence[int]] = None,
                 mlp_ratio: Optional[float] = None,
                 kernel_size: int = 7,
                 dilations: Optional[Sequence[Sequence[int]]] = None,
                 task: str = 'det',
                 patch_size: int = 4,
                 drop_path_rate: float = 0.2,
                 attn_drop_rate: float = 0.,
                 drop_rate: float = 0.,
                 qkv_bias: bool = True,
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        dilations = self._task_dilations(task, dilations, arch, depths)
        super().__init__(arch, embed_dims=embed_dims, depths=depths, num_heads=num_heads,
                         mlp_ratio=mlp_ratio, kernel_size=kernel_size, dilations=dilations,
                         out_indices=out_indices, frozen_stages=frozen_stages,
                         norm_eval=norm_eval, with_cp=with_cp, init_cfg=init_cfg)
        self.task = task
        self.patch_embed = PatchEmbed(patch_size, in_channels, self.embed_dims, nn.LayerNorm)
        self.pos_drop = nn.Dropout(p=drop_rate)
        self.layers = self._build_levels(DiNATsBlock, drop_path_rate, qkv_bias=qkv_bias,
                                         drop=drop_rate, attn_drop=attn_drop_rate)
        self._build_outputs()

    @property
    def levels(self) -> nn.ModuleList:
        """The levels under NAT's name (``layers`` holds them, as in the official DiNAT_s), which
        :class:`~nat_mm.models.NABackbone`'s freezing and ``forward`` use."""
        return self.layers
