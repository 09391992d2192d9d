// Tall-skinny dense products on the CPU: A @ M (+ add) for an n x r A and an r x r M, and A^T B for two n x r
// factors, r up to kMaxRank. BLAS libraries are tuned for large inner dimensions: at n = 20,000 and r = 8 the
// CPU build's sgemm took about 13 times as long as a copy of A (docs/cpu_backend.md), while these products are
// a single pass over their n x r operands. The row loops (gram_cpu_rows.h) are compiled twice, for AVX2 + FMA
// and for the baseline instruction set, and the CPU picks one at run time.
#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_common.h"
#include "host_cache.h"

namespace symnmf {
constexpr int64_t kMaxRank = 32;
}  // namespace symnmf

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define SYMNMF_TALL_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace symnmf {
namespace tall_avx2 {
constexpr int kVectorBytes = 32;
#include "gram_cpu_rows.h"
}  // namespace tall_avx2
}  // namespace symnmf
#pragma GCC pop_options
#endif
namespace symnmf {
namespace tall_base {
constexpr int kVectorBytes = 16;
#include "gram_cpu_rows.h"
}  // namespace tall_base
}  // namespace symnmf

namespace symnmf {
namespace {

// Rows per partial sum of an r x r sum over rows. A fixed count, not one per thread, so that the partial sums and
// the order they are added in (and so the result) do not depend on the number of threads; short sums also round
// less.
constexpr int64_t kGramRows = 2048;

// Calls F with the loops' rank as a template argument for the ranks where the row loops beat BLAS (1 to 10, and
// 16 for float64; ops/gram.py sends them no other), else 0: the run-time loop, which keeps its sums in memory.
template <typename F>
void with_rank(int64_t r, F&& f) {
  switch (r) {
    case 1: f(std::integral_constant<int, 1>()); break;
    case 2: f(std::integral_constant<int, 2>()); break;
    case 3: f(std::integral_constant<int, 3>()); break;
    case 4: f(std::integral_constant<int, 4>()); break;
    case 5: f(std::integral_constant<int, 5>()); break;
    case 6: f(std::integral_constant<int, 6>()); break;
    case 7: f(std::integral_constant<int, 7>()); break;
    case 8: f(std::integral_constant<int, 8>()); break;
    case 9: f(std::integral_constant<int, 9>()); break;
    case 10: f(std::integral_constant<int, 10>()); break;
    case 16: f(std::integral_constant<int, 16>()); break;
    default: f(std::integral_constant<int, 0>()); break;
  }
}

// M (r x r, row-major) with each row padded with zeros to whole vectors of an instruction set's TallLanes; the
// row loops read it through Lanes::V pointers (vpadded).
template <typename Lanes, typename T>
std::vector<T> padded(const T* M, int64_t r) {
  const int64_t width = Lanes::vectors(r) * Lanes::lanes;
  std::vector<T> Mp(static_cast<size_t>(r * width), T(0));
  for (int64_t q = 0; q < r; ++q) std::copy(M + q * r, M + q * r + r, Mp.begin() + q * width);
  return Mp;
}

template <typename Lanes, typename T>
const typename Lanes::V* vpadded(const std::vector<T>& Mp) {
  return Mp.empty() ? nullptr : reinterpret_cast<const typename Lanes::V*>(Mp.data());
}

// Runs rows(begin, end, sum) over blocks of kGramRows rows on torch's threads, each block with its own r x r
// partial sum when out is not null, then adds the partial sums into out in block order.
template <typename T, typename Rows>
void over_row_blocks(int64_t n, int64_t r, T* out, Rows&& rows) {
  const int64_t parts = std::max<int64_t>(1, (n + kGramRows - 1) / kGramRows);
  std::vector<T> partial(out == nullptr ? 0 : static_cast<size_t>(parts * r * r));
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      rows(p * kGramRows, std::min(n, (p + 1) * kGramRows), out == nullptr ? nullptr : partial.data() + p * r * r);
    }
  });
  if (out == nullptr) return;
  for (int64_t k = 0; k < r * r; ++k) out[k] = partial[k];
  for (int64_t p = 1; p < parts; ++p) {
    for (int64_t k = 0; k < r * r; ++k) out[k] += partial[p * r * r + k];
  }
}

// Checks a row-major factor (n, r) or (B, n, r) of float32 or float64, r in [1, kMaxRank].
void check_factor(const at::Tensor& A, const char* op, const char* name) {
  TORCH_CHECK(A.dim() == 2 || A.dim() == 3, op, ": ", name, " must be (n, r) or (B, n, r), got shape ",
              text(A.sizes()));
  TORCH_CHECK(A.is_contiguous(), op, ": ", name, " must be row-major contiguous");
  TORCH_CHECK(A.scalar_type() == at::kFloat || A.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64");
  TORCH_CHECK(A.size(-1) >= 1 && A.size(-1) <= kMaxRank, op, ": r = ", text(A.size(-1)), " must lie in [1, ",
              text(kMaxRank), "]");
}

// The r x r shape per problem of a factor's batch: (r, r) or (B, r, r).
std::vector<int64_t> square_shape(const at::Tensor& A) {
  std::vector<int64_t> shape(A.sizes().begin(), A.sizes().end());
  shape[A.dim() - 2] = A.size(-1);
  return shape;
}

// Rows per task of the product: about 2^15 multiply-adds, enough to outweigh a thread's start.
int64_t mm_grain(int64_t r) { return std::max<int64_t>(256, (int64_t{1} << 15) / (r * r)); }

template <typename T>
void mm(const T* A, const T* M, const T* add, T* out, int64_t n, int64_t r) {
  with_rank(r, [&](auto rank) {
    constexpr int R = decltype(rank)::value;
#ifdef SYMNMF_TALL_AVX2
    if (cpu_has_avx2()) {
      const auto Mp = padded<tall_avx2::TallLanes<T>>(M, r);
      at::parallel_for(0, n, mm_grain(r), [&](int64_t begin, int64_t end) {
        tall_avx2::mm_rows<T, R>(A, vpadded<tall_avx2::TallLanes<T>>(Mp), add, out, r, begin, end);
      });
      return;
    }
#endif
    const auto Mp = padded<tall_base::TallLanes<T>>(M, r);
    at::parallel_for(0, n, mm_grain(r), [&](int64_t begin, int64_t end) {
      tall_base::mm_rows<T, R>(A, vpadded<tall_base::TallLanes<T>>(Mp), add, out, r, begin, end);
    });
  });
}

template <typename T>
void gram(const T* A, const T* B, T* out, int64_t n, int64_t r) {
  with_rank(r, [&](auto rank) {
    constexpr int R = decltype(rank)::value;
#ifdef SYMNMF_TALL_AVX2
    if (cpu_has_avx2()) {
      return over_row_blocks(n, r, out, [&](int64_t begin, int64_t end, T* sum) {
        tall_avx2::gram_rows<T, R>(A, B, sum, r, begin, end);
      });
    }
#endif
    over_row_blocks(n, r, out, [&](int64_t begin, int64_t end, T* sum) {
      tall_base::gram_rows<T, R>(A, B, sum, r, begin, end);
    });
  });
}

// ReLU(P @ M) and its Gram, one problem (see relu_gram_rows).
template <typename T>
void relu_gram(const T* P, const T* M, T* Y, T* out, int64_t n, int64_t r) {
  with_rank(r, [&](auto rank) {
    constexpr int R = decltype(rank)::value;
#ifdef SYMNMF_TALL_AVX2
    if (cpu_has_avx2()) {
      const auto Mp = padded<tall_avx2::TallLanes<T>>(M, r);
      return over_row_blocks(n, r, out, [&](int64_t begin, int64_t end, T* sum) {
        tall_avx2::relu_gram_rows<T, R>(P, vpadded<tall_avx2::TallLanes<T>>(Mp), Y, sum, r, begin, end);
      });
    }
#endif
    const auto Mp = padded<tall_base::TallLanes<T>>(M, r);
    over_row_blocks(n, r, out, [&](int64_t begin, int64_t end, T* sum) {
      tall_base::relu_gram_rows<T, R>(P, vpadded<tall_base::TallLanes<T>>(Mp), Y, sum, r, begin, end);
    });
  });
}

// The backward of ReLU(P @ Ginv) for one problem (see relu_backward_rows); H may be null, Mt is Ginv^T.
template <typename T>
void relu_backward(const T* grad, const T* Y, const T* H, const T* P, const T* Mt, T* dP, T* out, int64_t n,
                   int64_t r) {
  with_rank(r, [&](auto rank) {
    constexpr int R = decltype(rank)::value;
#ifdef SYMNMF_TALL_AVX2
    if (cpu_has_avx2()) {
      using L = tall_avx2::TallLanes<T>;
      const auto Hp = H == nullptr ? std::vector<T>() : padded<L>(H, r);
      const auto Mp = padded<L>(Mt, r);
      return over_row_blocks(n, r, out, [&](int64_t begin, int64_t end, T* sum) {
        tall_avx2::relu_backward_rows<T, R>(grad, Y, vpadded<L>(Hp), P, vpadded<L>(Mp), dP, sum, r, begin, end);
      });
    }
#endif
    using L = tall_base::TallLanes<T>;
    const auto Hp = H == nullptr ? std::vector<T>() : padded<L>(H, r);
    const auto Mp = padded<L>(Mt, r);
    over_row_blocks(n, r, out, [&](int64_t begin, int64_t end, T* sum) {
      tall_base::relu_backward_rows<T, R>(grad, Y, vpadded<L>(Hp), P, vpadded<L>(Mp), dP, sum, r, begin, end);
    });
  });
}

// Checks an r x r operand per problem of the factor A (named factor in the errors): shape (r, r) or (B, r, r) as
// square_shape(A), A's dtype. Returns it contiguous.
at::Tensor square_operand(const at::Tensor& M, const at::Tensor& A, const char* op, const char* name,
                          const char* factor) {
  const std::vector<int64_t> shape = square_shape(A);
  TORCH_CHECK(M.sizes() == at::IntArrayRef(shape), op, ": ", name, " must have shape ", text(shape), ", got ",
              text(M.sizes()));
  TORCH_CHECK(M.scalar_type() == A.scalar_type(), op, ": ", name, " must have ", factor, "'s dtype");
  return M.contiguous();
}

// Checks an n x r operand of the factor A's shape and dtype. Returns it contiguous.
at::Tensor factor_operand(const at::Tensor& X, const at::Tensor& A, const char* op, const char* name,
                          const char* factor) {
  TORCH_CHECK(X.sizes() == A.sizes(), op, ": ", name, " must have ", factor, "'s shape ", text(A.sizes()), ", got ",
              text(X.sizes()));
  TORCH_CHECK(X.scalar_type() == A.scalar_type(), op, ": ", name, " must have ", factor, "'s dtype");
  return X.contiguous();
}

std::tuple<at::Tensor, at::Tensor> tall_apply_relu_gram_cpu(const at::Tensor& P, const at::Tensor& Ginv_in) {
  check_factor(P, "tall_apply_relu_gram", "P");
  const at::Tensor Ginv = square_operand(Ginv_in, P, "tall_apply_relu_gram", "Ginv", "P");
  const int64_t r = P.size(-1), n = P.size(-2), batch = P.dim() == 3 ? P.size(0) : 1;
  at::Tensor Y = cached_empty(P.sizes(), P.options());
  at::Tensor YtY = at::empty(square_shape(P), P.options());
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "tall_apply_relu_gram", [&] {
    for (int64_t b = 0; b < batch; ++b) {
      relu_gram<scalar_t>(P.data_ptr<scalar_t>() + b * n * r, Ginv.data_ptr<scalar_t>() + b * r * r,
                          Y.data_ptr<scalar_t>() + b * n * r, YtY.data_ptr<scalar_t>() + b * r * r, n, r);
    }
  });
  return {Y, YtY};
}

std::tuple<at::Tensor, at::Tensor> tall_apply_relu_backward_cpu(const at::Tensor& grad_in, const at::Tensor& Y_in,
                                                                const at::Tensor& P, const at::Tensor& Ginv_in,
                                                                const std::optional<at::Tensor>& H_in) {
  const char* op = "tall_apply_relu_backward";
  check_factor(P, op, "P");
  const at::Tensor grad = factor_operand(grad_in, P, op, "grad", "P");
  const at::Tensor Y = factor_operand(Y_in, P, op, "Y", "P");
  // The product's matrix is Ginv^T: dP = Z Ginv^T.
  const at::Tensor Ginv_t = square_operand(Ginv_in, P, op, "Ginv", "P").mT().contiguous();
  at::Tensor H;
  if (H_in.has_value()) H = square_operand(*H_in, P, op, "H", "P");
  const int64_t r = P.size(-1), n = P.size(-2), batch = P.dim() == 3 ? P.size(0) : 1;
  at::Tensor dP = cached_empty(P.sizes(), P.options());
  at::Tensor PtZ = at::empty(square_shape(P), P.options());
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "tall_apply_relu_backward", [&] {
    for (int64_t b = 0; b < batch; ++b) {
      relu_backward<scalar_t>(grad.data_ptr<scalar_t>() + b * n * r, Y.data_ptr<scalar_t>() + b * n * r,
                              H.defined() ? H.data_ptr<scalar_t>() + b * r * r : nullptr,
                              P.data_ptr<scalar_t>() + b * n * r, Ginv_t.data_ptr<scalar_t>() + b * r * r,
                              dP.data_ptr<scalar_t>() + b * n * r, PtZ.data_ptr<scalar_t>() + b * r * r, n, r);
    }
  });
  return {dP, PtZ};
}

at::Tensor tall_mm_cpu(const at::Tensor& A, const at::Tensor& M_in, const std::optional<at::Tensor>& add_in) {
  check_factor(A, "tall_mm", "A");
  const int64_t r = A.size(-1), n = A.size(-2), batch = A.dim() == 3 ? A.size(0) : 1;
  const at::Tensor M = square_operand(M_in, A, "tall_mm", "M", "A");
  const at::Tensor add = add_in.has_value() ? factor_operand(*add_in, A, "tall_mm", "add", "A") : at::Tensor();
  at::Tensor out = cached_empty(A.sizes(), A.options());
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "tall_mm", [&] {
    for (int64_t b = 0; b < batch; ++b) {
      mm<scalar_t>(A.data_ptr<scalar_t>() + b * n * r, M.data_ptr<scalar_t>() + b * r * r,
                   add.defined() ? add.data_ptr<scalar_t>() + b * n * r : nullptr, out.data_ptr<scalar_t>() + b * n * r,
                   n, r);
    }
  });
  return out;
}

at::Tensor tall_gram_cpu(const at::Tensor& A, const at::Tensor& B) {
  check_factor(A, "tall_gram", "A");
  const at::Tensor Bc = factor_operand(B, A, "tall_gram", "B", "A");
  const int64_t r = A.size(-1), n = A.size(-2), batch = A.dim() == 3 ? A.size(0) : 1;
  at::Tensor out = at::empty(square_shape(A), A.options());
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "tall_gram", [&] {
    for (int64_t b = 0; b < batch; ++b) {
      gram<scalar_t>(A.data_ptr<scalar_t>() + b * n * r, Bc.data_ptr<scalar_t>() + b * n * r,
                     out.data_ptr<scalar_t>() + b * r * r, n, r);
    }
  });
  return out;
}

}  // namespace
}  // namespace symnmf

TORCH_LIBRARY_IMPL(symnmf_kernels, CPU, m) {
  m.impl("tall_mm", &symnmf::tall_mm_cpu);
  m.impl("tall_gram", &symnmf::tall_gram_cpu);
  m.impl("tall_apply_relu_gram", &symnmf::tall_apply_relu_gram_cpu);
  m.impl("tall_apply_relu_backward", &symnmf::tall_apply_relu_backward_cpu);
}
