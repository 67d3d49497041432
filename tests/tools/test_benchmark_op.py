"""tools/benchmark_op.py's peers and plumbing: the FlexAttention backends (flex: row-major tokens,
flex_tiled: 2-D tiles; nat_mm/ops/_flex.py, whose own tests are tests/ops/test_flex.py) compute NA
compiled, the block statistics come from their BlockMasks, and the backends' environment
(nat_mm_ref) and set-up hooks behave. No timings are asserted."""
import argparse
import json
import os

import pytest
import torch

from nat_mm.testing.na_reference import TOL, reference_na2d
from nat_mm.testing.tools import ENV, tool

from nat_mm.ops import _torch_impl
from nat_mm.utils import na_benchmark  # tools/benchmark_op.py's backends and timing
from nat_mm.utils.benchmark import Layer, environment

FLEX_BACKENDS = ['flex', 'flex_tiled']


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _inputs(H, W, kernel_size, heads=3, D=16, B=2, device='cpu', dtype=torch.float32,
            requires_grad=False):
    kh, kw = _pair(kernel_size)
    tensors = [torch.randn(B, H, W, heads, D, device=device, dtype=dtype) for _ in range(3)]
    rpb = torch.randn(heads, 2 * kh - 1, 2 * kw - 1, device=device, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in tensors + [rpb]]


@pytest.mark.slow
@pytest.mark.parametrize('backend', FLEX_BACKENDS)
def test_flex_backend_compiled_cpu_matches_reference(backend):
    """The benchmark's flex backends, compiled on the CPU (forward only there), are exact NA."""
    fn, has_backward = na_benchmark.make_backends('cpu')[backend]
    assert not has_backward
    for H, W, kernel_size, dilation in [(13, 17, 3, 2), (18, 23, 7, 2)]:
        layer = Layer('t', H, W, 2, D=16, kernel=kernel_size, dilation=dilation)
        fn.prepare(layer, 'cpu')
        q, k, v, rpb = _inputs(H, W, kernel_size, heads=2)
        out = fn(q, k, v, layer, rpb)
        ref = reference_na2d(q, k, v, _pair(kernel_size), _pair(dilation), rpb)
        torch.testing.assert_close(out.double(), ref, **TOL[torch.float32])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('backend', FLEX_BACKENDS)
def test_flex_backend_cuda_forward_backward_matches_reference(backend):
    """Compiled FlexAttention on CUDA: output and the gradients of q, k, v and rpb (float32;
    one dtype, as each compilation costs device time)."""
    dtype = torch.float32
    fn, has_backward = na_benchmark.make_backends('cuda')[backend]
    assert has_backward
    H, W, kernel_size, dilation = 19, 26, 7, 2
    layer = Layer('t', H, W, 2, kernel=kernel_size, dilation=dilation)
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
def test_forced_kernel_backends_cuda_match_nat_mm():
    """triton, tiled and nat_mm_ref (NAT_MM_CUDA_KERNEL=...) and nat_mm compute the same
    attention (float32: triton runs its 'ieee' dots there)."""
    backends = na_benchmark.make_backends('cuda')
    layer = Layer('t', 21, 30, 2)
    inputs = _inputs(21, 30, 7, heads=2, D=32, B=1, device='cuda', requires_grad=True)
    results = []
    for name in ('nat_mm', 'nat_mm_ref', 'tiled', 'triton'):
        fn = backends[name][0]
        with environment(getattr(fn, 'env', {})):
            out = fn(*inputs[:3], layer, inputs[3])
            results.append([out] + list(torch.autograd.grad(out.sum(), inputs)))
    for other in results[1:]:
        for got, want in zip(other, results[0]):
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
    na_benchmark.run_once(fn, inputs, None, True, 'cpu')
    assert _RecordEnv.seen == [('forward', 'reference'), ('backward', 'reference')]
    assert 'NAT_MM_CUDA_KERNEL' not in os.environ
    monkeypatch.setenv('NAT_MM_CUDA_KERNEL', 'tiled')
    with environment({'NAT_MM_CUDA_KERNEL': 'reference'}):
        assert os.environ['NAT_MM_CUDA_KERNEL'] == 'reference'
    assert os.environ['NAT_MM_CUDA_KERNEL'] == 'tiled'


def test_bench_layer_reports_a_failing_backend_and_times_the_others():
    def gather(q, k, v, layer, rpb):
        return _torch_impl.na2d(q, k, v, (3, 3), (1, 1), rpb, q.shape[-1] ** -0.5)

    def broken(q, k, v, layer, rpb):
        return q

    def prepare(layer, device):
        raise RuntimeError('no kernel for this shape')

    broken.prepare = prepare
    backends = {'nat_mm': (gather, True), 'broken': (broken, True)}
    args = argparse.Namespace(device='cpu', dtype=torch.float32, repeats=1)
    rows = na_benchmark.bench_layer(Layer('t', 8, 9, 2, D=8, kernel=3), backends,
                                    args.device, args.dtype, args.repeats)
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
    """The tool end to end on the CPU: flex and flex_tiled are timed forward, and have no CPU
    backward."""
    out = tmp_path / 'op.json'
    proc = tool('tools/benchmark_op.py', '--device', 'cpu', '--shapes', 'smoke', '--backends',
                'flex', 'flex_tiled', 'gather', '--repeats', '1', '--json', str(out),
                timeout=600, env=dict(ENV, OMP_NUM_THREADS='2'))
    rows = json.loads(out.read_text())['rows']
    got = {(r['mode'], r['backend']): r for r in rows}
    assert set(got) == {(m, b) for m in ('fwd', 'fwd+bwd')
                        for b in ['nat_mm', 'gather'] + FLEX_BACKENDS}
    for backend in FLEX_BACKENDS:
        assert got['fwd', backend]['median_ms'] > 0
        assert got['fwd+bwd', backend]['note'] == 'no backward on this device'
    assert 'flex' in proc.stdout and 'flex_tiled' in proc.stdout


def test_block_stats_rows_come_from_the_block_masks():
    """--block-stats' rows: row-major, tiled 8x16, and tiled with the best tile when it is
    better. On a 50x76 map at 7x7, d=3, the 8x16 tiles visit about a third of row-major's key
    blocks; at d=1, with blocks 1.7 rows long, row-major visits fewer (5 against 9 at most)."""
    layer = Layer('L3', 50, 76, 8)
    rows = na_benchmark.block_stats_rows([layer], [(1, 3)])
    assert [(r['dilation'], r['order'], r['tile']) for r in rows] == [
        (1, 'row_major', '-'), (1, 'tiled', '8x16'), (1, 'tiled', '32x4'),
        (3, 'row_major', '-'), (3, 'tiled', '8x16'), (3, 'tiled', '4x32')]
    by = {(r['dilation'], r['tile']): r for r in rows}
    assert by[1, '-']['tokens'] == 50 * 76 and by[1, '8x16']['tokens'] == 56 * 80
    assert by[3, '8x16']['visited_mean'] < by[3, '-']['visited_mean'] / 2
    assert by[1, '-']['visited_max'] == 5 and by[1, '8x16']['visited_max'] == 9
    for r in rows:
        assert r['work'] > 1 and r['q_blocks'] == -(-r['tokens'] // 128)
    assert by[1, '32x4']['work'] < by[1, '8x16']['work']


@pytest.mark.slow
def test_cli_block_stats_prints_table_and_json(tmp_path):
    out = tmp_path / 'blocks.json'
    proc = tool('tools/benchmark_op.py', '--block-stats', '--json', str(out), timeout=600)
    rows = json.loads(out.read_text())['rows']
    assert len(rows) >= 2 * sum(map(len, na_benchmark.BLOCK_STATS_DILATIONS))
    assert 'key blocks visited per 128-token query block' in proc.stdout
    assert 'L1@800x1216' in proc.stdout and 'tiled' in proc.stdout


@pytest.mark.parametrize('length,kernel,dilation', [(7, 7, 1), (30, 7, 1), (23, 5, 2),
                                                    (29, 3, 4), (40, 7, 3)])
def test_inverse_window_bounds_are_the_design_rule(length, kernel, dilation):
    """The inverse neighbourhood derived from window_indices (what tools/na_speed_model.py uses)
    is exactly the queries whose window holds each key, and the closed form of docs/design.md
    section 3: from (j < k*d ? j % d : j - r*d) to (j >= L - k*d ? L : j + (r+1)*d), step d."""
    keys, _ = _torch_impl.window_indices(length, kernel, dilation, None)
    first, stop = _torch_impl.inverse_window_bounds(length, kernel, dilation)
    r = kernel // 2
    for j in range(length):
        holders = [i for i in range(length) if j in keys[i].tolist()]
        assert list(range(first[j], stop[j], dilation)) == holders, j
        lo = j % dilation if j < kernel * dilation else j - r * dilation
        hi = length if j >= length - kernel * dilation else j + (r + 1) * dilation
        assert list(range(lo, hi, dilation)) == holders, j


def test_speed_model_tiles_and_the_shared_layer_shapes():
    """NAT-Tiny's layers round up (the backbone's stride-2 convs with padding 1), and the speed
    model's staged extents are the window spans: a 7x7 window over an 8-query tile stages 14
    rows inside the map and 11 at its first border (the window shifts inward)."""
    from nat_mm.utils.benchmark import nat_tiny_layers
    from nat_mm.utils.speed_model import axis_tiles

    assert [(la.H, la.W, la.heads) for la in nat_tiny_layers(100, 167)] == [
        (25, 42, 2), (13, 21, 4), (7, 11, 8), (4, 6, 16)]
    tiles = axis_tiles(40, 7, 8)
    assert [p0 for p0, _, _ in tiles] == [0, 8, 16, 24, 32]
    assert tiles[0][1] == 11 and tiles[1][1] == 14 and tiles[-1][1] == 11
    assert tiles[0][2] == 11 and tiles[1][2] == 14
