"""The base of the neighborhood-attention backbones (torch and timm only).

:class:`NABackbone` holds what :class:`~nat_mm.models.NAT` (and its child
:class:`~nat_mm.models.DiNAT`) and :class:`~nat_mm.models.DiNAT_s` share: the architecture
presets, the argument checks, the level construction, ``init_weights``, ``train()`` with
``frozen_stages`` / ``norm_eval`` and the forward contract (one NCHW map per ``out_indices``
entry, each through its output norm ``norm{i}``). A subclass brings its stem and its level
class (which holds the downsampler); module names are the subclass's, so official checkpoints
load as they are (docs/design.md sections 5 and 10).
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from .layers import NeighborhoodAttention2D

__all__ = ['NABackbone']


class NABackbone(nn.Module):
    """Base of the NAT-family backbones: presets, checks, freezing and the forward contract.

    The constructor resolves the preset ``arch`` of :attr:`arch_settings` (arguments that are
    None take the preset's value), checks the level layout and the contract arguments, and
    keeps them as attributes; it builds no module. A subclass then builds, in this order (the
    order of the state-dict keys):

    1. ``patch_embed``, a stem mapping ``[B, in_channels, H, W]`` to ``[B, H/4, W/4, C]``,
       and ``pos_drop``;
    2. its levels with :meth:`_build_levels`, stored under its own name: ``levels`` for NAT,
       ``layers`` for DiNAT_s, which also gives them as a ``levels`` property (what
       ``forward`` and the freezing use);
    3. the output norms and the freezing with :meth:`_build_outputs`.

    Each level maps ``[B, H, W, C_i]`` to ``(next level's input, this level's output)`` as
    :class:`~nat_mm.models.NATBlock` does. Subclasses with dilation presets per task fill
    :attr:`dilation_presets` and call :meth:`_task_dilations` before this constructor.

    Args:
        arch (str): Preset in :attr:`arch_settings`.
        embed_dims (int, optional): Channels ``C`` of level 0; level ``i`` has ``C * 2**i``.
            Defaults to None (preset).
        depths (Sequence[int], optional): Layers per level. Defaults to None (preset).
        num_heads (Sequence[int], optional): Heads per level. Defaults to None (preset).
        mlp_ratio (float, optional): MLP width ratio. Defaults to None (preset).
        layer_scale (float, optional): Layer-scale init value; None takes the preset's (none
            when the preset has no ``layer_scale``), and ``layer_scale=0`` switches it off.
            Defaults to None.
        kernel_size (int): Odd neighbourhood size. Defaults to 7.
        dilations (Sequence[Sequence[int]], optional): One list per level with one dilation per
            layer. Defaults to None (no dilation).
        out_indices (Sequence[int] | int): Levels whose outputs are returned; an int means one
            level. Defaults to (0, 1, 2, 3).
        frozen_stages (int): -1 freezes nothing, 0 the stem, ``i >= 1`` the stem, levels
            ``0 .. i-1`` and their output norms (mmdet Swin semantics); frozen parts stay in
            eval mode across ``train()``. Defaults to -1.
        norm_eval (bool): Keep the normalisation layers in eval mode during training.
            Defaults to False.
        with_cp (bool): Activation checkpointing per layer. Defaults to False.
        init_cfg (dict | list[dict], optional): Initialisation config, used by the mmengine
            wrapper in ``nat_mm.mm``; None means the from-scratch init of :meth:`init_weights`.
            Defaults to None.

    Raises:
        ValueError: an unknown ``arch``, per-level lists of the wrong length, ``dilations`` that
            do not match ``depths``, ``out_indices`` or ``frozen_stages`` out of range.
        TypeError: non-integer ``out_indices``, ``frozen_stages`` or ``dilations``.
    """

    # arch -> dict(embed_dims, depths, num_heads, mlp_ratio[, layer_scale])
    arch_settings: Dict[str, dict] = {}
    # task -> level-2 depth -> dilations per level; empty for a backbone without tasks.
    dilation_presets: Dict[str, Dict[int, List[List[int]]]] = {}

    def __init__(self,
                 arch: str,
                 embed_dims: Optional[int] = None,
                 depths: Optional[Sequence[int]] = None,
                 num_heads: Optional[Sequence[int]] = None,
                 mlp_ratio: Optional[float] = None,
                 layer_scale: Optional[float] = None,
                 kernel_size: int = 7,
                 dilations: Optional[Sequence[Sequence[int]]] = None,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__()
        name = type(self).__name__
        preset = self.get_arch_setting(arch)
        embed_dims = preset['embed_dims'] if embed_dims is None else embed_dims
        depths = tuple(preset['depths'] if depths is None else depths)
        num_heads = tuple(preset['num_heads'] if num_heads is None else num_heads)
        if len(depths) != len(num_heads):
            raise ValueError(f'{name}: depths and num_heads need one entry per level, got '
                             f'depths={list(depths)}, num_heads={list(num_heads)}')
        num_levels = len(depths)
        self.arch = arch
        self.embed_dims = embed_dims
        self.depths = depths
        self.num_heads = num_heads
        self.mlp_ratio = preset['mlp_ratio'] if mlp_ratio is None else mlp_ratio
        self.layer_scale = (preset.get('layer_scale') if layer_scale is None else
                            (layer_scale or None))
        self.dilations = self._check_dilations(dilations, depths)
        self.kernel_size = kernel_size
        self.num_levels = num_levels
        self.num_features = [int(embed_dims * 2 ** i) for i in range(num_levels)]
        self.out_indices = self._check_out_indices(out_indices, num_levels)
        self.frozen_stages = self._check_frozen_stages(frozen_stages, num_levels)
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.init_cfg = copy.deepcopy(init_cfg)

    # --- presets and checks ------------------------------------------------------------------

    @classmethod
    def get_arch_setting(cls, arch: str) -> dict:
        """Return a copy of the preset ``arch`` of :attr:`arch_settings`.

        Raises:
            ValueError: an unknown ``arch`` (the message lists the valid ones).
        """
        if arch not in cls.arch_settings:
            raise ValueError(f'{cls.__name__}: unknown arch {arch!r}; valid archs are '
                             f'{sorted(cls.arch_settings)}')
        return dict(cls.arch_settings[arch])

    @classmethod
    def _task_dilations(cls, task: str, dilations: Optional[Sequence[Sequence[int]]],
                        arch: str, depths: Optional[Sequence[int]] = None):
        """Check ``task`` and return ``dilations``, or when it is None the ``task`` preset of
        :attr:`dilation_presets` for ``depths`` (None: the preset ``arch``'s depths).

        Raises:
            ValueError: an unknown ``task``, or ``depths`` without a preset.
        """
        if task not in cls.dilation_presets:
            raise ValueError(f'{cls.__name__}: unknown task {task!r}; valid tasks are '
                             f'{sorted(cls.dilation_presets)}')
        if dilations is not None:
            return dilations
        depths = cls.get_arch_setting(arch)['depths'] if depths is None else depths
        preset = cls.dilation_presets[task].get(depths[2]) if len(depths) == 4 else None
        if preset is None or [len(level) for level in preset] != list(depths):
            raise ValueError(f'{cls.__name__}: no {task!r} dilation preset for depths='
                             f'{list(depths)}; pass dilations explicitly (one list per level, '
                             'one int per block)')
        return copy.deepcopy(preset)

    def _check_dilations(self, dilations, depths) -> List[List[int]]:
        name = type(self).__name__
        if dilations is None:
            return [[1] * d for d in depths]
        if not isinstance(dilations, (list, tuple)) or len(dilations) != len(depths):
            raise ValueError(f'{name}: dilations must hold one list per level '
                             f'({len(depths)} levels, depths={list(depths)}), got {dilations!r}')
        checked = []
        for i, (level, depth) in enumerate(zip(dilations, depths)):
            if not isinstance(level, (list, tuple)) or len(level) != depth:
                raise ValueError(f'{name}: dilations[{i}] must hold one int per block '
                                 f'(depths[{i}]={depth}), got {level!r}')
            for d in level:
                if isinstance(d, bool) or not isinstance(d, int):
                    raise TypeError(f'{name}: dilations must be ints, got {d!r} in '
                                    f'dilations[{i}]={list(level)}')
                if d < 1:
                    raise ValueError(f'{name}: dilations must be >= 1, got {d} in '
                                     f'dilations[{i}]={list(level)}')
            checked.append(list(level))
        return checked

    def _check_out_indices(self, out_indices, num_levels) -> Tuple[int, ...]:
        name = type(self).__name__
        if isinstance(out_indices, int) and not isinstance(out_indices, bool):
            out_indices = (out_indices,)
        if not isinstance(out_indices, (list, tuple)) or not out_indices:
            raise TypeError(f'{name}: out_indices must be a non-empty sequence of ints, '
                            f'got {out_indices!r}')
        for i in out_indices:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f'{name}: out_indices must be ints, got {out_indices!r}')
            if not 0 <= i < num_levels:
                raise ValueError(f'{name}: out_indices must be in range(0, {num_levels}), '
                                 f'got out_indices={tuple(out_indices)}')
        return tuple(sorted(set(out_indices)))

    def _check_frozen_stages(self, frozen_stages, num_levels) -> int:
        name = type(self).__name__
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int):
            raise TypeError(f'{name}: frozen_stages must be an int, got {frozen_stages!r}')
        if not -1 <= frozen_stages <= num_levels:
            raise ValueError(f'{name}: frozen_stages must be in range(-1, {num_levels + 1}), '
                             f'got frozen_stages={frozen_stages}')
        return frozen_stages

    # --- construction ------------------------------------------------------------------------

    def _build_levels(self, level_cls: Type[nn.Module], drop_path_rate: float,
                      **kwargs) -> nn.ModuleList:
        """Build one ``level_cls`` per level with the checked layout.

        Level ``i`` is ``level_cls(dim, depth, num_heads, kernel_size=, dilations=,
        downsample=, mlp_ratio=, drop_path=, norm_layer=, layer_scale=, with_cp=, **kwargs)``
        with a downsampler on all but the last level.

        Args:
            level_cls (type): The level class, e.g. :class:`~nat_mm.models.NATBlock`.
            drop_path_rate (float): Stochastic depth, increasing linearly from 0 (first layer)
                to this value (last layer) over all levels.
            **kwargs: Further arguments of every level (``qkv_bias``, ``drop``, ...).

        Returns:
            nn.ModuleList: The levels.
        """
        # on the CPU even under `with torch.device('meta')` (parameter counts without memory)
        dpr = torch.linspace(0, drop_path_rate, sum(self.depths), device='cpu').tolist()
        levels = nn.ModuleList()
        for i, depth in enumerate(self.depths):
            start = sum(self.depths[:i])
            levels.append(level_cls(
                self.num_features[i], depth, self.num_heads[i], kernel_size=self.kernel_size,
                dilations=self.dilations[i], downsample=i < self.num_levels - 1,
                mlp_ratio=self.mlp_ratio, drop_path=dpr[start:start + depth],
                norm_layer=nn.LayerNorm, layer_scale=self.layer_scale, with_cp=self.with_cp,
                **kwargs))
        return levels

    def _build_outputs(self) -> None:
        """Add the output norms ``norm{i}`` (``i`` in ``out_indices``) and freeze
        ``frozen_stages``: the last step of a subclass's constructor."""
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(self.num_features[i]))
        self._freeze_stages()

    # --- weights and modes -------------------------------------------------------------------

    def init_weights(self) -> None:
        """Initialise from scratch: trunc_normal(std=0.02) Linear weights and zero biases,
        LayerNorm ones/zeros, rpb trunc_normal(std=0.02), layer scales to their init value.

        Convolutions keep PyTorch's default init, as in the official models. Loading a
        pretrained checkpoint (``init_cfg``) is handled by the mmengine wrapper in ``nat_mm.mm``.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, NeighborhoodAttention2D):
                trunc_normal_(m.rpb, std=.02)

    def _freeze_stages(self) -> None:
        """Put the frozen stem, levels and output norms in eval mode without gradients."""
        if self.frozen_stages >= 0:
            self.patch_embed.eval()
            self.pos_drop.eval()
            for p in self.patch_embed.parameters():
                p.requires_grad = False
        for i in range(1, self.frozen_stages + 1):
            frozen = [self.levels[i - 1]]
            if i - 1 in self.out_indices:
                frozen.append(getattr(self, f'norm{i - 1}'))
            for m in frozen:
                m.eval()
                for p in m.parameters():
                    p.requires_grad = False

    def train(self, mode: bool = True) -> 'NABackbone':
        """Set the training mode, keeping frozen stages (and norms with ``norm_eval``) in eval.

        Args:
            mode (bool): Training (True) or evaluation (False) mode. Defaults to True.

        Returns:
            NABackbone: ``self``.
        """
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
                    m.eval()
        return self

    # --- forward -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Compute the multi-level features.

        Args:
            x (Tensor): Images ``[B, in_channels, H, W]``, any ``H, W >= 1``.

        Returns:
            tuple[Tensor]: For each ``i`` in ``out_indices``, a contiguous NCHW map
            ``[B, C * 2**i, ceil(H / 2**(i+2)), ceil(W / 2**(i+2))]``.
        """
        x = self.pos_drop(self.patch_embed(x))  # [B, H/4, W/4, C]
        outs = []
        last = self.out_indices[-1]
        for i, level in enumerate(self.levels):
            x, level_out = level(x)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(level_out)
                outs.append(out.permute(0, 3, 1, 2).contiguous())
            if i == last:
                break
        return tuple(outs)
