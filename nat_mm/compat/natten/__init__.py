"""NATTEN 0.14-0.17's public API on nat_mm's kernels.

Code written for NATTEN 0.14-0.17 (the official NAT/DiNAT model files, Hugging Face transformers'
Nat/Dinat, downstream projects) imports ``natten``, ``natten.functional`` and the
``NeighborhoodAttention1D/2D`` modules; NATTEN 0.20 removed most of that API (the unfused ops,
the relative positional bias, the CPU kernels). This package offers it again, with each
version's signatures, defaults and tensor layouts, running on ``nat_mm.ops``. Use it directly
(``from nat_mm.compat import natten``) or make ``import natten`` find it with
:func:`nat_mm.compat.install_natten` (see docs/natten_compat.md).

``__version__`` is ``'0.17.4+nat_mm'``: 0.17.4 is the last NATTEN release with every name offered
here (the 0.14 ops were still there, deprecated, in 0.17.4; 0.17.5 removed them), and the local
part says whose kernels run. 3-D attention, causal masks, additional keys/values and nested
tensors raise ``NotImplementedError``.
"""
from . import context, flops, functional, types, utils
from ._checks import NattenArgumentError
from .context import (MemoryUsagePreference, are_deterministic_algorithms_enabled,
                      disable_autotuner, disable_gemm_na, disable_tf32, disable_tiled_na,
                      enable_gemm_na, enable_tf32, enable_tiled_na, get_memory_usage_preference,
                      has_bfloat, has_cuda, has_fna, has_fp32_gemm, has_fp64_gemm, has_fused_na,
                      has_gemm, has_half, has_tf32_gemm, is_autotuner_enabled,
                      is_autotuner_enabled_for_backward, is_autotuner_enabled_for_forward,
                      is_autotuner_thorough_for_backward, is_autotuner_thorough_for_forward,
                      is_fna_enabled, is_fused_na_enabled, is_gemm_na_enabled,
                      is_kv_parallelism_in_fused_na_enabled, is_memory_usage_default,
                      is_memory_usage_strict, is_memory_usage_unrestricted,
                      is_tf32_in_gemm_na_enabled, is_tiled_na_enabled, set_memory_usage_preference,
                      use_autotuner, use_deterministic_algorithms, use_fna, use_fused_na,
                      use_gemm_na, use_kv_parallelism_in_fused_na, use_tf32_in_gemm_na,
                      use_tiled_na)
from .modules import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D

__version__ = '0.17.4+nat_mm'

__all__ = ['NeighborhoodAttention1D', 'NeighborhoodAttention2D', 'NeighborhoodAttention3D',
           'NattenArgumentError', 'context', 'flops', 'functional', 'types', 'utils'
           ] + list(context.__all__)
