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
import os
import os.path as osp
import sys
from collections import Counter
from typing import List

import numpy as np
from mmengine.utils import ProgressBar

import nat_mm  # noqa: F401  registers NAT and DiNAT, allow-lists checkpoint types
from nat_mm.mm.checkpoint_io import CheckpointContentError, checkpoint_origin
from nat_mm.mm.cli import (InputNotFoundError, InputValueError, load_config, require_output_dir,
                           run)
from nat_mm.mm.legacy_checkpoint import check_checkpoint_keys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import check_checkpoint, task_of  # noqa: E402

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


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


def list_images(inputs: str) -> List[str]:
    """The image files: ``inputs`` itself, or those in the directory ``inputs`` (sorted).

    Raises:
        InputNotFoundError: ``inputs`` does not exist, or the directory holds no images.
        InputValueError: an image OpenCV cannot decode.
    """
    if osp.isfile(inputs):
        paths = [inputs]
    elif not osp.isdir(inputs):
        raise InputNotFoundError(f'infer: no such image or directory: {inputs}')
    else:
        paths = sorted(osp.join(inputs, name) for name in os.listdir(inputs)
                       if name.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise InputNotFoundError(f'infer: no images ({", ".join(IMAGE_EXTENSIONS)}) in {inputs}')
    import cv2
    for path in paths:
        if not cv2.haveImageReader(path):
            raise InputValueError(f'infer: cannot read the image {path}: not an image file '
                                  f'OpenCV can decode (give {", ".join(IMAGE_EXTENSIONS)} files)')
    return paths


class _CheckedWeights:
    """Inferencer mixin: check the checkpoint against the model before loading it (the
    inferencers load with ``strict=False``, so a checkpoint of another model would only log a
    warning and predict garbage)."""

    checkpoint_name = 'checkpoint'

    def _load_weights_to_model(self, model, checkpoint, cfg) -> None:
        if checkpoint is not None:
            state_dict = checkpoint.get('state_dict') if isinstance(checkpoint, dict) else None
            if not isinstance(state_dict, dict):
                raise CheckpointContentError(
                    f'{self.checkpoint_name} has no state_dict entry: give a checkpoint that '
                    'tools/train.py wrote for this config')
            check_checkpoint_keys(model, state_dict, self.checkpoint_name)
        super()._load_weights_to_model(model, checkpoint, cfg)


def build_inferencer(config: str, checkpoint: str, device=None):
    """``(task, inferencer)`` for the config: DetInferencer or MMSegInferencer, checking the
    checkpoint against the model (:class:`_CheckedWeights`)."""
    task = task_of(load_config(config))
    if task == 'det':
        from mmdet.apis import DetInferencer as Inferencer
        kwargs = dict(show_progress=False)
    else:
        from mmseg.apis import MMSegInferencer as Inferencer
        kwargs = {}
    checked = type(f'Checked{Inferencer.__name__}', (_CheckedWeights, Inferencer),
                   dict(checkpoint_name=f'checkpoint {checkpoint}'))
    inferencer = checked(model=config, weights=checkpoint, device=device, **kwargs)
    inferencer.show_progress = False  # this tool draws one bar over all images
    return task, inferencer


def infer_det(inferencer, path: str, out_dir: str, score_thr: float) -> dict:
    inferencer(path, out_dir=out_dir, no_save_pred=False, pred_score_thr=score_thr)
    stem = osp.splitext(osp.basename(path))[0]
    pred_path = osp.join(out_dir, 'preds', stem + '.json')
    with open(pred_path) as f:
        pred = json.load(f)
    classes = inferencer.model.dataset_meta['classes']
    kept = [label for label, score in zip(pred['labels'], pred['scores']) if score >= score_thr]
    return dict(image=path, vis=osp.join(out_dir, 'vis', osp.basename(path)), pred=pred_path,
                num_instances=len(kept),
                instances_per_class=dict(Counter(classes[label] for label in kept)))


def infer_seg(inferencer, path: str, out_dir: str) -> dict:
    number = inferencer.num_pred_imgs  # MMSegInferencer names label maps by a counter
    result = inferencer(path, out_dir=out_dir, img_out_dir='vis', pred_out_dir='preds')
    stem = osp.splitext(osp.basename(path))[0]
    label_path = osp.join(out_dir, 'preds', stem + '.png')
    os.replace(osp.join(out_dir, 'preds', f'{number:08d}_pred.png'), label_path)
    labels = np.asarray(result['predictions'])
    classes = inferencer.model.dataset_meta['classes']
    ids, counts = np.unique(labels, return_counts=True)
    pred = dict(image=path, height=int(labels.shape[0]), width=int(labels.shape[1]),
                label_map=label_path,
                classes=[dict(id=int(i), name=classes[i], pixels=int(c),
                              fraction=round(float(c) / labels.size, 6))
                         for i, c in zip(ids, counts)])
    pred_path = osp.join(out_dir, 'preds', stem + '.json')
    with open(pred_path, 'w') as f:
        json.dump(pred, f, indent=1)
    vis = osp.join(out_dir, 'vis', osp.basename(path))
    return dict(image=path, vis=vis, pred=pred_path, label_map=label_path,
                class_fractions={c['name']: c['fraction'] for c in pred['classes']})


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
