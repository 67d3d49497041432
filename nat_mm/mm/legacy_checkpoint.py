"""Test checkpoints that mmcv 1.x wrote (mmdet 2.x / mmseg 0.x), e.g. the official NAT/DiNAT
COCO and ADE20K checkpoints, with mmengine's Runner.

mmcv 1.x's ``save_checkpoint`` writes ``{'meta': ..., 'state_dict': ..., 'optimizer': ...}``
where ``meta`` holds ``mmcv_version`` ('1.x'), ``time``, ``CLASSES`` (and ``PALETTE``), the
config text, ``epoch``, ``iter``, ``hook_msgs``, ``seed``, ``exp_name``, ``env_info`` and, for
fp16 runs, the loss scaler's state. All of it is plain data (str, int, float, tuple, list, dict,
OrderedDict, tensors), so ``torch.load(weights_only=True)`` reads it as it is; nothing here
switches ``weights_only`` off.

What differs from an mmengine checkpoint is the layout, which :func:`convert_mmcv1_checkpoint`
maps: ``meta.CLASSES``/``meta.PALETTE`` become ``meta.dataset_meta.classes``/``palette``, the
optimizer state (mmcv 1.x's optimizer, not an mmengine OptimWrapper's) is dropped, and model keys
that mmdet 3 / mmseg 1 renamed are renamed by :data:`KEY_RENAMES`. For the models of this project
(NAT/DiNAT/DiNAT_s backbones with official names, FPN, RPN, (Cascade) RoI heads, UPerNet, FCN)
the mmdet 2.x / mmseg 0.x names are the current ones, so the table is empty; every load is then
checked key by key against the model (mmengine itself loads with ``strict=False`` and would only
log a missing weight), so a rename we do not know of is an error naming the keys, not a silently
half-initialised model.

:class:`LegacyCheckpointHook` applies both when the Runner loads ``load_from``. It is registered
in mmengine's root ``HOOKS`` when this module is imported, which ``import nat_mm`` does; the
``HOOKS`` of mmdet and mmseg are children of that registry and look names up in it, so the
Runner finds it in mmdet-, mmseg- and mmengine-scoped configs. Our ``tools/test.py`` adds it to
every run; with mmdet's or mmseg's own ``tools/test.py`` a config enables it with
``custom_imports=dict(imports=['nat_mm'])`` and
``custom_hooks=[dict(type='LegacyCheckpointHook')]``.
"""
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Tuple

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from .checkpoint_io import (CheckpointContentError, CheckpointMismatchError, describe_checkpoint,
                            describe_source)

__all__ = ['KEY_RENAMES', 'is_mmcv1_checkpoint', 'convert_mmcv1_checkpoint',
           'check_checkpoint_keys', 'LegacyCheckpointHook']

# (pattern, replacement) applied in order to every state-dict key of an mmcv 1.x checkpoint.
KEY_RENAMES: List[Tuple[str, str]] = []

# Buffers that a model may have and an older checkpoint may lack.
_OPTIONAL_KEYS = re.compile(r'(^|\.)num_batches_tracked$')


def is_mmcv1_checkpoint(checkpoint) -> bool:
    """Whether ``checkpoint`` (a loaded dict) was written by mmcv 1.x's ``save_checkpoint``."""
    if not isinstance(checkpoint, Mapping):
        return False
    meta = checkpoint.get('meta')
    return (isinstance(meta, Mapping) and isinstance(checkpoint.get('state_dict'), Mapping)
            and str(meta.get('mmcv_version', '')).startswith('1.'))


def convert_mmcv1_checkpoint(checkpoint: Mapping) -> Dict:
    """Return an mmengine-layout copy of an mmcv 1.x checkpoint.

    Args:
        checkpoint (Mapping): The loaded mmcv 1.x checkpoint.

    Returns:
        dict: ``state_dict`` (keys renamed by :data:`KEY_RENAMES`) and ``meta`` with
        ``dataset_meta`` (``classes``, ``palette`` when present), ``epoch``, ``iter`` and the
        original ``mmcv_version``, ``time`` and ``config`` text. The optimizer state is left out.

    Raises:
        ValueError: ``checkpoint`` is not an mmcv 1.x checkpoint.
    """
    if not is_mmcv1_checkpoint(checkpoint):
        raise ValueError('convert_mmcv1_checkpoint: not an mmcv 1.x checkpoint (expected a '
                         "'state_dict' and a 'meta' with mmcv_version 1.x)")
    old_meta = checkpoint['meta']
    state_dict = OrderedDict()
    for key, value in checkpoint['state_dict'].items():
        for pattern, repl in KEY_RENAMES:
            key = re.sub(pattern, repl, key)
        state_dict[key] = value
    dataset_meta = {}
    if old_meta.get('CLASSES') is not None:
        dataset_meta['classes'] = tuple(old_meta['CLASSES'])
    if old_meta.get('PALETTE') is not None:
        dataset_meta['palette'] = [tuple(c) for c in old_meta['PALETTE']]
    meta = {k: old_meta[k] for k in ('epoch', 'iter', 'mmcv_version', 'time', 'config')
            if k in old_meta}
    meta['dataset_meta'] = dataset_meta
    return {'meta': meta, 'state_dict': state_dict}


def check_checkpoint_keys(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor],
                          source: str) -> None:
    """Raise unless ``state_dict`` holds every weight of ``model`` with its shape.

    Keys are compared after stripping a leading ``module.`` (as mmengine does). Unexpected
    keys are logged.

    Raises:
        CheckpointMismatchError: (a ``RuntimeError``) missing weights or shape mismatches,
            listed, with what the checkpoint looks like.
    """
    state_dict = {re.sub(r'^module\.', '', k): v for k, v in state_dict.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not _OPTIONAL_KEYS.search(k)]
    shapes = [f'{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(v.shape)}'
              for k, v in expected.items()
              if k in state_dict and isinstance(state_dict[k], torch.Tensor)
              and state_dict[k].shape != v.shape]
    if missing or shapes:
        raise CheckpointMismatchError(
            f'{describe_source(source)} does not fit the model of this config: {len(missing)} of '
            f'its {len(expected)} weights are missing from the checkpoint '
            f'{missing[:20]}{" ..." if len(missing) > 20 else ""}, {len(shapes)} have another '
            f'shape {shapes[:10]}. The checkpoint looks like {describe_checkpoint(state_dict)}. '
            'Is it a checkpoint of this config (a detector/segmentor checkpoint, not an ImageNet '
            'backbone one, which belongs in model.backbone.init_cfg)?')
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        print_log(f'{source}: keys not used by the model: {unexpected}', logger='current',
                  level=30)


@HOOKS.register_module()
class LegacyCheckpointHook(Hook):
    """Convert an mmcv 1.x checkpoint when the Runner loads it, and check every checkpoint
    loaded for testing against the model.

    Runs in ``after_load_checkpoint``, i.e. after mmengine read the file (with
    ``weights_only=True``) and before it copies the weights into the model, so the conversion
    happens in place on the loaded dict.

    Raises:
        CheckpointContentError: (a ``TypeError``) the loaded file is not a dict with a
            ``state_dict`` (neither an mmengine nor an mmcv 1.x checkpoint).
        CheckpointMismatchError: (a ``RuntimeError``) the weights do not fit the model
            (:func:`check_checkpoint_keys`).
    """

    priority = 'VERY_HIGH'

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        source = f'checkpoint {runner._load_from}' if getattr(runner, '_load_from', None) \
            else 'checkpoint'
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get('state_dict'),
                                                              Mapping):
            keys = sorted(map(str, checkpoint))[:10] if isinstance(checkpoint, Mapping) \
                else None
            inner = checkpoint.get('model') if isinstance(checkpoint, Mapping) else None
            looks = (f'; its model entry looks like {describe_checkpoint(inner)}'
                     if isinstance(inner, Mapping) else '')
            raise CheckpointContentError(
                f'{describe_source(source)} is neither an mmengine checkpoint (tools/train.py) '
                f"nor an mmcv 1.x one (mmdet 2.x / mmseg 0.x): no 'state_dict' entry (top-level "
                f'keys: {keys}{looks}). ImageNet backbone checkpoints belong in '
                'model.backbone.init_cfg; tools/convert_checkpoint.py converts backbone-only '
                'ones.')
        if is_mmcv1_checkpoint(checkpoint):
            converted = convert_mmcv1_checkpoint(checkpoint)
            print_log(f'{source}: written by mmcv {converted["meta"]["mmcv_version"]} '
                      '(mmdet 2.x / mmseg 0.x); converted to the mmengine layout',
                      logger='current')
            checkpoint.clear()
            checkpoint.update(converted)
        model = runner.model
        model = getattr(model, 'module', model)  # DDP and other wrappers
        check_checkpoint_keys(model, checkpoint['state_dict'], source)
