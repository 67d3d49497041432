"""nat_mm.ops._flex: neighborhood attention through FlexAttention, row-major and tiled orders.

Eager FlexAttention (the math implementation, every score materialised) against the float64
oracle, forward and backward (dq, dk, dv, drpb); the BlockMasks against ``create_block_mask`` of
the same mask_mod (the eager path reads only the mask_mod, so the block sparsity is checked
here); the tiled permutation. Maps stay small: eager scores are ``[B, heads, T, T]``.
"""
import math
import os
import subprocess
import sys

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from nat_mm.testing.na_reference import TOL, reference_na2d
from nat_mm.ops import _flex

pytestmark = pytest.mark.filterwarnings('ignore:flex_attention called without torch.compile')

ORDERS = ['row_major', 'tiled']

# (H, W, kernel_size, dilation): non-square, maps not divisible by the 8x16 tile, L not divisible
# by d (unequal residue groups), L == k*d, per-axis kernels and dilations, k from 3 to 13
CASES = [(13, 17, 3, 2),            # groups of 7/6 rows and 9/8 columns
         (9, 14, 3, (3, 2)),        # H == k*d
         (10, 9, (5, 3), (2, 3)),   # H == k*d and W == k*d
         (7, 21, 7, (1, 3)),        # H == k, W == k*d
         (14, 14, 7, 1),
         (24, 30, 13, 1),           # k = 13; 24 rows = 3 tiles, 30 columns pad to 32
         (11, 26, (9, 11), (1, 2)),  # k = 9 and 11; W == k*d + 4
         (19, 13, 5, (3, 2))]       # unequal groups on both axes: 7/6/6 rows, 7/6 columns


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _name(value):
    return 'x'.join(map(str, _pair(value)))


def _ids(cases):
    return [f'{c[0]}x{c[1]}-k{_name(c[2])}-d{_name(c[3])}' for c in cases]


def _inputs(H, W, kernel_size, heads=2, D=8, B=1, dtype=torch.float64):
    kh, kw = _pair(kernel_size)
    tensors = [torch.randn(B, H, W, heads, D, dtype=dtype) for _ in range(3)]
    rpb = torch.randn(heads, 2 * kh - 1, 2 * kw - 1, dtype=dtype)
    return [t.requires_grad_() for t in tensors + [rpb]]


def _check_against_oracle(fn, H, W, kernel_size, dilation, with_rpb, **shape):
    """fn's output and its gradients of q, k, v (and rpb) equal the float64 oracle's."""
    q, k, v, rpb = _inputs(H, W, kernel_size, **shape)
    inputs = [q, k, v] + ([rpb] if with_rpb else [])
    rpb = rpb if with_rpb else None
    out = fn(q, k, v, _pair(kernel_size), _pair(dilation), rpb)
    ref = reference_na2d(q, k, v, _pair(kernel_size), _pair(dilation), rpb)
    grad = torch.randn_like(ref)
    grads = torch.autograd.grad(out, inputs, grad)
    ref_grads = torch.autograd.grad(ref, inputs, grad)
    torch.testing.assert_close(out, ref, **TOL[torch.float64])
    for name, got, want in zip(['dq', 'dk', 'dv', 'drpb'], grads, ref_grads):
        torch.testing.assert_close(got, want, **TOL[torch.float64], msg=name)


@pytest.mark.parametrize('order', ORDERS)
@pytest.mark.parametrize('H, W, kernel_size, dilation', CASES, ids=_ids(CASES))
def test_eager_forward_backward_matches_oracle(H, W, kernel_size, dilation, order):
    """na2d_flex in float64: output, dq, dk, dv and drpb to ~1e-10 (eager, CPU autograd)."""
    def fn(q, k, v, ks, dil, rpb):
        return _flex.na2d_flex(q, k, v, ks, dil, rpb, order=order, compile=False)

    _check_against_oracle(fn, H, W, kernel_size, dilation, with_rpb=True)


NO_RPB = [CASES[0], CASES[2], CASES[7]]


@pytest.mark.parametrize('order', ORDERS)
@pytest.mark.parametrize('H, W, kernel_size, dilation', NO_RPB, ids=_ids(NO_RPB))
def test_eager_without_rpb_matches_oracle(H, W, kernel_size, dilation, order):
    def fn(q, k, v, ks, dil, rpb):
        return _flex.na2d_flex(q, k, v, ks, dil, None, 0.3, order=order, compile=False)

    q, k, v, _ = _inputs(H, W, kernel_size)
    out = fn(q, k, v, _pair(kernel_size), _pair(dilation), None)
    ref = reference_na2d(q, k, v, _pair(kernel_size), _pair(dilation), None, scale=0.3)
    grads = torch.autograd.grad(out.sum(), [q, k, v])
    ref_grads = torch.autograd.grad(ref.sum(), [q, k, v])
    torch.testing.assert_close(out, ref, **TOL[torch.float64])
    for name, got, want in zip(['dq', 'dk', 'dv'], grads, ref_grads):
        torch.testing.assert_close(got, want, **TOL[torch.float64], msg=name)


# Small tiles: every residue group spans several tiles in both axes (tile edges inside groups).
SMALL_TILES = [(13, 17, 3, 2, (2, 8)), (19, 13, 5, (3, 2), (4, 2)), (20, 20, 9, 1, (4, 4))]


@pytest.mark.parametrize('H, W, kernel_size, dilation, tile', SMALL_TILES,
                         ids=[f'{i}-t{_name(c[4])}' for i, c in zip(_ids(SMALL_TILES),
                                                                     SMALL_TILES)])
def test_eager_small_tiles_match_oracle(H, W, kernel_size, dilation, tile):
    fn = _flex.FlexNA('tiled', compile=False, tile=tile)
    _check_against_oracle(fn, H, W, kernel_size, dilation, with_rpb=True)


@pytest.mark.parametrize('order', ORDERS)
def test_eager_batch_and_heads_float32(order):
    """Batch 2 and 3 heads (the BlockMask broadcasts, rpb is per head), float32 forward."""
    q, k, v, rpb = [t.detach() for t in _inputs(20, 9, (5, 3), heads=3, D=16, B=2,
                                                 dtype=torch.float32)]
    out = _flex.FlexNA(order, compile=False)(q, k, v, (5, 3), (2, 3), rpb)
    ref = reference_na2d(q, k, v, (5, 3), (2, 3), rpb)
    torch.testing.assert_close(out.double(), ref, **TOL[torch.float32])


# (H, W, kernel_size, dilation, order, tile or row-major block size)
BLOCK_CASES = [(13, 17, 3, 2, 'row_major', 16), (20, 20, 9, 1, 'row_major', 4),
               (12, 40, 5, (1, 4), 'row_major', 8), (30, 31, 7, 1, 'row_major', 128),
               (13, 17, 3, 2, 'tiled', (4, 4)), (20, 20, 9, 1, 'tiled', (2, 2)),
               (12, 40, 5, (1, 4), 'tiled', (2, 4)), (19, 13, 5, (3, 2), 'tiled', (4, 2)),
               (30, 31, 7, 1, 'tiled', (8, 16))]


@pytest.mark.parametrize('H, W, kernel_size, dilation, order, block', BLOCK_CASES,
                         ids=[f'{o}-{i}-b{_name(b)}' for i, (*_, o, b) in
                              zip(_ids(BLOCK_CASES), BLOCK_CASES)])
def test_block_mask_equals_create_block_mask(H, W, kernel_size, dilation, order, block):
    """The counted BlockMask holds exactly the partial and full blocks create_block_mask finds
    from the same mask_mod."""
    tile = block if order == 'tiled' else _flex.TILE
    block_size = block if order == 'row_major' else block[0] * block[1]
    ours = _flex.neighborhood_block_mask(H, W, kernel_size, dilation, order, tile,
                                         block_size=block_size)
    tokens = _flex.token_order(H, W, dilation, order, tile)
    mask_mod = _flex.neighborhood_mask_mod(tokens, kernel_size, dilation)
    theirs = create_block_mask(mask_mod, None, None, tokens.tokens, tokens.tokens,
                               device='cpu', BLOCK_SIZE=block_size)
    for name in ('kv_num_blocks', 'kv_indices', 'full_kv_num_blocks', 'full_kv_indices'):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    if (H, W) == (20, 20):
        assert ours.full_kv_num_blocks.sum() > 0  # the full-block path is exercised


@pytest.mark.parametrize('H, W, dilation, tile', [(13, 17, 2, (8, 16)), (19, 13, (3, 2), (4, 2)),
                                                  (24, 30, 1, (8, 16)), (7, 21, (1, 3), (2, 8))])
def test_tiled_permutation_round_trips_and_blocks_are_tiles(H, W, dilation, tile):
    (th, tw), (dh, dw) = tile, _pair(dilation)
    tokens = _flex.token_order(H, W, dilation, 'tiled', tile)
    x = torch.randn(2, H, W, 3, 4)
    seq = tokens.permute(x)  # [B, heads, T, D]
    assert seq.shape == (2, 3, tokens.tokens, 4)
    torch.testing.assert_close(tokens.unpermute(seq), x, atol=0, rtol=0)
    # T: each residue group's sub-map padded to whole tiles
    rows = [math.ceil(math.ceil((H - c) / dh) / th) * th for c in range(dh)]
    cols = [math.ceil(math.ceil((W - c) / dw) / tw) * tw for c in range(dw)]
    assert tokens.tokens == sum(rows) * sum(cols)
    # token_of is a bijection onto the non-padding tokens, which hold zeros
    flat = tokens.token_of.flatten()
    assert flat.unique().numel() == H * W
    pad = torch.ones(tokens.tokens, dtype=torch.bool)
    pad[flat] = False
    assert (seq[:, :, pad] == 0).all() and (tokens.tok_y[pad] == H).all()
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing='ij')
    assert torch.equal(seq[:, :, flat], x.flatten(1, 2).transpose(1, 2))
    assert torch.equal(tokens.tok_y[flat], yy.flatten())
    assert torch.equal(tokens.tok_x[flat], xx.flatten())
    # every block is one th x tw tile of one residue group, row-major inside the tile
    block, in_block = flat // (th * tw), flat % (th * tw)
    for b in block.unique():
        sel = block == b
        y, x_ = yy.flatten()[sel], xx.flatten()[sel]
        assert (y % dh).unique().numel() == 1 and (x_ % dw).unique().numel() == 1
        py, px = y // dh, x_ // dw
        assert (py // th).unique().numel() == 1 and (px // tw).unique().numel() == 1
        assert torch.equal(in_block[sel], (py % th) * tw + px % tw)


def test_row_major_order_is_a_reshape():
    tokens = _flex.token_order(5, 7, 2, 'row_major')
    x = torch.randn(1, 5, 7, 2, 3)
    assert tokens.tokens == 35 and torch.equal(tokens.token_of.flatten(), torch.arange(35))
    seq = tokens.permute(x)
    assert seq.data_ptr() == x.data_ptr()  # a view
    assert torch.equal(tokens.unpermute(seq), x)


def test_block_masks_are_cached_and_stats_count_them():
    a = _flex.cached_block_mask(30, 31, 7, 1, 'tiled')
    assert _flex.cached_block_mask(30, 31, (7, 7), (1, 1), 'tiled') is a
    assert _flex.FlexNA('tiled').block_mask(30, 31, 7) is a
    b = _flex.cached_block_mask(30, 31, 7, 1, 'row_major')
    assert b is not a
    for mask in (a, b):
        stats = _flex.block_stats(mask)
        partial, full = mask.kv_num_blocks[0, 0], mask.full_kv_num_blocks[0, 0]
        assert stats['q_blocks'] == partial.numel()
        assert stats['partial_max'] == partial.max() and stats['full_max'] == full.max()
        assert stats['visited_mean'] == pytest.approx((partial + full).double().mean().item())
    # 30x31, 7x7: tiled 8x16 tiles (32x32 tokens) reach at most 3x2 tiles, row-major blocks of
    # 128 tokens (4.1 rows) at most 3 (the map has 8 blocks)
    assert _flex.block_stats(a)['visited_max'] == 6
    assert _flex.block_stats(b)['visited_max'] == 3


@pytest.mark.slow  # dynamo traces FlexAttention: about 15 s
@pytest.mark.parametrize('order', ORDERS)
def test_traces_under_torch_compile(order):
    """With the shape's BlockMask cached (one eager call), na2d_flex traces into one graph
    (fullgraph=True; eager backend: the trace is what is tested, not inductor)."""
    q, k, v, rpb = [t.detach() for t in _inputs(13, 17, 3, dtype=torch.float32)]

    def fn(q, k, v, rpb):
        return _flex.na2d_flex(q, k, v, (3, 3), (2, 2), rpb, order=order, compile=False)

    ref = fn(q, k, v, rpb)
    out = torch.compile(fn, fullgraph=True, backend='eager')(q, k, v, rpb)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


def test_bad_order_raises():
    with pytest.raises(ValueError, match="order must be one of .*'row_major', 'tiled'"):
        _flex.FlexNA('column_major')


def test_public_flex_attention_still_has_no_cpu_backward():
    """Why _eager_flex_attention calls the op behind flex_attention on the CPU: the public
    function refuses inputs that require grad there (torch 2.14). If this fails, torch gained a
    CPU backward: call flex_attention directly and drop the workaround."""
    q = torch.randn(1, 1, 16, 8, requires_grad=True)
    with pytest.raises(NotImplementedError, match='does not support backward on CPU'):
        flex_attention(q, q, q)


@pytest.mark.slow  # a 6 s subprocess (torch and timm imports)
def test_importing_ops_does_not_import_flex():
    """_flex is imported lazily (by the flex backend), and so is torch's flex_attention."""
    code = ('import sys\n'
            'for name in ("mmengine", "mmcv", "mmdet", "mmseg"):\n'
            '    sys.modules[name] = None  # only the torch layers\n'
            'import nat_mm.ops\n'
            'assert "nat_mm.ops._flex" not in sys.modules\n'
            'assert "torch.nn.attention.flex_attention" not in sys.modules\n')
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, '-c', code], check=True, cwd=root, timeout=120)
