// Kernels that check the emulator itself: each must fail (or compute) the way CUDA would.
// Registered as nat_emu_selftest::run(case, n) -> Tensor (float32, CPU).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <string>

#include "cuda/launch.h"

namespace {

// Only threads below n reach the barrier; the others return.
__global__ void divergent_sync_kernel(int n, float* out) {
  if (int(threadIdx.x) >= n) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

// Two groups meet at two different __syncthreads.
__global__ void split_sync_kernel(float* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

// Thread 0 writes n floats of dynamic shared memory, then every thread reads its own slot. (Tag:
// two kernels, so that the opt-in of one to large shared memory leaves the other without.)
template <int Tag>
__global__ void shared_kernel(int n, float* out) {
  NAT_DYNAMIC_SHARED(float, smem);
  if (threadIdx.x == 0)
    for (int i = 0; i < n; ++i) smem[i] = float(i);
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = smem[threadIdx.x];
}

// Each lane writes the result of every warp primitive into its row of 6 values.
__global__ void warp_kernel(float* out) {
  const int tid = threadIdx.x, lane = tid % 32;
  const float v = float(tid);
  float* row = out + tid * 6;
  row[0] = __shfl_sync(0xffffffffu, v, 3);
  row[1] = __shfl_xor_sync(0xffffffffu, v, 5);
  row[2] = __shfl_down_sync(0xffffffffu, v, 4, 16);
  row[3] = __shfl_up_sync(0xffffffffu, v, 2);
  row[4] = float(__ballot_sync(0xffffffffu, lane % 3 == 0) & 0xffff);
  __syncwarp();
  float sum = v;  // tree sum over the warp
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  row[5] = sum;
}

// Lane 0 leaves before the others shuffle with a full mask.
__global__ void warp_exit_kernel(float* out) {
  if (threadIdx.x == 0) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, 1.0f, 1);
}

// Grid-stride copy: block b handles items b, b + grid, ...
__global__ void grid_stride_kernel(int64_t n, float* out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = float(blockIdx.x);
}

at::Tensor run(std::string which, int64_t n) {
  at::Tensor out = at::full({std::max<int64_t>(n, 1) * 64 * 6}, -1.0f);
  float* o = out.mutable_data_ptr<float>();
  if (which == "divergent_sync") {
    NAT_LAUNCH(1, 64, 0, 0, divergent_sync_kernel)(int(n), o);
  } else if (which == "split_sync") {
    NAT_LAUNCH(1, 64, 0, 0, split_sync_kernel)(o);
  } else if (which == "shared") {  // 64 floats of shared memory, n written, 64 read, 2 blocks
    NAT_LAUNCH(2, 64, 64 * sizeof(float), 0, shared_kernel<0>)(int(n), o);
  } else if (which == "shared_large") {  // n floats of shared memory, all written
    NAT_LAUNCH(1, 64, n * sizeof(float), 0, shared_kernel<0>)(int(n), o);
  } else if (which == "shared_optin") {  // the same after cudaFuncSetAttribute
    C10_CUDA_CHECK(cudaFuncSetAttribute(
        shared_kernel<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(n * sizeof(float))));
    NAT_LAUNCH(1, 64, n * sizeof(float), 0, shared_kernel<1>)(int(n), o);
  } else if (which == "warp") {
    NAT_LAUNCH(1, 64, 0, 0, warp_kernel)(o);
  } else if (which == "warp_exit") {
    NAT_LAUNCH(1, 32, 0, 0, warp_exit_kernel)(o);
  } else if (which == "threads") {  // n threads per block
    NAT_LAUNCH(1, n, 0, 0, grid_stride_kernel)(n, o);
  } else if (which == "grid_y") {  // a grid of (1, n)
    NAT_LAUNCH(dim3(1, n), 32, 0, 0, grid_stride_kernel)(n, o);
  } else if (which == "grid_stride") {  // 3 blocks of 32 threads over n items
    NAT_LAUNCH(3, 32, 0, 0, grid_stride_kernel)(n, o);
  } else if (which == "huge_grid") {  // does not fit dim3
    NAT_LAUNCH(n << 32, 32, 0, 0, grid_stride_kernel)(n, o);
  } else {
    TORCH_CHECK(false, "nat_emu_selftest: unknown case ", which);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY(nat_emu_selftest, m) { m.def("run(str which, int n) -> Tensor", &run); }
