"""Benchmark whole detectors and segmentors (mmdet / mmseg configs) side by side.

Every model runs in one process, interleaved (A, B, A, B, ...), so that machine noise hits all of
them alike; the table reports medians. Two modes:

- ``infer``: as mmdet's ``tools/analysis_tools/benchmark.py``: the model in eval mode,
  ``model.test_step`` (data preprocessor, forward, post-processing) under ``no_grad`` on a batch
  of synthetic images of ``--shape`` (one image unless ``--batch``); reported as milliseconds per
  batch and images per second.
- ``train``: one ``model.train_step`` (preprocessor, losses, backward, optimizer step) with an
  optimizer wrapper built from the config's ``optim_wrapper``, on synthetic data samples: boxes
  and instance masks for detectors (``mmdet.testing.demo_mm_inputs``), random label maps for
  segmentors; the batch is the config's ``train_dataloader.batch_size`` (per GPU) unless
  ``--batch``.

Peak memory is the extra memory a run needs above what the process held before it, measured as in
``tools/benchmark_backbone.py`` (nat_mm.utils.benchmark.PeakMemory): CUDA
``max_memory_allocated``; on the CPU the peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs``) minus the resident size before the run. The runs:
nat_mm/mm/benchmark.py.

Models are built from the configs with every ``Pretrained`` ``init_cfg`` and ``pretrained`` key
cleared (nothing is downloaded; random weights, ``init_weights()`` with seed 0) and SyncBN turned
into BN (one process). ``--amp`` runs both modes in fp16 autocast (``AmpOptimWrapper`` for
training, CUDA only); without it both run in fp32 whatever the config's ``optim_wrapper`` says.
For segmentors, ``--shape`` is also the training crop (``data_preprocessor.size``).

``--swin-baseline`` adds, for each config, a copy whose backbone is Swin-T (mmdet's or mmseg's
``SwinTransformer``: embed_dims 96, depths 2-2-6-2, heads 3-6-12-24, window 7, mlp_ratio 4,
drop_path_rate 0.2, same out_indices) with the neck's / heads' ``in_channels`` set to its widths
(96, 192, 384, 768); each model's ratios are then against the Swin copy of its own config.
Without it, ratios are against the first model of the same task.

Examples::

    python tools/benchmark_model.py configs/det/mask_rcnn_nat_tiny_3x.py --swin-baseline
    python tools/benchmark_model.py configs/seg/upernet_nat_tiny_160k.py \\
        configs/seg/upernet_dinat_tiny_160k.py --shape 512 512 --json seg.json
    python tools/benchmark_model.py configs/det/*_tiny_3x.py --device cuda --amp --batch 2
"""

import argparse
import json
import sys
from pathlib import Path

import torch

import nat_mm  # noqa: F401  registers NAT and DiNAT
from nat_mm.mm.benchmark import (AMP_DTYPES, benchmark, build_entries, print_table,
                                 versions)
from nat_mm.mm.cli import DictAction, run
from nat_mm.utils.benchmark import device_name


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog='What is measured and how: see the header of tools/benchmark_model.py.')
    parser.add_argument('configs', nargs='+', metavar='CONFIG',
                        help='mmdet or mmseg config files (ours or mmdet\'s/mmseg\'s)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input height and width (default: 800 1216 for detectors, 512 512 '
                        'for segmentors)')
    parser.add_argument('--batch', type=int, default=None,
                        help='images per batch (default: 1 for infer, as mmdet\'s benchmark; for '
                        'train the config\'s train_dataloader.batch_size, 2 in ours)')
    parser.add_argument('--repeats', type=int, default=5,
                        help='timed runs per model and mode (default: 5)')
    parser.add_argument('--warmup', type=int, default=2,
                        help='untimed runs per model and mode first (default: 2)')
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:i] (default: cpu)')
    parser.add_argument('--amp', action='store_true',
                        help='autocast (fp16 unless --amp-dtype) in both modes; CUDA only')
    parser.add_argument('--amp-dtype', choices=sorted(AMP_DTYPES), default='float16',
                        help='autocast dtype with --amp (default: float16)')
    parser.add_argument('--modes', nargs='+', choices=('infer', 'train'),
                        default=('infer', 'train'), help='what to run (default: both)')
    parser.add_argument('--swin-baseline', action='store_true',
                        help='also run each config with a Swin-T backbone and compare with it')
    parser.add_argument('--num-boxes', type=int, default=8,
                        help='ground-truth instances per image for detectors (default: 8)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch.set_num_threads on the CPU (default: torch default)')
    parser.add_argument('--json', metavar='PATH', help='also write the results as JSON here')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='override settings of every config, e.g. '
                        'model.backbone.drop_path_rate=0.1')
    args = parser.parse_args(argv)
    if min(args.repeats, args.num_boxes) < 1 or args.warmup < 0 or (args.batch or 1) < 1:
        parser.error('--batch, --repeats and --num-boxes must be >= 1, --warmup >= 0')
    if args.shape is not None and min(args.shape) < 32:
        parser.error(f'--shape must be at least 32x32, got {args.shape[0]}x{args.shape[1]}')
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f'--device must be cpu or cuda[:i], got {args.device!r}')
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available here')
    if device.type not in ('cpu', 'cuda'):
        parser.error(f'--device must be cpu or cuda[:i], got {args.device!r}')
    if args.amp and device.type != 'cuda':
        parser.error('--amp needs --device cuda (autocast and AmpOptimWrapper are for GPUs)')
    for path in args.configs:
        if not Path(path).is_file():
            parser.error(f'config not found: {path}')
    return args


def main(argv=None):
    args = parse_args(argv)
    from mmengine.logging import MMLogger
    # The latest MMLogger is mmengine's 'current' one: keep init and paramwise logs quiet.
    MMLogger.get_instance('benchmark_model', log_level='WARNING')
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    entries = build_entries(args.configs, device, args.cfg_options, args.swin_baseline,
                            shape=args.shape, batch=args.batch, modes=args.modes, amp=args.amp,
                            amp_dtype=args.amp_dtype, num_boxes=args.num_boxes)
    autocast_dtype = AMP_DTYPES[args.amp_dtype] if args.amp else None
    results = benchmark(entries, args.modes, device, args.repeats, args.warmup, autocast_dtype)
    env = dict(device=str(device), device_name=device_name(device),
               threads=torch.get_num_threads(), amp=args.amp and args.amp_dtype,
               repeats=args.repeats, warmup=args.warmup, modes=list(args.modes),
               nat_mm_compiled_ops=nat_mm.ops.extension_loaded(), **versions(),
               command=' '.join([Path(sys.argv[0]).name] + list(
                   sys.argv[1:] if argv is None else argv)))
    models = [dict(name=e.name, config=e.config, task=e.task, backbone=e.backbone,
                   input_shape=list(e.shape), params_m=e.params_m, baseline=e.baseline)
              for e in entries]
    print_table(entries, results, env)
    if args.json:
        Path(args.json).write_text(
            json.dumps(dict(env=env, models=models, results=results), indent=2) + '\n')
        print(f'wrote {args.json}')
    return results


if __name__ == '__main__':
    run(main)
