"""Neighborhood attention and the NAT transformer layer (torch and timm only).

Both modules work on channels-last maps ``[B, H, W, C]``; parameter names are the official NAT
ones (``qkv``, ``rpb``, ``proj``, ``norm1``, ``mlp.fc1``, ``gamma1``, ...), so official
checkpoints load without renaming.
"""
from typing import Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch.utils.checkpoint import checkpoint

from ..ops import na2d, na2d_av, na2d_qk

__all__ = ['NeighborhoodAttention2D', 'NATLayer']


def _check_positive_int(name: str, value, owner: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{owner}: {name} must be an int, got {value!r}')
    if value < minimum:
        raise ValueError(f'{owner}: {name} must be >= {minimum}, got {name}={value}')
    return value


class NeighborhoodAttention2D(nn.Module):
    """2-D neighborhood attention with relative positional bias (NAT / DiNAT).

    Each query attends to its ``kernel_size x kernel_size`` (dilated) neighbourhood; see
    :func:`nat_mm.ops.na2d` for the exact window rules. Maps smaller than
    ``kernel_size * dilation`` on an axis are zero-padded at the bottom/right before the qkv
    projection and cropped back before the output projection, as the official models (NATTEN 0.14)
    were trained.

    Recording the attention weights: with ``save_attention = True`` (see
    :func:`nat_mm.models.attention.record_attention`) every forward computes the weights
    explicitly, ``softmax(na2d_qk(q * scale, k, rpb=rpb))`` in float32, keeps a detached copy in
    ``attention_weights`` (``[B, Hp, Wp, heads, kh*kw]``, over the padded map ``Hp x Wp``) and
    applies them with ``na2d_av``; the output is the same attention as the fused ``na2d``.

    Args:
        dim (int): Channels ``C`` of the input ``[B, H, W, C]``.
        num_heads (int): Attention heads; must divide ``dim``.
        kernel_size (int): Odd neighbourhood size. Defaults to 7.
        dilation (int): Dilation of the neighbourhood. Defaults to 1.
        qkv_bias (bool): Bias in the qkv projection. Defaults to True.
        qk_scale (float, optional): Scale of ``q.k``. Defaults to ``head_dim ** -0.5``.
        attn_drop (float): Dropout on the attention weights. Defaults to 0.
        proj_drop (float): Dropout after the output projection. Defaults to 0.

    Attributes:
        save_attention (bool): Record the attention weights of each forward. Defaults to False.
        attention_weights (Tensor | None): The weights of the last forward with
            ``save_attention``, ``[B, Hp, Wp, heads, kh*kw]`` float32 (slot ``ki * kw + kj``);
            None otherwise.

    Raises:
        TypeError: ``dim``, ``num_heads``, ``kernel_size`` or ``dilation`` not an int.
        ValueError: ``num_heads`` not dividing ``dim``, an even or < 3 ``kernel_size``, or a
            ``dilation`` < 1.

    Example:
        >>> attn = NeighborhoodAttention2D(dim=64, num_heads=2, kernel_size=7)
        >>> attn(torch.randn(1, 5, 9, 64)).shape
        torch.Size([1, 5, 9, 64])
    """

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 kernel_size: int = 7,
                 dilation: int = 1,
                 qkv_bias: bool = True,
                 qk_scale: Optional[float] = None,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.) -> None:
        super().__init__()
        owner = type(self).__name__
        _check_positive_int('dim', dim, owner)
        _check_positive_int('num_heads', num_heads, owner)
        _check_positive_int('kernel_size', kernel_size, owner, minimum=3)
        _check_positive_int('dilation', dilation, owner)
        if dim % num_heads:
            raise ValueError(f'{owner}: num_heads must divide dim, got dim={dim}, '
                             f'num_heads={num_heads}')
        if kernel_size % 2 == 0:
            raise ValueError(f'{owner}: kernel_size must be odd, got kernel_size={kernel_size}')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale if qk_scale is not None else self.head_dim ** -0.5
        self.kernel_size = kernel_size
        self.dilation = dilation

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        trunc_normal_(self.rpb, std=.02)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.save_attention = False
        self.attention_weights: Optional[torch.Tensor] = None

    @property
    def min_map_size(self) -> int:
        """``kernel_size * dilation``: maps shorter than this on an axis are zero-padded to it
        (bottom/right) before the qkv projection and cropped back after the attention."""
        return self.kernel_size * self.dilation

    def padding(self, height: int, width: int) -> Tuple[int, int]:
        """The ``(bottom, right)`` zero padding :meth:`forward` gives a ``height x width`` map."""
        window = self.min_map_size
        return max(0, window - height), max(0, window - width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend within each query's neighbourhood.

        Args:
            x (Tensor): ``[B, H, W, C]``, any ``H, W >= 1``.

        Returns:
            Tensor: ``[B, H, W, C]``.
        """
        B, H, W, C = x.shape
        pad_b, pad_r = self.padding(H, W)
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r

        # [B, Hp, Wp, 3, heads, D]: q, k, v are strided views with a contiguous last axis.
        q, k, v = self.qkv(x).reshape(B, Hp, Wp, 3, self.num_heads, self.head_dim).unbind(3)
        rpb = self.rpb.to(q.dtype)  # under autocast q is fp16/bf16, the parameter is not
        if self.save_attention or (self.training and self.attn_drop.p > 0):
            attn = na2d_qk(q * self.scale, k, self.kernel_size, self.dilation, rpb=rpb)
            attn = attn.float().softmax(dim=-1)
            if self.save_attention:
                self.attention_weights = attn.detach()
            attn = self.attn_drop(attn).to(v.dtype)
            x = na2d_av(attn, v, self.kernel_size, self.dilation)
        else:
            x = na2d(q, k, v, self.kernel_size, self.dilation, rpb=rpb, scale=self.scale)
        x = x.reshape(B, Hp, Wp, C)
        if pad_b or pad_r:
            x = x[:, :H, :W]
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return (f'num_heads={self.num_heads}, head_dim={self.head_dim}, '
                f'kernel_size={self.kernel_size}, dilation={self.dilation}')


class NATLayer(nn.Module):
    """Pre-norm transformer layer: neighborhood attention then an MLP, with residuals.

    ``x = x + drop_path(gamma1 * attn(norm1(x)))``, then
    ``x = x + drop_path(gamma2 * mlp(norm2(x)))``; the ``gamma`` factors exist only when
    ``layer_scale`` is set.

    Args:
        dim (int): Channels ``C`` of the input ``[B, H, W, C]``.
        num_heads (int): Attention heads.
        kernel_size (int): Odd neighbourhood size. Defaults to 7.
        dilation (int): Neighbourhood dilation. Defaults to 1.
        mlp_ratio (float): Hidden width of the MLP relative to ``dim``. Defaults to 4.
        qkv_bias (bool): Bias in the qkv projection. Defaults to True.
        qk_scale (float, optional): Scale of ``q.k``. Defaults to ``head_dim ** -0.5``.
        drop (float): Dropout after the attention projection and in the MLP. Defaults to 0.
        attn_drop (float): Dropout on the attention weights. Defaults to 0.
        drop_path (float): Stochastic-depth rate. Defaults to 0.
        act_layer (type): MLP activation. Defaults to ``nn.GELU``.
        norm_layer (type): Normalisation layer. Defaults to ``nn.LayerNorm``.
        layer_scale (float, optional): Initial value of the per-channel ``gamma1``/``gamma2``
            scales; None disables them. Defaults to None.
        with_cp (bool): Recompute this layer in the backward pass (activation checkpointing)
            instead of storing its activations. Defaults to False.
    """

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 kernel_size: int = 7,
                 dilation: int = 1,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 qk_scale: Optional[float] = None,
                 drop: float = 0.,
                 attn_drop: float = 0.,
                 drop_path: float = 0.,
                 act_layer: Type[nn.Module] = nn.GELU,
                 norm_layer: Type[nn.Module] = nn.LayerNorm,
                 layer_scale: Optional[float] = None,
                 with_cp: bool = False) -> None:
        super().__init__()
        if layer_scale is not None and (isinstance(layer_scale, bool)
                                        or not isinstance(layer_scale, (int, float))):
            raise TypeError(f'{type(self).__name__}: layer_scale must be a float or None, '
                            f'got {layer_scale!r}')
        self.with_cp = with_cp
        self.norm1 = norm_layer(dim)
        self.attn = NeighborhoodAttention2D(
            dim, num_heads, kernel_size=kernel_size, dilation=dilation, qkv_bias=qkv_bias,
            qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio),
                       act_layer=act_layer, drop=drop)
        self.layer_scale = layer_scale is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attn(self.norm1(x))
        if self.layer_scale:
            x = x + self.drop_path(self.gamma1 * attn)
            return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))
        x = x + self.drop_path(attn)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` ``[B, H, W, C]``; returns the same shape."""
        if self.with_cp and torch.is_grad_enabled() and (
                x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)
