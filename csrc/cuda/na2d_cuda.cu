// CUDA kernels of nat_mm's 2-D neighborhood attention ops (schemas in csrc/ops.cpp).
//
// The reference CUDA path: correct and clear. na2d_forward / na2d_backward take the fused, tiled
// kernels of na2d_tiled.cu where they apply (NAT_MM_CUDA_KERNEL selects; see na2d_tiled.h) and
// these otherwise; the unfused qk / av ops always run here.
// Layout is heads-last: q, k, v, out are [B, H, W, heads, D] (any strides on B, H, W, heads; D is
// made stride-1); attn, P and dS are [B, H, W, heads, kh * kw] with slot ki * kw + kj; rpb is
// [heads, 2 kh - 1, 2 kw - 1]. Queries are numbered i = ((b * H + y) * W + x) * heads + h.
// All index maths comes from na2d_index.h; the per-element bodies below are __host__ __device__ so
// they can be checked on the host. Accumulation is in float32 (float64 for float64 inputs), and
// every backward is deterministic: dK / dV loop over the inverse neighbourhood of each key, drpb
// is reduced in a fixed order (per-row partial sums, then a sum over rows).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/launch.h"
#include "cuda/na2d_tiled.h"
#include "na2d_checks.h"
#include "na2d_index.h"

namespace nat_mm {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = NAT_MAX_BLOCKS;  // grid-stride loops cover the rest
constexpr int64_t kMaxSharedBytes = 48 * 1024;    // default dynamic shared memory limit

// ---------------------------------------------------------------------------------------------
// Positions (host and device).

// Coordinates of query (or key) number i.
struct Pos {
  int64_t b, y, x, h;
};

NAT_HOST_DEVICE Pos unflatten(int64_t i, const Geometry& g) {
  Pos p;
  p.h = i % g.heads;
  i /= g.heads;
  p.x = i % g.W;
  i /= g.W;
  p.y = i % g.H;
  p.b = i / g.H;
  return p;
}

NAT_HOST_DEVICE int64_t flatten(int64_t b, int64_t y, int64_t x, int64_t h, const Geometry& g) {
  return ((b * g.H + y) * g.W + x) * g.heads + h;
}

// ---------------------------------------------------------------------------------------------
// Per-element bodies (host and device).

// alpha * <a_i, b_key> (+ rpb) for slot n of query p: a logit (a = q, b = k) or dP (a = dO, b = v).
template <typename Acc, typename T>
NAT_HOST_DEVICE Acc window_dot(const Geometry& g, Map5<T> a, Map5<T> b, const T* rpb, Acc alpha,
                               const Pos& p, int64_t n) {
  const int64_t ky = window_start(p.y, g.H, g.kh, g.dh) + (n / g.kw) * g.dh;
  const int64_t kx = window_start(p.x, g.W, g.kw, g.dw) + (n % g.kw) * g.dw;
  const T* ar = a.row(p.b, p.y, p.x, p.h);
  const T* br = b.row(p.b, ky, kx, p.h);
  Acc s = 0;
  for (int64_t d = 0; d < g.D; ++d) s += static_cast<Acc>(ar[d]) * static_cast<Acc>(br[d]);
  s *= alpha;
  if (rpb != nullptr) {
    const int64_t bi = rpb_index(p.y, ky, g.kh, g.dh);
    const int64_t bj = rpb_index(p.x, kx, g.kw, g.dw);
    s += static_cast<Acc>(rpb[(p.h * (2 * g.kh - 1) + bi) * (2 * g.kw - 1) + bj]);
  }
  return s;
}

// sum_n w_row[n] * src_key(p, n)[d]: out = P @ V, dQ = dS @ K.
template <typename Acc, typename Wt, typename T>
NAT_HOST_DEVICE Acc window_sum(const Geometry& g, const Wt* w_row, Map5<T> src, const Pos& p,
                               int64_t d) {
  const int64_t y0 = window_start(p.y, g.H, g.kh, g.dh);
  const int64_t x0 = window_start(p.x, g.W, g.kw, g.dw);
  Acc s = 0;
  for (int64_t ki = 0; ki < g.kh; ++ki) {
    for (int64_t kj = 0; kj < g.kw; ++kj) {
      const T* r = src.row(p.b, y0 + ki * g.dh, x0 + kj * g.dw, p.h);
      s += static_cast<Acc>(w_row[ki * g.kw + kj]) * static_cast<Acc>(r[d]);
    }
  }
  return s;
}

// sum over the queries i whose window holds key j of w[i, slot(i, j)] * src_i[d]: dK = dS^T Q,
// dV = P^T dO. w is [queries, kh * kw] contiguous.
template <typename Acc, typename Wt, typename T>
NAT_HOST_DEVICE Acc inverse_sum(const Geometry& g, const Wt* w, Map5<T> src, const Pos& j, int64_t d) {
  const int64_t y_end = inverse_end(j.y, g.H, g.kh, g.dh);
  const int64_t x_begin = inverse_start(j.x, g.W, g.kw, g.dw);
  const int64_t x_end = inverse_end(j.x, g.W, g.kw, g.dw);
  Acc s = 0;
  for (int64_t y = inverse_start(j.y, g.H, g.kh, g.dh); y < y_end; y += g.dh) {
    const int64_t ki = window_slot(y, j.y, g.H, g.kh, g.dh);
    for (int64_t x = x_begin; x < x_end; x += g.dw) {
      const int64_t kj = window_slot(x, j.x, g.W, g.kw, g.dw);
      const int64_t i = flatten(j.b, y, x, j.h, g);
      s += static_cast<Acc>(w[i * g.kk() + ki * g.kw + kj]) *
           static_cast<Acc>(src.row(j.b, y, x, j.h)[d]);
    }
  }
  return s;
}

// Turns a row of n logits into probabilities in place (max-subtracted); returns the log-sum-exp.
template <typename Acc>
NAT_HOST_DEVICE Acc softmax_row(Acc* x, int64_t n) {
  Acc m = x[0];
  for (int64_t t = 1; t < n; ++t) m = x[t] > m ? x[t] : m;
  Acc sum = 0;
  for (int64_t t = 0; t < n; ++t) {
    x[t] = nat_exp(x[t] - m);
    sum += x[t];
  }
  for (int64_t t = 0; t < n; ++t) x[t] /= sum;
  return m + nat_log(sum);
}

// dP -> dS = P * (dP - Delta) in place, with Delta = sum P * dP (= dO . O).
template <typename Acc>
NAT_HOST_DEVICE void softmax_grad_row(const Acc* p, Acc* dp, int64_t n) {
  Acc delta = 0;
  for (int64_t t = 0; t < n; ++t) delta += p[t] * dp[t];
  for (int64_t t = 0; t < n; ++t) dp[t] = p[t] * (dp[t] - delta);
}

// Row `pos` of a per-axis table [L, 2k - 1]: the slot of the key at rpb index e, or -1.
NAT_HOST_DEVICE void slot_table_row(int64_t pos, int64_t L, int64_t k, int64_t d, int32_t* row) {
  for (int64_t e = 0; e < 2 * k - 1; ++e) row[e] = -1;
  const int64_t s = window_start(pos, L, k, d);
  for (int64_t t = 0; t < k; ++t) row[rpb_index(pos, s + t * d, k, d)] = static_cast<int32_t>(t);
}

// Sum of w over all queries in map row y and head h whose slot maps to rpb entry `bin`.
template <typename Acc, typename Wt>
NAT_HOST_DEVICE Acc drpb_row_sum(const Geometry& g, const Wt* w, const int32_t* row_tab,
                                 const int32_t* col_tab, int64_t y, int64_t h, int64_t bin) {
  const int64_t nbc = 2 * g.kw - 1;
  const int64_t ki = row_tab[y * (2 * g.kh - 1) + bin / nbc];
  const int64_t bj = bin % nbc;
  Acc s = 0;
  if (ki < 0) return s;
  for (int64_t b = 0; b < g.B; ++b) {
    for (int64_t x = 0; x < g.W; ++x) {
      const int64_t kj = col_tab[x * nbc + bj];
      if (kj >= 0) s += static_cast<Acc>(w[flatten(b, y, x, h, g) * g.kk() + ki * g.kw + kj]);
    }
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Kernels.

#define NAT_GRID_STRIDE_LOOP(t, n)                                          \
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < (n); \
       t += int64_t(gridDim.x) * blockDim.x)

// Fused forward. Each block takes qpb queries at a time: logits of every (query, slot) into shared
// memory, one thread per query turns its row into P and writes lse, then one thread per
// (query, d) writes out = P @ V.
template <typename T, typename Acc = at::opmath_type<T>>
__global__ void __launch_bounds__(kThreads)
    na2d_forward_kernel(Geometry g, Map5<T> q, Map5<T> k, Map5<T> v, const T* rpb, Acc scale,
                        int64_t qpb, T* out, Acc* lse) {
  NAT_DYNAMIC_SHARED(unsigned char, smem_raw);
  Acc* logits = reinterpret_cast<Acc*>(smem_raw);  // [qpb, kk]
  const int64_t nq = g.rows(), kk = g.kk();
  for (int64_t q0 = int64_t(blockIdx.x) * qpb; q0 < nq; q0 += int64_t(gridDim.x) * qpb) {
    const int64_t nb = nq - q0 < qpb ? nq - q0 : qpb;
    for (int64_t t = threadIdx.x; t < nb * kk; t += blockDim.x) {
      logits[t] = window_dot<Acc>(g, q, k, rpb, scale, unflatten(q0 + t / kk, g), t % kk);
    }
    __syncthreads();
    for (int64_t t = threadIdx.x; t < nb; t += blockDim.x) {
      lse[q0 + t] = softmax_row(logits + t * kk, kk);
    }
    __syncthreads();
    for (int64_t t = threadIdx.x; t < nb * g.D; t += blockDim.x) {
      const Pos p = unflatten(q0 + t / g.D, g);
      out[q0 * g.D + t] =
          static_cast<T>(window_sum<Acc>(g, logits + (t / g.D) * kk, v, p, t % g.D));
    }
    __syncthreads();
  }
}

// Backward pass 1, per query: P = exp(logit - lse), dP = dO . V_n, dS = P * (dP - Delta); writes
// P and dS ([queries, kk], Acc) for pass 2 and dQ = scale * dS @ K.
template <typename T, typename Acc = at::opmath_type<T>>
__global__ void __launch_bounds__(kThreads)
    na2d_backward_query_kernel(Geometry g, Map5<T> q, Map5<T> k, Map5<T> v, Map5<T> dout, const T* rpb,
                               const Acc* lse, Acc scale, int64_t qpb, Acc* p_buf, Acc* ds_buf,
                               T* dq) {
  NAT_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int64_t nq = g.rows(), kk = g.kk();
  Acc* p_s = reinterpret_cast<Acc*>(smem_raw);  // [qpb, kk]
  Acc* ds_s = p_s + qpb * kk;                   // [qpb, kk]: dP, then dS
  for (int64_t q0 = int64_t(blockIdx.x) * qpb; q0 < nq; q0 += int64_t(gridDim.x) * qpb) {
    const int64_t nb = nq - q0 < qpb ? nq - q0 : qpb;
    for (int64_t t = threadIdx.x; t < nb * kk; t += blockDim.x) {
      const Pos p = unflatten(q0 + t / kk, g);
      const Acc logit = window_dot<Acc>(g, q, k, rpb, scale, p, t % kk);
      p_s[t] = nat_exp(logit - lse[q0 + t / kk]);
      ds_s[t] = window_dot<Acc>(g, dout, v, static_cast<const T*>(nullptr), Acc(1), p, t % kk);
    }
    __syncthreads();
    for (int64_t t = threadIdx.x; t < nb; t += blockDim.x) {
      softmax_grad_row(p_s + t * kk, ds_s + t * kk, kk);
    }
    __syncthreads();
    for (int64_t t = threadIdx.x; t < nb * kk; t += blockDim.x) {
      p_buf[q0 * kk + t] = p_s[t];
      ds_buf[q0 * kk + t] = ds_s[t];
    }
    for (int64_t t = threadIdx.x; t < nb * g.D; t += blockDim.x) {
      const Pos p = unflatten(q0 + t / g.D, g);
      dq[q0 * g.D + t] =
          static_cast<T>(scale * window_sum<Acc>(g, ds_s + (t / g.D) * kk, k, p, t % g.D));
    }
    __syncthreads();
  }
}

// dst[i, n] = alpha * a_i . b_key(i, n) (+ rpb): qk forward, dattn of av backward.
template <typename T, typename Acc = at::opmath_type<T>>
__global__ void window_dot_kernel(Geometry g, Map5<T> a, Map5<T> b, const T* rpb, Acc alpha, T* dst) {
  NAT_GRID_STRIDE_LOOP(t, g.rows() * g.kk()) {
    dst[t] =
        static_cast<T>(window_dot<Acc>(g, a, b, rpb, alpha, unflatten(t / g.kk(), g), t % g.kk()));
  }
}

// dst[i, d] = alpha * sum_n w[i, n] src_key(i, n)[d]: av forward, dq of qk backward.
template <typename Wt, typename T, typename Acc = at::opmath_type<T>>
__global__ void window_sum_kernel(Geometry g, const Wt* w, Map5<T> src, Acc alpha, T* dst) {
  NAT_GRID_STRIDE_LOOP(t, g.rows() * g.D) {
    const int64_t i = t / g.D;
    dst[t] =
        static_cast<T>(alpha * window_sum<Acc>(g, w + i * g.kk(), src, unflatten(i, g), t % g.D));
  }
}

// dst[j, d] = alpha * sum_{i: j in window(i)} w[i, slot(i, j)] src_i[d]: dk and dv.
template <typename Wt, typename T, typename Acc = at::opmath_type<T>>
__global__ void inverse_sum_kernel(Geometry g, const Wt* w, Map5<T> src, Acc alpha, T* dst) {
  NAT_GRID_STRIDE_LOOP(t, g.rows() * g.D) {
    dst[t] = static_cast<T>(alpha * inverse_sum<Acc>(g, w, src, unflatten(t / g.D, g), t % g.D));
  }
}

__global__ void slot_table_kernel(int64_t L, int64_t k, int64_t d, int32_t* table) {
  NAT_GRID_STRIDE_LOOP(pos, L) { slot_table_row(pos, L, k, d, table + pos * (2 * k - 1)); }
}

// One block per (map row y, head h): partial[y, h, bin] = sum over b, x of the matching w entries.
template <typename Wt, typename Acc>
__global__ void drpb_partial_kernel(Geometry g, const Wt* w, const int32_t* row_tab,
                                    const int32_t* col_tab, Acc* partial) {
  const int64_t r = blockIdx.x;  // y * heads + h
  const int64_t y = r / g.heads, h = r % g.heads;
  for (int64_t bin = threadIdx.x; bin < g.rpb_bins(); bin += blockDim.x) {
    partial[r * g.rpb_bins() + bin] = drpb_row_sum<Acc>(g, w, row_tab, col_tab, y, h, bin);
  }
}

// drpb[h, bin] = sum over y (in order) of partial[y, h, bin].
template <typename T, typename Acc>
__global__ void drpb_reduce_kernel(Geometry g, const Acc* partial, T* drpb) {
  const int64_t nbins = g.rpb_bins();
  NAT_GRID_STRIDE_LOOP(t, g.heads * nbins) {
    Acc s = 0;
    for (int64_t y = 0; y < g.H; ++y) s += partial[y * g.heads * nbins + t];
    drpb[t] = static_cast<T>(s);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: checks, launches.

// Blocks for one thread per work item, or for groups of qpb queries (grid-stride beyond that).
int64_t num_blocks(int64_t work) { return std::min(ceil_div(work, kThreads), kMaxBlocks); }
int64_t group_blocks(int64_t queries, int64_t qpb) {
  return std::min(ceil_div(queries, qpb), kMaxBlocks);
}

// Queries per block of the fused kernels: about kThreads / D, within the shared memory limit.
int64_t queries_per_block(const char* op, const Geometry& g, int64_t bytes_per_slot) {
  const int64_t fit = kMaxSharedBytes / (g.kk() * bytes_per_slot);
  TORCH_CHECK(fit >= 1, op, ": kernel_size ", g.kh, "x", g.kw, " is too large for this kernel");
  return std::clamp<int64_t>(kThreads / std::max<int64_t>(g.D, 1), 1, std::min<int64_t>(32, fit));
}

template <typename Wt, typename T>
void launch_window_sum(const Geometry& g, const Wt* w, const at::Tensor& src, double alpha,
                       at::Tensor& dst) {
  if (dst.numel() == 0) return;
  using Acc = at::opmath_type<T>;
  NAT_LAUNCH(num_blocks(dst.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream(),
             window_sum_kernel<Wt, T>)(g, w, map5<T>(src), static_cast<Acc>(alpha),
                                       dst.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename Wt, typename T>
void launch_inverse_sum(const Geometry& g, const Wt* w, const at::Tensor& src, double alpha,
                        at::Tensor& dst) {
  if (dst.numel() == 0) return;
  using Acc = at::opmath_type<T>;
  NAT_LAUNCH(num_blocks(dst.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream(),
             inverse_sum_kernel<Wt, T>)(g, w, map5<T>(src), static_cast<Acc>(alpha),
                                        dst.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_window_dot(const Geometry& g, const at::Tensor& a, const at::Tensor& b, const T* rpb,
                       at::Tensor& dst) {
  if (dst.numel() == 0) return;
  using Acc = at::opmath_type<T>;
  NAT_LAUNCH(num_blocks(dst.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream(),
             window_dot_kernel<T>)(g, map5<T>(a), map5<T>(b), rpb, Acc(1),
                                   dst.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor slot_table(int64_t L, int64_t k, int64_t d, const at::TensorOptions& options) {
  at::Tensor table = at::empty({L, 2 * k - 1}, options.dtype(at::kInt));
  NAT_LAUNCH(num_blocks(L), kThreads, 0, at::cuda::getCurrentCUDAStream(), slot_table_kernel)(
      L, k, d, table.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return table;
}

// drpb [heads, 2 kh - 1, 2 kw - 1] (dtype T) from w = dS [queries, kk] (dtype Wt), in fixed order.
template <typename Wt, typename T>
at::Tensor reduce_drpb(const Geometry& g, const Wt* w, const at::TensorOptions& options) {
  using Acc = at::opmath_type<T>;
  at::Tensor drpb = at::zeros({g.heads, 2 * g.kh - 1, 2 * g.kw - 1}, options);
  if (g.rows() == 0) return drpb;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor row_tab = slot_table(g.H, g.kh, g.dh, options);
  const at::Tensor col_tab = slot_table(g.W, g.kw, g.dw, options);
  at::Tensor partial =
      at::empty({g.H, g.heads, g.rpb_bins()}, options.dtype(c10::CppTypeToScalarType<Acc>::value));
  NAT_LAUNCH(g.H * g.heads, kThreads, 0, stream, drpb_partial_kernel<Wt, Acc>)(
      g, w, row_tab.const_data_ptr<int32_t>(), col_tab.const_data_ptr<int32_t>(),
      partial.mutable_data_ptr<Acc>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  NAT_LAUNCH(num_blocks(drpb.numel()), kThreads, 0, stream, drpb_reduce_kernel<T, Acc>)(
      g, partial.const_data_ptr<Acc>(), drpb.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return drpb;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Ops.

std::tuple<at::Tensor, at::Tensor> na2d_forward_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                     const at::Tensor& v_in,
                                                     const std::optional<at::Tensor>& rpb_in,
                                                     at::IntArrayRef kernel_size,
                                                     at::IntArrayRef dilation, double scale) {
  constexpr const char* op = "na2d_forward_cuda";
  const Geometry g = check_geometry(op, q_in, kernel_size, dilation, NAT_MM_CUDA_DEVICE_TYPE);
  check_like(op, "k", k_in, q_in, q_in.sizes());
  check_like(op, "v", v_in, q_in, q_in.sizes());
  c10::cuda::CUDAGuard device_guard(q_in.device());
  const at::Tensor q = last_dim_dense(q_in), k = last_dim_dense(k_in), v = last_dim_dense(v_in);
  const at::Tensor rpb = checked_rpb(op, rpb_in, q_in, g);
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse =
      at::empty({g.B, g.H, g.W, g.heads}, q.options().dtype(opmath_dtype(q.scalar_type())));
  if (g.rows() == 0) return {out, lse};
  if (tiled_applies(op, g, q.scalar_type(), rpb.defined())) {
    na2d_forward_tiled(g, q, k, v, rpb, scale, out, lse);
    return {out, lse};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), op, [&] {
    using Acc = at::opmath_type<scalar_t>;
    const int64_t qpb = queries_per_block(op, g, sizeof(Acc));
    NAT_LAUNCH(group_blocks(g.rows(), qpb), kThreads, qpb * g.kk() * sizeof(Acc),
               at::cuda::getCurrentCUDAStream(), na2d_forward_kernel<scalar_t>)(
        g, map5<scalar_t>(q), map5<scalar_t>(k), map5<scalar_t>(v), ptr_or_null<scalar_t>(rpb),
        static_cast<Acc>(scale), qpb, out.mutable_data_ptr<scalar_t>(),
        lse.mutable_data_ptr<Acc>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> na2d_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const std::optional<at::Tensor>& rpb_in, const at::Tensor& out_in,
    const at::Tensor& lse_in, at::IntArrayRef kernel_size, at::IntArrayRef dilation, double scale) {
  constexpr const char* op = "na2d_backward_cuda";
  const Geometry g = check_geometry(op, q_in, kernel_size, dilation, NAT_MM_CUDA_DEVICE_TYPE);
  check_like(op, "k", k_in, q_in, q_in.sizes());
  check_like(op, "v", v_in, q_in, q_in.sizes());
  check_like(op, "grad_out", grad_out_in, q_in, q_in.sizes());
  check_like(op, "out", out_in, q_in, q_in.sizes());
  check_lse(op, lse_in, q_in, g);
  const auto acc_type = opmath_dtype(q_in.scalar_type());
  c10::cuda::CUDAGuard device_guard(q_in.device());
  const at::Tensor q = last_dim_dense(q_in), k = last_dim_dense(k_in), v = last_dim_dense(v_in);
  const at::Tensor dout = grad_out_in.contiguous(), lse = lse_in.contiguous();
  const at::Tensor rpb = checked_rpb(op, rpb_in, q_in, g);
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(q.sizes(), q.options());
  at::Tensor dv = at::empty(q.sizes(), q.options());
  at::Tensor drpb;
  if (tiled_applies(op, g, q.scalar_type(), rpb.defined())) {
    na2d_backward_tiled(g, dout, q, k, v, rpb, last_dim_dense(out_in), lse, scale, dq, dk, dv,
                        drpb);
    return {dq, dk, dv, drpb};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), op, [&] {
    using Acc = at::opmath_type<scalar_t>;
    at::Tensor p_buf = at::empty(attn_shape(g), q.options().dtype(acc_type));
    at::Tensor ds_buf = at::empty(attn_shape(g), q.options().dtype(acc_type));
    if (g.rows() > 0) {
      const int64_t qpb = queries_per_block(op, g, 2 * sizeof(Acc));
      NAT_LAUNCH(group_blocks(g.rows(), qpb), kThreads, 2 * qpb * g.kk() * sizeof(Acc),
                 at::cuda::getCurrentCUDAStream(), na2d_backward_query_kernel<scalar_t>)(
              g, map5<scalar_t>(q), map5<scalar_t>(k), map5<scalar_t>(v), map5<scalar_t>(dout),
              ptr_or_null<scalar_t>(rpb), lse.const_data_ptr<Acc>(), static_cast<Acc>(scale), qpb,
              p_buf.mutable_data_ptr<Acc>(), ds_buf.mutable_data_ptr<Acc>(),
              dq.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    launch_inverse_sum<Acc, scalar_t>(g, ds_buf.const_data_ptr<Acc>(), q, scale, dk);
    launch_inverse_sum<Acc, scalar_t>(g, p_buf.const_data_ptr<Acc>(), dout, 1.0, dv);
    drpb = rpb.defined() ? reduce_drpb<Acc, scalar_t>(g, ds_buf.const_data_ptr<Acc>(), q.options())
                         : at::empty({0}, q.options());
  });
  return {dq, dk, dv, drpb};
}

at::Tensor na2d_qk_forward_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                const std::optional<at::Tensor>& rpb_in,
                                at::IntArrayRef kernel_size, at::IntArrayRef dilation) {
  constexpr const char* op = "na2d_qk_forward_cuda";
  const Geometry g = check_geometry(op, q_in, kernel_size, dilation, NAT_MM_CUDA_DEVICE_TYPE);
  check_like(op, "k", k_in, q_in, q_in.sizes());
  c10::cuda::CUDAGuard device_guard(q_in.device());
  const at::Tensor q = last_dim_dense(q_in), k = last_dim_dense(k_in);
  const at::Tensor rpb = checked_rpb(op, rpb_in, q_in, g);
  at::Tensor attn = at::empty(attn_shape(g), q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), op, [&] {
    launch_window_dot<scalar_t>(g, q, k, ptr_or_null<scalar_t>(rpb), attn);
  });
  return attn;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> na2d_qk_backward_cuda(
    const at::Tensor& grad_attn_in, const at::Tensor& q_in, const at::Tensor& k_in, bool has_rpb,
    at::IntArrayRef kernel_size, at::IntArrayRef dilation) {
  constexpr const char* op = "na2d_qk_backward_cuda";
  const Geometry g = check_geometry(op, q_in, kernel_size, dilation, NAT_MM_CUDA_DEVICE_TYPE);
  check_like(op, "k", k_in, q_in, q_in.sizes());
  check_like(op, "grad_attn", grad_attn_in, q_in, attn_shape(g));
  c10::cuda::CUDAGuard device_guard(q_in.device());
  const at::Tensor q = last_dim_dense(q_in), k = last_dim_dense(k_in);
  const at::Tensor grad_attn = grad_attn_in.contiguous();
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(q.sizes(), q.options());
  at::Tensor drpb;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), op, [&] {
    const scalar_t* w = grad_attn.const_data_ptr<scalar_t>();
    launch_window_sum<scalar_t, scalar_t>(g, w, k, 1.0, dq);
    launch_inverse_sum<scalar_t, scalar_t>(g, w, q, 1.0, dk);
    drpb =
        has_rpb ? reduce_drpb<scalar_t, scalar_t>(g, w, q.options()) : at::empty({0}, q.options());
  });
  return {dq, dk, drpb};
}

at::Tensor na2d_av_forward_cuda(const at::Tensor& attn_in, const at::Tensor& v_in,
                                at::IntArrayRef kernel_size, at::IntArrayRef dilation) {
  constexpr const char* op = "na2d_av_forward_cuda";
  const Geometry g = check_geometry(op, v_in, kernel_size, dilation, NAT_MM_CUDA_DEVICE_TYPE);
  check_like(op, "attn", attn_in, v_in, attn_shape(g));
  c10::cuda::CUDAGuard device_guard(v_in.device());
  const at::Tensor v = last_dim_dense(v_in), attn = attn_in.contiguous();
  at::Tensor out = at::empty(v.sizes(), v.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), op, [&] {
    launch_window_sum<scalar_t, scalar_t>(g, attn.const_data_ptr<scalar_t>(), v, 1.0, out);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> na2d_av_backward_cuda(const at::Tensor& grad_out_in,
                                                         const at::Tensor& attn_in,
                                                         const at::Tensor& v_in,
                                                         at::IntArrayRef kernel_size,
                                                         at::IntArrayRef dilation) {
  constexpr const char* op = "na2d_av_backward_cuda";
  const Geometry g = check_geometry(op, v_in, kernel_size, dilation, NAT_MM_CUDA_DEVICE_TYPE);
  check_like(op, "grad_out", grad_out_in, v_in, v_in.sizes());
  check_like(op, "attn", attn_in, v_in, attn_shape(g));
  c10::cuda::CUDAGuard device_guard(v_in.device());
  const at::Tensor v = last_dim_dense(v_in);
  const at::Tensor dout = grad_out_in.contiguous(), attn = attn_in.contiguous();
  at::Tensor dattn = at::empty(attn_shape(g), v.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), op, [&] {
    launch_window_dot<scalar_t>(g, dout, v, static_cast<const scalar_t*>(nullptr), dattn);
    launch_inverse_sum<scalar_t, scalar_t>(g, attn.const_data_ptr<scalar_t>(), dout, 1.0, dv);
  });
  return {dattn, dv};
}

}  // namespace nat_mm

TORCH_LIBRARY_IMPL(NAT_MM_CUDA_LIBRARY, NAT_MM_CUDA_KEY, m) {
  m.impl("na2d_forward", &nat_mm::na2d_forward_cuda);
  m.impl("na2d_backward", &nat_mm::na2d_backward_cuda);
  m.impl("na2d_qk_forward", &nat_mm::na2d_qk_forward_cuda);
  m.impl("na2d_qk_backward", &nat_mm::na2d_qk_backward_cuda);
  m.impl("na2d_av_forward", &nat_mm::na2d_av_forward_cuda);
  m.impl("na2d_av_backward", &nat_mm::na2d_av_backward_cuda);
}
