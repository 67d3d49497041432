"""Data for runs without COCO or ADE20K: synthetic batches and the demo datasets.

- :func:`det_batch`, :func:`seg_batch` and :func:`synthetic_batch`: a batch as a dataloader
  yields it (``inputs``: uint8 images, ``data_samples`` with targets) for a training or test step
  on random data: boxes and instance masks (mmdet's ``demo_mm_inputs``) or label maps.
- :func:`build_demo_data`: the demo datasets of tools/prepare_demo_data.py, tiles of the nuclei
  image the stardist 0.9.2 wheel ships (``stardist/data/images/img2d.tif`` and its instance
  label map ``mask2d.tif``; the wheel is downloaded with pip, never imported or installed):
  ``images/{train,val}/*.png`` (8-bit RGB tiles), ``annotations/instances_{train,val}.json``
  (COCO instances, class ``nucleus``, RLE masks) and ``seg_maps/{train,val}/*.png``
  (foreground/background label maps).
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from .cli import InputValueError, UserInputError

__all__ = ['det_batch', 'seg_batch', 'synthetic_batch', 'STARDIST', 'CLASSES', 'fetch_raw',
           'to_rgb8', 'tile_origins', 'write_split', 'build_demo_data']

STARDIST = 'stardist==0.9.2'
MEMBERS = {'img2d.tif': 'stardist/data/images/img2d.tif',
           'mask2d.tif': 'stardist/data/images/mask2d.tif'}
CLASSES = ('nucleus', )


def det_batch(shape: Sequence[int], num_items: Sequence[int], num_classes: int,
              with_mask: bool = True, with_semantic: bool = False) -> dict:
    """A detection batch of ``len(num_items)`` random ``shape`` ``(H, W)`` images with
    ``num_items[i]`` boxes (and instance masks, and panoptic stuff labels with
    ``with_semantic``) each: mmdet's ``demo_mm_inputs``."""
    from mmdet.testing import demo_mm_inputs

    h, w = shape
    return demo_mm_inputs(batch_size=len(num_items), image_shapes=[(3, h, w)] * len(num_items),
                          num_items=list(num_items), num_classes=num_classes,
                          with_mask=with_mask, with_semantic=with_semantic)


def seg_batch(shape: Sequence[int], batch: int, num_classes: int, ignore_rows: int = 0,
              generator: Optional[torch.Generator] = None) -> dict:
    """A segmentation batch: ``batch`` random uint8 ``shape`` ``(H, W)`` images and
    ``SegDataSample`` s with random label maps in ``[0, num_classes)``, their first
    ``ignore_rows`` rows 255 (ignored); from ``generator`` (default: torch's global one)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    h, w = shape
    samples = []
    for _ in range(batch):
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                             pad_shape=(h, w)))
        labels = torch.randint(0, num_classes, (1, h, w), generator=generator)
        labels[:, :ignore_rows] = 255
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    inputs = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
              for _ in range(batch)]
    return dict(inputs=inputs, data_samples=samples)


def synthetic_batch(task: str, batch: int, shape: Sequence[int], num_classes: int,
                    num_boxes: int, seed: int = 0) -> dict:
    """A batch of ``batch`` images for ``task`` (``'det'``: :func:`det_batch` with
    ``num_boxes`` instances per image; ``'seg'``: :func:`seg_batch` from a generator seeded
    with ``seed``)."""
    if task == 'det':
        return det_batch(shape, [num_boxes] * batch, num_classes)
    return seg_batch(shape, batch, num_classes, generator=torch.Generator().manual_seed(seed))


def fetch_raw(raw_dir: Path) -> None:
    """Put img2d.tif and mask2d.tif in ``raw_dir``, downloading the stardist wheel if needed."""
    if all((raw_dir / name).is_file() for name in MEMBERS):
        return
    cache = Path(os.environ.get('NAT_MM_CACHE', Path.home() / '.cache' / 'nat_mm')) / 'stardist'
    cache.mkdir(parents=True, exist_ok=True)
    archives = sorted(glob.glob(str(cache / 'stardist-0.9.2*')))
    if not archives:
        print(f'downloading {STARDIST} (wheel only, no dependencies) into {cache}')
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--quiet', STARDIST,
               '-d', str(cache)]
        try:
            subprocess.run(cmd, check=True)
        except subprocess.CalledProcessError as err:
            raise UserInputError(
                f'`{" ".join(cmd)}` failed ({err}). The demo needs the stardist 0.9.2 wheel from '
                f'PyPI; download it elsewhere and copy it into {cache}, or put img2d.tif and '
                f'mask2d.tif from its stardist/data/images/ into {raw_dir}.') from err
        archives = sorted(glob.glob(str(cache / 'stardist-0.9.2*')))
    raw_dir.mkdir(parents=True, exist_ok=True)
    archive = archives[0]
    for name, member in MEMBERS.items():
        if archive.endswith('.whl'):
            with zipfile.ZipFile(archive) as zf, zf.open(member) as src, \
                    open(raw_dir / name, 'wb') as dst:
                shutil.copyfileobj(src, dst)
        else:  # sdist: stardist-0.9.2/stardist/data/images/...
            with tarfile.open(archive) as tf:
                src = tf.extractfile(f'stardist-0.9.2/{member}')
                with open(raw_dir / name, 'wb') as dst:
                    shutil.copyfileobj(src, dst)


def to_rgb8(img: np.ndarray) -> np.ndarray:
    """Percentile-normalise a single-channel image to 8-bit RGB."""
    import cv2

    img = img.astype(np.float32)
    lo, hi = np.percentile(img, (1, 99.8))
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    return cv2.cvtColor((img * 255).round().astype(np.uint8), cv2.COLOR_GRAY2BGR)


def tile_origins(x0: int, x1: int, height: int, tile: int, stride: int):
    """Top-left corners of the tiles covering columns [x0, x1) and all rows."""
    xs = list(range(x0, x1 - tile + 1, stride))
    ys = list(range(0, height - tile + 1, stride))
    return [(x, y) for y in ys for x in xs]


def write_split(split, origins, img, labels, out_dir: Path, tile: int,
                min_area: int) -> Tuple[int, int]:
    """Write one split's tiles, label maps and COCO json; return (tiles, instances).

    Args:
        split (str): ``'train'`` or ``'val'``.
        origins (list[tuple[int, int]]): The tiles' top-left corners ``(x, y)``.
        img (np.ndarray): The BGR uint8 image.
        labels (np.ndarray): Its instance label map (0: background).
        out_dir (Path): The dataset root.
        tile (int): Tile size (pixels).
        min_area (int): Instance fragments smaller than this (pixels) are dropped.
    """
    from pycocotools import mask as mask_utils

    (out_dir / 'images' / split).mkdir(parents=True, exist_ok=True)
    (out_dir / 'seg_maps' / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    import cv2

    for image_id, (x, y) in enumerate(origins):
        name = f'{split}_{y:03d}_{x:03d}.png'
        crop = labels[y:y + tile, x:x + tile]
        cv2.imwrite(str(out_dir / 'images' / split / name), img[y:y + tile, x:x + tile])
        cv2.imwrite(str(out_dir / 'seg_maps' / split / name), (crop > 0).astype(np.uint8))
        images.append(dict(id=image_id, file_name=name, height=tile, width=tile))
        for label in np.unique(crop):
            mask = crop == label
            if label == 0 or mask.sum() < min_area:
                continue
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            bbox = [float(v) for v in mask_utils.toBbox(rle)]
            rle['counts'] = rle['counts'].decode('ascii')
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=1, segmentation=rle,
                area=float(mask.sum()), bbox=bbox, iscrowd=0))
    coco = dict(info=dict(description=f'nat_mm demo: stardist {STARDIST} img2d/mask2d, {split}'),
                licenses=[], images=images, annotations=annotations,
                categories=[dict(id=i + 1, name=c) for i, c in enumerate(CLASSES)])
    (out_dir / 'annotations').mkdir(exist_ok=True)
    with open(out_dir / 'annotations' / f'instances_{split}.json', 'w') as f:
        json.dump(coco, f)
    return len(images), len(annotations)


def build_demo_data(out_dir: str, tile: int = 128, stride: int = 64, split_x: int = 384,
                    min_area: int = 8, force: bool = False) -> Tuple[bool, str]:
    """Write the demo datasets under ``out_dir`` (see the module docstring).

    Train tiles come from the columns left of ``split_x``, overlapping by ``stride``; val tiles
    from the right part, without overlap, so no val pixel is ever trained on. Idempotent: the
    wheel is cached in ``$NAT_MM_CACHE`` (default ``~/.cache/nat_mm``) and the output is rebuilt
    only when missing or with ``force``.

    Returns:
        tuple[bool, str]: Whether anything was written, and the summary (tiles and instances per
        split).

    Raises:
        UserInputError: the wheel cannot be downloaded, the images cannot be read, or
            ``split_x`` leaves no full tile on a side.
    """
    import cv2

    out_dir = Path(out_dir)
    done = out_dir / '.complete'
    if done.is_file() and not force:
        return False, done.read_text().strip()
    raw_dir = out_dir / 'raw'
    fetch_raw(raw_dir)
    img = cv2.imread(str(raw_dir / 'img2d.tif'), cv2.IMREAD_UNCHANGED)
    labels = cv2.imread(str(raw_dir / 'mask2d.tif'), cv2.IMREAD_UNCHANGED)
    if img is None or labels is None or img.shape[:2] != labels.shape[:2]:
        raise InputValueError(f'could not read img2d.tif/mask2d.tif from {raw_dir}; delete it '
                              'and run again')
    height, width = labels.shape[:2]
    if not tile <= split_x <= width - tile:
        raise InputValueError(f'--split-x must leave a full tile on both sides: '
                              f'tile={tile}, split_x={split_x}, image width={width}')
    rgb = to_rgb8(img)
    for sub in ('images', 'seg_maps', 'annotations'):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    train = write_split('train', tile_origins(0, split_x, height, tile, stride),
                        rgb, labels, out_dir, tile, min_area)
    val = write_split('val', tile_origins(split_x, width, height, tile, tile),
                      rgb, labels, out_dir, tile, min_area)
    summary = (f'train: {train[0]} tiles, {train[1]} instances; val: {val[0]} tiles, '
               f'{val[1]} instances; {tile}x{tile} px')
    done.write_text(summary + '\n')
    return True, summary
