"""Build the demo datasets in data/demo/ from the nuclei image the stardist wheel ships.

The stardist 0.9.2 wheel carries ``stardist/data/images/img2d.tif`` (a 512x512 fluorescence
image of nuclei from the Kaggle DSB-2018 set) and ``mask2d.tif`` (its instance label map). This
script downloads the wheel with pip (``pip download --no-deps``; stardist is never imported or
installed), takes those two files out of it and cuts the image into tiles:

- train tiles come from the left part of the image (columns < ``--split-x``), overlapping with
  ``--stride``; val tiles come from the right part, without overlap, so no val pixel is ever
  trained on;
- ``annotations/instances_{train,val}.json``: COCO instance annotations (class ``nucleus``, RLE
  masks encoded with pycocotools, boxes from the masks), for mmdet's CocoDataset/CocoMetric;
- ``seg_maps/{train,val}/*.png``: foreground/background label maps (0 background, 1 nucleus)
  for mmseg's BaseSegDataset/IoUMetric;
- ``images/{train,val}/*.png``: the tiles as 8-bit RGB, shared by both.

Idempotent: the wheel is cached in ``$NAT_MM_CACHE`` (default ``~/.cache/nat_mm``) and the output
is rebuilt only when missing or when ``--force`` is given.

Example:
    python tools/prepare_demo_data.py            # -> data/demo/
"""
import argparse
import glob
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nat_mm.mm.cli import InputValueError, UserInputError, positive_int, run  # noqa: E402

STARDIST = 'stardist==0.9.2'
MEMBERS = {'img2d.tif': 'stardist/data/images/img2d.tif',
           'mask2d.tif': 'stardist/data/images/mask2d.tif'}
CLASSES = ('nucleus', )


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out-dir', default='data/demo', help='output directory')
    parser.add_argument('--tile', type=positive_int, default=128, help='tile size (pixels)')
    parser.add_argument('--stride', type=positive_int, default=64,
                        help='train tile stride (pixels)')
    parser.add_argument(
        '--split-x', type=int, default=384,
        help='columns left of this are train, right of it val')
    parser.add_argument(
        '--min-area', type=int, default=8,
        help='drop instance fragments smaller than this (pixels) at tile borders')
    parser.add_argument('--force', action='store_true', help='rebuild even if present')
    return parser.parse_args()


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
    img = img.astype(np.float32)
    lo, hi = np.percentile(img, (1, 99.8))
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    return cv2.cvtColor((img * 255).round().astype(np.uint8), cv2.COLOR_GRAY2BGR)


def tile_origins(x0: int, x1: int, height: int, tile: int, stride: int):
    """Top-left corners of the tiles covering columns [x0, x1) and all rows."""
    xs = list(range(x0, x1 - tile + 1, stride))
    ys = list(range(0, height - tile + 1, stride))
    return [(x, y) for y in ys for x in xs]


def write_split(split, origins, img, labels, out_dir: Path, tile: int, min_area: int):
    """Write one split's tiles, label maps and COCO json; return (tiles, instances)."""
    (out_dir / 'images' / split).mkdir(parents=True, exist_ok=True)
    (out_dir / 'seg_maps' / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
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


def main():
    args = parse_args()
    out_dir = Path(args.out_dir)
    done = out_dir / '.complete'
    if done.is_file() and not args.force:
        print(f'{out_dir} is ready ({done.read_text().strip()}); --force rebuilds it')
        return
    raw_dir = out_dir / 'raw'
    fetch_raw(raw_dir)
    img = cv2.imread(str(raw_dir / 'img2d.tif'), cv2.IMREAD_UNCHANGED)
    labels = cv2.imread(str(raw_dir / 'mask2d.tif'), cv2.IMREAD_UNCHANGED)
    if img is None or labels is None or img.shape[:2] != labels.shape[:2]:
        raise InputValueError(f'could not read img2d.tif/mask2d.tif from {raw_dir}; delete it '
                              'and run again')
    height, width = labels.shape[:2]
    if not args.tile <= args.split_x <= width - args.tile:
        raise InputValueError(f'--split-x must leave a full tile on both sides: '
                              f'tile={args.tile}, split_x={args.split_x}, image width={width}')
    rgb = to_rgb8(img)
    for sub in ('images', 'seg_maps', 'annotations'):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    train = write_split('train', tile_origins(0, args.split_x, height, args.tile, args.stride),
                        rgb, labels, out_dir, args.tile, args.min_area)
    val = write_split('val', tile_origins(args.split_x, width, height, args.tile, args.tile),
                      rgb, labels, out_dir, args.tile, args.min_area)
    summary = (f'train: {train[0]} tiles, {train[1]} instances; val: {val[0]} tiles, '
               f'{val[1]} instances; {args.tile}x{args.tile} px')
    done.write_text(summary + '\n')
    print(f'wrote {out_dir}: {summary}')


if __name__ == '__main__':
    run(main)
