"""Adapt a loaded config to the machine and the launcher, and check its paths before a run.

What tools/train.py and tools/test.py do between loading a config and ``Runner.from_cfg``; they
fail early, with a message that says what to do:

- :func:`load_run_config` loads a config for a run (options, launcher, work_dir).
- :func:`adapt_to_cpu` makes configs written for GPUs run on a machine without CUDA: fp16
  (``AmpOptimWrapper``) falls back to fp32, and in multi-process runs SyncBN becomes BN and the
  gloo backend replaces nccl (see :func:`init_cpu_distributed`, :func:`finish_distributed`).
- :func:`world_size` and :func:`per_process_batch_size` split a total batch over the processes.
- :func:`apply_tta` and :func:`trigger_visualization_hook` turn ``--tta``, ``--show`` and
  ``--show-dir`` into config settings.
- :func:`check_data_paths`, :func:`check_checkpoint` and :func:`check_pretrained` check paths
  before anything is built.
"""
import os
import os.path as osp
import warnings
from typing import Iterator, List, Optional, Tuple

import torch
from mmengine.config import Config, ConfigDict

from .checkpoint_io import CheckpointNotFoundError
from .cli import ConfigError, InputNotFoundError, InputValueError, UnsupportedInputError

__all__ = [
    'load_run_config', 'adapt_to_cpu', 'init_cpu_distributed', 'finish_distributed', 'world_size',
    'per_process_batch_size', 'apply_tta', 'trigger_visualization_hook', 'check_data_paths',
    'check_checkpoint', 'check_pretrained', 'default_work_dir', 'set_local_rank_env'
]

_DATA_HINTS = {
    'CocoDataset': (
        'COCO 2017 is expected under data/coco/ (annotations/, train2017/, val2017/). Get it '
        'from https://cocodataset.org/#download (or with mmdet\'s '
        '`python tools/misc/download_dataset.py --dataset-name coco2017`).'),
    'ADE20KDataset': (
        'ADE20K is expected under data/ade/ADEChallengeData2016/ (images/, annotations/). Get '
        'ADEChallengeData2016.zip from http://sceneparsing.csail.mit.edu/ and unzip it there.'),
}
_DEMO_HINT = 'For the bundled demo data run `python tools/prepare_demo_data.py` first.'


def _replace_syncbn(node) -> int:
    """Replace every ``type='SyncBN'`` in a config tree by ``'BN'``; return how many."""
    count = 0
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
            count += 1
        for value in node.values():
            count += _replace_syncbn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += _replace_syncbn(value)
    return count


def adapt_to_cpu(cfg: Config, launcher: str) -> None:
    """Adapt a GPU config in place when CUDA is unavailable; no-op otherwise.

    - ``AmpOptimWrapper`` (fp16) asserts CUDA: fall back to ``OptimWrapper`` (fp32), with a
      warning.
    - Multi-process runs (``launcher != 'none'``): torch's SyncBatchNorm has no CPU kernel, so
      SyncBN layers become BN (statistics per process), the backend becomes gloo and the DDP
      wrapper gets ``device_ids=None`` (mmengine passes ``[LOCAL_RANK]``, which is for GPUs).
      Single-process runs need nothing: mmengine reverts SyncBN itself there.
    """
    if torch.cuda.is_available():
        return
    optim_wrapper = cfg.get('optim_wrapper')
    if optim_wrapper is not None and optim_wrapper.get('type') == 'AmpOptimWrapper':
        warnings.warn('CUDA is not available: training in fp32 with OptimWrapper instead of '
                      'mixed precision (AmpOptimWrapper needs CUDA).')
        optim_wrapper.type = 'OptimWrapper'
        for key in ('loss_scale', 'dtype', 'use_fsdp'):
            optim_wrapper.pop(key, None)
    if launcher == 'none':
        return
    if _replace_syncbn(cfg._cfg_dict):
        warnings.warn('CUDA is not available: SyncBN layers become BN (per-process statistics).')
    cfg.env_cfg = cfg.get('env_cfg', ConfigDict())
    cfg.env_cfg.dist_cfg = dict(cfg.env_cfg.get('dist_cfg', {}), backend='gloo')
    wrapper = cfg.get('model_wrapper_cfg')
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel',
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False),
            device_ids=None)
    else:
        wrapper.setdefault('device_ids', None)


def init_cpu_distributed(cfg: Config, launcher: str) -> None:
    """Start the gloo process group for a multi-process run without CUDA.

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` whatever the backend. The Runner
    only calls it when no process group exists yet, so starting the group here (from the
    ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` that torchrun sets) is the whole
    workaround; everything after it is mmengine's usual distributed path.

    Raises:
        UnsupportedInputError: (a ``NotImplementedError``) a launcher other than ``pytorch``
            (torchrun) without CUDA.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise UnsupportedInputError(
            f'multi-process runs without CUDA are supported with --launcher pytorch (torchrun, '
            f'e.g. tools/dist_train.sh CONFIG 2), got --launcher {launcher}')
    if not torch.distributed.is_initialized():
        dist_cfg = dict(cfg.get('env_cfg', {}).get('dist_cfg', {}))
        dist_cfg.pop('backend', None)
        torch.distributed.init_process_group(backend='gloo', **dist_cfg)


def finish_distributed() -> None:
    """Tear the process group down before the interpreter exits.

    Left to interpreter shutdown, gloo's worker threads can be destroyed while still joinable,
    which aborts the process ("terminate called without an active exception", SIGABRT) after a
    run that otherwise succeeded. A barrier first, so no rank leaves while another still talks.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def load_run_config(config: str, cfg_options: Optional[dict], launcher: str,
                    work_dir: Optional[str] = None) -> Tuple[Config, str]:
    """Load a config for a Runner run (tools/train.py, tools/test.py); return ``(cfg, task)``.

    ``--cfg-options`` are merged, ``cfg.launcher`` is set, ``cfg.work_dir`` is ``work_dir``, else
    the config's own, else :func:`default_work_dir`; for detection configs mmdet's dynamo cache
    limit is set up (as mmdet's tools do).

    Raises:
        UserInputError: a missing or bad config or options, or a config of neither task.
    """
    from .build import task_of
    from .cli import load_config

    cfg = load_config(config, cfg_options)
    cfg.launcher = launcher
    task = task_of(cfg)
    if task == 'det':
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()
    cfg.work_dir = work_dir or cfg.get('work_dir') or default_work_dir(config)
    return cfg, task


def world_size(launcher: str) -> int:
    """The number of training processes the launcher starts (1 without a launcher).

    Args:
        launcher (str): ``none``, ``pytorch``, ``slurm`` or ``mpi``.

    Raises:
        ConfigError: a launcher whose world-size variables are all unset.
    """
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


def trigger_visualization_hook(cfg: Config, show: bool, show_dir: Optional[str],
                               wait_time: float, task: str) -> None:
    """Turn on the visualization hook for ``--show``/``--show-dir`` (mmdet's and mmseg's way).

    Raises:
        ConfigError: the config has no ``default_hooks.visualization``.
    """
    hook = (cfg.get('default_hooks') or {}).get('visualization')
    if hook is None:
        raise ConfigError('--show/--show-dir need a `visualization` entry in '
                          'default_hooks (DetVisualizationHook or SegVisualizationHook)')
    hook['draw'] = True
    if show:
        hook['show'] = True
        hook['wait_time'] = wait_time
    if show_dir:
        show_dir = osp.abspath(show_dir)
        if task == 'det':
            # DetVisualizationHook writes <test_out_dir>/<image name>
            hook['test_out_dir'] = show_dir
        else:
            # SegLocalVisualizer writes <save_dir>/vis_data/vis_image/<image name>_<step>.png;
            # SegVisualizationHook draws every `interval`-th batch only: draw them all
            cfg.visualizer['save_dir'] = show_dir
            hook['interval'] = 1


def apply_tta(cfg: Config, task: str) -> None:
    """Wrap the model in the config's TTA model and use its TTA pipeline (in place).

    Detection configs without ``tta_model`` get mmdet's ``DetTTAModel`` with NMS 0.5, with a
    warning.

    Raises:
        ConfigError: no ``tta_pipeline`` (or, for segmentation, no ``tta_model``).
    """
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


def _dataset_paths(dataset: dict, where: str) -> Iterator[Tuple[str, str, str]]:
    """Yield ``(path, config key, dataset type)`` for every local path a dataset reads."""
    if not isinstance(dataset, dict):
        return
    for key in ('dataset', 'datasets'):  # wrappers: RepeatDataset, ConcatDataset, ...
        inner = dataset.get(key)
        inners = inner if isinstance(inner, (list, tuple)) else [inner]
        for i, sub in enumerate(inners):
            suffix = f'[{i}]' if isinstance(inner, (list, tuple)) else ''
            yield from _dataset_paths(sub, f'{where}.{key}{suffix}')
    dtype = str(dataset.get('type', ''))
    root = dataset.get('data_root') or ''
    if root and '://' not in root:
        yield root, f'{where}.data_root', dtype
    ann_file = dataset.get('ann_file')
    if ann_file:
        yield osp.join(root, ann_file), f'{where}.ann_file', dtype
    for key, prefix in (dataset.get('data_prefix') or {}).items():
        if prefix:
            yield osp.join(root, prefix), f'{where}.data_prefix.{key}', dtype


def check_data_paths(cfg: Config, dataloaders: List[str]) -> None:
    """Raise ``InputNotFoundError`` (a ``FileNotFoundError``) naming the first missing dataset
    path and how to get it.

    Args:
        cfg (Config): the config.
        dataloaders (list[str]): keys of the dataloaders to check, e.g. ``['test_dataloader']``.
    """
    items = []
    for name in dataloaders:
        loader = cfg.get(name)
        if loader is not None:
            items.extend(_dataset_paths(loader.get('dataset'), f'{name}.dataset'))
        # CocoMetric reads the annotation file itself.
        evaluator = cfg.get(name.replace('_dataloader', '_evaluator'))
        for e in evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]:
            if isinstance(e, dict) and e.get('ann_file'):
                items.append((e['ann_file'], f'{name.replace("_dataloader", "_evaluator")}'
                              '.ann_file', 'CocoDataset'))
    for path, key, dtype in items:
        if '://' in path or osp.exists(path):
            continue
        hint = _DATA_HINTS.get(dtype, 'Download the dataset the config names.')
        raise InputNotFoundError(
            f'dataset path not found: {path} (from {key}, dataset type {dtype or "?"}). '
            f'{hint} Or point the config at your copy, e.g. --cfg-options '
            f'{key.split(".")[0]}.dataset.data_root=/path/to/data/. {_DEMO_HINT}')


def check_checkpoint(path: Optional[str], what: str) -> None:
    """Raise ``CheckpointNotFoundError`` (a ``FileNotFoundError``) when a local checkpoint
    file is missing (URLs pass)."""
    if path and '://' not in path and not osp.isfile(path):
        raise CheckpointNotFoundError(
            f'{what} not found: {path}. Pass the path of a checkpoint written by '
            f'tools/train.py (work_dirs/<config>/epoch_N.pth or iter_N.pth) or a URL.')


def check_pretrained(cfg: Config) -> None:
    """Check local pretrained checkpoints: ``model.backbone.init_cfg`` of type ``Pretrained``,
    and the deprecated ``model.pretrained`` / ``model.backbone.pretrained``."""
    model = cfg.get('model') or {}
    backbone = model.get('backbone') or {}
    init_cfg = backbone.get('init_cfg')
    paths = [(model.get('pretrained'), 'model.pretrained', 'model.pretrained=None'),
             (backbone.get('pretrained'), 'model.backbone.pretrained',
              'model.backbone.pretrained=None')]
    if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
        paths.append((init_cfg.get('checkpoint'), 'model.backbone.init_cfg',
                      'model.backbone.init_cfg=None'))
    for path, key, scratch in paths:
        if isinstance(path, str) and path and '://' not in path and not osp.isfile(path):
            raise CheckpointNotFoundError(
                f'pretrained backbone checkpoint not found: {path} ({key}).'
                ' Use the official URL (configs name them), download it there, or train from '
                f'scratch with --cfg-options {scratch}.')


def default_work_dir(config: str) -> str:
    """``./work_dirs/<config stem>``, as mmdet's and mmseg's tools."""
    return osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])


def set_local_rank_env(local_rank: int) -> None:
    """Export ``LOCAL_RANK`` for launchers that pass ``--local-rank`` instead (old launch)."""
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(local_rank)
