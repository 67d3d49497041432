"""NAT and DiNAT backbones (torch and timm only; registered for mmdet/mmseg in ``nat_mm.mm``).

Module names follow the official NAT/DiNAT code, so official checkpoints load as they are:
``patch_embed.proj.{0,1}``, ``patch_embed.norm``, ``levels.{i}.blocks.{j}.*``,
``levels.{i}.downsample.{reduction,norm}`` and the output norms ``norm{i}``.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .backbone import NABackbone
from .layers import NATLayer

__all__ = ['ConvTokenizer', 'ConvDownsampler', 'NATBlock', 'NAT', 'DiNAT']


class ConvTokenizer(nn.Module):
    """Stem: two 3x3 stride-2 convolutions (stride 4 overall), then a LayerNorm.

    Each conv maps a length ``L`` to ``ceil(L / 2)``, so any input size works.

    Args:
        in_channels (int): Input image channels. Defaults to 3.
        embed_dims (int): Output channels ``C``; the first conv has ``C // 2``. Defaults to 64.
        norm_layer (type): Normalisation layer. Defaults to ``nn.LayerNorm``.
    """

    def __init__(self, in_channels: int = 3, embed_dims: int = 64,
                 norm_layer=nn.LayerNorm) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, embed_dims // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(embed_dims // 2, embed_dims, kernel_size=3, stride=2, padding=1))
        self.norm = norm_layer(embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map an image ``[B, in_channels, H, W]`` to tokens ``[B, ceil(H/4), ceil(W/4), C]``."""
        # Channels-last convs: on the CPU (mkldnn) the stem's training step at 800x1216 took half
        # the time, and the output permuted to [B, H, W, C] is then contiguous.
        x = self.proj(x.contiguous(memory_format=torch.channels_last))
        return self.norm(x.permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """3x3 stride-2 convolution (no bias) doubling the channels, then a LayerNorm.

    Args:
        dim (int): Input channels ``C``; the output has ``2 * C``.
        norm_layer (type): Normalisation layer. Defaults to ``nn.LayerNorm``.
    """

    def __init__(self, dim: int, norm_layer=nn.LayerNorm) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = norm_layer(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, H, W, C]`` to ``[B, ceil(H/2), ceil(W/2), 2C]``."""
        # The permuted view is a channels-last NCHW tensor: the conv runs without a copy.
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class NATBlock(nn.Module):
    """One NAT level: ``depth`` NAT layers, then an optional downsampler.

    Args:
        dim (int): Channels of the level.
        depth (int): Number of layers.
        num_heads (int): Attention heads of every layer.
        kernel_size (int): Neighbourhood size. Defaults to 7.
        dilations (Sequence[int], optional): One dilation per layer; None means all 1.
            Defaults to None.
        downsample (bool): Append a :class:`ConvDownsampler`. Defaults to True.
        mlp_ratio (float): MLP width ratio. Defaults to 4.
        qkv_bias (bool): Bias in the qkv projections. Defaults to True.
        qk_scale (float, optional): Scale of ``q.k``. Defaults to ``head_dim ** -0.5``.
        drop (float): Dropout rate. Defaults to 0.
        attn_drop (float): Attention dropout rate. Defaults to 0.
        drop_path (float | Sequence[float]): Stochastic depth, per layer or shared. Defaults
            to 0.
        norm_layer (type): Normalisation layer. Defaults to ``nn.LayerNorm``.
        layer_scale (float, optional): Layer-scale init value, None for none. Defaults to None.
        with_cp (bool): Activation checkpointing per layer. Defaults to False.
    """

    def __init__(self,
                 dim: int,
                 depth: int,
                 num_heads: int,
                 kernel_size: int = 7,
                 dilations: Optional[Sequence[int]] = None,
                 downsample: bool = True,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 qk_scale: Optional[float] = None,
                 drop: float = 0.,
                 attn_drop: float = 0.,
                 drop_path: Union[float, Sequence[float]] = 0.,
                 norm_layer=nn.LayerNorm,
                 layer_scale: Optional[float] = None,
                 with_cp: bool = False) -> None:
        super().__init__()
        dilations = [1] * depth if dilations is None else list(dilations)
        drop_path = [drop_path] * depth if isinstance(drop_path, (int, float)) else drop_path
        self.blocks = nn.ModuleList([
            NATLayer(dim, num_heads, kernel_size=kernel_size, dilation=dilations[j],
                     mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop,
                     attn_drop=attn_drop, drop_path=drop_path[j], norm_layer=norm_layer,
                     layer_scale=layer_scale, with_cp=with_cp) for j in range(depth)
        ])
        self.downsample = ConvDownsampler(dim, norm_layer) if downsample else None

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return ``(next level's input, this level's output before downsampling)``."""
        for block in self.blocks:
            x = block(x)
        if self.downsample is None:
            return x, x
        return self.downsample(x), x


class NAT(NABackbone):
    """Neighborhood Attention Transformer backbone (Hassani et al., CVPR 2023).

    A conv stem (stride 4) and four levels of NAT layers with conv downsamplers between them.
    Returns one NCHW map per entry of ``out_indices``, with ``C * 2**i`` channels at stride
    ``4 * 2**i`` (``ceil`` of the input size divided by the stride) for any input size; maps
    smaller than ``kernel_size * dilation`` are zero-padded inside the attention. Internally the
    layers work channels-last, ``[B, H, W, C]``. The checks, the freezing, ``init_weights`` and
    ``forward`` are those of :class:`~nat_mm.models.NABackbone`; NAT adds the conv stem
    (:class:`ConvTokenizer`) and its levels (:class:`NATBlock`, with a :class:`ConvDownsampler`).

    Args:
        arch (str): Preset in :attr:`arch_settings` ('mini', 'tiny', 'small', 'base'); the
            arguments below that default to None override it. Defaults to 'tiny'.
        embed_dims (int, optional): Channels ``C`` of level 0. Defaults to None (preset).
        depths (Sequence[int], optional): Layers per level. Defaults to None (preset).
        num_heads (Sequence[int], optional): Heads per level. Defaults to None (preset).
        mlp_ratio (float, optional): MLP width ratio. Defaults to None (preset).
        layer_scale (float, optional): Layer-scale init value; None takes the preset's, and
            ``layer_scale=0`` switches it off. Defaults to None.
        kernel_size (int): Odd neighbourhood size. Defaults to 7.
        dilations (Sequence[Sequence[int]], optional): One list per level with one dilation per
            layer. Defaults to None (no dilation).
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
            ``0 .. i-1`` and their output norms (mmdet Swin semantics); frozen parts stay in
            eval mode across ``train()``. Defaults to -1.
        norm_eval (bool): Keep the normalisation layers in eval mode during training. NAT has
            only LayerNorms, which behave the same in both modes, so this affects only their
            ``training`` flag; kept for parity with other mm backbones. Defaults to False.
        with_cp (bool): Activation checkpointing per layer (saves memory, costs a recompute).
            Defaults to False.
        init_cfg (dict | list[dict], optional): Initialisation config, used by the mmengine
            wrapper in ``nat_mm.mm``; None means the from-scratch init of :meth:`init_weights`.
            Defaults to None.

    Raises:
        ValueError: an unknown ``arch``, per-level lists of the wrong length, ``dilations`` that
            do not match ``depths``, ``out_indices`` or ``frozen_stages`` out of range.
        TypeError: non-integer ``out_indices``, ``frozen_stages`` or ``dilations``.

    Example:
        >>> model = NAT(arch='mini').eval()
        >>> [tuple(o.shape) for o in model(torch.randn(1, 3, 64, 50))]
        [(1, 64, 16, 13), (1, 128, 8, 7), (1, 256, 4, 4), (1, 512, 2, 2)]
    """

    arch_settings: Dict[str, dict] = {
        'mini': dict(embed_dims=64, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16),
                     mlp_ratio=3., layer_scale=None),
        'tiny': dict(embed_dims=64, depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16),
                     mlp_ratio=3., layer_scale=None),
        'small': dict(embed_dims=96, depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24),
                      mlp_ratio=2., layer_scale=1e-5),
        'base': dict(embed_dims=128, depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32),
                     mlp_ratio=2., layer_scale=1e-5),
    }

    def __init__(self,
                 arch: str = 'tiny',
                 embed_dims: Optional[int] = None,
                 depths: Optional[Sequence[int]] = None,
                 num_heads: Optional[Sequence[int]] = None,
                 mlp_ratio: Optional[float] = None,
                 layer_scale: Optional[float] = None,
                 kernel_size: int = 7,
                 dilations: Optional[Sequence[Sequence[int]]] = None,
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
        super().__init__(arch, embed_dims=embed_dims, depths=depths, num_heads=num_heads,
                         mlp_ratio=mlp_ratio, layer_scale=layer_scale, kernel_size=kernel_size,
                         dilations=dilations, out_indices=out_indices,
                         frozen_stages=frozen_stages, norm_eval=norm_eval, with_cp=with_cp,
                         init_cfg=init_cfg)
        self.patch_embed = ConvTokenizer(in_channels, self.embed_dims, nn.LayerNorm)
        self.pos_drop = nn.Dropout(p=drop_rate)
        self.levels = self._build_levels(NATBlock, drop_path_rate, qkv_bias=qkv_bias,
                                         drop=drop_rate, attn_drop=attn_drop_rate)
        self._build_outputs()


class DiNAT(NAT):
    """Dilated Neighborhood Attention Transformer backbone (Hassani & Shi, 2022).

    NAT with a dilation per layer. Takes every argument of :class:`NAT`; ``dilations``
    defaults to the official preset for ``task`` (docs/design.md section 5), which depends on
    the depth of level 2 (6 for 'mini', 18 for the deeper archs).

    Args:
        arch (str): Preset in :attr:`arch_settings` ('mini', 'tiny', 'small', 'base',
            'large'). Defaults to 'tiny'.
        dilations (Sequence[Sequence[int]], optional): One list per level with one dilation per
            layer; None takes the ``task`` preset. Defaults to None.
        task (str): Dilation preset, 'det' (detection, 800-1333 px inputs) or 'seg'
            (segmentation, 512 px crops). Ignored when ``dilations`` is given. Defaults to 'det'.
        **kwargs: The other arguments of :class:`NAT`.

    Raises:
        ValueError: an unknown ``task``, or ``depths`` without a preset and no ``dilations``.
    """

    arch_settings: Dict[str, dict] = {
        **NAT.arch_settings,
        'small': dict(NAT.arch_settings['small'], layer_scale=None),
        'large': dict(embed_dims=192, depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48),
                      mlp_ratio=2., layer_scale=None),
    }

    # task -> level-2 depth -> dilations per level.
    dilation_presets: Dict[str, Dict[int, List[List[int]]]] = {
        'det': {
            6: [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7], [1, 3, 1, 3, 1]],
            18: [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3, 1, 3, 1]],
        },
        'seg': {
            6: [[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4], [1, 2, 1, 2, 1]],
            18: [[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4] * 3, [1, 2, 1, 2, 1]],
        },
    }

    def __init__(self,
                 arch: str = 'tiny',
                 dilations: Optional[Sequence[Sequence[int]]] = None,
                 task: str = 'det',
                 **kwargs) -> None:
        dilations = self._task_dilations(task, dilations, arch, kwargs.get('depths'))
        super().__init__(arch=arch, dilations=dilations, **kwargs)
        self.task = task
