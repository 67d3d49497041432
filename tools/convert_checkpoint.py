"""Convert an official or Hugging Face NAT/DiNAT checkpoint into a nat_mm backbone checkpoint.

Accepts the SHI-Labs classification checkpoints, their mmdet 2.x / mmseg 0.x detection and
segmentation checkpoints (the ``backbone.*`` weights are kept, necks and heads skipped) and
Hugging Face ``NatModel`` / ``DinatModel`` (or ``*ForImageClassification``) state dicts. Writes
``{'state_dict': ...}``, loadable with ``init_cfg=dict(type='Pretrained', checkpoint=DST)``.
With ``--format d2-mask2former`` it converts a whole official detectron2 Mask2Former DiNAT
checkpoint (backbone and head) to the key names of configs/*/mask2former_dinat_large_*.py
(``--head decode_head`` for the mmseg ones), loadable with ``tools/test.py CONFIG DST``.

Example::

    python tools/convert_checkpoint.py nat_tiny.pth nat_tiny_nat_mm.pth
    python tools/convert_checkpoint.py hf_dinat_mini.bin dinat_mini.pth --format hf
    python tools/convert_checkpoint.py mask2former_dinat_large_ade20k_semantic.pth \
        m2f_ade.pth --format d2-mask2former --head decode_head
"""
import argparse
import os.path as osp
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nat_mm.mm import convert_checkpoint_file, convert_d2_mask2former_file  # noqa: E402
from nat_mm.mm.cli import run  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='source checkpoint')
    parser.add_argument('dst', help='output checkpoint')
    parser.add_argument('--format', choices=('auto', 'official', 'hf', 'd2-mask2former'),
                        default='auto', help='layout of src (default: auto-detect a backbone '
                        'checkpoint; d2-mask2former is never auto-detected)')
    parser.add_argument('--head', choices=('panoptic_head', 'decode_head'),
                        default='panoptic_head', help='d2-mask2former only: the head name of '
                        'the target config (panoptic_head: mmdet, decode_head: mmseg)')
    args = parser.parse_args(argv)
    if osp.isdir(args.dst):
        parser.error(f'dst {args.dst} is a directory: give the output file, e.g. '
                     f'{osp.join(args.dst, "converted.pth")}')
    if not osp.isdir(osp.dirname(osp.abspath(args.dst))):
        parser.error(f'the directory of dst {args.dst} does not exist: create it first')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.format == 'd2-mask2former':
        report = convert_d2_mask2former_file(args.src, args.dst, head=args.head)
        print(f"format: {report['format']}, {report['converted']} tensors converted")
        print(f"source keys without a counterpart ({len(report['unused'])}): "
              f"{report['unused']}")
        print(f'wrote {args.dst}')
        return 0
    report = convert_checkpoint_file(args.src, args.dst, fmt=args.format)
    print(f"format: {report['format']}")
    print(f"architecture: {report['model']}")
    if report['skipped']:
        print(f"skipped {len(report['skipped'])} non-backbone keys (neck/heads)")
    print(f"missing keys ({len(report['missing'])}): {report['missing']}")
    print(f"unexpected keys ({len(report['unexpected'])}): {report['unexpected']}")
    print(f'wrote {args.dst}')
    return 0


if __name__ == '__main__':
    run(main)
