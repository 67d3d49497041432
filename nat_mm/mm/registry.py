"""Register NAT, DiNAT and DiNAT_s in mmdet's and mmseg's ``MODELS`` registries.

:func:`register_backbones` (run by ``import nat_mm``) puts the three classes below, under their
own names, in ``mmdet.registry.MODELS`` (scope ``mmdet``) and ``mmseg.registry.MODELS`` (scope
``mmseg``), whichever of mmdet and mmseg is installed, and nowhere else: not in mmengine's root
``MODELS`` (a config with ``default_scope='mmengine'`` builds no detector or segmentor). Configs
may also name them with the scope, ``type='mmdet.NAT'`` / ``type='mmseg.DiNAT_s'``. This module
registers nothing else; ``LegacyCheckpointHook`` goes into mmengine's ``HOOKS`` from
:mod:`nat_mm.mm.legacy_checkpoint` (see :mod:`nat_mm.mm`).

The registered classes are thin subclasses of the plain-torch backbones in ``nat_mm.models``
that mix in mmengine's ``BaseModule``: same constructor, same state-dict names, plus mmengine's
``init_cfg`` handling. ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)`` goes
through :func:`nat_mm.mm.checkpoint.load_pretrained`, which converts official and Hugging Face
layouts and raises on missing backbone weights (mmengine's own ``PretrainedInit`` loads with
``strict=False`` and would only log them). Other ``init_cfg`` types use mmengine's initialisers.
Like mmdet's and mmseg's backbones they also take the deprecated ``pretrained=PATH`` (mmseg's
``EncoderDecoder`` passes ``model.pretrained`` on to its backbone), which becomes
``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` with a warning.
"""
import copy
import importlib.util
import warnings
from typing import List, Optional

from mmengine.model import BaseModule

from .. import models
from .checkpoint import load_pretrained
from .cli import InputValueError

__all__ = ['NAT', 'DiNAT', 'DiNAT_s', 'register_backbones', 'REGISTRIES']


def pretrained_to_init_cfg(pretrained: Optional[str], init_cfg, owner: str):
    """Turn the deprecated ``pretrained=PATH`` argument into ``init_cfg``, as mmdet's and mmseg's
    backbones do (mmseg's ``EncoderDecoder`` hands ``model.pretrained`` to its backbone).

    Args:
        pretrained (str, optional): Checkpoint path or URL; None leaves ``init_cfg`` as is.
        init_cfg (dict | list[dict], optional): The ``init_cfg`` given alongside.
        owner (str): Class name for the messages.

    Returns:
        dict | list[dict] | None: ``dict(type='Pretrained', checkpoint=pretrained)`` when
        ``pretrained`` is given, else ``init_cfg``.

    Raises:
        InputValueError: (a ``ValueError``) both ``pretrained`` and ``init_cfg`` are given.
        TypeError: ``pretrained`` is neither a str nor None.
    """
    if pretrained is None:
        return init_cfg
    if not isinstance(pretrained, str):
        raise TypeError(f'{owner}: pretrained must be a str (checkpoint path or URL) or None, '
                        f'got {pretrained!r}')
    if init_cfg:
        raise InputValueError(
            f'{owner}: init_cfg and pretrained cannot be specified at the same time, got '
            f'pretrained={pretrained!r}, init_cfg={init_cfg!r}; use init_cfg only (in mmseg, '
            'model.pretrained is handed to the backbone: set model.pretrained=None)')
    warnings.warn(f'{owner}: pretrained is deprecated, use init_cfg=dict(type=\'Pretrained\', '
                  f'checkpoint={pretrained!r}) instead', FutureWarning, stacklevel=3)
    return dict(type='Pretrained', checkpoint=pretrained)


class _MMInitMixin:
    """``init_weights`` for the mm-registered backbones (see the module docstring), and the
    deprecated ``pretrained`` alias of ``init_cfg`` (:func:`pretrained_to_init_cfg`)."""

    def __init__(self, *args, pretrained: Optional[str] = None, init_cfg=None, **kwargs) -> None:
        init_cfg = pretrained_to_init_cfg(pretrained, init_cfg, type(self).__name__)
        super().__init__(*args, init_cfg=init_cfg, **kwargs)
        # The config key that names the checkpoint, for messages (mmseg's EncoderDecoder hands
        # model.pretrained to the backbone as pretrained=).
        self._checkpoint_origin = ('model.pretrained or model.backbone.pretrained'
                                   if pretrained is not None else
                                   'model.backbone.init_cfg.checkpoint')

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
                            map_location=cfg.get('map_location', 'cpu'),
                            origin=getattr(self, '_checkpoint_origin', None))
        self._is_init = True


class NAT(_MMInitMixin, models.NAT, BaseModule):
    __doc__ = models.NAT.__doc__


class DiNAT(_MMInitMixin, models.DiNAT, BaseModule):
    __doc__ = models.DiNAT.__doc__


class DiNAT_s(_MMInitMixin, models.DiNAT_s, BaseModule):
    __doc__ = models.DiNAT_s.__doc__


REGISTRIES = {'mmdet': 'mmdet.registry', 'mmseg': 'mmseg.registry'}


def register_backbones() -> List[str]:
    """Register :class:`NAT`, :class:`DiNAT` and :class:`DiNAT_s` in mmdet's and mmseg's
    ``MODELS``.

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
        for cls in (NAT, DiNAT, DiNAT_s):
            if registry.module_dict.get(cls.__name__) is not cls:
                registry.register_module(name=cls.__name__, module=cls)
        done.append(package)
    return done
