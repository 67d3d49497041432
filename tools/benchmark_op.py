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
input, plus the level-1 layer of a 400x668 image. Peak memory is the peak over the inputs: on CUDA
``max_memory_allocated``; on the CPU the peak resident set (VmHWM, reset through
/proc/self/clear_refs) with glibc's mmap threshold pinned so freed buffers go back to the system.

``--block-stats`` runs no attention: it prints, from the flex BlockMasks of NAT-Tiny's layers at
800x1216 (and DiNAT's dilations of each level), the key blocks each 128-token query block visits,
row-major against tiled.

Example:
    python tools/benchmark_op.py --device cpu --json benchmarks/op_cpu.json --plot
    python tools/benchmark_op.py --replot benchmarks/op_cpu.json   # the chart of a saved run
    python tools/benchmark_op.py --block-stats                     # flex blocks, no timing
"""
import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass

if (__name__ == '__main__' and os.environ.get('MALLOC_MMAP_THRESHOLD_') is None
        and sys.platform.startswith('linux')):
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
    # A quick check of the tool itself (tools/gpu/check.sh --cpu-dry-run), with dilation.
    'smoke': [Layer('smoke-d2', 18, 23, 2, dilation=2)],
}


def make_backends(device):
    backends = {}

    def nat_mm_fn(q, k, v, layer, rpb):
        return na2d(q, k, v, layer.kernel, layer.dilation, rpb)

    def gather_fn(q, k, v, layer, rpb):
        ks, dil = (layer.kernel, layer.kernel), (layer.dilation, layer.dilation)
        return _torch_impl.na2d(q, k, v, ks, dil, rpb, q.shape[-1] ** -0.5)

    backends['nat_mm'] = (nat_mm_fn, True)
    if device == 'cuda':
        # NAT_MM_CUDA_KERNEL is read at every call (by nat_mm/ops/_dispatch.py and the C++)
        for name, kernel in (('triton', 'triton'), ('tiled', 'tiled'),
                             ('nat_mm_ref', 'reference')):
            backends[name] = (_forced_cuda_kernel(kernel), True)
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
    try:
        from nat_mm.ops._flex import FlexNA
    except ImportError:  # a torch without FlexAttention
        FlexNA = None
    if FlexNA is not None:
        for name, order in (('flex', 'row_major'), ('flex_tiled', 'tiled')):
            backends[name] = (_flex_backend(FlexNA(order)), device != 'cpu')  # no CPU backward
    return backends


def _forced_cuda_kernel(kernel):
    def fn(q, k, v, layer, rpb):
        return na2d(q, k, v, layer.kernel, layer.dilation, rpb)

    fn.env = {'NAT_MM_CUDA_KERNEL': kernel}
    return fn


def _flex_backend(flex):
    def flex_fn(q, k, v, layer, rpb):
        return flex(q, k, v, layer.kernel, layer.dilation, rpb)

    # untimed: the BlockMask, once per shape (bench_layer also makes one untimed call first)
    flex_fn.prepare = lambda layer, device: flex.block_mask(layer.H, layer.W, layer.kernel,
                                                            layer.dilation, device)
    return flex_fn


# --block-stats: DiNAT's dilations per level (DESIGN.md section 5: 28 at level 1, 7 and 14 at
# level 2, 3, 5 and 7 at level 3, 3 at level 4), plus 4 and 8 at level 1; and the tile shapes
# of 128 tokens the tiled order is also tried with (the best one is reported beside 8x16).
BLOCK_STATS_DILATIONS = ((1, 4, 8, 28), (1, 7, 14), (1, 3, 5, 7), (1, 3))
BLOCK_STATS_TILES = ((2, 64), (4, 32), (8, 16), (16, 8), (32, 4))


def _block_stats_row(layer, d, order, tile):
    from nat_mm.ops import _flex

    mask = _flex.neighborhood_block_mask(layer.H, layer.W, layer.kernel, d, order, tile)
    stats = _flex.block_stats(mask)
    work = (stats['visited_mean'] * stats['q_blocks'] * _flex.BLOCK_SIZE ** 2
            / (layer.H * layer.W * layer.kernel ** 2))
    return dict(layer=layer.name, map=f'{layer.H}x{layer.W}', heads=layer.heads,
                kernel=layer.kernel, dilation=d, order=order,
                tile='x'.join(map(str, tile)) if order == 'tiled' else '-',
                tokens=_flex.token_order(layer.H, layer.W, d, order, tile).tokens, work=work,
                **stats)


def block_stats_rows(layers, dilations=BLOCK_STATS_DILATIONS, tiles=BLOCK_STATS_TILES):
    """Key blocks visited per query block of the flex BlockMasks (no attention is run), for each
    layer and each of its level's dilations: row-major, tiled with the default 8x16 tile, and
    tiled with the tile of ``tiles`` that visits the fewest blocks in all (when not 8x16).

    Returns:
        list[dict]: per (layer, dilation, order, tile): tokens T, query blocks, the partial and
        full key blocks per query block (mean, max; see ``_flex.block_stats``) and ``work``: the
        (query, key) pairs scored, visited blocks times 128 x 128, over the H*W*k*k NA needs.
    """
    from nat_mm.ops import _flex

    rows = []
    for layer, level_dilations in zip(layers, dilations):
        for d in level_dilations:
            rows.append(_block_stats_row(layer, d, 'row_major', _flex.TILE))
            tiled = [_block_stats_row(layer, d, 'tiled', tile) for tile in tiles]
            default = next(r for r in tiled if r['tile'] == 'x'.join(map(str, _flex.TILE)))
            best = min(tiled, key=lambda r: r['work'])
            rows += [default] + ([best] if best['work'] < default['work'] else [])
    return rows


def print_block_stats(rows):
    print('# FlexAttention: key blocks visited per 128-token query block (partial: mask_mod '
          f'applied; full: not), torch {torch.__version__}')
    print(f'{"layer":<13}{"map":>8}{"heads":>6}{"k":>3}{"d":>4}  {"order":<10}{"tile":<6}'
          f'{"tokens":>7}{"q blocks":>9}{"partial mean":>13}{"max":>4}{"full mean":>10}'
          f'{"max":>4}{"work x":>8}')
    for r in rows:
        print(f'{r["layer"]:<13}{r["map"]:>8}{r["heads"]:>6}{r["kernel"]:>3}{r["dilation"]:>4}  '
              f'{r["order"]:<10}{r["tile"]:<6}{r["tokens"]:>7}{r["q_blocks"]:>9}'
              f'{r["partial_mean"]:>13.2f}{r["partial_max"]:>4}{r["full_mean"]:>10.2f}'
              f'{r["full_max"]:>4}{r["work"]:>8.2f}')


@contextlib.contextmanager
def environment(env):
    """Set the environment variables of ``env`` inside the block, then restore them."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
    with environment(getattr(fn, 'env', {})):
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
        notes = {n: 'no backward on this device' for n in set(backends) - set(active)}
        inputs = make_inputs(layer, args.device, args.dtype, backward)
        for name, fn in list(active.items()):  # untimed set-up (flex: BlockMask, compilation)
            if not hasattr(fn, 'prepare'):
                continue
            try:
                fn.prepare(layer, args.device)
                run_once(fn, inputs, layer, backward, args.device)
            except Exception as error:  # noqa: BLE001 - report this backend as failed, go on
                notes[name] = f'failed: {type(error).__name__}: {str(error).strip()[:150]}'
                print(f'benchmark_op: {name} on {layer.name} {mode}: {notes[name]}',
                      file=sys.stderr)
                del active[name]
            for t in inputs:
                t.grad = None
        skipped = sorted(notes)
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
                             peak_mb=None, note=notes[name]))
    return rows


def print_table(rows, header):
    print(header)
    print(f'{"layer":<16}{"map":>9}{"heads":>6}  {"mode":<8}{"backend":<11}'
          f'{"median ms":>11}{"x nat_mm":>10}{"peak MB":>10}')
    for r in rows:
        if r['median_ms'] is None:
            print(f'{r["layer"]:<16}{r["map"]:>9}{r["heads"]:>6}  {r["mode"]:<8}'
                  f'{r["backend"]:<11}  -- {r["note"]}')
            continue
        print(f'{r["layer"]:<16}{r["map"]:>9}{r["heads"]:>6}  {r["mode"]:<8}{r["backend"]:<11}'
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


def plot(json_path):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _plots import plot_op, png_beside

    with open(json_path) as f:
        print(f'wrote {plot_op(json.load(f), png_beside(json_path))}')


def main():
    args = parse_args()
    if args.replot:
        return plot(args.replot)
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
            rows += bench_layer(layer, backends, args)
            if args.json:  # after every layer, so a run cut short keeps what it measured
                with open(args.json, 'w') as f:
                    json.dump(dict(header=header, rows=rows), f, indent=1)
    print_table(rows, header)
    if args.json:
        if args.plot:
            plot(args.json)


if __name__ == '__main__':
    main()
