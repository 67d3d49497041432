// CPU kernels for 2-D neighborhood attention (schemas in ops.cpp, index maths in na2d_index.h).
//
// Forward: one fused pass per query (b, y, x, head): the kh*kw logits stay in a per-thread scratch
// buffer, max-subtracted softmax, then the weighted sum of V; nothing is copied kh*kw times.
// Backward: pass 1 per query recomputes P from the saved log-sum-exp and produces dQ and the
// logit gradients dS (P and dS kept as [B, heads, H, kh*kw, W], small next to K/V copies); pass 2
// per key sums over its inverse neighbourhood to produce dK and dV, so there are no atomics. drpb
// is reduced through per-thread buffers summed in a fixed order (deterministic for a thread
// count).
//
// Two paths compute the same maths. Interior queries (and keys) of a map row go through "lane
// tiles" (see the section of that name): kLanes neighbours at once, one SIMD lane each, against
// K/V rows transposed to [D][W] per band of rows, so that q.k needs no horizontal sums. Queries
// near the ends of a row and the leftovers take the per-query path, whose D loops the compiler
// vectorises (q/k/v rows are contiguous along D). Parallel work: bands of map rows of one (batch,
// head) for the fused ops, B*H*W*heads rows for the unfused qk/av ops.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__AVX__)
#include <immintrin.h>  // only the AVX transpose uses it; other CPUs take the element loop
#endif

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "na2d_checks.h"
#include "na2d_index.h"

namespace nat_mm {
namespace {

constexpr int64_t kGrain = 16;  // queries per parallel task: each costs kh*kw*D multiply-adds

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

// Per-axis tables from the shared index maths, so the inner loops do no integer division:
// window start of every query, its rpb index for slot 0 (slot t adds t), the start's index in its
// residue group, and the inverse neighbourhood [first, end) of every key. For a key j in the
// window of query i (same residue group), window_slot(i, j) = j / d - start_group[i].
struct AxisTables {
  std::vector<int64_t> start, rpb_base, start_group, inv_first, inv_end;
  AxisTables(int64_t L, int64_t k, int64_t d)
      : start(L), rpb_base(L), start_group(L), inv_first(L), inv_end(L) {
    for (int64_t i = 0; i < L; ++i) {
      start[i] = window_start(i, L, k, d);
      rpb_base[i] = rpb_index(i, start[i], k, d);
      start_group[i] = start[i] / d;
      inv_first[i] = inverse_start(i, L, k, d);
      inv_end[i] = inverse_end(i, L, k, d);
    }
  }
};

struct Tables {
  AxisTables rows, cols;
  explicit Tables(const Geometry& g) : rows(g.H, g.kh, g.dh), cols(g.W, g.kw, g.dw) {}
};

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

// exp that the compiler can vectorise (libm's expf is a scalar call here; glibc declares its
// vector variants only under -ffast-math). x = n ln2 + r with |r| <= ln2 / 2, e^r from the
// degree-7 polynomial of Cephes' expf, 2^n written into the exponent bits. Relative error below
// 1e-7 (tests/ops/test_ops.py checks every kernel against a float64 oracle); underflows to 0,
// overflows to inf and passes NaN through like std::exp. Needs -fno-trapping-math to vectorise.
inline float vec_exp(float x) {
  float xc = x < -87.3f ? -87.3f : x;
  xc = xc > 88.3f ? 88.3f : xc;
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;  // ln2 in two parts
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  poly = poly * r * r + r + 1.0f;
  const float two_n = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  float result = poly * two_n;
  result = x < -87.3f ? 0.0f : result;
  result = x > 88.3f ? std::numeric_limits<float>::infinity() : result;
  return x != x ? x : result;
}
inline double vec_exp(double x) { return std::exp(x); }

// x[t] = exp(x[t] - shift)
template <typename Acc>
inline void exp_shifted(Acc* x, Acc shift, int64_t n) {
#pragma omp simd
  for (int64_t t = 0; t < n; ++t) x[t] = vec_exp(x[t] - shift);
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

// acc += sum over the queries i whose window holds key p of w(i, slot of p) * x[i], where
// w_at(qy, qx, slot) reads the attention value of query (p.b, qy, qx, p.n).
template <typename Acc, typename T, typename WeightAt>
inline void inverse_sum(const WeightAt& w_at, const Rows<T>& x, const Pos& p, const Geometry& g,
                        const Tables& tab, Acc* acc) {
  accumulate_rows<Acc, T>(g.D, acc, [&](const auto& visit) {
    const int64_t key_group_y = p.y / g.dh, key_group_x = p.x / g.dw;
    for (int64_t qy = tab.rows.inv_first[p.y]; qy < tab.rows.inv_end[p.y]; qy += g.dh) {
      const int64_t ki = key_group_y - tab.rows.start_group[qy];
      for (int64_t qx = tab.cols.inv_first[p.x]; qx < tab.cols.inv_end[p.x]; qx += g.dw) {
        const int64_t kj = key_group_x - tab.cols.start_group[qx];
        visit(static_cast<Acc>(w_at(qy, qx, ki * g.kw + kj)), x.at(p.b, qy, qx, p.n));
      }
    }
  });
}

// w_at for a [B, H, W, heads, kh*kw] attention tensor, at the batch and head of p.
template <typename W>
auto attention_rows(const W* w, const Pos& p, const Geometry& g) {
  return [=, &g](int64_t qy, int64_t qx, int64_t slot) {
    return w[(((p.b * g.H + qy) * g.W + qx) * g.heads + p.n) * g.kk() + slot];
  };
}

// Offset into one head's rpb table for slot (ki, kj) of query p.
inline int64_t rpb_offset(const Pos& p, int64_t ki, int64_t kj, const Geometry& g,
                          const Tables& tab) {
  return (tab.rows.rpb_base[p.y] + ki) * g.rpb_w() + tab.cols.rpb_base[p.x] + kj;
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
  // This thread's [heads, 2kh-1, 2kw-1] buffer.
  Acc* buffer() { return per_thread[at::get_thread_num()].data(); }
  void add(const Acc* dlogits, const Pos& p, const Tables& tab) {
    Acc* buf = buffer() + p.n * g.rpb_h() * g.rpb_w();
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


// ---------------------------------------------------------------------------------------------
// Lane tiles: the interior of every map row, kLanes queries at a time.
//
// The per-query path above spends most of its time in horizontal reductions (one per q.k dot).
// Along a map row, the queries of one residue class c that are at least r groups away from both
// ends of their class have windows of the same shape, shifted by one group per query. So kLanes
// such queries are handled together, one SIMD lane each: in K (and V) rows transposed to [D][W']
// (LaneRows), with the columns of each residue class made contiguous (the W' order), the key of
// slot (ki, kj) for lane l sits at column col0 + kj + l. Every multiply-add is then a contiguous
// vector load and a lane-wise FMA, and the rpb index of a slot is the same for every lane.
// Queries near the ends of a class, and leftovers, take the per-query path. The backward's
// pass 2 does the same for keys, with Q and dO rows transposed and P and dS stored in the W'
// order.

template <typename Acc>
constexpr int64_t kLanes = 32 / sizeof(Acc);  // one 256-bit register

// Column order of the lane copies: residue class c of the W axis occupies W' columns
// [offset[c], offset[c] + length[c]), in group order.
struct LaneColumns {
  int64_t W = 0, d = 1;
  std::vector<int64_t> offset, length, column_of;  // column_of[x]: W' column of map column x
  LaneColumns(int64_t W_, int64_t d_) : W(W_), d(d_) {
    int64_t next = 0;
    for (int64_t c = 0; c < d; ++c) {
      offset.push_back(next);
      length.push_back((W - c + d - 1) / d);
      next += length.back();
    }
    for (int64_t x = 0; x < W; ++x) column_of.push_back(offset[x % d] + x / d);
  }
  // Lane tiles of class c start at group `margin` and end at or before group length - margin;
  // returns how many there are.
  int64_t tiles(int64_t c, int64_t margin, int64_t lanes) const {
    const int64_t inner = length[c] - 2 * margin;
    return inner > 0 ? inner / lanes : 0;
  }
};

// Rows of one head are heads * D values apart; with several heads the hardware prefetcher does
// not run far enough ahead along such strides and every row read waits on memory. So the loops
// that walk rows kLanes at a time prefetch the rows of their next kLanes, all their cache lines.

template <typename T>
inline void prefetch_row(const T* row, int64_t D) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t byte = 0; byte < D * static_cast<int64_t>(sizeof(T)); byte += 64)
    __builtin_prefetch(p + byte);
}

// Block transposes between kLanes rows of D values (one per query or key) and the lane layout
// [D][kLanes]: out[a][b] = in[b][a] * scale for a, b < kLanes. On float with AVX it is eight
// loads, 24 shuffles and eight stores instead of 64 scalar moves.
template <typename Out, typename In, typename S>
inline void transpose_block(const In* const* in, Out* const* out, S scale) {
  constexpr int64_t N = kLanes<S>;
#if defined(__AVX__)
  if constexpr (std::is_same_v<In, float> && std::is_same_v<Out, float> &&
                std::is_same_v<S, float>) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(in[i]);
    for (int i = 0; i < 8; i += 2) {  // pairs of rows interleaved: (r0 r1) -> a0 b0 a1 b1 ...
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {  // then quadruples: columns 0-1 / 2-3 of four rows
      r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
      r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
      r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    const __m256 s = _mm256_set1_ps(scale);
    for (int i = 0; i < 4; ++i) {  // 128-bit halves: rows 0-3 low, rows 4-7 high
      _mm256_storeu_ps(out[i], _mm256_mul_ps(_mm256_permute2f128_ps(r[i], r[i + 4], 0x20), s));
      _mm256_storeu_ps(out[i + 4],
                       _mm256_mul_ps(_mm256_permute2f128_ps(r[i], r[i + 4], 0x31), s));
    }
    return;
  }
#endif
  for (int64_t a = 0; a < N; ++a)
    for (int64_t b = 0; b < N; ++b) out[a][b] = static_cast<Out>(static_cast<S>(in[b][a]) * scale);
}

// lanes[d * ld + l] = rows[l][d] for l < kLanes<Acc>, d < D: kLanes rows into the lane layout.
template <typename Acc, typename T>
inline void transpose_rows(const T* const* rows, int64_t D, Acc* lanes, int64_t ld) {
  constexpr int64_t L = kLanes<Acc>;
  const T* in[L];
  Acc* out[L];
  int64_t d0 = 0;
  for (; d0 + L <= D; d0 += L) {
    for (int64_t i = 0; i < L; ++i) {
      in[i] = rows[i] + d0;
      out[i] = lanes + (d0 + i) * ld;
    }
    transpose_block(in, out, Acc(1));
  }
  for (; d0 < D; ++d0)
    for (int64_t l = 0; l < L; ++l) lanes[d0 * ld + l] = static_cast<Acc>(rows[l][d0]);
}

// rows[l][d] = lanes[d * kLanes + l] * scale: a [D][kLanes] tile back into kLanes rows.
template <typename Acc, typename T>
inline void transpose_lanes(const Acc* lanes, int64_t D, Acc scale, T* const* rows) {
  constexpr int64_t L = kLanes<Acc>;
  const Acc* in[L];
  T* out[L];
  int64_t d0 = 0;
  for (; d0 + L <= D; d0 += L) {
    for (int64_t i = 0; i < L; ++i) {
      in[i] = lanes + (d0 + i) * L;
      out[i] = rows[i] + d0;
    }
    transpose_block(in, out, scale);
  }
  for (; d0 < D; ++d0)
    for (int64_t l = 0; l < L; ++l) rows[l][d0] = static_cast<T>(lanes[d0 * L + l] * scale);
}

// Lane rows: for one batch b and head n, the map rows c + j * dh (j in [first, end)) of one residue
// class of a [B, H, W, heads, D] tensor, each transposed to [D][W'] in the op-math dtype. Each
// parallel task fills the rows its band of queries (or keys) needs: the transposes stay in cache
// and nothing map-sized is allocated.
template <typename Acc>
struct LaneRows {
  std::vector<Acc> data;
  int64_t D = 0, Wp = 0, dh = 1, c = 0, first = 0;
  int64_t row_size() const { return D * Wp; }
  // The lane row of map row y (of class c, within the filled range).
  const Acc* row(int64_t y) const { return data.data() + ((y - c) / dh - first) * row_size(); }
  template <typename T>
  void fill(const Rows<T>& src, const Geometry& g, const LaneColumns& cols, int64_t b, int64_t n,
            int64_t c_, int64_t first_, int64_t end) {
    D = g.D, Wp = g.W, dh = g.dh, c = c_, first = first_;
    data.resize((end - first) * row_size());
    constexpr int64_t L = kLanes<Acc>;
    for (int64_t j = first; j < end; ++j) {
      const int64_t y = c + j * dh;
      Acc* out = data.data() + (j - first) * row_size();
      for (int64_t cx = 0; cx < cols.d; ++cx) {
        // L columns of class cx at a time, as L x L block transposes of their rows
        auto x_of = [&](int64_t group) { return cx + group * cols.d; };
        int64_t g0 = 0;
        for (; g0 + L <= cols.length[cx]; g0 += L) {
          const T* in[L];
          for (int64_t l = 0; l < L; ++l) {
            in[l] = src.at(b, y, x_of(g0 + l), n);
            if (g0 + L + l < cols.length[cx]) prefetch_row(src.at(b, y, x_of(g0 + L + l), n), D);
          }
          transpose_rows(in, D, out + cols.offset[cx] + g0, Wp);
        }
        for (; g0 < cols.length[cx]; ++g0) {
          const T* in = src.at(b, y, x_of(g0), n);
          Acc* column = out + cols.offset[cx] + g0;
          for (int64_t d = 0; d < D; ++d) column[d * Wp] = static_cast<Acc>(in[d]);
        }
      }
    }
  }
};

// The unit of parallel work of the lane kernels: map rows c + j * dh, j in [j0, j1), of batch b
// and head n (one residue class of the rows, so their windows span few rows).
struct Band {
  int64_t b, n, c, j0, j1;
};

// Runs fn(band, scratch, lane_rows_a, lane_rows_b) for bands of rows, in parallel; the scratch
// buffer (scratch_size values) and the two LaneRows are per task and reused. A band fills the
// lane rows of its windows, kh - 1 more than it has rows: bands are as long as leaves about 8
// tasks per thread, between 8 and 16 rows.
template <typename Acc, typename Fn>
void for_each_band(const Geometry& g, int64_t scratch_size, const Fn& fn) {
  const int64_t tasks = 8 * static_cast<int64_t>(at::get_num_threads());
  const int64_t band_rows = std::clamp<int64_t>((g.B * g.heads * g.H + tasks - 1) / tasks, 8, 16);
  std::vector<Band> bands;
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t n = 0; n < g.heads; ++n)
      for (int64_t c = 0; c < std::min(g.dh, g.H); ++c) {
        const int64_t n_c = (g.H - c + g.dh - 1) / g.dh;
        for (int64_t j0 = 0; j0 < n_c; j0 += band_rows)
          bands.push_back(Band{b, n, c, j0, std::min(j0 + band_rows, n_c)});
      }
  at::parallel_for(0, static_cast<int64_t>(bands.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<Acc> scratch(scratch_size);
    LaneRows<Acc> rows_a, rows_b;
    for (int64_t i = begin; i < end; ++i) fn(bands[i], scratch.data(), rows_a, rows_b);
  });
}

// Class-row range [first, end) holding the windows of the band's rows.
inline std::pair<int64_t, int64_t> window_rows(const Band& band, const Geometry& g,
                                               const Tables& tab) {
  const int64_t y0 = band.c + band.j0 * g.dh, y1 = band.c + (band.j1 - 1) * g.dh;
  return {(tab.rows.start[y0] - band.c) / g.dh, (tab.rows.start[y1] - band.c) / g.dh + g.kh};
}

// Fills k_rows and v_rows with the K and V lane rows that the windows of the band's rows read.
template <typename Acc, typename T>
void fill_window_rows(const Band& band, const Rows<T>& K, const Rows<T>& V, const Geometry& g,
                      const Tables& tab, const LaneColumns& cols, LaneRows<Acc>& k_rows,
                      LaneRows<Acc>& v_rows) {
  const auto [first, end] = window_rows(band, g, tab);
  k_rows.fill(K, g, cols, band.b, band.n, band.c, first, end);
  v_rows.fill(V, g, cols, band.b, band.n, band.c, first, end);
}

// rpb[n][row of slot ki = 0 for map row y][r], or null without rpb: the interior lanes of row y
// read slot (ki, kj) at ki * rpb_w + kj from there.
template <typename T>
const T* interior_rpb(const T* bias, int64_t n, int64_t y, const Geometry& g, const Tables& tab) {
  return bias == nullptr ? nullptr
                         : bias + (n * g.rpb_h() + tab.rows.rpb_base[y]) * g.rpb_w() + g.kw / 2;
}

// Class-row range [first, end) holding the queries whose windows hold the band's (key) rows.
inline std::pair<int64_t, int64_t> inverse_rows(const Band& band, const Geometry& g,
                                                const Tables& tab) {
  const int64_t y0 = band.c + band.j0 * g.dh, y1 = band.c + (band.j1 - 1) * g.dh;
  const int64_t first = tab.rows.inv_first[y1];
  const int64_t last = first + (tab.rows.inv_end[y1] - 1 - first) / g.dh * g.dh;
  return {(tab.rows.inv_first[y0] - band.c) / g.dh, (last - band.c) / g.dh + 1};
}

// Calls fn(std::integral_constant<int64_t, N>{}, start) for chunks [start, start + N) that cover
// [0, total), N = 8 but for the last: the lane loops over N unroll and their 8 independent
// accumulators stay in registers and hide the FMA latency.
template <typename Fn>
inline void for_each_chunk_of_8(int64_t total, const Fn& fn) {
  using std::integral_constant;
  for (int64_t start = 0; start < total; start += 8) {
    switch (std::min<int64_t>(8, total - start)) {
      case 8: fn(integral_constant<int64_t, 8>{}, start); break;
      case 7: fn(integral_constant<int64_t, 7>{}, start); break;
      case 6: fn(integral_constant<int64_t, 6>{}, start); break;
      case 5: fn(integral_constant<int64_t, 5>{}, start); break;
      case 4: fn(integral_constant<int64_t, 4>{}, start); break;
      case 3: fn(integral_constant<int64_t, 3>{}, start); break;
      case 2: fn(integral_constant<int64_t, 2>{}, start); break;
      default: fn(integral_constant<int64_t, 1>{}, start); break;
    }
  }
}

// out[j][l] = sum_d x[d][l] * y[d * ld + j + l] for j < NJ: NJ adjacent slots of one window row.
template <typename Acc, int64_t NJ>
inline void lane_dots(const Acc* x, const Acc* y, int64_t ld, int64_t D, Acc* out) {
  constexpr int64_t L = kLanes<Acc>;
  Acc acc[NJ][L] = {};
  for (int64_t d = 0; d < D; ++d) {
    const Acc* xr = x + d * L;
    const Acc* yr = y + d * ld;
#pragma GCC unroll 8
    for (int64_t j = 0; j < NJ; ++j) {
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) acc[j][l] += xr[l] * yr[j + l];
    }
  }
  for (int64_t j = 0; j < NJ; ++j)
    for (int64_t l = 0; l < L; ++l) out[j * L + l] = acc[j][l];
}

// logits[t][l] = x_l . y[key t of lane l] over the window; x is [D][kLanes]. col0 is the W'
// column of slot kj = 0 for lane 0 and ys the window's first map row (in y's class).
template <typename Acc>
void lane_window_dots(const Acc* x, const LaneRows<Acc>& y, int64_t ys, int64_t col0,
                      const Geometry& g, Acc* logits) {
  constexpr int64_t L = kLanes<Acc>;
  for (int64_t ki = 0; ki < g.kh; ++ki) {
    const Acc* row = y.row(ys) + ki * y.row_size() + col0;
    Acc* out = logits + ki * g.kw * L;
    for_each_chunk_of_8(g.kw, [&](auto chunk, int64_t kj) {
      lane_dots<Acc, decltype(chunk)::value>(x, row + kj, y.Wp, g.D, out + kj * L);
    });
  }
}

// out[d][l] = sum_t w[t][l] * y[key t of lane l][d] for d in [d0, d0 + ND).
template <typename Acc, int64_t ND>
inline void lane_sum_dims(const Acc* w, const LaneRows<Acc>& y, int64_t ys, int64_t col0,
                          int64_t d0, const Geometry& g, Acc* out) {
  constexpr int64_t L = kLanes<Acc>;
  Acc acc[ND][L] = {};
  for (int64_t ki = 0; ki < g.kh; ++ki) {
    const Acc* row = y.row(ys) + ki * y.row_size() + d0 * y.Wp + col0;
    for (int64_t kj = 0; kj < g.kw; ++kj) {
      const Acc* wt = w + (ki * g.kw + kj) * L;
#pragma GCC unroll 8
      for (int64_t dd = 0; dd < ND; ++dd) {
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) acc[dd][l] += wt[l] * row[dd * y.Wp + kj + l];
      }
    }
  }
  for (int64_t dd = 0; dd < ND; ++dd)
    for (int64_t l = 0; l < L; ++l) out[(d0 + dd) * L + l] = acc[dd][l];
}

// out[d][l] = sum_t w[t][l] * y[key t of lane l][d] for every d.
template <typename Acc>
void lane_window_sum(const Acc* w, const LaneRows<Acc>& y, int64_t ys, int64_t col0,
                     const Geometry& g, Acc* out) {
  for_each_chunk_of_8(g.D, [&](auto chunk, int64_t d0) {
    lane_sum_dims<Acc, decltype(chunk)::value>(w, y, ys, col0, d0, g, out);
  });
}

// logits[t][l] = logits[t][l] * scale + rpb, where table points at rpb[head][first row][r]:
// for interior lanes slot (ki, kj) reads table[ki * rpb_w + kj] on every lane. table may be null.
template <typename Acc, typename T>
void lane_scale_add_rpb(Acc* logits, Acc scale, const T* table, const Geometry& g) {
  constexpr int64_t L = kLanes<Acc>;
  for (int64_t ki = 0; ki < g.kh; ++ki) {
    for (int64_t kj = 0; kj < g.kw; ++kj) {
      const Acc add = table == nullptr ? Acc(0) : static_cast<Acc>(table[ki * g.rpb_w() + kj]);
      Acc* lt = logits + (ki * g.kw + kj) * L;
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) lt[l] = lt[l] * scale + add;
    }
  }
}

// Per lane: logits[:, l] = exp(logits[:, l] - max), with max_logit[l] and sum[l] of the result.
template <typename Acc>
void lane_softmax(Acc* logits, int64_t kk, Acc* max_logit, Acc* sum) {
  constexpr int64_t L = kLanes<Acc>;
  for (int64_t l = 0; l < L; ++l) {
    max_logit[l] = -std::numeric_limits<Acc>::infinity();
    sum[l] = 0;
  }
  for (int64_t t = 0; t < kk; ++t) {
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) max_logit[l] = std::max(max_logit[l], logits[t * L + l]);
  }
  for (int64_t t = 0; t < kk; ++t) {
    Acc* lt = logits + t * L;
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) {
      lt[l] = vec_exp(lt[l] - max_logit[l]);
      sum[l] += lt[l];
    }
  }
}

// out[l] = sum_d x[d][l] * y[d][l]
template <typename Acc>
void lane_dot(const Acc* x, const Acc* y, int64_t D, Acc* out) {
  constexpr int64_t L = kLanes<Acc>;
  for (int64_t l = 0; l < L; ++l) out[l] = 0;
  for (int64_t d = 0; d < D; ++d) {
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) out[l] += x[d * L + l] * y[d * L + l];
  }
}

// x[d][l] /= sum[l]
template <typename Acc>
void lane_divide(Acc* x, const Acc* sum, int64_t D) {
  constexpr int64_t L = kLanes<Acc>;
  for (int64_t d = 0; d < D; ++d) {
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) x[d * L + l] /= sum[l];
  }
}

// Softmax backward per lane: p = exp(logits - lse), ds = p * (dp - delta) (dp given in ds);
// ds_sums[t] = sum of ds[t] over lanes first_lane.. (for d-rpb).
template <typename Acc>
void lane_softmax_backward(Acc* p, Acc* ds, const Acc* lse, const Acc* delta, int64_t kk,
                           int64_t first_lane, Acc* ds_sums) {
  constexpr int64_t L = kLanes<Acc>;
  for (int64_t t = 0; t < kk; ++t) {
    Acc* pt = p + t * L;
    Acc* dst = ds + t * L;
    Acc total = 0;
#pragma omp simd reduction(+ : total)
    for (int64_t l = 0; l < L; ++l) {
      pt[l] = vec_exp(pt[l] - lse[l]);
      dst[l] = pt[l] * (dst[l] - delta[l]);
      total += l >= first_lane ? dst[l] : Acc(0);
    }
    ds_sums[t] = total;
  }
}

// x[d][l] = rows[query l][d] for the kLanes queries of a tile (x positions xs[l]).
// The rows of the next tile (xs[l] + next, when inside the map of width W) are prefetched.
template <typename Acc, typename T>
inline void gather_tile(const Rows<T>& rows, int64_t b, int64_t y, const int64_t* xs, int64_t n,
                        int64_t D, int64_t next, int64_t W, Acc* x) {
  constexpr int64_t L = kLanes<Acc>;
  const T* src[L];
  for (int64_t l = 0; l < L; ++l) {
    if (xs[l] + next < W) prefetch_row(rows.at(b, y, xs[l] + next, n), D);
    src[l] = rows.at(b, y, xs[l], n);
  }
  transpose_rows(src, D, x, L);
}

// rows[query l][d] = x[d][l] * scale.
template <typename Acc, typename T>
inline void scatter_tile(const Acc* x, Acc scale, const Rows<T>& rows, int64_t b, int64_t y,
                         const int64_t* xs, int64_t n, int64_t D) {
  constexpr int64_t L = kLanes<Acc>;
  T* dst[L];
  for (int64_t l = 0; l < L; ++l) dst[l] = rows.at(b, y, xs[l], n);
  transpose_lanes(x, D, scale, dst);
}

// Within map row (b, y) and head n: tile_fn(xs, col, first_lane) for lane tiles of kLanes
// positions at least `margin` groups from both ends of their residue class (xs: their x
// positions, col: the W' column of lane 0), and one_fn(pos, flat row) for every other position.
// When the interior is not a multiple of kLanes long, its last tile is shifted back to end at the
// interior's end: it then overlaps the tile before it, and lanes below first_lane repeat positions
// already done (writing the same values again; sums over lanes must skip them).
template <typename Acc, typename TileFn, typename OneFn>
void for_each_tile_and_position(const Geometry& g, const LaneColumns& cols, int64_t margin,
                                int64_t b, int64_t y, int64_t n, const TileFn& tile_fn,
                                const OneFn& one_fn) {
  constexpr int64_t L = kLanes<Acc>;
  int64_t xs[L];
  auto one = [&](int64_t x) { one_fn(Pos{b, y, x, n}, ((b * g.H + y) * g.W + x) * g.heads + n); };
  auto tile = [&](int64_t c, int64_t g0, int64_t first_lane) {
    for (int64_t l = 0; l < L; ++l) xs[l] = c + (g0 + l) * cols.d;
    tile_fn(xs, cols.offset[c] + g0, first_lane);
  };
  for (int64_t c = 0; c < cols.d; ++c) {
    const int64_t first = std::min(margin, cols.length[c]);
    const int64_t tiles = cols.tiles(c, margin, L);
    const int64_t last = first + tiles * L, interior_end = cols.length[c] - margin;
    for (int64_t gi = 0; gi < first; ++gi) one(c + gi * cols.d);
    for (int64_t g0 = first; g0 < last; g0 += L) tile(c, g0, 0);
    if (tiles > 0 && last < interior_end) tile(c, interior_end - L, last - (interior_end - L));
    const int64_t rest = tiles > 0 ? std::max(last, interior_end) : last;
    for (int64_t gi = rest; gi < cols.length[c]; ++gi) one(c + gi * cols.d);
  }
}

// For a tile of kLanes keys at W' columns col + l that are at least k groups from both ends of
// their class (so exactly the k queries col + l + r - kj, all interior, hold key l, in slot kj):
// out[d][l] = sum over the query rows qy of the key row and kj of
//   w[qy][slot (ki, kj)][col + l + r - kj] * x[qy][d][col + l + r - kj],
// where w is a [H, kh*kw, W'] plane of lane-layout attention values and x holds lane rows.
template <typename Acc, int64_t ND>
inline void lane_inverse_sum_dims(const Acc* w, const LaneRows<Acc>& x, int64_t key_row,
                                  int64_t col, int64_t d0, const Geometry& g, const Tables& tab,
                                  Acc* out) {
  constexpr int64_t L = kLanes<Acc>;
  const int64_t Wp = x.Wp, r = g.kw / 2, key_group = key_row / g.dh;
  Acc acc[ND][L] = {};
  for (int64_t qy = tab.rows.inv_first[key_row]; qy < tab.rows.inv_end[key_row]; qy += g.dh) {
    const int64_t ki = key_group - tab.rows.start_group[qy];
    const Acc* x_row = x.row(qy) + d0 * Wp + col + r;
    const Acc* w_row = w + (qy * g.kk() + ki * g.kw) * Wp + col + r;
    for (int64_t kj = 0; kj < g.kw; ++kj) {
      const Acc* wt = w_row + kj * Wp - kj;
      const Acc* xt = x_row - kj;
      // kh*kw rows of w stream past one tile at a time: too many streams for the hardware
      // prefetcher, so fetch the part that the tile after next reads
      if (d0 == 0) __builtin_prefetch(wt + 2 * L);
#pragma GCC unroll 8
      for (int64_t dd = 0; dd < ND; ++dd) {
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) acc[dd][l] += wt[l] * xt[dd * Wp + l];
      }
    }
  }
  for (int64_t dd = 0; dd < ND; ++dd)
    for (int64_t l = 0; l < L; ++l) out[(d0 + dd) * L + l] = acc[dd][l];
}

template <typename Acc>
void lane_inverse_sum(const Acc* w, const LaneRows<Acc>& x, int64_t key_row, int64_t col,
                      const Geometry& g, const Tables& tab, Acc* out) {
  for_each_chunk_of_8(g.D, [&](auto chunk, int64_t d0) {
    lane_inverse_sum_dims<Acc, decltype(chunk)::value>(w, x, key_row, col, d0, g, tab, out);
  });
}

// dst[t][col + l] = src[t][l] for a [kk][kLanes] tile into a [kk, W'] lane-layout plane row.
template <typename Acc>
inline void store_lane_rows(const Acc* src, int64_t kk, Acc* dst, int64_t Wp) {
  constexpr int64_t L = kLanes<Acc>;
  for (int64_t t = 0; t < kk; ++t) {
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) dst[t * Wp + l] = src[t * L + l];
  }
}

// ---------------------------------------------------------------------------------------------
// Fused attention

std::tuple<at::Tensor, at::Tensor> na2d_forward_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                    const at::Tensor& v_in,
                                                    const std::optional<at::Tensor>& rpb_in,
                                                    at::IntArrayRef kernel_size,
                                                    at::IntArrayRef dilation, double scale) {
  constexpr const char* op = "na2d_forward_cpu";
  const Geometry g = check_geometry(op, q_in, kernel_size, dilation, c10::DeviceType::CPU);
  check_like(op, "k", k_in, q_in, q_in.sizes());
  check_like(op, "v", v_in, q_in, q_in.sizes());
  at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
  const at::Tensor rpb = checked_rpb(op, rpb_in, q_in, g);
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse =
      at::empty({g.B, g.H, g.W, g.heads}, q.options().dtype(opmath_dtype(q.scalar_type())));
  const Tables tab(g);
  const LaneColumns cols(g.W, g.dw);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), op, [&] {
    using Acc = at::opmath_type<scalar_t>;
    constexpr int64_t L = kLanes<Acc>;
    const auto Q = rows_of<scalar_t>(q), K = rows_of<scalar_t>(k), V = rows_of<scalar_t>(v);
    const auto O = rows_of<scalar_t>(out);
    const scalar_t* bias = rpb.defined() ? rpb.data_ptr<scalar_t>() : nullptr;
    Acc* lse_ptr = lse.data_ptr<Acc>();
    const Acc s = static_cast<Acc>(scale);
    const int64_t kk = g.kk(), D = g.D;
    const int64_t scratch_size = std::max(kk + D, (kk + 2 * D) * L);
    auto forward_band = [&](const Band& band, Acc* scratch, LaneRows<Acc>& k_rows,
                            LaneRows<Acc>& v_rows) {
      fill_window_rows(band, K, V, g, tab, cols, k_rows, v_rows);
      const int64_t b = band.b, n = band.n;
      for (int64_t j = band.j0; j < band.j1; ++j) {
        const int64_t y = band.c + j * g.dh;
        const int64_t ys = tab.rows.start[y];
        const scalar_t* rpb_table = interior_rpb(bias, n, y, g, tab);
        // overlapping lanes of a shifted last tile (first_lane > 0) rewrite equal values
        auto tile = [&](const int64_t* xs, int64_t col, int64_t /*first_lane*/) {
          const int64_t col0 = col - g.kw / 2;  // W' column of lane 0's first key
          Acc* logits = scratch;
          Acc* x = logits + kk * L;
          Acc* o = x + D * L;
          gather_tile(Q, b, y, xs, n, D, L * g.dw, g.W, x);
          lane_window_dots(x, k_rows, ys, col0, g, logits);
          lane_scale_add_rpb(logits, s, rpb_table, g);
          Acc max_logit[L], sum[L];
          lane_softmax(logits, kk, max_logit, sum);
          lane_window_sum(logits, v_rows, ys, col0, g, o);
          lane_divide(o, sum, D);
          scatter_tile(o, Acc(1), O, b, y, xs, n, D);
          for (int64_t l = 0; l < L; ++l)
            lse_ptr[((b * g.H + y) * g.W + xs[l]) * g.heads + n] = max_logit[l] + std::log(sum[l]);
        };
        auto query = [&](const Pos& p, int64_t row) {
          Acc* logits = scratch;
          Acc* acc = scratch + kk;
          window_dots(Q.at(p), K, p, g, tab, logits);
          Acc max_logit = -std::numeric_limits<Acc>::infinity();
          for (int64_t t = 0; t < kk; ++t) {
            logits[t] *= s;
            if (bias == nullptr) max_logit = std::max(max_logit, logits[t]);
          }
          if (bias != nullptr) {
            add_rpb(bias, p, g, tab, logits);
            for (int64_t t = 0; t < kk; ++t) max_logit = std::max(max_logit, logits[t]);
          }
          exp_shifted(logits, max_logit, kk);
          Acc sum = 0;
          for (int64_t t = 0; t < kk; ++t) sum += logits[t];
          std::fill(acc, acc + D, Acc(0));
          window_sum(logits, V, p, g, tab, acc);
          store(acc, Acc(1) / sum, O.at(p), D);
          lse_ptr[row] = max_logit + std::log(sum);
        };
        for_each_tile_and_position<Acc>(g, cols, g.kw / 2, b, y, n, tile, query);
      }
    };
    for_each_band<Acc>(g, scratch_size, forward_band);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> na2d_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const std::optional<at::Tensor>& rpb_in, const at::Tensor& out_in,
    const at::Tensor& lse_in, at::IntArrayRef kernel_size, at::IntArrayRef dilation,
    double scale) {
  constexpr const char* op = "na2d_backward_cpu";
  const Geometry g = check_geometry(op, q_in, kernel_size, dilation, c10::DeviceType::CPU);
  for (auto [name, t] : {std::pair{"k", &k_in}, {"v", &v_in}, {"out", &out_in},
                         {"grad_out", &grad_out_in}})
    check_like(op, name, *t, q_in, q_in.sizes());
  check_lse(op, lse_in, q_in, g);
  at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
  at::Tensor out = unit_last_stride(out_in), dout = unit_last_stride(grad_out_in);
  const at::Tensor lse = lse_in.contiguous();
  const at::Tensor rpb = checked_rpb(op, rpb_in, q_in, g);
  at::Tensor dq = at::empty(q.sizes(), q.options()), dk = at::empty(q.sizes(), q.options());
  at::Tensor dv = at::empty(q.sizes(), q.options()), drpb = at::empty({0}, q.options());
  const auto acc_options = q.options().dtype(opmath_dtype(q.scalar_type()));
  const LaneColumns cols(g.W, g.dw);
  const int64_t Wp = g.W;
  // P and dS in lane layout [B, heads, H, kh*kw, W'], written by pass 1 and summed by pass 2
  at::Tensor probs = at::empty({g.B, g.heads, g.H, g.kk(), Wp}, acc_options);
  at::Tensor dlogits = at::empty({g.B, g.heads, g.H, g.kk(), Wp}, acc_options);
  const Tables tab(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), op, [&] {
    using Acc = at::opmath_type<scalar_t>;
    constexpr int64_t L = kLanes<Acc>;
    const auto Q = rows_of<scalar_t>(q), K = rows_of<scalar_t>(k), V = rows_of<scalar_t>(v);
    const auto dO = rows_of<scalar_t>(dout);
    const auto dQ = rows_of<scalar_t>(dq), dK = rows_of<scalar_t>(dk), dV = rows_of<scalar_t>(dv);
    const scalar_t* bias = rpb.defined() ? rpb.data_ptr<scalar_t>() : nullptr;
    const Acc* lse_ptr = lse.data_ptr<Acc>();
    const auto O = rows_of<scalar_t>(out);
    Acc* P = probs.data_ptr<Acc>();
    Acc* dS = dlogits.data_ptr<Acc>();
    const Acc s = static_cast<Acc>(scale);
    const int64_t kk = g.kk(), D = g.D;
    RpbGrad<Acc> rpb_grad(g);
    // Pass 1, per query: P, dS = P * (dO.V - dO.O), dQ = scale * dS @ K.
    const int64_t plane_size = g.H * kk * Wp;  // one (b, head) of P or dS
    const int64_t scratch_size = std::max(2 * kk + D, (2 * kk + 4 * D) * L + kk);
    auto query_band = [&](const Band& band, Acc* scratch, LaneRows<Acc>& k_rows,
                          LaneRows<Acc>& v_rows) {
      fill_window_rows(band, K, V, g, tab, cols, k_rows, v_rows);
      const int64_t b = band.b, n = band.n;
      for (int64_t j = band.j0; j < band.j1; ++j) {
        const int64_t y = band.c + j * g.dh;
        const int64_t ys = tab.rows.start[y];
        Acc* p_plane_row = P + (b * g.heads + n) * plane_size + y * kk * Wp;
        Acc* ds_plane_row = dS + (b * g.heads + n) * plane_size + y * kk * Wp;
        const scalar_t* rpb_table = interior_rpb(bias, n, y, g, tab);
        auto tile = [&](const int64_t* xs, int64_t col, int64_t first_lane) {
          const int64_t col0 = col - g.kw / 2;  // W' column of lane 0's first key
          Acc* p_t = scratch;
          Acc* ds_t = p_t + kk * L;
          Acc* xq = ds_t + kk * L;
          Acc* xdo = xq + D * L;
          Acc* xo = xdo + D * L;
          Acc* acc = xo + D * L;
          Acc* ds_sums = acc + D * L;
          Acc lse_l[L], delta_l[L];
          for (int64_t l = 0; l < L; ++l) {
            const int64_t row = ((b * g.H + y) * g.W + xs[l]) * g.heads + n;
            lse_l[l] = lse_ptr[row];
          }
          gather_tile(Q, b, y, xs, n, D, L * g.dw, g.W, xq);
          gather_tile(dO, b, y, xs, n, D, L * g.dw, g.W, xdo);
          gather_tile(O, b, y, xs, n, D, L * g.dw, g.W, xo);
          lane_dot(xdo, xo, D, delta_l);  // dO . O, the softmax-backward correction
          lane_window_dots(xq, k_rows, ys, col0, g, p_t);
          lane_window_dots(xdo, v_rows, ys, col0, g, ds_t);
          lane_scale_add_rpb(p_t, s, rpb_table, g);
          lane_softmax_backward(p_t, ds_t, lse_l, delta_l, kk, first_lane, ds_sums);
          if (bias != nullptr) {
            Acc* grad_table = rpb_grad.buffer() + (rpb_table - bias);
            for (int64_t ki = 0; ki < g.kh; ++ki)
              for (int64_t kj = 0; kj < g.kw; ++kj)
                grad_table[ki * g.rpb_w() + kj] += ds_sums[ki * g.kw + kj];
          }
          lane_window_sum(ds_t, k_rows, ys, col0, g, acc);
          scatter_tile(acc, s, dQ, b, y, xs, n, D);
          store_lane_rows(p_t, kk, p_plane_row + col, Wp);
          store_lane_rows(ds_t, kk, ds_plane_row + col, Wp);
        };
        auto query = [&](const Pos& p, int64_t row) {
          Acc* p_row = scratch;
          Acc* ds_row = scratch + kk;
          Acc* acc = scratch + 2 * kk;
          window_dots(Q.at(p), K, p, g, tab, p_row);
          for (int64_t t = 0; t < kk; ++t) p_row[t] *= s;
          if (bias != nullptr) add_rpb(bias, p, g, tab, p_row);
          exp_shifted(p_row, lse_ptr[row], kk);
          window_dots(dO.at(p), V, p, g, tab, ds_row);
          const Acc delta_row = dot<Acc>(dO.at(p), O.at(p), D);
          for (int64_t t = 0; t < kk; ++t) ds_row[t] = p_row[t] * (ds_row[t] - delta_row);
          std::fill(acc, acc + D, Acc(0));
          window_sum(ds_row, K, p, g, tab, acc);
          store(acc, s, dQ.at(p), D);
          if (bias != nullptr) rpb_grad.add(ds_row, p, tab);
          const int64_t col = cols.column_of[p.x];
          for (int64_t t = 0; t < kk; ++t) {
            p_plane_row[t * Wp + col] = p_row[t];
            ds_plane_row[t * Wp + col] = ds_row[t];
          }
        };
        for_each_tile_and_position<Acc>(g, cols, g.kw / 2, b, y, n, tile, query);
      }
    };
    for_each_band<Acc>(g, scratch_size, query_band);
    // Pass 2, per key: dK = scale * sum dS * q, dV = sum P * dO over the inverse neighbourhood.
    auto key_band = [&](const Band& band, Acc* scratch, LaneRows<Acc>& q_rows,
                        LaneRows<Acc>& dout_rows) {
      const auto [first, end] = inverse_rows(band, g, tab);
      q_rows.fill(Q, g, cols, band.b, band.n, band.c, first, end);
      dout_rows.fill(dO, g, cols, band.b, band.n, band.c, first, end);
      const int64_t b = band.b, n = band.n;
      for (int64_t j = band.j0; j < band.j1; ++j) {
        const int64_t y = band.c + j * g.dh;
        const Acc* p_plane = P + (b * g.heads + n) * plane_size;
        const Acc* ds_plane = dS + (b * g.heads + n) * plane_size;
        // overlapping lanes of a shifted last tile (first_lane > 0) rewrite equal values
        auto tile = [&](const int64_t* xs, int64_t col, int64_t /*first_lane*/) {
          Acc* acc_k = scratch;
          Acc* acc_v = scratch + D * L;
          lane_inverse_sum(ds_plane, q_rows, y, col, g, tab, acc_k);
          lane_inverse_sum(p_plane, dout_rows, y, col, g, tab, acc_v);
          scatter_tile(acc_k, s, dK, b, y, xs, n, D);
          scatter_tile(acc_v, Acc(1), dV, b, y, xs, n, D);
        };
        auto key = [&](const Pos& p, int64_t) {
          auto lane_rows = [&](const Acc* plane) {
            return [&, plane](int64_t qy, int64_t qx, int64_t slot) {
              return plane[(qy * kk + slot) * Wp + cols.column_of[qx]];
            };
          };
          Acc* acc = scratch;
          std::fill(acc, acc + 2 * D, Acc(0));
          inverse_sum<Acc>(lane_rows(ds_plane), Q, p, g, tab, acc);
          inverse_sum<Acc>(lane_rows(p_plane), dO, p, g, tab, acc + D);
          store(acc, s, dK.at(p), D);
          store(acc + D, Acc(1), dV.at(p), D);
        };
        for_each_tile_and_position<Acc>(g, cols, g.kw, b, y, n, tile, key);
      }
    };
    for_each_band<Acc>(g, 2 * D * L, key_band);
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
  const Geometry g = check_geometry(op, q_in, kernel_size, dilation, c10::DeviceType::CPU);
  check_like(op, "k", k_in, q_in, q_in.sizes());
  at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in);
  const at::Tensor rpb = checked_rpb(op, rpb_in, q_in, g);
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
  const Geometry g = check_geometry(op, q_in, kernel_size, dilation, c10::DeviceType::CPU);
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
      inverse_sum<Acc>(attention_rows(G, p, g), Q, p, g, tab, acc);
      store(acc, Acc(1), dK.at(p), g.D);
    });
    if (has_rpb) drpb = rpb_grad.result(q.options());
  });
  return {dq, dk, drpb};
}

at::Tensor na2d_av_forward_cpu(const at::Tensor& attn_in, const at::Tensor& v_in,
                               at::IntArrayRef kernel_size, at::IntArrayRef dilation) {
  constexpr const char* op = "na2d_av_forward_cpu";
  const Geometry g = check_geometry(op, v_in, kernel_size, dilation, c10::DeviceType::CPU);
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
  const Geometry g = check_geometry(op, v_in, kernel_size, dilation, c10::DeviceType::CPU);
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
      inverse_sum<Acc>(attention_rows(A, p, g), dO, p, g, tab, acc);
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
