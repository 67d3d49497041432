"""tools/benchmark_op.py's peers and plumbing: the FlexAttention peer (tools/_flex_na.py) is a
correct neighborhood attention (against the float64 oracle), its BlockMask is FlexAttention's own,
and the backends' environment (nat_mm_ref) and set-up hooks behave. No timings are asserted."""
import argparse
import json
import math
import os
import sys

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from na_reference import TOL, reference_na2d
from tools_common import ENV, TOOLS, tool

sys.path.insert(0, TOOLS)
import _flex_na  # noqa: E402
import benchmark_op  # noqa: E402

# (H, W, kernel_size, dilation): non-square, L not divisible by d, L == k*d, per-axis tuples
CASES = [(13, 17, 3, 2), (9, 14, 3, (3, 2)), (20, 9, (5, 3), (2, 3)), (7, 21, 7, (1, 3)),
         (14, 14, 7, 1)]


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _name(value):
    return 'x'.join(map(str, _pair(value)))


IDS = [f'{h}x{w}-k{_name(k)}-d{_name(d)}' for h, w, k, d in CASES]


def _inputs(H, W, kernel_size, heads=3, D=16, B=2, device='cpu', dtype=torch.float32,
            requires_grad=False):
    kh, kw = _pair(kernel_size)
    tensors = [torch.randn(B, H, W, heads, D, device=device, dtype=dtype) for _ in range(3)]
    rpb = torch.randn(heads, 2 * kh - 1, 2 * kw - 1, device=device, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in tensors + [rpb]]


@pytest.mark.parametrize('H, W, kernel_size, dilation, block',
                         [(13, 17, 3, 2, 16), (20, 20, 9, 1, 4), (12, 40, 5, (1, 4), 8),
                          (30, 31, 7, 1, 128)], ids=['d2', 'full-blocks', 'd1x4', 'block128'])
def test_block_mask_equals_create_block_mask(H, W, kernel_size, dilation, block):
    """The chunked BlockMask holds exactly the partial and full blocks create_block_mask finds."""
    chunk = 2 * block * block * math.ceil(H * W / block)  # two query blocks at a time
    ours = _flex_na.neighborhood_block_mask(H, W, kernel_size, dilation, block_size=block,
                                            chunk_elements=chunk)
    mask_mod = _flex_na.neighborhood_mask_mod(H, W, kernel_size, dilation)
    theirs = create_block_mask(mask_mod, None, None, H * W, H * W, device='cpu',
                               BLOCK_SIZE=block)
    for name in ('kv_num_blocks', 'kv_indices', 'full_kv_num_blocks', 'full_kv_indices'):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    if (H, W, block) == (20, 20, 4):
        assert ours.full_kv_num_blocks.sum() > 0  # the full-block path is exercised


@pytest.mark.filterwarnings('ignore:flex_attention called without torch.compile')
@pytest.mark.parametrize('H, W, kernel_size, dilation', CASES, ids=IDS)
@pytest.mark.parametrize('with_rpb', [True, False], ids=['rpb', 'no_rpb'])
def test_flex_eager_matches_reference(H, W, kernel_size, dilation, with_rpb):
    """mask_mod and score_mod are NAT's window and bias (FlexAttention run eagerly)."""
    q, k, v, rpb = _inputs(H, W, kernel_size)
    rpb = rpb if with_rpb else None
    out = _flex_na.FlexNA(compile=False)(q, k, v, kernel_size, dilation, rpb)
    ref = reference_na2d(q, k, v, _pair(kernel_size), _pair(dilation), rpb)
    torch.testing.assert_close(out.double(), ref, **TOL[torch.float32])


@pytest.mark.slow
def test_flex_backend_compiled_cpu_matches_reference():
    """The benchmark's flex backend, compiled on the CPU (forward only there), is exact NA."""
    fn, has_backward = benchmark_op.make_backends('cpu')['flex']
    assert not has_backward
    for H, W, kernel_size, dilation in [(13, 17, 3, 2), (18, 23, 7, 2)]:
        layer = benchmark_op.Layer('t', H, W, 2, D=16, kernel=kernel_size, dilation=dilation)
        fn.prepare(layer, 'cpu')
        q, k, v, rpb = _inputs(H, W, kernel_size, heads=2)
        out = fn(q, k, v, layer, rpb)
        ref = reference_na2d(q, k, v, _pair(kernel_size), _pair(dilation), rpb)
        torch.testing.assert_close(out.double(), ref, **TOL[torch.float32])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_flex_backend_cuda_forward_backward_matches_reference():
    """Compiled FlexAttention on CUDA: output and the gradients of q, k, v and rpb (float32;
    one dtype, as each compilation costs device time)."""
    dtype = torch.float32
    fn, has_backward = benchmark_op.make_backends('cuda')['flex']
    assert has_backward
    H, W, kernel_size, dilation = 19, 26, 7, 2
    layer = benchmark_op.Layer('t', H, W, 2, kernel=kernel_size, dilation=dilation)
    fn.prepare(layer, 'cuda')
    inputs = _inputs(H, W, kernel_size, heads=2, D=32, B=1, device='cuda', dtype=dtype,
                     requires_grad=True)
    out = fn(*inputs[:3], layer, inputs[3])
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, grad)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    ref = reference_na2d(*ref_inputs[:3], _pair(kernel_size), _pair(dilation), ref_inputs[3])
    ref_grads = torch.autograd.grad(ref, ref_inputs, grad.double())
    tol = dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.double(), ref, **tol)
    for name, got, want in zip(['dq', 'dk', 'dv', 'drpb'], grads, ref_grads):
        scale = max(1.0, want.abs().max().item())  # drpb sums over many queries
        torch.testing.assert_close(got.double() / scale, want / scale, **tol, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_nat_mm_ref_backend_cuda_matches_nat_mm():
    """nat_mm_ref (NAT_MM_CUDA_KERNEL=reference) and nat_mm compute the same attention."""
    backends = benchmark_op.make_backends('cuda')
    layer = benchmark_op.Layer('t', 21, 30, 2)
    inputs = _inputs(21, 30, 7, heads=2, D=32, B=1, device='cuda', requires_grad=True)
    results = []
    for name in ('nat_mm', 'nat_mm_ref'):
        fn = backends[name][0]
        with benchmark_op.environment(getattr(fn, 'env', {})):
            out = fn(*inputs[:3], layer, inputs[3])
            results.append([out] + list(torch.autograd.grad(out.sum(), inputs)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


class _RecordEnv(torch.autograd.Function):
    """Identity that records NAT_MM_CUDA_KERNEL in its forward and its backward."""
    seen = []

    @staticmethod
    def forward(ctx, x):
        _RecordEnv.seen.append(('forward', os.environ.get('NAT_MM_CUDA_KERNEL')))
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        _RecordEnv.seen.append(('backward', os.environ.get('NAT_MM_CUDA_KERNEL')))
        return grad


def test_run_once_sets_backend_environment_for_forward_and_backward(monkeypatch):
    monkeypatch.delenv('NAT_MM_CUDA_KERNEL', raising=False)

    def fn(q, k, v, layer, rpb):
        return _RecordEnv.apply(q)

    fn.env = {'NAT_MM_CUDA_KERNEL': 'reference'}
    _RecordEnv.seen.clear()
    inputs = _inputs(4, 4, 3, requires_grad=True)
    benchmark_op.run_once(fn, inputs, None, True, 'cpu')
    assert _RecordEnv.seen == [('forward', 'reference'), ('backward', 'reference')]
    assert 'NAT_MM_CUDA_KERNEL' not in os.environ
    monkeypatch.setenv('NAT_MM_CUDA_KERNEL', 'tiled')
    with benchmark_op.environment({'NAT_MM_CUDA_KERNEL': 'reference'}):
        assert os.environ['NAT_MM_CUDA_KERNEL'] == 'reference'
    assert os.environ['NAT_MM_CUDA_KERNEL'] == 'tiled'


def test_bench_layer_reports_a_failing_backend_and_times_the_others():
    def gather(q, k, v, layer, rpb):
        return benchmark_op._torch_impl.na2d(q, k, v, (3, 3), (1, 1), rpb, q.shape[-1] ** -0.5)

    def broken(q, k, v, layer, rpb):
        return q

    def prepare(layer, device):
        raise RuntimeError('no kernel for this shape')

    broken.prepare = prepare
    backends = {'nat_mm': (gather, True), 'broken': (broken, True)}
    args = argparse.Namespace(device='cpu', dtype=torch.float32, repeats=1)
    rows = benchmark_op.bench_layer(benchmark_op.Layer('t', 8, 9, 2, D=8, kernel=3), backends,
                                    args)
    assert [(r['mode'], r['backend']) for r in rows] == [
        ('fwd', 'nat_mm'), ('fwd', 'broken'), ('fwd+bwd', 'nat_mm'), ('fwd+bwd', 'broken')]
    for row in rows:
        if row['backend'] == 'nat_mm':
            assert row['median_ms'] > 0 and row['ratio_to_nat_mm'] == 1
        else:
            assert row['median_ms'] is None
            assert row['note'] == 'failed: RuntimeError: no kernel for this shape'


@pytest.mark.slow
def test_cli_smoke_run_with_flex_writes_json(tmp_path):
    """The tool end to end on the CPU: flex is timed forward, and has no CPU backward."""
    out = tmp_path / 'op.json'
    proc = tool('tools/benchmark_op.py', '--device', 'cpu', '--shapes', 'smoke', '--backends',
                'flex', 'gather', '--repeats', '1', '--json', str(out), timeout=600,
                env=dict(ENV, OMP_NUM_THREADS='2'))
    rows = json.loads(out.read_text())['rows']
    got = {(r['mode'], r['backend']): r for r in rows}
    assert set(got) == {(m, b) for m in ('fwd', 'fwd+bwd') for b in ('nat_mm', 'gather', 'flex')}
    assert got['fwd', 'flex']['median_ms'] > 0
    assert got['fwd+bwd', 'flex']['note'] == 'no backward on this device'
    assert 'flex' in proc.stdout
