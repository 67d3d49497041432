"""NATTEN 0.17's global switches (``natten.context``, re-exported by ``natten``).

NATTEN used them to choose among its kernels (fused or unfused, GEMM or tiled, autotuned, KV
parallel). nat_mm has one implementation per device, deterministic and exact whichever way these
are set, so the switches are recorded and can be read back but change no result. Their presence
matters all the same: the official NAT/DiNAT model files pick ``rel_pos_bias=True`` over
``bias=True`` by testing ``hasattr(natten, "context")``; both work here.
"""
from enum import Enum
from typing import Optional

import torch

__all__ = [
    'MemoryUsagePreference', 'are_deterministic_algorithms_enabled', 'disable_autotuner',
    'disable_gemm_na', 'disable_tf32', 'disable_tiled_na', 'enable_gemm_na', 'enable_tf32',
    'enable_tiled_na', 'get_memory_usage_preference', 'has_bfloat', 'has_cuda', 'has_fna',
    'has_fp32_gemm', 'has_fp64_gemm', 'has_fused_na', 'has_gemm', 'has_half', 'has_tf32_gemm',
    'is_autotuner_enabled', 'is_autotuner_enabled_for_backward',
    'is_autotuner_enabled_for_forward', 'is_autotuner_thorough_for_backward',
    'is_autotuner_thorough_for_forward', 'is_fna_enabled', 'is_fused_na_enabled',
    'is_gemm_na_enabled', 'is_kv_parallelism_in_fused_na_enabled', 'is_memory_usage_default',
    'is_memory_usage_strict', 'is_memory_usage_unrestricted', 'is_tf32_in_gemm_na_enabled',
    'is_tiled_na_enabled', 'set_memory_usage_preference', 'use_autotuner',
    'use_deterministic_algorithms', 'use_fna', 'use_fused_na', 'use_gemm_na',
    'use_kv_parallelism_in_fused_na', 'use_tf32_in_gemm_na', 'use_tiled_na'
]


class MemoryUsagePreference(Enum):
    Default = 0
    Strict = 1
    Unrestricted = 2


# The recorded switches, with NATTEN 0.17's defaults.
_state = dict(deterministic=False, fused=False, kv_parallel=False, memory='default',
              autotune_forward=False, autotune_backward=False, thorough_forward=False,
              thorough_backward=False, tiled=True, gemm=True, tf32=True)

# Availability: nat_mm runs every op on the CPU and on CUDA; it has no GEMM-based NA kernels.


def has_cuda() -> bool:
    return torch.cuda.is_available()


def has_half(device_index: Optional[int] = None) -> bool:
    return has_cuda()


def has_bfloat(device_index: Optional[int] = None) -> bool:
    return has_cuda() and torch.cuda.get_device_capability(device_index)[0] >= 8


def has_fna(device_index: Optional[int] = None) -> bool:
    return has_cuda()


has_fused_na = has_fna


def has_gemm(device_index: Optional[int] = None) -> bool:
    return False


has_tf32_gemm = has_fp32_gemm = has_fp64_gemm = has_gemm

# Switches: recorded, read back, no effect on results.


def use_deterministic_algorithms(mode: bool = True) -> None:
    _state['deterministic'] = bool(mode)


def are_deterministic_algorithms_enabled() -> bool:
    return _state['deterministic']


def use_kv_parallelism_in_fused_na(mode: bool = True) -> None:
    _state['kv_parallel'] = bool(mode)


def is_kv_parallelism_in_fused_na_enabled() -> bool:
    return _state['kv_parallel']


def use_fused_na(mode: bool = True, kv_parallel: bool = True) -> None:
    _state['fused'] = bool(mode)
    use_kv_parallelism_in_fused_na(bool(mode) and kv_parallel)


def is_fused_na_enabled() -> bool:
    return _state['fused']


use_fna = use_fused_na
is_fna_enabled = is_fused_na_enabled


def set_memory_usage_preference(pref: str = 'default') -> None:
    if pref not in ('default', 'strict', 'unrestricted'):
        raise ValueError('natten.set_memory_usage_preference allows only one of three settings: '
                         f"'default', 'strict' and 'unrestricted', got {pref!r}")
    _state['memory'] = pref


def get_memory_usage_preference() -> MemoryUsagePreference:
    return MemoryUsagePreference[_state['memory'].capitalize()]


def is_memory_usage_default() -> bool:
    return _state['memory'] == 'default'


def is_memory_usage_strict() -> bool:
    return _state['memory'] == 'strict'


def is_memory_usage_unrestricted() -> bool:
    return _state['memory'] == 'unrestricted'


def use_autotuner(forward_pass: Optional[bool] = None, backward_pass: Optional[bool] = None,
                  thorough_mode_forward: Optional[bool] = None,
                  thorough_mode_backward: Optional[bool] = None, **steps) -> None:
    """Record NATTEN's autotuner switches (its warm-up/step counts are accepted and ignored)."""
    for key, value in (('autotune_forward', forward_pass), ('autotune_backward', backward_pass),
                       ('thorough_forward', thorough_mode_forward),
                       ('thorough_backward', thorough_mode_backward)):
        if value is not None:
            _state[key] = bool(value)


def disable_autotuner() -> None:
    _state['autotune_forward'] = _state['autotune_backward'] = False


def is_autotuner_enabled() -> bool:
    return _state['autotune_forward'] or _state['autotune_backward']


def is_autotuner_enabled_for_forward() -> bool:
    return _state['autotune_forward']


def is_autotuner_enabled_for_backward() -> bool:
    return _state['autotune_backward']


def is_autotuner_thorough_for_forward() -> bool:
    return _state['thorough_forward']


def is_autotuner_thorough_for_backward() -> bool:
    return _state['thorough_backward']


def use_tiled_na(mode: bool = True) -> None:
    _state['tiled'] = bool(mode)


def is_tiled_na_enabled() -> bool:
    return _state['tiled']


def use_gemm_na(mode: bool = True) -> None:
    _state['gemm'] = bool(mode)


def is_gemm_na_enabled() -> bool:
    return _state['gemm']


def use_tf32_in_gemm_na(mode: bool = True) -> None:
    _state['tf32'] = bool(mode)


def is_tf32_in_gemm_na_enabled() -> bool:
    return _state['tf32']


# NATTEN 0.15's names for the same switches (the tf32 ones returned False without TF32 GEMM).


def enable_tf32() -> bool:
    use_tf32_in_gemm_na(True)
    return has_tf32_gemm()


def disable_tf32() -> bool:
    use_tf32_in_gemm_na(False)
    return has_tf32_gemm()


def enable_gemm_na() -> None:
    use_gemm_na(True)


def disable_gemm_na() -> None:
    use_gemm_na(False)


def enable_tiled_na() -> None:
    use_tiled_na(True)


def disable_tiled_na() -> None:
    use_tiled_na(False)
