"""Count the FLOPs and parameters of a detector or segmentor with mmengine's FLOP analyzer.

Neighborhood attention is counted by the handles in :mod:`nat_mm.mm.flops` (its q.k and attn.v
multiply-adds), as in the NAT and DiNAT papers. Like mmdet's and mmseg's get_flops, the count is
for one image through the inference path with ``mode='tensor'``: for detectors backbone, neck,
RPN and RoI heads (1000 random proposals, masks for the first 100, as mmdet 2's forward_dummy
that the papers used), or Mask2Former's pixel and transformer decoders (no post-processing); for
segmentors backbone and decode head (the auxiliary head only trains). The parameter count is the
whole model's. The counting: :func:`nat_mm.mm.flops.count_flops`.

Examples:
    python tools/get_flops.py configs/det/mask_rcnn_nat_tiny_3x.py            # 1280x800
    python tools/get_flops.py configs/seg/upernet_nat_tiny_160k.py --shape 512 2048

The last line reads, e.g., ``FLOPs: 258.1G  Params: 47.9M``.
"""
import argparse

import nat_mm  # noqa: F401  registers NAT and DiNAT
from nat_mm.mm.build import task_of
from nat_mm.mm.cli import DictAction, load_config, positive_int, run
from nat_mm.mm.flops import DEFAULT_SHAPES, count_flops


def parse_args():
    parser = argparse.ArgumentParser(description='Count FLOPs and parameters of a model')
    parser.add_argument('config', help='config file path')
    parser.add_argument(
        '--shape', type=positive_int, nargs=2, metavar=('H', 'W'),
        help='input image size; defaults to 1280 800 (detection) or 512 2048 (segmentation)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='override config settings')
    parser.add_argument('--table', action='store_true', help='print a per-module table')
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options)
    shape = tuple(args.shape) if args.shape else DEFAULT_SHAPES[task_of(cfg)]
    flops, params = count_flops(cfg, shape, args.table)
    print(f'config: {args.config}\ninput shape: 1x3x{shape[0]}x{shape[1]}')
    print(f'FLOPs: {flops / 1e9:.1f}G  Params: {params / 1e6:.1f}M')


if __name__ == '__main__':
    run(main)
