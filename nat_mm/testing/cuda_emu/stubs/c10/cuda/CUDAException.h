// nat_emu stub of c10/cuda/CUDAException.h: launch errors are the emulator's.
#pragma once
#include <c10/util/Exception.h>

#define C10_CUDA_KERNEL_LAUNCH_CHECK() ::nat_emu::check_launch()
#define C10_CUDA_CHECK(expr)                                                              \
  do {                                                                                    \
    const cudaError_t nat_emu_err = (expr);                                               \
    TORCH_CHECK(nat_emu_err == cudaSuccess, "CUDA error (nat_emu): " #expr " failed"); \
  } while (0)
