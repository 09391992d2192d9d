// A cache of the CPU kernels' large output buffers, kept across calls.
//
// A training step allocates the same n x r outputs every step and frees them by the next. Whether glibc then hands
// back mapped memory or fresh pages, which fault on their first write, depends on the process's history: a
// 4-restart SymNMF-Net step at n = 20,000 took 0 page faults in some processes and about 5,800 in others, and 1.35x
// as long (docs/cpu_backend.md, "The host cache"). Outputs of at least kHostCacheMinBytes are taken from here
// instead: a buffer freed by its tensor goes back on a free list for its exact size, and the next output of that
// size reuses it, its pages already mapped. Free buffers beyond the limit (set_host_cache_limit, 256 MiB unless
// SYMNMF_HOST_CACHE_MB says otherwise; 0 turns the cache off) are returned to the system at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

namespace symnmf {

constexpr size_t kHostCacheMinBytes = size_t{1} << 20;

class HostCache {
 public:
  static HostCache& get() {
    static HostCache* cache = new HostCache();  // never destroyed: tensors may free into it at exit
    return *cache;
  }

  // A buffer of bytes for an output: a cached one, else a new one; null when the cache is off (limit 0).
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (limit_ == 0) return nullptr;
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        void* ptr = it->second.back();
        it->second.pop_back();
        cached_ -= bytes;
        return ptr;
      }
    }
    return c10::alloc_cpu(bytes);
  }

  void give(void* ptr, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + bytes <= limit_) {
        free_[bytes].push_back(ptr);
        cached_ += bytes;
        return;
      }
    }
    c10::free_cpu(ptr);
  }

  // Sets the limit on the cached bytes, frees what lies beyond it, and returns the limit before.
  int64_t set_limit(int64_t max_bytes) {
    std::vector<void*> release;
    size_t before;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      before = limit_;
      limit_ = static_cast<size_t>(max_bytes);
      for (auto& entry : free_) {
        while (cached_ > limit_ && !entry.second.empty()) {
          release.push_back(entry.second.back());
          entry.second.pop_back();
          cached_ -= entry.first;
        }
      }
    }
    for (void* ptr : release) c10::free_cpu(ptr);
    return static_cast<int64_t>(before);
  }

  int64_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(cached_);
  }

 private:
  HostCache() {
    const char* mb = std::getenv("SYMNMF_HOST_CACHE_MB");
    limit_ = (mb != nullptr && mb[0] != '\0') ? static_cast<size_t>(std::strtoull(mb, nullptr, 10)) << 20
                                               : size_t{256} << 20;
  }

  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
  size_t limit_ = 0;
};

// The owner of a cached buffer while a tensor holds it: its DataPtr's context.
struct CachedBuffer {
  void* ptr;
  size_t bytes;
};

inline void give_back(void* context) {
  auto* buffer = static_cast<CachedBuffer*>(context);
  HostCache::get().give(buffer->ptr, buffer->bytes);
  delete buffer;
}

// at::empty(sizes, options) for a contiguous CPU output, from the cache when it is large enough and the cache is
// on. The tensor owns its buffer as any other (its storage stays resizable, through the CPU allocator); freeing
// the storage gives the buffer back to the cache.
inline at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * options.dtype().itemsize();
  void* ptr = bytes < kHostCacheMinBytes ? nullptr : HostCache::get().take(bytes);
  if (ptr == nullptr) return at::empty(sizes, options);
  c10::Storage storage(c10::Storage::use_byte_size_t(), bytes,
                       c10::DataPtr(ptr, new CachedBuffer{ptr, bytes}, &give_back, at::Device(at::kCPU)),
                       c10::GetCPUAllocator(), /*resizable=*/true);
  return at::empty({0}, options).set_(std::move(storage), 0, sizes);
}

}  // namespace symnmf
