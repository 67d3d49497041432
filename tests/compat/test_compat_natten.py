"""nat_mm.compat.natten (NATTEN 0.14-0.17's API) against the float64 oracle of
nat_mm.testing.na_reference.

NATTEN's signatures, layouts and defaults come from its tagged sources (v0.14.6, v0.15.1,
v0.17.4: src/natten/functional.py, natten2d.py, na2d.py, utils/checks.py); the official NAT
layer from SHI-Labs/Neighborhood-Attention-Transformer classification/nat.py.
"""
import importlib
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from timm.layers import Mlp

import nat_mm.compat
from nat_mm.testing.na_reference import (TOL, axis_windows, reference_av, reference_logits,
                                         reference_na2d)
from nat_mm.compat import natten as cnatten
from nat_mm.compat.natten import NattenArgumentError
from nat_mm.compat.natten import functional as nf
from nat_mm.models import NATBlock
from nat_mm.ops import _torch_impl, na2d, na2d_av, na2d_qk

ROOT = Path(__file__).resolve().parents[2]
F64 = TOL[torch.float64]
REAL_NATTEN = '0.21.7'  # pinned in requirements; nat_mm's layer must hand `natten` back to it


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    """The shapes here are tiny: on shared cores, a thread pool per op call only adds waits
    (gradcheck makes thousands of calls)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rand(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, requires_grad=True)


# -- references in NATTEN's layouts, from the oracle (2-D) and the per-axis rule (1-D) ----------

def to_heads_last(t):  # [B, heads, H, W, X] -> [B, H, W, heads, X]
    return t.permute(0, 2, 3, 1, 4)


def to_heads_first(t):  # [B, H, W, heads, X] -> [B, heads, H, W, X]
    return t.permute(0, 3, 1, 2, 4)


def ref_qk_2d(q, k, kernel, dilation, rpb=None):
    return to_heads_first(reference_logits(to_heads_last(q), to_heads_last(k), kernel, dilation,
                                           rpb))


def ref_av_2d(attn, v, kernel, dilation):
    return to_heads_first(reference_av(to_heads_last(attn), to_heads_last(v), kernel, dilation))


def ref_qk_1d(q, k, kernel, dilation, rpb=None):
    """``[B, heads, L, k]`` logits of 1-D NA on heads-first ``[B, heads, L, D]``."""
    keys, bias_index = axis_windows(q.shape[2], kernel, dilation)  # [L, k] each
    logits = torch.einsum('bnld,bnlkd->bnlk', q.double(), k.double()[:, :, keys])
    return logits if rpb is None else logits + rpb.double()[:, bias_index]


def ref_av_1d(attn, v, kernel, dilation):
    keys, _ = axis_windows(v.shape[2], kernel, dilation)
    return torch.einsum('bnlk,bnlkd->bnld', attn.double(), v.double()[:, :, keys])


def ref_na1d(q, k, v, kernel, dilation, rpb=None, scale=None):
    """Fused 1-D NA on heads-last ``[B, L, heads, D]``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    attn = ref_qk_1d(q.double() * scale, k, kernel, dilation, rpb).softmax(-1)
    return ref_av_1d(attn, v, kernel, dilation).transpose(1, 2)


def assert_matches(fn, ref, inputs):
    """``fn(*inputs)`` equals ``ref`` on the same values in float64, as do the gradients."""
    out = fn(*inputs)
    detached = [t.detach().double().requires_grad_() if isinstance(t, torch.Tensor) else t
                for t in inputs]
    want = ref(*detached)
    torch.testing.assert_close(out.double(), want, **F64)
    grad_out = torch.randn_like(want)
    leaves = [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    got = torch.autograd.grad(out, [inputs[i] for i in leaves], grad_out.to(out.dtype))
    ref_grads = torch.autograd.grad(want, [detached[i] for i in leaves], grad_out)
    for i, g, w in zip(leaves, got, ref_grads):
        torch.testing.assert_close(g.double(), w, **F64, msg=lambda m, i=i: f'grad {i}: {m}')
    return out


# -- the functional ops in both versions' layouts ---------------------------------------------

# (heads-first shape, kernel, dilation): non-square, L not divisible by d, L == k * d
CASES_2D = [((1, 2, 9, 11, 4), 3, 2), ((2, 3, 7, 10, 5), 5, 1), ((1, 1, 6, 6, 3), 3, 2)]
CASES_1D = [((2, 2, 17, 4), 5, 3), ((1, 3, 7, 6), 7, 1), ((1, 2, 10, 3), 3, 2)]
IDS_2D = ['9x11-k3-d2', '7x10-k5', 'L==k*d']
IDS_1D = ['L17-k5-d3', 'L==k', 'L10-k3-d2']


@pytest.mark.parametrize('with_rpb', [True, False], ids=['rpb', 'no_rpb'])
@pytest.mark.parametrize('shape,k,d', CASES_2D, ids=IDS_2D)
def test_natten2d_0_14_ops(shape, k, d, with_rpb):
    q, key, v = rand(*shape), rand(*shape), rand(*shape)
    rpb = rand(shape[1], 2 * k - 1, 2 * k - 1) if with_rpb else None
    if with_rpb:
        attn = assert_matches(lambda q, key, r: nf.natten2dqkrpb(q, key, r, k, d),
                              lambda q, key, r: ref_qk_2d(q, key, (k, k), (d, d), r),
                              [q, key, rpb])
    else:
        attn = assert_matches(lambda q, key: nf.natten2dqk(q, key, k, d),
                              lambda q, key: ref_qk_2d(q, key, (k, k), (d, d)), [q, key])
    assert attn.shape == shape[:4] + (k * k,) and attn.is_contiguous()
    weights = rand(*attn.shape)
    out = assert_matches(lambda a, v: nf.natten2dav(a, v, k, d),
                         lambda a, v: ref_av_2d(a, v, (k, k), (d, d)), [weights, v])
    assert out.shape == shape and out.is_contiguous()


@pytest.mark.parametrize('with_rpb', [True, False], ids=['rpb', 'no_rpb'])
@pytest.mark.parametrize('shape,k,d', CASES_1D, ids=IDS_1D)
def test_natten1d_0_14_ops(shape, k, d, with_rpb):
    q, key, v = rand(*shape), rand(*shape), rand(*shape)
    rpb = rand(shape[1], 2 * k - 1) if with_rpb else None
    if with_rpb:
        attn = assert_matches(lambda q, key, r: nf.natten1dqkrpb(q, key, r, k, d),
                              lambda q, key, r: ref_qk_1d(q, key, k, d, r), [q, key, rpb])
    else:
        attn = assert_matches(lambda q, key: nf.natten1dqk(q, key, k, d),
                              lambda q, key: ref_qk_1d(q, key, k, d), [q, key])
    assert attn.shape == shape[:3] + (k,) and attn.is_contiguous()
    out = assert_matches(lambda a, v: nf.natten1dav(a, v, k, d),
                         lambda a, v: ref_av_1d(a, v, k, d), [rand(*attn.shape), v])
    assert out.shape == shape and out.is_contiguous()


@pytest.mark.parametrize('kernel,dilation', [((3, 5), (2, 1)), (3, 1), ((5, 3), 2)],
                         ids=['k3x5-d2x1', 'int-k3', 'k5x3-d2'])
def test_na2d_qk_av_0_17(kernel, dilation):
    shape = (2, 2, 10, 11, 4)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    dil = (dilation, dilation) if isinstance(dilation, int) else dilation
    q, key, v, rpb = rand(*shape), rand(*shape), rand(*shape), rand(2, 2 * kh - 1, 2 * kw - 1)
    attn = assert_matches(lambda q, key, r: nf.na2d_qk(q, key, kernel, dilation, rpb=r),
                          lambda q, key, r: ref_qk_2d(q, key, (kh, kw), dil, r), [q, key, rpb])
    assert attn.shape == shape[:4] + (kh * kw,)
    assert_matches(lambda a, v: nf.na2d_av(a, v, kernel, dilation),
                   lambda a, v: ref_av_2d(a, v, (kh, kw), dil), [rand(*attn.shape), v])
    # 0.15's name and 0.17's defaults (dilation=1, rpb=None)
    torch.testing.assert_close(nf.na2d_qk_with_bias(q, key, rpb, kernel, 1),
                               nf.na2d_qk(q, key, kernel, rpb=rpb))
    torch.testing.assert_close(nf.na2d_qk(q, key, kernel), ref_qk_2d(q, key, (kh, kw), (1, 1)))


@pytest.mark.parametrize('kernel,dilation', [(5, 2), ((3,), (3,))], ids=['k5-d2', 'tuple-k3-d3'])
def test_na1d_qk_av_0_17(kernel, dilation):
    shape = (2, 3, 16, 4)
    k = kernel if isinstance(kernel, int) else kernel[0]
    d = dilation if isinstance(dilation, int) else dilation[0]
    q, key, v, rpb = rand(*shape), rand(*shape), rand(*shape), rand(3, 2 * k - 1)
    attn = assert_matches(lambda q, key, r: nf.na1d_qk(q, key, kernel, dilation, rpb=r),
                          lambda q, key, r: ref_qk_1d(q, key, k, d, r), [q, key, rpb])
    assert_matches(lambda a, v: nf.na1d_av(a, v, kernel, dilation),
                   lambda a, v: ref_av_1d(a, v, k, d), [rand(*attn.shape), v])
    torch.testing.assert_close(nf.na1d_qk_with_bias(q, key, rpb, kernel, dilation),
                               nf.na1d_qk(q, key, kernel, dilation, rpb=rpb))


@pytest.mark.parametrize('scale', [None, 0.3, 0], ids=['default', '0.3', 'zero_is_default'])
@pytest.mark.parametrize('with_rpb', [True, False], ids=['rpb', 'no_rpb'])
def test_fused_na2d_na1d_0_17(with_rpb, scale):
    ref_scale = scale or None  # NATTEN 0.17: `scale or D ** -0.5`
    kernel, dilation = (3, 5), (2, 1)
    q, key, v = (rand(1, 9, 12, 2, 4) for _ in range(3))
    rpb = rand(2, 5, 9) if with_rpb else None
    out = assert_matches(
        lambda q, key, v, r: nf.na2d(q, key, v, kernel, dilation, rpb=r, scale=scale),
        lambda q, key, v, r: reference_na2d(q, key, v, kernel, dilation, r, ref_scale),
        [q, key, v, rpb])
    assert out.shape == q.shape
    q1, k1, v1 = (rand(2, 13, 3, 4) for _ in range(3))
    rpb1 = rand(3, 9) if with_rpb else None
    out = assert_matches(lambda q, key, v, r: nf.na1d(q, key, v, 5, 2, rpb=r, scale=scale),
                         lambda q, key, v, r: ref_na1d(q, key, v, 5, 2, r, ref_scale),
                         [q1, k1, v1, rpb1])
    assert out.shape == q1.shape


def _gradcheck_cases():
    """(op, inputs) on small float64 shapes, every functional op of both versions."""
    hf2, hf1, hl2, hl1 = (1, 2, 6, 7, 2), (1, 2, 8, 3), (1, 6, 7, 2, 2), (1, 8, 2, 3)
    return {
        'natten2dqkrpb': (lambda q, k, r: nf.natten2dqkrpb(q, k, r, 3, 2),
                          [rand(*hf2), rand(*hf2), rand(2, 5, 5)]),
        'natten2dav': (lambda a, v: nf.natten2dav(a, v, 3, 2), [rand(1, 2, 6, 7, 9), rand(*hf2)]),
        'natten1dqkrpb': (lambda q, k, r: nf.natten1dqkrpb(q, k, r, 3, 2),
                          [rand(*hf1), rand(*hf1), rand(2, 5)]),
        'natten1dav': (lambda a, v: nf.natten1dav(a, v, 3, 2), [rand(1, 2, 8, 3), rand(*hf1)]),
        'na2d_qk': (lambda q, k, r: nf.na2d_qk(q, k, (3, 5), (1, 1), rpb=r),
                    [rand(*hf2), rand(*hf2), rand(2, 5, 9)]),
        'na2d_av': (lambda a, v: nf.na2d_av(a, v, (3, 5)), [rand(1, 2, 6, 7, 15), rand(*hf2)]),
        'na1d_qk': (lambda q, k, r: nf.na1d_qk(q, k, 5, rpb=r), [rand(*hf1), rand(*hf1),
                                                                  rand(2, 9)]),
        'na1d_av': (lambda a, v: nf.na1d_av(a, v, 5), [rand(1, 2, 8, 5), rand(*hf1)]),
        'na2d': (lambda q, k, v, r: nf.na2d(q, k, v, 3, 2, rpb=r, scale=0.7),
                 [rand(*hl2), rand(*hl2), rand(*hl2), rand(2, 5, 5)]),
        'na1d': (lambda q, k, v, r: nf.na1d(q, k, v, 3, 2, rpb=r),
                 [rand(*hl1), rand(*hl1), rand(*hl1), rand(2, 5)]),
    }


@pytest.mark.parametrize('op', list(_gradcheck_cases()))
def test_gradcheck(op):
    fn, inputs = _gradcheck_cases()[op]
    assert torch.autograd.gradcheck(fn, inputs)


def test_bias_and_weights_follow_the_operands_dtype():
    """NATTEN 0.17 cast rpb to the key's dtype and attn to the value's (autocast: float32
    parameters meet float16 activations)."""
    q, k, v = (torch.randn(1, 2, 7, 8, 4, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(2, 5, 5)  # float32
    attn = nf.natten2dqkrpb(q, k, rpb, 3, 1)
    assert attn.dtype == torch.float64
    torch.testing.assert_close(attn, ref_qk_2d(q, k, (3, 3), (1, 1), rpb.double()), **F64)
    weights = torch.rand(1, 2, 7, 8, 9)  # float32
    out = nf.natten2dav(weights, v, 3, 1)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref_av_2d(weights.double(), v, (3, 3), (1, 1)), **F64)
    ql, kl, vl = (torch.randn(1, 7, 8, 2, 4, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(nf.na2d(ql, kl, vl, 3, rpb=rpb),
                               reference_na2d(ql, kl, vl, (3, 3), (1, 1), rpb.double()), **F64)


# -- a kernel of 1 on one axis in nat_mm.ops (what the 1-D ops run on) ------------------------

def _torch_na2d(q, k, v, kernel_size, dilation, rpb):
    return _torch_impl.na2d(q, k, v, kernel_size, dilation, rpb, q.shape[-1] ** -0.5)


@pytest.mark.parametrize('backend', ['compiled', 'torch'])
@pytest.mark.parametrize('shape,kernel,dilation', [
    ((2, 1, 13, 2, 4), (1, 5), (1, 2)),
    ((1, 11, 3, 2, 4), (3, 1), (3, 1)),
    ((1, 1, 41, 2, 8), (1, 7), (1, 1)),  # wide enough for the CPU kernels' SIMD lanes
    ((1, 20, 30, 1, 8), (1, 3), (2, 3)),
    ((1, 4, 5, 1, 3), (1, 1), (1, 1)),
], ids=['1x5-d2', '3x1-d3', '1x7-wide', '1x3-20x30', '1x1'])
def test_ops_kernel_one_matches_reference(backend, shape, kernel, dilation):
    q, k, v = rand(*shape), rand(*shape), rand(*shape)
    rpb = rand(shape[3], 2 * kernel[0] - 1, 2 * kernel[1] - 1)
    fused = na2d if backend == 'compiled' else _torch_na2d
    assert_matches(lambda q, k, v, r: fused(q, k, v, kernel, dilation, r),
                   lambda q, k, v, r: reference_na2d(q, k, v, kernel, dilation, r),
                   [q, k, v, rpb])
    qk = na2d_qk if backend == 'compiled' else _torch_impl.na2d_qk
    av = na2d_av if backend == 'compiled' else _torch_impl.na2d_av
    attn = assert_matches(lambda q, k, r: qk(q, k, kernel, dilation, r),
                          lambda q, k, r: reference_logits(q, k, kernel, dilation, r), [q, k, rpb])
    assert_matches(lambda a, v: av(a, v, kernel, dilation),
                   lambda a, v: reference_av(a, v, kernel, dilation), [rand(*attn.shape), v])
    if backend == 'compiled':
        small = (1, kernel[0] * dilation[0] + 1, kernel[1] * dilation[1] + 1, 1, 2)
        assert torch.autograd.gradcheck(
            lambda q, k, v, r: na2d(q, k, v, kernel, dilation, r, scale=0.5),
            [rand(*small), rand(*small), rand(*small), rand(1, *rpb.shape[1:])])


@pytest.mark.parametrize('kernel_size', [2, 0, -1, (1, 4)], ids=['2', '0', '-1', '1x4'])
def test_ops_still_reject_even_and_non_positive_kernels(kernel_size):
    q = torch.randn(1, 8, 8, 1, 4)
    with pytest.raises(ValueError, match=r'kernel_size must be odd and >= 1'):
        na2d(q, q, q, kernel_size)


# -- the modules --------------------------------------------------------------------------------

def module_reference(module, x):
    """Recompute a compat module's forward from its parameters with the float64 oracle."""
    x = x.double()
    one_d = x.dim() == 3
    if one_d:
        x = x.unsqueeze(1)
    kernel = (1,) + module.kernel_size if one_d else module.kernel_size
    dilation = (1,) + module.dilation if one_d else module.dilation
    B, H, W, C = x.shape
    Hp, Wp = max(H, kernel[0] * dilation[0]), max(W, kernel[1] * dilation[1])
    xp = torch.zeros(B, Hp, Wp, C, dtype=x.dtype)
    xp[:, :H, :W] = x  # zero padding at the bottom/right
    qkv = nn.functional.linear(xp, module.qkv.weight.double(),
                               None if module.qkv.bias is None else module.qkv.bias.double())
    q, k, v = qkv.reshape(B, Hp, Wp, 3, module.num_heads, module.head_dim).unbind(3)
    rpb = module.rpb
    if rpb is not None:
        rpb = rpb.double().unsqueeze(1) if one_d else rpb.double()
    out = reference_na2d(q, k, v, kernel, dilation, rpb, module.scale)
    out = out.reshape(B, Hp, Wp, C)[:, :H, :W]
    out = nn.functional.linear(out, module.proj.weight.double(), module.proj.bias.double())
    return out.squeeze(1) if one_d else out


@pytest.mark.parametrize('size', [(15, 17), (9, 20), (6, 5)], ids=['15x17', 'pad-H', 'pad-both'])
@pytest.mark.parametrize('rpb_kwarg', ['bias', 'rel_pos_bias', None],
                         ids=['bias-0.14', 'rel_pos_bias-0.17', 'no_rpb'])
def test_module_2d_matches_reference(rpb_kwarg, size):
    kwargs = {rpb_kwarg: True} if rpb_kwarg else dict(bias=False)
    attn = cnatten.NeighborhoodAttention2D(16, 2, (5, 3), dilation=(2, 3), qk_scale=0.4,
                                           **kwargs).double()
    assert (attn.rpb is not None) == (rpb_kwarg is not None)
    x = torch.randn(2, *size, 16, dtype=torch.float64)
    torch.testing.assert_close(attn(x), module_reference(attn, x), **F64)


@pytest.mark.parametrize('length', [20, 6], ids=['L20', 'pad'])
@pytest.mark.parametrize('with_rpb', [True, False], ids=['rpb', 'no_rpb'])
def test_module_1d_matches_reference(with_rpb, length):
    attn = cnatten.NeighborhoodAttention1D(12, 3, 5, 2, bias=with_rpb).double()
    x = torch.randn(2, length, 12, dtype=torch.float64)
    torch.testing.assert_close(attn(x), module_reference(attn, x), **F64)
    # the 1-D qkv/rpb/proj, independent of the one-row-map trick: the per-axis oracle
    B, L, C = x.shape
    q, k, v = nn.functional.linear(nn.functional.pad(x, (0, 0, 0, max(0, 10 - L))),
                                   attn.qkv.weight, attn.qkv.bias).reshape(
                                       B, -1, 3, 3, 4).unbind(2)
    out = ref_na1d(q, k, v, 5, 2, attn.rpb, attn.scale)[:, :L].reshape(B, L, C)
    torch.testing.assert_close(attn(x), attn.proj(out), **F64)


def test_module_attention_dropout_matches_reference():
    """Training with attn_drop: qk -> softmax -> dropout -> av, like NATTEN's unfused path."""
    attn = cnatten.NeighborhoodAttention2D(8, 2, 3, bias=True, attn_drop=0.5).double().train()
    x = torch.randn(1, 7, 9, 8, dtype=torch.float64)
    torch.manual_seed(1)
    out = attn(x)
    q, k, v = attn.qkv(x).reshape(1, 7, 9, 3, 2, 4).unbind(3)
    torch.manual_seed(1)
    weights = nn.functional.dropout(
        reference_logits(q * attn.scale, k, (3, 3), (1, 1), attn.rpb).softmax(-1), 0.5)
    want = attn.proj(reference_av(weights, v, (3, 3), (1, 1)).reshape(1, 7, 9, 8))
    torch.testing.assert_close(out, want, **F64)
    assert not torch.allclose(out, attn.eval()(x))  # dropout did act


def test_module_state_dict_and_defaults():
    attn = cnatten.NeighborhoodAttention2D(dim=64, num_heads=2, kernel_size=7, bias=True)
    assert {k: tuple(v.shape) for k, v in attn.state_dict().items()} == {
        'qkv.weight': (192, 64), 'qkv.bias': (192,), 'rpb': (2, 13, 13),
        'proj.weight': (64, 64), 'proj.bias': (64,)}
    assert attn.kernel_size == (7, 7) and attn.dilation == (1, 1) and attn.scale == 32 ** -0.5
    assert 0 < attn.rpb.abs().max() <= 2 and attn.rpb.std() < 0.05  # trunc_normal(std=.02)
    one_d = cnatten.NeighborhoodAttention1D(16, 4, 5, rel_pos_bias=True, qkv_bias=False)
    assert sorted(one_d.state_dict()) == ['proj.bias', 'proj.weight', 'qkv.weight', 'rpb']
    assert one_d.rpb.shape == (4, 9)
    assert cnatten.NeighborhoodAttention2D(8, 2, 3, dilation=None, bias=True).dilation == (1, 1)
    assert cnatten.NeighborhoodAttention2D(8, 2, 3, qk_scale=0, bias=True).scale == 0.5
    assert 'has_bias=True' in repr(attn)
    with pytest.warns(UserWarning, match=r"neither rel_pos_bias \(NATTEN 0.17\) nor bias"):
        plain = cnatten.NeighborhoodAttention2D(8, 2, 3)
    assert plain.rpb is None  # NATTEN 0.17's default
    with pytest.raises(ValueError, match='same switch'):
        cnatten.NeighborhoodAttention2D(8, 2, 3, bias=True, rel_pos_bias=False)


# -- an official-style NAT level on the compat module equals nat_mm's NATBlock ------------------

class OfficialNATLayer(nn.Module):
    """NATLayer as classification/nat.py (SHI-Labs/Neighborhood-Attention-Transformer) writes it,
    with ``NeighborhoodAttention`` taken from natten, here nat_mm.compat.natten."""

    def __init__(self, dim, num_heads, kernel_size=7, dilation=None, mlp_ratio=4.0,
                 layer_scale=None, rpb_kwarg='bias'):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = cnatten.NeighborhoodAttention2D(dim, kernel_size=kernel_size,
                                                    dilation=dilation, num_heads=num_heads,
                                                    qkv_bias=True, qk_scale=None, attn_drop=0.0,
                                                    proj_drop=0.0, **{rpb_kwarg: True})
        self.drop_path = nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.layer_scale = False
        if layer_scale is not None and type(layer_scale) in [int, float]:
            self.layer_scale = True
            self.gamma1 = nn.Parameter(layer_scale * torch.ones(dim))
            self.gamma2 = nn.Parameter(layer_scale * torch.ones(dim))

    def forward(self, x):
        if not self.layer_scale:
            shortcut = x
            x = self.attn(self.norm1(x))
            x = shortcut + self.drop_path(x)
            return x + self.drop_path(self.mlp(self.norm2(x)))
        shortcut = x
        x = self.attn(self.norm1(x))
        x = shortcut + self.drop_path(self.gamma1 * x)
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))


class OfficialNATBlock(nn.Module):
    def __init__(self, dim, depth, num_heads, kernel_size, dilations, mlp_ratio, layer_scale,
                 rpb_kwarg):
        super().__init__()
        self.blocks = nn.ModuleList([
            OfficialNATLayer(dim, num_heads, kernel_size, dilations[i], mlp_ratio, layer_scale,
                             rpb_kwarg) for i in range(depth)])
        self.downsample = nn.Module()  # ConvDownsampler: reduction + norm
        self.downsample.reduction = nn.Conv2d(dim, 2 * dim, 3, 2, 1, bias=False)
        self.downsample.norm = nn.LayerNorm(2 * dim)

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        x = self.downsample.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.downsample.norm(x)


@pytest.mark.parametrize('layer_scale,dilations,size,rpb_kwarg', [
    (None, [1, 2], (15, 18), 'bias'),
    (0.5, [1, 3], (11, 19), 'rel_pos_bias'),
], ids=['nat-dinat-bias', 'layer_scale-padded-rel_pos_bias'])
def test_official_style_level_loads_strictly_and_matches_nat_mm(layer_scale, dilations, size,
                                                                rpb_kwarg):
    ours = NATBlock(32, 2, 2, kernel_size=7, dilations=dilations, mlp_ratio=3.,
                    layer_scale=layer_scale).double().eval()
    with torch.no_grad():  # make every parameter matter (LayerNorms would start at 1 and 0)
        for name, p in ours.named_parameters():
            p.normal_(0, 0.2).add_(1.0 if 'norm' in name and name.endswith('weight') else 0.0)
    official = OfficialNATBlock(32, 2, 2, 7, dilations, 3., layer_scale,
                                rpb_kwarg).double().eval()
    official.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, *size, 32, dtype=torch.float64)
    down, level_out = ours(x)
    torch.testing.assert_close(official(x), down, **F64)
    y = x
    for blk in official.blocks:
        y = blk(y)
    torch.testing.assert_close(y, level_out, **F64)


# -- NATTEN's argument errors, and what is not supported --------------------------------------

def _t(*shape):
    return torch.randn(*shape)


ARGUMENT_ERRORS = {
    'even-kernel': (lambda: nf.natten2dqkrpb(_t(1, 2, 9, 9, 4), _t(1, 2, 9, 9, 4), None, 4, 1),
                    NattenArgumentError, r'natten2dqkrpb: kernel_size must be an odd number '
                    r'greater than 1 on each axis, got kernel_size=4'),
    'kernel-1': (lambda: nf.na2d_qk(_t(1, 2, 9, 9, 4), _t(1, 2, 9, 9, 4), (3, 1)),
                 NattenArgumentError, r'odd number greater than 1.*\(3, 1\)'),
    'dilation-0': (lambda: nf.natten1dav(_t(1, 2, 9, 3), _t(1, 2, 9, 4), 3, 0),
                   NattenArgumentError, r'natten1dav: dilation must be >= 1 on each axis, '
                   r'got dilation=0'),
    'map-too-small-2d': (lambda: nf.natten2dav(_t(1, 2, 9, 12, 25), _t(1, 2, 9, 12, 4), 5, 2),
                         NattenArgumentError, r'natten2dav: input axes must be greater than or '
                         r'equal to the product of kernel size and dilation: H=9 < 5 \* 2 = 10'),
    'map-too-small-1d': (lambda: nf.na1d(_t(1, 6, 2, 4), _t(1, 6, 2, 4), _t(1, 6, 2, 4), 7),
                         NattenArgumentError, r'na1d: .*L=6 < 7 \* 1 = 7'),
    'wrong-rank': (lambda: nf.natten2dqkrpb(_t(2, 9, 9, 4), _t(2, 9, 9, 4), None, 3, 1),
                   ValueError, r'query must be 5-D \[B, heads, H, W, D\], got query.shape='
                   r'\(2, 9, 9, 4\)'),
    'rpb-shape': (lambda: nf.natten1dqkrpb(_t(1, 2, 9, 4), _t(1, 2, 9, 4), _t(2, 5, 5), 3, 1),
                  ValueError, r'rpb must be \[heads, 2\*k-1\] = \[2, 5\]'),
    'attn-shape': (lambda: nf.na2d_av(_t(1, 2, 9, 9, 8), _t(1, 2, 9, 9, 4), 3),
                   ValueError, r'attn must be \[B, heads, H, W, kh\*kw\] = \[1, 2, 9, 9, 9\]'),
    'kernel-type': (lambda: nf.na2d(_t(1, 9, 9, 2, 4), _t(1, 9, 9, 2, 4), _t(1, 9, 9, 2, 4),
                                    3.0), TypeError, r'kernel_size must be an int or a tuple'),
    'module-even-kernel': (lambda: cnatten.NeighborhoodAttention2D(16, 2, 6, bias=True),
                           NattenArgumentError, r'NeighborhoodAttention2D: kernel_size must be '
                           r'an odd number greater than 1'),
    'module-dilation-0': (lambda: cnatten.NeighborhoodAttention1D(16, 2, 3, 0, bias=True),
                          NattenArgumentError, r'NeighborhoodAttention1D: dilation must be >= 1'),
    'module-heads': (lambda: cnatten.NeighborhoodAttention2D(16, 3, 3, bias=True), ValueError,
                     r'num_heads must divide dim, got dim=16, num_heads=3'),
    'module-input-rank': (lambda: cnatten.NeighborhoodAttention2D(16, 2, 3, bias=True)(
        _t(2, 9, 16)), ValueError, r'expected a rank-4 input \[B, H, W, C\]'),
}


@pytest.mark.parametrize('case', list(ARGUMENT_ERRORS))
def test_argument_errors(case):
    call, error, match = ARGUMENT_ERRORS[case]
    with pytest.raises(error, match=match):
        call()


def test_argument_error_is_also_natten_s_runtime_error():
    with pytest.raises(RuntimeError, match='odd number'):
        nf.natten2dqk(_t(1, 2, 9, 9, 4), _t(1, 2, 9, 9, 4), 2, 1)


def _nested():
    return torch.nested.nested_tensor([torch.randn(2, 9, 4), torch.randn(3, 9, 4)],
                                      layout=torch.jagged)


UNSUPPORTED = {
    'is_causal-qk': (lambda: nf.na2d_qk(_t(1, 2, 9, 9, 4), _t(1, 2, 9, 9, 4), 3, is_causal=True),
                     'causal'),
    'is_causal-fused': (lambda: nf.na1d(_t(1, 9, 2, 4), _t(1, 9, 2, 4), _t(1, 9, 2, 4), 3,
                                        is_causal=(True,)), 'causal'),
    'is_causal-module': (lambda: cnatten.NeighborhoodAttention2D(16, 2, 3, is_causal=True),
                         'causal'),
    'additional_keys': (lambda: nf.na2d_qk(_t(1, 2, 9, 9, 4), _t(1, 2, 9, 9, 4), 3,
                                           additional_keys=_t(1, 2, 9, 9, 4)), 'additional_keys'),
    'additional_values': (lambda: nf.na2d(_t(1, 9, 9, 2, 4), _t(1, 9, 9, 2, 4),
                                          _t(1, 9, 9, 2, 4), 3, additional_keys=None,
                                          additional_values=_t(1, 5, 2, 4)), 'additional_values'),
    'nested': (lambda: nf.na2d_qk(_nested(), _nested(), 3), 'nested tensors'),
    'na3d': (lambda: nf.na3d(_t(1, 5, 5, 5, 2, 4), _t(1, 5, 5, 5, 2, 4), _t(1, 5, 5, 5, 2, 4), 3),
             'na3d: 3-D'),
    'natten3dqkrpb': (lambda: nf.natten3dqkrpb(None, None, None, 3, 3, 1, 1), 'natten3dqkrpb: 3-D'),
    'module-3d': (lambda: cnatten.NeighborhoodAttention3D(16, 2, 3), 'NeighborhoodAttention3D'),
    'flops': (lambda: cnatten.flops.add_natten_handle(None), 'add_natten_handle'),
}


@pytest.mark.parametrize('case', list(UNSUPPORTED))
def test_unsupported_features_raise_not_implemented(case):
    call, match = UNSUPPORTED[case]
    with pytest.raises(NotImplementedError, match=match):
        call()


@pytest.fixture
def natten_context():
    saved = dict(cnatten.context._state)
    yield cnatten.context
    cnatten.context._state.update(saved)


def test_context_switches_are_recorded_and_change_no_result(natten_context):
    attn = cnatten.NeighborhoodAttention2D(16, 2, 3, bias=True).eval()
    x = torch.randn(1, 8, 9, 16)
    before = attn(x)
    assert not cnatten.is_fused_na_enabled()
    cnatten.use_fused_na(True, kv_parallel=True)
    cnatten.use_autotuner(forward_pass=True, warmup_steps_forward=3)
    cnatten.set_memory_usage_preference('strict')
    assert cnatten.is_fused_na_enabled() and cnatten.is_fna_enabled()
    assert cnatten.is_kv_parallelism_in_fused_na_enabled()
    assert cnatten.is_autotuner_enabled_for_forward()
    assert not cnatten.is_autotuner_enabled_for_backward()
    assert cnatten.is_memory_usage_strict()
    assert cnatten.get_memory_usage_preference() is cnatten.MemoryUsagePreference.Strict
    assert torch.equal(attn(x), before)
    with pytest.raises(ValueError, match='strict'):
        cnatten.set_memory_usage_preference('fast')
    assert cnatten.has_cuda() == torch.cuda.is_available() and not cnatten.has_gemm()
    assert hasattr(cnatten, 'context')  # what the official NAT files test for 0.17+


def test_utils_check_all_args():
    assert cnatten.utils.check_all_args(2, 7, None, False) == ((7, 7), (1, 1), (False, False))
    assert cnatten.utils.check_all_args(1, [5], (2,), None) == ((5,), (2,), (False,))
    assert cnatten.utils.get_num_na_weights((3, 5)) == 15
    with pytest.raises(ValueError, match='kernel_size'):
        cnatten.utils.check_kernel_size_arg(2, (3, 3, 3))
    assert cnatten.utils.log.get_logger('natten.x').name == 'natten.x'


# -- install_natten / uninstall_natten --------------------------------------------------------

def _natten_entries():
    return {k: v for k, v in sys.modules.items() if k == 'natten' or k.startswith('natten.')}


@pytest.fixture
def clean_natten():
    """Each test leaves nat_mm's natten uninstalled. Real natten modules are never dropped from
    sys.modules: importing natten 0.21.7 a second time in one process would register its torch
    ops twice."""
    meta_path = list(sys.meta_path)
    yield
    nat_mm.compat.uninstall_natten()
    sys.meta_path[:] = meta_path


def test_install_then_uninstall_gives_the_real_natten_back(clean_natten):
    real = importlib.import_module('natten')  # natten 0.21.7, pinned in requirements
    assert real.__version__ == REAL_NATTEN and real is not cnatten
    real_entries = _natten_entries()
    with pytest.warns(UserWarning, match=rf'not the installed natten {re.escape(REAL_NATTEN)}'):
        assert nat_mm.compat.install_natten() is cnatten
    assert nat_mm.compat.is_natten_installed()
    import natten
    from natten.functional import natten2dav, natten2dqkrpb  # Hugging Face Dinat's import
    from natten.utils import check_all_args  # noqa: F401
    assert natten is cnatten and natten2dqkrpb is nf.natten2dqkrpb and natten2dav is nf.natten2dav
    assert natten.NeighborhoodAttention2D is cnatten.NeighborhoodAttention2D
    # Hugging Face's is_natten_available(): find_spec, then the distribution's version
    assert importlib.util.find_spec('natten') is not None
    assert importlib.metadata.version('natten') == natten.__version__ == '0.17.4+nat_mm'
    assert importlib.metadata.distribution('natten').metadata['Name'] == 'natten'
    for sub in ('functional', 'context', 'types', 'utils', 'utils.log', 'flops', 'modules'):
        assert sys.modules[f'natten.{sub}'] is sys.modules[f'nat_mm.compat.natten.{sub}']
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module('natten.backends')  # a 0.20+ module: not mixed in from disk
    assert nat_mm.compat.install_natten() is cnatten  # idempotent: no second finder
    assert sum(type(f).__name__ == '_MetadataFinder' for f in sys.meta_path) == 1

    assert nat_mm.compat.uninstall_natten() is True
    assert not nat_mm.compat.is_natten_installed()
    assert _natten_entries() == real_entries  # the very same module objects
    assert not any(type(f).__name__ == '_MetadataFinder' for f in sys.meta_path)
    assert importlib.import_module('natten') is real
    assert importlib.metadata.version('natten') == REAL_NATTEN
    assert nat_mm.compat.uninstall_natten() is False


# In a fresh process: importing nat_mm (with its mm layer) and nat_mm.compat installs nothing;
# after install + uninstall, the first `import natten` finds the installed natten.
FRESH_PROCESS = textwrap.dedent('''
    import json, sys, warnings
    import nat_mm
    state = dict(mm=nat_mm.mm is not None, compat_loaded='nat_mm.compat' in sys.modules)
    import nat_mm.compat
    state['natten_imported'] = 'natten' in sys.modules
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        nat_mm.compat.install_natten()
    state['warnings'] = [str(w.message) for w in caught]
    import natten
    state['installed'] = natten.__version__
    nat_mm.compat.uninstall_natten()
    del natten
    import natten
    state['after'] = [natten.__version__, natten.__file__]
    print(json.dumps(state))
''')


@pytest.mark.slow
def test_import_nat_mm_installs_nothing_and_uninstall_finds_the_real_natten():
    result = subprocess.run([sys.executable, '-c', FRESH_PROCESS], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert (got['mm'], got['compat_loaded'], got['natten_imported']) == (True, False, False)
    assert len(got['warnings']) == 1 and f'natten {REAL_NATTEN} at' in got['warnings'][0]
    assert got['installed'] == '0.17.4+nat_mm'
    assert got['after'][0] == REAL_NATTEN and 'site-packages' in got['after'][1]


LAYERING = textwrap.dedent('''
    import sys, warnings
    for name in ('mmengine', 'mmcv', 'mmdet', 'mmseg'):
        sys.modules[name] = None  # importing any of them now fails
    import torch
    import nat_mm.compat
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        nat_mm.compat.install_natten()
    import natten
    from natten.functional import natten2dqkrpb
    attn = natten.NeighborhoodAttention2D(16, 2, 3, bias=True)
    print(attn(torch.randn(1, 5, 6, 16)).shape[1:3] == (5, 6),
          natten2dqkrpb(torch.randn(1, 2, 5, 6, 8), torch.randn(1, 2, 5, 6, 8), attn.rpb, 3, 1)
          .shape[-1] == 9)
''')


@pytest.mark.slow
def test_compat_needs_no_openmmlab_package():
    result = subprocess.run([sys.executable, '-c', LAYERING], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['True', 'True']


# -- the one-liner and the documented example --------------------------------------------------

def _doc_example():
    """The example script of docs/natten_compat.md and the output printed under it."""
    text = (ROOT / 'docs' / 'natten_compat.md').read_text()
    match = re.search(r'<!-- natten-compat-example -->\n```python\n(.*?)```\n\n```text\n(.*?)```',
                      text, re.S)
    assert match, 'docs/natten_compat.md lost its example block'
    return match.group(1), match.group(2)


@pytest.mark.slow
def test_doc_example_runs_through_the_one_liner(tmp_path):
    code, expected = _doc_example()
    script = tmp_path / 'example.py'
    script.write_text(code)
    result = subprocess.run([sys.executable, '-m', 'nat_mm.compat.run', str(script)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected
    assert f'not the installed natten {REAL_NATTEN}' in result.stderr  # says which one


def test_run_main_sets_argv_and_runs_as_main(clean_natten, tmp_path, monkeypatch):
    from nat_mm.compat import run

    script = tmp_path / 'old_script.py'
    script.write_text(textwrap.dedent('''
        import sys, natten
        RESULT = (__name__, sys.argv, natten.__version__, sys.path[0])
    '''))
    monkeypatch.setattr(sys, 'argv', list(sys.argv))
    monkeypatch.setattr(sys, 'path', list(sys.path))
    seen = {}
    real_run_path = run.runpy.run_path
    monkeypatch.setattr(run.runpy, 'run_path',
                        lambda path, run_name: seen.update(real_run_path(path, run_name=run_name)))
    with pytest.warns(UserWarning, match='install_natten'):
        assert run.main([str(script), '--flag', 'x']) == 0
    assert seen['RESULT'] == ('__main__', [str(script), '--flag', 'x'], '0.17.4+nat_mm',
                              str(tmp_path))
    assert run.main([]) == 2 and run.main(['-m']) == 2 and run.main(['--help']) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16],
                         ids=['fp32', 'fp16', 'bf16'])
def test_cuda_ops_match_reference(dtype):
    tol = TOL[dtype]
    q, k, v = (torch.randn(2, 9, 13, 2, 32, device='cuda', dtype=dtype) for _ in range(3))
    rpb = torch.randn(2, 5, 5, device='cuda')
    torch.testing.assert_close(nf.na2d(q, k, v, 5, 2, rpb=rpb).double().cpu(),
                               reference_na2d(q.cpu(), k.cpu(), v.cpu(), (5, 5), (2, 2),
                                              rpb.cpu()), **tol)
    q1, k1, v1 = (t[:, 0] for t in (q, k, v))  # [B, L, heads, D]
    rpb1 = torch.randn(2, 9, device='cuda')
    torch.testing.assert_close(nf.na1d(q1, k1, v1, 5, 2, rpb=rpb1).double().cpu(),
                               ref_na1d(q1.cpu(), k1.cpu(), v1.cpu(), 5, 2, rpb1.cpu()), **tol)
    hf = q1.transpose(1, 2)
    torch.testing.assert_close(nf.natten1dqkrpb(hf, hf, rpb1, 5, 2).double().cpu(),
                               ref_qk_1d(hf.cpu(), hf.cpu(), 5, 2, rpb1.cpu()), **tol)
