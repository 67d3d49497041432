"""Test (evaluate) a detector or segmentor checkpoint with mmengine's Runner.

Prints COCO bbox/segm mAP (mmdet configs) or mIoU (mmseg configs).

Examples:
    python tools/test.py configs/det/mask_rcnn_nat_tiny_3x.py work_dirs/.../epoch_36.pth
    python tools/test.py configs/seg/upernet_nat_tiny_160k.py ckpt.pth --tta --show-dir vis
    tools/dist_test.sh configs/det/cascade_nat_tiny_3x.py ckpt.pth 8
"""
import argparse

from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import nat_mm  # noqa: F401  registers the backbones and LegacyCheckpointHook, as custom_imports
from nat_mm.mm.checkpoint_io import checkpoint_origin
from nat_mm.mm.cli import DictAction, InputValueError, run
from nat_mm.mm.runtime import (adapt_to_cpu, apply_tta, check_checkpoint, check_data_paths,
                               finish_distributed, init_cpu_distributed, load_run_config,
                               set_local_rank_env, trigger_visualization_hook)


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector or segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument(
        'checkpoint', help='checkpoint file (path or URL); tools/train.py ones or mmcv 1.x ones '
        '(mmdet 2.x / mmseg 0.x, e.g. the official NAT/DiNAT COCO and ADE20K checkpoints)')
    parser.add_argument('--work-dir', help='the directory to save the evaluation metrics in')
    parser.add_argument(
        '--out',
        help='detection: dump predictions to this pickle file (.pkl); segmentation: save the '
        'predicted label maps as PNGs in this directory')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument(
        '--show-dir', help='save drawn predictions (PNG) in this directory')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of --show (seconds)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, e.g. test_dataloader.batch_size=2')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
        help='job launcher')
    parser.add_argument(
        '--tta', action='store_true',
        help='test-time augmentation (the config\'s tta_pipeline and tta_model); for our '
        'segmentation configs the papers\' multi-scale test (mmseg 0.x\'s --aug-test)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    set_local_rank_env(args.local_rank)
    return args


def main():
    args = parse_args()
    cfg, task = load_run_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    check_checkpoint(args.checkpoint, 'checkpoint')
    cfg.load_from = args.checkpoint
    # Accept mmcv 1.x checkpoints (the official mmdet 2.x / mmseg 0.x ones) and check every
    # checkpoint key by key against the model (mmengine loads with strict=False).
    cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [dict(type='LegacyCheckpointHook')]

    if args.show or args.show_dir:
        trigger_visualization_hook(cfg, args.show, args.show_dir, args.wait_time, task)
    if args.tta:
        apply_tta(cfg, task)
    if args.out is not None and task == 'seg':
        cfg.test_evaluator['output_dir'] = args.out
    if args.out is not None and task == 'det' and not args.out.endswith(('.pkl', '.pickle')):
        raise InputValueError(f'--out must be a .pkl or .pickle file, got {args.out}')

    adapt_to_cpu(cfg, args.launcher)
    check_data_paths(cfg, ['test_dataloader'])
    init_cpu_distributed(cfg, args.launcher)

    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if args.out is not None and task == 'det':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    with checkpoint_origin('the CHECKPOINT argument'):
        runner.test()
    finish_distributed()


if __name__ == '__main__':
    run(main)
