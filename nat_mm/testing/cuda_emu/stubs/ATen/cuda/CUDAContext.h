// nat_emu stub of ATen/cuda/CUDAContext.h: one emulated stream and one emulated device.
#pragma once
#include <ATen/ATen.h>

#include "device.h"

namespace at::cuda {
struct CUDAStream {};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
inline nat_emu::DeviceProp* getCurrentDeviceProperties() { return nat_emu::device_properties(); }
}  // namespace at::cuda
