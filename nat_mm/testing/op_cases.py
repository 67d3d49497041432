"""nat_mm's six dispatcher ops on small maps, every output and gradient against the float64
oracle (:mod:`nat_mm.testing.na_reference`).

What tools/gpu/sanitize_cases.py runs under compute-sanitizer and tools/gpu/build_capped.py runs
against the block-capped copy of the CUDA kernels (torch only: the GPU machine has no
OpenMMLab). The six ops: na2d_forward / na2d_backward (through ``na2d`` and autograd),
na2d_qk_forward / na2d_qk_backward (``na2d_qk``), na2d_av_forward / na2d_av_backward
(``na2d_av``), called either through the public functions (:class:`PublicOps`) or as the
dispatcher ops of one library, forward then backward with the same output gradient
(:class:`RawOps`).

The cases (:data:`CASES`) cover float32, float16 and bfloat16, dilation, a map that is not a
multiple of the tile, and no rpb. The oracle runs on the CPU in float64 on the same (rounded)
inputs; errors are scaled by the reference's largest entry (gradients sum many terms).
"""
import os
import time
from typing import Callable, Iterable

import torch

from .na_reference import TOL, reference_av, reference_logits, reference_na2d

__all__ = ['CASES', 'CPP_KERNELS', 'FUSED_ONLY_KERNELS', 'PublicOps', 'RawOps', 'check',
           'run_case', 'run_cases', 'one_triton_config']

# (name, B, H, W, heads, D, kernel_size, dilation, with_rpb, dtype)
CASES = [
    ('fp32-k7-rpb', 1, 15, 17, 2, 32, 7, 1, True, torch.float32),
    ('fp16-k5-d2-rpb', 2, 13, 21, 2, 16, 5, 2, True, torch.float16),
    ('bf16-k3x5-d(3,2)-norpb', 1, 10, 11, 3, 32, (3, 5), (3, 2), False, torch.bfloat16),
]
#: NAT_MM_CUDA_KERNEL values that select C++ kernels.
CPP_KERNELS = ('reference', 'tiled', 'auto')
#: NAT_MM_CUDA_KERNEL values that select the Python backends of the fused na2d.
FUSED_ONLY_KERNELS = ('triton', 'flex')


def _print(line: str) -> None:
    print(line, flush=True)


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


class PublicOps:
    """nat_mm.ops' public functions; gradients through autograd."""

    @staticmethod
    def _grads(out, leaves, grad):
        return list(torch.autograd.grad(out, leaves, grad))

    def na2d(self, q, k, v, ks, dil, rpb, grad):
        from nat_mm.ops import na2d

        leaves = [t.detach().requires_grad_() for t in (q, k, v, rpb) if t is not None]
        out = na2d(*leaves[:3], ks, dil, leaves[3] if rpb is not None else None)
        return out, self._grads(out, leaves, grad)

    def qk(self, q, k, ks, dil, rpb, grad):
        from nat_mm.ops import na2d_qk

        leaves = [t.detach().requires_grad_() for t in (q, k, rpb) if t is not None]
        attn = na2d_qk(*leaves[:2], ks, dil, leaves[2] if rpb is not None else None)
        return attn, self._grads(attn, leaves, grad)

    def av(self, attn, v, ks, dil, grad):
        from nat_mm.ops import na2d_av

        leaves = [attn.detach().requires_grad_(), v.detach().requires_grad_()]
        out = na2d_av(*leaves, ks, dil)
        return out, self._grads(out, leaves, grad)


class RawOps:
    """The dispatcher ops of one library (``torch.ops.<namespace>``), forward then backward.

    Args:
        namespace (str): ``nat_mm``, or a library registering the same schemas under another
            name (``nat_mm_capped``, ``nat_mm_cuda_emu``).
    """

    def __init__(self, namespace):
        self.ops = getattr(torch.ops, namespace)

    @staticmethod
    def _drop_empty(grads, has_rpb):
        *main, drpb = grads
        if not has_rpb and drpb.numel() != 0:
            raise AssertionError(f'drpb must be empty without rpb, got {tuple(drpb.shape)}')
        return main + ([drpb] if has_rpb else [])

    def na2d(self, q, k, v, ks, dil, rpb, grad):
        scale = q.shape[-1] ** -0.5
        out, lse = self.ops.na2d_forward(q, k, v, rpb, list(ks), list(dil), scale)
        grads = self.ops.na2d_backward(grad, q, k, v, rpb, out, lse, list(ks), list(dil), scale)
        return out, self._drop_empty(list(grads), rpb is not None)

    def qk(self, q, k, ks, dil, rpb, grad):
        attn = self.ops.na2d_qk_forward(q, k, rpb, list(ks), list(dil))
        grads = self.ops.na2d_qk_backward(grad, q, k, rpb is not None, list(ks), list(dil))
        return attn, self._drop_empty(list(grads), rpb is not None)

    def av(self, attn, v, ks, dil, grad):
        out = self.ops.na2d_av_forward(attn, v, list(ks), list(dil))
        return out, list(self.ops.na2d_av_backward(grad, attn, v, list(ks), list(dil)))


def check(name, got, want, dtype):
    """Compare with the float64 oracle, relative to its largest entry (gradients sum terms).

    Returns:
        float: The max scaled error.

    Raises:
        AssertionError: a wrong dtype or shape, or an error above 4x the dtype's tolerance
            (NaN included).
    """
    if got.dtype != dtype or tuple(got.shape) != tuple(want.shape):
        raise AssertionError(f'{name}: got {got.dtype} {tuple(got.shape)}, want {dtype} '
                             f'{tuple(want.shape)}')
    scale = max(1.0, want.abs().max().item())
    err = ((got.detach().cpu().double() - want) / scale).abs().max().item()
    tol = TOL[dtype]['atol'] * 4  # reduced-precision gradients through softmax: some slack
    if not (err <= tol):  # also catches NaN
        raise AssertionError(f'{name}: max scaled error {err:.3g} > {tol:.3g}')
    return err


def _oracle(fn, inputs, grad):
    """fn on float64 CPU copies of ``inputs`` (None kept), and its gradients for ``grad``."""
    leaves = [None if t is None else t.detach().cpu().double().requires_grad_() for t in inputs]
    out = fn(*leaves)
    wanted = [t for t in leaves if t is not None]
    return out, list(torch.autograd.grad(out, wanted, grad.detach().cpu().double()))


def run_case(case, device, ops, fused_only=False):
    """Every op of ``ops`` on the case against the oracle; returns the worst scaled error.

    Args:
        case (tuple): An entry of :data:`CASES`.
        device (str): ``'cpu'`` or ``'cuda'``.
        ops (PublicOps | RawOps): How the ops are called.
        fused_only (bool): Only na2d (the fused op). Defaults to False.
    """
    name, B, H, W, heads, D, kernel_size, dilation, with_rpb, dtype = case
    ks, dil = _pair(kernel_size), _pair(dilation)
    q, k, v = (torch.randn(B, H, W, heads, D, device=device, dtype=dtype) for _ in range(3))
    rpb = (torch.randn(heads, 2 * ks[0] - 1, 2 * ks[1] - 1, device=device, dtype=dtype)
           if with_rpb else None)
    worst = 0.0

    # na2d_forward + na2d_backward
    grad = torch.randn_like(q)
    out, grads = ops.na2d(q, k, v, ks, dil, rpb, grad)
    ref, ref_grads = _oracle(lambda q, k, v, rpb: reference_na2d(q, k, v, ks, dil, rpb),
                             [q, k, v, rpb], grad)
    for what, got, want in zip(['out', 'dq', 'dk', 'dv', 'drpb'], [out, *grads], [ref, *ref_grads]):
        worst = max(worst, check(f'{name} na2d {what}', got, want, dtype))
    if fused_only:
        return worst

    # na2d_qk_forward + na2d_qk_backward, na2d_av_forward + na2d_av_backward
    gattn = torch.randn(B, H, W, heads, ks[0] * ks[1], device=device, dtype=dtype)
    attn, grads = ops.qk(q, k, ks, dil, rpb, gattn)
    ref, ref_grads = _oracle(lambda q, k, rpb: reference_logits(q, k, ks, dil, rpb), [q, k, rpb],
                             gattn)
    for what, got, want in zip(['attn', 'dq', 'dk', 'drpb'], [attn, *grads], [ref, *ref_grads]):
        worst = max(worst, check(f'{name} na2d_qk {what}', got, want, dtype))
    probs = torch.softmax(torch.randn_like(gattn, dtype=torch.float32), -1).to(dtype)
    gav = torch.randn_like(v)
    av, grads = ops.av(probs, v, ks, dil, gav)
    ref, ref_grads = _oracle(lambda p, v: reference_av(p, v, ks, dil), [probs, v], gav)
    for what, got, want in zip(['out', 'dattn', 'dv'], [av, *grads], [ref, *ref_grads]):
        worst = max(worst, check(f'{name} na2d_av {what}', got, want, dtype))
    if device == 'cuda':
        torch.cuda.synchronize()
    return worst


def run_cases(ops, device: str, kernels: Iterable[str], log: Callable[[str], None] = _print,
              cases=CASES) -> int:
    """Every case under every kernel variant (NAT_MM_CUDA_KERNEL, set for its calls; ``'cpu'``
    sets nothing); one ``ok``/``FAIL`` line each through ``log``.

    Args:
        ops (PublicOps | RawOps): How the ops are called.
        device (str): ``'cpu'`` or ``'cuda'``.
        kernels (Iterable[str]): NAT_MM_CUDA_KERNEL values, or ``['cpu']``. With
            :data:`FUSED_ONLY_KERNELS` only na2d runs.
        log (Callable): Where the lines go. Defaults to printing (flushed).
        cases (list): Defaults to :data:`CASES`.

    Returns:
        int: The number of failed (kernel, case) pairs.
    """
    kernels = list(kernels)
    failures = 0
    for kernel in kernels:
        if kernel != 'cpu':
            os.environ['NAT_MM_CUDA_KERNEL'] = kernel  # read by the C++ and Python at every call
        for case in cases:
            torch.manual_seed(0)
            start = time.perf_counter()
            try:
                worst = run_case(case, device, ops, fused_only=kernel in FUSED_ONLY_KERNELS)
                log(f'ok    {kernel:<9} {case[0]:<24} max scaled error {worst:.2e} '
                    f'({time.perf_counter() - start:.1f} s)')
            except Exception as error:  # noqa: BLE001 - report every case, then fail
                failures += 1
                log(f'FAIL  {kernel:<9} {case[0]:<24} {type(error).__name__}: {error}')
    log(f'sanitize_cases: {failures} of {len(kernels) * len(cases)} failed')
    return failures


def one_triton_config(log: Callable[[str], None] = _print) -> None:
    """Give the Triton autotuner one candidate per kernel (before its first use), so a case
    compiles three kernels instead of every candidate and times none."""
    from nat_mm.ops import _triton

    if _triton._kernels.cache_info().currsize:
        log('sanitize_cases: the Triton kernels were built already: autotuning stays on')
        return
    _triton.FORWARD_CONFIGS = _triton.FORWARD_CONFIGS[:1]
    _triton.BACKWARD_CONFIGS = _triton.BACKWARD_CONFIGS[:1]
