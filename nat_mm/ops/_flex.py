"""Neighborhood attention through torch's FlexAttention, over two token orders.

NAT's window (docs/design.md section 3) is a FlexAttention ``mask_mod`` and its relative positional
bias a ``score_mod``, over the tokens of a ``[B, H, W, heads, D]`` map put in one of two orders:

- ``row_major``: token ``y * W + x`` (a plain reshape). A 128-token block is a strip of one or two
  rows, so its queries' windows reach into about ``kh + 1`` rows of key blocks.
- ``tiled``: each block of ``th * tw`` (= 128) tokens is one ``th x tw`` tile of the map. With
  dilation each residue group ``(y % dh, x % dw)`` is its own sub-map (a query's keys all lie in
  its group), tiled on its own, groups one after another (group-major), so a tile's keys stay in a
  few neighbouring tiles. Each group's sub-map is padded up to whole tiles with masked-out tokens
  (zeros in, outputs dropped), so the sequence can be longer than ``H * W``.

The window maths is not restated here: per-axis tables are derived from
``_torch_impl.window_indices`` (the window start of every query and the rpb index of its first
key), and the BlockMask is built by counting the (query, key) pairs of those windows per
(query block, key block), without evaluating the ``[T, T]`` mask.

Run compiled (``compile=True``: ``torch.compile(flex_attention)``) on CUDA, where it has a
backward, and on the CPU, where torch 2.14's compiled kernel is forward only. ``compile=False``
runs torch's eager (math) FlexAttention, which materialises every score (tests only). Its public
wrapper refuses CPU tensors that require grad ("FlexAttention does not support backward on CPU")
although the eager implementation behind it has a backward; so for CPU autograd this module calls
that implementation (the ``flex_attention`` higher-order op, traced by ``torch.compile`` with the
eager backend, exactly as the public wrapper does) past the wrapper's device check: see
:func:`_eager_flex_attention`. Importing nat_mm.ops does not import this module.
"""
import math
from typing import Optional, Tuple

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from ._torch_impl import window_indices

BLOCK_SIZE = 128  # FlexAttention's default sparse block size (tokens per block, both axes)
ORDERS = ('row_major', 'tiled')
TILE = (8, 16)  # (th, tw): the tiled order's tile; a block is one tile, th * tw tokens

_TOKEN_ORDERS = {}  # (H, W, order, [dilation, tile: tiled only], device) -> TokenOrder
_BLOCK_MASKS = {}  # (H, W, kernel_size, dilation, order, tile, device) -> BlockMask
_AXIS_TABLES = {}  # (L, k, d, device) -> (window start [L + 1], its rpb index [L + 1])
_COMPILED = []  # the torch.compile(flex_attention), made on first use


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _block_size(order, tile):
    """Tokens per BlockMask block: 128 for row-major, one tile (``th * tw``) for tiled."""
    if order not in ORDERS:
        raise ValueError(f'na2d_flex: order must be one of {ORDERS}, got {order!r}')
    return BLOCK_SIZE if order == 'row_major' else tile[0] * tile[1]


class TokenOrder:
    """Where each map position sits in the token sequence, and back.

    Attributes:
        H (int), W (int): The map size.
        order (str): ``'row_major'`` or ``'tiled'``.
        tokens (int): Sequence length T (``H * W`` plus the tiled order's padding).
        token_of (Tensor): ``[H, W]`` int64, the token of each map position.
        tok_y (Tensor | None), tok_x (Tensor | None): ``[T]`` int64, the map row and column of
            each token (the tiled order; padding tokens hold the sentinel ``(H, W)``). None for
            the row-major order, whose coordinates are ``idx // W`` and ``idx % W``.
    """

    def __init__(self, H, W, order, token_of, tokens):
        self.H, self.W, self.order, self.tokens = H, W, order, tokens
        self.token_of = token_of
        self.tok_y = self.tok_x = None
        if order == 'tiled':
            flat = token_of.flatten()
            pos = torch.arange(H * W, device=token_of.device)
            self.tok_y = torch.full((tokens,), H, dtype=torch.long, device=token_of.device)
            self.tok_x = torch.full((tokens,), W, dtype=torch.long, device=token_of.device)
            self.tok_y[flat], self.tok_x[flat] = pos // W, pos % W

    def coords(self, idx):
        """(row, column) of token indices ``idx`` (any shape); padding and any index past the
        map map to the sentinel row ``H`` (the window tables make it match nothing)."""
        if self.tok_y is None:
            idx = torch.clamp(idx, max=self.H * self.W)
            return idx // self.W, idx % self.W
        return self.tok_y[idx], self.tok_x[idx]

    def permute(self, x):
        """``[B, H, W, heads, D]`` -> ``[B, heads, T, D]`` (a view for row-major, else a copy
        with zero padding tokens)."""
        B, H, W, heads, D = x.shape
        flat = x.reshape(B, H * W, heads, D)
        if self.tok_y is not None:
            flat = flat.new_zeros(B, self.tokens, heads, D).index_copy(
                1, self.token_of.flatten(), flat)
        return flat.transpose(1, 2)

    def unpermute(self, x):
        """``[B, heads, T, D]`` -> ``[B, H, W, heads, D]`` (padding tokens dropped)."""
        B, heads, _, D = x.shape
        x = x.transpose(1, 2)
        if self.tok_y is not None:
            x = x.index_select(1, self.token_of.flatten())
        return x.reshape(B, self.H, self.W, heads, D)


def _tiled_axis(length, dilation, tile):
    """Per position of one axis: where its residue group starts on the padded axis, the group's
    padded length, the position's index in its group; and the padded axis length. Group c holds
    positions c, c + d, ...; its length is padded up to a multiple of ``tile``."""
    pos = torch.arange(length)
    group, index = pos % dilation, pos // dilation
    group_len = (length - torch.arange(dilation) + dilation - 1) // dilation
    padded = (group_len + tile - 1) // tile * tile
    offset = torch.cumsum(padded, 0) - padded
    return offset[group], padded[group], index, int(padded.sum())


def token_order(H, W, dilation=1, order='tiled', tile=TILE, device='cpu'):
    """The (cached) :class:`TokenOrder` of an ``H x W`` map.

    Args:
        H (int): Map height.
        W (int): Map width.
        dilation (int | tuple[int, int]): ``(dh, dw)``; an int means ``(d, d)``. Only the tiled
            order depends on it. Defaults to 1.
        order (str): ``'row_major'`` or ``'tiled'``. Defaults to ``'tiled'``.
        tile (tuple[int, int]): ``(th, tw)`` of the tiled order. Defaults to ``(8, 16)``.
        device (torch.device | str): Where the index tensors live. Defaults to ``'cpu'``.

    Returns:
        TokenOrder: its ``token_of`` is, for the tiled order, ``group offset + tile offset +
        row-major position in the tile``, groups and tiles in row-major order.
    """
    dilation, tile = _pair(dilation), _pair(tile)
    _block_size(order, tile)  # checks the order
    key = (H, W, order) + ((dilation, tile) if order == 'tiled' else ()) + (str(device),)
    if key not in _TOKEN_ORDERS:
        _new_token_order(key, H, W, dilation, order, tile, device)
    return _TOKEN_ORDERS[key]


# The cache misses run outside any torch.compile graph (a graph break there; under
# fullgraph=True the shape's entries must be made before, e.g. by one eager call). A hit is a
# dict lookup that dynamo resolves while tracing, so the cached tensors become graph constants.
_COLD_CACHE = ('nat_mm flex: the token order and BlockMask of this map shape are built once, '
               'eagerly; make one eager call with this shape before torch.compile(fullgraph=True)')


@torch.compiler.disable(reason=_COLD_CACHE)
def _new_token_order(key, H, W, dilation, order, tile, device):
    if order == 'row_major':
        token_of, tokens = torch.arange(H * W).view(H, W), H * W
    else:
        (th, tw), (dh, dw) = tile, dilation
        oy, ny, py, total_y = _tiled_axis(H, dh, th)  # ny: padded rows of the row's group
        ox, nx, px, total_x = _tiled_axis(W, dw, tw)
        group_start = oy[:, None] * total_x + ny[:, None] * ox[None, :]  # groups row-major
        tile_index = (py // th)[:, None] * (nx // tw)[None, :] + (px // tw)[None, :]
        in_tile = (py % th)[:, None] * tw + (px % tw)[None, :]
        token_of, tokens = group_start + tile_index * (th * tw) + in_tile, total_y * total_x
    _TOKEN_ORDERS[key] = TokenOrder(H, W, order, token_of.to(device), tokens)


def _axis_tables(length, kernel, dilation, device):
    """``(start [L + 1], bias0 [L + 1])`` int64 of one axis (cached), from ``window_indices``:
    the position of each query's first key and that key's rpb index; entry L is the sentinel (a
    start past every key, so no key matches it)."""
    key = (length, kernel, dilation, str(device))
    if key not in _AXIS_TABLES:
        _new_axis_tables(key, length, kernel, dilation, device)
    return _AXIS_TABLES[key]


@torch.compiler.disable(reason=_COLD_CACHE)
def _new_axis_tables(key, length, kernel, dilation, device):
    keys, rpb_idx = window_indices(length, kernel, dilation, device)
    start = torch.cat([keys[:, 0], keys.new_tensor([length + kernel * dilation])])
    bias0 = torch.cat([rpb_idx[:, 0], rpb_idx.new_zeros(1)])
    _AXIS_TABLES[key] = start, bias0


def _axis_offset(key_pos, query_pos, start):
    """How far (in map positions, on one axis) a key lies past its query's window start."""
    return key_pos - start[query_pos]


def neighborhood_mask_mod(tokens, kernel_size, dilation=1):
    """``mask_mod(b, h, q_idx, kv_idx)``: whether key ``kv_idx`` is in query ``q_idx``'s window.

    Per axis the key must be ``start + t * d`` for some ``t < k``, ``start`` being the query's
    window start (``window_indices``); padding tokens match nothing.

    Args:
        tokens (TokenOrder): The token order of the map.
        kernel_size (int | tuple[int, int]): Odd window size; an int means (k, k).
        dilation (int | tuple[int, int]): Dilation; an int means (d, d). Defaults to 1.
    """
    (kh, kw), (dh, dw) = _pair(kernel_size), _pair(dilation)
    device = tokens.token_of.device
    start_y, _ = _axis_tables(tokens.H, kh, dh, device)
    start_x, _ = _axis_tables(tokens.W, kw, dw, device)

    def mask_mod(b, h, q_idx, kv_idx):
        qy, qx = tokens.coords(q_idx)
        ky, kx = tokens.coords(kv_idx)
        oy, ox = _axis_offset(ky, qy, start_y), _axis_offset(kx, qx, start_x)
        return ((oy >= 0) & (oy <= (kh - 1) * dh) & (oy % dh == 0)
                & (ox >= 0) & (ox <= (kw - 1) * dw) & (ox % dw == 0))

    return mask_mod


def rpb_score_mod(tokens, kernel_size, dilation, rpb):
    """``score_mod``: the scaled score plus ``rpb[h, bi, bj]`` (rpb ``[heads, 2kh-1, 2kw-1]``).

    The index is the first window key's rpb index plus the key's window slot, per axis.
    FlexAttention also evaluates score_mod on the masked-out pairs of a partly masked block,
    where the index runs past the table: it is clamped into it (those scores are dropped).
    """
    (kh, kw), (dh, dw) = _pair(kernel_size), _pair(dilation)
    device = tokens.token_of.device
    start_y, bias0_y = _axis_tables(tokens.H, kh, dh, device)
    start_x, bias0_x = _axis_tables(tokens.W, kw, dw, device)

    def score_mod(score, b, h, q_idx, kv_idx):
        qy, qx = tokens.coords(q_idx)
        ky, kx = tokens.coords(kv_idx)
        bi = bias0_y[qy] + _axis_offset(ky, qy, start_y) // dh
        bj = bias0_x[qx] + _axis_offset(kx, qx, start_x) // dw
        return score + rpb[h, torch.clamp(bi, 0, 2 * kh - 2), torch.clamp(bj, 0, 2 * kw - 2)]

    return score_mod


def _dense_to_kv_blocks(dense):
    """``[nq, nkv]`` bool -> (num_blocks ``[1, 1, nq]``, indices ``[1, 1, nq, nkv]``), int32,
    the set blocks of each row first, in ascending order (FlexAttention's sparse layout)."""
    num = dense.sum(-1, dtype=torch.int32)
    order = torch.argsort((~dense).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return num[None, None], order[None, None]


def _pair_counts(tokens, kernel_size, dilation, block_size):
    """``[nb, nb]`` int64: how many (query, key) window pairs fall in each (query block, key
    block), from ``window_indices`` (``H * W * kh * kw`` pairs, no ``[T, T]`` mask)."""
    (kh, kw), (dh, dw) = _pair(kernel_size), _pair(dilation)
    device = tokens.token_of.device
    rows, _ = window_indices(tokens.H, kh, dh, device)  # [H, kh]
    cols, _ = window_indices(tokens.W, kw, dw, device)  # [W, kw]
    nb = math.ceil(tokens.tokens / block_size)
    # key tokens [H, W, kh, kw] of each query's window
    key_tok = tokens.token_of[rows[:, None, :, None], cols[None, :, None, :]]
    pair = (tokens.token_of[:, :, None, None] // block_size) * nb + key_tok // block_size
    return torch.bincount(pair.flatten(), minlength=nb * nb).view(nb, nb)


def neighborhood_block_mask(H, W, kernel_size, dilation=1, order='tiled', tile=TILE,
                            device='cpu', block_size=None):
    """The BlockMask of :func:`neighborhood_mask_mod` for one map and token order.

    A (query block, key block) is full when all its ``block_size ** 2`` pairs are window pairs
    (padding tokens and the tokens past the end of the last block are never in a window), partial
    when some are, empty otherwise: exactly what ``create_block_mask`` finds from the mask_mod,
    without materialising it (3.7e9 entries for NAT-Tiny's level 1 at 800x1216).

    Args:
        H (int): Map height.
        W (int): Map width.
        kernel_size (int | tuple[int, int]): Odd window size; an int means (k, k).
        dilation (int | tuple[int, int]): Dilation; an int means (d, d). Defaults to 1.
        order (str): ``'row_major'`` or ``'tiled'``. Defaults to ``'tiled'``.
        tile (tuple[int, int]): The tiled order's ``(th, tw)``. Defaults to ``(8, 16)``.
        device (torch.device | str): Defaults to ``'cpu'``.
        block_size (int, optional): Tokens per block on both axes, for the row-major order
            (the tiled order's block is one tile). Defaults to 128.

    Returns:
        BlockMask: for one batch element and one head (broadcast over both), over
        ``token_order(...).tokens`` tokens.
    """
    tile = _pair(tile)
    block_size = block_size if order == 'row_major' and block_size else _block_size(order, tile)
    tokens = token_order(H, W, dilation, order, tile, device)
    counts = _pair_counts(tokens, kernel_size, dilation, block_size)
    full = counts == block_size * block_size
    partial = (counts > 0) & ~full
    return BlockMask.from_kv_blocks(
        *_dense_to_kv_blocks(partial), *_dense_to_kv_blocks(full), BLOCK_SIZE=block_size,
        mask_mod=neighborhood_mask_mod(tokens, kernel_size, dilation),
        seq_lengths=(tokens.tokens, tokens.tokens))


def cached_block_mask(H, W, kernel_size, dilation=1, order='tiled', tile=TILE, device='cpu'):
    """:func:`neighborhood_block_mask`, built once per (shape, kernel, dilation, order, tile,
    device)."""
    key = (H, W, _pair(kernel_size), _pair(dilation), order, _pair(tile), str(device))
    if key not in _BLOCK_MASKS:
        _new_block_mask(key, H, W, kernel_size, dilation, order, tile, device)
    return _BLOCK_MASKS[key]


@torch.compiler.disable(reason=_COLD_CACHE)
def _new_block_mask(key, *args):
    _BLOCK_MASKS[key] = neighborhood_block_mask(*args)


def block_stats(block_mask):
    """Key blocks visited per query block of a BlockMask (one batch element and head).

    Returns:
        dict: ``q_blocks``; ``partial_mean``/``partial_max`` (blocks where the mask_mod is
        applied), ``full_mean``/``full_max`` (no mask_mod), ``visited_mean``/``visited_max``
        (both).
    """
    partial = block_mask.kv_num_blocks[0, 0].double()
    full = (block_mask.full_kv_num_blocks[0, 0].double()
            if block_mask.full_kv_num_blocks is not None else torch.zeros_like(partial))
    visited = partial + full
    return dict(q_blocks=partial.numel(),
                partial_mean=partial.mean().item(), partial_max=int(partial.max()),
                full_mean=full.mean().item(), full_max=int(full.max()),
                visited_mean=visited.mean().item(), visited_max=int(visited.max()))


def _eager_flex_attention(query, key, value, score_mod, block_mask, scale):
    """torch's eager FlexAttention, with a backward on the CPU too.

    Where no input requires grad, or off the CPU, this is ``flex_attention`` itself. On the CPU
    with gradients, ``flex_attention`` raises NotImplementedError ("FlexAttention does not
    support backward on CPU") before running anything, although the eager implementation it
    would run (the ``flex_attention`` higher-order op: a math forward over all scores and its
    math backward, ``sdpa_dense_backward``, which also differentiates tensors captured by
    score_mod) works there: this calls that op the way the wrapper does (``torch.compile`` with
    the eager backend, ``fullgraph=True``), only past the device check. It relies on torch
    internals (checked with torch 2.14) and raises NotImplementedError where they differ.
    """
    needs_grad = query.requires_grad or key.requires_grad or value.requires_grad
    if query.device.type != 'cpu' or not needs_grad:
        return flex_attention(query, key, value, score_mod=score_mod, block_mask=block_mask,
                              scale=scale)
    try:
        from torch._higher_order_ops.flex_attention import flex_attention as flex_hop
        from torch._higher_order_ops.utils import setup_compilation_env
        from torch.nn.attention.flex_attention import _apply_kernel_options, _identity
    except ImportError as error:
        raise NotImplementedError(
            'na2d_flex: eager FlexAttention with a CPU backward needs the torch 2.14 internals '
            f'torch._higher_order_ops.flex_attention ({error})') from error
    options = _apply_kernel_options(query, key, value, False, None)

    def run_hop(*args):
        return flex_hop(*args)

    with setup_compilation_env() as backend:
        out, _, _ = torch.compile(run_hop, backend=backend, fullgraph=True)(
            query, key, value, score_mod or _identity, block_mask.as_tuple(),
            query.shape[-1] ** -0.5 if scale is None else scale, options)
    return out


def _compiled_flex_attention():
    if not _COMPILED:
        import torch._dynamo

        # Every map shape, dtype and mode is its own graph (dynamic=False): allow them all.
        for name in ('recompile_limit', 'cache_size_limit'):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name),
                                                        256))
        _COMPILED.append(torch.compile(flex_attention, dynamic=False))
    return _COMPILED[0]


class FlexNA:
    """``na2d`` through FlexAttention in one token order.

    :meth:`block_mask` builds the BlockMask of a map shape once (cached; call it before timing,
    and make the first compiled call, which compiles, untimed too). :meth:`__call__` converts the
    layout both ways, heads-last ``[B, H, W, heads, D]`` to FlexAttention's ``[B, heads, T, D]``
    (row-major: a view; tiled: a copy in tile order) and the output back (a copy): those
    conversions are part of what it costs.

    Args:
        order (str): ``'row_major'`` (token ``y * W + x``) or ``'tiled'`` (each 128-token block
            one ``tile`` of a dilation group's sub-map). Defaults to ``'tiled'``.
        compile (bool): Run ``torch.compile(flex_attention)``; False runs the eager math
            FlexAttention (it materialises every score: tests only). Defaults to True.
        tile (tuple[int, int]): ``(th, tw)`` of the tiled order; its blocks are one tile,
            ``th * tw`` tokens (FlexAttention's default, 128, on a GPU). Defaults to ``(8, 16)``.
    """

    def __init__(self, order='tiled', compile=True, tile=TILE):
        _block_size(order, tile)  # checks the order
        self.order, self.compile, self.tile = order, compile, _pair(tile)

    def block_mask(self, H, W, kernel_size, dilation=1, device='cpu'):
        """The (cached) BlockMask of an ``H x W`` map."""
        return cached_block_mask(H, W, kernel_size, dilation, self.order, self.tile, device)

    def __call__(self, q, k, v, kernel_size, dilation=1, rpb=None, scale=None):
        """Neighborhood attention of ``[B, H, W, heads, D]`` q, k, v; see :func:`na2d_flex`."""
        _, H, W, _, _ = q.shape
        tokens = token_order(H, W, dilation, self.order, self.tile, q.device)
        block_mask = self.block_mask(H, W, kernel_size, dilation, q.device)
        # A new score_mod closure per call: dynamo guards on its code, not its identity, so the
        # compiled graph is reused (and rpb is a graph input, differentiated by FlexAttention).
        score_mod = None if rpb is None else rpb_score_mod(tokens, kernel_size, dilation, rpb)
        # [B, H, W, heads, D] -> [B, heads, T, D]
        flat = [tokens.permute(t) for t in (q, k, v)]
        if self.compile:
            out = _compiled_flex_attention()(*flat, score_mod=score_mod, block_mask=block_mask,
                                             scale=scale)
        else:
            out = _eager_flex_attention(*flat, score_mod, block_mask, scale)
        # [B, heads, T, D] -> [B, H, W, heads, D]
        return tokens.unpermute(out)


def na2d_flex(query: torch.Tensor,
              key: torch.Tensor,
              value: torch.Tensor,
              kernel_size: Tuple[int, int],
              dilation: Tuple[int, int] = 1,
              rpb: Optional[torch.Tensor] = None,
              scale: Optional[float] = None,
              order: str = 'tiled',
              compile: bool = True) -> torch.Tensor:
    """Fused neighborhood attention through FlexAttention (the ``NAT_MM_CUDA_KERNEL=flex``
    backend). Arguments are trusted: ``nat_mm.ops.na2d`` validates them.

    Differentiable with respect to query, key, value and rpb (compiled: on CUDA; eager: on CUDA
    and the CPU). The BlockMask is built once per (shape, kernel, dilation, order, device), on
    the first call with that shape, outside any torch.compile graph: inside one that call is a
    graph break, so under ``fullgraph=True`` make one eager call with the shape first; later
    traces read the cached BlockMask as a constant.

    Args:
        query (Tensor): ``[B, H, W, heads, D]``.
        key (Tensor): ``[B, H, W, heads, D]``.
        value (Tensor): ``[B, H, W, heads, D]``.
        kernel_size (tuple[int, int]): Odd ``(kh, kw)``; an int means ``(k, k)``.
        dilation (tuple[int, int]): ``(dh, dw)``; an int means ``(d, d)``. Defaults to 1.
        rpb (Tensor, optional): ``[heads, 2*kh-1, 2*kw-1]``. Defaults to None.
        scale (float, optional): Multiplies ``q.k``. Defaults to ``D ** -0.5``.
        order (str): ``'tiled'`` or ``'row_major'`` token order. Defaults to ``'tiled'``.
        compile (bool): Compiled FlexAttention, or False for the eager math one (every score
            materialised). Defaults to True.

    Returns:
        Tensor: ``[B, H, W, heads, D]``.
    """
    return FlexNA(order, compile)(query, key, value, kernel_size, dilation, rpb, scale)
