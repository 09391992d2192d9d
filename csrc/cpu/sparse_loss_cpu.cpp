// The sparse SymNMF-Net layer loss on the CPU with its SpMM fused in (symnmf_kernels/ops/sparse_loss.py):
//
//   sparse_loss_terms_csr:  S = X U, R = P - S - lam U, and per problem the float64 sums
//                           (<S, U>, ||R||^2, <R, U>), in one pass over the rows of X;
//   sparse_loss_grad_csr:   dU = T + coef_s S - coef_r (lam R + X R), also one pass.
//
// In plain torch the same maths takes the SpMM plus five or six more passes over the n x r data, which on
// the CPU cost more than the SpMM itself. Here each row's S_i (or (X R)_i) is computed into registers by the
// SpMM row loops of spmm_cpu_rows.h and its epilogue runs while the row is hot.
//
// The sums are deterministic: rows are cut into fixed blocks whatever the thread count, each block sums in
// float64, and the blocks are added in order.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include <ATen/Parallel.h>
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#endif

#include "../spmm.h"
#include "cpu_common.h"
#include "host_cache.h"

namespace symnmf {
namespace {

// Rows per block of the sums: small enough to balance two threads on 1,000 rows, large enough that the
// per-block float64 partials cost nothing.
constexpr int64_t kRowsPerBlock = 256;

}  // namespace
}  // namespace symnmf

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define SYMNMF_LOSS_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define SYMNMF_ROWS_AVX2 1
namespace symnmf {
namespace loss_avx2 {
#include "spmm_cpu_rows.h"
#include "sparse_loss_cpu_rows.h"
}  // namespace loss_avx2
}  // namespace symnmf
#undef SYMNMF_ROWS_AVX2
#pragma GCC pop_options
#endif
namespace symnmf {
namespace loss_base {
#include "spmm_cpu_rows.h"
#include "sparse_loss_cpu_rows.h"
}  // namespace loss_base
}  // namespace symnmf

namespace symnmf {
namespace {

void check_batch_arg(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.sizes() == like.sizes(), "sparse_loss: ", name, " must have U's shape ", text(like.sizes()), ", got ",
              text(t.sizes()));
  TORCH_CHECK(t.scalar_type() == like.scalar_type() && t.device() == like.device(), "sparse_loss: ", name,
              " must share U's dtype and device");
}

void check_scalars(const at::Tensor& t, int64_t batch, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == batch, "sparse_loss: ", name, " must be 1-D with one entry per problem (",
              text(batch), "), got shape ", text(t.sizes()));
  TORCH_CHECK(t.scalar_type() == like.scalar_type() && t.device() == like.device(), "sparse_loss: ", name,
              " must share U's dtype and device");
}

// X must be square with n = U.size(1) rows; U (and every n x r argument) is (B, n, r).
void check_csr(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values, const at::Tensor& U) {
  check_spmm_args(crow, col, values, U);
  TORCH_CHECK(U.dim() == 3, "sparse_loss: U must be (B, n, r), got shape ", text(U.sizes()));
  TORCH_CHECK(crow.numel() - 1 == U.size(1), "sparse_loss: X must be square with U's ", text(U.size(1)),
              " rows, got ", text(crow.numel() - 1), " rows");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_loss_terms_csr_cpu(
    const at::Tensor& crow_indices, const at::Tensor& col_indices, const at::Tensor& values, const at::Tensor& U_in,
    const std::optional<at::Tensor>& P_in, const at::Tensor& lam_in) {
  check_csr(crow_indices, col_indices, values, U_in);
  const at::Tensor crow = crow_indices.contiguous(), col = col_indices.contiguous(), val = values.contiguous();
  const at::Tensor U = U_in.contiguous();
  const int64_t B = U.size(0), n = U.size(1), r = U.size(2);
  check_scalars(lam_in, B, U, "lam");
  const at::Tensor lam = lam_in.contiguous();
  at::Tensor P;
  if (P_in.has_value()) {
    check_batch_arg(*P_in, U, "P");
    P = P_in->contiguous();
  }
  at::Tensor S = cached_empty({B, n, r}, U.options());
  at::Tensor R = P.defined() ? cached_empty({B, n, r}, U.options()) : at::empty({0}, U.options());
  const int64_t n_blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  std::vector<double> partial(static_cast<size_t>(n_blocks * B * 3), 0.0);
  int64_t bad = -1;
  AT_DISPATCH_INDEX_TYPES(crow.scalar_type(), "sparse_loss_terms_crow", [&] {
    using crow_t = index_t;
    check_row_pointers(crow.data_ptr<crow_t>(), n, col.numel(), "sparse_loss");
    AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "sparse_loss_terms", [&] {
      AT_DISPATCH_INDEX_TYPES(col.scalar_type(), "sparse_loss_terms_index", [&] {
        const scalar_t* P_ptr = P.defined() ? P.data_ptr<scalar_t>() : nullptr;
        scalar_t* R_ptr = P.defined() ? R.data_ptr<scalar_t>() : nullptr;
        const bool parallel = col.numel() * r * B > (1 << 15) && at::get_num_threads() > 1;
#ifdef SYMNMF_LOSS_AVX2
        if (cpu_has_avx2()) {
          bad = loss_avx2::terms_blocks<scalar_t, crow_t, index_t>(
              crow.data_ptr<crow_t>(), col.data_ptr<index_t>(), val.data_ptr<scalar_t>(), U.data_ptr<scalar_t>(),
              P_ptr, lam.data_ptr<scalar_t>(), S.data_ptr<scalar_t>(), R_ptr, B, n, r, n_blocks, kRowsPerBlock,
              partial.data(), parallel);
        } else
#endif
        {
          bad = loss_base::terms_blocks<scalar_t, crow_t, index_t>(
              crow.data_ptr<crow_t>(), col.data_ptr<index_t>(), val.data_ptr<scalar_t>(), U.data_ptr<scalar_t>(),
              P_ptr, lam.data_ptr<scalar_t>(), S.data_ptr<scalar_t>(), R_ptr, B, n, r, n_blocks, kRowsPerBlock,
              partial.data(), parallel);
        }
        if (r == 0 || B == 0) bad = first_bad_column(col.data_ptr<index_t>(), col.numel(), n);
      });
    });
  });
  TORCH_CHECK(bad < 0, "sparse_loss: col_indices[", text(bad), "] is out of range for ", text(n), " columns");
  at::Tensor sums = at::zeros({B, 3}, U.options().dtype(at::kDouble));
  double* s = sums.data_ptr<double>();
  for (int64_t blk = 0; blk < n_blocks; ++blk) {
    for (int64_t k = 0; k < B * 3; ++k) s[k] += partial[static_cast<size_t>(blk * B * 3 + k)];
  }
  return {S, R, sums};
}

at::Tensor sparse_loss_grad_csr_cpu(const at::Tensor& crow_indices, const at::Tensor& col_indices,
                                    const at::Tensor& values, const std::optional<at::Tensor>& T_in,
                                    const at::Tensor& S_in, const at::Tensor& R_in, const at::Tensor& lam_in,
                                    const at::Tensor& coef_s_in, const at::Tensor& coef_r_in) {
  check_csr(crow_indices, col_indices, values, S_in);
  if (T_in.has_value()) check_batch_arg(*T_in, S_in, "T");
  check_batch_arg(R_in, S_in, "R");
  const int64_t B = S_in.size(0), n = S_in.size(1), r = S_in.size(2);
  check_scalars(lam_in, B, S_in, "lam");
  check_scalars(coef_s_in, B, S_in, "coef_s");
  check_scalars(coef_r_in, B, S_in, "coef_r");
  const at::Tensor crow = crow_indices.contiguous(), col = col_indices.contiguous(), val = values.contiguous();
  const at::Tensor T = T_in.has_value() ? T_in->contiguous() : at::Tensor(), S = S_in.contiguous();
  const at::Tensor R = R_in.contiguous();
  const at::Tensor lam = lam_in.contiguous(), coef_s = coef_s_in.contiguous(), coef_r = coef_r_in.contiguous();
  at::Tensor dU = cached_empty({B, n, r}, S.options());
  int64_t bad = -1;
  AT_DISPATCH_INDEX_TYPES(crow.scalar_type(), "sparse_loss_grad_crow", [&] {
    using crow_t = index_t;
    check_row_pointers(crow.data_ptr<crow_t>(), n, col.numel(), "sparse_loss");
    AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "sparse_loss_grad", [&] {
      AT_DISPATCH_INDEX_TYPES(col.scalar_type(), "sparse_loss_grad_index", [&] {
        const bool parallel = col.numel() * r * B > (1 << 15) && at::get_num_threads() > 1;
#ifdef SYMNMF_LOSS_AVX2
        if (cpu_has_avx2()) {
          bad = loss_avx2::grad_rows<scalar_t, crow_t, index_t>(
              crow.data_ptr<crow_t>(), col.data_ptr<index_t>(), val.data_ptr<scalar_t>(), T.defined() ? T.data_ptr<scalar_t>() : nullptr,
              S.data_ptr<scalar_t>(), R.data_ptr<scalar_t>(), lam.data_ptr<scalar_t>(), coef_s.data_ptr<scalar_t>(),
              coef_r.data_ptr<scalar_t>(), dU.data_ptr<scalar_t>(), B, n, r, parallel);
        } else
#endif
        {
          bad = loss_base::grad_rows<scalar_t, crow_t, index_t>(
              crow.data_ptr<crow_t>(), col.data_ptr<index_t>(), val.data_ptr<scalar_t>(), T.defined() ? T.data_ptr<scalar_t>() : nullptr,
              S.data_ptr<scalar_t>(), R.data_ptr<scalar_t>(), lam.data_ptr<scalar_t>(), coef_s.data_ptr<scalar_t>(),
              coef_r.data_ptr<scalar_t>(), dU.data_ptr<scalar_t>(), B, n, r, parallel);
        }
        if (r == 0 || B == 0) bad = first_bad_column(col.data_ptr<index_t>(), col.numel(), n);
      });
    });
  });
  TORCH_CHECK(bad < 0, "sparse_loss: col_indices[", text(bad), "] is out of range for ", text(n), " columns");
  return dU;
}

}  // namespace
}  // namespace symnmf

TORCH_LIBRARY_IMPL(symnmf_kernels, CPU, m) {
  m.impl("sparse_loss_terms_csr", &symnmf::sparse_loss_terms_csr_cpu);
  m.impl("sparse_loss_grad_csr", &symnmf::sparse_loss_grad_csr_cpu);
}
