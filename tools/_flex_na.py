"""Neighborhood attention written with torch's FlexAttention: the peer a torch user would write.

NAT's window (DESIGN.md section 3) as a FlexAttention ``mask_mod`` and its relative positional
bias as a ``score_mod``, over the tokens of a ``[B, H, W, heads, D]`` map flattened row-major
(token ``y * W + x``). Per axis of length L, kernel k, dilation d, query position i:
residue group ``c = i % d``, group length ``n_c = ceil((L - c) / d)``, window start
``s = clamp(i // d - k // 2, 0, n_c - k)``; the keys are ``(s + t) * d + c`` for t < k, and the
bias is ``rpb[h, (key_y - query_y) // d + kh - 1, (key_x - query_x) // d + kw - 1]``.

Used by tools/benchmark_op.py (backend ``flex``) and checked against the float64 oracle in
tests/test_benchmark_op.py. FlexAttention runs compiled (``torch.compile(flex_attention)``) on
CUDA and on the CPU; torch 2.14's compiled CPU kernel is forward only ("FlexAttention does not
support backward on CPU").
"""
import math

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

BLOCK_SIZE = 128  # FlexAttention's default sparse block size (tokens per block, both axes)


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _axis_window(i, length, kernel, dilation):
    """(residue group, window start in group steps) of query positions ``i`` on one axis."""
    c = i % dilation
    n_c = (length - c + dilation - 1) // dilation
    start = torch.clamp(i // dilation - kernel // 2, min=0)
    return c, torch.minimum(start, n_c - kernel)


def neighborhood_mask_mod(H, W, kernel_size, dilation=1):
    """``mask_mod(b, h, q_idx, kv_idx)``: whether key ``kv_idx`` is in query ``q_idx``'s window.

    Args:
        H (int): Map height.
        W (int): Map width (tokens are ``y * W + x``).
        kernel_size (int | tuple[int, int]): Odd window size; an int means (k, k).
        dilation (int | tuple[int, int]): Dilation; an int means (d, d). Defaults to 1.
    """
    (kh, kw), (dh, dw) = _pair(kernel_size), _pair(dilation)

    def mask_mod(b, h, q_idx, kv_idx):
        qy, qx = q_idx // W, q_idx % W
        ky, kx = kv_idx // W, kv_idx % W
        cy, sy = _axis_window(qy, H, kh, dh)
        cx, sx = _axis_window(qx, W, kw, dw)
        py, px = ky // dh, kx // dw
        return ((ky % dh == cy) & (py >= sy) & (py < sy + kh)
                & (kx % dw == cx) & (px >= sx) & (px < sx + kw))

    return mask_mod


def rpb_score_mod(W, kernel_size, dilation, rpb):
    """``score_mod``: the scaled score plus ``rpb[h, dy, dx]`` (rpb is ``[heads, 2kh-1, 2kw-1]``).

    FlexAttention also evaluates score_mod on the masked-out pairs of a partly masked block, where
    the offsets run past the table: the indices are clamped into it (those scores are dropped).
    """
    (kh, kw), (dh, dw) = _pair(kernel_size), _pair(dilation)

    def score_mod(score, b, h, q_idx, kv_idx):
        dy = (kv_idx // W - q_idx // W) // dh + (kh - 1)
        dx = (kv_idx % W - q_idx % W) // dw + (kw - 1)
        return score + rpb[h, torch.clamp(dy, 0, 2 * kh - 2), torch.clamp(dx, 0, 2 * kw - 2)]

    return score_mod


def _dense_to_kv_blocks(dense):
    """``[nq, nkv]`` bool -> (num_blocks ``[1, 1, nq]``, indices ``[1, 1, nq, nkv]``), int32,
    the set blocks of each row first, in ascending order (FlexAttention's sparse layout)."""
    num = dense.sum(-1, dtype=torch.int32)
    order = torch.argsort((~dense).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return num[None, None], order[None, None]


def neighborhood_block_mask(H, W, kernel_size, dilation=1, device='cpu',
                            block_size=BLOCK_SIZE, chunk_elements=2 ** 24):
    """The BlockMask of :func:`neighborhood_mask_mod` for one map, without the full mask.

    ``create_block_mask`` materialises the ``[H*W, H*W]`` mask (3.7e9 entries for NAT-Tiny's
    level 1 at 800x1216); this evaluates the mask_mod on a few query blocks at a time, marks
    each (query block, key block) as empty, partial or full, and builds the BlockMask from that.

    Returns:
        BlockMask: for one batch element and one head (broadcast over both).
    """
    mask_mod = neighborhood_mask_mod(H, W, kernel_size, dilation)
    n = H * W
    nb = math.ceil(n / block_size)
    tokens = torch.arange(nb * block_size, device=device)
    partial = torch.zeros(nb, nb, dtype=torch.bool, device=device)
    full = torch.zeros_like(partial)
    rows = max(1, chunk_elements // (block_size * block_size * nb))  # query blocks per chunk
    for first in range(0, nb, rows):
        last = min(nb, first + rows)
        q = tokens[first * block_size:last * block_size, None]
        kv = tokens[None, :]
        m = mask_mod(None, None, q, kv) & (q < n) & (kv < n)
        m = m.view(last - first, block_size, nb, block_size)
        any_set, all_set = m.any(3).any(1), m.all(3).all(1)
        full[first:last] = all_set
        partial[first:last] = any_set & ~all_set
    return BlockMask.from_kv_blocks(*_dense_to_kv_blocks(partial), *_dense_to_kv_blocks(full),
                                    BLOCK_SIZE=block_size, mask_mod=mask_mod, seq_lengths=(n, n))


class FlexNA:
    """``na2d`` through compiled FlexAttention, for one device.

    :meth:`block_mask` builds the BlockMask of a map shape once (cached; call it before timing,
    and make the first call, which compiles, untimed too). :meth:`__call__` converts the layout
    both ways, heads-last ``[B, H, W, heads, D]`` to FlexAttention's ``[B, heads, H*W, D]`` (a
    view) and the output back (a copy): those conversions are part of what it costs, as for the
    dense SDPA peer.

    Args:
        compile (bool): Run ``torch.compile(flex_attention)``; False runs FlexAttention eagerly
            (it then materialises every score: tests only). Defaults to True.
    """

    def __init__(self, compile=True):
        if compile:
            import torch._dynamo

            # Every map shape, dtype and mode is its own graph (dynamic=False): allow them all.
            for name in ('recompile_limit', 'cache_size_limit'):
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name),
                                                            256))
        self.attention = torch.compile(flex_attention, dynamic=False) if compile else \
            flex_attention
        self.block_masks = {}
        self.score_mods = {}

    def block_mask(self, H, W, kernel_size, dilation=1, device='cpu'):
        """The (cached) BlockMask of an ``H x W`` map."""
        key = (H, W, _pair(kernel_size), _pair(dilation), str(device))
        if key not in self.block_masks:
            self.block_masks[key] = neighborhood_block_mask(H, W, kernel_size, dilation, device)
        return self.block_masks[key]

    def _score_mod(self, W, kernel_size, dilation, rpb):
        if rpb is None:
            return None
        # One closure per (shape, rpb tensor), so compiled graphs are reused call after call.
        key = (W, _pair(kernel_size), _pair(dilation), id(rpb))
        if key not in self.score_mods:
            self.score_mods[key] = (rpb, rpb_score_mod(W, kernel_size, dilation, rpb))
        return self.score_mods[key][1]

    def __call__(self, q, k, v, kernel_size, dilation=1, rpb=None, scale=None):
        B, H, W, heads, D = q.shape
        block_mask = self.block_mask(H, W, kernel_size, dilation, q.device)
        # [B, H, W, heads, D] -> [B, heads, H*W, D] (views)
        flat = [t.reshape(B, H * W, heads, D).transpose(1, 2) for t in (q, k, v)]
        out = self.attention(*flat, score_mod=self._score_mod(W, kernel_size, dilation, rpb),
                             block_mask=block_mask, scale=scale)
        # [B, heads, H*W, D] -> [B, H, W, heads, D]
        return out.transpose(1, 2).reshape(B, H, W, heads, D)
