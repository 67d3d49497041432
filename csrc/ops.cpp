// The `nat_mm` op library: its schemas (na2d_schemas.h, shared with the CUDA emulator of the
// tests) and has_cuda. Kernels register per device in cpu/na2d_cpu.cpp and cuda/na2d_cuda.cu; fake
// kernels and autograd live in nat_mm/ops/_library.py.
#include <Python.h>
#include <torch/library.h>

#include "na2d_schemas.h"

namespace {
bool has_cuda() {
#ifdef NAT_MM_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

TORCH_LIBRARY(nat_mm, m) {
  nat_mm::define_na2d_schemas(m);
  // Whether this build has CUDA kernels.
  m.def("has_cuda() -> bool", &has_cuda);
}

// The ops register on import; the module itself exposes nothing.
static struct PyModuleDef nat_mm_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&nat_mm_module); }
