"""The released configs as the tests build them: no pretrained download, their scope set.

Example:
    >>> from nat_mm.testing.configs import load_released_config
    >>> cfg = load_released_config('det/mask_rcnn_nat_tiny_3x.py')  # doctest: +SKIP
    >>> cfg.model.backbone.init_cfg is None  # doctest: +SKIP
    True
"""
import os.path as osp

from mmengine.config import Config
from mmengine.registry import init_default_scope

from .tools import ROOT

__all__ = ['load_released_config']


def load_released_config(config: str) -> Config:
    """``configs/<config>`` with the backbone's ``init_cfg`` cleared (no checkpoint download),
    after making its ``default_scope`` the current one, so ``MODELS.build`` finds its heads."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', config))
    cfg.model.backbone.init_cfg = None
    init_default_scope(cfg.default_scope)
    return cfg
