// nat_emu: runs CUDA kernel source on the host, for testing the real csrc/cuda/*.cu without a GPU.
//
// Force-included (-include) before a .cu that is compiled as C++. Each launched block runs its
// threads as real threads (blocks one after another); __syncthreads is a barrier of the block's
// threads, and warp primitives (__shfl_*_sync, __syncwarp, __ballot_sync, __any/__all_sync) meet
// the lanes of one warp (32 consecutive linear thread ids). What it checks, as CUDA would fail or
// as CUDA leaves undefined:
//   - launch limits: grid (2^31 - 1, 65535, 65535), at most 1024 threads per block (1024, 1024,
//     64 per axis), dynamic shared memory above 48 KiB only after cudaFuncSetAttribute, grid and
//     block sizes that do not fit dim3's unsigned ints;
//   - a __syncthreads that only some threads of a block reach (others exited, or wait at another
//     __syncthreads or in a warp primitive), warp primitives whose mask names lanes that exited or
//     that call them with another mask;
//   - dynamic shared memory: NaN bytes (0xff) before each block, and a guard zone of NaN bytes
//     after it that must be intact when the block ends (a read past the end gives NaN).
// Errors are reported like CUDA launch errors: C10_CUDA_KERNEL_LAUNCH_CHECK throws, naming the
// kernel, the block and what went wrong. What it cannot see: warp timing (lanes run as
// independent threads), the GPU memory model, races between blocks (blocks run one at a time),
// device maths (expf etc. are the host's).
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------------------------------------
// CUDA keywords and built-in variables.

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __constant__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Static shared memory: one object shared by the threads of the running block (blocks run one at
// a time). Unlike dynamic shared memory it is not NaN-filled between blocks.
#define __shared__ static

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3() = default;
  // CUDA converts silently to unsigned; the emulator refuses what does not fit.
  template <typename X, typename Y = unsigned, typename Z = unsigned,
            typename = std::enable_if_t<std::is_integral_v<X>>>
  dim3(X x_, Y y_ = 1, Z z_ = 1) : x(fit(x_)), y(fit(y_)), z(fit(z_)) {}
  operator uint3() const { return {x, y, z}; }

 private:
  template <typename I>
  static unsigned fit(I v);
};

extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
constexpr int warpSize = 32;

typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace nat_emu {

constexpr int64_t kMaxThreadsPerBlock = 1024;
constexpr int64_t kDefaultDynamicShared = 48 * 1024;
constexpr size_t kGuardBytes = 256;

// Records a launch-time error (bad configuration), reported by the next launch check.
void set_launch_error(std::string message);
// An error inside a running kernel: stops the block's threads and fails the launch.
[[noreturn]] void fail(const std::string& message);
// C10_CUDA_KERNEL_LAUNCH_CHECK: throws (c10::Error) if the last launch failed, and clears it.
void check_launch();

struct LaunchConfig {
  dim3 grid, block;
  size_t shared_bytes;
  const void* kernel;
  const char* name;
};
// Runs body() once per thread of every block of the launch (blocks in order).
void run_launch(const LaunchConfig& config, const std::function<void()>& body);

template <typename... P>
struct Launcher {
  void (*kernel)(P...);
  LaunchConfig config;
  template <typename... A>
  void operator()(A&&... args) const {
    const std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    run_launch(config, [&] { std::apply(kernel, params); });  // each thread gets copies
  }
};

template <typename... P, typename G, typename B>
Launcher<P...> make_launcher(void (*kernel)(P...), const G& grid, const B& block,
                             int64_t shared_bytes, const char* name) {
  if (shared_bytes < 0) set_launch_error(std::string(name) + ": negative shared memory size");
  return {kernel, {dim3(grid), dim3(block), static_cast<size_t>(shared_bytes),
                   reinterpret_cast<const void*>(kernel), name}};
}

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes);
void* dynamic_shared_memory();

void syncthreads(int line);
// The warp primitives exchange 8-byte values among the lanes in `mask`; returns all 32 slots.
std::array<uint64_t, 32> warp_exchange(unsigned mask, uint64_t value, const char* what);
unsigned lane_id();
unsigned active_mask();
void atomic_lock();
void atomic_unlock();

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a type > 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}

template <typename T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

// Lane `src` of the exchange, or the caller's own value when src is outside its width segment.
template <typename T>
T shuffle(unsigned mask, T var, int width, const char* what, int src, bool in_segment) {
  const auto slots = warp_exchange(mask, to_bits(var), what);
  if (!in_segment) return var;
  if (!((mask >> src) & 1u))
    fail(std::string(what) + " reads lane " + std::to_string(src) + ", which is not in its mask");
  (void)width;
  return from_bits<T>(slots[src]);
}

}  // namespace nat_emu

template <typename I>
unsigned dim3::fit(I v) {
  if constexpr (std::is_signed_v<I>) {
    if (v < 0) {
      nat_emu::set_launch_error("negative grid or block size " + std::to_string(v));
      return 0;
    }
  }
  if (static_cast<unsigned long long>(v) > std::numeric_limits<unsigned>::max()) {
    nat_emu::set_launch_error("grid or block size " + std::to_string(v) +
                              " does not fit in dim3 (CUDA would truncate it)");
    return 0;
  }
  return static_cast<unsigned>(v);
}

// ---------------------------------------------------------------------------------------------
// Device functions.

#define __syncthreads() ::nat_emu::syncthreads(__LINE__)

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::nat_emu::warp_exchange(mask, 0, "__syncwarp");
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const auto slots = ::nat_emu::warp_exchange(mask, predicate != 0, "__ballot_sync");
  unsigned ballot = 0;
  for (unsigned lane = 0; lane < 32; ++lane)
    if (((mask >> lane) & 1u) && slots[lane]) ballot |= 1u << lane;
  return ballot;
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) {
  return __ballot_sync(mask, predicate) == mask;
}
inline unsigned __activemask() { return ::nat_emu::active_mask(); }

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  const int lane = static_cast<int>(::nat_emu::lane_id());
  const int src = (lane & ~(width - 1)) | (src_lane & (width - 1));
  return ::nat_emu::shuffle(mask, var, width, "__shfl_sync", src, true);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  const int lane = static_cast<int>(::nat_emu::lane_id());
  const int src = lane ^ lane_mask;
  const bool in_segment = (src & ~(width - 1)) == (lane & ~(width - 1));
  return ::nat_emu::shuffle(mask, var, width, "__shfl_xor_sync", src, in_segment);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  const int lane = static_cast<int>(::nat_emu::lane_id());
  const bool in_segment = (lane & (width - 1)) + static_cast<int>(delta) < width;
  return ::nat_emu::shuffle(mask, var, width, "__shfl_down_sync", lane + int(delta), in_segment);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  const int lane = static_cast<int>(::nat_emu::lane_id());
  const bool in_segment = (lane & (width - 1)) >= static_cast<int>(delta);
  return ::nat_emu::shuffle(mask, var, width, "__shfl_up_sync", lane - int(delta), in_segment);
}

template <typename T>
T atomicAdd(T* address, T value) {
  ::nat_emu::atomic_lock();
  const T old = *address;
  *address = old + value;
  ::nat_emu::atomic_unlock();
  return old;
}

template <typename T>
T __ldg(const T* p) {
  return *p;
}
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

template <typename K>
cudaError_t cudaFuncSetAttribute(K* kernel, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  return ::nat_emu::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value);
}

inline const char* cudaGetErrorString(cudaError_t) { return "emulated CUDA error"; }

// ---------------------------------------------------------------------------------------------
// The macros of csrc/cuda/launch.h.

#define NAT_LAUNCH(grid, block, smem, stream, ...)                                               \
  ::nat_emu::make_launcher(&__VA_ARGS__, (grid), (block), static_cast<int64_t>(smem), \
                           #__VA_ARGS__)
#define NAT_DYNAMIC_SHARED(type, name) \
  type* name = static_cast<type*>(::nat_emu::dynamic_shared_memory())
