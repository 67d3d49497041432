"""Benchmark and analysis helpers of the tools: no OpenMMLab import (torch, and timm through
nat_mm.models), so they run on a GPU machine that has torch and timm alone.

- :mod:`nat_mm.utils.benchmark`: peak memory, interleaved timing, NAT-Tiny's layer shapes.
- :mod:`nat_mm.utils.na_benchmark`: tools/benchmark_op.py's backends and per-layer timing.
- :mod:`nat_mm.utils.backbone_benchmark`: tools/benchmark_backbone.py's NAT-Tiny vs Swin-T runs.
- :mod:`nat_mm.utils.speed_model`: tools/na_speed_model.py's bytes/FLOPs model of the kernels.
- :mod:`nat_mm.utils.plots`: the benchmark charts (matplotlib).
- :mod:`nat_mm.utils.gpu_report`: tools/gpu/check.sh's summary (standard library only).
"""
from .benchmark import (Layer, PeakMemory, Stopwatch, device_name, environment, interleaved,
                        nat_tiny_layers, timing_stats)

__all__ = ['PeakMemory', 'Stopwatch', 'interleaved', 'timing_stats', 'environment',
           'device_name', 'Layer', 'nat_tiny_layers']
