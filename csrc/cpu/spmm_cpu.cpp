// CSR x dense on the CPU: rows in parallel (OpenMP); each row's r outputs are accumulated in registers
// (a fixed-width accumulator for every r <= 16 and every multiple of 16 up to 128; other r split into two
// such widths, except float32 r < 32 on AVX2, which takes one masked pass) and stored once. The loop is
// compiled twice, for AVX2 + FMA and for the baseline instruction set, and the CPU picks one at run time.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <type_traits>

#include <ATen/Parallel.h>
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#endif

#include "../spmm.h"
#include "cpu_common.h"
#include "host_cache.h"

namespace symnmf {
namespace {

// Below this many multiply-adds starting threads costs more than the product.
constexpr int64_t kParallelWork = 1 << 15;

}  // namespace
}  // namespace symnmf

// The row loops, once per instruction set (spmm_cpu_rows.h defines them in the enclosing namespace).
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define SYMNMF_SPMM_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define SYMNMF_ROWS_AVX2 1
namespace symnmf {
namespace avx2 {
#include "spmm_cpu_rows.h"
}  // namespace avx2
}  // namespace symnmf
#undef SYMNMF_ROWS_AVX2
#pragma GCC pop_options
#endif
namespace symnmf {
namespace base {
#include "spmm_cpu_rows.h"
}  // namespace base
}  // namespace symnmf

namespace symnmf {
namespace {

at::Tensor spmm_csr_cpu(const at::Tensor& crow_indices, const at::Tensor& col_indices, const at::Tensor& values,
                        const at::Tensor& dense, const std::optional<at::Tensor>& /*t_crow_indices*/,
                        const std::optional<at::Tensor>& /*t_col_indices*/,
                        const std::optional<at::Tensor>& /*t_values*/) {
  check_spmm_args(crow_indices, col_indices, values, dense);
  const at::Tensor crow = crow_indices.contiguous();
  const at::Tensor col = col_indices.contiguous();
  const at::Tensor val = values.contiguous();
  // Rows of dense are read whole, so they must be contiguous; any row and batch stride is fine.
  const at::Tensor U3 = dense.dim() == 3 ? dense : dense.unsqueeze(0);
  const at::Tensor U = (U3.stride(2) == 1 || U3.size(2) <= 1) ? U3 : U3.contiguous();
  const int64_t batch = U.size(0), n_cols = U.size(1), r = U.size(2);
  const int64_t n_rows = crow.numel() - 1;
  at::Tensor out = cached_empty({batch, n_rows, r}, U.options());
  AT_DISPATCH_INDEX_TYPES(crow.scalar_type(), "spmm_csr_cpu_crow", [&] {
    using crow_t = index_t;
    check_row_pointers(crow.data_ptr<crow_t>(), n_rows, col.numel(), "spmm_csr");
    AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "spmm_csr_cpu", [&] {
      AT_DISPATCH_INDEX_TYPES(col.scalar_type(), "spmm_csr_cpu_index", [&] {
        const int threads = at::get_num_threads();
        const bool parallel = col.numel() * r * batch > kParallelWork && n_rows > 1 && threads > 1;
        int64_t bad = -1;
        if (out.numel() == 0) {
          bad = first_bad_column(col.data_ptr<index_t>(), col.numel(), n_cols);
        } else
#ifdef SYMNMF_SPMM_AVX2
        if (cpu_has_avx2()) {
          bad = avx2::spmm_rows<scalar_t, crow_t, index_t>(
              crow.data_ptr<crow_t>(), col.data_ptr<index_t>(), val.data_ptr<scalar_t>(), U.data_ptr<scalar_t>(),
              out.data_ptr<scalar_t>(), batch, n_rows, n_cols, r, U.stride(0), U.stride(1), parallel, threads);
        } else
#endif
        {
          bad = base::spmm_rows<scalar_t, crow_t, index_t>(
              crow.data_ptr<crow_t>(), col.data_ptr<index_t>(), val.data_ptr<scalar_t>(), U.data_ptr<scalar_t>(),
              out.data_ptr<scalar_t>(), batch, n_rows, n_cols, r, U.stride(0), U.stride(1), parallel, threads);
        }
        TORCH_CHECK(bad < 0, "spmm_csr: col_indices[", text(bad), "] = ",
                    text(bad < 0 ? 0 : static_cast<int64_t>(col.data_ptr<index_t>()[bad])), " is out of range for ",
                    text(n_cols), " columns (dense has ", text(n_cols), " rows)");
      });
    });
  });
  return dense.dim() == 3 ? out : out.squeeze(0);
}

}  // namespace
}  // namespace symnmf

TORCH_LIBRARY_IMPL(symnmf_kernels, CPU, m) { m.impl("spmm_csr", &symnmf::spmm_csr_cpu); }
