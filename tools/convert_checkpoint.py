"""Convert an official or Hugging Face NAT/DiNAT checkpoint into a nat_mm backbone checkpoint.

Accepts the SHI-Labs classification checkpoints, their mmdet 2.x / mmseg 0.x detection and
segmentation checkpoints (the ``backbone.*`` weights are kept, necks and heads skipped) and
Hugging Face ``NatModel`` / ``DinatModel`` (or ``*ForImageClassification``) state dicts. Writes
``{'state_dict': ...}``, loadable with ``init_cfg=dict(type='Pretrained', checkpoint=DST)``.

Example::

    python tools/convert_checkpoint.py nat_tiny.pth nat_tiny_nat_mm.pth
    python tools/convert_checkpoint.py hf_dinat_mini.bin dinat_mini.pth --format hf
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nat_mm.mm import convert_checkpoint_file  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='source checkpoint')
    parser.add_argument('dst', help='output checkpoint')
    parser.add_argument('--format', choices=('auto', 'official', 'hf'), default='auto',
                        help='layout of src (default: auto-detect)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
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
    sys.exit(main())
