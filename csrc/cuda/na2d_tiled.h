// The fused, tiled CUDA kernels of na2d_forward / na2d_backward (na2d_tiled.cu), as called by the
// ops in na2d_cuda.cu.
#pragma once

#include <ATen/ATen.h>

#include "na2d_index.h"

namespace nat_mm {

// NAT_MM_CUDA_KERNEL, read at every call: `auto` (default: tiled where it applies, else the
// reference kernels), `tiled` (an error where it does not apply) or `reference`; `triton` and
// `flex` select Python backends of the fused na2d and mean `auto` here.
enum class CudaKernelChoice { kAuto, kTiled, kReference };
CudaKernelChoice cuda_kernel_choice();

// Whether na2d_forward / na2d_backward take the tiled kernels for this problem: they need a head
// dim that splits into at most 16 elements per lane over a power of two of lanes, and a tile whose
// staged rows fit the device's shared memory. Raises when NAT_MM_CUDA_KERNEL=tiled and they do not.
bool tiled_applies(const char* op, const Geometry& g, at::ScalarType dtype, bool has_rpb);

// Inputs as the ops prepare them: D stride-1, rpb contiguous or undefined; outputs contiguous.
void na2d_forward_tiled(const Geometry& g, const at::Tensor& q, const at::Tensor& k,
                        const at::Tensor& v, const at::Tensor& rpb, double scale, at::Tensor& out,
                        at::Tensor& lse);

void na2d_backward_tiled(const Geometry& g, const at::Tensor& grad_out, const at::Tensor& q,
                         const at::Tensor& k, const at::Tensor& v, const at::Tensor& rpb,
                         const at::Tensor& out, const at::Tensor& lse, double scale,
                         at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor& drpb);

}  // namespace nat_mm
