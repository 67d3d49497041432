// Pieces shared by the CUDA kernel files: strided [B, H, W, heads, D] access, exp/log per
// accumulation type, small host helpers.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "na2d_index.h"

namespace nat_mm {

// A [B, H, W, heads, D] tensor with arbitrary element strides on its first four axes, D stride-1.
template <typename T>
struct Map5 {
  const T* p;
  int64_t sb, sy, sx, sh;
  NAT_HOST_DEVICE const T* row(int64_t b, int64_t y, int64_t x, int64_t h) const {
    return p + b * sb + y * sy + x * sx + h * sh;
  }
};

NAT_HOST_DEVICE float nat_exp(float x) { return expf(x); }
NAT_HOST_DEVICE double nat_exp(double x) { return exp(x); }
NAT_HOST_DEVICE float nat_log(float x) { return logf(x); }
NAT_HOST_DEVICE double nat_log(double x) { return log(x); }

NAT_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// D must be stride-1; the other axes may have any strides.
inline at::Tensor last_dim_dense(const at::Tensor& t) {
  return (t.size(4) <= 1 || t.stride(4) == 1) ? t : t.contiguous();
}

template <typename T>
Map5<T> map5(const at::Tensor& t) {
  return {t.const_data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

}  // namespace nat_mm
