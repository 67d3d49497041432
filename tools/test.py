"""Test (evaluate) a detector or segmentor checkpoint with mmengine's Runner.

Prints COCO bbox/segm mAP (mmdet configs) or mIoU (mmseg configs).

Examples:
    python tools/test.py configs/det/mask_rcnn_nat_tiny_3x.py work_dirs/.../epoch_36.pth
    python tools/test.py configs/seg/upernet_nat_tiny_160k.py ckpt.pth --tta --show-dir vis
    tools/dist_test.sh configs/det/cascade_nat_tiny_3x.py ckpt.pth 8
"""
import argparse
import os.path as osp
import warnings

from mmengine.config import ConfigDict
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import nat_mm  # noqa: F401  registers NAT and DiNAT even without custom_imports
import nat_mm.mm.legacy_checkpoint  # noqa: F401  registers LegacyCheckpointHook
from nat_mm.mm.checkpoint_io import checkpoint_origin
from nat_mm.mm.cli import ConfigError, DictAction, InputValueError, load_config, run
from _common import (adapt_to_cpu, check_checkpoint, check_data_paths, default_work_dir,
                     finish_distributed, init_cpu_distributed, set_local_rank_env, task_of)


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


def trigger_visualization_hook(cfg, args, task):
    """Turn on the visualization hook for --show/--show-dir (mmdet's and mmseg's way)."""
    hook = (cfg.get('default_hooks') or {}).get('visualization')
    if hook is None:
        raise ConfigError('--show/--show-dir need a `visualization` entry in '
                           'default_hooks (DetVisualizationHook or SegVisualizationHook)')
    hook['draw'] = True
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        show_dir = osp.abspath(args.show_dir)
        if task == 'det':
            # DetVisualizationHook writes <test_out_dir>/<image name>
            hook['test_out_dir'] = show_dir
        else:
            # SegLocalVisualizer writes <save_dir>/vis_data/vis_image/<image name>_<step>.png;
            # SegVisualizationHook draws every `interval`-th batch only: draw them all
            cfg.visualizer['save_dir'] = show_dir
            hook['interval'] = 1


def apply_tta(cfg, task):
    """Wrap the model in the config's TTA model and use its TTA pipeline."""
    if task == 'det' and 'tta_model' not in cfg:
        warnings.warn('no tta_model in the config; using DetTTAModel with NMS 0.5')
        cfg.tta_model = dict(type='DetTTAModel',
                             tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5),
                                          max_per_img=100))
    if 'tta_pipeline' not in cfg or 'tta_model' not in cfg:
        raise ConfigError('--tta needs `tta_pipeline` (and for segmentation `tta_model`) in the '
                          'config')
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def main():
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    task = task_of(cfg)
    if task == 'det':
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()

    cfg.work_dir = args.work_dir or cfg.get('work_dir') or default_work_dir(args.config)
    check_checkpoint(args.checkpoint, 'checkpoint')
    cfg.load_from = args.checkpoint
    # Accept mmcv 1.x checkpoints (the official mmdet 2.x / mmseg 0.x ones) and check every
    # checkpoint key by key against the model (mmengine loads with strict=False).
    cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [dict(type='LegacyCheckpointHook')]

    if args.show or args.show_dir:
        trigger_visualization_hook(cfg, args, task)
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
