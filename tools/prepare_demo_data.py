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

The writer: nat_mm/mm/data.py (build_demo_data). Idempotent: the wheel is cached in
``$NAT_MM_CACHE`` (default ``~/.cache/nat_mm``) and the output is rebuilt only when missing or
when ``--force`` is given.

Example:
    python tools/prepare_demo_data.py            # -> data/demo/
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nat_mm.mm.cli import positive_int, run  # noqa: E402
from nat_mm.mm.data import build_demo_data  # noqa: E402


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


def main():
    args = parse_args()
    wrote, summary = build_demo_data(args.out_dir, args.tile, args.stride, args.split_x,
                                     args.min_area, args.force)
    if not wrote:
        print(f'{Path(args.out_dir)} is ready ({summary}); --force rebuilds it')
        return
    print(f'wrote {Path(args.out_dir)}: {summary}')


if __name__ == '__main__':
    run(main)
