"""nat_mm: Neighborhood Attention Transformers (NAT, DiNAT) for the OpenMMLab 2.0 stack.

``nat_mm.ops`` and ``nat_mm.models`` need only torch (and timm). When mmengine is installed,
importing ``nat_mm`` also loads ``nat_mm.mm``, which registers ``NAT`` and ``DiNAT`` in mmdet's
and mmseg's ``MODELS`` (whichever is installed) and makes mmengine checkpoints loadable under
``torch.load(weights_only=True)``; so ``custom_imports=dict(imports=['nat_mm'])`` in any mm
config is enough to use ``type='NAT'``.
"""
from . import models, ops
from .models import NAT, DiNAT
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

__all__ = ['ops', 'models', 'mm', 'NAT', 'DiNAT', 'na2d', 'na2d_qk', 'na2d_av']
