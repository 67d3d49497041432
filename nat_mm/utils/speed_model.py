"""A model (not a measurement) of the CUDA kernels' speed on NAT-Tiny's layers.

For each layer it counts, from the code of csrc/cuda/na2d_cuda.cu (reference kernels) and
csrc/cuda/na2d_tiled.cu (tiled kernels), the global-memory bytes each kernel requests and the
floating-point operations it does, and turns them into a time on an H100 SXM: the larger of
bytes / 3.35 TB/s and FLOPs / 67 TFLOP/s. Both kernels do their arithmetic on the CUDA cores in
float32 for every input dtype (float16 and bfloat16 inputs too), so the float32 (non-tensor) peak
is the one that bounds them; the 989 TFLOP/s bf16 tensor-core peak is what a kernel on the tensor
cores could reach, and is printed for reference only.

What is counted, per kernel (N queries = H * W * heads, B = 1, kk = kh * kw, E bytes per input
element, A = 4 bytes per float32 accumulator):
- reference forward: every (query, slot) thread reads its q and k rows and one rpb value; every
  (query, d) thread reads kk values of V; writes out and lse. Requested bytes: caches would serve
  much of it, so this is an upper bound; the "unique" column is the compulsory traffic (each
  tensor once), the lower bound.
- reference backward: the per-query pass (q.k, dO.v, lse per slot; P and dS written as float32;
  dQ from kk rows of K), the two inverse-neighbourhood passes (dK, dV: kk (weight, row) pairs per
  element), and the drpb row partials.
- tiled forward: per 8 x 8 tile, the staged K and V rows (the tile plus its halo, exactly as
  staged_extent() clips them at the borders) and the rpb; q read and out, lse written per query.
- tiled backward: Delta = dO.O; the dQ pass (staged K, V; q, dO, lse, Delta per query; dq and
  per-tile drpb partials written); the dK/dV pass (staged Q, dO, lse, Delta of the inverse
  neighbourhood; k, v per key; dk, dv written); the drpb reduction.
FLOPs count a multiply-add as 2 (q.k, p.v, dO.v, dS.K, P.dO, dS.Q: 2 D each per (query, key)
pair); exponentials and the softmax bookkeeping are left out (about kk per query).

Triton kernels (nat_mm/ops/_triton_kernels.py, ``--triton``): per program a TY x TX tile of
queries (dK/dV: of keys) walking the halo (inverse neighbourhood) in KR x KC chunks; every chunk
is a full ``tl.dot`` on the tensor cores, masked pairs included (the halo's waste), and one exp2
per (query, key) pair of the chunk on the special-function units. Counted per layer:
- bytes requested: forward q, the tile's K/V halo (only the halo's keys are loaded: the chunk
  padding is masked), the in-window rpb entries, out and lse; backward: Delta = dO.O, the dQ pass
  (q, dO, lse, Delta; the K/V halo; dq; a float32 drpb partial per program, read back by the
  reduction) and the dK/dV pass (k, v; the inverse neighbourhood's q, dO, lse, Delta; dk, dv);
- tensor-core FLOPs of every chunk (forward QK^T, PV; dQ: QK^T, dO V^T, dS K and the two drpb
  folds in tf32; dK/dV: K Q^T, P^T dO, V dO^T, dS^T Q), and the useful ones (the 49 pairs);
- exponentials: one per computed pair.
Time = the largest of bytes / 3.35 TB/s, FLOPs / 989 TFLOP/s (bf16/fp16 dense tensor-core peak;
tf32 folds at 494) and exps / 3.9e12/s (H100's special-function throughput, as FlashAttention-3
quotes it). Peaks: a lower bound on time; D = 32 gives K = 32 tl.dots, which run far below peak.

The layer shapes are NAT-Tiny's (:func:`nat_mm.utils.benchmark.nat_tiny_layers`, the backbone's
ceil rounding) and the window and inverse-neighbourhood extents come from the pure-PyTorch
path's window rule (``nat_mm.ops._torch_impl.window_indices`` and ``inverse_window_bounds``).
Printed by tools/na_speed_model.py.
"""

from typing import Dict, List, Tuple

from ..ops._torch_impl import inverse_window_bounds, window_indices
from .benchmark import Layer

__all__ = ['HBM_BYTES_PER_S', 'FP32_FLOPS', 'TENSOR_FLOPS', 'TF32_FLOPS', 'EXP_PER_S',
           'DTYPE_BYTES', 'axis_tiles', 'model', 'triton_model', 'print_table',
           'print_triton_table']

HBM_BYTES_PER_S = 3.35e12   # H100 SXM
FP32_FLOPS = 67e12          # H100 SXM, CUDA cores (FMA = 2 FLOPs)
TENSOR_FLOPS = {'bf16': 989e12, 'fp16': 989e12, 'fp32': 67e12}  # dense; fp32 'ieee' dots: cores
TF32_FLOPS = 494e12
EXP_PER_S = 3.9e12          # H100 SXM special-function units (FlashAttention-3's figure)
DTYPE_BYTES = {'fp16': 2, 'bf16': 2, 'fp32': 4}
ACC = 4
TILE = 8


def axis_tiles(length: int, kernel: int, tile: int = TILE) -> List[Tuple[int, int, int]]:
    """``(first position, staged extent forward/dQ, staged extent dK/dV)`` of every tile of
    ``tile`` positions on an axis of ``length``, d = 1: the span of the tile's windows (from the
    first query's window start to the last's window end) and of its keys' inverse
    neighbourhoods, from the ops' window rule."""
    keys, _ = window_indices(length, kernel, 1, None)
    start = keys[:, 0].tolist()
    first, stop = (t.tolist() for t in inverse_window_bounds(length, kernel, 1))
    tiles = []
    for p0 in range(0, length, tile):
        last = min(p0 + tile, length) - 1
        tiles.append((p0, start[last] + kernel - start[p0], stop[last] - first[p0]))
    return tiles


def model(layer: Layer, dtype: str) -> Dict[str, Dict[str, float]]:
    E, D, k = DTYPE_BYTES[dtype], layer.D, layer.kernel
    kk, bins = k * k, (2 * k - 1) ** 2
    N = layer.H * layer.W * layer.heads
    rows, cols = axis_tiles(layer.H, k), axis_tiles(layer.W, k)
    n_tiles = len(rows) * len(cols) * layer.heads
    staged_fwd = sum(r[1] * c[1] for r in rows for c in cols) * layer.heads
    staged_inv = sum(r[2] * c[2] for r in rows for c in cols) * layer.heads
    out = {}
    out['reference fwd'] = dict(
        read=N * kk * (2 * D + 1) * E + N * D * kk * E,
        write=N * D * E + N * ACC,
        flops=4 * D * kk * N)
    out['reference bwd'] = dict(
        read=(N * kk * ((4 * D + 1) * E + ACC) + N * D * kk * E  # query pass
              + 2 * N * D * kk * (ACC + E)                      # dK, dV passes
              + N * kk * ACC + N * bins * 4),                   # drpb row partials
        write=2 * N * kk * ACC + 3 * N * D * E + layer.H * layer.heads * bins * ACC
        + layer.heads * bins * E,
        flops=10 * D * kk * N)
    out['tiled fwd'] = dict(
        read=2 * staged_fwd * D * E + n_tiles * bins * E + N * D * E,
        write=N * D * E + N * ACC,
        flops=4 * D * kk * N)
    out['tiled bwd'] = dict(
        read=(2 * N * D * E                                              # Delta
              + 2 * staged_fwd * D * E + n_tiles * bins * E + N * (2 * D * E + 2 * ACC)  # dQ
              + n_tiles * bins * ACC                                     # drpb reduction
              + staged_inv * (2 * D * E + 2 * ACC) + n_tiles * bins * E + 2 * N * D * E),  # dK/dV
        write=N * ACC + N * D * E + n_tiles * bins * ACC + layer.heads * bins * E
        + 2 * N * D * E,
        flops=2 * D * N + 14 * D * kk * N)
    unique_fwd = 4 * N * D * E + N * ACC
    unique_bwd = 8 * N * D * E + N * ACC  # q, k, v, out, dO in; dq, dk, dv out; lse
    for name, m in out.items():
        m['unique'] = unique_fwd if name.endswith('fwd') else unique_bwd
        m['t_mem'] = (m['read'] + m['write']) / HBM_BYTES_PER_S
        m['t_flop'] = m['flops'] / FP32_FLOPS
        m['t_model'] = max(m['t_mem'], m['t_flop'])
        m['t_unique'] = m['unique'] / HBM_BYTES_PER_S
    return out


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def triton_model(layer: Layer, dtype: str, ty: int = 8, tx: int = 8, kr: int = 4,
                 kc: int = 16) -> Dict[str, Dict[str, float]]:
    """Bytes, tensor-core FLOPs (computed and useful) and exps of the Triton kernels, d = 1."""
    E, D, k, heads = DTYPE_BYTES[dtype], layer.D, layer.kernel, layer.heads
    kk = k * k
    bd = max(16, 1 << (D - 1).bit_length())
    rpb_h = rpb_w = max(16, 1 << (2 * k - 2).bit_length())
    N = layer.H * layer.W * heads
    bq = ty * tx

    rows = [t[1:] for t in axis_tiles(layer.H, k, ty)]
    cols = [t[1:] for t in axis_tiles(layer.W, k, tx)]
    programs = len(rows) * len(cols) * heads
    halo = sum(r[0] * c[0] for r in rows for c in cols) * heads
    inverse = sum(r[1] * c[1] for r in rows for c in cols) * heads
    fwd_pairs = sum(_ceil(r[0], kr) * _ceil(c[0], kc) for r in rows for c in cols) * heads * \
        bq * kr * kc
    inv_pairs = sum(_ceil(r[1], kr) * _ceil(c[1], kc) for r in rows for c in cols) * heads * \
        bq * kr * kc
    fwd_chunks = fwd_pairs // (bq * kr * kc)
    useful = 4 * D * kk * N
    out = {}
    out['triton fwd'] = dict(
        read=N * D * E + 2 * halo * D * E + N * kk * E,
        write=N * D * E + N * ACC,
        tc_flops=2 * 2 * fwd_pairs * bd, tf32_flops=0, useful=useful, exps=fwd_pairs)
    fold = fwd_chunks * 2 * (ty * kr * tx * kc * rpb_w + rpb_h * ty * kr * rpb_w)
    partial = programs * rpb_h * rpb_w * ACC
    out['triton bwd'] = dict(
        read=(2 * N * D * E                                                       # Delta
              + N * (2 * D * E + 2 * ACC) + 2 * halo * D * E + N * kk * E        # dQ
              + partial                                                           # reduction
              + 2 * N * D * E + inverse * (2 * D * E + 2 * ACC) + N * kk * E),   # dK/dV
        write=N * ACC + N * D * E + partial + heads * (2 * k - 1) ** 2 * E + 2 * N * D * E,
        tc_flops=3 * 2 * fwd_pairs * bd + 4 * 2 * inv_pairs * bd, tf32_flops=fold,
        useful=10 * D * kk * N, exps=fwd_pairs + inv_pairs)
    unique = {'triton fwd': 4 * N * D * E + N * ACC, 'triton bwd': 8 * N * D * E + N * ACC}
    for name, m in out.items():
        m['unique'] = unique[name]
        m['t_mem'] = (m['read'] + m['write']) / HBM_BYTES_PER_S
        m['t_tc'] = m['tc_flops'] / TENSOR_FLOPS[dtype] + m['tf32_flops'] / TF32_FLOPS
        m['t_exp'] = m['exps'] / EXP_PER_S
        m['t_model'] = max(m['t_mem'], m['t_tc'], m['t_exp'])
        m['t_unique'] = m['unique'] / HBM_BYTES_PER_S
    return out


def print_triton_table(layers: List[Layer], dtypes: List[str]) -> None:
    """The Triton kernels' model of every layer and dtype, as a Markdown table."""
    print('| layer | map x heads | dtype | kernel | MB read | MB written | MB unique | '
          'tensor GFLOP computed / useful | Gexp | us bytes | us tensor | us exp | model us | '
          'us unique bytes |')
    print('|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    for layer in layers:
        for dtype in dtypes:
            for name, m in triton_model(layer, dtype).items():
                computed = (m['tc_flops'] + m['tf32_flops']) / 1e9
                print(f'| {layer.name} | {layer.H}x{layer.W} x {layer.heads} | {dtype} | {name} | '
                      f'{m["read"] / 1e6:.1f} | {m["write"] / 1e6:.1f} | {m["unique"] / 1e6:.1f} | '
                      f'{computed:.2f} / {m["useful"] / 1e9:.2f} | {m["exps"] / 1e9:.3f} | '
                      f'{m["t_mem"] * 1e6:.0f} | {m["t_tc"] * 1e6:.1f} | {m["t_exp"] * 1e6:.1f} | '
                      f'{m["t_model"] * 1e6:.0f} | {m["t_unique"] * 1e6:.1f} |')


def print_table(layers: List[Layer], dtypes: List[str]) -> None:
    """The C++/CUDA kernels' model of every layer and dtype, as a Markdown table."""
    print('| layer | map x heads | dtype | kernel | MB read | MB written | MB unique | GFLOP | '
          'us at 3.35 TB/s | us at 67 TFLOP/s | model us | us unique bytes |')
    print('|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|')
    for layer in layers:
        for dtype in dtypes:
            for name, m in model(layer, dtype).items():
                print(f'| {layer.name} | {layer.H}x{layer.W} x {layer.heads} | {dtype} | {name} | '
                      f'{m["read"] / 1e6:.1f} | {m["write"] / 1e6:.1f} | {m["unique"] / 1e6:.1f} | '
                      f'{m["flops"] / 1e9:.2f} | {m["t_mem"] * 1e6:.0f} | '
                      f'{m["t_flop"] * 1e6:.0f} | {m["t_model"] * 1e6:.0f} | '
                      f'{m["t_unique"] * 1e6:.1f} |')

