"""Make mmengine Runner checkpoints loadable under ``torch.load(weights_only=True)``.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``: it unpickles only tensors,
primitive containers and the globals on an allow-list. mmengine 0.10 calls ``torch.load``
without ``weights_only`` (``CheckpointLoader``: ``Runner.load_checkpoint``, ``--resume``,
``load_from``, mmdet's and mmseg's ``tools/test.py``), and the checkpoints its
``CheckpointHook`` writes hold, besides tensors, the ``message_hub`` state: mmengine
``HistoryBuffer`` objects whose histories are numpy arrays, and numpy scalars in the logged
runtime info. Those fail to load with "Weights only load failed ... Unsupported global".

``HistoryBuffer.__getstate__`` also stores its ``statistics_methods``: the functions
``HistoryBuffer.min/max/current/mean``, which pickle (protocol 2, torch's default) writes as
``getattr(HistoryBuffer, 'min')``. Loading those needs ``builtins.getattr``, which we must not
allow-list. Two measures, both taken when ``nat_mm`` is imported (so any config with
``custom_imports=dict(imports=['nat_mm'])`` gets them, in our tools and in mmdet's/mmseg's
``tools/train.py`` and ``tools/test.py``):

1. Make what gets saved safe: a ``copyreg`` reducer for ``HistoryBuffer`` pickles it as
   ``HistoryBuffer.__new__`` plus its data (``_log_history``, ``_count_history``,
   ``max_length``), without the functions. mmengine's own ``HistoryBuffer.__setstate__``
   already accepts such a state and restores the default statistics methods, so resuming and
   logging work as before, and mmengine itself is not modified.
2. Allow-list exactly the remaining data types with ``torch.serialization.add_safe_globals``:

- ``mmengine.logging.HistoryBuffer``: a plain container; unpickling only restores its
  ``__dict__`` (two numpy arrays and an int);
- ``numpy.ndarray``, ``numpy.dtype`` and the concrete dtype classes
  (``numpy.dtypes.Float64DType`` ...), plus numpy's array and scalar reconstructors
  ``numpy.core.multiarray._reconstruct`` and ``numpy.core.multiarray.scalar``: they build an
  array or scalar from a dtype, a shape and raw bytes, and run no user code.

``weights_only`` is never switched off and no callable that can reach arbitrary code
(``getattr``, ``eval``, ``builtins.*``, ``functools.partial`` ...) is allow-listed: a
checkpoint holding any other global still fails to load. Consequence: a checkpoint written by a
process that had *not* imported nat_mm (a plain mmdet config) keeps its ``getattr`` entries and
still needs ``weights_only=False`` from whoever trusts it; every run with our configs writes
loadable ones.
"""
import copyreg
from typing import List

import numpy as np
import torch

__all__ = ['register_safe_globals', 'safe_globals', 'register_safe_pickling']


def _reduce_history_buffer(buffer):
    """Pickle a HistoryBuffer as ``__new__`` + data, leaving out ``statistics_methods``."""
    state = {k: v for k, v in vars(buffer).items() if k != 'statistics_methods'}
    return copyreg.__newobj__, (type(buffer),), state


def register_safe_pickling() -> None:
    """Make ``torch.save`` write HistoryBuffers without function references (idempotent)."""
    from mmengine.logging import HistoryBuffer

    copyreg.pickle(HistoryBuffer, _reduce_history_buffer)


def safe_globals() -> List:
    """Return the exact globals allow-listed by :func:`register_safe_globals`."""
    from mmengine.logging import HistoryBuffer

    if int(np.__version__.split('.')[0]) >= 2:
        from numpy._core import multiarray
    else:
        from numpy.core import multiarray
    entries = [HistoryBuffer, np.ndarray, np.dtype]
    # Checkpoints written with numpy 1.x name numpy.core.*, numpy 2.x numpy._core.*; the
    # (object, name) form allow-lists the same object under both names.
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        entries.append((multiarray._reconstruct, f'{module}._reconstruct'))
        entries.append((multiarray.scalar, f'{module}.scalar'))
    # Concrete dtype classes (numpy >= 1.25), e.g. numpy.dtypes.Float64DType; object and
    # string/void dtypes are left out.
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        for char in '?bBhHiIlLqQefdgFDG':
            entries.append(type(np.dtype(char)))
    return entries


def register_safe_globals() -> None:
    """Allow-list :func:`safe_globals` for ``torch.load(weights_only=True)`` and register the
    safe pickling of HistoryBuffer (idempotent)."""
    register_safe_pickling()
    torch.serialization.add_safe_globals(safe_globals())
