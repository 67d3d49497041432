"""Helpers shared by tools/train.py and tools/test.py.

They adapt a loaded config to the machine before ``Runner.from_cfg`` and fail early, with a message
that says what to do, when a dataset or checkpoint path is missing:

- :func:`task_of` tells detection from segmentation configs by their ``default_scope``.
- :func:`adapt_to_cpu` makes configs written for GPUs run on a machine without CUDA: fp16
  (``AmpOptimWrapper``) falls back to fp32, and in multi-process runs SyncBN becomes BN and the
  gloo backend replaces nccl (see :func:`init_cpu_distributed`).
- :func:`check_data_paths` and :func:`check_checkpoint` check paths before anything is built.
"""
import os
import os.path as osp
import warnings
from typing import Iterator, List, Optional, Tuple

import torch
from mmengine.config import Config, ConfigDict

from nat_mm.mm.checkpoint_io import CheckpointNotFoundError
from nat_mm.mm.cli import InputNotFoundError, InputValueError, UnsupportedInputError

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


def task_of(cfg: Config) -> str:
    """Return ``'det'`` or ``'seg'`` from the config's ``default_scope``.

    Raises:
        InputValueError: (a ``ValueError``) the scope is neither ``mmdet`` nor ``mmseg``, or
            the config has no ``model``.
    """
    scope = cfg.get('default_scope')
    name = f' {cfg.filename}' if getattr(cfg, 'filename', None) else ''
    if scope not in ('mmdet', 'mmseg'):
        raise InputValueError(
            f'cannot tell the task of the config{name}: default_scope={scope!r}; expected '
            "'mmdet' (detection) or 'mmseg' (segmentation): give an mmdet or mmseg model config "
            "(or set default_scope)")
    if not isinstance(cfg.get('model'), dict):
        raise InputValueError(f'the config{name} defines no model: give a detector or '
                              'segmentor config (e.g. configs/det/mask_rcnn_nat_tiny_3x.py)')
    return 'det' if scope == 'mmdet' else 'seg'


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
