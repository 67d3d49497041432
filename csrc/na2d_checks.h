// Host-side argument checks of the na2d ops, shared by the CPU and the CUDA entry points.
//
// The Python layer (nat_mm/ops/_checks.py) validates user input with friendlier messages; these
// checks make the C++ ops safe when called directly through torch.ops.nat_mm.*.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "na2d_index.h"

namespace nat_mm {

inline void check_pair(const char* op, const char* name, at::IntArrayRef v, int64_t min_value) {
  TORCH_CHECK(v.size() == 2, op, ": ", name, " must have 2 values, got ", v);
  TORCH_CHECK(v[0] >= min_value && v[1] >= min_value, op, ": ", name, " must be >= ", min_value,
              ", got ", v);
}

// Geometry of a [B, H, W, heads, D] tensor t on a device of type `device`, after checking its
// rank, device, dtype, the kernel size (odd), the dilation and L >= k * d on both axes.
inline Geometry check_geometry(const char* op, const at::Tensor& t, at::IntArrayRef kernel_size,
                               at::IntArrayRef dilation, c10::DeviceType device) {
  TORCH_CHECK(t.dim() == 5, op, ": expected [B, H, W, heads, D], got shape ", t.sizes());
  TORCH_CHECK(t.device().type() == device, op, ": expected ", c10::DeviceTypeName(device),
              " tensors, got ", t.device());
  const auto dtype = t.scalar_type();
  TORCH_CHECK(
      dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
      op, ": dtype must be float32, float64, float16 or bfloat16, got ", dtype);
  check_pair(op, "kernel_size", kernel_size, 1);
  check_pair(op, "dilation", dilation, 1);
  TORCH_CHECK(kernel_size[0] % 2 == 1 && kernel_size[1] % 2 == 1, op,
              ": kernel_size must be odd, got ", kernel_size);
  const Geometry g{t.size(0),      t.size(1),      t.size(2),   t.size(3),  t.size(4),
                   kernel_size[0], kernel_size[1], dilation[0], dilation[1]};
  TORCH_CHECK(g.H >= g.kh * g.dh && g.W >= g.kw * g.dw, op,
              ": kernel_size * dilation must be <= the map size on each axis, got kernel_size=",
              kernel_size, ", dilation=", dilation, ", (H, W)=(", g.H, ", ", g.W, ")");
  return g;
}

// t must be on ref's device, with ref's dtype and the given shape.
inline void check_like(const char* op, const char* name, const at::Tensor& t,
                       const at::Tensor& ref, at::IntArrayRef shape) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on ", ref.device(), ", got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have dtype ",
              ref.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ",
              t.sizes());
}

// The dtype kernels accumulate in (and lse is stored in): float64 for float64, else float32.
inline at::ScalarType opmath_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline std::vector<int64_t> attn_shape(const Geometry& g) {
  return {g.B, g.H, g.W, g.heads, g.kk()};
}

// The rpb as a contiguous [heads, 2 kh - 1, 2 kw - 1] tensor like q, or undefined when absent.
inline at::Tensor checked_rpb(const char* op, const std::optional<at::Tensor>& rpb,
                              const at::Tensor& q, const Geometry& g) {
  if (!rpb.has_value() || !rpb->defined()) return at::Tensor();
  check_like(op, "rpb", *rpb, q, {g.heads, g.rpb_h(), g.rpb_w()});
  return rpb->contiguous();
}

// lse from the forward: [B, H, W, heads] in the op-math dtype, on q's device.
inline void check_lse(const char* op, const at::Tensor& lse, const at::Tensor& q,
                      const Geometry& g) {
  const auto acc = opmath_dtype(q.scalar_type());
  TORCH_CHECK(lse.device() == q.device() && lse.scalar_type() == acc &&
                  lse.sizes() == at::IntArrayRef({g.B, g.H, g.W, g.heads}),
              op, ": lse must be a ", acc, " tensor of shape [B, H, W, heads] on ", q.device(),
              ", got ", lse.scalar_type(), " ", lse.sizes(), " on ", lse.device());
}

}  // namespace nat_mm
