"""Benchmark nat_mm's neighborhood attention against its peers on NAT's real layer shapes.

Backends, timed side by side in one run (A B C A B C ..., medians):
  nat_mm      ``nat_mm.ops.na2d`` (C++ CPU kernels; on CUDA the implementation that
              NAT_MM_CUDA_KERNEL picks: unset or auto, see nat_mm/ops/_dispatch.py)
  triton      on CUDA only: the same with NAT_MM_CUDA_KERNEL=triton (the Triton tensor-core
              kernels; autotuned during the untimed first call), set around its forward and
              backward calls
  tiled       on CUDA only: NAT_MM_CUDA_KERNEL=tiled (the fused tiled C++ CUDA kernels)
  nat_mm_ref  on CUDA only: NAT_MM_CUDA_KERNEL=reference (the reference C++ CUDA kernels)
  gather      plain PyTorch: gather the k*k window with index tensors, einsum (nat_mm's fallback)
  natten      natten.na2d when natten is installed (no rpb; forward only on the CPU)
  sdpa        dense full attention (torch SDPA) over all H*W tokens, on CUDA only: the yardstick
  flex        torch's FlexAttention, compiled, with NAT's window as mask_mod and rpb as score_mod
              (nat_mm/ops/_flex.py), tokens in row-major order (y * W + x): what a torch user
              would write instead of NA. Its BlockMask is built once per shape and its
              compilation runs before the timed calls; the layout conversion to
              [B, heads, H*W, D] and back is timed (as for sdpa). Forward only on the CPU
              (torch's compiled CPU FlexAttention has no backward)
  flex_tiled  the same over tokens permuted so that each 128-token block is an 8x16 tile of the
              map (of one dilation group's sub-map); the permutation both ways is timed

Shapes are NAT-Tiny's layers (heads 2/4/8/16, head dim 32, 7x7, rpb) at 224x224 and 800x1216
input, plus the level-1 layer of a 400x668 image. Peak memory is the peak over the inputs
(nat_mm.utils.benchmark.PeakMemory): on CUDA ``max_memory_allocated``; on the CPU the peak
resident set (VmHWM, reset through /proc/self/clear_refs) with glibc's mmap threshold pinned so
freed buffers go back to the system. The backends and the timing: nat_mm/utils/na_benchmark.py.

``--block-stats`` runs no attention: it prints, from the flex BlockMasks of NAT-Tiny's layers at
800x1216 (and DiNAT's dilations of each level), the key blocks each 128-token query block visits,
row-major against tiled.

Example:
    python tools/benchmark_op.py --device cpu --json benchmarks/op_cpu.json --plot
    python tools/benchmark_op.py --replot benchmarks/op_cpu.json   # the chart of a saved run
    python tools/benchmark_op.py --block-stats                     # flex blocks, no timing
"""

import argparse
import json
import os
import sys

if (__name__ == '__main__' and os.environ.get('MALLOC_MMAP_THRESHOLD_') is None
        and sys.platform.startswith('linux')):
    # Pin glibc's mmap threshold (else it grows after frees and peak RSS stops tracking peaks):
    # nat_mm.utils.benchmark.MMAP_THRESHOLD_ENV, set before anything is imported.
    os.environ['MALLOC_MMAP_THRESHOLD_'] = '65536'
    os.execv(sys.executable, [sys.executable] + sys.argv)

import torch  # noqa: E402

from nat_mm.ops import extension_has_cuda, extension_loaded  # noqa: E402
from nat_mm.utils.na_benchmark import (SHAPES, bench_layer, block_stats_rows,  # noqa: E402
                                       make_backends, print_block_stats, print_table)
from nat_mm.utils.plots import plot_op, replot  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        choices=['cpu', 'cuda'])
    parser.add_argument('--dtype', default=None, choices=['float32', 'bfloat16', 'float16'],
                        help='defaults to float32 on the CPU and bfloat16 on CUDA')
    parser.add_argument('--shapes', nargs='+', default=['target', '224', '800x1216'],
                        choices=sorted(SHAPES))
    parser.add_argument('--backends', nargs='+', default=None,
                        help='subset of nat_mm triton tiled nat_mm_ref gather natten sdpa flex '
                        'flex_tiled (default: all available; triton, tiled, nat_mm_ref and sdpa '
                        'on CUDA only)')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--json', default=None, help='write the rows to this JSON file')
    parser.add_argument('--plot', action='store_true',
                        help='also draw a PNG chart beside the JSON (needs --json)')
    parser.add_argument('--replot', metavar='JSON', default=None,
                        help='only draw the chart of a saved JSON (beside it), run nothing')
    parser.add_argument('--block-stats', action='store_true',
                        help='only print the flex key blocks visited per query block (row-major '
                        'vs tiled) at NAT-Tiny 800x1216 and DiNAT dilations; no attention run')
    args = parser.parse_args()
    if args.plot and not args.json:
        parser.error('--plot writes the chart beside the JSON: give --json PATH too')
    args.dtype = getattr(torch, args.dtype or ('float32' if args.device == 'cpu' else 'bfloat16'))
    return args


def main():
    args = parse_args()
    if args.replot:
        print(f'wrote {replot(args.replot, plot_op)}')
        return
    if args.block_stats:
        rows = block_stats_rows(SHAPES['800x1216'])
        print_block_stats(rows)
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(dict(rows=rows), f, indent=1)
        return
    if not extension_loaded() or (args.device == 'cuda' and not extension_has_cuda()):
        sys.exit(f'benchmark_op: the compiled nat_mm kernels for {args.device} are not built')
    backends = make_backends(args.device)
    if args.backends:
        unknown = set(args.backends) - set(backends)
        if unknown:
            sys.exit(f'benchmark_op: backends not available here: {sorted(unknown)}; '
                     f'available: {sorted(backends)}')
        backends = {n: backends[n] for n in ['nat_mm'] + [b for b in args.backends
                                                          if b != 'nat_mm']}
    device_name = (torch.cuda.get_device_name() if args.device == 'cuda' else
                   f'CPU, {torch.get_num_threads()} threads')
    if args.device == 'cuda':
        device_name += f', NAT_MM_CUDA_KERNEL={os.environ.get("NAT_MM_CUDA_KERNEL") or "auto"}'
    header = (f'# na2d benchmark: {device_name}, {args.dtype}, torch {torch.__version__}, '
              f'median of {args.repeats}')
    rows = []
    for key in args.shapes:
        for layer in SHAPES[key]:
            print(f'... {layer.name} ({layer.H}x{layer.W}, {layer.heads} heads)', file=sys.stderr,
                  flush=True)
            rows += bench_layer(layer, backends, args.device, args.dtype, args.repeats)
            if args.json:  # after every layer, so a run cut short keeps what it measured
                with open(args.json, 'w') as f:
                    json.dump(dict(header=header, rows=rows), f, indent=1)
    print_table(rows, header)
    if args.json and args.plot:
        print(f'wrote {replot(args.json, plot_op)}')


if __name__ == '__main__':
    main()
