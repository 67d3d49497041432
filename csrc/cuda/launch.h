// How the CUDA sources launch kernels, declare dynamic shared memory and register their ops.
//
// The real build (nvcc) gets CUDA's own syntax. The host emulator of the tests (nat_mm/testing/cuda_emu)
// defines these macros before it includes a .cu, so the same source runs there unchanged: every
// launch goes through NAT_LAUNCH and every dynamic shared memory declaration through
// NAT_DYNAMIC_SHARED, never through <<<>>> or `extern __shared__` directly.
#pragma once

// NAT_LAUNCH(grid, block, shared_bytes, stream, kernel)(args...); the kernel comes last so that a
// template with several arguments needs no parentheses.
#ifndef NAT_LAUNCH
#define NAT_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<(grid), (block), (smem), (stream)>>>
#endif

// A kernel's dynamic shared memory: `type name[]`, 16-byte aligned.
#ifndef NAT_DYNAMIC_SHARED
#define NAT_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif

// The op library and dispatch key the CUDA kernels register under.
#ifndef NAT_MM_CUDA_LIBRARY
#define NAT_MM_CUDA_LIBRARY nat_mm
#define NAT_MM_CUDA_KEY CUDA
#define NAT_MM_CUDA_DEVICE_TYPE c10::DeviceType::CUDA
#endif

// Grid-stride loops cap their grids at this many blocks; the emulator builds with a small cap so
// that every loop runs more than once.
#ifndef NAT_MAX_BLOCKS
#define NAT_MAX_BLOCKS (int64_t(1) << 20)
#endif
