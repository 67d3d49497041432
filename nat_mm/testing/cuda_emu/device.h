// The emulated device's properties (the fields of cudaDeviceProp the kernels read), as an
// H100/H200 has them. NAT_EMU_SHARED_OPTIN (bytes) overrides sharedMemPerBlockOptin, to emulate a
// GPU with less shared memory.
#pragma once

#include <cstddef>
#include <cstdlib>

namespace nat_emu {

struct DeviceProp {
  size_t sharedMemPerBlock = 48 * 1024;
  size_t sharedMemPerBlockOptin = 227 * 1024;
  int maxThreadsPerBlock = 1024;
  int multiProcessorCount = 132;
  int warpSize = 32;
};

inline DeviceProp* device_properties() {
  static thread_local DeviceProp prop;
  prop = DeviceProp{};
  if (const char* optin = std::getenv("NAT_EMU_SHARED_OPTIN"))
    prop.sharedMemPerBlockOptin = std::strtoull(optin, nullptr, 10);
  return &prop;
}

}  // namespace nat_emu
