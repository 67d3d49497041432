// The real csrc/cuda/na2d_tiled.cu, compiled for the host against cuda_emu.h (force-included);
// na2d_cuda_emu.cpp's ops call into it.
#include "cuda/na2d_tiled.cu"
