"""Benchmark the NAT-Tiny backbone against a Swin-T backbone (mmdet's or timm's), side by side.

The backbones run in one process, interleaved (NAT, Swin, NAT, Swin, ...), so that machine
noise hits both alike; the table reports medians. Two modes: inference (``no_grad``, eval) and a
training step (train mode, forward + backward of a scalar over all four outputs).

Swin-T comes from mmdet (``--swin mmdet``, the default where mmdet imports, so that earlier
numbers stay comparable) or from timm alone (``--swin timm``, the default without mmdet: what
runs on a GPU machine without OpenMMLab): ``swin_tiny_patch4_window7_224``, the same
architecture, built for the input size (``img_size``; timm pads each stage's map to whole
windows) with ``features_only`` (its four stage outputs), random weights, no download.
``--nat-kernels triton tiled`` times NAT-Tiny once per NAT_MM_CUDA_KERNEL value (set around each
of its runs; one module, one set of weights), so the fused-attention backends are compared
inside the whole backbone.

Peak memory is the extra memory a run needs above what the process held before it
(nat_mm.utils.benchmark.PeakMemory; the runs: nat_mm/utils/backbone_benchmark.py):
- CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the
  memory allocated before the run;
- CPU: the peak resident set size of the process (``VmHWM``, reset through
  ``/proc/self/clear_refs``, Linux) minus the resident size before the run, after returning
  freed heap memory to the OS with ``malloc_trim``. tracemalloc would not see torch's
  allocations at all.

Swin-T: embed_dims=96, depths (2, 2, 6, 2), heads (3, 6, 12, 24), window 7, mlp_ratio 4, the
mmdet Mask R-CNN Swin-T settings (timm's swin_tiny_patch4_window7_224 has the same);
NAT-Tiny: ``NAT(arch='tiny')``. Both with drop_path_rate 0.2.

Examples::

    python tools/benchmark_backbone.py                      # 800x1216, CPU
    python tools/benchmark_backbone.py --shape 224 320 --repeats 2 --json bench.json --plot
    python tools/benchmark_backbone.py --replot bench.json   # the chart of a saved run
    python tools/benchmark_backbone.py --device cuda --dtype float16
    python tools/benchmark_backbone.py --device cuda --dtype bfloat16 --swin timm \\
        --nat-kernels triton tiled          # tools/gpu/check.sh's backbone step
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nat_mm  # noqa: E402
from nat_mm.utils.backbone_benchmark import DTYPES, benchmark_backbones, build_models  # noqa: E402
from nat_mm.utils.benchmark import device_name  # noqa: E402
from nat_mm.utils.plots import plot_backbone, replot  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:i] (default: cpu)')
    parser.add_argument('--shape', type=int, nargs=2, default=(800, 1216), metavar=('H', 'W'),
                        help='input height and width (default: 800 1216)')
    parser.add_argument('--batch', type=int, default=1, help='batch size (default: 1)')
    parser.add_argument('--repeats', type=int, default=3,
                        help='timed runs per model and mode (default: 3)')
    parser.add_argument('--warmup', type=int, default=1,
                        help='untimed runs per model and mode first (default: 1)')
    parser.add_argument('--modes', nargs='+', choices=('infer', 'train'),
                        default=('infer', 'train'), help='what to run (default: both)')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='float32',
                        help='autocast dtype; float32 means no autocast (default: float32)')
    parser.add_argument('--swin', choices=('auto', 'mmdet', 'timm'), default='auto',
                        help="Swin-T's implementation; auto: mmdet's where mmdet imports, else "
                        "timm's (default: auto)")
    parser.add_argument('--nat-kernels', nargs='+', default=None, metavar='KERNEL',
                        choices=('auto', 'triton', 'tiled', 'reference', 'flex'),
                        help='time NAT-Tiny once per NAT_MM_CUDA_KERNEL value (CUDA only; '
                        'default: one run, the variable as set)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch.set_num_threads on CPU (default: torch default)')
    parser.add_argument('--json', metavar='PATH', help='also write the results as JSON here')
    parser.add_argument('--plot', action='store_true',
                        help='also draw a PNG chart beside the JSON (needs --json)')
    parser.add_argument('--replot', metavar='JSON', default=None,
                        help='only draw the chart of a saved JSON (beside it), run nothing')
    args = parser.parse_args(argv)
    if args.plot and not args.json:
        parser.error('--plot writes the chart beside the JSON: give --json PATH too')
    # argparse errors only (no nat_mm.mm.cli): this tool also runs where mmengine is absent
    if min(*args.shape, args.batch, args.repeats) < 1 or args.warmup < 0:
        parser.error(f'--shape, --batch and --repeats must be >= 1, --warmup >= 0, got '
                     f'--shape {args.shape[0]} {args.shape[1]} --batch {args.batch} --repeats '
                     f'{args.repeats} --warmup {args.warmup}')
    if args.replot and not Path(args.replot).is_file():
        parser.error(f'--replot {args.replot}: no such file (give the JSON of a saved run)')
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f'--device must be cpu or cuda[:i], got {args.device!r}')
    if device.type not in ('cpu', 'cuda'):
        parser.error(f'--device must be cpu or cuda[:i], got {args.device!r}')
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available here')
    if args.nat_kernels and device.type != 'cuda':
        parser.error('--nat-kernels selects CUDA kernels (NAT_MM_CUDA_KERNEL): use --device cuda')
    if args.swin == 'auto':
        args.swin = 'mmdet' if importlib.util.find_spec('mmdet') is not None else 'timm'
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        print(f'wrote {replot(args.replot, plot_backbone)}')
        return None
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    models = build_models(device, args.shape, args.swin, args.nat_kernels)
    x = torch.randn(args.batch, 3, *args.shape, device=device)
    results = benchmark_backbones(models, x, args.modes, dtype, device, args.repeats,
                                  args.warmup)

    env = dict(device=str(device), device_name=device_name(device),
               threads=torch.get_num_threads(), dtype=args.dtype, shape=list(args.shape),
               batch=args.batch, repeats=args.repeats, warmup=args.warmup,
               torch=torch.__version__, nat_mm_compiled_ops=nat_mm.ops.extension_loaded(),
               swin=args.swin, nat_kernels=args.nat_kernels,
               command=' '.join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])))
    print(f"device={env['device']} ({env['device_name']}), threads={env['threads']}, "
          f"dtype={args.dtype}, input={args.batch}x3x{args.shape[0]}x{args.shape[1]}, "
          f"repeats={args.repeats}, compiled NA kernels={env['nat_mm_compiled_ops']}")
    header = f"{'model':<22}{'mode':<7}{'median ms':>11}{'min ms':>10}{'peak MB':>10}"
    print(header + f"{'vs Swin-T':>11}")
    print('-' * (len(header) + 11))
    for r in results:
        swin = next(s for s in results if s['mode'] == r['mode'] and s['model'].startswith('Swin'))
        ratio = r['median_ms'] / swin['median_ms']
        print(f"{r['model']:<22}{r['mode']:<7}{r['median_ms']:>11.1f}{r['min_ms']:>10.1f}"
              f"{r['peak_mb']:>10.1f}{ratio:>10.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(env=env, results=results), indent=2) + '\n')
        print(f'wrote {args.json}')
        if args.plot:
            print(f'wrote {replot(args.json, plot_backbone)}')
    return results


if __name__ == '__main__':
    main()
