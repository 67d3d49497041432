"""Build a detector or segmentor from a config (and a checkpoint) for the inference-side tools:
tools/export_onnx.py, tools/visualize_attention.py (tools/infer.py uses mmdet's and mmseg's
inferencers, which build their models themselves).
"""
from typing import Optional, Tuple, Union

import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope
from mmengine.runner import CheckpointLoader
from mmengine.runner.checkpoint import _load_checkpoint_to_model

import nat_mm  # noqa: F401  registers NAT and DiNAT, allow-lists checkpoint types
from nat_mm.mm.checkpoint_io import CheckpointContentError, checkpoint_origin
from nat_mm.mm.cli import load_config
from nat_mm.mm.legacy_checkpoint import (check_checkpoint_keys, convert_mmcv1_checkpoint,
                                         is_mmcv1_checkpoint)
from _common import check_checkpoint, task_of


def registry_of(task: str):
    """mmdet's or mmseg's ``MODELS``."""
    if task == 'det':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    return MODELS


def load_weights(model: torch.nn.Module, checkpoint: str) -> None:
    """Load ``checkpoint`` (a path or URL; an mmengine or an mmcv 1.x checkpoint) into
    ``model``, after checking that it holds every weight of the model with its shape.

    Raises:
        CheckpointError: the checkpoint is missing, unreadable, refused, or does not fit the
            model (:func:`nat_mm.mm.legacy_checkpoint.check_checkpoint_keys`).
    """
    loaded = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu', logger='silent')
    if is_mmcv1_checkpoint(loaded):
        loaded = convert_mmcv1_checkpoint(loaded)
    if not isinstance(loaded, dict) or not isinstance(loaded.get('state_dict'), dict):
        keys = sorted(map(str, loaded))[:10] if isinstance(loaded, dict) else None
        raise CheckpointContentError(
            f'checkpoint {checkpoint} has no state_dict entry (top-level keys: {keys}): give a '
            'detector/segmentor checkpoint of this config (tools/train.py writes them); ImageNet '
            'backbone checkpoints belong in model.backbone.init_cfg.')
    check_checkpoint_keys(model, loaded['state_dict'], f'checkpoint {checkpoint}')
    _load_checkpoint_to_model(model, loaded, strict=False, logger='silent')


def load_model(config: Union[str, Config], checkpoint: Optional[str] = None,
               cfg_options: Optional[dict] = None, device: str = 'cpu',
               origin: str = 'the CHECKPOINT argument') -> Tuple[Config, torch.nn.Module, str]:
    """Build the config's model in eval mode; return ``(cfg, model, task)``.

    With ``checkpoint`` its weights are loaded (:func:`load_weights`: every weight of the model
    must be in it, with its shape); without one the model gets the config's own initialisation
    (``init_weights``). SyncBN becomes BN (eval-mode BN either way), as mmengine's Runner does
    outside distributed runs.

    Args:
        config (str | Config): Config file or a loaded config.
        checkpoint (str, optional): Checkpoint path or URL. Defaults to None.
        cfg_options (dict, optional): Parsed ``--cfg-options``. Defaults to None.
        device (str): Where the model goes. Defaults to 'cpu'.
        origin (str): The argument that named ``checkpoint``, for messages. Defaults to
            'the CHECKPOINT argument'.

    Raises:
        UserInputError: a missing or bad config, options or checkpoint.
    """
    cfg = load_config(config, cfg_options) if isinstance(config, str) else config
    if not isinstance(config, str) and cfg_options:
        cfg.merge_from_dict(cfg_options)
    task = task_of(cfg)
    init_default_scope(cfg.get('default_scope'))
    model = registry_of(task).build(cfg.model)
    if checkpoint:
        check_checkpoint(checkpoint, 'checkpoint')
        with checkpoint_origin(origin):
            load_weights(model, checkpoint)
    else:
        model.init_weights()
    model = revert_sync_batchnorm(model)
    return cfg, model.to(device).eval(), task
