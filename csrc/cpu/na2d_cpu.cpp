// CPU kernels for 2-D neighborhood attention (schemas in ops.cpp, index maths in na2d_index.h).
//
// Forward: one fused pass per query (b, y, x, head): the kh*kw logits stay in a per-thread scratch
// buffer, max-subtracted softmax, then the weighted sum of V; nothing is copied kh*kw times.
// Backward: pass 1 per query recomputes P from the saved log-sum-exp and produces dQ and the
// logit gradients dS (kept as [B, H, W, heads, kh*kw], small next to K/V copies); pass 2 per key
// sums over its inverse neighbourhood to produce dK and dV, so there are no atomics. drpb is
// reduced through per-thread buffers summed in a fixed order (deterministic for a thread count).
// Work is split over B*H*W*heads with at::parallel_for; the D loops are written for the
// compiler to vectorise (q/k/v rows are contiguous along D).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "na2d_index.h"

namespace nat_mm {
namespace {

constexpr int64_t kGrain = 16;  // queries per parallel task: each costs kh*kw*D multiply-adds

struct Geometry {
  int64_t B, H, W, heads, D, kh, kw, dh, dw;
  int64_t kk() const { return kh * kw; }
  int64_t rpb_h() const { return 2 * kh - 1; }
  int64_t rpb_w() const { return 2 * kw - 1; }
  int64_t rows() const { return B * H * W * heads; }
};

// Decomposition of a flat query/key index over [B, H, W, heads].
struct Pos {
  int64_t b, y, x, n;
};

inline Pos unflatten(int64_t i, const Geometry& g) {
  Pos p;
  p.n = i % g.heads;
  i /= g.heads;
  p.x = i % g.W;
  i /= g.W;
  p.y = i % g.H;
  p.b = i / g.H;
  return p;
}

// A [B, H, W, heads, D] tensor with arbitrary strides on the first four axes and stride 1 on D.
template <typename T>
struct Rows {
  T* data;
  int64_t sb, sh, sw, sn;
  T* at(int64_t b, int64_t y, int64_t x, int64_t n) const {
    return data + b * sb + y * sh + x * sw + n * sn;
  }
  T* at(const Pos& p) const { return at(p.b, p.y, p.x, p.n); }
};

at::Tensor unit_last_stride(const at::Tensor& t) {
  return t.stride(-1) == 1 ? t : t.contiguous();
}

template <typename T>
Rows<T> rows_of(const at::Tensor& t) {
  return Rows<T>{t.data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// Per-axis tables from the shared index maths: window start of every query and the inverse
// neighbourhood [first, end) of every key.
struct AxisTables {
  std::vector<int64_t> start, inv_first, inv_end;
  AxisTables(int64_t L, int64_t k, int64_t d) : start(L), inv_first(L), inv_end(L) {
    for (int64_t i = 0; i < L; ++i) {
      start[i] = window_start(i, L, k, d);
      inv_first[i] = inverse_start(i, L, k, d);
      inv_end[i] = inverse_end(i, L, k, d);
    }
  }
};

struct Tables {
  AxisTables rows, cols;
  explicit Tables(const Geometry& g) : rows(g.H, g.kh, g.dh), cols(g.W, g.kw, g.dw) {}
};

void check_pair(const char* op, const char* name, at::IntArrayRef v, int64_t min_value) {
  TORCH_CHECK(v.size() == 2, op, ": ", name, " must have 2 values, got ", v);
  TORCH_CHECK(v[0] >= min_value && v[1] >= min_value, op, ": ", name, " must be >= ", min_value,
              ", got ", v);
}

Geometry make_geometry(const char* op, const at::Tensor& t, at::IntArrayRef kernel_size,
                       at::IntArrayRef dilation) {
  TORCH_CHECK(t.dim() == 5, op, ": expected [B, H, W, heads, D], got shape ", t.sizes());
  TORCH_CHECK(t.device().is_cpu(), op, ": expected CPU tensors, got ", t.device());
  check_pair(op, "kernel_size", kernel_size, 1);
  check_pair(op, "dilation", dilation, 1);
  TORCH_CHECK(kernel_size[0] % 2 == 1 && kernel_size[1] % 2 == 1, op,
              ": kernel_size must be odd, got ", kernel_size);
  Geometry g{t.size(0), t.size(1), t.size(2), t.size(3), t.size(4),
             kernel_size[0], kernel_size[1], dilation[0], dilation[1]};
  TORCH_CHECK(g.H >= g.kh * g.dh && g.W >= g.kw * g.dw, op,
              ": kernel_size * dilation must be <= the map size on each axis, got kernel_size=",
              kernel_size, ", dilation=", dilation, ", (H, W)=(", g.H, ", ", g.W, ")");
  return g;
}

void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref,
                at::IntArrayRef shape) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on ", ref.device(), ", got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have dtype ",
              ref.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ",
              t.sizes());
}

void check_rpb(const char* op, const at::Tensor& rpb, const at::Tensor& q, const Geometry& g) {
  check_like(op, "rpb", rpb, q, {g.heads, g.rpb_h(), g.rpb_w()});
}

std::vector<int64_t> attn_shape(const Geometry& g) { return {g.B, g.H, g.W, g.heads, g.kk()}; }

// Runs fn(pos, flat_index, scratch) for every row of [B, H, W, heads] in parallel; scratch is a
// per-task buffer of scratch_size values.
template <typename Acc, typename Fn>
void for_each_row(const Geometry& g, int64_t scratch_size, const Fn& fn) {
  at::parallel_for(0, g.rows(), kGrain, [&](int64_t begin, int64_t end) {
    std::vector<Acc> scratch(scratch_size);
    for (int64_t i = begin; i < end; ++i) fn(unflatten(i, g), i, scratch.data());
  });
}

template <typename Acc, typename T>
inline Acc dot(const T* a, const T* b, int64_t D) {
  Acc s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t d = 0; d < D; ++d) s += static_cast<Acc>(a[d]) * static_cast<Acc>(b[d]);
  return s;
}

template <typename Acc, typename T>
inline void axpy(Acc w, const T* x, Acc* acc, int64_t D) {
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) acc[d] += w * static_cast<Acc>(x[d]);
}

template <typename Acc, typename T>
inline void store(const Acc* acc, Acc scale, T* out, int64_t D) {
  for (int64_t d = 0; d < D; ++d) out[d] = static_cast<T>(acc[d] * scale);
}

// x[t] = exp(x[t] - shift), in a loop the compiler can vectorise (libmvec, -fno-math-errno).
template <typename Acc>
inline void exp_shifted(Acc* x, Acc shift, int64_t n) {
#pragma omp simd
  for (int64_t t = 0; t < n; ++t) x[t] = std::exp(x[t] - shift);
}

// Calls f(std::integral_constant<int64_t, D>) for the head dims NAT uses (16, 32, 64), so the D
// loops unroll and the accumulators stay in registers; f(integral_constant<0>) otherwise, where
// the loops take the runtime D.
template <typename Fn>
inline void with_head_dim(int64_t D, const Fn& fn) {
  switch (D) {
    case 16: return fn(std::integral_constant<int64_t, 16>{});
    case 32: return fn(std::integral_constant<int64_t, 32>{});
    case 64: return fn(std::integral_constant<int64_t, 64>{});
    default: return fn(std::integral_constant<int64_t, 0>{});
  }
}

// logits[t] = x . y[neighbour t] for the window of query p (slot t = ki * kw + kj).
template <typename Acc, typename T>
inline void window_dots(const T* x, const Rows<T>& y, const Pos& p, const Geometry& g,
                        const Tables& tab, Acc* logits) {
  const int64_t ys = tab.rows.start[p.y], xs = tab.cols.start[p.x];
  with_head_dim(g.D, [&](auto dim) {
    const int64_t D = dim.value ? dim.value : g.D;
    for (int64_t ki = 0; ki < g.kh; ++ki) {
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        logits[ki * g.kw + kj] = dot<Acc>(x, y.at(p.b, ys + ki * g.dh, xs + kj * g.dw, p.n), D);
      }
    }
  });
}

// acc[0:D] += sum of w_t * row_t over the rows that each(visit) visits, visit(w, row) being called
// by each() for every term. With a fixed D the running sum lives in a local array (registers).
template <typename Acc, typename T, typename Each>
inline void accumulate_rows(int64_t runtime_D, Acc* acc, const Each& each) {
  with_head_dim(runtime_D, [&](auto dim) {
    constexpr int64_t kD = decltype(dim)::value;
    if constexpr (kD > 0) {
      Acc local[kD] = {};
      each([&](Acc w, const T* row) { axpy(w, row, local, kD); });
      for (int64_t d = 0; d < kD; ++d) acc[d] += local[d];
    } else {
      each([&](Acc w, const T* row) { axpy(w, row, acc, runtime_D); });
    }
  });
}

// acc += sum_t w[t] * y[neighbour t] over the window of query p.
template <typename Acc, typename T>
inline void window_sum(const Acc* w, const Rows<T>& y, const Pos& p, const Geometry& g,
                       const Tables& tab, Acc* acc) {
  const int64_t ys = tab.rows.start[p.y], xs = tab.cols.start[p.x];
  accumulate_rows<Acc, T>(g.D, acc, [&](const auto& visit) {
    for (int64_t ki = 0; ki < g.kh; ++ki) {
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        visit(w[ki * g.kw + kj], y.at(p.b, ys + ki * g.dh, xs + kj * g.dw, p.n));
      }
    }
  });
}

// acc += sum over the queries i whose window holds key p of w[i, slot of p] * x[i], where w is a
// contiguous [B, H, W, heads, kh*kw] buffer.
template <typename Acc, typename W, typename T>
inline void inverse_sum(const W* w, const Rows<T>& x, const Pos& p, const Geometry& g,
                        const Tables& tab, Acc* acc) {
  accumulate_rows<Acc, T>(g.D, acc, [&](const auto& visit) {
    for (int64_t qy = tab.rows.inv_first[p.y]; qy < tab.rows.inv_end[p.y]; qy += g.dh) {
      const int64_t ki = (p.y - tab.rows.start[qy]) / g.dh;
      for (int64_t qx = tab.cols.inv_first[p.x]; qx < tab.cols.inv_end[p.x]; qx += g.dw) {
        const int64_t kj = (p.x - tab.cols.start[qx]) / g.dw;
        const int64_t row = ((p.b * g.H + qy) * g.W + qx) * g.heads + p.n;
        visit(static_cast<Acc>(w[row * g.kk() + ki * g.kw + kj]), x.at(p.b, qy, qx, p.n));
      }
    }
  });
}

// Offset into one head's rpb table for slot (ki, kj) of query p.
inline int64_t rpb_offset(const Pos& p, int64_t ki, int64_t kj, const Geometry& g,
                          const Tables& tab) {
  const int64_t bi = rpb_index(p.y, tab.rows.start[p.y] + ki * g.dh, g.kh, g.dh);
  const int64_t bj = rpb_index(p.x, tab.cols.start[p.x] + kj * g.dw, g.kw, g.dw);
  return bi * g.rpb_w() + bj;
}

// Adds rpb[head] to the logits of query p.
template <typename Acc, typename T>
inline void add_rpb(const T* rpb, const Pos& p, const Geometry& g, const Tables& tab,
                    Acc* logits) {
  const T* table = rpb + p.n * g.rpb_h() * g.rpb_w();
  for (int64_t ki = 0; ki < g.kh; ++ki)
    for (int64_t kj = 0; kj < g.kw; ++kj)
      logits[ki * g.kw + kj] += static_cast<Acc>(table[rpb_offset(p, ki, kj, g, tab)]);
}

// Deterministic d-rpb: each parallel task sums into its own thread's buffer; buffers are added in
// thread order at the end.
template <typename Acc>
struct RpbGrad {
  const Geometry& g;
  int64_t size;
  std::vector<std::vector<Acc>> per_thread;
  explicit RpbGrad(const Geometry& geom)
      : g(geom), size(geom.heads * geom.rpb_h() * geom.rpb_w()),
        per_thread(at::get_num_threads(), std::vector<Acc>(size, Acc(0))) {}
  void add(const Acc* dlogits, const Pos& p, const Tables& tab) {
    Acc* buf = per_thread[at::get_thread_num()].data() + p.n * g.rpb_h() * g.rpb_w();
    for (int64_t ki = 0; ki < g.kh; ++ki)
      for (int64_t kj = 0; kj < g.kw; ++kj)
        buf[rpb_offset(p, ki, kj, g, tab)] += dlogits[ki * g.kw + kj];
  }
  at::Tensor result(const at::TensorOptions& options) const {
    at::Tensor out = at::zeros({g.heads, g.rpb_h(), g.rpb_w()},
                               options.dtype(c10::CppTypeToScalarType<Acc>::value));
    Acc* o = out.data_ptr<Acc>();
    for (const auto& buf : per_thread)
      for (int64_t i = 0; i < size; ++i) o[i] += buf[i];
    return out.to(options.dtype());
  }
};

at::ScalarType opmath_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// ---------------------------------------------------------------------------------------------
// Fused attention

std::tuple<at::Tensor, at::Tensor> na2d_forward_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                    const at::Tensor& v_in,
                                                    const std::optional<at::Tensor>& rpb_in,
                                                    at::IntArrayRef kernel_size,
                                                    at::IntArrayRef dilation, double scale) {
  constexpr const char* op = "na2d_forward_cpu";
  const Geometry g = make_geometry(op, q_in, kernel_size, dilation);
  check_like(op, "k", k_in, q_in, q_in.sizes());
  check_like(op, "v", v_in, q_in, q_in.sizes());
  at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
  at::Tensor rpb;
  if (rpb_in.has_value()) {
    check_rpb(op, *rpb_in, q_in, g);
    rpb = rpb_in->contiguous();
  }
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({g.B, g.H, g.W, g.heads}, q.options().dtype(opmath_dtype(q.scalar_type())));
  const Tables tab(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), op, [&] {
    using Acc = at::opmath_type<scalar_t>;
    const auto Q = rows_of<scalar_t>(q), K = rows_of<scalar_t>(k), V = rows_of<scalar_t>(v);
    const auto O = rows_of<scalar_t>(out);
    const scalar_t* bias = rpb.defined() ? rpb.data_ptr<scalar_t>() : nullptr;
    Acc* lse_ptr = lse.data_ptr<Acc>();
    for_each_row<Acc>(g, g.kk() + g.D, [&](const Pos& p, int64_t row, Acc* scratch) {
      Acc* logits = scratch;
      Acc* acc = scratch + g.kk();
      window_dots(Q.at(p), K, p, g, tab, logits);
      Acc max_logit = -std::numeric_limits<Acc>::infinity();
      for (int64_t t = 0; t < g.kk(); ++t) {
        logits[t] *= static_cast<Acc>(scale);
        if (bias == nullptr) max_logit = std::max(max_logit, logits[t]);
      }
      if (bias != nullptr) {
        add_rpb(bias, p, g, tab, logits);
        for (int64_t t = 0; t < g.kk(); ++t) max_logit = std::max(max_logit, logits[t]);
      }
      exp_shifted(logits, max_logit, g.kk());
      Acc sum = 0;
      for (int64_t t = 0; t < g.kk(); ++t) sum += logits[t];
      std::fill(acc, acc + g.D, Acc(0));
      window_sum(logits, V, p, g, tab, acc);
      store(acc, Acc(1) / sum, O.at(p), g.D);
      lse_ptr[row] = max_logit + std::log(sum);
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> na2d_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const std::optional<at::Tensor>& rpb_in, const at::Tensor& out_in,
    const at::Tensor& lse_in, at::IntArrayRef kernel_size, at::IntArrayRef dilation,
    double scale) {
  constexpr const char* op = "na2d_backward_cpu";
  const Geometry g = make_geometry(op, q_in, kernel_size, dilation);
  for (auto [name, t] : {std::pair{"k", &k_in}, {"v", &v_in}, {"out", &out_in},
                         {"grad_out", &grad_out_in}})
    check_like(op, name, *t, q_in, q_in.sizes());
  TORCH_CHECK(lse_in.sizes() == at::IntArrayRef({g.B, g.H, g.W, g.heads}) &&
                  lse_in.scalar_type() == opmath_dtype(q_in.scalar_type()),
              op, ": lse must be [B, H, W, heads] of the op-math dtype, got ", lse_in.sizes(), " ",
              lse_in.scalar_type());
  at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
  at::Tensor out = unit_last_stride(out_in), dout = unit_last_stride(grad_out_in);
  at::Tensor lse = lse_in.contiguous(), rpb;
  if (rpb_in.has_value()) {
    check_rpb(op, *rpb_in, q_in, g);
    rpb = rpb_in->contiguous();
  }
  at::Tensor dq = at::empty(q.sizes(), q.options()), dk = at::empty(q.sizes(), q.options());
  at::Tensor dv = at::empty(q.sizes(), q.options()), drpb = at::empty({0}, q.options());
  const auto acc_options = q.options().dtype(opmath_dtype(q.scalar_type()));
  at::Tensor probs = at::empty(attn_shape(g), acc_options);
  at::Tensor dlogits = at::empty(attn_shape(g), acc_options);
  const Tables tab(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), op, [&] {
    using Acc = at::opmath_type<scalar_t>;
    const auto Q = rows_of<scalar_t>(q), K = rows_of<scalar_t>(k), V = rows_of<scalar_t>(v);
    const auto O = rows_of<scalar_t>(out), dO = rows_of<scalar_t>(dout);
    const auto dQ = rows_of<scalar_t>(dq), dK = rows_of<scalar_t>(dk), dV = rows_of<scalar_t>(dv);
    const scalar_t* bias = rpb.defined() ? rpb.data_ptr<scalar_t>() : nullptr;
    const Acc* lse_ptr = lse.data_ptr<Acc>();
    Acc* P = probs.data_ptr<Acc>();
    Acc* dS = dlogits.data_ptr<Acc>();
    const Acc s = static_cast<Acc>(scale);
    RpbGrad<Acc> rpb_grad(g);
    // Pass 1, per query: P, dS = P * (dO.V - dO.O), dQ = scale * dS @ K.
    for_each_row<Acc>(g, g.D, [&](const Pos& p, int64_t row, Acc* acc) {
      Acc* p_row = P + row * g.kk();
      Acc* ds_row = dS + row * g.kk();
      window_dots(Q.at(p), K, p, g, tab, p_row);
      for (int64_t t = 0; t < g.kk(); ++t) p_row[t] *= s;
      if (bias != nullptr) add_rpb(bias, p, g, tab, p_row);
      exp_shifted(p_row, lse_ptr[row], g.kk());
      window_dots(dO.at(p), V, p, g, tab, ds_row);
      const Acc delta = dot<Acc>(dO.at(p), O.at(p), g.D);
      for (int64_t t = 0; t < g.kk(); ++t) ds_row[t] = p_row[t] * (ds_row[t] - delta);
      std::fill(acc, acc + g.D, Acc(0));
      window_sum(ds_row, K, p, g, tab, acc);
      store(acc, s, dQ.at(p), g.D);
      if (bias != nullptr) rpb_grad.add(ds_row, p, tab);
    });
    // Pass 2, per key: dK = scale * sum dS * q, dV = sum P * dO over the inverse neighbourhood.
    for_each_row<Acc>(g, 2 * g.D, [&](const Pos& p, int64_t, Acc* acc) {
      std::fill(acc, acc + 2 * g.D, Acc(0));
      inverse_sum(dS, Q, p, g, tab, acc);
      inverse_sum(P, dO, p, g, tab, acc + g.D);
      store(acc, s, dK.at(p), g.D);
      store(acc + g.D, Acc(1), dV.at(p), g.D);
    });
    if (bias != nullptr) drpb = rpb_grad.result(q.options());
  });
  return {dq, dk, dv, drpb};
}

// ---------------------------------------------------------------------------------------------
// Unfused ops: attn = q.k + rpb, out = attn @ v

at::Tensor na2d_qk_forward_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                               const std::optional<at::Tensor>& rpb_in,
                               at::IntArrayRef kernel_size, at::IntArrayRef dilation) {
  constexpr const char* op = "na2d_qk_forward_cpu";
  const Geometry g = make_geometry(op, q_in, kernel_size, dilation);
  check_like(op, "k", k_in, q_in, q_in.sizes());
  at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), rpb;
  if (rpb_in.has_value()) {
    check_rpb(op, *rpb_in, q_in, g);
    rpb = rpb_in->contiguous();
  }
  at::Tensor attn = at::empty(attn_shape(g), q.options());
  const Tables tab(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), op, [&] {
    using Acc = at::opmath_type<scalar_t>;
    const auto Q = rows_of<scalar_t>(q), K = rows_of<scalar_t>(k);
    const scalar_t* bias = rpb.defined() ? rpb.data_ptr<scalar_t>() : nullptr;
    scalar_t* A = attn.data_ptr<scalar_t>();
    for_each_row<Acc>(g, g.kk(), [&](const Pos& p, int64_t row, Acc* logits) {
      window_dots(Q.at(p), K, p, g, tab, logits);
      if (bias != nullptr) add_rpb(bias, p, g, tab, logits);
      store(logits, Acc(1), A + row * g.kk(), g.kk());
    });
  });
  return attn;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> na2d_qk_backward_cpu(
    const at::Tensor& grad_attn_in, const at::Tensor& q_in, const at::Tensor& k_in, bool has_rpb,
    at::IntArrayRef kernel_size, at::IntArrayRef dilation) {
  constexpr const char* op = "na2d_qk_backward_cpu";
  const Geometry g = make_geometry(op, q_in, kernel_size, dilation);
  check_like(op, "k", k_in, q_in, q_in.sizes());
  check_like(op, "grad_attn", grad_attn_in, q_in, attn_shape(g));
  at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in);
  at::Tensor grad_attn = grad_attn_in.contiguous();
  at::Tensor dq = at::empty(q.sizes(), q.options()), dk = at::empty(q.sizes(), q.options());
  at::Tensor drpb = at::empty({0}, q.options());
  const Tables tab(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), op, [&] {
    using Acc = at::opmath_type<scalar_t>;
    const auto Q = rows_of<scalar_t>(q), K = rows_of<scalar_t>(k);
    const auto dQ = rows_of<scalar_t>(dq), dK = rows_of<scalar_t>(dk);
    const scalar_t* G = grad_attn.data_ptr<scalar_t>();
    RpbGrad<Acc> rpb_grad(g);
    for_each_row<Acc>(g, g.kk() + g.D, [&](const Pos& p, int64_t row, Acc* scratch) {
      Acc* grad = scratch;
      Acc* acc = scratch + g.kk();
      for (int64_t t = 0; t < g.kk(); ++t) grad[t] = static_cast<Acc>(G[row * g.kk() + t]);
      std::fill(acc, acc + g.D, Acc(0));
      window_sum(grad, K, p, g, tab, acc);
      store(acc, Acc(1), dQ.at(p), g.D);
      if (has_rpb) rpb_grad.add(grad, p, tab);
    });
    for_each_row<Acc>(g, g.D, [&](const Pos& p, int64_t, Acc* acc) {
      std::fill(acc, acc + g.D, Acc(0));
      inverse_sum(G, Q, p, g, tab, acc);
      store(acc, Acc(1), dK.at(p), g.D);
    });
    if (has_rpb) drpb = rpb_grad.result(q.options());
  });
  return {dq, dk, drpb};
}

at::Tensor na2d_av_forward_cpu(const at::Tensor& attn_in, const at::Tensor& v_in,
                               at::IntArrayRef kernel_size, at::IntArrayRef dilation) {
  constexpr const char* op = "na2d_av_forward_cpu";
  const Geometry g = make_geometry(op, v_in, kernel_size, dilation);
  check_like(op, "attn", attn_in, v_in, attn_shape(g));
  at::Tensor v = unit_last_stride(v_in), attn = attn_in.contiguous();
  at::Tensor out = at::empty(v.sizes(), v.options());
  const Tables tab(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), op, [&] {
    using Acc = at::opmath_type<scalar_t>;
    const auto V = rows_of<scalar_t>(v), O = rows_of<scalar_t>(out);
    const scalar_t* A = attn.data_ptr<scalar_t>();
    for_each_row<Acc>(g, g.kk() + g.D, [&](const Pos& p, int64_t row, Acc* scratch) {
      Acc* w = scratch;
      Acc* acc = scratch + g.kk();
      for (int64_t t = 0; t < g.kk(); ++t) w[t] = static_cast<Acc>(A[row * g.kk() + t]);
      std::fill(acc, acc + g.D, Acc(0));
      window_sum(w, V, p, g, tab, acc);
      store(acc, Acc(1), O.at(p), g.D);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> na2d_av_backward_cpu(const at::Tensor& grad_out_in,
                                                        const at::Tensor& attn_in,
                                                        const at::Tensor& v_in,
                                                        at::IntArrayRef kernel_size,
                                                        at::IntArrayRef dilation) {
  constexpr const char* op = "na2d_av_backward_cpu";
  const Geometry g = make_geometry(op, v_in, kernel_size, dilation);
  check_like(op, "attn", attn_in, v_in, attn_shape(g));
  check_like(op, "grad_out", grad_out_in, v_in, v_in.sizes());
  at::Tensor v = unit_last_stride(v_in), attn = attn_in.contiguous();
  at::Tensor dout = unit_last_stride(grad_out_in);
  at::Tensor dattn = at::empty(attn_shape(g), v.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  const Tables tab(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), op, [&] {
    using Acc = at::opmath_type<scalar_t>;
    const auto V = rows_of<scalar_t>(v), dO = rows_of<scalar_t>(dout);
    const auto dV = rows_of<scalar_t>(dv);
    const scalar_t* A = attn.data_ptr<scalar_t>();
    scalar_t* dA = dattn.data_ptr<scalar_t>();
    for_each_row<Acc>(g, g.kk(), [&](const Pos& p, int64_t row, Acc* grad) {
      window_dots(dO.at(p), V, p, g, tab, grad);
      store(grad, Acc(1), dA + row * g.kk(), g.kk());
    });
    for_each_row<Acc>(g, g.D, [&](const Pos& p, int64_t, Acc* acc) {
      std::fill(acc, acc + g.D, Acc(0));
      inverse_sum(A, dO, p, g, tab, acc);
      store(acc, Acc(1), dV.at(p), g.D);
    });
  });
  return {dattn, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(nat_mm, CPU, m) {
  m.impl("na2d_forward", &na2d_forward_cpu);
  m.impl("na2d_backward", &na2d_backward_cpu);
  m.impl("na2d_qk_forward", &na2d_qk_forward_cpu);
  m.impl("na2d_qk_backward", &na2d_qk_backward_cpu);
  m.impl("na2d_av_forward", &na2d_av_forward_cpu);
  m.impl("na2d_av_backward", &na2d_av_backward_cpu);
}

}  // namespace nat_mm
