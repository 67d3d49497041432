"""Register NAT and DiNAT in mmdet's and mmseg's ``MODELS`` registries.

The registered classes are thin subclasses of the plain-torch backbones in ``nat_mm.models``
that mix in mmengine's ``BaseModule``: same constructor, same state-dict names, plus mmengine's
``init_cfg`` handling. ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)`` goes
through :func:`nat_mm.mm.checkpoint.load_pretrained`, which converts official and Hugging Face
layouts and raises on missing backbone weights (mmengine's own ``PretrainedInit`` loads with
``strict=False`` and would only log them). Other ``init_cfg`` types use mmengine's initialisers.
"""
import copy
import importlib.util
from typing import List

from mmengine.model import BaseModule

from .. import models
from .checkpoint import load_pretrained

__all__ = ['NAT', 'DiNAT', 'register_backbones', 'REGISTRIES']


class _MMInitMixin:
    """``init_weights`` for the mm-registered backbones (see the module docstring)."""

    def init_weights(self) -> None:
        """Initialise from ``init_cfg``: from scratch when it is None, and a ``Pretrained``
        entry loads its checkpoint (converted) after the other entries have run."""
        cfgs = self.init_cfg
        cfgs = [] if cfgs is None else (list(cfgs) if isinstance(cfgs, list) else [cfgs])
        pretrained = [c for c in cfgs if c.get('type') == 'Pretrained']
        others = [c for c in cfgs if c.get('type') != 'Pretrained']
        if len(pretrained) > 1:
            raise ValueError(f'{type(self).__name__}: at most one Pretrained init_cfg, got '
                             f'{pretrained}')
        if others:
            saved, self.init_cfg = self.init_cfg, others
            try:
                BaseModule.init_weights(self)
            finally:
                self.init_cfg = saved
        else:
            # From scratch; also what a classification checkpoint leaves uncovered (norm{i}).
            models.NAT.init_weights(self)
        if pretrained:
            cfg = copy.deepcopy(pretrained[0])
            load_pretrained(self, cfg['checkpoint'], prefix=cfg.get('prefix'),
                            map_location=cfg.get('map_location', 'cpu'))
        self._is_init = True


class NAT(_MMInitMixin, models.NAT, BaseModule):
    __doc__ = models.NAT.__doc__


class DiNAT(_MMInitMixin, models.DiNAT, BaseModule):
    __doc__ = models.DiNAT.__doc__


REGISTRIES = {'mmdet': 'mmdet.registry', 'mmseg': 'mmseg.registry'}


def register_backbones() -> List[str]:
    """Register :class:`NAT` and :class:`DiNAT` in the ``MODELS`` of mmdet and mmseg.

    A package that is not installed is skipped; an installed one that fails to import raises.
    Registering twice is a no-op.

    Returns:
        list[str]: The packages whose registry now holds the backbones.
    """
    done = []
    for package, module in REGISTRIES.items():
        if importlib.util.find_spec(package) is None:
            continue
        registry = importlib.import_module(module).MODELS
        for cls in (NAT, DiNAT):
            if registry.module_dict.get(cls.__name__) is not cls:
                registry.register_module(name=cls.__name__, module=cls)
        done.append(package)
    return done
