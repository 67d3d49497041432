"""Run nat_mm's six dispatcher ops once per kernel variant, on small maps, and check every output
and gradient against the float64 oracle: what tools/gpu/check.sh runs under compute-sanitizer
(memcheck, racecheck, synccheck, initcheck), through the fused backends, and against the
block-capped copy of the CUDA kernels.

The six ops: na2d_forward / na2d_backward (through ``na2d`` and autograd), na2d_qk_forward /
na2d_qk_backward (``na2d_qk``), na2d_av_forward / na2d_av_backward (``na2d_av``). Each variant of
``--kernels`` sets NAT_MM_CUDA_KERNEL for its calls: ``reference`` forces the reference CUDA
kernels, ``tiled`` the fused tiled ones (they serve na2d forward and backward; the qk/av ops have
reference kernels only), ``auto`` leaves the choice to nat_mm; ``triton`` and ``flex`` select the
Python backends of the fused na2d, so with them only na2d is run (the qk/av ops would run the C++
kernels, as under auto). ``triton`` runs one tile config (the first of nat_mm.ops._triton's
candidates) unless ``--triton-autotune``: the autotuner would compile and time every candidate
per case, which under a sanitizer costs minutes.

``--ops-namespace NS`` calls the dispatcher ops ``torch.ops.NS.*`` directly instead of the public
functions: each forward op, then its backward op with the same random output gradient (no
autograd), for a library that registers the same schemas under another name: the block-capped
build of tools/gpu/build_capped.py (``nat_mm_capped``, CUDA tensors) or the CUDA emulator of the
tests (``nat_mm_cuda_emu``, CPU tensors); ``--load-library`` loads that library first. The C++
of those libraries reads NAT_MM_CUDA_KERNEL too, so ``--kernels reference tiled`` applies there
on either device.

The cases cover float32, float16 and bfloat16, dilation, a map that is not a multiple of the
tile, and no rpb. The oracle (tests/na_reference.py) runs on the CPU in float64 on the same
(rounded) inputs; errors are scaled by the reference's largest entry (gradients sum many terms).
Exits non-zero on any mismatch.

Usage:
    compute-sanitizer --tool memcheck python tools/gpu/sanitize_cases.py
    python tools/gpu/sanitize_cases.py --kernels triton flex          # the fused backends
    python tools/gpu/sanitize_cases.py --ops-namespace nat_mm_capped --load-library LIB.so
    python tools/gpu/sanitize_cases.py --device cpu        # the same calls on the CPU kernels
"""
import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))

from na_reference import TOL, reference_av, reference_logits, reference_na2d  # noqa: E402

from nat_mm.ops import extension_has_cuda, extension_loaded, na2d, na2d_av, na2d_qk  # noqa: E402

# (name, B, H, W, heads, D, kernel_size, dilation, with_rpb, dtype)
CASES = [
    ('fp32-k7-rpb', 1, 15, 17, 2, 32, 7, 1, True, torch.float32),
    ('fp16-k5-d2-rpb', 2, 13, 21, 2, 16, 5, 2, True, torch.float16),
    ('bf16-k3x5-d(3,2)-norpb', 1, 10, 11, 3, 32, (3, 5), (3, 2), False, torch.bfloat16),
]
CPP_KERNELS = ('reference', 'tiled', 'auto')
FUSED_ONLY_KERNELS = ('triton', 'flex')  # Python backends of the fused na2d


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


class PublicOps:
    """nat_mm.ops' public functions; gradients through autograd."""

    @staticmethod
    def _grads(out, leaves, grad):
        return list(torch.autograd.grad(out, leaves, grad))

    def na2d(self, q, k, v, ks, dil, rpb, grad):
        leaves = [t.detach().requires_grad_() for t in (q, k, v, rpb) if t is not None]
        out = na2d(*leaves[:3], ks, dil, leaves[3] if rpb is not None else None)
        return out, self._grads(out, leaves, grad)

    def qk(self, q, k, ks, dil, rpb, grad):
        leaves = [t.detach().requires_grad_() for t in (q, k, rpb) if t is not None]
        attn = na2d_qk(*leaves[:2], ks, dil, leaves[2] if rpb is not None else None)
        return attn, self._grads(attn, leaves, grad)

    def av(self, attn, v, ks, dil, grad):
        leaves = [attn.detach().requires_grad_(), v.detach().requires_grad_()]
        out = na2d_av(*leaves, ks, dil)
        return out, self._grads(out, leaves, grad)


class RawOps:
    """The dispatcher ops of one library (``torch.ops.<namespace>``), forward then backward."""

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
    """Compare with the float64 oracle, relative to its largest entry (gradients sum terms)."""
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
    """Every op of ``ops`` on the case against the oracle; returns the worst scaled error."""
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


def _one_triton_config():
    """Give the Triton autotuner one candidate per kernel (before its first use), so a case
    compiles three kernels instead of every candidate and times none."""
    from nat_mm.ops import _triton

    if _triton._kernels.cache_info().currsize:
        print('sanitize_cases: the Triton kernels were built already: autotuning stays on')
        return
    _triton.FORWARD_CONFIGS = _triton.FORWARD_CONFIGS[:1]
    _triton.BACKWARD_CONFIGS = _triton.BACKWARD_CONFIGS[:1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda', choices=['cuda', 'cpu'])
    parser.add_argument('--kernels', nargs='+', default=['reference', 'tiled'],
                        choices=CPP_KERNELS + FUSED_ONLY_KERNELS,
                        help='NAT_MM_CUDA_KERNEL values to run (CUDA, or a C++ --ops-namespace)')
    parser.add_argument('--ops-namespace', metavar='NS', default=None,
                        help='call torch.ops.NS.* directly (e.g. nat_mm_capped, nat_mm_cuda_emu)')
    parser.add_argument('--load-library', metavar='PATH', default=None,
                        help='torch.ops.load_library(PATH) first (the library of --ops-namespace)')
    parser.add_argument('--triton-autotune', action='store_true',
                        help='let the Triton autotuner try every candidate config')
    args = parser.parse_args(argv)
    python_backends = sorted(set(args.kernels) & set(FUSED_ONLY_KERNELS))
    if python_backends and (args.device != 'cuda' or args.ops_namespace):
        parser.error(f'--kernels {" ".join(python_backends)} run the public na2d on CUDA only '
                     '(no --ops-namespace, --device cuda)')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.load_library:
        torch.ops.load_library(args.load_library)
    if args.ops_namespace:
        if args.ops_namespace == 'nat_mm':
            extension_loaded()  # loads nat_mm._C, which registers the library
        ops = RawOps(args.ops_namespace)
        try:
            ops.ops.na2d_forward  # noqa: B018 - raises when the library is not registered
        except (AttributeError, RuntimeError) as error:
            sys.exit(f'sanitize_cases: no op torch.ops.{args.ops_namespace}.na2d_forward '
                     f'({error}); give --load-library')
        kernels = args.kernels
    else:
        ops = PublicOps()
        needs_cpp = args.device == 'cpu' or set(args.kernels) - set(FUSED_ONLY_KERNELS)
        if needs_cpp and (not extension_loaded()
                          or (args.device == 'cuda' and not extension_has_cuda())):
            sys.exit(f'sanitize_cases: nat_mm._C has no {args.device} kernels (build it first)')
        kernels = args.kernels if args.device == 'cuda' else ['cpu']
        if 'triton' in kernels and not args.triton_autotune:
            _one_triton_config()
    where = f'torch.ops.{args.ops_namespace}' if args.ops_namespace else 'nat_mm.ops'
    print(f'sanitize_cases: {where} on {args.device}, kernels {" ".join(kernels)}', flush=True)
    failures = 0
    for kernel in kernels:
        if kernel != 'cpu':
            os.environ['NAT_MM_CUDA_KERNEL'] = kernel  # read by the C++ and Python at every call
        for case in CASES:
            torch.manual_seed(0)
            start = time.perf_counter()
            try:
                worst = run_case(case, args.device, ops, fused_only=kernel in FUSED_ONLY_KERNELS)
                print(f'ok    {kernel:<9} {case[0]:<24} max scaled error {worst:.2e} '
                      f'({time.perf_counter() - start:.1f} s)', flush=True)
            except Exception as error:  # noqa: BLE001 - report every case, then fail
                failures += 1
                print(f'FAIL  {kernel:<9} {case[0]:<24} {type(error).__name__}: {error}',
                      flush=True)
    print(f'sanitize_cases: {failures} of {len(kernels) * len(CASES)} failed')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
