// The op library of the block-capped copy of the CUDA kernels (tools/gpu/build_capped.py): the
// schemas of csrc/na2d_schemas.h under the name `nat_mm_capped`. The real csrc/cuda/*.cu, compiled
// with -DNAT_MM_CUDA_LIBRARY=nat_mm_capped (csrc/cuda/launch.h), register their CUDA kernels in it.
#include <torch/library.h>

#include "na2d_schemas.h"

TORCH_LIBRARY(nat_mm_capped, m) { nat_mm::define_na2d_schemas(m); }
