"""Build a detector or segmentor from a config (and a checkpoint) for the inference-side tools:
tools/export_onnx.py, tools/visualize_attention.py (tools/infer.py uses mmdet's and mmseg's
inferencers, which build their models themselves).
"""
from typing import Optional, Tuple

import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint

import nat_mm  # noqa: F401  registers NAT and DiNAT, allow-lists checkpoint types
from _common import check_checkpoint, task_of


def registry_of(task: str):
    """mmdet's or mmseg's ``MODELS``."""
    if task == 'det':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    return MODELS


def load_model(config: str, checkpoint: Optional[str] = None, cfg_options: Optional[dict] = None,
               device: str = 'cpu') -> Tuple[Config, torch.nn.Module, str]:
    """Build the config's model in eval mode; return ``(cfg, model, task)``.

    With ``checkpoint`` its weights are loaded (mmengine's ``load_checkpoint``, strict); without
    one the model gets the config's own initialisation (``init_weights``). SyncBN becomes BN
    (eval-mode BN either way), as mmengine's Runner does outside distributed runs.
    """
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    task = task_of(cfg)
    init_default_scope(cfg.get('default_scope'))
    model = registry_of(task).build(cfg.model)
    if checkpoint:
        check_checkpoint(checkpoint, 'checkpoint')
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True, logger='silent')
    else:
        model.init_weights()
    model = revert_sync_batchnorm(model)
    return cfg, model.to(device).eval(), task
