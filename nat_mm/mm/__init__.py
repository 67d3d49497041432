"""The OpenMMLab layer of nat_mm: the only package that imports mmengine, mmdet or mmseg.

Importing it registers ``NAT`` and ``DiNAT`` in mmdet's and mmseg's ``MODELS`` (whichever is
installed), allow-lists the data types of mmengine checkpoints for
``torch.load(weights_only=True)`` (see :mod:`nat_mm.mm.serialization`) and makes mmengine's
``CheckpointLoader`` load local files (:mod:`nat_mm.mm.checkpoint_io`), URLs and its other remote
schemes (:mod:`nat_mm.mm.remote_checkpoint`) through one loader with ``weights_only=True`` and
clear errors.
"""
from .checkpoint import (convert_checkpoint_file, convert_state_dict, detect_format,
                         extract_state_dict, infer_nat_kwargs, interpolate_rpb, load_pretrained)
from .checkpoint_io import (CheckpointError, CheckpointFetchError, CheckpointMismatchError,
                            CheckpointNotFoundError, UnreadableCheckpointError,
                            UnsafeCheckpointError, load_checkpoint_file, register_local_scheme)
from .cli import UserInputError
from .mask2former_checkpoint import convert_d2_mask2former, convert_d2_mask2former_file
from .registry import NAT, DiNAT, register_backbones
from .remote_checkpoint import register_remote_schemes
from .serialization import register_safe_globals, register_safe_pickling, safe_globals

register_safe_globals()
register_local_scheme()
register_remote_schemes()
registered_in = register_backbones()

__all__ = [
    'NAT', 'DiNAT', 'register_backbones', 'registered_in', 'register_safe_globals',
    'register_safe_pickling', 'safe_globals', 'register_local_scheme', 'register_remote_schemes',
    'load_checkpoint_file', 'UserInputError', 'CheckpointError', 'CheckpointNotFoundError',
    'UnsafeCheckpointError', 'UnreadableCheckpointError', 'CheckpointFetchError',
    'CheckpointMismatchError',
    'convert_state_dict', 'convert_checkpoint_file', 'detect_format', 'extract_state_dict',
    'infer_nat_kwargs', 'load_pretrained', 'interpolate_rpb', 'convert_d2_mask2former',
    'convert_d2_mask2former_file'
]
