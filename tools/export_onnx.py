"""Export a NAT/DiNAT model to ONNX, with neighborhood attention in standard ONNX ops.

What is exported:
- a segmentor (UPerNet, any mmseg ``EncoderDecoder``): its tensor-mode output, the decode
  head's logits ``[1, classes, H/4, W/4]`` for a preprocessed (normalised, padded) image
  ``[1, 3, H, W]``; the data preprocessor and the final resize are not part of it;
- with ``--backbone`` (any config, detectors included): the backbone alone, its four NCHW maps
  as outputs ``level0`` .. ``level3`` in order.

How: ``torch.export`` with dynamic H and W (the compiled ``nat_mm::`` ops stay single nodes,
their fake kernels carry the symbolic shapes), then ``run_decompositions`` with
:func:`nat_mm.ops.export_decompositions`, which swaps those nodes for the pure-PyTorch path
(gather + einsum + softmax: the maths is written once, in ``nat_mm/ops/_torch_impl.py``), then
``torch.onnx.export(dynamo=True)`` and a light optimization (``--optimize``). The file is
checked with onnxruntime against the eager model at the export size and at a second size
(``--check-shape``); the max abs differences are printed.

H and W are dynamic within a range: layers whose map is smaller than kernel * dilation are
zero-padded (docs/design.md section 3), and a program covers the sizes where every layer pads or
does not pad as it did at ``--shape``. The range is printed (e.g. NAT at 200x250: H, W >= 193).
A segmentor with adaptive pooling (UPerNet's PPM) is further limited to the sizes whose
stride-32 map has the example's size (ONNX has no adaptive pooling; its decomposition is laid out
for one input size): e.g. 120x136 covers H in [97, 128], W in [129, 160].

Without CHECKPOINT the model gets the config's own initialisation. The export itself:
nat_mm/mm/export.py. Detectors cannot be exported
whole here (RoI ops, NMS, per-image outputs): use ``--backbone``, or mmdeploy for the detector.

Examples:
    python tools/export_onnx.py configs/seg/demo_upernet_nat_mini.py ckpt.pth --shape 120 136 \\
        --out upernet.onnx
    python tools/export_onnx.py configs/det/mask_rcnn_dinat_tiny_3x.py --shape 800 1216 \\
        --backbone --out dinat_tiny.onnx
"""

import argparse
import os.path as osp
import sys

import torch

import nat_mm  # noqa: F401  registers NAT and DiNAT, allow-lists checkpoint types
from nat_mm.mm.build import load_model
from nat_mm.mm.cli import DictAction, positive_int, run
from nat_mm.mm.export import (check_with_onnxruntime, default_check_shape, dynamic_ranges,
                              export_onnx, exportable, has_adaptive_pooling)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='checkpoint (tools/train.py); default: the config\'s own init')
    parser.add_argument('--shape', type=positive_int, nargs=2, required=True, metavar=('H', 'W'),
                        help='example input size (H and W are dynamic around it)')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--backbone', action='store_true',
                        help='export the backbone alone (its four maps as outputs)')
    parser.add_argument('--check-shape', type=positive_int, nargs=2, metavar=('H', 'W'),
                        help='second size for the onnxruntime check (default: one in range)')
    parser.add_argument('--no-check', action='store_true', help='skip the onnxruntime check')
    parser.add_argument('--atol', type=float, default=1e-3,
                        help='fail when onnxruntime and eager differ by more (default: 1e-3)')
    parser.add_argument('--opset', type=int, default=None, help='ONNX opset (default: torch\'s)')
    parser.add_argument('--optimize', choices=['basic', 'full'], default='basic',
                        help='basic: constant folding and dead/duplicate nodes (default); full: '
                        'also onnxscript\'s pattern rewriter, as torch.onnx.export does '
                        '(minutes longer, see basic_optimize)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    args = parser.parse_args(argv)
    if osp.isdir(args.out) or not osp.isdir(osp.dirname(osp.abspath(args.out))):
        parser.error(f'--out {args.out}: give a .onnx file in an existing directory')
    return args


def main(argv=None):
    args = parse_args(argv)
    _, model, _ = load_model(args.config, args.checkpoint, args.cfg_options)
    module, output_names = exportable(model, args.backbone)
    shape = tuple(args.shape)
    example = torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(0))
    ep = export_onnx(module, example, args.out, output_names, args.opset, args.optimize)
    ranges = dynamic_ranges(ep, getattr(model, 'backbone', None), shape,
                            pooled=has_adaptive_pooling(module))
    what = 'backbone' if args.backbone else f'{type(model).__name__} (tensor mode)'
    span = ', '.join(f'{axis} in [{lo}, {hi}]' for axis, (lo, hi) in ranges.items())
    print(f'exported {what} of {args.config} -> {args.out} '
          f'({osp.getsize(args.out) / 2**20:.1f} MB); input inputs [1, 3, H, W] with {span}; '
          f'outputs {", ".join(output_names)}')
    if args.no_check:
        return None
    check = tuple(args.check_shape) if args.check_shape else default_check_shape(shape, ranges)
    rows = check_with_onnxruntime(args.out, module, [shape, check])
    worst = 0.0
    for row in rows:
        diff = max(row['max_abs_diff'].values())
        worst = max(worst, diff)
        outs = ', '.join(f'{n} {s}' for n, s in row['output_shapes'].items())
        print(f'onnxruntime vs eager at 1x3x{row["shape"][0]}x{row["shape"][1]}: '
              f'max abs diff {diff:.3g} ({outs})')
    if worst > args.atol:
        sys.exit(f'export_onnx: onnxruntime differs from eager by {worst:.3g} > --atol '
                 f'{args.atol}')
    return rows


if __name__ == '__main__':
    run(main)
