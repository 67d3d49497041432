"""NATTEN 0.14-0.17's ``NeighborhoodAttention1D`` / ``NeighborhoodAttention2D`` modules.

The constructor is NATTEN 0.17's (``src/natten/na2d.py``: ``dim, num_heads, kernel_size,
dilation=1, is_causal=False, rel_pos_bias=False, qkv_bias=True, qk_scale=None, attn_drop=0.0,
proj_drop=0.0``) plus 0.14's keyword ``bias`` (``src/natten/natten2d.py``, where it took the
place of ``is_causal`` and defaulted to True). The parameters are NATTEN's, so its checkpoints
load strictly: ``qkv.{weight,bias}``, ``rpb`` (``[heads, 2k-1]`` / ``[heads, 2kh-1, 2kw-1]``)
and ``proj.{weight,bias}``. Maps smaller than ``kernel_size * dilation`` are zero-padded at the
bottom/right before the qkv projection and cropped before the output projection, as NATTEN
0.14-0.15 did (0.17 raised instead).
"""
import warnings
from typing import Any, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops import na2d, na2d_av, na2d_qk
from . import _checks

__all__ = ['NeighborhoodAttention1D', 'NeighborhoodAttention2D', 'NeighborhoodAttention3D']


def _resolve_rpb(owner: str, bias: Optional[bool], rel_pos_bias: Optional[bool]) -> bool:
    """Whether the module has an rpb: 0.14's ``bias`` and 0.17's ``rel_pos_bias`` are one switch."""
    if bias is not None and rel_pos_bias is not None and bool(bias) != bool(rel_pos_bias):
        raise ValueError(f'{owner}: bias (NATTEN 0.14) and rel_pos_bias (NATTEN 0.17) are the '
                         f'same switch; got bias={bias!r}, rel_pos_bias={rel_pos_bias!r}')
    if bias is None and rel_pos_bias is None:
        warnings.warn(
            f'{owner}: neither rel_pos_bias (NATTEN 0.17) nor bias (NATTEN 0.14) given; using '
            "0.17's default, no positional bias (NATTEN 0.14-0.15 defaulted to bias=True). Pass "
            'one of them to silence this.', UserWarning, stacklevel=3)
        return False
    return bool(bias if rel_pos_bias is None else rel_pos_bias)


class _NeighborhoodAttention(nn.Module):
    na_dim = 2

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 kernel_size: Any,
                 dilation: Any = 1,
                 is_causal: Any = False,
                 rel_pos_bias: Optional[bool] = None,
                 qkv_bias: bool = True,
                 qk_scale: Optional[float] = None,
                 attn_drop: float = 0.0,
                 proj_drop: float = 0.0,
                 *,
                 bias: Optional[bool] = None) -> None:
        super().__init__()
        owner = type(self).__name__
        _checks.reject_unsupported(owner, is_causal=is_causal)
        for name, value in (('dim', dim), ('num_heads', num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{owner}: {name} must be a positive int, got {name}={value!r}')
        if dim % num_heads:
            raise ValueError(f'{owner}: num_heads must divide dim, got dim={dim}, '
                             f'num_heads={num_heads}')
        self.kernel_size, self.dilation = _checks.kernel_and_dilation(
            owner, kernel_size, dilation, self.na_dim)
        self.is_causal = (False,) * self.na_dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5  # NATTEN's `or`: 0 means the default

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if _resolve_rpb(owner, bias, rel_pos_bias):
            self.rpb = nn.Parameter(
                torch.zeros(num_heads, *(2 * k - 1 for k in self.kernel_size)))
            nn.init.trunc_normal_(self.rpb, std=0.02, mean=0.0, a=-2.0, b=2.0)
        else:
            self.register_parameter('rpb', None)
        self.attn_drop_rate = attn_drop
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _window_2d(self) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        """Kernel and dilation of the 2-D op (1-D runs on a one-row map: ``(1, k)``)."""
        if self.na_dim == 2:
            return self.kernel_size, self.dilation
        return (1, self.kernel_size[0]), (1, self.dilation[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend within each token's neighbourhood.

        Args:
            x (Tensor): ``[B, L, C]`` (1-D) or ``[B, H, W, C]`` (2-D), any map size.

        Returns:
            Tensor: the shape of ``x``.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != self.na_dim + 2:
            layout = '[B, L, C]' if self.na_dim == 1 else '[B, H, W, C]'
            raise ValueError(f'{type(self).__name__} expected a rank-{self.na_dim + 2} input '
                             f'{layout}, got shape {tuple(getattr(x, "shape", ()))}')
        if self.na_dim == 1:
            x = x.unsqueeze(1)  # [B, 1, L, C]
        kernel, dilation = self._window_2d()
        (kh, kw), (dh, dw) = kernel, dilation
        B, H, W, C = x.shape
        pad_b, pad_r = max(0, kh * dh - H), max(0, kw * dw - W)
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r

        # [B, Hp, Wp, 3, heads, D] -> q, k, v heads-last views [B, Hp, Wp, heads, D]
        q, k, v = self.qkv(x).reshape(B, Hp, Wp, 3, self.num_heads, self.head_dim).unbind(3)
        rpb = None if self.rpb is None else self.rpb.to(q.dtype)
        if rpb is not None and self.na_dim == 1:
            rpb = rpb.unsqueeze(1)  # [heads, 2k-1] -> [heads, 1, 2k-1]
        if self.training and self.attn_drop.p > 0:
            attn = na2d_qk(q * self.scale, k, kernel, dilation, rpb=rpb)
            # softmax in at least float32 (fp16/bf16 logits), as NATTEN under autocast
            attn = attn.softmax(dim=-1, dtype=torch.promote_types(attn.dtype, torch.float32))
            attn = self.attn_drop(attn).to(v.dtype)
            x = na2d_av(attn, v, kernel, dilation)
        else:
            x = na2d(q, k, v, kernel, dilation, rpb=rpb, scale=self.scale)
        x = x.reshape(B, Hp, Wp, C)[:, :H, :W]
        if self.na_dim == 1:
            x = x.squeeze(1)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return (f'head_dim={self.head_dim}, num_heads={self.num_heads}, '
                f'kernel_size={self.kernel_size}, dilation={self.dilation}, '
                f'is_causal={self.is_causal}, has_bias={self.rpb is not None}')


class NeighborhoodAttention2D(_NeighborhoodAttention):
    """2-D neighborhood attention over ``[B, H, W, C]`` maps, NATTEN 0.14-0.17 style.

    Args:
        dim (int): Channels ``C``.
        num_heads (int): Attention heads; must divide ``dim``.
        kernel_size (int | tuple[int, int]): Odd window size(s) > 1; an int means ``(k, k)``.
        dilation (int | tuple[int, int], optional): >= 1; None means 1. Defaults to 1.
        is_causal (bool | tuple[bool, bool]): Not supported; must be False. Defaults to False.
        rel_pos_bias (bool, optional): NATTEN 0.17's switch for the relative positional bias
            ``rpb`` ``[heads, 2kh-1, 2kw-1]``. Defaults to None: off, as in 0.17, with a
            warning when ``bias`` is not given either.
        qkv_bias (bool): Bias in the qkv projection. Defaults to True.
        qk_scale (float, optional): Scale of ``q.k``. Defaults to ``head_dim ** -0.5``.
        attn_drop (float): Dropout on the attention weights (applied, unlike NATTEN 0.17's
            fused path). Defaults to 0.
        proj_drop (float): Dropout after the output projection. Defaults to 0.
        bias (bool, optional): NATTEN 0.14's name for ``rel_pos_bias`` (keyword only).
            Defaults to None.

    Raises:
        NattenArgumentError: an even or too small ``kernel_size``, or ``dilation`` < 1.
        NotImplementedError: ``is_causal``.
        ValueError: bad ``dim``/``num_heads``, or ``bias`` and ``rel_pos_bias`` disagreeing.

    Example:
        >>> attn = NeighborhoodAttention2D(dim=64, num_heads=2, kernel_size=7, bias=True)
        >>> attn(torch.randn(1, 5, 9, 64)).shape
        torch.Size([1, 5, 9, 64])
    """

    na_dim = 2


class NeighborhoodAttention1D(_NeighborhoodAttention):
    """1-D neighborhood attention over ``[B, L, C]`` sequences, NATTEN 0.14-0.17 style.

    Runs as the 2-D op on a one-row map. The arguments are those of
    :class:`NeighborhoodAttention2D` with 1-D sizes: ``kernel_size`` and ``dilation`` are an int
    or a 1-tuple, and ``rpb`` is ``[heads, 2k-1]``.

    Example:
        >>> attn = NeighborhoodAttention1D(dim=32, num_heads=2, kernel_size=5, bias=True)
        >>> attn(torch.randn(2, 3, 32)).shape
        torch.Size([2, 3, 32])
    """

    na_dim = 1


class NeighborhoodAttention3D(nn.Module):
    """NATTEN's 3-D module: not supported, constructing it raises ``NotImplementedError``."""

    def __init__(self, *args, **kwargs) -> None:
        raise NotImplementedError('NeighborhoodAttention3D: 3-D neighborhood attention is not '
                                  'supported by nat_mm.compat.natten (2-D and 1-D only)')
