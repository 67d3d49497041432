"""The OpenMMLab layer of nat_mm: the only package that imports mmengine, mmdet or mmseg.

``import nat_mm`` (hence ``custom_imports=dict(imports=['nat_mm'])`` in a config) imports this
package, which registers:

- the backbones ``NAT``, ``DiNAT`` and ``DiNAT_s`` (:mod:`nat_mm.mm.registry`) in
  ``mmdet.registry.MODELS`` and ``mmseg.registry.MODELS``, whichever of the two is installed
  (scopes ``mmdet`` and ``mmseg``; not in mmengine's root ``MODELS``, which builds no detector or
  segmentor): ``type='NAT'`` in an mmdet- or mmseg-scoped config;
- the hook ``LegacyCheckpointHook`` (:mod:`nat_mm.mm.legacy_checkpoint`: converts mmcv 1.x
  checkpoints, e.g. the official NAT/DiNAT COCO and ADE20K ones, when the Runner loads them) in
  mmengine's root ``mmengine.registry.HOOKS``. The Runner builds ``custom_hooks`` there, switched
  to its ``default_scope``: ``mmdet.registry.HOOKS`` and ``mmseg.registry.HOOKS`` are children of
  the root and look names up in it too, so ``custom_hooks=[dict(type='LegacyCheckpointHook')]``
  works in mmdet-, mmseg- and mmengine-scoped configs (mmdet's and mmseg's own tools/test.py
  included);
- with mmengine's ``CheckpointLoader``, a loader for local files (:mod:`nat_mm.mm.checkpoint_io`)
  and for URLs and its other remote schemes (:mod:`nat_mm.mm.remote_checkpoint`): one loader with
  ``weights_only=True`` and clear errors;
- with ``torch.serialization``, the data types of mmengine checkpoints as safe globals for
  ``torch.load(weights_only=True)``, and a safe pickling of mmengine's ``HistoryBuffer``
  (:mod:`nat_mm.mm.serialization`).

Nothing else is registered (no transforms, datasets, metrics or visualizers). The test-only
``RankRecordHook`` is registered in mmengine's ``HOOKS`` only by importing
``nat_mm.testing.rank_record_hook`` itself.
"""
from .checkpoint import (convert_checkpoint_file, convert_state_dict, detect_format,
                         extract_state_dict, infer_nat_kwargs, interpolate_rpb, load_pretrained)
from .checkpoint_io import (CheckpointError, CheckpointFetchError, CheckpointMismatchError,
                            CheckpointNotFoundError, UnreadableCheckpointError,
                            UnsafeCheckpointError, load_checkpoint_file, register_local_scheme)
from .cli import UserInputError
from .legacy_checkpoint import LegacyCheckpointHook
from .mask2former_checkpoint import convert_d2_mask2former, convert_d2_mask2former_file
from .registry import NAT, DiNAT, DiNAT_s, register_backbones
from .remote_checkpoint import register_remote_schemes
from .serialization import register_safe_globals, register_safe_pickling, safe_globals

register_safe_globals()
register_local_scheme()
register_remote_schemes()
registered_in = register_backbones()

__all__ = [
    'NAT', 'DiNAT', 'DiNAT_s', 'register_backbones', 'registered_in', 'LegacyCheckpointHook',
    'register_safe_globals', 'register_safe_pickling', 'safe_globals', 'register_local_scheme',
    'register_remote_schemes',
    'load_checkpoint_file', 'UserInputError', 'CheckpointError', 'CheckpointNotFoundError',
    'UnsafeCheckpointError', 'UnreadableCheckpointError', 'CheckpointFetchError',
    'CheckpointMismatchError',
    'convert_state_dict', 'convert_checkpoint_file', 'detect_format', 'extract_state_dict',
    'infer_nat_kwargs', 'load_pretrained', 'interpolate_rpb', 'convert_d2_mask2former',
    'convert_d2_mask2former_file'
]
