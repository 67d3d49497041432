// The real csrc/cuda/na2d_cuda.cu, compiled for the host against cuda_emu.h (force-included).
// Its ops register in a library of their own, `nat_mm_cuda_emu`, with the schemas of
// csrc/na2d_schemas.h, and take CPU tensors where the real ones take CUDA tensors.
#define NAT_MM_CUDA_LIBRARY nat_mm_cuda_emu
#define NAT_MM_CUDA_KEY CPU
#define NAT_MM_CUDA_DEVICE_TYPE c10::DeviceType::CPU

#include "na2d_schemas.h"

TORCH_LIBRARY(nat_mm_cuda_emu, m) { nat_mm::define_na2d_schemas(m); }

#include "cuda/na2d_cuda.cu"
