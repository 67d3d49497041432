"""The Triton backend of the fused ``na2d``: launchers, tile configs and the ``nat_mm::`` ops.

The kernels (``_triton_kernels.py``) are imported on first use, so CPU-only installs never import
triton. ``na2d_triton_forward`` / ``na2d_triton_backward`` are ``torch.library`` custom ops with
fake kernels and autograd, so ``torch.compile(fullgraph=True)`` keeps the op as one node; they need
no compiled nat_mm extension. On a GPU the kernels run compiled (tensor cores for float16 and
bfloat16); with ``TRITON_INTERPRET=1`` set before the first use they run in Triton's interpreter,
also on CPU tensors (that is how the tests check them on a machine without a GPU).
"""
import functools
import math
from typing import List, NamedTuple, Optional, Tuple

import torch

from ._library import register_fused_autograd

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class TileConfig(NamedTuple):
    """A program's tile (``ty x tx`` queries, or keys in dK/dV) and the chunk (``kr x kc``) of
    the other side it walks per step, plus Triton's launch settings."""
    ty: int
    tx: int
    kr: int
    kc: int
    num_warps: int = 4
    num_stages: int = 2


# Candidates for the autotuner (chosen once per head dim, kernel, dilation, rpb and dtype). The
# 8x8 tile's 7x7 halo is 14x14 keys, walked as 4x16 chunks (16 columns: little padding); 16x8
# and 8x16 tiles waste less of the halo per query at larger kernels, with 8 warps to hold their
# blocks. Compiled here for sm_90 and sm_80 (tools/gpu/triton_report.py): at NAT's head dim 32
# none of the three kernels spills registers in these configs except the 8x16 dQ (92 bytes at
# sm_90); not timed on a GPU yet.
CONFIGS = (TileConfig(8, 8, 4, 16), TileConfig(16, 8, 4, 16, num_warps=8),
           TileConfig(8, 16, 2, 32, num_warps=8))
# What the interpreter runs when no config is given (the autotuner would time every candidate).
DEFAULT_CONFIG = CONFIGS[0]


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> Optional[str]:
    try:
        import triton  # noqa: F401
    except Exception as error:  # noqa: BLE001 - a broken triton install counts as none
        return f'triton does not import ({type(error).__name__}: {error})'
    return None


def unavailable_reason(dtype: torch.dtype, device: torch.device) -> Optional[str]:
    """Why the Triton kernels cannot run on ``device`` for ``dtype``, or None when they can."""
    if dtype not in _DTYPES:
        return f'they support float16, bfloat16 and float32, not {dtype}'
    error = _triton_import_error()
    if error is not None:
        return error
    if device.type == 'cuda':
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            return (f'they need a GPU of compute capability 8.0 or newer (tensor-core tl.dot '
                    f'in float16/bfloat16), {torch.cuda.get_device_name(device)} is {major}.{minor}')
        return None
    if device.type == 'cpu' and _interpreting():
        return None
    return f'Triton runs on CUDA devices (or on the CPU under TRITON_INTERPRET=1), not {device}'


def _interpreting() -> bool:
    """Whether the kernels were defined for Triton's interpreter (``TRITON_INTERPRET=1`` when
    this process first imported them)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_kernels()['module'].na2d_fwd_kernel, InterpretedFunction)


@functools.lru_cache(maxsize=None)
def _kernels():
    """The kernel module and its autotuned wrappers (built on first use)."""
    import triton

    from . import _triton_kernels as kernels

    def autotuned(kernel, **options):
        tuned = [triton.Config(dict(TY=c.ty, TX=c.tx, KR=c.kr, KC=c.kc), num_warps=c.num_warps,
                               num_stages=c.num_stages) for c in CONFIGS]
        # Not keyed on H or W: detection batches change size every step.
        return triton.autotune(tuned, key=['D', 'KH', 'KW', 'DH', 'DW', 'HAS_RPB'],
                               **options)(kernel)

    # The drpb slots a config leaves unwritten (fewer, larger tiles) must read zero: without
    # the reset, those of a config timed before would stay in the sum.
    return dict(module=kernels, fwd=autotuned(kernels.na2d_fwd_kernel),
                dq=autotuned(kernels.na2d_bwd_dq_kernel, reset_to_zero=['drpb_ptr']),
                dkv=autotuned(kernels.na2d_bwd_dkv_kernel))


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _strides(t: torch.Tensor) -> Tuple[int, int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _tiles(H: int, W: int, dilation: Tuple[int, int], ty: int, tx: int) -> int:
    """Tiles of the largest residue group (the grid's first axis)."""
    return math.ceil(math.ceil(H / dilation[0]) / ty) * math.ceil(math.ceil(W / dilation[1]) / tx)


def _launch(name: str, config: Optional[TileConfig], grid_args, *args, **meta):
    """Launch a kernel: autotuned on a GPU, with ``config`` (else the default) when given or
    when interpreting."""
    kernels = _kernels()
    H, W, dilation, groups, bh = grid_args
    if config is None and _interpreting():
        config = DEFAULT_CONFIG
    if config is None:
        def grid(m):
            return _tiles(H, W, dilation, m['TY'], m['TX']), groups, bh

        kernels[name][grid](*args, **meta)
        return
    kernel = getattr(kernels['module'], {'fwd': 'na2d_fwd_kernel', 'dq': 'na2d_bwd_dq_kernel',
                                         'dkv': 'na2d_bwd_dkv_kernel'}[name])
    grid = (_tiles(H, W, dilation, config.ty, config.tx), groups, bh)
    kernel[grid](*args, **meta, TY=config.ty, TX=config.tx, KR=config.kr, KC=config.kc,
                 num_warps=config.num_warps, num_stages=config.num_stages)


def _rpb_bins(k: int) -> int:
    """The rpb table's ``2k - 1`` bins on an axis, padded for ``tl.dot`` (a power of 2, >= 16)."""
    return max(16, _next_pow2(2 * k - 1))


def _common_meta(q: torch.Tensor, rpb: Optional[torch.Tensor], kernel_size, dilation) -> dict:
    return dict(KH=kernel_size[0], KW=kernel_size[1], DH=dilation[0], DW=dilation[1],
                HAS_RPB=rpb is not None, BD=max(16, _next_pow2(q.shape[4])),
                PRECISION='ieee' if q.dtype == torch.float32 else 'tf32',
                RPB_W=_rpb_bins(kernel_size[1]))


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: Optional[torch.Tensor],
            kernel_size: Tuple[int, int], dilation: Tuple[int, int], scale: float,
            config: Optional[TileConfig] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` of the fused forward; inputs as ``nat_mm::na2d_forward`` takes them.

    Args:
        config (TileConfig, optional): run this tile config instead of the autotuner's choice.
    """
    q, k, v = (_unit_last_stride(t) for t in (q, k, v))
    B, H, W, heads, D = q.shape
    out = q.new_empty(q.shape)
    lse = q.new_empty((B, H, W, heads), dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    rpb_arg = rpb.contiguous() if rpb is not None else q  # an unused pointer without rpb
    groups = dilation[0] * dilation[1]
    _launch('fwd', config, (H, W, dilation, groups, B * heads),
            q, k, v, rpb_arg, out, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(out),
            H, W, heads, D, scale, **_common_meta(q, rpb, kernel_size, dilation))
    return out, lse


def backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             rpb: Optional[torch.Tensor], out: torch.Tensor, lse: torch.Tensor,
             kernel_size: Tuple[int, int], dilation: Tuple[int, int], scale: float,
             config: Optional[TileConfig] = None):
    """``(dq, dk, dv, drpb)``; drpb is an empty tensor without rpb. Deterministic.

    Args:
        config (TileConfig, optional): run this tile config instead of the autotuner's choice.
    """
    q, k, v = (_unit_last_stride(t) for t in (q, k, v))
    grad_out = grad_out.contiguous()
    B, H, W, heads, D = q.shape
    dq, dk, dv = (q.new_empty(q.shape) for _ in range(3))
    rh, rw = 2 * kernel_size[0] - 1, 2 * kernel_size[1] - 1
    if q.numel() == 0:
        drpb = q.new_zeros((heads, rh, rw)) if rpb is not None else q.new_empty((0,))
        return dq.zero_(), dk.zero_(), dv.zero_(), drpb
    # delta = rowsum(dO * O), the softmax backward's per-query term
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()
    lse = lse.contiguous()
    meta = _common_meta(q, rpb, kernel_size, dilation)
    groups = dilation[0] * dilation[1]
    grid_args = (H, W, dilation, groups, B * heads)
    rpb_arg = rpb.contiguous() if rpb is not None else q
    # drpb: one padded [RPB_H, RPB_W] table per dQ program, in slots of the largest grid any
    # config launches (unused slots stay zero), summed below in a fixed order.
    rpb_h, rpb_w = _rpb_bins(kernel_size[0]), meta['RPB_W']
    configs = CONFIGS if config is None else (config,)
    slots = max(_tiles(H, W, dilation, c.ty, c.tx) for c in configs + (DEFAULT_CONFIG,))
    if rpb is not None:
        partial = torch.zeros((B * heads, groups, slots, rpb_h, rpb_w), dtype=torch.float32,
                              device=q.device)
    else:
        partial = q.new_zeros((1,), dtype=torch.float32)  # unused, but the autotuner zeroes it
    strides = (*_strides(q), *_strides(k), *_strides(v))
    _launch('dq', config, grid_args, q, k, v, rpb_arg, grad_out, lse, delta, dq, partial,
            *strides, H, W, heads, D, scale, slots, RPB_H=rpb_h, **meta)
    _launch('dkv', config, grid_args, q, k, v, rpb_arg, grad_out, lse, delta, dk, dv,
            *strides, H, W, heads, D, scale, **meta)
    if rpb is None:
        return dq, dk, dv, q.new_empty((0,))
    drpb = partial.view(B, heads, groups * slots, rpb_h, rpb_w).sum((0, 2))[:, :rh, :rw]
    return dq, dk, dv, drpb.to(rpb.dtype)


# ------------------------------------------------------------------------------------------------
# The dispatcher ops: one node each under torch.compile, autograd through the backward op.

@torch.library.custom_op('nat_mm::na2d_triton_forward', mutates_args=())
def na2d_triton_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        rpb: Optional[torch.Tensor], kernel_size: List[int], dilation: List[int],
                        scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The Triton fused forward as an op: ``(out [B, H, W, heads, D], lse [B, H, W, heads])``."""
    return forward(q, k, v, rpb, tuple(kernel_size), tuple(dilation), scale)


@na2d_triton_forward.register_fake
def _(q, k, v, rpb, kernel_size, dilation, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:4], dtype=torch.float32)


@torch.library.custom_op('nat_mm::na2d_triton_backward', mutates_args=())
def na2d_triton_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                         v: torch.Tensor, rpb: Optional[torch.Tensor], out: torch.Tensor,
                         lse: torch.Tensor, kernel_size: List[int], dilation: List[int],
                         scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                torch.Tensor]:
    """The Triton backward as an op: ``(dq, dk, dv, drpb)`` (drpb empty without rpb)."""
    return backward(grad_out, q, k, v, rpb, out, lse, tuple(kernel_size), tuple(dilation), scale)


@na2d_triton_backward.register_fake
def _(grad_out, q, k, v, rpb, out, lse, kernel_size, dilation, scale):
    drpb = (q.new_empty((q.shape[3], 2 * kernel_size[0] - 1, 2 * kernel_size[1] - 1))
            if rpb is not None else q.new_empty((0,)))
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape), drpb


register_fused_autograd('nat_mm::na2d_triton_forward', torch.ops.nat_mm.na2d_triton_backward)


def na2d(q, k, v, kernel_size, dilation, rpb, scale) -> torch.Tensor:
    """Fused NA through the Triton ops (arguments already checked by ``nat_mm.ops.na2d``)."""
    out, _ = torch.ops.nat_mm.na2d_triton_forward(q, k, v, rpb, list(kernel_size),
                                                  list(dilation), scale)
    return out


# ------------------------------------------------------------------------------------------------
# Compiling for a GPU without one: Triton's own compiler, to PTX and cubin (no driver needed).

_KERNEL_NAMES = {'fwd': 'na2d_fwd_kernel', 'dq': 'na2d_bwd_dq_kernel', 'dkv': 'na2d_bwd_dkv_kernel'}
_TRITON_DTYPES = {torch.float16: 'fp16', torch.bfloat16: 'bf16', torch.float32: 'fp32'}


def compile_for_gpu(name: str, arch: int, dtype: torch.dtype, config: TileConfig = DEFAULT_CONFIG,
                    head_dim: int = 32, kernel_size: Tuple[int, int] = (7, 7),
                    dilation: Tuple[int, int] = (1, 1), has_rpb: bool = True):
    """Compile kernel ``name`` (``'fwd'``, ``'dq'`` or ``'dkv'``) for CUDA compute capability
    ``arch`` (e.g. 90) with the constants a launch would use; returns Triton's CompiledKernel
    (``.asm['ptx']``, ``.metadata.shared``). Works on a machine without a GPU; the process must
    not have defined the kernels for the interpreter (TRITON_INTERPRET unset)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if _interpreting():
        raise RuntimeError('compile_for_gpu: the kernels were defined for the interpreter '
                           '(TRITON_INTERPRET=1 in this process)')
    kernel = getattr(_kernels()['module'], _KERNEL_NAMES[name])
    probe = torch.empty(0, 1, 1, 1, head_dim, dtype=dtype)
    constants = dict(_common_meta(probe, probe if has_rpb else None, kernel_size, dilation),
                     TY=config.ty, TX=config.tx, KR=config.kr, KC=config.kc)
    if name == 'dq':
        constants['RPB_H'] = _rpb_bins(kernel_size[0])
    element = _TRITON_DTYPES[dtype]

    def arg_type(arg: str) -> str:
        if arg in constants:
            return 'constexpr'
        if arg.endswith('_ptr'):
            return '*fp32' if arg in ('lse_ptr', 'delta_ptr', 'drpb_ptr') else '*' + element
        return 'fp32' if arg == 'scale' else 'i32'

    source = ASTSource(fn=kernel, signature={a: arg_type(a) for a in kernel.arg_names},
                       constexprs=constants)
    return triton.compile(source, target=GPUTarget('cuda', arch, 32),
                          options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
