"""Train a detector or segmentor (mmdet or mmseg config) with mmengine's Runner.

Examples:
    python tools/train.py configs/det/mask_rcnn_nat_tiny_3x.py
    python tools/train.py configs/seg/upernet_nat_tiny_160k.py --resume
    tools/dist_train.sh configs/det/cascade_nat_tiny_3x.py 8
    tools/dist_train.sh configs/det/cascade_nat_tiny_3x.py 4 --total-batch-size 16

Works on machines without CUDA too (fp16 falls back to fp32; torchrun runs use gloo): see
nat_mm/mm/runtime.py.
"""
import argparse

from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import nat_mm  # noqa: F401  registers NAT and DiNAT even without custom_imports
from nat_mm.mm.checkpoint_io import checkpoint_origin
from nat_mm.mm.cli import ConfigError, DictAction, run
from nat_mm.mm.runtime import (adapt_to_cpu, check_checkpoint, check_data_paths,
                               check_pretrained, finish_distributed, init_cpu_distributed,
                               load_run_config, per_process_batch_size, set_local_rank_env,
                               world_size)


def parse_args():
    parser = argparse.ArgumentParser(description='Train a detector or segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--amp', action='store_true', help='enable automatic mixed precision (needs CUDA)')
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help='scale the learning rate by the actual batch size over auto_scale_lr.base_batch_size')
    parser.add_argument(
        '--total-batch-size', type=int, metavar='N',
        help='images per iteration over all processes (the papers use 16): sets the per-GPU '
        'train batch size to N / world size, and refuses an N that the world size does not '
        'divide')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint, or, without a path, from the latest checkpoint in '
        'the work directory')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, e.g. train_cfg.max_iters=100; key="[a,b]" for lists')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
        help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    set_local_rank_env(args.local_rank)
    return args


def main():
    args = parse_args()
    cfg, _ = load_run_config(args.config, args.cfg_options, args.launcher, args.work_dir)

    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.total_batch_size is not None:
        cfg.train_dataloader.batch_size = per_process_batch_size(
            args.total_batch_size, world_size(args.launcher))
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ConfigError('--auto-scale-lr needs `auto_scale_lr = dict(enable=False, '
                              'base_batch_size=16)` in the config')
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        check_checkpoint(args.resume, '--resume checkpoint')
        cfg.resume, cfg.load_from = True, args.resume
    else:
        check_checkpoint(cfg.get('load_from'), 'load_from checkpoint')

    adapt_to_cpu(cfg, args.launcher)
    loaders = ['train_dataloader']
    if cfg.get('val_cfg') and cfg.get('val_dataloader'):
        loaders.append('val_dataloader')
    check_data_paths(cfg, loaders)
    check_pretrained(cfg)
    init_cpu_distributed(cfg, args.launcher)

    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    # Checkpoint errors name the option that set the checkpoint (the backbone's init_cfg
    # names its own key).
    with checkpoint_origin('--resume' if args.resume else 'load_from'):
        runner.train()
    finish_distributed()


if __name__ == '__main__':
    run(main)
