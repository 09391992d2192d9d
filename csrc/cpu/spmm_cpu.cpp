// CSR x dense on the CPU: rows in parallel (OpenMP), a vectorised axpy over the r columns.
#include <atomic>
#include <cstdint>

#include <ATen/Parallel.h>

#include "../spmm.h"

namespace symnmf {
namespace {

// Below this many multiply-adds starting threads costs more than the product.
constexpr int64_t kParallelWork = 1 << 15;

// Row pointers must start at 0, never decrease and end at nnz: then every row's
// range [crow[i], crow[i+1]) lies inside col_indices.
void check_row_pointers(const int64_t* crow, int64_t n_rows, int64_t nnz) {
  TORCH_CHECK(crow[0] == 0, "spmm_csr: crow_indices[0] must be 0, got ", crow[0]);
  TORCH_CHECK(crow[n_rows] == nnz, "spmm_csr: crow_indices[-1] must equal nnz = ", nnz, ", got ",
                    crow[n_rows]);
  for (int64_t i = 0; i < n_rows; ++i) {
    TORCH_CHECK(crow[i + 1] >= crow[i], "spmm_csr: crow_indices must be non-decreasing, but crow_indices[",
                      i + 1, "] = ", crow[i + 1], " < crow_indices[", i, "] = ", crow[i]);
  }
}

// out[b, i, :] = sum_k val[k] * dense[b, col[k], :] over row i's nonzeros k, for every batch b.
// Each row's indices are read once for the whole batch.
template <typename scalar_t, typename index_t>
void spmm_rows(const int64_t* crow, const index_t* col, const scalar_t* val, const scalar_t* dense, scalar_t* out,
               int64_t batch, int64_t n_rows, int64_t n_cols, int64_t r, int64_t stride_b, int64_t stride_n) {
  std::atomic<int64_t> bad_entry{-1};
  const bool parallel = crow[n_rows] * r * batch > kParallelWork && n_rows > 1;
  const int threads = at::get_num_threads();
  (void)threads;  // unused without OpenMP
#pragma omp parallel for schedule(dynamic, 64) if (parallel) num_threads(threads)
  for (int64_t i = 0; i < n_rows; ++i) {
    for (int64_t b = 0; b < batch; ++b) {
      scalar_t* __restrict__ o = out + (b * n_rows + i) * r;
      for (int64_t c = 0; c < r; ++c) o[c] = scalar_t(0);
    }
    for (int64_t k = crow[i]; k < crow[i + 1]; ++k) {
      const int64_t j = static_cast<int64_t>(col[k]);
      if (static_cast<uint64_t>(j) >= static_cast<uint64_t>(n_cols)) {
        bad_entry.store(k, std::memory_order_relaxed);
        continue;
      }
      const scalar_t v = val[k];
      for (int64_t b = 0; b < batch; ++b) {
        scalar_t* __restrict__ o = out + (b * n_rows + i) * r;
        const scalar_t* __restrict__ u = dense + b * stride_b + j * stride_n;
#pragma omp simd
        for (int64_t c = 0; c < r; ++c) o[c] += v * u[c];
      }
    }
  }
  const int64_t k = bad_entry.load();
  TORCH_CHECK(k < 0, "spmm_csr: col_indices[", k, "] = ", k < 0 ? 0 : static_cast<int64_t>(col[k]),
                    " is out of range for ", n_cols, " columns (dense has ", n_cols, " rows)");
}

at::Tensor spmm_csr_cpu(const at::Tensor& crow_indices, const at::Tensor& col_indices, const at::Tensor& values,
                        const at::Tensor& dense, const std::optional<at::Tensor>& /*t_crow_indices*/,
                        const std::optional<at::Tensor>& /*t_col_indices*/,
                        const std::optional<at::Tensor>& /*t_values*/) {
  check_spmm_args(crow_indices, col_indices, values, dense);
  const at::Tensor crow = crow_indices.to(at::kLong).contiguous();
  const at::Tensor col = col_indices.contiguous();
  const at::Tensor val = values.contiguous();
  // Rows of dense are read whole, so they must be contiguous; any row and batch stride is fine.
  const at::Tensor U3 = dense.dim() == 3 ? dense : dense.unsqueeze(0);
  const at::Tensor U = (U3.stride(2) == 1 || U3.size(2) <= 1) ? U3 : U3.contiguous();
  const int64_t batch = U.size(0), n_cols = U.size(1), r = U.size(2);
  const int64_t n_rows = crow.numel() - 1;
  check_row_pointers(crow.data_ptr<int64_t>(), n_rows, col.numel());
  at::Tensor out = at::empty({batch, n_rows, r}, U.options());
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "spmm_csr_cpu", [&] {
      AT_DISPATCH_INDEX_TYPES(col.scalar_type(), "spmm_csr_cpu_index", [&] {
        spmm_rows<scalar_t, index_t>(crow.data_ptr<int64_t>(), col.data_ptr<index_t>(), val.data_ptr<scalar_t>(),
                                     U.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), batch, n_rows, n_cols, r,
                                     U.stride(0), U.stride(1));
      });
    });
  }
  return dense.dim() == 3 ? out : out.squeeze(0);
}

}  // namespace
}  // namespace symnmf

TORCH_LIBRARY_IMPL(symnmf_kernels, CPU, m) { m.impl("spmm_csr", &symnmf::spmm_csr_cpu); }
