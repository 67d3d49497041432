"""Benchmark nat_mm's neighborhood attention against its peers on NAT's real layer shapes.

Backends, timed side by side in one run (A B C A B C ..., medians):
  nat_mm   the compiled ``nat_mm.ops.na2d`` (C++ CPU / CUDA kernels)
  gather   plain PyTorch: gather the k*k window with index tensors, einsum (nat_mm's fallback)
  natten   natten.na2d when natten is installed (no rpb; forward only on the CPU)
  sdpa     dense full attention (torch SDPA) over all H*W tokens, on CUDA only: the yardstick

Shapes are NAT-Tiny's layers (heads 2/4/8/16, head dim 32, 7x7, rpb) at 224x224 and 800x1216
input, plus the level-1 layer of a 400x668 image. Peak memory is the peak over the inputs: on CUDA
``max_memory_allocated``; on the CPU the peak resident set (VmHWM, reset through
/proc/self/clear_refs) with glibc's mmap threshold pinned so freed buffers go back to the system.

Example:
    python tools/benchmark_op.py --device cpu --json benchmarks/op_cpu.json
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass

if os.environ.get('MALLOC_MMAP_THRESHOLD_') is None and sys.platform.startswith('linux'):
    # Pin glibc's mmap threshold (else it grows after frees and peak RSS stops tracking peaks).
    os.environ['MALLOC_MMAP_THRESHOLD_'] = '65536'
    os.execv(sys.executable, [sys.executable] + sys.argv)

import torch  # noqa: E402

from nat_mm.ops import _torch_impl, extension_has_cuda, extension_loaded, na2d  # noqa: E402


@dataclass
class Layer:
    name: str
    H: int
    W: int
    heads: int
    D: int = 32
    kernel: int = 7
    dilation: int = 1


def nat_tiny_layers(image_h, image_w):
    layers = []
    for level in range(4):
        stride = 4 * 2 ** level
        layers.append(Layer(f'L{level + 1}@{image_h}x{image_w}', math.ceil(image_h / stride),
                            math.ceil(image_w / stride), 2 * 2 ** level))
    return layers


SHAPES = {
    '224': nat_tiny_layers(224, 224),
    '800x1216': nat_tiny_layers(800, 1216),
    'target': [Layer('L1@400x668', 100, 167, 2)],
}


def make_backends(device):
    backends = {}

    def nat_mm_fn(q, k, v, layer, rpb):
        return na2d(q, k, v, layer.kernel, layer.dilation, rpb)

    def gather_fn(q, k, v, layer, rpb):
        ks, dil = (layer.kernel, layer.kernel), (layer.dilation, layer.dilation)
        return _torch_impl.na2d(q, k, v, ks, dil, rpb, q.shape[-1] ** -0.5)

    backends['nat_mm'] = (nat_mm_fn, True)
    backends['gather'] = (gather_fn, True)
    try:
        import natten

        def natten_fn(q, k, v, layer, rpb):
            return natten.na2d(q, k, v, kernel_size=layer.kernel, dilation=layer.dilation)

        backends['natten'] = (natten_fn, device != 'cpu')  # natten has no CPU backward
    except ImportError:
        pass
    if device == 'cuda':
        import torch.nn.functional as F

        def sdpa_fn(q, k, v, layer, rpb):
            B, H, W, heads, D = q.shape
            flat = [t.reshape(B, H * W, heads, D).transpose(1, 2) for t in (q, k, v)]
            return F.scaled_dot_product_attention(*flat).transpose(1, 2).reshape(q.shape)

        backends['sdpa'] = (sdpa_fn, True)
    return backends


class PeakMemory:
    """Peak memory (bytes) above the level at entry."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')  # resets VmHWM to the current RSS
            self.base = self._status('VmRSS')
        return self

    def __exit__(self, *exc):
        if self.device == 'cuda':
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = self._status('VmHWM') - self.base

    @staticmethod
    def _status(field):
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f'{field} not in /proc/self/status')


def run_once(fn, inputs, layer, backward, device):
    q, k, v, rpb = inputs
    if device == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(q, k, v, layer, rpb)
    if backward:
        out.backward(torch.ones_like(out))
    if device == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - start


def make_inputs(layer, device, dtype, backward):
    shape = (1, layer.H, layer.W, layer.heads, layer.D)
    tensors = [torch.randn(shape, device=device, dtype=dtype, requires_grad=backward)
               for _ in range(3)]
    rpb = torch.randn(layer.heads, 2 * layer.kernel - 1, 2 * layer.kernel - 1, device=device,
                      dtype=dtype, requires_grad=backward)
    return tensors + [rpb]


def bench_layer(layer, backends, args):
    rows = []
    for mode in ('fwd', 'fwd+bwd'):
        backward = mode == 'fwd+bwd'
        active = {n: fn for n, (fn, has_bwd) in backends.items() if has_bwd or not backward}
        skipped = sorted(set(backends) - set(active))
        inputs = make_inputs(layer, args.device, args.dtype, backward)
        times = {n: [] for n in active}
        peaks = {}
        for name, fn in active.items():  # warm-up, and the peak memory of one call
            with PeakMemory(args.device) as mem:
                run_once(fn, inputs, layer, backward, args.device)
            peaks[name] = mem.peak
            for t in inputs:
                t.grad = None
        for _ in range(args.repeats):  # interleaved: A B C A B C ...
            for name, fn in active.items():
                times[name].append(run_once(fn, inputs, layer, backward, args.device))
                for t in inputs:
                    t.grad = None
        base = statistics.median(times['nat_mm'])
        for name in active:
            med = statistics.median(times[name])
            rows.append(dict(layer=layer.name, map=f'{layer.H}x{layer.W}', heads=layer.heads,
                             mode=mode, backend=name, median_ms=1e3 * med,
                             ratio_to_nat_mm=med / base, peak_mb=peaks[name] / 2 ** 20))
        for name in skipped:
            rows.append(dict(layer=layer.name, map=f'{layer.H}x{layer.W}', heads=layer.heads,
                             mode=mode, backend=name, median_ms=None, ratio_to_nat_mm=None,
                             peak_mb=None, note='no backward on this device'))
    return rows


def print_table(rows, header):
    print(header)
    print(f'{"layer":<16}{"map":>9}{"heads":>6}  {"mode":<8}{"backend":<8}'
          f'{"median ms":>11}{"x nat_mm":>10}{"peak MB":>10}')
    for r in rows:
        if r['median_ms'] is None:
            print(f'{r["layer"]:<16}{r["map"]:>9}{r["heads"]:>6}  {r["mode"]:<8}'
                  f'{r["backend"]:<8}  -- {r["note"]}')
            continue
        print(f'{r["layer"]:<16}{r["map"]:>9}{r["heads"]:>6}  {r["mode"]:<8}{r["backend"]:<8}'
              f'{r["median_ms"]:>11.2f}{r["ratio_to_nat_mm"]:>10.2f}{r["peak_mb"]:>10.1f}')


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        choices=['cpu', 'cuda'])
    parser.add_argument('--dtype', default=None, choices=['float32', 'bfloat16', 'float16'],
                        help='defaults to float32 on the CPU and bfloat16 on CUDA')
    parser.add_argument('--shapes', nargs='+', default=['target', '224', '800x1216'],
                        choices=sorted(SHAPES))
    parser.add_argument('--backends', nargs='+', default=None,
                        help='subset of nat_mm gather natten sdpa (default: all available)')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--json', default=None, help='write the rows to this JSON file')
    args = parser.parse_args()
    args.dtype = getattr(torch, args.dtype or ('float32' if args.device == 'cpu' else 'bfloat16'))
    return args


def main():
    args = parse_args()
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
    header = (f'# na2d benchmark: {device_name}, {args.dtype}, torch {torch.__version__}, '
              f'median of {args.repeats}')
    rows = []
    for key in args.shapes:
        for layer in SHAPES[key]:
            print(f'... {layer.name} ({layer.H}x{layer.W}, {layer.heads} heads)', file=sys.stderr,
                  flush=True)
            rows += bench_layer(layer, backends, args)
    print_table(rows, header)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(header=header, rows=rows), f, indent=1)


if __name__ == '__main__':
    main()
