"""The Triton kernels of the fused na2d against the float64 oracle, forward and backward.

Without a GPU they run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set here
before the kernels are first defined); on a GPU (tools/gpu/check.sh) the same tests run the
compiled kernels on CUDA tensors, bfloat16 included. The interpreter computes ``tl.dot`` in numpy,
which has no bfloat16 (it returns garbage there), so bfloat16 is tested on a GPU only. The
interpreter is slow: the maps are small, but they cover every rule the kernels implement (tile
edges, unequal dilation groups, L == k * d, non-square maps and kernels, k 3..13, D 16..128,
strided inputs, every tile config), and a test plants bugs in a copy of the kernels and checks
that these comparisons catch each one.
"""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

ON_GPU = torch.cuda.is_available()
DEVICE = 'cuda' if ON_GPU else 'cpu'
if not ON_GPU:
    # conftest.py sets it first (before anything imports triton); this covers --noconftest
    os.environ.setdefault('TRITON_INTERPRET', '1')
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from nat_mm.testing.na_reference import TOL, reference_na2d  # noqa: E402
from nat_mm.ops import _dispatch, _triton, na2d  # noqa: E402
from nat_mm.ops import _triton_kernels as kernels  # noqa: E402

if not ON_GPU and not isinstance(kernels.na2d_fwd_kernel, InterpretedFunction):
    raise RuntimeError('triton was imported before TRITON_INTERPRET=1 was set in this process: '
                       'the Triton kernels cannot run on the CPU (tests/conftest.py sets it)')

DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
# Gradients: dq/dk/dv as the outputs; drpb sums over every query, so it is compared relative to
# its largest entry.
CFG_8x8, CFG_16x8, CFG_8x16 = _triton.CONFIGS


def make_case(shape, kernel_size, dilation, dtype, with_rpb, strided=False):
    """Inputs in ``dtype`` (q/k/v optionally as slices of one qkv tensor) and their float64
    twins that need grad, for the oracle."""
    B, H, W, heads, D = shape
    if strided:
        qkv = torch.randn(B, H, W, 3, heads, D, dtype=torch.float64)
        q, k, v = qkv.to(DEVICE, dtype).unbind(3)  # views with the qkv projection's strides
    else:
        q, k, v = (torch.randn(shape, dtype=torch.float64).to(DEVICE, dtype) for _ in range(3))
    rpb = None
    if with_rpb:
        rpb = torch.randn(heads, 2 * kernel_size[0] - 1, 2 * kernel_size[1] - 1,
                          dtype=torch.float64).to(DEVICE, dtype)
    return q, k, v, rpb


def oracle(q, k, v, rpb, kernel_size, dilation, grad_out):
    """(out, dq, dk, dv, drpb) of the float64 reference on the same (rounded) inputs."""
    ref_in = [None if t is None else t.detach().cpu().double().requires_grad_()
              for t in (q, k, v, rpb)]
    out = reference_na2d(*ref_in[:3], kernel_size, dilation, ref_in[3])
    wanted = [t for t in ref_in if t is not None]
    grads = torch.autograd.grad(out, wanted, grad_out.cpu().double())
    return (out, *grads[:3], grads[3] if rpb is not None else None)


def assert_case(shape, kernel_size, dilation, dtype, with_rpb, config, strided=False,
                module=None):
    """Forward and backward launchers with ``config`` against the oracle."""
    q, k, v, rpb = make_case(shape, kernel_size, dilation, dtype, with_rpb, strided)
    scale = shape[-1] ** -0.5
    out, lse = _triton.forward(q, k, v, rpb, kernel_size, dilation, scale, config=config)
    grad_out = torch.randn(shape, dtype=torch.float64).to(DEVICE, dtype)
    dq, dk, dv, drpb = _triton.backward(grad_out, q, k, v, rpb, out, lse, kernel_size, dilation,
                                        scale, config=config)
    want = oracle(q, k, v, rpb, kernel_size, dilation, grad_out)
    tol = TOL[dtype]
    for name, got, ref in zip(('out', 'dq', 'dk', 'dv', 'drpb'), (out, dq, dk, dv, drpb), want):
        if ref is None:
            assert got.numel() == 0, 'drpb must be empty without rpb'
            continue
        assert got.dtype == dtype and got.shape == ref.shape, (name, got.dtype, got.shape)
        norm = max(1.0, ref.abs().max().item()) if name == 'drpb' else 1.0
        torch.testing.assert_close(got.double().cpu() / norm, ref / norm, **tol,
                                   msg=lambda m, n=name: f'{n}: {m}')
    ref_lse = torch.logsumexp(_logits(q, k, rpb, kernel_size, dilation, scale), -1)
    torch.testing.assert_close(lse.double().cpu(), ref_lse, **TOL[torch.float32])


def _logits(q, k, rpb, kernel_size, dilation, scale):
    from nat_mm.testing.na_reference import reference_logits

    return reference_logits(q.detach().cpu().double() * scale, k.detach().cpu().double(),
                            kernel_size, dilation, None if rpb is None else rpb.cpu().double())


# (shape [B, H, W, heads, D], kernel, dilation, config): each names the rule it covers.
CASES = {
    'tile-edges-k3': ((1, 9, 17, 1, 16), (3, 3), (1, 1), CFG_8x8),       # one past 8 and 16
    'exact-tiles-k5': ((1, 16, 16, 2, 16), (5, 5), (1, 1), CFG_16x8),
    'non-square-k7': ((2, 10, 23, 1, 32), (7, 7), (1, 1), CFG_8x16),
    'L-eq-kd-d2': ((1, 14, 15, 1, 16), (7, 5), (2, 3), CFG_8x8),        # H = 7 * 2, W = 5 * 3
    'unequal-groups': ((1, 13, 11, 2, 16), (5, 3), (2, 3), CFG_16x8),   # groups of 7/6 and 4/4/3
    'k9-d1x2': ((1, 12, 19, 1, 24), (9, 7), (1, 2), CFG_8x16),
    'k11': ((1, 11, 14, 1, 16), (11, 11), (1, 1), CFG_8x8),             # L == k on one axis
    'k13': ((1, 14, 13, 1, 16), (13, 13), (1, 1), CFG_16x8),
    'D20-non-pow2': ((1, 9, 10, 1, 20), (3, 5), (1, 1), CFG_8x8),
    'D64': ((1, 8, 9, 2, 64), (5, 5), (1, 1), CFG_8x8),
    'D128': ((1, 7, 9, 1, 128), (7, 7), (1, 1), CFG_8x16),
    'big-dilation': ((1, 13, 15, 1, 16), (3, 3), (4, 5), CFG_8x8),     # 20 groups of 3-4 x 3
    'k1x5-one-row': ((2, 1, 19, 2, 16), (1, 5), (1, 2), CFG_8x8),      # 1-D NA (nat_mm.compat)
}


def _oracle_params():
    """Every case in every dtype with rpb; without rpb in float32, and in the other dtypes on the
    D = 16 cases (the interpreter's time)."""
    for name, case in CASES.items():
        for dtype in DTYPES:
            dtype_id = str(dtype).split('.')[-1]
            yield pytest.param(case, dtype, True, id=f'{name}-{dtype_id}-rpb')
            if dtype == torch.float32 or case[0][-1] == 16:
                yield pytest.param(case, dtype, False, id=f'{name}-{dtype_id}-no-rpb')


@pytest.mark.parametrize('case, dtype, with_rpb', _oracle_params())
def test_matches_oracle(case, dtype, with_rpb):
    shape, kernel_size, dilation, config = case
    assert_case(shape, kernel_size, dilation, dtype, with_rpb, config)


@pytest.mark.parametrize('config', _triton.CONFIGS, ids=lambda c: f'{c.ty}x{c.tx}/'
                         f'{c.kr}x{c.kc}w{c.num_warps}')
def test_every_autotune_config(config):
    """Each candidate the autotuner may pick is exact, forward and backward."""
    assert_case((1, 17, 18, 1, 16), (5, 7), (2, 1), torch.float32, True, config)


def test_autotuner_zeroes_only_the_drpb_slots():
    """The autotuner times every config on the same buffers before the chosen one runs: a config
    with fewer (larger) tiles writes fewer drpb slots, so the slots must be zeroed before each run
    (or a slower config's partials would stay in the sum), and nothing else may be (dq, dk, dv,
    out are overwritten; zeroing delta or lse would be wrong)."""
    tuned = _triton._kernels()
    assert tuned['dq'].reset_to_zero == ['drpb_ptr']
    assert tuned['fwd'].reset_to_zero == [] and tuned['dkv'].reset_to_zero == []
    assert [c.kwargs['TY'] * c.kwargs['TX'] for c in tuned['dq'].configs] != [64] * 3


def test_strided_qkv_views():
    """q/k/v as slices of one qkv projection (what NAT's attention passes): no copy needed."""
    assert_case((2, 9, 12, 2, 16), (3, 5), (2, 1), torch.float32, True, CFG_8x8, strided=True)


def test_backward_is_deterministic():
    q, k, v, rpb = make_case((1, 12, 12, 2, 16), (5, 5), (1, 1), torch.float32, True)
    out, lse = _triton.forward(q, k, v, rpb, (5, 5), (1, 1), 0.25, config=CFG_8x8)
    grad_out = torch.randn_like(out)
    first = _triton.backward(grad_out, q, k, v, rpb, out, lse, (5, 5), (1, 1), 0.25,
                             config=CFG_8x8)
    second = _triton.backward(grad_out, q, k, v, rpb, out, lse, (5, 5), (1, 1), 0.25,
                              config=CFG_8x8)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_op_autograd_and_public_api(monkeypatch):
    """``na2d`` routed to Triton (as ``auto`` does on a GPU): the custom op's autograd gives the
    oracle's gradients, rpb included."""
    monkeypatch.setattr(_dispatch, 'fused_backend', lambda query: 'triton')
    q, k, v, rpb = make_case((1, 9, 10, 2, 16), (3, 3), (2, 1), torch.float32, True)
    inputs = [t.requires_grad_() for t in (q, k, v, rpb)]
    out = na2d(q, k, v, 3, (2, 1), rpb)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, inputs, grad_out)
    want = oracle(q, k, v, rpb, (3, 3), (2, 1), grad_out)
    torch.testing.assert_close(out.double().cpu(), want[0], **TOL[torch.float32])
    for name, g, w in zip('q k v rpb'.split(), got, want[1:]):
        norm = max(1.0, w.abs().max().item()) if name == 'rpb' else 1.0
        torch.testing.assert_close(g.double().cpu() / norm, w / norm, **TOL[torch.float32],
                                   msg=lambda m, n=name: f'grad {n}: {m}')


def test_opcheck():
    """Schema, fake kernels, autograd registration and aot_dispatch of the Triton ops."""
    q, k, v, rpb = make_case((1, 8, 8, 1, 16), (3, 3), (1, 1), torch.float32, True)
    args = [t.requires_grad_() for t in (q, k, v, rpb)]
    torch.library.opcheck(torch.ops.nat_mm.na2d_triton_forward,
                          (*args, [3, 3], [1, 1], 0.25))


def test_compile_fullgraph_one_node():
    """Under torch.compile(fullgraph=True) the op traces (fake kernel) without a graph break
    and the compiled forward and backward equal eager."""
    q, k, v, rpb = make_case((1, 8, 9, 1, 16), (3, 3), (1, 1), torch.float32, True)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        def keep(graph, _):
            return make_boxed_func(graph)
        return aot_autograd(fw_compiler=keep, bw_compiler=keep)(gm, example_inputs)

    def fn(q, k, v, rpb):
        return _triton.na2d(q, k, v, (3, 3), (1, 1), rpb, 0.25) * 2

    inputs = [t.clone().requires_grad_() for t in (q, k, v, rpb)]
    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    out = compiled(*inputs)
    grads = torch.autograd.grad(out.sum(), inputs)
    eager_in = [t.clone().requires_grad_() for t in (q, k, v, rpb)]
    eager = fn(*eager_in)
    eager_grads = torch.autograd.grad(eager.sum(), eager_in)
    torch.testing.assert_close(out, eager)
    for g, w in zip(grads, eager_grads):
        torch.testing.assert_close(g, w)
    assert len(graphs) == 1
    calls = [n.target for n in graphs[0].graph.nodes if n.op == 'call_function']
    assert calls.count(torch.ops.nat_mm.na2d_triton_forward) == 1, calls


# Bugs planted in a copy of the kernels, each of which must make an oracle comparison fail.
PLANTED_BUGS = {
    'halo-start-off-by-one': ('    return _window_start(t0, n, K), _window_start(',
                              '    return _window_start(t0, n, K) + 1, _window_start('),
    'window-mask-one-too-wide': ('(kx < wx + KW)', '(kx <= wx + KW)'),
    'rpb-column-offset-sign': ('    col_bins = _pair_bins(c0, tx0, TX, KC, KW, TILE_IS_QUERY)\n',
                               '    col_bins = _pair_bins(c0, tx0, TX, KC, KW, not TILE_IS_QUERY)\n'),
    'inverse-neighbourhood-start': ('tl.where(t0 < K, 0, t0 - K // 2)',
                                    'tl.where(t0 < K, 0, t0 - K // 2 + 1)'),
    'drpb-fold-column': ('fold_x = (col_bins[:, None] == tl.arange(0, RPB_W)[None, :])',
                         'fold_x = (col_bins[:, None] == tl.arange(0, RPB_W)[None, :] + 1)'),
}


@pytest.mark.slow
@pytest.mark.skipif(ON_GPU, reason='mutants run in the interpreter')
@pytest.mark.parametrize('bug', PLANTED_BUGS, ids=PLANTED_BUGS.keys())
def test_planted_bug_is_caught(bug, tmp_path, monkeypatch):
    old, new = PLANTED_BUGS[bug]
    source = open(kernels.__file__).read()
    assert source.count(old) >= 1, f'the planted bug {bug!r} no longer matches the kernels'
    path = tmp_path / f'mutant_{bug.replace("-", "_")}.py'
    path.write_text(source.replace(old, new))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mutant = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mutant  # triton's interpreter looks functions up by module
    try:
        spec.loader.exec_module(mutant)
        monkeypatch.setattr(_triton, '_kernels', lambda: {'module': mutant})
        # a map whose tiles have interior and border rows, with rpb: every rule is in play
        with pytest.raises(AssertionError, match='not close'):
            assert_case((1, 19, 18, 1, 16), (5, 5), (1, 1), torch.float32, True, CFG_8x8)
    finally:
        sys.modules.pop(path.stem, None)


@pytest.mark.slow  # a subprocess compiling six kernels: ~20 s here
def test_kernels_compile_for_sm80_and_sm90_on_tensor_cores():
    """Triton's compiler, run here without a GPU, lowers the three kernels to PTX and cubin for
    Ampere and Hopper, with tl.dot on the tensor cores (mma.sync / wgmma). The interpreter runs
    Python, so it cannot catch what only the compiler rejects (a global that is not a
    constexpr, a layout it cannot convert, a dot shape below the hardware minimum)."""
    code = '\n'.join([
        'import torch',
        'from nat_mm.ops import _triton',
        "for arch, dtype, extra, mma in ((80, torch.bfloat16, {}, 'mma.sync'),",
        "                                (90, torch.float16, dict(head_dim=64, kernel_size=(5, 3),",
        "                                 dilation=(2, 1), has_rpb=False), 'wgmma')):",
        "    for name in ('fwd', 'dq', 'dkv'):",
        '        ptx = _triton.compile_for_gpu(name, arch, dtype, **extra).asm["ptx"]',
        "        assert mma in ptx, (arch, name, 'tl.dot is not on the tensor cores')",
        "        print(arch, name, 'ok')",
    ])
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, '-c', code], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split().count('ok') == 6, result.stdout
