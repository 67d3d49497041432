// Neighbourhood index maths for 2-D neighborhood attention, shared by the CPU and CUDA kernels.
//
// This header is the only place where these rules live (docs/design.md section 3).
// Everything works per
// axis: a map axis of length L, an odd kernel k, a dilation d, r = k / 2.
//   - query i belongs to residue group c = i % d, of length n_c = ceil((L - c) / d), at index i / d;
//   - its window starts at s = clamp(i / d - r, 0, n_c - k) in group coordinates, and its keys are
//     at (s + t) * d + c for t = 0..k-1, so border windows shift inward and every query sees k keys;
//   - the rpb index of key j for query i is (j - i) / d + k - 1;
//   - the queries whose window holds key j are exactly first..last (exclusive) in steps of d (the
//     inverse neighbourhood), which gives dK and dV without atomics.
// Callers guarantee L >= k * d (checked in Python and again in the C++ entry points).
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define NAT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define NAT_HOST_DEVICE inline
#endif

namespace nat_mm {

// Sizes of one op call: q/k/v are [B, H, W, heads, D], kernel kh x kw, dilation dh x dw.
struct Geometry {
  int64_t B, H, W, heads, D;
  int64_t kh, kw, dh, dw;
  NAT_HOST_DEVICE int64_t kk() const { return kh * kw; }
  NAT_HOST_DEVICE int64_t rows() const { return B * H * W * heads; }  // queries (and keys)
  NAT_HOST_DEVICE int64_t rpb_h() const { return 2 * kh - 1; }
  NAT_HOST_DEVICE int64_t rpb_w() const { return 2 * kw - 1; }
  NAT_HOST_DEVICE int64_t rpb_bins() const { return rpb_h() * rpb_w(); }
};

// Position (not group index) of the first key in the window of query i.
NAT_HOST_DEVICE int64_t window_start(int64_t i, int64_t L, int64_t k, int64_t d) {
  const int64_t c = i % d;
  const int64_t n_c = (L - c + d - 1) / d;
  int64_t s = i / d - k / 2;
  if (s < 0) s = 0;
  if (s > n_c - k) s = n_c - k;
  return s * d + c;
}

// Index into the rpb axis (length 2k - 1) for query i and its key j (both positions).
NAT_HOST_DEVICE int64_t rpb_index(int64_t i, int64_t j, int64_t k, int64_t d) {
  return (j - i) / d + k - 1;
}

// First query (position) whose window holds key j.
NAT_HOST_DEVICE int64_t inverse_start(int64_t j, int64_t L, int64_t k, int64_t d) {
  (void)L;  // kept for symmetry with inverse_end
  return j < k * d ? j % d : j - (k / 2) * d;
}

// One past the last query (position) whose window holds key j; step through the range by d.
NAT_HOST_DEVICE int64_t inverse_end(int64_t j, int64_t L, int64_t k, int64_t d) {
  return j >= L - k * d ? L : j + (k / 2 + 1) * d;
}

// Slot t (0..k-1) of key j in the window of query i, for i in the inverse neighbourhood of j.
NAT_HOST_DEVICE int64_t window_slot(int64_t i, int64_t j, int64_t L, int64_t k, int64_t d) {
  return (j - window_start(i, L, k, d)) / d;
}

// The same rules in group coordinates, for kernels that work on one residue group at a time: the
// group of residue c holds positions c, c + d, ..., a map of n = ceil((L - c) / d) group positions,
// on which dilated NA is plain NA with kernel k (position = group position * d + c).

// Group position of the first key in the window of group position p.
NAT_HOST_DEVICE int group_window_start(int p, int n, int k) {
  int s = p - k / 2;
  if (s > n - k) s = n - k;
  return s < 0 ? 0 : s;
}

// The group positions of the queries whose window holds group position j: [start, end).
NAT_HOST_DEVICE int group_inverse_start(int j, int k) { return j < k ? 0 : j - k / 2; }
NAT_HOST_DEVICE int group_inverse_end(int j, int n, int k) { return j >= n - k ? n : j + k / 2 + 1; }

// Length of residue group c of an axis of length L with dilation d.
NAT_HOST_DEVICE int group_length(int L, int c, int d) { return (L - c + d - 1) / d; }

}  // namespace nat_mm
