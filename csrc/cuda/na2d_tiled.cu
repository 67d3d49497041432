// Fused, 2-D-tiled CUDA kernels for na2d_forward / na2d_backward (the fast path; the reference
// kernels in na2d_cuda.cu stay as the fallback and the oracle's twin).
//
// Dilated NA splits each map axis into d residue groups; inside a group it is plain NA with
// kernel k (na2d_index.h, group coordinates). A block owns a tile of TY x TX group positions of one
// (batch, head, row group, column group) and stages what the tile needs in shared memory once:
//   forward:         K and V of the query tile plus its halo ((TY + kh - 1) x (TX + kw - 1)
//                    positions), the head's rpb; each query runs an online softmax over its
//                    kh * kw keys in registers and writes out and lse (log-sum-exp, for the
//                    backward);
//   backward, dQ:    the same K / V tile; recomputes P = exp(logit - lse) and dP = dO . V per key,
//                    dS = P (dP - Delta) with Delta = dO . O (a small kernel before), accumulates
//                    dQ = scale * sum dS K in registers; with rpb, stages dS of the tile and sums it
//                    per rpb bin in a fixed order into per-tile partials;
//   backward, dK/dV: a key tile and the queries of its inverse neighbourhood (Q, dO, lse, Delta;
//                    (TY + 2 kh - 2) x (TX + 2 kw - 2) positions at most), recomputes P and dS per
//                    (query, key) pair: dV = sum P dO, dK = scale * sum dS Q. No atomics anywhere,
//                    so every gradient is deterministic; drpb sums the per-tile partials in order.
// G consecutive lanes share a query (or key), C = D / G head-dim elements each, and reduce their
// partial dot products with __shfl_xor_sync over their own G lanes. Shared memory rows are padded
// to an odd number of 4-byte words so that lanes reading the same element of neighbouring
// positions hit different banks. Accumulation is in at::opmath_type (float32; float64 for
// float64). Positions and tile indices are 32-bit; memory offsets are 64-bit.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#include "cuda/common.cuh"
#include "cuda/launch.h"
#include "cuda/na2d_tiled.h"
#include "na2d_index.h"

namespace nat_mm {
namespace {

constexpr int kMaxChunk = 16;  // head-dim elements per lane (registers per accumulator)
// Threads per block at most: __launch_bounds__ then leaves the compiler 128 registers per thread
// (at 1024 it had 64 and spilled the float64 kernels' accumulators to the stack).
constexpr int kMaxThreads = 512;

// One axis cut into tiles: the tiles of residue group 0, then of group 1, and so on.
struct AxisTiling {
  int L, k, d, tile, tiles;  // map length, kernel, dilation, tile size, tiles over all groups
};

AxisTiling make_axis(int64_t L, int64_t k, int64_t d, int tile) {
  int tiles = 0;
  for (int c = 0; c < d; ++c) tiles += int(ceil_div(group_length(int(L), c, int(d)), tile));
  return {int(L), int(k), int(d), tile, tiles};
}

struct AxisTile {
  int c, n, p0;  // residue group, its length, first group position of the tile
};

NAT_HOST_DEVICE AxisTile locate(const AxisTiling& a, int t) {
  for (int c = 0; c < a.d; ++c) {
    const int n = group_length(a.L, c, a.d);
    const int nt = (n + a.tile - 1) / a.tile;
    if (t < nt) return {c, n, t * a.tile};
    t -= nt;
  }
  return {0, 0, 0};  // not reached for t < tiles
}

// Everything a tiled kernel needs about the problem and its tiling.
struct TileSpec {
  int B, heads, D, kh, kw;
  AxisTiling ty, tx;
  int G, C;        // lanes per query / key, head-dim elements per lane (D = G * C)
  int rs;          // shared memory row stride, in elements of the input type
  int halo_y, halo_x;  // staged positions per axis: tile + (kh - 1) (dQ, forward) or 2 (kh - 1)
  NAT_HOST_DEVICE int tiles() const { return ty.tiles * tx.tiles; }
  NAT_HOST_DEVICE int blocks() const { return B * heads * tiles(); }
  NAT_HOST_DEVICE int bins() const { return (2 * kh - 1) * (2 * kw - 1); }
};

// Where block-tile number `blk` is and which query (or key) this thread works on.
struct Work {
  int b, h, tile;
  AxisTile ay, ax;
  int qy, qx;      // this thread's position in the tile
  int py, px;      // its group position
  bool valid;      // inside the group's map
  int lane, glane; // lane in the warp, lane in its group of G
  unsigned mask;   // the lanes of its group
};

__device__ Work locate_work(const TileSpec& s, int blk) {
  Work w;
  w.tile = blk % s.tiles();
  const int bh = blk / s.tiles();
  w.b = bh / s.heads;
  w.h = bh % s.heads;
  w.ay = locate(s.ty, w.tile / s.tx.tiles);
  w.ax = locate(s.tx, w.tile % s.tx.tiles);
  const int item = int(threadIdx.x) / s.G;
  w.qy = item / s.tx.tile;
  w.qx = item % s.tx.tile;
  w.py = w.ay.p0 + w.qy;
  w.px = w.ax.p0 + w.qx;
  w.valid = w.py < w.ay.n && w.px < w.ax.n;
  w.lane = int(threadIdx.x) % 32;
  w.glane = int(threadIdx.x) % s.G;
  w.mask = s.G == 32 ? 0xffffffffu : ((1u << s.G) - 1) << (w.lane & ~(s.G - 1));
  return w;
}

// Sum over the G lanes of the group; every lane gets the same (bitwise) result.
template <typename Acc>
__device__ __forceinline__ Acc group_sum(Acc v, int G, unsigned mask) {
  for (int offset = G / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(mask, v, offset, G);
  return v;
}

// Shared memory carving: regions in order, each 16-byte aligned.
struct Carver {
  unsigned char* base;
  size_t used = 0;
  template <typename U>
  __device__ U* take(size_t count) {
    U* p = reinterpret_cast<U*>(base + used);
    used += (count * sizeof(U) + 15) / 16 * 16;
    return p;
  }
};

// Stages rows x cols positions of src (group origin (y0, x0) of residue groups (cy, cx)) into
// dst[pos * rs + d], pos = row * cols + col; all threads of the block take part.
template <typename T>
__device__ void stage_rows(const Map5<T>& src, const TileSpec& s, const Work& w, int y0, int x0,
                           int rows, int cols, T* dst) {
  const int per_pos = s.D;
  const int total = rows * cols * per_pos;
  for (int e = int(threadIdx.x); e < total; e += int(blockDim.x)) {
    const int pos = e / per_pos, d = e % per_pos;
    const int y = w.ay.c + s.ty.d * (y0 + pos / cols);
    const int x = w.ax.c + s.tx.d * (x0 + pos % cols);
    dst[pos * s.rs + d] = src.row(w.b, y, x, w.h)[d];
  }
}

// Stages the rpb of head h as Acc: [2 kh - 1][2 kw - 1].
template <typename T, typename Acc>
__device__ void stage_rpb(const T* rpb, const TileSpec& s, int h, Acc* dst) {
  if (rpb == nullptr) return;
  for (int e = int(threadIdx.x); e < s.bins(); e += int(blockDim.x))
    dst[e] = static_cast<Acc>(rpb[int64_t(h) * s.bins() + e]);
}

// This lane's C elements of row `pos` of a staged tile, as Acc.
template <typename T, typename Acc>
__device__ __forceinline__ Acc lane_dot(const Acc* x, const T* tile, int pos, const TileSpec& s,
                                        int glane) {
  const T* row = tile + pos * s.rs + glane * s.C;
  Acc sum = 0;
#pragma unroll
  for (int c = 0; c < kMaxChunk; ++c)
    if (c < s.C) sum += x[c] * static_cast<Acc>(row[c]);
  return sum;
}

template <typename T, typename Acc>
__device__ __forceinline__ void lane_axpy(Acc a, const T* tile, int pos, const TileSpec& s,
                                          int glane, Acc* acc) {
  const T* row = tile + pos * s.rs + glane * s.C;
#pragma unroll
  for (int c = 0; c < kMaxChunk; ++c)
    if (c < s.C) acc[c] += a * static_cast<Acc>(row[c]);
}

// This lane's C elements of a [B, H, W, heads, D] row, as Acc (times alpha).
template <typename T, typename Acc>
__device__ __forceinline__ void load_lane(const Map5<T>& m, const TileSpec& s, const Work& w,
                                          Acc alpha, Acc* x) {
  const T* row = m.row(w.b, w.ay.c + s.ty.d * w.py, w.ax.c + s.tx.d * w.px, w.h) + w.glane * s.C;
#pragma unroll
  for (int c = 0; c < kMaxChunk; ++c) x[c] = c < s.C ? alpha * static_cast<Acc>(row[c]) : Acc(0);
}

template <typename T, typename Acc>
__device__ __forceinline__ void store_lane(T* out, const TileSpec& s, const Work& w, Acc alpha,
                                           const Acc* x) {
  // outputs are contiguous [B, H, W, heads, D]
  const int64_t row = ((int64_t(w.b) * s.ty.L + w.ay.c + s.ty.d * w.py) * s.tx.L + w.ax.c +
                       s.tx.d * w.px) * s.heads + w.h;
  T* dst = out + row * s.D + w.glane * s.C;
#pragma unroll
  for (int c = 0; c < kMaxChunk; ++c)
    if (c < s.C) dst[c] = static_cast<T>(alpha * x[c]);
}

// Flat index of this thread's query in [B, H, W, heads] (lse, Delta).
NAT_HOST_DEVICE int64_t query_index(const TileSpec& s, const Work& w) {
  return ((int64_t(w.b) * s.ty.L + w.ay.c + s.ty.d * w.py) * s.tx.L + w.ax.c + s.tx.d * w.px) *
             s.heads + w.h;
}

// Window origin of the tile (group coordinates): the window start of its first query.
struct Window {
  int y0, x0;  // staged tile origin
  int wy, wx;  // this query's window start, relative to the staged origin
  int by, bx;  // rpb indices of its slot (0, 0)
};

NAT_HOST_DEVICE Window window_of(const TileSpec& s, const Work& w, int py, int px) {
  Window v;
  v.y0 = group_window_start(w.ay.p0, w.ay.n, s.kh);
  v.x0 = group_window_start(w.ax.p0, w.ax.n, s.kw);
  const int sy = group_window_start(py, w.ay.n, s.kh);
  const int sx = group_window_start(px, w.ax.n, s.kw);
  v.wy = sy - v.y0;
  v.wx = sx - v.x0;
  v.by = sy - py + s.kh - 1;
  v.bx = sx - px + s.kw - 1;
  return v;
}

// Staged extent of the forward / dQ tiles: from the first query's window to the last one's end.
NAT_HOST_DEVICE int staged_extent(const AxisTile& a, int tile, int k) {
  const int last = std::min(a.p0 + tile, a.n) - 1;
  return group_window_start(last, a.n, k) + k - group_window_start(a.p0, a.n, k);
}

// Stages the K and V rows of the tile's windows (the query tile plus its halo) and the head's
// rpb, then waits for the block; returns the staged tile's width.
template <typename T, typename Acc>
__device__ int stage_window_tile(const TileSpec& s, const Work& w, const Window& win, Map5<T> k,
                                 Map5<T> v, const T* rpb, T* k_s, T* v_s, Acc* rpb_s) {
  const int rows = staged_extent(w.ay, s.ty.tile, s.kh);
  const int cols = staged_extent(w.ax, s.tx.tile, s.kw);
  stage_rows(k, s, w, win.y0, win.x0, rows, cols, k_s);
  stage_rows(v, s, w, win.y0, win.x0, rows, cols, v_s);
  stage_rpb(rpb, s, w.h, rpb_s);
  __syncthreads();
  return cols;
}

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename T, typename Acc>
__global__ void __launch_bounds__(kMaxThreads)
    na2d_tiled_forward_kernel(TileSpec s, Map5<T> q, Map5<T> k, Map5<T> v, const T* rpb,
                              Acc scale, T* out, Acc* lse) {
  NAT_DYNAMIC_SHARED(unsigned char, smem_raw);
  Carver carve{smem_raw};
  T* k_s = carve.take<T>(size_t(s.halo_y) * s.halo_x * s.rs);
  T* v_s = carve.take<T>(size_t(s.halo_y) * s.halo_x * s.rs);
  Acc* rpb_s = carve.take<Acc>(s.bins());
  for (int blk = blockIdx.x; blk < s.blocks(); blk += gridDim.x) {
    const Work w = locate_work(s, blk);
    const Window win = window_of(s, w, std::min(w.py, w.ay.n - 1), std::min(w.px, w.ax.n - 1));
    const int cols = stage_window_tile(s, w, win, k, v, rpb, k_s, v_s, rpb_s);
    if (w.valid) {
      Acc qx[kMaxChunk], acc[kMaxChunk];
      load_lane(q, s, w, scale, qx);
#pragma unroll
      for (int c = 0; c < kMaxChunk; ++c) acc[c] = 0;
      Acc m = -std::numeric_limits<Acc>::infinity(), l = 0;
      for (int ki = 0; ki < s.kh; ++ki) {
        for (int kj = 0; kj < s.kw; ++kj) {
          const int pos = (win.wy + ki) * cols + win.wx + kj;
          Acc logit = group_sum(lane_dot(qx, k_s, pos, s, w.glane), s.G, w.mask);
          if (rpb != nullptr) logit += rpb_s[(win.by + ki) * (2 * s.kw - 1) + win.bx + kj];
          if (logit > m) {  // online softmax: rescale what was summed so far
            const Acc alpha = nat_exp(m - logit);
            l *= alpha;
#pragma unroll
            for (int c = 0; c < kMaxChunk; ++c) acc[c] *= alpha;
            m = logit;
          }
          const Acc p = nat_exp(logit - m);
          l += p;
          lane_axpy(p, v_s, pos, s, w.glane, acc);
        }
      }
      store_lane(out, s, w, Acc(1) / l, acc);
      if (w.glane == 0) lse[query_index(s, w)] = m + nat_log(l);
    }
    __syncthreads();  // the next tile overwrites the staged rows
  }
}

// ---------------------------------------------------------------------------------------------
// Backward.

// Delta = dO . O per query, [B, H, W, heads] contiguous.
template <typename T, typename Acc>
__global__ void na2d_tiled_delta_kernel(int64_t queries, int64_t heads, int64_t W, int64_t H,
                                        int D, Map5<T> dout, Map5<T> out, Acc* delta) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < queries;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t h = i % heads, x = i / heads % W, y = i / heads / W % H, b = i / heads / W / H;
    const T* g = dout.row(b, y, x, h);
    const T* o = out.row(b, y, x, h);
    Acc sum = 0;
    for (int d = 0; d < D; ++d) sum += static_cast<Acc>(g[d]) * static_cast<Acc>(o[d]);
    delta[i] = sum;
  }
}

// dQ per query tile, and per-tile drpb partials [heads, B, tiles, bins] when rpb is given.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kMaxThreads)
    na2d_tiled_dq_kernel(TileSpec s, Map5<T> q, Map5<T> k, Map5<T> v, Map5<T> dout, const T* rpb,
                         const Acc* lse, const Acc* delta, Acc scale, T* dq, Acc* drpb_partial) {
  NAT_DYNAMIC_SHARED(unsigned char, smem_raw);
  Carver carve{smem_raw};
  T* k_s = carve.take<T>(size_t(s.halo_y) * s.halo_x * s.rs);
  T* v_s = carve.take<T>(size_t(s.halo_y) * s.halo_x * s.rs);
  Acc* rpb_s = carve.take<Acc>(s.bins());
  const int items = s.ty.tile * s.tx.tile, kk = s.kh * s.kw;
  Acc* ds_s = carve.take<Acc>(rpb != nullptr ? size_t(items) * kk : 0);  // [items][kk]
  for (int blk = blockIdx.x; blk < s.blocks(); blk += gridDim.x) {
    const Work w = locate_work(s, blk);
    const Window win = window_of(s, w, std::min(w.py, w.ay.n - 1), std::min(w.px, w.ax.n - 1));
    const int cols = stage_window_tile(s, w, win, k, v, rpb, k_s, v_s, rpb_s);
    const int item = int(threadIdx.x) / s.G;
    if (w.valid) {
      Acc qx[kMaxChunk], gx[kMaxChunk], acc[kMaxChunk];
      load_lane(q, s, w, scale, qx);
      load_lane(dout, s, w, Acc(1), gx);
#pragma unroll
      for (int c = 0; c < kMaxChunk; ++c) acc[c] = 0;
      const int64_t qi = query_index(s, w);
      const Acc lse_i = lse[qi], delta_i = delta[qi];
      for (int ki = 0; ki < s.kh; ++ki) {
        for (int kj = 0; kj < s.kw; ++kj) {
          const int pos = (win.wy + ki) * cols + win.wx + kj;
          Acc logit = group_sum(lane_dot(qx, k_s, pos, s, w.glane), s.G, w.mask);
          if (rpb != nullptr) logit += rpb_s[(win.by + ki) * (2 * s.kw - 1) + win.bx + kj];
          const Acc dp = group_sum(lane_dot(gx, v_s, pos, s, w.glane), s.G, w.mask);
          const Acc ds = nat_exp(logit - lse_i) * (dp - delta_i);
          lane_axpy(ds, k_s, pos, s, w.glane, acc);
          if (rpb != nullptr && w.glane == 0) ds_s[item * kk + ki * s.kw + kj] = ds;
        }
      }
      store_lane(dq, s, w, scale, acc);
    }
    if (rpb != nullptr) {
      __syncthreads();
      // drpb of this tile: bin (by, bx) takes slot (by - win.by, bx - win.bx) of every query of
      // the tile that has it, summed over the queries in order.
      const int nbx = 2 * s.kw - 1;
      for (int bin = int(threadIdx.x); bin < s.bins(); bin += int(blockDim.x)) {
        Acc sum = 0;
        for (int it = 0; it < items; ++it) {
          const int py = w.ay.p0 + it / s.tx.tile, px = w.ax.p0 + it % s.tx.tile;
          if (py >= w.ay.n || px >= w.ax.n) continue;
          const Window qw = window_of(s, w, py, px);
          const int ki = bin / nbx - qw.by, kj = bin % nbx - qw.bx;
          if (ki >= 0 && ki < s.kh && kj >= 0 && kj < s.kw) sum += ds_s[it * kk + ki * s.kw + kj];
        }
        drpb_partial[((int64_t(w.h) * s.B + w.b) * s.tiles() + w.tile) * s.bins() + bin] = sum;
      }
    }
    __syncthreads();
  }
}

// dK and dV per key tile, from the queries of its inverse neighbourhood.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kMaxThreads)
    na2d_tiled_dkv_kernel(TileSpec s, Map5<T> q, Map5<T> k, Map5<T> v, Map5<T> dout,
                          const T* rpb, const Acc* lse, const Acc* delta, Acc scale, T* dk,
                          T* dv) {
  NAT_DYNAMIC_SHARED(unsigned char, smem_raw);
  Carver carve{smem_raw};
  const size_t staged = size_t(s.halo_y) * s.halo_x;
  T* q_s = carve.take<T>(staged * s.rs);
  T* g_s = carve.take<T>(staged * s.rs);
  Acc* lse_s = carve.take<Acc>(staged);
  Acc* delta_s = carve.take<Acc>(staged);
  Acc* rpb_s = carve.take<Acc>(s.bins());
  for (int blk = blockIdx.x; blk < s.blocks(); blk += gridDim.x) {
    const Work w = locate_work(s, blk);  // py, px: this thread's key
    // queries of the tile's inverse neighbourhood, per axis
    const int last_y = std::min(w.ay.p0 + s.ty.tile, w.ay.n) - 1;
    const int last_x = std::min(w.ax.p0 + s.tx.tile, w.ax.n) - 1;
    const int y0 = group_inverse_start(w.ay.p0, s.kh), x0 = group_inverse_start(w.ax.p0, s.kw);
    const int rows = group_inverse_end(last_y, w.ay.n, s.kh) - y0;
    const int cols = group_inverse_end(last_x, w.ax.n, s.kw) - x0;
    stage_rows(q, s, w, y0, x0, rows, cols, q_s);
    stage_rows(dout, s, w, y0, x0, rows, cols, g_s);
    for (int e = int(threadIdx.x); e < rows * cols; e += int(blockDim.x)) {
      const int y = w.ay.c + s.ty.d * (y0 + e / cols), x = w.ax.c + s.tx.d * (x0 + e % cols);
      const int64_t qi = ((int64_t(w.b) * s.ty.L + y) * s.tx.L + x) * s.heads + w.h;
      lse_s[e] = lse[qi];
      delta_s[e] = delta[qi];
    }
    stage_rpb(rpb, s, w.h, rpb_s);
    __syncthreads();
    if (w.valid) {
      Acc kx[kMaxChunk], vx[kMaxChunk], dk_acc[kMaxChunk], dv_acc[kMaxChunk];
      load_lane(k, s, w, scale, kx);
      load_lane(v, s, w, Acc(1), vx);
#pragma unroll
      for (int c = 0; c < kMaxChunk; ++c) dk_acc[c] = dv_acc[c] = 0;
      const int ye = group_inverse_end(w.py, w.ay.n, s.kh);
      const int xe = group_inverse_end(w.px, w.ax.n, s.kw);
      for (int yq = group_inverse_start(w.py, s.kh); yq < ye; ++yq) {
        const int by = w.py - yq + s.kh - 1;
        for (int xq = group_inverse_start(w.px, s.kw); xq < xe; ++xq) {
          const int pos = (yq - y0) * cols + xq - x0;
          Acc logit = group_sum(lane_dot(kx, q_s, pos, s, w.glane), s.G, w.mask);
          if (rpb != nullptr) logit += rpb_s[by * (2 * s.kw - 1) + w.px - xq + s.kw - 1];
          const Acc dp = group_sum(lane_dot(vx, g_s, pos, s, w.glane), s.G, w.mask);
          const Acc p = nat_exp(logit - lse_s[pos]);
          lane_axpy(p, g_s, pos, s, w.glane, dv_acc);
          lane_axpy(p * (dp - delta_s[pos]), q_s, pos, s, w.glane, dk_acc);
        }
      }
      store_lane(dk, s, w, scale, dk_acc);
      store_lane(dv, s, w, Acc(1), dv_acc);
    }
    __syncthreads();
  }
}

// drpb[h, bin] = sum over b and tiles (in order) of the partials.
template <typename T, typename Acc>
__global__ void na2d_tiled_drpb_kernel(TileSpec s, const Acc* partial, T* drpb) {
  const int64_t per_head = int64_t(s.B) * s.tiles();
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < int64_t(s.heads) * s.bins();
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t h = t / s.bins(), bin = t % s.bins();
    Acc sum = 0;
    for (int64_t i = 0; i < per_head; ++i) sum += partial[(h * per_head + i) * s.bins() + bin];
    drpb[t] = static_cast<T>(sum);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

// Row stride of staged rows: at least D elements, an odd number of 4-byte words (bank spread).
int row_stride(int D, int elem) {
  int rs = D;
  while ((rs * elem) % 4 != 0 || ((rs * elem / 4) % 2 == 0 && elem < 8)) ++rs;
  return rs;
}

enum class Kind { kForward, kDq, kDkv };

size_t aligned(size_t bytes) { return (bytes + 15) / 16 * 16; }

size_t shared_bytes(const TileSpec& s, Kind kind, int elem, int acc, bool has_rpb) {
  const size_t staged = size_t(s.halo_y) * s.halo_x;
  size_t bytes = 2 * aligned(staged * s.rs * elem) + aligned(size_t(s.bins()) * acc);
  if (kind == Kind::kDq && has_rpb)
    bytes += aligned(size_t(s.ty.tile) * s.tx.tile * s.kh * s.kw * acc);
  if (kind == Kind::kDkv) bytes += 2 * aligned(staged * acc);
  return bytes;
}

// Lanes per query: the smallest power of two G with D % G == 0 and D / G <= kMaxChunk.
int lanes_per_item(int64_t D) {
  for (int G = 1; G <= 32; G *= 2)
    if (D % G == 0 && D / G <= kMaxChunk) return G;
  return 0;
}

struct Plan {
  TileSpec spec;
  size_t smem;
};

// The largest tile that fits the device's shared memory, or an explanation why none does.
bool plan(const Geometry& g, Kind kind, int elem, int acc, bool has_rpb, Plan* out,
          std::string* why) {
  const int G = lanes_per_item(g.D);
  if (G == 0) {
    *why = "head dim " + std::to_string(g.D) + " is not a power-of-two multiple of at most " +
           std::to_string(kMaxChunk) + " elements per lane";
    return false;
  }
  const size_t limit = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  static constexpr int kTiles[][2] = {{8, 8}, {4, 8}, {4, 4}};
  size_t smallest = 0;
  for (const auto& t : kTiles) {
    const int threads = t[0] * t[1] * G;
    if (threads > kMaxThreads || threads % 32 != 0) continue;
    TileSpec s{int(g.B), int(g.heads), int(g.D), int(g.kh), int(g.kw),
               make_axis(g.H, g.kh, g.dh, t[0]), make_axis(g.W, g.kw, g.dw, t[1]),
               G, int(g.D) / G, row_stride(int(g.D), elem), 0, 0};
    const int grow = kind == Kind::kDkv ? 2 : 1;
    s.halo_y = t[0] + grow * (int(g.kh) - 1);
    s.halo_x = t[1] + grow * (int(g.kw) - 1);
    const size_t bytes = shared_bytes(s, kind, elem, acc, has_rpb);
    if (bytes <= limit) {
      *out = {s, bytes};
      return true;
    }
    smallest = bytes;
  }
  *why = "its smallest tile needs " + std::to_string(smallest) + " bytes of shared memory, the " +
         "device allows " + std::to_string(limit);
  return false;
}

int64_t grid_for(const TileSpec& s) { return std::min<int64_t>(s.blocks(), NAT_MAX_BLOCKS); }

template <typename K>
void allow_shared(K* kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(bytes)));
}

}  // namespace

CudaKernelChoice cuda_kernel_choice() {
  const char* env = std::getenv("NAT_MM_CUDA_KERNEL");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0)
    return CudaKernelChoice::kAuto;
  if (std::strcmp(env, "tiled") == 0) return CudaKernelChoice::kTiled;
  if (std::strcmp(env, "reference") == 0) return CudaKernelChoice::kReference;
  // triton and flex choose Python backends of the fused na2d (nat_mm/ops/_dispatch.py); the ops
  // that reach the C++ kernels then (na2d_qk, na2d_av) take them as under auto.
  if (std::strcmp(env, "triton") == 0 || std::strcmp(env, "flex") == 0)
    return CudaKernelChoice::kAuto;
  TORCH_CHECK(false, "NAT_MM_CUDA_KERNEL must be auto, triton, tiled, reference or flex, got '",
              env, "'");
}

bool tiled_applies(const char* op, const Geometry& g, at::ScalarType dtype, bool has_rpb) {
  const CudaKernelChoice choice = cuda_kernel_choice();
  if (choice == CudaKernelChoice::kReference || g.rows() == 0) return false;  // empty: no work
  const int elem = int(c10::elementSize(dtype));
  const int acc = dtype == at::kDouble ? 8 : 4;
  std::string why;
  Plan p;
  const bool ok = plan(g, Kind::kForward, elem, acc, has_rpb, &p, &why) &&
                  plan(g, Kind::kDq, elem, acc, has_rpb, &p, &why) &&
                  plan(g, Kind::kDkv, elem, acc, has_rpb, &p, &why);
  TORCH_CHECK(ok || choice != CudaKernelChoice::kTiled, op,
              ": NAT_MM_CUDA_KERNEL=tiled, but the tiled kernels do not apply: ", why);
  return ok;
}

void na2d_forward_tiled(const Geometry& g, const at::Tensor& q, const at::Tensor& k,
                        const at::Tensor& v, const at::Tensor& rpb, double scale, at::Tensor& out,
                        at::Tensor& lse) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "na2d_forward_tiled",
                                  [&] {
    using Acc = at::opmath_type<scalar_t>;
    Plan p;
    std::string why;
    TORCH_INTERNAL_ASSERT(plan(g, Kind::kForward, sizeof(scalar_t), sizeof(Acc), rpb.defined(),
                               &p, &why), why);
    auto kernel = na2d_tiled_forward_kernel<scalar_t, Acc>;
    allow_shared(kernel, p.smem);
    NAT_LAUNCH(grid_for(p.spec), p.spec.ty.tile * p.spec.tx.tile * p.spec.G, p.smem,
               at::cuda::getCurrentCUDAStream(), na2d_tiled_forward_kernel<scalar_t, Acc>)(
        p.spec, map5<scalar_t>(q), map5<scalar_t>(k), map5<scalar_t>(v),
        ptr_or_null<scalar_t>(rpb), static_cast<Acc>(scale), out.mutable_data_ptr<scalar_t>(),
        lse.mutable_data_ptr<Acc>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void na2d_backward_tiled(const Geometry& g, const at::Tensor& grad_out, const at::Tensor& q,
                         const at::Tensor& k, const at::Tensor& v, const at::Tensor& rpb,
                         const at::Tensor& out, const at::Tensor& lse, double scale,
                         at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor& drpb) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                  "na2d_backward_tiled", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const auto stream = at::cuda::getCurrentCUDAStream();
    const auto acc_options = q.options().dtype(c10::CppTypeToScalarType<Acc>::value);
    const bool has_rpb = rpb.defined();
    const Acc s = static_cast<Acc>(scale);
    const scalar_t* bias = ptr_or_null<scalar_t>(rpb);
    at::Tensor delta = at::empty({g.B, g.H, g.W, g.heads}, acc_options);
    NAT_LAUNCH(std::min<int64_t>(ceil_div(g.rows(), 256), NAT_MAX_BLOCKS), 256, 0, stream,
               na2d_tiled_delta_kernel<scalar_t, Acc>)(
        g.rows(), g.heads, g.W, g.H, int(g.D), map5<scalar_t>(grad_out), map5<scalar_t>(out),
        delta.mutable_data_ptr<Acc>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    Plan p;
    std::string why;
    TORCH_INTERNAL_ASSERT(plan(g, Kind::kDq, sizeof(scalar_t), sizeof(Acc), has_rpb, &p, &why),
                          why);
    at::Tensor partial = at::empty({has_rpb ? p.spec.blocks() : 0, p.spec.bins()}, acc_options);
    auto dq_kernel = na2d_tiled_dq_kernel<scalar_t, Acc>;
    allow_shared(dq_kernel, p.smem);
    NAT_LAUNCH(grid_for(p.spec), p.spec.ty.tile * p.spec.tx.tile * p.spec.G, p.smem, stream,
               na2d_tiled_dq_kernel<scalar_t, Acc>)(
        p.spec, map5<scalar_t>(q), map5<scalar_t>(k), map5<scalar_t>(v),
        map5<scalar_t>(grad_out), bias, lse.const_data_ptr<Acc>(), delta.const_data_ptr<Acc>(),
        s, dq.mutable_data_ptr<scalar_t>(), has_rpb ? partial.mutable_data_ptr<Acc>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (has_rpb) {
      drpb = at::empty({g.heads, 2 * g.kh - 1, 2 * g.kw - 1}, q.options());
      NAT_LAUNCH(std::min<int64_t>(ceil_div(drpb.numel(), 256), NAT_MAX_BLOCKS), 256, 0, stream,
                 na2d_tiled_drpb_kernel<scalar_t, Acc>)(
          p.spec, partial.const_data_ptr<Acc>(), drpb.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      drpb = at::empty({0}, q.options());
    }

    TORCH_INTERNAL_ASSERT(plan(g, Kind::kDkv, sizeof(scalar_t), sizeof(Acc), has_rpb, &p, &why),
                          why);
    auto dkv_kernel = na2d_tiled_dkv_kernel<scalar_t, Acc>;
    allow_shared(dkv_kernel, p.smem);
    NAT_LAUNCH(grid_for(p.spec), p.spec.ty.tile * p.spec.tx.tile * p.spec.G, p.smem, stream,
               na2d_tiled_dkv_kernel<scalar_t, Acc>)(
        p.spec, map5<scalar_t>(q), map5<scalar_t>(k), map5<scalar_t>(v),
        map5<scalar_t>(grad_out), bias, lse.const_data_ptr<Acc>(), delta.const_data_ptr<Acc>(),
        s, dk.mutable_data_ptr<scalar_t>(), dv.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace nat_mm
