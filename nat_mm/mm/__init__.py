"""The OpenMMLab layer of nat_mm: the only package that imports mmengine, mmdet or mmseg.

Importing it registers ``NAT`` and ``DiNAT`` in mmdet's and mmseg's ``MODELS`` (whichever is
installed) and allow-lists the data types of mmengine checkpoints for
``torch.load(weights_only=True)`` (see :mod:`nat_mm.mm.serialization`).
"""
from .checkpoint import (convert_checkpoint_file, convert_state_dict, detect_format,
                         extract_state_dict, infer_nat_kwargs, load_pretrained)
from .registry import NAT, DiNAT, register_backbones
from .serialization import register_safe_globals, register_safe_pickling, safe_globals

register_safe_globals()
registered_in = register_backbones()

__all__ = [
    'NAT', 'DiNAT', 'register_backbones', 'registered_in', 'register_safe_globals',
    'register_safe_pickling',
    'safe_globals', 'convert_state_dict', 'convert_checkpoint_file', 'detect_format',
    'extract_state_dict', 'infer_nat_kwargs', 'load_pretrained'
]
