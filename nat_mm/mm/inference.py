"""Inference with mmdet's ``DetInferencer`` and mmseg's ``MMSegInferencer`` on our configs, for
tools/infer.py: the images of a path, an inferencer that checks its checkpoint against the
model, and one image's predictions written as drawings and JSON.

Example:
    >>> task, inferencer = build_inferencer(config, checkpoint, 'cpu')  # doctest: +SKIP
    >>> infer_seg(inferencer, 'image.png', 'out')['class_fractions']  # doctest: +SKIP
"""
import json
import os
import os.path as osp
from collections import Counter
from typing import List

import numpy as np

from .build import task_of
from .checkpoint_io import CheckpointContentError
from .cli import InputNotFoundError, InputValueError, load_config
from .legacy_checkpoint import check_checkpoint_keys

__all__ = ['IMAGE_EXTENSIONS', 'list_images', 'build_inferencer', 'infer_det', 'infer_seg']

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


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
    """Detect in one image: ``vis/<name>`` and ``preds/<stem>.json`` (mmdet's prediction dict)
    under ``out_dir``; returns the summary entry (paths, instances above ``score_thr`` per
    class)."""
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
    """Segment one image: ``vis/<name>``, ``preds/<stem>.png`` (the label map) and
    ``preds/<stem>.json`` (the classes present, pixel counts and fractions) under ``out_dir``;
    returns the summary entry."""
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
