"""Run a trained detector or segmentor on images: drawn predictions (PNG) and JSON.

Uses mmdet's ``DetInferencer`` (detection configs) or mmseg's ``MMSegInferencer``
(segmentation configs), with the config's test pipeline, on one image or every image of a
directory (a progress bar counts them). Writes under ``--out-dir``:

- ``vis/<image name>``: the image with the predictions drawn (boxes and masks above
  ``--score-thr``; or the class map blended over the image);
- ``preds/<image stem>.json``: detection: mmdet's prediction dict (``labels``, ``scores``,
  ``bboxes`` as x1, y1, x2, y2, ``masks`` as COCO RLE); segmentation: the classes present with
  their pixel counts and fractions, and ``preds/<image stem>.png``, the label map;
- ``results.json``: one summary entry per image (paths, and the detections above
  ``--score-thr`` per class, or the pixel fractions per class).

Example:
    python tools/infer.py data/demo/images/val configs/seg/demo_upernet_nat_mini.py \\
        work_dirs/demo/seg/iter_150.pth --out-dir work_dirs/demo/infer_seg
"""

import argparse
import json
import os.path as osp

from mmengine.utils import ProgressBar

import nat_mm  # noqa: F401  registers NAT and DiNAT, allow-lists checkpoint types
from nat_mm.mm.checkpoint_io import checkpoint_origin
from nat_mm.mm.cli import load_config, require_output_dir, run
from nat_mm.mm.inference import build_inferencer, infer_det, infer_seg, list_images
from nat_mm.mm.runtime import check_checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('inputs', help='an image file or a directory of images')
    parser.add_argument('config', help='detection or segmentation config')
    parser.add_argument('checkpoint', help='checkpoint written by tools/train.py')
    parser.add_argument('--out-dir', required=True, help='where vis/, preds/ and results.json go')
    parser.add_argument('--device', default=None, help='cpu or cuda[:i] (default: cuda if any)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw and count instances above this score')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    load_config(args.config)  # a missing or broken config is an error before anything runs
    check_checkpoint(args.checkpoint, 'checkpoint')
    paths = list_images(args.inputs)
    require_output_dir(args.out_dir)
    with checkpoint_origin('the CHECKPOINT argument'):
        task, inferencer = build_inferencer(args.config, args.checkpoint, args.device)
    summary = []
    bar = ProgressBar(len(paths))
    for path in paths:
        if task == 'det':
            summary.append(infer_det(inferencer, path, args.out_dir, args.score_thr))
        else:
            summary.append(infer_seg(inferencer, path, args.out_dir))
        bar.update()
    with open(osp.join(args.out_dir, 'results.json'), 'w') as f:
        json.dump(dict(config=args.config, checkpoint=args.checkpoint, task=task,
                       images=summary), f, indent=1)
    print(f'\n{len(paths)} image(s): drawings in {osp.join(args.out_dir, "vis")}, '
          f'predictions in {osp.join(args.out_dir, "preds")}, summary in '
          f'{osp.join(args.out_dir, "results.json")}')
    return summary


if __name__ == '__main__':
    run(main)
