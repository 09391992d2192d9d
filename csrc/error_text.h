// The pieces of the extension's argument-error messages, as strings made without C++ streams.
//
// TORCH_CHECK formats its message with a std::ostringstream built in this library. On a GPU machine
// (torch 2.11 built with gcc-toolset-13, this library with the system's g++ 13.3) every error whose message
// streamed an integer, a shape or a device killed the process (SIGSEGV), while errors whose message streamed
// only text reached Python (bench/ext_errors.py, docs/gpu_performance.md). Integers written by a stream go
// through the locale's number facet, which torch's statically linked C++ runtime and the shared one may each
// hold a copy of; std::to_string does not. So the messages here pass only text to TORCH_CHECK.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

#include <ATen/ATen.h>

namespace symnmf {

template <typename T, typename = std::enable_if_t<std::is_integral_v<T>>>
inline std::string text(T value) {
  return std::to_string(value);
}

inline std::string text(at::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + "]";
}

// Device::str() formats inside c10, with c10's own stream.
inline std::string text(const c10::Device& device) { return device.str(); }

inline std::string text(at::ScalarType type) { return c10::toString(type); }

}  // namespace symnmf
