// Batched NNLS on the CPU, row by row: block principal pivoting (Kim & Park 2011) with each row's passive
// system G_FF x_F = c_F factorised by a Cholesky in a small per-thread buffer. The same algorithm as the
// torch path of symnmf_kernels/ops/nnls.py (full exchange of the infeasible set, the backup rule of
// exchanging only the largest infeasible index after three rounds without progress), in one call instead
// of about twenty torch operations per pivoting round.
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../error_text.h"

namespace symnmf {
namespace {

// x with x_F = G_FF^{-1} c_F and 0 off F; all NaN (and false) when the Cholesky of G_FF meets a pivot that
// is not positive. M holds k * k values, y and idx k each.
template <typename T>
bool passive_solve(const T* G, const T* c, int64_t k, const uint8_t* F, T* x, T* M, T* y, int64_t* idx) {
  int64_t p = 0;
  for (int64_t j = 0; j < k; ++j) {
    if (F[j]) idx[p++] = j;
  }
  for (int64_t a = 0; a < p; ++a) {
    for (int64_t b = 0; b <= a; ++b) M[a * p + b] = G[idx[a] * k + idx[b]];
  }
  for (int64_t j = 0; j < p; ++j) {  // lower Cholesky factor, in place
    T d = M[j * p + j];
    for (int64_t t = 0; t < j; ++t) d -= M[j * p + t] * M[j * p + t];
    if (!(d > T(0))) {  // also a NaN pivot
      for (int64_t i = 0; i < k; ++i) x[i] = std::numeric_limits<T>::quiet_NaN();
      return false;
    }
    d = std::sqrt(d);
    M[j * p + j] = d;
    for (int64_t i = j + 1; i < p; ++i) {
      T s = M[i * p + j];
      for (int64_t t = 0; t < j; ++t) s -= M[i * p + t] * M[j * p + t];
      M[i * p + j] = s / d;
    }
  }
  for (int64_t a = 0; a < p; ++a) {  // L y = c_F
    T s = c[idx[a]];
    for (int64_t t = 0; t < a; ++t) s -= M[a * p + t] * y[t];
    y[a] = s / M[a * p + a];
  }
  for (int64_t a = p - 1; a >= 0; --a) {  // L^T x_F = y
    T s = y[a];
    for (int64_t t = a + 1; t < p; ++t) s -= M[t * p + a] * y[t];
    y[a] = s / M[a * p + a];
  }
  for (int64_t j = 0; j < k; ++j) x[j] = T(0);
  for (int64_t a = 0; a < p; ++a) x[idx[a]] = y[a];
  return true;
}

// infeasible[j]: x_j < 0 on F, or (G x - c)_j < -tol off F. Returns how many.
template <typename T>
int64_t infeasible(const T* G, const T* c, int64_t k, const uint8_t* F, const T* x, T tol, uint8_t* bad) {
  int64_t count = 0;
  for (int64_t j = 0; j < k; ++j) {
    bool b;
    if (F[j]) {
      b = x[j] < T(0);
    } else {
      T y = -c[j];
      for (int64_t i = 0; i < k; ++i) y += x[i] * G[i * k + j];
      b = y < -tol;
    }
    bad[j] = b;
    count += b;
  }
  return count;
}

template <typename T>
void nnls_rows_impl(const T* G_in, const T* C, const T* X0, T* X, int64_t B, int64_t m, int64_t k, int64_t max_rounds,
                    double tol_rel, bool solve_only) {
  // G is read as its symmetric part; a NaN or Inf anywhere in it makes every row of its problem NaN.
  std::vector<T> Gs(static_cast<size_t>(B * k * k));
  std::vector<uint8_t> G_finite(static_cast<size_t>(B), 1);
  for (int64_t b = 0; b < B; ++b) {
    const T* g = G_in + b * k * k;
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < k; ++j) {
        Gs[static_cast<size_t>(b * k * k + i * k + j)] = T(0.5) * (g[i * k + j] + g[j * k + i]);
        if (!std::isfinite(g[i * k + j])) G_finite[b] = 0;
      }
    }
  }
  const T* G = Gs.data();
  const T nan = std::numeric_limits<T>::quiet_NaN();
  // One row costs O(k^3) per round: a few rows per task already outweigh starting a thread.
  const int64_t grain = std::max<int64_t>(1, 4096 / (k * k + 1));
  at::parallel_for(0, B * m, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> M(static_cast<size_t>(k * k)), y(static_cast<size_t>(k));
    std::vector<int64_t> idx(static_cast<size_t>(k));
    std::vector<uint8_t> F(static_cast<size_t>(k)), bad(static_cast<size_t>(k));
    for (int64_t row = begin; row < end; ++row) {
      const T* g = G + (row / m) * k * k;
      const T* c = C + row * k;
      T* x = X + row * k;
      for (int64_t j = 0; j < k; ++j) F[j] = X0 != nullptr && X0[row * k + j] > T(0);
      if (!passive_solve(g, c, k, F.data(), x, M.data(), y.data(), idx.data()) || solve_only) continue;
      bool finite = G_finite[row / m] != 0;
      for (int64_t j = 0; j < k; ++j) finite = finite && std::isfinite(c[j]);
      if (!finite) {  // a NaN or Inf in the row or in its G: the solution is NaN, never a zero
        for (int64_t j = 0; j < k; ++j) x[j] = nan;
        continue;
      }
      T cmax = T(0);
      for (int64_t j = 0; j < k; ++j) cmax = std::max(cmax, std::abs(c[j]));
      const T tol = static_cast<T>(tol_rel) * cmax;
      int64_t count = infeasible(g, c, k, F.data(), x, tol, bad.data());
      int64_t alpha = 3, beta = k + 1;
      for (int64_t round = 0; count > 0 && round < max_rounds; ++round) {
        bool full = true;
        if (count < beta) {
          beta = count;
          alpha = 3;
        } else if (alpha >= 1) {
          --alpha;
        } else {
          full = false;
        }
        if (full) {
          for (int64_t j = 0; j < k; ++j) F[j] ^= bad[j];
        } else {
          int64_t last = k - 1;
          while (!bad[last]) --last;
          F[last] ^= 1;
        }
        if (!passive_solve(g, c, k, F.data(), x, M.data(), y.data(), idx.data())) break;
        count = infeasible(g, c, k, F.data(), x, tol, bad.data());
      }
      for (int64_t j = 0; j < k; ++j) x[j] = x[j] < T(0) ? T(0) : x[j];
    }
  });
}

at::Tensor nnls_rows_cpu(const at::Tensor& G_in, const at::Tensor& C_in, const std::optional<at::Tensor>& x0_in,
                         int64_t max_rounds, double tol_rel, bool solve_only) {
  TORCH_CHECK(G_in.dim() == 3 && G_in.size(1) == G_in.size(2), "nnls_rows: G must be (B, k, k), got shape ",
              text(G_in.sizes()));
  TORCH_CHECK(C_in.dim() == 3 && C_in.size(0) == G_in.size(0) && C_in.size(2) == G_in.size(1),
              "nnls_rows: C must be (B, m, k) for G of shape ", text(G_in.sizes()), ", got shape ", text(C_in.sizes()));
  TORCH_CHECK(G_in.scalar_type() == C_in.scalar_type(), "nnls_rows: G (", text(G_in.scalar_type()), ") and C (",
              text(C_in.scalar_type()), ") must share a dtype");
  TORCH_CHECK(!x0_in.has_value() || x0_in->sizes() == C_in.sizes(), "nnls_rows: x0 must have C's shape ",
              text(C_in.sizes()));
  TORCH_CHECK(!x0_in.has_value() || x0_in->scalar_type() == C_in.scalar_type(), "nnls_rows: x0 must have C's dtype");
  TORCH_CHECK(!solve_only || x0_in.has_value(), "nnls_rows: solve_only needs x0 (its positive entries are P)");
  TORCH_CHECK(max_rounds >= 0, "nnls_rows: max_rounds must be >= 0, got ", text(max_rounds));
  const at::Tensor G = G_in.contiguous(), C = C_in.contiguous();
  const at::Tensor X0 = x0_in.has_value() ? x0_in->contiguous() : at::Tensor();
  at::Tensor X = at::empty_like(C, at::MemoryFormat::Contiguous);
  const int64_t B = C.size(0), m = C.size(1), k = C.size(2);
  if (X.numel() == 0) return X;
  AT_DISPATCH_FLOATING_TYPES(C.scalar_type(), "nnls_rows", [&] {
    nnls_rows_impl<scalar_t>(G.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(),
                             X0.defined() ? X0.data_ptr<scalar_t>() : nullptr, X.data_ptr<scalar_t>(), B, m, k,
                             max_rounds, tol_rel, solve_only);
  });
  return X;
}

}  // namespace
}  // namespace symnmf

TORCH_LIBRARY_IMPL(symnmf_kernels, CPU, m) {
  m.impl("nnls_rows", &symnmf::nnls_rows_cpu);
}
