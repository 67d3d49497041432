"""nat_mm: Neighborhood Attention Transformers (NAT, DiNAT, DiNAT_s) for the OpenMMLab 2.0 stack.

``nat_mm.ops`` and ``nat_mm.models`` need only torch (and timm); ``nat_mm.NAT``, ``nat_mm.DiNAT``
and ``nat_mm.DiNAT_s`` are their plain-torch backbones. When mmengine is installed, importing
``nat_mm`` also loads ``nat_mm.mm``, which registers (see :mod:`nat_mm.mm` for the details):

- ``NAT``, ``DiNAT`` and ``DiNAT_s`` (mmengine ``BaseModule`` subclasses) in
  ``mmdet.registry.MODELS`` and ``mmseg.registry.MODELS``, whichever is installed;
- ``LegacyCheckpointHook`` (loads mmcv 1.x checkpoints, e.g. the official NAT/DiNAT COCO and
  ADE20K ones) in mmengine's root ``mmengine.registry.HOOKS``, which the child ``HOOKS`` of
  mmdet and mmseg search, so mmdet- and mmseg-scoped configs find it;
- local and remote checkpoint loaders in mmengine's ``CheckpointLoader`` and the data types of
  mmengine checkpoints as ``torch.load(weights_only=True)`` safe globals.

So ``custom_imports=dict(imports=['nat_mm'])`` in any mm config is enough to use
``type='NAT'`` and ``custom_hooks=[dict(type='LegacyCheckpointHook')]``, with our tools or
mmdet's and mmseg's own. Where an OpenMMLab package that ``nat_mm.mm`` imports (mmengine) is
missing, ``nat_mm.mm`` is None; any other ImportError propagates.
"""
from . import models, ops
from .models import NAT, DiNAT, DiNAT_s
from .ops import na2d, na2d_av, na2d_qk

# Only a missing OpenMMLab package disables the mm layer; any other ImportError (a broken
# install, a bug in nat_mm.mm) propagates.
_OPENMMLAB_PACKAGES = ('mmengine', 'mmcv', 'mmdet', 'mmseg')
try:
    from . import mm
except ImportError as error:
    if (error.name or '').partition('.')[0] not in _OPENMMLAB_PACKAGES:
        raise
    mm = None

__all__ = ['ops', 'models', 'mm', 'NAT', 'DiNAT', 'DiNAT_s', 'na2d', 'na2d_qk', 'na2d_av']
