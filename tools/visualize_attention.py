"""Draw what neighborhood attention looks at: per-layer attention maps and the receptive field.

For each pixel given with ``--points y,x`` (image coordinates), two PNG figures:

- ``attention_<y>_<x>.png``: one panel per level and layer. The query's token is outlined;
  each of its kh*kw (dilated) neighbours is a cell filled by its attention weight (mean over
  heads), on the image. The weights are the model's own: every NeighborhoodAttention2D records
  them through its ``save_attention`` flag (nat_mm.models.attention.record_attention: its
  explicit ``na2d_qk`` (rpb included) + softmax path, in eval mode). Borders show the window
  shifting inward; DiNAT's dilated layers show spread-out cells.
- ``receptive_field_<y>_<x>.png``: one panel per layer, the image region that can influence the
  query's token after that layer: the neighbourhoods (the ops' own window indices), the 3x3
  stride-2 downsamplers and the stem, composed back to the pixels. NAT's grows by k-1 tokens a
  layer; DiNAT's dilated layers make it jump.

Also writes ``attention.json``: per point, level and layer, the neighbours' positions (in the
level's token grid) and their weights per head. The maths: nat_mm/models/attention.py; the
drawing: nat_mm/mm/visualization.py.

Example:
    python tools/visualize_attention.py configs/seg/demo_upernet_nat_mini.py \\
        data/demo/images/val/val_000_384.png --checkpoint work_dirs/demo/seg/iter_150.pth \\
        --points 64,64 5,120 --out-dir work_dirs/attention
"""

import argparse
import json
import os.path as osp
from typing import Dict, Tuple

import nat_mm  # noqa: F401  registers NAT and DiNAT, allow-lists checkpoint types
from nat_mm.mm.build import load_model
from nat_mm.mm.cli import (DictAction, InputValueError, load_config, positive_int,
                           require_output_dir, run)
from nat_mm.mm.visualization import draw_point, load_inputs, read_image, require_nat_backbone
from nat_mm.models.attention import attention_maps


def parse_point(text: str) -> Tuple[int, int]:
    try:
        y, x = (int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'a point is y,x in pixels, got {text!r}') from None
    return y, x


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='detection or segmentation config with a NAT/DiNAT '
                        'backbone')
    parser.add_argument('image', help='the image')
    parser.add_argument('--checkpoint', help='checkpoint (default: the config\'s own init)')
    parser.add_argument('--points', type=parse_point, nargs='+', required=True,
                        metavar='Y,X', help='query pixels, e.g. --points 64,64 10,120')
    parser.add_argument('--out-dir', default='work_dirs/attention', help='output directory')
    parser.add_argument('--size', type=positive_int, nargs=2, metavar=('H', 'W'),
                        help='resize the image first (default: its own size)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    return parser.parse_args(argv)


def main(argv=None) -> Dict[str, list]:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    require_nat_backbone(cfg, args.config)
    bgr = read_image(args.image, args.size)
    require_output_dir(args.out_dir)
    _, model, _ = load_model(cfg, args.checkpoint, origin='--checkpoint')
    image, inputs = load_inputs(model, bgr)
    for y, x in args.points:
        if not (0 <= y < image.shape[0] and 0 <= x < image.shape[1]):
            raise InputValueError(
                f'--points: point ({y}, {x}) is outside the {image.shape[0]}x{image.shape[1]} '
                f'image {args.image}: give y in [0, {image.shape[0] - 1}] and x in '
                f'[0, {image.shape[1] - 1}]')
    maps = attention_maps(model.backbone, inputs)
    weights_note = 'checkpoint ' + osp.basename(args.checkpoint) if args.checkpoint else \
        'no checkpoint: the config\'s random init'
    title = f'{type(model.backbone).__name__} in {osp.basename(args.config)} ({weights_note})'
    written, record = [], []
    for point in args.points:
        pngs, point_record = draw_point(image, maps, point, args.out_dir, title)
        written += pngs
        record.append(point_record)
    with open(osp.join(args.out_dir, 'attention.json'), 'w') as f:
        json.dump(dict(config=args.config, checkpoint=args.checkpoint, image=args.image,
                       points=record), f)
    print('wrote ' + ', '.join(written))
    return dict(files=written, points=record)


if __name__ == '__main__':
    run(main)
