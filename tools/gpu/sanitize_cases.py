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
tile, and no rpb. The oracle (nat_mm/testing/na_reference.py) runs on the CPU in float64 on the
same (rounded) inputs; errors are scaled by the reference's largest entry (gradients sum many
terms). Exits non-zero on any mismatch. The cases and checks: nat_mm/testing/op_cases.py.

Usage:
    compute-sanitizer --tool memcheck python tools/gpu/sanitize_cases.py
    python tools/gpu/sanitize_cases.py --kernels triton flex          # the fused backends
    python tools/gpu/sanitize_cases.py --ops-namespace nat_mm_capped --load-library LIB.so
    python tools/gpu/sanitize_cases.py --device cpu        # the same calls on the CPU kernels
"""

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)  # the checkout's nat_mm, as `python tools/gpu/sanitize_cases.py`

from nat_mm.ops import extension_has_cuda, extension_loaded  # noqa: E402
from nat_mm.testing.op_cases import (CPP_KERNELS, FUSED_ONLY_KERNELS, PublicOps,  # noqa: E402
                                     RawOps, one_triton_config, run_cases)


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
            one_triton_config()
    where = f'torch.ops.{args.ops_namespace}' if args.ops_namespace else 'nat_mm.ops'
    print(f'sanitize_cases: {where} on {args.device}, kernels {" ".join(kernels)}', flush=True)
    return 1 if run_cases(ops, args.device, kernels) else 0


if __name__ == '__main__':
    sys.exit(main())
