// The CPU kernels' output cache (cpu/host_cache.h), as the Python layer's symnmf_kernels.set_host_cache_limit,
// host_cache_bytes and empty_host_cache reach it.
#include <torch/library.h>

#include "cpu/host_cache.h"

namespace {
int64_t host_cache_set_limit(int64_t max_bytes) {
  TORCH_CHECK(max_bytes >= 0, "set_host_cache_limit: max_bytes must be >= 0, got ", max_bytes);
  return symnmf::HostCache::get().set_limit(max_bytes);
}
int64_t host_cache_bytes() { return symnmf::HostCache::get().cached_bytes(); }
}  // namespace

TORCH_LIBRARY_FRAGMENT(symnmf_kernels, m) {
  // Sets the most bytes of freed output buffers the cache keeps and frees the rest; returns the limit before.
  m.def("host_cache_set_limit(int max_bytes) -> int", &host_cache_set_limit);
  // The bytes of freed output buffers the cache holds.
  m.def("host_cache_bytes() -> int", &host_cache_bytes);
}
