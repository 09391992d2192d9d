// The squared norm of the projected gradient on the CPU: one pass reading grad and U, no temporaries (the
// torch form builds two boolean masks, their union and a masked copy: about six passes over n x r data).
// The loop is compiled twice, for AVX2 and for the baseline instruction set, and the CPU picks one at run time.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_common.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define SYMNMF_PG_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace symnmf {
namespace pg_avx2 {
constexpr int kVectorBytes = 32;
#include "projected_gradient_cpu_rows.h"
}  // namespace pg_avx2
}  // namespace symnmf
#pragma GCC pop_options
#endif
namespace symnmf {
namespace pg_base {
constexpr int kVectorBytes = 16;
#include "projected_gradient_cpu_rows.h"
}  // namespace pg_base
}  // namespace symnmf

namespace symnmf {
namespace {

// Blocks of a fixed size, summed in their order: the result does not depend on the number of threads.
constexpr int64_t kBlock = 1 << 16;

template <typename T>
double projected_gradient_sq_impl(const T* g, const T* u, int64_t m) {
  const int64_t blocks = (m + kBlock - 1) / kBlock;
  std::vector<double> parts(static_cast<size_t>(blocks), 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      const int64_t begin = b * kBlock, end = std::min(m, begin + kBlock);
#ifdef SYMNMF_PG_AVX2
      if (cpu_has_avx2()) {
        parts[b] = pg_avx2::projected_gradient_sq_range<T>(g, u, begin, end);
        continue;
      }
#endif
      parts[b] = pg_base::projected_gradient_sq_range<T>(g, u, begin, end);
    }
  });
  double total = 0.0;
  for (const double part : parts) total += part;
  return total;
}

at::Tensor projected_gradient_sq_cpu(const at::Tensor& grad_in, const at::Tensor& U_in) {
  TORCH_CHECK(grad_in.sizes() == U_in.sizes(), "projected_gradient_sq: grad has shape ", text(grad_in.sizes()),
              " but U has ", text(U_in.sizes()), "; they must match");
  TORCH_CHECK(grad_in.scalar_type() == U_in.scalar_type(), "projected_gradient_sq: grad (",
              text(grad_in.scalar_type()), ") and U (", text(U_in.scalar_type()), ") must share a dtype");
  const at::Tensor grad = grad_in.contiguous(), U = U_in.contiguous();
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "projected_gradient_sq", [&] {
    total = projected_gradient_sq_impl<scalar_t>(grad.data_ptr<scalar_t>(), U.data_ptr<scalar_t>(), grad.numel());
  });
  return at::scalar_tensor(total, grad.options().dtype(at::kDouble));  // float64 whatever grad's dtype
}

}  // namespace
}  // namespace symnmf

TORCH_LIBRARY_IMPL(symnmf_kernels, CPU, m) {
  m.impl("projected_gradient_sq", &symnmf::projected_gradient_sq_cpu);
}
