// Schemas of nat_mm's dispatcher ops, in one place: csrc/ops.cpp defines them in the `nat_mm`
// library, and the CUDA emulator of the tests (nat_mm/testing/cuda_emu) defines the same schemas in a
// library of its own.
//
// Layout is heads-last: q, k, v, out are [B, H, W, heads, D]; attn is [B, H, W, heads, kh * kw]
// (row-major slot ki * kw + kj); rpb is [heads, 2 kh - 1, 2 kw - 1]; lse is [B, H, W, heads] (float32
// for reduced precision inputs, else the input dtype). Ops never mutate their inputs.
#pragma once

#include <torch/library.h>

namespace nat_mm {

inline void define_na2d_schemas(torch::Library& m) {
  // Fused attention: softmax(scale * q.k + rpb) @ v. Returns (out, lse): lse is the log-sum-exp of
  // the logits per query, kept for the backward.
  m.def(
      "na2d_forward(Tensor q, Tensor k, Tensor v, Tensor? rpb, int[2] kernel_size, "
      "int[2] dilation, float scale) -> (Tensor, Tensor)");
  // Returns (dq, dk, dv, drpb); drpb is an empty tensor when rpb is None.
  m.def(
      "na2d_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? rpb, Tensor out, "
      "Tensor lse, int[2] kernel_size, int[2] dilation, float scale) -> (Tensor, Tensor, Tensor, "
      "Tensor)");
  // attn = q.k (no scale) + rpb.
  m.def(
      "na2d_qk_forward(Tensor q, Tensor k, Tensor? rpb, int[2] kernel_size, int[2] dilation) -> "
      "Tensor");
  // Returns (dq, dk, drpb); drpb is an empty tensor when has_rpb is false.
  m.def(
      "na2d_qk_backward(Tensor grad_attn, Tensor q, Tensor k, bool has_rpb, int[2] kernel_size, "
      "int[2] dilation) -> (Tensor, Tensor, Tensor)");
  // out = attn @ v over each query's neighbourhood.
  m.def("na2d_av_forward(Tensor attn, Tensor v, int[2] kernel_size, int[2] dilation) -> Tensor");
  // Returns (dattn, dv).
  m.def(
      "na2d_av_backward(Tensor grad_out, Tensor attn, Tensor v, int[2] kernel_size, "
      "int[2] dilation) -> (Tensor, Tensor)");
}

}  // namespace nat_mm
