"""What the tests (tests/) and tools/gpu share: oracles, check cases, the CUDA emulator and the
helpers that run tools. Importing this package loads the torch-only oracle; the other modules are
imported by name.

Torch only (tools/gpu uses them on a machine without OpenMMLab):

- :mod:`nat_mm.testing.na_reference`: the float64 neighborhood-attention oracle.
- :mod:`nat_mm.testing.op_cases`: the dispatcher ops on small maps against the oracle (what
  tools/gpu/sanitize_cases.py runs under compute-sanitizer).
- :mod:`nat_mm.testing.cuda_emu`: the real ``csrc/cuda/*.cu`` built for the host against a CUDA
  emulation header (``build.load()``), so the kernels run on a CPU.

For the OpenMMLab side (they import mmengine):

- :mod:`nat_mm.testing.tools`: run tools/ (ours, mmdet's and mmseg's) as subprocesses or in
  process, and the tiny demo-layout dataset they run on.
- :mod:`nat_mm.testing.fork_runner`: many tool command lines, each in a forked process that paid
  the imports once (``python -m nat_mm.testing.fork_runner``).
- :mod:`nat_mm.testing.rank_record_hook`: a hook recording each rank's data and weights.
- :mod:`nat_mm.testing.configs`: the released configs as tests build them.
"""
from .na_reference import TOL, axis_windows, reference_av, reference_logits, reference_na2d

__all__ = ['TOL', 'axis_windows', 'reference_logits', 'reference_av', 'reference_na2d']
