"""Build a detector or segmentor from its config, in the registry of its task.

A config is a detection config when its ``default_scope`` is ``mmdet`` and a segmentation config
when it is ``mmseg`` (:func:`task_of`); its model is built by that package's ``MODELS``
(:func:`registry_of`). :func:`build_model` is the one way the tools and tests build a config's
model: with random weights, the config's own initialisation or a checkpoint; on any device,
including ``torch.device('meta')`` for counting parameters without memory (:func:`count_params`).

Example:
    >>> from nat_mm.mm.build import build_model, count_params
    >>> from nat_mm.mm.cli import load_config
    >>> cfg = load_config('configs/det/mask_rcnn_nat_tiny_3x.py')  # doctest: +SKIP
    >>> count_params(cfg) / 1e6  # doctest: +SKIP
    47.9...
    >>> model = build_model(cfg, 'ckpt.pth', device='cpu').eval()  # doctest: +SKIP
"""
import copy
from typing import Optional, Tuple, Union

import torch
from mmengine.config import Config
from mmengine.registry import Registry, init_default_scope

from .checkpoint_io import CheckpointContentError, checkpoint_origin
from .cli import InputValueError, load_config
from .runtime import check_checkpoint

__all__ = ['TASKS', 'task_of', 'registry_of', 'clear_pretrained', 'build_model', 'count_params',
           'load_weights', 'load_model']

#: ``default_scope`` -> task.
TASKS = {'mmdet': 'det', 'mmseg': 'seg'}


def task_of(cfg: Config) -> str:
    """Return ``'det'`` or ``'seg'`` from the config's ``default_scope``.

    Args:
        cfg (Config): A loaded config.

    Returns:
        str: ``'det'`` for ``default_scope='mmdet'``, ``'seg'`` for ``'mmseg'``.

    Raises:
        InputValueError: (a ``ValueError``) the scope is neither ``mmdet`` nor ``mmseg``, or
            the config has no ``model``.
    """
    scope = cfg.get('default_scope')
    name = f' {cfg.filename}' if getattr(cfg, 'filename', None) else ''
    if scope not in TASKS:
        raise InputValueError(
            f'cannot tell the task of the config{name}: default_scope={scope!r}; expected '
            "'mmdet' (detection) or 'mmseg' (segmentation): give an mmdet or mmseg model config "
            "(or set default_scope)")
    if not isinstance(cfg.get('model'), dict):
        raise InputValueError(f'the config{name} defines no model: give a detector or '
                              'segmentor config (e.g. configs/det/mask_rcnn_nat_tiny_3x.py)')
    return TASKS[scope]


def registry_of(task: str) -> Registry:
    """mmdet's ``MODELS`` for ``'det'``, mmseg's for ``'seg'``.

    Raises:
        ValueError: ``task`` is neither.
    """
    if task == 'det':
        from mmdet.registry import MODELS
    elif task == 'seg':
        from mmseg.registry import MODELS
    else:
        raise ValueError(f"registry_of: task must be 'det' or 'seg', got {task!r}")
    return MODELS


def clear_pretrained(node) -> None:
    """Drop, in place, every ``Pretrained`` ``init_cfg`` and ``pretrained`` path in a config tree.

    Other initialisers (Kaiming, Normal, ...) stay: they cost nothing and download nothing.

    Args:
        node (dict | list): A config (``cfg._cfg_dict``), ``cfg.model`` or any part of one.
    """
    if isinstance(node, dict):
        if isinstance(node.get('pretrained'), str):
            node['pretrained'] = None
        init_cfg = node.get('init_cfg')
        if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
            node['init_cfg'] = None
        elif isinstance(init_cfg, (list, tuple)):
            kept = [c for c in init_cfg if not (isinstance(c, dict)
                                                and c.get('type') == 'Pretrained')]
            node['init_cfg'] = kept or None
        for value in node.values():
            clear_pretrained(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            clear_pretrained(value)


def build_model(cfg: Config, weights: Optional[str] = None, *, pretrained: bool = True,
                init_weights: bool = False, revert_sync_bn: bool = True,
                seed: Optional[int] = None, device: Union[str, torch.device, None] = None,
                origin: str = 'the CHECKPOINT argument') -> torch.nn.Module:
    """Build ``cfg.model`` in its task's registry (the config itself is not changed).

    In order: the default scope is set to the config's, the model is built (after
    ``torch.manual_seed(seed)`` when ``seed`` is given), then ``weights`` are loaded
    (:func:`load_weights`) or, without them, ``init_weights()`` runs when ``init_weights``;
    SyncBN becomes BN (as mmengine's Runner does outside distributed runs) and the model moves
    to ``device``. Inside ``with torch.device('meta'):`` nothing is allocated: that is how
    :func:`count_params` counts.

    Args:
        cfg (Config): A detector or segmentor config (``default_scope`` mmdet or mmseg).
        weights (str, optional): A checkpoint path or URL of the whole model (an mmengine or an
            mmcv 1.x checkpoint). Defaults to None.
        pretrained (bool): Keep the config's ``Pretrained`` initialisers (``init_cfg``,
            ``pretrained``). False drops them all (:func:`clear_pretrained`) and the backbone's
            ``init_cfg``: random weights, nothing downloaded. Defaults to True.
        init_weights (bool): Call ``model.init_weights()`` when no ``weights`` are given (the
            config's initialisation, which loads ``Pretrained`` backbones). Defaults to False
            (the modules' constructor initialisation).
        revert_sync_bn (bool): Turn SyncBN layers into BN. Defaults to True.
        seed (int, optional): ``torch.manual_seed`` before building. Defaults to None.
        device (str | torch.device, optional): Where the model goes. Defaults to None (where it
            was built).
        origin (str): What named ``weights``, for messages. Defaults to
            'the CHECKPOINT argument'.

    Returns:
        torch.nn.Module: The model, in train mode (call ``.eval()`` for inference).

    Raises:
        InputValueError: the config is neither an mmdet nor an mmseg model config.
        CheckpointError: ``weights`` is missing, unreadable or does not fit the model.
    """
    task = task_of(cfg)
    model_cfg = copy.deepcopy(cfg.model)
    if not pretrained:
        clear_pretrained(model_cfg)
        if isinstance(model_cfg.get('backbone'), dict):
            model_cfg.backbone.init_cfg = None
    init_default_scope(cfg.get('default_scope'))
    if seed is not None:
        torch.manual_seed(seed)
    model = registry_of(task).build(model_cfg)
    if weights:
        check_checkpoint(weights, 'checkpoint')
        with checkpoint_origin(origin):
            load_weights(model, weights)
    elif init_weights:
        model.init_weights()
    if revert_sync_bn:
        from mmengine.model import revert_sync_batchnorm
        model = revert_sync_batchnorm(model)
    return model if device is None else model.to(device)


def count_params(cfg: Config) -> int:
    """Parameters of the config's model, built on the meta device (no memory, no init, nothing
    downloaded)."""
    with torch.device('meta'):
        model = build_model(cfg, pretrained=False, revert_sync_bn=False)
    return sum(p.numel() for p in model.parameters())


def load_weights(model: torch.nn.Module, checkpoint: str) -> None:
    """Load ``checkpoint`` (a path or URL; an mmengine or an mmcv 1.x checkpoint) into
    ``model``, after checking that it holds every weight of the model with its shape.

    Args:
        model (torch.nn.Module): The model the checkpoint was written for.
        checkpoint (str): Path or URL.

    Raises:
        CheckpointError: the checkpoint is missing, unreadable, refused, or does not fit the
            model (:func:`nat_mm.mm.legacy_checkpoint.check_checkpoint_keys`).
    """
    from mmengine.runner import CheckpointLoader
    from mmengine.runner.checkpoint import _load_checkpoint_to_model

    from .legacy_checkpoint import (check_checkpoint_keys, convert_mmcv1_checkpoint,
                                    is_mmcv1_checkpoint)

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
               cfg_options: Optional[dict] = None, device: Union[str, torch.device] = 'cpu',
               origin: str = 'the CHECKPOINT argument') -> Tuple[Config, torch.nn.Module, str]:
    """Load a config and build its model for inference; return ``(cfg, model, task)``.

    With ``checkpoint`` its weights are loaded (:func:`load_weights`: every weight of the model
    must be in it, with its shape); without one the model gets the config's own initialisation
    (``init_weights``). SyncBN becomes BN; the model is in eval mode on ``device``.

    Args:
        config (str | Config): Config file or a loaded config.
        checkpoint (str, optional): Checkpoint path or URL. Defaults to None.
        cfg_options (dict, optional): Parsed ``--cfg-options``. Defaults to None.
        device (str | torch.device): Where the model goes. Defaults to 'cpu'.
        origin (str): The argument that named ``checkpoint``, for messages. Defaults to
            'the CHECKPOINT argument'.

    Raises:
        UserInputError: a missing or bad config, options or checkpoint.
    """
    cfg = load_config(config, cfg_options) if isinstance(config, str) else config
    if not isinstance(config, str) and cfg_options:
        cfg.merge_from_dict(cfg_options)
    task = task_of(cfg)
    model = build_model(cfg, checkpoint, init_weights=True, device=device, origin=origin)
    return cfg, model.eval(), task
