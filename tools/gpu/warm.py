"""Compile ahead of tools/gpu/check.sh's timed steps: make tools/benchmark_op.py's untimed first
calls of some backends (per NAT-Tiny layer, dtype and mode), so that the on-disk caches hold every
kernel the timed benchmark will need.

check.sh times one step after another on a quiet machine, and compiling is CPU work that can run
in the background while the extension builds and the tests run. What stays on disk: Triton's
compiled kernels (``~/.triton/cache``; the autotuner compiles every candidate config of a kernel,
its choice itself is not kept between processes, so the benchmark times the candidates again,
from cache); FlexAttention's ``torch.compile`` of each layer shape and mode (Inductor's FX graph
and kernel caches). The calls are exactly the benchmark's (nat_mm/utils/na_benchmark.py):
backends from ``make_backends``, their ``prepare`` hook (the flex BlockMask), then one
``run_once`` on ``make_inputs``. A backend benchmark_op does not offer here is skipped with a
note. Best effort: a failing call is printed and the rest go on; exit status 1 if any failed.

Usage:
    python tools/gpu/warm.py --backends triton --dtypes bfloat16 float16 float32
    python tools/gpu/warm.py --backends flex flex_tiled --dtypes bfloat16 float16
"""
import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)  # the checkout's nat_mm
from nat_mm.utils import na_benchmark  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--backends', nargs='+', required=True)
    parser.add_argument('--dtypes', nargs='+', default=['bfloat16'],
                        choices=['bfloat16', 'float16', 'float32'])
    parser.add_argument('--shapes', nargs='+', default=['800x1216'],
                        choices=sorted(na_benchmark.SHAPES))
    parser.add_argument('--modes', nargs='+', default=['fwd', 'fwd+bwd'],
                        choices=['fwd', 'fwd+bwd'])
    args = parser.parse_args(argv)
    available = na_benchmark.make_backends(args.device)
    failures = 0
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for name in args.backends:
            if name not in available:
                print(f'warm: {name}: not a backend of benchmark_op.py on {args.device} here '
                      f'(it has {", ".join(sorted(available))}): skipped', flush=True)
                continue
            fn, has_backward = available[name]
            start = time.perf_counter()
            for key in args.shapes:
                for layer in na_benchmark.SHAPES[key]:
                    for mode in args.modes:
                        backward = mode == 'fwd+bwd'
                        if backward and not has_backward:
                            continue
                        try:
                            if hasattr(fn, 'prepare'):
                                fn.prepare(layer, args.device)
                            inputs = na_benchmark.make_inputs(layer, args.device, dtype,
                                                              backward)
                            na_benchmark.run_once(fn, inputs, layer, backward, args.device)
                        except Exception as error:  # noqa: BLE001 - report, go on
                            failures += 1
                            print(f'warm: {name} {dtype_name} {layer.name} {mode}: FAILED '
                                  f'{type(error).__name__}: {str(error).strip()[:200]}',
                                  flush=True)
            print(f'warm: {name} {dtype_name}: {time.perf_counter() - start:.1f} s', flush=True)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
