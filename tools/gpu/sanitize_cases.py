"""Run each of nat_mm's six dispatcher ops once per kernel variant, on small maps, for
compute-sanitizer (tools/gpu/check.sh runs it under memcheck and racecheck).

The six ops: na2d_forward / na2d_backward (through ``na2d`` and autograd), na2d_qk_forward /
na2d_qk_backward (``na2d_qk``), na2d_av_forward / na2d_av_backward (``na2d_av``). Each variant of
``--kernels`` sets NAT_MM_CUDA_KERNEL for its calls (``reference`` forces the reference CUDA
kernels, ``tiled`` the fused tiled ones, which serve na2d forward and backward; the qk/av ops have
reference kernels only). The cases cover float32, float16 and bfloat16, dilation, a map that is
not a multiple of the tile, and no rpb. Every output and gradient is also compared with the
float64 oracle (tests/na_reference.py), so a run that the sanitizer passes also checks the values.
Exits non-zero on any mismatch.

Usage:
    compute-sanitizer --tool memcheck python tools/gpu/sanitize_cases.py
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


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def check(name, got, want, dtype):
    """Compare with the float64 oracle, relative to its largest entry (gradients sum terms)."""
    scale = max(1.0, want.abs().max().item())
    err = ((got.double() - want) / scale).abs().max().item()
    tol = TOL[dtype]['atol'] * 4  # reduced-precision gradients through softmax: some slack
    if not (err <= tol):  # also catches NaN
        raise AssertionError(f'{name}: max scaled error {err:.3g} > {tol:.3g}')
    return err


def run_case(case, device):
    name, B, H, W, heads, D, kernel_size, dilation, with_rpb, dtype = case
    ks, dil = _pair(kernel_size), _pair(dilation)
    leaves = [torch.randn(B, H, W, heads, D, device=device, dtype=dtype) for _ in range(3)]
    rpb = torch.randn(heads, 2 * ks[0] - 1, 2 * ks[1] - 1, device=device, dtype=dtype) \
        if with_rpb else None
    leaves += [rpb] if with_rpb else []
    for t in leaves:
        t.requires_grad_()
    q, k, v = leaves[:3]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    rq, rk, rv = ref_leaves[:3]
    rrpb = ref_leaves[3] if with_rpb else None
    worst = 0.0

    # na2d_forward + na2d_backward
    out = na2d(q, k, v, kernel_size, dilation, rpb)
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, grad)
    ref = reference_na2d(rq, rk, rv, ks, dil, rrpb)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad.double())
    for what, got, want in zip(['out', 'dq', 'dk', 'dv', 'drpb'], [out, *grads], [ref, *ref_grads]):
        worst = max(worst, check(f'{name} na2d {what}', got, want, dtype))

    # na2d_qk_forward + na2d_qk_backward, na2d_av_forward + na2d_av_backward
    qk_leaves = [q, k] + ([rpb] if with_rpb else [])
    attn = na2d_qk(q, k, kernel_size, dilation, rpb)
    attn_ref = reference_logits(rq, rk, ks, dil, rrpb)
    worst = max(worst, check(f'{name} na2d_qk attn', attn, attn_ref, dtype))
    gattn = torch.randn_like(attn)
    ref_qk_leaves = [rq, rk] + ([rrpb] if with_rpb else [])
    for what, got, want in zip(['dq', 'dk', 'drpb'], torch.autograd.grad(attn, qk_leaves, gattn),
                               torch.autograd.grad(attn_ref, ref_qk_leaves, gattn.double())):
        worst = max(worst, check(f'{name} na2d_qk {what}', got, want, dtype))
    probs = torch.softmax(torch.randn_like(attn, dtype=torch.float32), -1).to(dtype)
    probs.requires_grad_()
    av = na2d_av(probs, v, kernel_size, dilation)
    rprobs = probs.detach().double().requires_grad_()
    av_ref = reference_av(rprobs, rv, ks, dil)
    worst = max(worst, check(f'{name} na2d_av out', av, av_ref, dtype))
    gav = torch.randn_like(av)
    for what, got, want in zip(['dattn', 'dv'], torch.autograd.grad(av, [probs, v], gav),
                               torch.autograd.grad(av_ref, [rprobs, rv], gav.double())):
        worst = max(worst, check(f'{name} na2d_av {what}', got, want, dtype))
    if device == 'cuda':
        torch.cuda.synchronize()
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda', choices=['cuda', 'cpu'])
    parser.add_argument('--kernels', nargs='+', default=['reference', 'tiled'],
                        choices=['reference', 'tiled', 'auto'],
                        help='NAT_MM_CUDA_KERNEL values to run (CUDA only)')
    args = parser.parse_args()
    if not extension_loaded() or (args.device == 'cuda' and not extension_has_cuda()):
        sys.exit(f'sanitize_cases: nat_mm._C has no {args.device} kernels (build it first)')
    kernels = args.kernels if args.device == 'cuda' else ['cpu']
    failures = 0
    for kernel in kernels:
        if args.device == 'cuda':
            os.environ['NAT_MM_CUDA_KERNEL'] = kernel  # read by the C++ at every call
        for case in CASES:
            torch.manual_seed(0)
            start = time.perf_counter()
            try:
                worst = run_case(case, args.device)
                print(f'ok    {kernel:<9} {case[0]:<24} max scaled error {worst:.2e} '
                      f'({time.perf_counter() - start:.1f} s)', flush=True)
            except Exception as error:  # noqa: BLE001 - report every case, then fail
                failures += 1
                print(f'FAIL  {kernel:<9} {case[0]:<24} {type(error).__name__}: {error}',
                      flush=True)
    print(f'sanitize_cases: {failures} of {len(kernels) * len(CASES)} failed')
    sys.exit(1 if failures else 0)


if __name__ == '__main__':
    main()
