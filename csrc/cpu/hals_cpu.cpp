// One SymHALS sweep over a factor's columns on the CPU, in place: the torch path of
// symnmf_kernels/ops/hals.py (a column loop of about eight tensor operations per column and block of rows)
// in one pass over W, C and V. The row loop is compiled twice, for AVX2 + FMA and for the baseline
// instruction set, and the CPU picks one at run time.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_common.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define SYMNMF_HALS_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace symnmf {
namespace hals_avx2 {
constexpr int kVectorBytes = 32;
#include "hals_cpu_rows.h"
}  // namespace hals_avx2
}  // namespace symnmf
#pragma GCC pop_options
#endif
namespace symnmf {
namespace hals_base {
constexpr int kVectorBytes = 16;
#include "hals_cpu_rows.h"
}  // namespace hals_base
}  // namespace symnmf

namespace symnmf {
namespace {

template <typename T>
void sweep(T* W, const T* C, const T* V, T lam, const T* B, int64_t n, int64_t r, T* colmax) {
  std::vector<T> Bt(static_cast<size_t>(r * r)), d(static_cast<size_t>(r));
  for (int64_t k = 0; k < r; ++k) {
    for (int64_t j = 0; j < r; ++j) Bt[k * r + j] = B[j * r + k];
    d[k] = B[k * r + k];
  }
  for (int64_t k = 0; k < r; ++k) colmax[k] = -std::numeric_limits<T>::infinity();
  std::mutex merge;
  // A block of rows costs about r^2 multiply-adds per row: enough rows per task to outweigh a thread's start.
  const int64_t grain = std::max<int64_t>(64, (1 << 16) / (r * r));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    // The row loop's vectors need up to 32-byte alignment, which std::vector does not promise.
    std::vector<T> raw(static_cast<size_t>(2 * r * hals_base::kBlockRows + 32 / sizeof(T)));
    const uintptr_t at = (reinterpret_cast<uintptr_t>(raw.data()) + 31) & ~static_cast<uintptr_t>(31);
    T* const buf = reinterpret_cast<T*>(at);
    std::vector<T> m(static_cast<size_t>(r), -std::numeric_limits<T>::infinity());
#ifdef SYMNMF_HALS_AVX2
    if (cpu_has_avx2()) {
      hals_avx2::hals_rows<T>(W, C, V, lam, Bt.data(), d.data(), r, begin, end,
                               reinterpret_cast<typename hals_avx2::Lanes<T>::V*>(buf), m.data());
    } else
#endif
    {
      hals_base::hals_rows<T>(W, C, V, lam, Bt.data(), d.data(), r, begin, end,
                              reinterpret_cast<typename hals_base::Lanes<T>::V*>(buf), m.data());
    }
    std::lock_guard<std::mutex> lock(merge);
    for (int64_t k = 0; k < r; ++k) {
      if (!(m[k] <= colmax[k]) && !std::isnan(colmax[k])) colmax[k] = m[k];
    }
  });
}

at::Tensor hals_sweep_rows_cpu(at::Tensor& W, const at::Tensor& C_in, const at::Tensor& B_in,
                               const std::optional<at::Tensor>& V_in, double lam) {
  TORCH_CHECK(W.dim() == 2, "hals_sweep_rows_: W must be (n, r), got shape ", text(W.sizes()));
  const int64_t n = W.size(0), r = W.size(1);
  TORCH_CHECK(W.stride(1) == 1 && (W.stride(0) == r || n <= 1), "hals_sweep_rows_: W must be row-major contiguous");
  TORCH_CHECK(C_in.sizes() == W.sizes(), "hals_sweep_rows_: C must have W's shape ", text(W.sizes()), ", got ",
              text(C_in.sizes()));
  TORCH_CHECK(B_in.dim() == 2 && B_in.size(0) == r && B_in.size(1) == r, "hals_sweep_rows_: B must be (r, r) = (",
              text(r), ", ", text(r), "), got shape ", text(B_in.sizes()));
  TORCH_CHECK(!V_in.has_value() || V_in->sizes() == W.sizes(), "hals_sweep_rows_: V must have W's shape");
  TORCH_CHECK(C_in.scalar_type() == W.scalar_type() && B_in.scalar_type() == W.scalar_type() &&
                  (!V_in.has_value() || V_in->scalar_type() == W.scalar_type()),
              "hals_sweep_rows_: W, C, B and V must share a dtype");
  const at::Tensor C = C_in.contiguous(), B = B_in.contiguous();
  const at::Tensor V = V_in.has_value() ? V_in->contiguous() : at::Tensor();
  at::Tensor colmax = at::empty({r}, W.options());
  if (r == 0) return colmax;
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "hals_sweep_rows_", [&] {
    sweep<scalar_t>(W.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), V.defined() ? V.data_ptr<scalar_t>() : nullptr,
                    static_cast<scalar_t>(lam), B.data_ptr<scalar_t>(), n, r, colmax.data_ptr<scalar_t>());
  });
  return colmax;
}

}  // namespace
}  // namespace symnmf

TORCH_LIBRARY_IMPL(symnmf_kernels, CPU, m) {
  m.impl("hals_sweep_rows_", &symnmf::hals_sweep_rows_cpu);
}
