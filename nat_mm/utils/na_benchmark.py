"""The na2d benchmark of tools/benchmark_op.py: its backends, one layer timed, the flex block
statistics (torch only; tools/gpu/warm.py and tools/gpu/check.sh use the same backends).

Backends (:func:`make_backends`), each ``fn(q, k, v, layer, rpb)`` with a flag saying whether it
has a backward on the device; ``fn.env`` (environment variables set around its calls) and
``fn.prepare(layer, device)`` (untimed set-up) where it has them:

- ``nat_mm``: ``nat_mm.ops.na2d`` (C++ CPU kernels; on CUDA the implementation that
  NAT_MM_CUDA_KERNEL picks);
- ``triton``, ``tiled``, ``nat_mm_ref`` (CUDA only): the same with NAT_MM_CUDA_KERNEL set to
  ``triton``, ``tiled``, ``reference``;
- ``gather``: plain PyTorch (``nat_mm.ops._torch_impl``, nat_mm's fallback);
- ``natten``: ``natten.na2d`` where natten is installed (no rpb; forward only on the CPU);
- ``sdpa`` (CUDA only): dense SDPA over all H*W tokens, the yardstick;
- ``flex``, ``flex_tiled``: FlexAttention compiled, tokens row-major or in 2-D tiles
  (:mod:`nat_mm.ops._flex`; forward only on the CPU).
"""
import statistics
import sys
from functools import partial
from typing import Callable, Dict, List, Tuple

import torch

from ..ops import _torch_impl, na2d
from .benchmark import Layer, PeakMemory, Stopwatch, environment, interleaved, nat_tiny_layers

__all__ = ['SHAPES', 'make_backends', 'make_inputs', 'run_once', 'bench_layer', 'print_table',
           'BLOCK_STATS_DILATIONS', 'BLOCK_STATS_TILES', 'block_stats_rows', 'print_block_stats']

#: The layer sets of ``--shapes``: NAT-Tiny's layers at 224x224 and 800x1216, the level-1 layer
#: of a 400x668 image, and a quick check of the tool itself (with dilation).
SHAPES: Dict[str, List[Layer]] = {
    '224': nat_tiny_layers(224, 224),
    '800x1216': nat_tiny_layers(800, 1216),
    'target': nat_tiny_layers(400, 668)[:1],
    # A quick check of the tool itself (tools/gpu/check.sh --cpu-dry-run), with dilation.
    'smoke': [Layer('smoke-d2', 18, 23, 2, dilation=2)],
}


def make_backends(device: str) -> Dict[str, Tuple[Callable, bool]]:
    """``{name: (fn, has_backward)}``: the backends available on ``device`` (see the module
    docstring)."""
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
        from ..ops._flex import FlexNA
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


# --block-stats: DiNAT's dilations per level (docs/design.md section 5: 28 at level 1, 7 and 14 at
# level 2, 3, 5 and 7 at level 3, 3 at level 4), plus 4 and 8 at level 1; and the tile shapes
# of 128 tokens the tiled order is also tried with (the best one is reported beside 8x16).
BLOCK_STATS_DILATIONS = ((1, 4, 8, 28), (1, 7, 14), (1, 3, 5, 7), (1, 3))
BLOCK_STATS_TILES = ((2, 64), (4, 32), (8, 16), (16, 8), (32, 4))


def _block_stats_row(layer, d, order, tile):
    from ..ops import _flex

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
    from ..ops import _flex

    rows = []
    for layer, level_dilations in zip(layers, dilations):
        for d in level_dilations:
            rows.append(_block_stats_row(layer, d, 'row_major', _flex.TILE))
            tiled = [_block_stats_row(layer, d, 'tiled', tile) for tile in tiles]
            default = next(r for r in tiled if r['tile'] == 'x'.join(map(str, _flex.TILE)))
            best = min(tiled, key=lambda r: r['work'])
            rows += [default] + ([best] if best['work'] < default['work'] else [])
    return rows


def print_block_stats(rows: List[dict]) -> None:
    """The rows of :func:`block_stats_rows` as a table."""
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


def run_once(fn, inputs, layer: Layer, backward: bool, device: str) -> float:
    """One timed call of ``fn`` (and its backward of ones) with ``fn.env`` set; seconds."""
    q, k, v, rpb = inputs
    with environment(getattr(fn, 'env', {})), Stopwatch(device) as watch:
        out = fn(q, k, v, layer, rpb)
        if backward:
            out.backward(torch.ones_like(out))
    return watch.seconds


def _clear_grads(inputs) -> None:
    for t in inputs:
        t.grad = None


def make_inputs(layer: Layer, device: str, dtype: torch.dtype, backward: bool) -> list:
    """``[q, k, v, rpb]`` random, ``[1, H, W, heads, D]`` and ``[heads, 2k-1, 2k-1]``."""
    shape = (1, layer.H, layer.W, layer.heads, layer.D)
    tensors = [torch.randn(shape, device=device, dtype=dtype, requires_grad=backward)
               for _ in range(3)]
    rpb = torch.randn(layer.heads, 2 * layer.kernel - 1, 2 * layer.kernel - 1, device=device,
                      dtype=dtype, requires_grad=backward)
    return tensors + [rpb]


def bench_layer(layer: Layer, backends: Dict[str, Tuple[Callable, bool]], device: str,
                dtype: torch.dtype, repeats: int) -> List[dict]:
    """Time ``backends`` on ``layer``, forward and forward+backward, interleaved; one row per
    (mode, backend) with its median, its ratio to ``nat_mm`` and the peak memory of one call
    (:class:`PeakMemory`, on the untimed warm-up call). A backend whose set-up or first call
    fails is reported in its row's ``note`` and the others are timed."""
    rows = []
    for mode in ('fwd', 'fwd+bwd'):
        backward = mode == 'fwd+bwd'
        active = {n: fn for n, (fn, has_bwd) in backends.items() if has_bwd or not backward}
        notes = {n: 'no backward on this device' for n in set(backends) - set(active)}
        inputs = make_inputs(layer, device, dtype, backward)
        for name, fn in list(active.items()):  # untimed set-up (flex: BlockMask, compilation)
            if not hasattr(fn, 'prepare'):
                continue
            try:
                fn.prepare(layer, device)
                run_once(fn, inputs, layer, backward, device)
            except Exception as error:  # noqa: BLE001 - report this backend as failed, go on
                notes[name] = f'failed: {type(error).__name__}: {str(error).strip()[:150]}'
                print(f'benchmark_op: {name} on {layer.name} {mode}: {notes[name]}',
                      file=sys.stderr)
                del active[name]
            _clear_grads(inputs)
        skipped = sorted(notes)
        peaks = {}
        for name, fn in active.items():  # warm-up, and the peak memory of one call
            with PeakMemory(device) as mem:
                run_once(fn, inputs, layer, backward, device)
            peaks[name] = mem.peak
            _clear_grads(inputs)

        def timed(fn, backward=backward, inputs=inputs):
            seconds = run_once(fn, inputs, layer, backward, device)
            _clear_grads(inputs)
            return seconds

        # interleaved: A B C A B C ...
        times = interleaved({name: partial(timed, fn) for name, fn in active.items()}, repeats)
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


def print_table(rows: List[dict], header: str) -> None:
    """The rows of :func:`bench_layer` as a table, under ``header``."""
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
