"""nat_mm.ops against the float64 oracle of nat_mm.testing.na_reference: every backend on this
machine."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nat_mm.testing.na_reference import TOL, reference_av, reference_logits, reference_na2d
from nat_mm.ops import _torch_impl, extension_has_cuda, na2d, na2d_av, na2d_qk

# `make test-fuzz` (NAT_MM_FUZZ=1, see conftest.py): the hypothesis tests with 10x the examples.
FUZZ_SCALE = 10 if os.environ.get('NAT_MM_FUZZ') else 1
DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


def torch_backend(q, k, v, kernel_size, dilation, rpb, scale=None):
    """The pure-PyTorch fallback, called directly (the public API uses the compiled ops)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _torch_impl.na2d(q, k, v, kernel_size, dilation, rpb, scale)


BACKENDS = {'compiled': na2d, 'torch': torch_backend}


def make_inputs(shape, kernel_size, dtype=torch.float64, device='cpu', with_rpb=True):
    q, k, v = (torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
               for _ in range(3))
    rpb = None
    if with_rpb:
        rpb = torch.randn(shape[3], 2 * kernel_size[0] - 1, 2 * kernel_size[1] - 1, dtype=dtype,
                          device=device, requires_grad=True)
    return q, k, v, rpb


def assert_matches_reference(fn, shape, kernel_size, dilation, with_rpb, dtype=torch.float64,
                             device='cpu'):
    inputs = make_inputs(shape, kernel_size, dtype, device, with_rpb)
    ref_inputs = [None if t is None else t.detach().cpu().double().requires_grad_()
                  for t in inputs]
    out = fn(*inputs[:3], kernel_size, dilation, inputs[3])
    ref = reference_na2d(*ref_inputs[:3], kernel_size, dilation, ref_inputs[3])
    tol = TOL[dtype]
    torch.testing.assert_close(out.double().cpu(), ref, **tol)
    grad_out = torch.randn_like(out)
    names = [n for n, t in zip(('q', 'k', 'v', 'rpb'), inputs) if t is not None]
    got = torch.autograd.grad(out, [t for t in inputs if t is not None], grad_out)
    want = torch.autograd.grad(ref, [t for t in ref_inputs if t is not None],
                               grad_out.double().cpu())
    for name, g, w in zip(names, got, want):
        # rpb sums over every query: its error grows with the map, so compare relative to scale
        scale = 1.0 if name != 'rpb' else max(1.0, w.abs().max().item())
        torch.testing.assert_close(g.double().cpu() / scale, w / scale, **tol,
                                   msg=lambda m, n=name: f'grad {n}: {m}')


@st.composite
def na_cases(draw):
    kh = draw(st.sampled_from([3, 5, 7, 9, 11, 13]))
    kw = draw(st.sampled_from([3, 5, 7, 9, 11, 13]))
    dh, dw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    # extra length beyond k*d, so every drawn case is valid (0 gives L == k*d)
    H = kh * dh + draw(st.integers(0, 9))
    W = kw * dw + draw(st.integers(0, 9))
    B, heads, D = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.sampled_from([1, 4, 8]))
    return (B, H, W, heads, D), (kh, kw), (dh, dw), draw(st.booleans())


@pytest.mark.parametrize('backend', list(BACKENDS))
@settings(deadline=None, max_examples=30 * FUZZ_SCALE)
@given(case=na_cases())
@example(case=((1, 7, 7, 1, 4), (7, 7), (1, 1), True))  # L == k
@example(case=((2, 13, 12, 2, 8), (3, 5), (4, 2), True))  # L not divisible by d
@example(case=((1, 26, 13, 1, 4), (13, 13), (2, 1), False))  # the largest kernel, L == k*d
def test_na2d_matches_reference(backend, case):
    shape, kernel_size, dilation, with_rpb = case
    assert_matches_reference(BACKENDS[backend], shape, kernel_size, dilation, with_rpb)


# The CPU kernels take interior queries (and keys) 8 (float) or 4 (double) at a time, one SIMD lane
# each, and the rest one by one; rows must be wide (at least k + 8 groups per residue class) to
# reach the lane path, which the randomized cases above rarely are. These cover lanes plus
# leftovers, several heads, dilated residue classes of unequal length, head dims that are not a
# multiple of the register blocking, and the boundaries of the row bands (8 to 16 rows).
@pytest.mark.parametrize('shape,kernel_size,dilation', [
    ((2, 19, 41, 3, 5), (7, 7), (1, 1)),
    ((1, 12, 45, 2, 16), (5, 3), (1, 2)),
    ((1, 27, 70, 2, 8), (3, 7), (3, 3)),
    ((1, 9, 53, 1, 32), (9, 9), (1, 1)),
    ((1, 20, 131, 1, 12), (13, 5), (1, 4)),
], ids=['k7', 'k5x3-d1x2', 'k3x7-d3', 'k9-D32', 'k13x5-d1x4'])
@pytest.mark.parametrize('with_rpb', [True, False], ids=['rpb', 'no_rpb'])
def test_na2d_wide_rows_match_reference(shape, kernel_size, dilation, with_rpb):
    assert_matches_reference(na2d, shape, kernel_size, dilation, with_rpb)
    assert_matches_reference(na2d, shape, kernel_size, dilation, with_rpb, torch.float32)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16],
                         ids=['fp32', 'bf16', 'fp16'])
@pytest.mark.parametrize('kernel_size,dilation', [((7, 7), (1, 1)), ((5, 3), (2, 3))])
def test_na2d_dtypes(device, dtype, kernel_size, dilation):
    if device == 'cuda' and not extension_has_cuda():
        pytest.fail('CUDA is available but the extension has no CUDA kernels')
    assert_matches_reference(na2d, (2, 19, 37, 2, 32), kernel_size, dilation, True, dtype,
                             device)


def assert_qk_av_match_reference(shape, kernel_size, dilation, with_rpb):
    q, k, v, rpb = make_inputs(shape, kernel_size, with_rpb=with_rpb)
    attn = na2d_qk(q, k, kernel_size, dilation, rpb)
    torch.testing.assert_close(attn, reference_logits(q, k, kernel_size, dilation, rpb))
    weights = torch.randn_like(attn, requires_grad=True)
    out = na2d_av(weights, v, kernel_size, dilation)
    torch.testing.assert_close(out, reference_av(weights, v, kernel_size, dilation))
    g_attn, g_out = torch.randn_like(attn), torch.randn_like(out)
    inputs = [t for t in (q, k, rpb) if t is not None]
    torch.testing.assert_close(
        torch.autograd.grad(attn, inputs, g_attn),
        torch.autograd.grad(reference_logits(q, k, kernel_size, dilation, rpb), inputs, g_attn))
    torch.testing.assert_close(
        torch.autograd.grad(out, (weights, v), g_out),
        torch.autograd.grad(reference_av(weights, v, kernel_size, dilation), (weights, v), g_out))


@settings(deadline=None, max_examples=20 * FUZZ_SCALE)
@given(case=na_cases())
def test_qk_av_match_reference(case):
    assert_qk_av_match_reference(*case)


@pytest.mark.parametrize('with_rpb', [True, False], ids=['rpb', 'no_rpb'])
@pytest.mark.parametrize('kernel_size,dilation', [((3, 3), (1, 1)), ((3, 5), (2, 1))])
def test_gradcheck_compiled(kernel_size, dilation, with_rpb):
    q, k, v, rpb = make_inputs((1, 7, 11, 2, 3), kernel_size, with_rpb=with_rpb)
    inputs = [q, k, v] + ([rpb] if with_rpb else [])

    def fused(q, k, v, *rpb):
        return na2d(q, k, v, kernel_size, dilation, rpb[0] if rpb else None, scale=0.7)

    def unfused(q, k, v, *rpb):
        attn = na2d_qk(q, k, kernel_size, dilation, rpb[0] if rpb else None)
        return na2d_av(attn.softmax(-1), v, kernel_size, dilation)

    assert torch.autograd.gradcheck(fused, inputs)
    assert torch.autograd.gradcheck(unfused, inputs)


def test_opcheck():
    from torch.library import opcheck

    shape, ks, dil = (1, 8, 9, 2, 4), [3, 3], [2, 1]
    for requires_grad in (False, True):
        q, k, v, rpb = make_inputs(shape, ks, dtype=torch.float32)
        for t in (q, k, v, rpb):
            t.requires_grad_(requires_grad)
        attn = torch.randn(*shape[:4], 9, requires_grad=requires_grad)
        opcheck(torch.ops.nat_mm.na2d_forward, (q, k, v, rpb, ks, dil, 0.5))
        opcheck(torch.ops.nat_mm.na2d_forward, (q, k, v, None, ks, dil, 0.5))
        opcheck(torch.ops.nat_mm.na2d_qk_forward, (q, k, rpb, ks, dil))
        opcheck(torch.ops.nat_mm.na2d_av_forward, (attn, v, ks, dil))


def test_strided_qkv_views():
    """q, k, v sliced from one qkv projection work without the caller copying."""
    B, H, W, heads, D = 2, 10, 12, 2, 8
    qkv = torch.randn(B, H, W, 3 * heads * D, dtype=torch.float64)
    q, k, v = qkv.view(B, H, W, 3, heads, D).unbind(3)
    assert not q.is_contiguous()
    rpb = torch.randn(heads, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(na2d(q, k, v, 3, 2, rpb),
                               reference_na2d(q, k, v, (3, 3), (2, 2), rpb))
    # a non-unit stride on D too (the op copies internally)
    qt = torch.randn(B, H, W, D, heads, dtype=torch.float64).transpose(3, 4)
    torch.testing.assert_close(na2d(qt, k, v, 3), reference_na2d(qt, k, v, (3, 3), (1, 1)))


def test_rpb_grad_deterministic():
    q, k, v, rpb = make_inputs((2, 20, 21, 2, 8), (5, 5), dtype=torch.float32)
    first = torch.autograd.grad(na2d(q, k, v, 5, 2, rpb).sum(), rpb)[0]
    for _ in range(3):
        again = torch.autograd.grad(na2d(q, k, v, 5, 2, rpb).sum(), rpb)[0]
        assert torch.equal(first, again)


@pytest.mark.parametrize('threads', [1, 2, 3])
def test_na2d_thread_counts(threads):
    # The row bands (10 of 8 rows here, so uneven for 3 threads) are split over the threads;
    # drpb goes through per-thread buffers.
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert_matches_reference(na2d, (1, 40, 45, 2, 16), (7, 7), (1, 2), True, torch.float32)
        assert_qk_av_match_reference((1, 30, 20, 2, 8), (5, 5), (2, 1), True)
    finally:
        torch.set_num_threads(previous)


# Runs in a fresh process: measures how much CPU time each OS thread of the process spent in the
# NA kernels (/proc/self/task/*/schedstat, ns; utime + stime ticks where schedstat is missing).
_THREAD_SHARES = textwrap.dedent('''
    import glob, json, os, sys, torch
    from nat_mm.ops import extension_loaded, na2d
    assert extension_loaded()
    main_tid = str(os.getpid())

    def cpu_ns():
        times = {}
        for task in glob.glob('/proc/self/task/*'):
            try:
                with open(task + '/schedstat') as f:
                    times[os.path.basename(task)] = int(f.read().split()[0])
            except OSError:
                with open(task + '/stat') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
                times[os.path.basename(task)] = (int(fields[11]) + int(fields[12])) * 10**7
        return times

    def worker_share(fn, reps):
        fn()  # warm-up: starts the thread pool
        before = cpu_ns()
        for _ in range(reps):
            fn()
        after = cpu_ns()
        delta = {t: after[t] - before.get(t, 0) for t in after}
        total = sum(delta.values())
        return max([d for t, d in delta.items() if t != main_tid] or [0]) / total

    q, k, v = (torch.randn(1, 48, 96, 4, 32, requires_grad=True) for _ in range(3))
    rpb = torch.randn(4, 13, 13, requires_grad=True)
    out = na2d(q, k, v, 7, 2, rpb)
    grad = torch.randn_like(out)

    def forward():
        with torch.no_grad():
            na2d(q, k, v, 7, 2, rpb)

    def backward():
        torch.autograd.grad(out, (q, k, v, rpb), grad, retain_graph=True)

    shares = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        shares[threads] = [worker_share(forward, 20), worker_share(backward, 10)]
    print(json.dumps(shares))
''')


@pytest.mark.skipif(not os.path.isdir('/proc/self/task'), reason='needs Linux /proc')
@pytest.mark.slow  # a subprocess: 6-8 s here
def test_kernels_run_on_several_threads():
    """With 2 threads the second OS thread does about half the kernels' work, forward and
    backward; with 1 thread none. (The kernels ran single-threaded until the build passed
    -fopenmp: at::parallel_for, a header template, runs serially in a file compiled without it.)"""
    env = {k: v for k, v in os.environ.items() if k not in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')}
    result = subprocess.run([sys.executable, '-c', _THREAD_SHARES], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    shares = json.loads(result.stdout.strip().splitlines()[-1])
    # (forward, backward) share of the busiest non-main thread; an even split is 0.5
    print(shares)
    assert all(s < 0.05 for s in shares['1']), shares
    assert all(s > 0.3 for s in shares['2']), shares


class Attend(torch.nn.Module):

    def __init__(self, heads=2, dim=16, kernel_size=3, dilation=2):
        super().__init__()
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.rpb = torch.nn.Parameter(torch.randn(heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        self.heads, self.kernel_size, self.dilation = heads, kernel_size, dilation

    def forward(self, x):
        B, H, W, C = x.shape
        q, k, v = self.qkv(x).view(B, H, W, 3, self.heads, C // self.heads).unbind(3)
        fused = na2d(q, k, v, self.kernel_size, self.dilation, self.rpb)
        attn = na2d_qk(q * 0.5, k, self.kernel_size, self.dilation, self.rpb).softmax(-1)
        return fused + na2d_av(attn, v, self.kernel_size, self.dilation)


@pytest.mark.parametrize('backend', ['aot_eager', pytest.param('inductor', marks=pytest.mark.slow)])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    model = Attend()
    x = torch.randn(2, 9, 10, 16, requires_grad=True)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    out, ref = compiled(x), model(x)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, [x, model.rpb], g),
                               torch.autograd.grad(ref, [x, model.rpb], g))


# -- bad inputs ----------------------------------------------------------------------------------

def _qkv(shape=(1, 10, 10, 2, 4), dtype=torch.float32):
    return [torch.randn(shape, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(kernel_size=4), ValueError, 'kernel_size must be odd'),
    (dict(kernel_size=0), ValueError, 'kernel_size must be odd'),
    (dict(kernel_size=-3), ValueError, 'kernel_size must be odd'),
    (dict(kernel_size=(3, 3, 3)), TypeError, 'kernel_size must be an int or a pair'),
    (dict(kernel_size=True), TypeError, 'kernel_size must be an int or a pair'),
    (dict(kernel_size=3.0), TypeError, 'kernel_size must be an int or a pair'),
    (dict(kernel_size=3, dilation=0), ValueError, 'dilation must be >= 1'),
    (dict(kernel_size=3, dilation=(1, True)), TypeError, 'dilation must be an int or a pair'),
    (dict(kernel_size=3, dilation=4), ValueError, r'too small on axis H.*minimum'),
    (dict(kernel_size=(3, 11)), ValueError, r'too small on axis W: W=10.*11 \* 1 = 11'),
    (dict(kernel_size=3, scale='x'), TypeError, 'scale must be a float'),
])
def test_bad_arguments(kwargs, error, match):
    q, k, v = _qkv()
    with pytest.raises(error, match=match):
        na2d(q, k, v, **kwargs)


def test_bad_tensors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match='must be 5-D'):
        na2d(q[0], k[0], v[0], 3)
    with pytest.raises(ValueError, match='query and key must have the same shape'):
        na2d(q, k[:, :9], v, 3)
    with pytest.raises(ValueError, match='query and value must have the same shape'):
        na2d(q, k, v[..., :3], 3)
    with pytest.raises(TypeError, match='float16, bfloat16, float32 or float64'):
        na2d(q.long(), k.long(), v.long(), 3)
    with pytest.raises(TypeError, match='one dtype'):
        na2d(q, k.double(), v, 3)
    with pytest.raises(TypeError, match='must be a torch.Tensor'):
        na2d(q, k.numpy(), v, 3)
    with pytest.raises(ValueError, match=r'rpb must be \[heads, 2\*kh-1, 2\*kw-1\] = \[2, 5, 5\]'):
        na2d(q, k, v, 3, rpb=torch.zeros(2, 3, 3))
    with pytest.raises(TypeError, match='one dtype'):
        na2d(q, k, v, 3, rpb=torch.zeros(2, 5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match='one device'):
        na2d(q, k, v.to('meta'), 3)
    with pytest.raises(ValueError, match=r'attn must be \[B, H, W, heads, kh\*kw\]'):
        na2d_av(torch.randn(1, 10, 10, 2, 8), v, 3)
    with pytest.raises(ValueError, match='too small on axis H'):
        na2d_qk(q[:, :2], k[:, :2], 3)


def _subprocess_env():
    """The environment for a python subprocess that imports nat_mm (and nat_mm.testing) from
    this checkout."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = [root] + [p for p in [os.environ.get('PYTHONPATH')] if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path))


@pytest.mark.slow  # a subprocess: 6-8 s here
def test_fallback_warns_once_and_is_correct(tmp_path):
    """Without nat_mm._C (and no JIT build), the ops warn once, naming the build command, and
    the pure-PyTorch path they fall back to gives the oracle's outputs and gradients."""
    script = textwrap.dedent('''
        import sys, warnings
        sys.modules['nat_mm._C'] = None  # the prebuilt extension is missing
        import torch
        from nat_mm.testing.na_reference import reference_av, reference_logits, reference_na2d
        from nat_mm.ops import na2d, na2d_av, na2d_qk, extension_loaded
        torch.manual_seed(0)
        q, k, v = (torch.randn(2, 9, 11, 2, 4, dtype=torch.float64, requires_grad=True)
                   for _ in range(3))
        rpb = torch.randn(2, 5, 9, dtype=torch.float64, requires_grad=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            out = na2d(q, k, v, (3, 5), (2, 1), rpb, scale=0.7)
            attn = na2d_qk(q, k, (3, 5), (2, 1), rpb)
            av = na2d_av(attn.softmax(-1), v, (3, 5), (2, 1))
        messages = [str(w.message) for w in caught if 'nat_mm' in str(w.message)]
        assert len(messages) == 1, messages
        assert 'pip install --no-build-isolation -e .' in messages[0], messages[0]
        assert not extension_loaded()
        ref = reference_na2d(q, k, v, (3, 5), (2, 1), rpb, scale=0.7)
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
        ref_attn = reference_logits(q, k, (3, 5), (2, 1), rpb)
        torch.testing.assert_close(attn, ref_attn, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(av, reference_av(ref_attn.softmax(-1), v, (3, 5), (2, 1)),
                                   atol=1e-10, rtol=1e-10)
        g = torch.randn_like(out)
        inputs = (q, k, v, rpb)
        for got, want in zip(torch.autograd.grad(out, inputs, g),
                             torch.autograd.grad(ref, inputs, g)):
            torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
        print('ok')
    ''')
    env = dict(_subprocess_env(), NAT_MM_NO_JIT='1')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'ok'


@pytest.mark.slow  # a subprocess: 6-8 s here
def test_no_kernel_for_the_device_warns_once_and_falls_back(tmp_path):
    """Tensors on a device the build has no kernel for (here 'meta') take the pure-PyTorch
    path, with one warning naming the device."""
    script = textwrap.dedent('''
        import warnings
        import torch
        from nat_mm.ops import na2d, na2d_qk
        q = k = v = torch.randn(2, 9, 10, 2, 4, device='meta')
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            out = na2d(q, k, v, 3, 2)
            attn = na2d_qk(q, k, 3, 2)
        messages = [str(w.message) for w in caught if 'nat_mm' in str(w.message)]
        assert len(messages) == 1, messages
        assert "no compiled neighborhood-attention kernel for device 'meta'" in messages[0]
        assert out.device.type == 'meta' and out.shape == q.shape
        assert attn.shape == (2, 9, 10, 2, 9)
        print('ok')
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            cwd=tmp_path, env=_subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'ok'


@pytest.mark.slow
def test_jit_build_fallback(tmp_path):
    """Without the prebuilt nat_mm._C, a source checkout JIT-builds the kernels with ninja (into
    $NAT_MM_CACHE/jit) and uses them: the oracle's outputs. Built here without the CUDA kernels
    (NAT_MM_NO_CUDA: nvcc for every arch would take minutes), so the one warning says that CUDA
    tensors take the slow path, on a torch with CUDA."""
    script = textwrap.dedent('''
        import sys, warnings
        sys.modules['nat_mm._C'] = None  # no prebuilt extension
        import torch
        from nat_mm.testing.na_reference import reference_na2d
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            from nat_mm.ops import extension_has_cuda, extension_loaded, na2d
            assert extension_loaded() and not extension_has_cuda()
            q, k, v = (torch.randn(1, 11, 12, 2, 8, dtype=torch.float64) for _ in range(3))
            rpb = torch.randn(2, 5, 5, dtype=torch.float64)
            out = na2d(q, k, v, 3, 2, rpb)
        messages = [str(w.message) for w in caught if 'nat_mm' in str(w.message)]
        expected = 1 if torch.version.cuda is not None else 0
        assert len(messages) == expected, messages
        assert all('CUDA tensors will use the slow pure-PyTorch implementation' in m
                   for m in messages), messages
        assert 'nat_mm._C' not in [m for m in sys.modules if sys.modules[m] is not None]
        torch.testing.assert_close(out, reference_na2d(q, k, v, (3, 3), (2, 2), rpb))
        print(torch.ops.nat_mm.na2d_forward.default._schema.name)
    ''')
    env = _subprocess_env()
    env.pop('NAT_MM_NO_JIT', None)
    env['NAT_MM_NO_CUDA'] = '1'
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    assert result.stdout.strip().splitlines()[-1] == 'nat_mm::na2d_forward'


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('with_rpb', [True, False])
@settings(deadline=None, max_examples=15 * FUZZ_SCALE)
@given(case=na_cases())
def test_cuda_float64_matches_reference(with_rpb, case):
    shape, kernel_size, dilation, _ = case
    assert_matches_reference(na2d, shape, kernel_size, dilation, with_rpb, device='cuda')


def test_natten_agrees_with_reference():
    """Our oracle agrees with natten 0.21.7 (our peer) where natten runs: CPU forward, no rpb."""
    natten = pytest.importorskip('natten')
    for shape, kernel_size, dilation in [((1, 15, 13, 2, 8), (5, 3), (2, 3)),
                                         ((2, 14, 21, 2, 16), (7, 7), (2, 3))]:  # natten needs D >= 8
        q, k, v = (torch.randn(shape) for _ in range(3))
        ours = na2d(q, k, v, kernel_size, dilation)
        theirs = natten.na2d(q, k, v, kernel_size=kernel_size, dilation=dilation)
        ref = reference_na2d(q, k, v, kernel_size, dilation)
        torch.testing.assert_close(theirs.double(), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=1e-5)
