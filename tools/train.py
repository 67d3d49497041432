"""Train a detector or segmentor (mmdet or mmseg config) with mmengine's Runner.

Examples:
    python tools/train.py configs/det/mask_rcnn_nat_tiny_3x.py
    python tools/train.py configs/seg/upernet_nat_tiny_160k.py --resume
    tools/dist_train.sh configs/det/cascade_nat_tiny_3x.py 8
    tools/dist_train.sh configs/det/cascade_nat_tiny_3x.py 4 --total-batch-size 16

Works on machines without CUDA too (fp16 falls back to fp32; torchrun runs use gloo): see
tools/_common.py.
"""
import argparse
import os

from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import nat_mm  # noqa: F401  registers NAT and DiNAT even without custom_imports
from nat_mm.mm.checkpoint_io import checkpoint_origin
from nat_mm.mm.cli import ConfigError, DictAction, InputValueError, load_config, run
from _common import (adapt_to_cpu, check_checkpoint, check_data_paths, check_pretrained,
                     default_work_dir, finish_distributed, init_cpu_distributed,
                     set_local_rank_env, task_of)


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


def world_size(launcher: str) -> int:
    """The number of training processes the launcher starts (1 without a launcher)."""
    if launcher == 'none':
        return 1
    variables = {'pytorch': ('WORLD_SIZE',), 'slurm': ('SLURM_NTASKS', 'WORLD_SIZE'),
                 'mpi': ('OMPI_COMM_WORLD_SIZE', 'PMI_SIZE', 'WORLD_SIZE')}[launcher]
    for name in variables:
        if os.environ.get(name):
            return int(os.environ[name])
    raise ConfigError(f'--launcher {launcher}: cannot tell the world size, none of '
                      f'{list(variables)} is set (start the run with torchrun, srun or mpirun)')


def per_process_batch_size(total: int, world: int) -> int:
    """Split a total batch evenly over ``world`` processes.

    Raises:
        InputValueError: (a ``ValueError``) ``total`` < 1, or ``world`` not dividing it.
    """
    if total < 1:
        raise InputValueError(f'--total-batch-size must be >= 1, got {total}')
    if total % world:
        divisors = [n for n in range(1, total + 1) if total % n == 0]
        raise InputValueError(f'--total-batch-size {total} cannot be split evenly over {world} '
                         f'processes; use a number of GPUs in {divisors}, or another total')
    return total // world


def main():
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    task = task_of(cfg)
    if task == 'det':
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()

    cfg.work_dir = args.work_dir or cfg.get('work_dir') or default_work_dir(args.config)

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
