// nat_emu runtime: launches, block barriers, warp exchanges, shared memory (see cuda_emu.h).
#include <c10/util/Exception.h>

#include <bit>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <thread>
#include <vector>

#include "cuda_emu.h"
#include "device.h"

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace nat_emu {
namespace {

// Thrown in the threads of a block once it has failed, to unwind them out of the kernel.
struct BlockAborted {};

std::mutex g_launch_mutex;  // one launch at a time
std::mutex g_error_mutex;
std::string g_launch_error;
std::mutex g_attr_mutex;
std::map<const void*, int> g_max_dynamic_shared;
std::mutex g_atomic_mutex;

// One rendezvous of the lanes in `mask` (a warp primitive). Lanes of disjoint masks (e.g. groups
// of 4 lanes reducing over their group) meet independently, as on a GPU.
struct Exchange {
  int arrived = 0;
  uint64_t generation = 0;
  const char* what = nullptr;
  std::array<uint64_t, 32> slots{}, snapshot{};
};

struct Warp {
  unsigned finished_lanes = 0;
  std::map<unsigned, Exchange> by_mask;
};

// State of the block being run, shared by its threads.
struct Block {
  std::mutex m;
  std::condition_variable cv;
  int threads = 0;
  int at_barrier = 0, barrier_line = -1, finished = 0, in_warp_op = 0;
  uint64_t barrier_generation = 0;
  std::vector<Warp> warps;
  std::string error;  // first error of this block
  const LaunchConfig* config = nullptr;
  unsigned char* shared = nullptr;

  std::string where() const {
    std::ostringstream s;
    s << "kernel " << config->name << ", block (" << blockIdx.x << ", " << blockIdx.y << ", "
      << blockIdx.z << ")";
    return s.str();
  }
  // Call with m held.
  void set_error(const std::string& message) {
    if (error.empty()) error = where() + ": " + message;
    cv.notify_all();
  }
  // Everyone still running is blocked: a barrier or a warp op that can never complete.
  void check_stuck() {
    if (!error.empty() || at_barrier + finished + in_warp_op != threads) return;
    if (at_barrier == threads || finished == threads) return;
    std::ostringstream s;
    if (at_barrier > 0)
      s << "__syncthreads (line " << barrier_line << ") is reached by " << at_barrier << " of "
        << threads << " threads; ";
    else
      s << "a warp primitive can never complete; ";
    s << finished << " threads exited the kernel and " << in_warp_op
      << " wait in a warp primitive";
    set_error(s.str());
  }
};

Block* g_block = nullptr;
thread_local int t_linear = 0;  // linear thread id in the block

int linear_id(const uint3& t, const dim3& b) { return int(t.x + b.x * (t.y + b.y * t.z)); }

std::string describe(const LaunchConfig& c) {
  std::ostringstream s;
  s << "kernel " << c.name << " with grid (" << c.grid.x << ", " << c.grid.y << ", " << c.grid.z
    << "), block (" << c.block.x << ", " << c.block.y << ", " << c.block.z << "), "
    << c.shared_bytes << " bytes of dynamic shared memory";
  return s.str();
}

// CUDA's launch checks; returns an error message or "".
std::string launch_error(const LaunchConfig& c) {
  const int64_t threads = int64_t(c.block.x) * c.block.y * c.block.z;
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || threads == 0)
    return "invalid configuration argument: zero-sized grid or block";
  if (c.grid.x > 2147483647u || c.grid.y > 65535u || c.grid.z > 65535u)
    return "invalid configuration argument: grid exceeds (2^31 - 1, 65535, 65535)";
  if (c.block.x > 1024u || c.block.y > 1024u || c.block.z > 64u || threads > kMaxThreadsPerBlock)
    return "invalid configuration argument: more than 1024 threads per block (or an axis over "
           "(1024, 1024, 64))";
  if (int64_t(c.shared_bytes) > kDefaultDynamicShared) {
    int allowed = 0;
    {
      std::lock_guard<std::mutex> lock(g_attr_mutex);
      auto it = g_max_dynamic_shared.find(c.kernel);
      if (it != g_max_dynamic_shared.end()) allowed = it->second;
    }
    if (int64_t(c.shared_bytes) > allowed)
      return "too many resources requested for launch: dynamic shared memory above 48 KiB needs "
             "cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) "
             "first (allowed now: " +
             std::to_string(std::max<int64_t>(allowed, kDefaultDynamicShared)) + " bytes)";
  }
  return "";
}

// NaN bytes too, so a read past the end gives NaN; a write past the end changes them.
constexpr unsigned char kGuardByte = 0xff;

}  // namespace

void set_launch_error(std::string message) {
  std::lock_guard<std::mutex> lock(g_error_mutex);
  if (g_launch_error.empty()) g_launch_error = std::move(message);
}

void check_launch() {
  std::string message;
  {
    std::lock_guard<std::mutex> lock(g_error_mutex);
    message.swap(g_launch_error);
  }
  TORCH_CHECK(message.empty(), "CUDA error (nat_emu): ", message);
}

void fail(const std::string& message) {
  Block& b = *g_block;
  {
    std::lock_guard<std::mutex> lock(b.m);
    b.set_error(message);
  }
  throw BlockAborted{};
}

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes) {
  // cudaErrorInvalidValue beyond what the (emulated) device allows
  if (bytes < 0 || size_t(bytes) > device_properties()->sharedMemPerBlockOptin)
    return 1;
  std::lock_guard<std::mutex> lock(g_attr_mutex);
  g_max_dynamic_shared[kernel] = bytes;
  return cudaSuccess;
}

void* dynamic_shared_memory() { return g_block->shared; }

unsigned lane_id() { return unsigned(t_linear % 32); }

unsigned active_mask() {
  Block& b = *g_block;
  std::lock_guard<std::mutex> lock(b.m);
  const int warp = t_linear / 32;
  const int lanes = std::min(32, b.threads - warp * 32);
  const unsigned all = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
  return all & ~b.warps[warp].finished_lanes;
}

void atomic_lock() { g_atomic_mutex.lock(); }
void atomic_unlock() { g_atomic_mutex.unlock(); }

void syncthreads(int line) {
  Block& b = *g_block;
  std::unique_lock<std::mutex> lock(b.m);
  if (!b.error.empty()) throw BlockAborted{};
  if (b.at_barrier == 0) {
    b.barrier_line = line;
  } else if (b.barrier_line != line) {
    b.set_error("threads wait at different __syncthreads (lines " +
                std::to_string(b.barrier_line) + " and " + std::to_string(line) + ")");
    throw BlockAborted{};
  }
  const uint64_t generation = b.barrier_generation;
  if (++b.at_barrier == b.threads) {
    b.at_barrier = 0;
    ++b.barrier_generation;
    b.cv.notify_all();
    return;
  }
  b.check_stuck();
  b.cv.wait(lock, [&] { return b.barrier_generation != generation || !b.error.empty(); });
  if (b.barrier_generation == generation) throw BlockAborted{};
}

std::array<uint64_t, 32> warp_exchange(unsigned mask, uint64_t value, const char* what) {
  Block& b = *g_block;
  std::unique_lock<std::mutex> lock(b.m);
  if (!b.error.empty()) throw BlockAborted{};
  const int lane = t_linear % 32;
  Warp& w = b.warps[t_linear / 32];
  auto failed = [&](const std::string& message) {
    b.set_error(std::string(what) + " in lane " + std::to_string(lane) + ": " + message);
    return BlockAborted{};
  };
  if (!((mask >> lane) & 1u)) throw failed("the calling lane is not in the mask");
  if (mask & w.finished_lanes) throw failed("the mask names lanes that have exited the kernel");
  for (const auto& [other, ex] : w.by_mask) {
    if (other != mask && ex.arrived > 0 && (other & mask))
      throw failed("lanes wait with overlapping masks at the same time");
  }
  Exchange& ex = w.by_mask[mask];
  if (ex.arrived == 0) {
    ex.what = what;
  } else if (ex.what != what) {
    throw failed("lanes of the mask meet at different primitives (" + std::string(ex.what) + ")");
  }
  ex.slots[lane] = value;
  const uint64_t generation = ex.generation;
  if (++ex.arrived == std::popcount(mask)) {
    ex.arrived = 0;
    ex.snapshot = ex.slots;
    ++ex.generation;
    b.in_warp_op -= std::popcount(mask) - 1;
    b.cv.notify_all();
    return ex.snapshot;
  }
  ++b.in_warp_op;
  b.check_stuck();
  b.cv.wait(lock, [&] { return ex.generation != generation || !b.error.empty(); });
  if (ex.generation == generation) throw BlockAborted{};
  return ex.snapshot;
}

void run_launch(const LaunchConfig& config, const std::function<void()>& body) {
  {
    std::lock_guard<std::mutex> lock(g_error_mutex);
    if (!g_launch_error.empty()) return;  // a bad dim3, or an unchecked earlier failure
  }
  const std::string bad = launch_error(config);
  if (!bad.empty()) {
    set_launch_error(bad + " (" + describe(config) + ")");
    return;
  }
  std::lock_guard<std::mutex> launch_lock(g_launch_mutex);
  const dim3 grid = config.grid, block = config.block;
  const int threads = int(block.x * block.y * block.z);
  // exactly shared_bytes + guard, 64-byte aligned: AddressSanitizer sees any access beyond it
  std::vector<unsigned char> storage(config.shared_bytes + kGuardBytes + 64);
  const size_t misalign = reinterpret_cast<uintptr_t>(storage.data()) % 64;
  unsigned char* const shared = storage.data() + (misalign ? 64 - misalign : 0);

  Block b;
  b.threads = threads;
  b.config = &config;
  b.shared = shared;
  b.warps.resize((threads + 31) / 32);
  g_block = &b;

  // Workers run one block at a time: the coordinator (this thread) prepares block n, bumps
  // `start`, and waits until all threads of the block have finished it.
  std::mutex start_m;
  std::condition_variable start_cv;
  int64_t start = -1;  // the block the workers may run; -2: stop
  uint3 current_block{};

  auto worker = [&](int tid) {
    const uint3 t{unsigned(tid % block.x), unsigned(tid / block.x % block.y),
                  unsigned(tid / (block.x * block.y))};
    int64_t done = -1;
    while (true) {
      uint3 bid;
      {
        std::unique_lock<std::mutex> lock(start_m);
        start_cv.wait(lock, [&] { return start != done; });
        if (start == -2) return;
        done = start;
        bid = current_block;
      }
      threadIdx = t;
      blockIdx = bid;
      blockDim = block;
      gridDim = grid;
      t_linear = linear_id(t, block);
      try {
        body();
      } catch (const BlockAborted&) {
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(b.m);
        b.set_error(std::string("exception in the kernel: ") + e.what());
      }
      std::lock_guard<std::mutex> lock(b.m);
      ++b.finished;
      Warp& w = b.warps[t_linear / 32];
      w.finished_lanes |= 1u << (t_linear % 32);
      for (const auto& [mask, ex] : w.by_mask) {
        if (ex.arrived > 0 && ((mask >> (t_linear % 32)) & 1u))
          b.set_error(std::string(ex.what) + ": lane " + std::to_string(t_linear % 32) +
                      " exited the kernel while the other lanes of the mask wait for it");
      }
      b.check_stuck();
      b.cv.notify_all();
    }
  };

  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int tid = 0; tid < threads; ++tid) pool.emplace_back(worker, tid);

  std::string error;
  int64_t index = 0;
  for (unsigned z = 0; z < grid.z && error.empty(); ++z) {
    for (unsigned y = 0; y < grid.y && error.empty(); ++y) {
      for (unsigned x = 0; x < grid.x && error.empty(); ++x, ++index) {
        std::memset(shared, 0xff, config.shared_bytes);  // NaN in every float format
        std::memset(shared + config.shared_bytes, kGuardByte, kGuardBytes);
        {
          std::lock_guard<std::mutex> lock(b.m);
          b.at_barrier = b.finished = b.in_warp_op = 0;
          b.barrier_line = -1;
          for (auto& w : b.warps) w = Warp{};
        }
        {
          std::lock_guard<std::mutex> lock(start_m);
          current_block = {x, y, z};
          start = index;
        }
        start_cv.notify_all();
        std::unique_lock<std::mutex> lock(b.m);
        b.cv.wait(lock, [&] { return b.finished == threads; });
        error = b.error;
        if (error.empty()) {
          for (size_t i = 0; i < kGuardBytes; ++i) {
            if (shared[config.shared_bytes + i] != kGuardByte) {
              std::ostringstream s;
              s << "kernel " << config.name << ", block (" << x << ", " << y << ", " << z
                << "): wrote past the end of its " << config.shared_bytes
                << " bytes of dynamic shared memory (guard byte " << i << ")";
              error = s.str();
              break;
            }
          }
        }
      }
    }
  }
  {
    std::lock_guard<std::mutex> lock(start_m);
    start = -2;
  }
  start_cv.notify_all();
  for (auto& t : pool) t.join();
  g_block = nullptr;
  if (!error.empty()) set_launch_error(error);
}

}  // namespace nat_emu
