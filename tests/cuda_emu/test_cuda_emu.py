"""The real CUDA kernels (csrc/cuda/*.cu) on the CPU, through the host emulator in
nat_mm/testing/cuda_emu.

The emulator compiles the .cu unchanged for the host (each block's threads are real threads that
meet at __syncthreads) and registers its ops as ``torch.ops.nat_mm_cuda_emu.*`` on CPU tensors.
Every op, forward and backward, is compared with the float64 oracle of nat_mm.testing.na_reference at the CPU
kernels' tolerances; the fused ops once through the reference kernels and once through the tiled
kernels (NAT_MM_CUDA_KERNEL=reference / tiled). The build caps grids at ``build.MAX_BLOCKS``
blocks, so every grid-stride loop below runs several times. The emulator's own checks (barriers,
warp primitives, shared memory, launch limits) are tested at the end with the small kernels of
nat_mm/testing/cuda_emu/selftest.cpp.
"""
import pytest
import torch

from nat_mm.testing.cuda_emu import build
from nat_mm.testing.na_reference import TOL, reference_av, reference_logits, reference_na2d

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ['fp64', 'fp32', 'fp16', 'bf16']
# (B, H, W, heads, D), kernel_size, dilation, with rpb
CASES = [
    ((2, 9, 11, 2, 8), (3, 3), (1, 1), True),
    ((1, 13, 10, 3, 5), (5, 3), (2, 3), True),  # non-square kernel, mixed dilation, L % d != 0
    ((1, 13, 14, 1, 4), (13, 13), (1, 1), True),  # the largest kernel, H == k
    ((2, 12, 14, 2, 16), (3, 5), (4, 2), False),  # H == k * d
    ((1, 8, 9, 2, 32), (7, 7), (1, 1), True),  # NAT's kernel and head dim
]
CASE_IDS = ['k3', 'k5x3-d2x3', 'k13', 'k3x5-d4x2-no_rpb', 'k7-D32']


@pytest.fixture(scope='module')
def emu():
    build.load()
    return torch.ops.nat_mm_cuda_emu


@pytest.fixture(params=['reference', 'tiled'])
def kernel(request, monkeypatch):
    """The CUDA kernels the fused ops take (read by the C++ side at every call)."""
    monkeypatch.setenv('NAT_MM_CUDA_KERNEL', request.param)
    return request.param


def make_inputs(shape, kernel_size, dtype, with_rpb):
    q, k, v = (torch.randn(shape, dtype=torch.float64).to(dtype) for _ in range(3))
    rpb = None
    if with_rpb:
        rpb = torch.randn(shape[3], 2 * kernel_size[0] - 1, 2 * kernel_size[1] - 1,
                          dtype=torch.float64).to(dtype)
    return q, k, v, rpb


def leaf64(t):
    return None if t is None else t.detach().double().requires_grad_()


def assert_close(name, got, want, dtype, relative=False):
    # sums over the whole map (drpb) grow with it: compare those relative to their scale
    scale = max(1.0, want.abs().max().item()) if relative else 1.0
    torch.testing.assert_close(got.double() / scale, want / scale, **TOL[dtype],
                               msg=lambda m: f'{name}: {m}')


def fused_reference(q, k, v, rpb, kernel_size, dilation, scale, grad_out):
    """Output and (dq, dk, dv, drpb) of the float64 oracle for the given inputs."""
    leaves = [leaf64(t) for t in (q, k, v, rpb)]
    out = reference_na2d(*leaves[:3], kernel_size, dilation, leaves[3], scale)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], grad_out.double())
    return out.detach(), list(grads) + ([None] if rpb is None else [])


def check_fused(emu, q, k, v, rpb, kernel_size, dilation, dtype):
    scale = q.shape[-1] ** -0.5
    out, lse = emu.na2d_forward(q, k, v, rpb, kernel_size, dilation, scale)
    assert out.dtype == dtype and out.shape == q.shape
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    grad_out = torch.randn(q.shape, dtype=torch.float64).to(dtype)
    ref_out, ref_grads = fused_reference(q, k, v, rpb, kernel_size, dilation, scale, grad_out)
    assert_close('out', out, ref_out, dtype)
    grads = emu.na2d_backward(grad_out, q, k, v, rpb, out, lse, kernel_size, dilation, scale)
    for name, got, want in zip(('dq', 'dk', 'dv'), grads[:3], ref_grads[:3]):
        assert_close(name, got, want, dtype)
    if rpb is None:
        assert grads[3].numel() == 0
    else:
        assert_close('drpb', grads[3], ref_grads[3], dtype, relative=True)


@pytest.mark.parametrize('dtype', DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize('shape,kernel_size,dilation,with_rpb', CASES, ids=CASE_IDS)
def test_fused_matches_reference(emu, kernel, shape, kernel_size, dilation, with_rpb, dtype):
    q, k, v, rpb = make_inputs(shape, kernel_size, dtype, with_rpb)
    check_fused(emu, q, k, v, rpb, kernel_size, dilation, dtype)


@pytest.mark.parametrize('dtype', DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize('shape,kernel_size,dilation,with_rpb', CASES, ids=CASE_IDS)
def test_qk_av_match_reference(emu, shape, kernel_size, dilation, with_rpb, dtype):
    q, k, v, rpb = make_inputs(shape, kernel_size, dtype, with_rpb)
    attn = emu.na2d_qk_forward(q, k, rpb, kernel_size, dilation)
    leaves = [leaf64(t) for t in (q, k, rpb)]
    ref_attn = reference_logits(*leaves[:2], kernel_size, dilation, leaves[2])
    assert_close('attn', attn, ref_attn.detach(), dtype)

    grad_attn = torch.randn(attn.shape, dtype=torch.float64).to(dtype)
    dq, dk, drpb = emu.na2d_qk_backward(grad_attn, q, k, with_rpb, kernel_size, dilation)
    want = torch.autograd.grad(ref_attn, [t for t in leaves if t is not None], grad_attn.double())
    assert_close('dq', dq, want[0], dtype)
    assert_close('dk', dk, want[1], dtype)
    if with_rpb:
        assert_close('drpb', drpb, want[2], dtype, relative=True)
    else:
        assert drpb.numel() == 0

    weights = torch.softmax(torch.randn(attn.shape, dtype=torch.float64), -1).to(dtype)
    out = emu.na2d_av_forward(weights, v, kernel_size, dilation)
    w64, v64 = leaf64(weights), leaf64(v)
    ref_out = reference_av(w64, v64, kernel_size, dilation)
    assert_close('av out', out, ref_out.detach(), dtype)
    grad_out = torch.randn(v.shape, dtype=torch.float64).to(dtype)
    dattn, dv = emu.na2d_av_backward(grad_out, weights, v, kernel_size, dilation)
    want = torch.autograd.grad(ref_out, (w64, v64), grad_out.double())
    assert_close('dattn', dattn, want[0], dtype)
    assert_close('av dv', dv, want[1], dtype)


def test_strided_inputs(emu, kernel):
    """q, k, v as views of one qkv projection (strided heads-last), and a D axis not stride-1."""
    B, H, W, heads, D = 2, 10, 12, 2, 8
    qkv = torch.randn(B, H, W, 3 * heads * D, dtype=torch.float64)
    q, k, v = qkv.view(B, H, W, 3, heads, D).unbind(3)
    assert not q.is_contiguous() and q.stride(-1) == 1
    rpb = torch.randn(heads, 5, 5, dtype=torch.float64)
    check_fused(emu, q, k, v, rpb, (3, 3), (2, 2), torch.float64)
    qt = torch.randn(B, H, W, D, heads, dtype=torch.float64).transpose(3, 4)
    assert qt.stride(-1) != 1
    check_fused(emu, qt, k, v, rpb, (3, 3), (2, 2), torch.float64)
    attn = emu.na2d_qk_forward(qt, k, rpb, (3, 3), (2, 2))
    assert_close('attn', attn, reference_logits(qt, k, (3, 3), (2, 2), rpb), torch.float64)


def test_empty_batch(emu, kernel):
    q, k, v, rpb = make_inputs((0, 7, 8, 2, 4), (3, 3), torch.float32, True)
    out, lse = emu.na2d_forward(q, k, v, rpb, (3, 3), (2, 1), 0.5)
    assert out.shape == q.shape and lse.shape == (0, 7, 8, 2)
    dq, dk, dv, drpb = emu.na2d_backward(out, q, k, v, rpb, out, lse, (3, 3), (2, 1), 0.5)
    assert dq.shape == dk.shape == dv.shape == q.shape
    assert torch.equal(drpb, torch.zeros_like(rpb))
    attn = emu.na2d_qk_forward(q, k, rpb, (3, 3), (2, 1))
    assert attn.shape == (0, 7, 8, 2, 9)
    assert emu.na2d_qk_backward(attn, q, k, True, (3, 3), (2, 1))[0].shape == q.shape
    assert emu.na2d_av_forward(attn, v, (3, 3), (2, 1)).shape == v.shape
    assert emu.na2d_av_backward(out, attn, v, (3, 3), (2, 1))[1].shape == v.shape


def test_backward_is_deterministic(emu, kernel):
    q, k, v, rpb = make_inputs((2, 11, 13, 2, 8), (5, 5), torch.float32, True)
    out, lse = emu.na2d_forward(q, k, v, rpb, (5, 5), (2, 1), 0.35)
    grad_out = torch.randn_like(out)
    first = emu.na2d_backward(grad_out, q, k, v, rpb, out, lse, (5, 5), (2, 1), 0.35)
    again = emu.na2d_backward(grad_out, q, k, v, rpb, out, lse, (5, 5), (2, 1), 0.35)
    attn = torch.randn(*q.shape[:4], 25)
    first += emu.na2d_qk_backward(attn, q, k, True, (5, 5), (2, 1))
    again += emu.na2d_qk_backward(attn, q, k, True, (5, 5), (2, 1))
    first += emu.na2d_av_backward(grad_out, attn, v, (5, 5), (2, 1))
    again += emu.na2d_av_backward(grad_out, attn, v, (5, 5), (2, 1))
    for a, b in zip(first, again):
        assert torch.equal(a, b)


# The tiled kernels at the edges of their tiling: maps not divisible by the 8 x 8 tile, maps whose
# dilation groups are shorter than a tile (H == k * d, as the backbone pads small maps to), groups of
# unequal length, and the head dims that change the lanes per query (G) and elements per lane (C).
TILED_CASES = [
    ((1, 17, 19, 2, 16), (7, 7), (1, 1), True),
    ((1, 14, 7, 1, 8), (7, 7), (2, 1), True),
    ((1, 23, 26, 2, 8), (5, 3), (3, 4), True),
    ((1, 9, 10, 1, 64), (3, 5), (1, 2), True),  # G = 4
    ((1, 8, 8, 1, 128), (3, 3), (1, 1), False),  # G = 8: 512 threads
    ((1, 10, 11, 1, 48), (5, 5), (1, 1), True),  # C = 12
    ((2, 13, 13, 1, 3), (13, 13), (1, 1), True),
]
TILED_IDS = ['k7-17x19', 'k7-d2-H=kd', 'k5x3-d3x4-unequal', 'D64', 'D128-no_rpb', 'D48',
             'k13-D3']


@pytest.mark.parametrize('dtype', [torch.float64, torch.bfloat16], ids=['fp64', 'bf16'])
@pytest.mark.parametrize('shape,kernel_size,dilation,with_rpb', TILED_CASES, ids=TILED_IDS)
def test_tiled_tile_edges(emu, monkeypatch, shape, kernel_size, dilation, with_rpb, dtype):
    monkeypatch.setenv('NAT_MM_CUDA_KERNEL', 'tiled')  # an error if the tiled kernels do not apply
    q, k, v, rpb = make_inputs(shape, kernel_size, dtype, with_rpb)
    check_fused(emu, q, k, v, rpb, kernel_size, dilation, dtype)


def test_tiled_smaller_tiles(emu, monkeypatch):
    # A GPU with 100 KB of shared memory per block: the dK/dV kernel's 8 x 8 tile (about 110 KB
    # for float32, D = 32, 7 x 7) does not fit, a 4 x 8 tile does.
    monkeypatch.setenv('NAT_MM_CUDA_KERNEL', 'tiled')
    monkeypatch.setenv('NAT_EMU_SHARED_OPTIN', '100000')
    q, k, v, rpb = make_inputs((1, 12, 19, 2, 32), (7, 7), torch.float32, True)
    check_fused(emu, q, k, v, rpb, (7, 7), (1, 1), torch.float32)


@pytest.mark.parametrize('case,why', [
    (dict(D=34), 'head dim 34 is not a power-of-two multiple'),
    (dict(optin='4096'), 'its smallest tile needs .* bytes of shared memory, the device allows 4096'),
], ids=['head-dim', 'shared-memory'])
def test_tiled_falls_back(emu, monkeypatch, case, why):
    """Where the tiled kernels do not apply, `auto` takes the reference kernels, `tiled` says why."""
    if 'optin' in case:
        monkeypatch.setenv('NAT_EMU_SHARED_OPTIN', case['optin'])
    q, k, v, rpb = make_inputs((1, 9, 9, 1, case.get('D', 8)), (3, 3), torch.float64, True)
    monkeypatch.setenv('NAT_MM_CUDA_KERNEL', 'auto')
    check_fused(emu, q, k, v, rpb, (3, 3), (1, 1), torch.float64)
    monkeypatch.setenv('NAT_MM_CUDA_KERNEL', 'tiled')
    with pytest.raises(RuntimeError, match='NAT_MM_CUDA_KERNEL=tiled, but the tiled kernels do '
                                           'not apply: ' + why):
        emu.na2d_forward(q, k, v, rpb, (3, 3), (1, 1), 1.0)
    monkeypatch.setenv('NAT_MM_CUDA_KERNEL', 'fast')
    with pytest.raises(RuntimeError, match="must be auto, triton, tiled, reference or flex, got 'fast'"):
        emu.na2d_forward(q, k, v, rpb, (3, 3), (1, 1), 1.0)


def test_kernel_too_large_for_shared_memory(emu):
    # 81 x 81 float64 logits of one query need 52 KiB, over the 48 KiB the kernel uses
    q = torch.randn(1, 81, 81, 1, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match='kernel_size 81x81 is too large'):
        emu.na2d_forward(q, q, q, None, (81, 81), (1, 1), 1.0)


def test_checks_shared_with_cpu(emu):
    q = torch.randn(1, 6, 6, 1, 4)
    with pytest.raises(RuntimeError, match=r'kernel_size \* dilation must be <= the map size'):
        emu.na2d_forward(q, q, q, None, (7, 7), (1, 1), 1.0)
    with pytest.raises(RuntimeError, match='kernel_size must be odd'):
        emu.na2d_qk_forward(q, q, None, (4, 3), (1, 1))
    with pytest.raises(RuntimeError, match='rpb must have shape'):
        emu.na2d_qk_forward(q, q, torch.zeros(1, 3, 3), (3, 3), (1, 1))


# ------------------------------------------------------------------------------------------------
# The emulator itself.

def selftest(which, n=0):
    return torch.ops.nat_emu_selftest.run(which, n)


def test_emulator_divergent_syncthreads(emu):
    with pytest.raises(RuntimeError, match=r'__syncthreads \(line \d+\) is reached by 10 of 64 '
                                           r'threads; 54 threads exited'):
        selftest('divergent_sync', 10)
    with pytest.raises(RuntimeError, match='threads wait at different __syncthreads'):
        selftest('split_sync')
    assert torch.equal(selftest('divergent_sync', 64)[:64], torch.ones(64))


def test_emulator_shared_memory(emu):
    out = selftest('shared', 64)[:128]
    torch.testing.assert_close(out, torch.arange(64.0).repeat(2))  # both blocks
    out = selftest('shared', 60)[:128].view(2, 64)  # fresh NaNs in every block
    torch.testing.assert_close(out[:, :60], torch.arange(60.0).expand(2, 60))
    assert out[:, 60:].isnan().all()
    with pytest.raises(RuntimeError, match='wrote past the end of its 256 bytes'):
        selftest('shared', 65)
    with pytest.raises(RuntimeError, match='dynamic shared memory above 48 KiB needs '
                                           'cudaFuncSetAttribute'):
        selftest('shared_large', 16 * 1024)  # 64 KiB
    out = selftest('shared_optin', 16 * 1024)
    torch.testing.assert_close(out[:64], torch.arange(64.0))


def test_emulator_warp_primitives(emu):
    out = selftest('warp').view(-1, 6)[:64]
    tid = torch.arange(64)
    lane, base = tid % 32, tid - tid % 32
    want = torch.stack([
        base + 3,
        base + (lane ^ 5),
        torch.where(lane % 16 + 4 < 16, tid + 4, tid),
        torch.where(lane >= 2, tid - 2, tid),
        torch.full_like(tid, sum(1 << i for i in range(16) if i % 3 == 0)),
        base * 32 + 496,
    ], 1).float()
    torch.testing.assert_close(out, want)
    # lane 0 exits before or after the others reach the shuffle
    with pytest.raises(RuntimeError, match='__shfl_sync.*(the mask names lanes that have exited|'
                                           'lane 0 exited the kernel while the other lanes)'):
        selftest('warp_exit')


def test_emulator_launch_limits(emu):
    with pytest.raises(RuntimeError, match='more than 1024 threads per block'):
        selftest('threads', 1025)
    torch.testing.assert_close(selftest('threads', 1024)[:1024], torch.zeros(1024))
    with pytest.raises(RuntimeError, match=r'grid exceeds \(2\^31 - 1, 65535, 65535\)'):
        selftest('grid_y', 65536)
    with pytest.raises(RuntimeError, match='does not fit in dim3'):
        selftest('huge_grid', 1)
    # 3 blocks of 32 threads stride over 200 items: item i belongs to block (i // 32) % 3
    out = selftest('grid_stride', 200)[:200]
    torch.testing.assert_close(out, ((torch.arange(200) // 32) % 3).float())
