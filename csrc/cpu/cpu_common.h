// What the CPU kernels (spmm_cpu.cpp, sparse_loss_cpu.cpp, hals_cpu.cpp, projected_gradient_cpu.cpp) share: the
// prefetch settings of the row loops in spmm_cpu_rows.h, the check of CSR row pointers, and the run-time choice
// of the AVX2 + FMA build.
#pragma once

#include <cstdint>
#include <cstdlib>

#include <ATen/ATen.h>

#include "../error_text.h"

namespace symnmf {

inline bool baseline_forced() {
  const char* value = std::getenv("SYMNMF_CPU_BASELINE");
  return value != nullptr && value[0] != '\0' && value[0] != '0';
}

// SYMNMF_CPU_SIDE_BY_SIDE=0 in the environment (read once) keeps a batch's problems one after another in the SpMM
// row loops (spmm_cpu_rows.h, "Problems side by side"), to time the two against each other.
inline bool side_by_side_allowed() {
  static const bool allowed = [] {
    const char* value = std::getenv("SYMNMF_CPU_SIDE_BY_SIDE");
    return value == nullptr || value[0] != '0';
  }();
  return allowed;
}

// Rows of dense at least this wide (bytes) are prefetched this many nonzeros ahead (spmm_cpu_rows.h).
constexpr int64_t kPrefetchDistance = 12;
constexpr size_t kPrefetchRowBytes = 128;

// Row pointers must start at 0, never decrease and end at nnz: then every row's
// range [crow[i], crow[i+1]) lies inside col_indices. op names the operator in the errors.
template <typename crow_t>
void check_row_pointers(const crow_t* crow, int64_t n_rows, int64_t nnz, const char* op) {
  TORCH_CHECK(crow[0] == 0, op, ": crow_indices[0] must be 0, got ", text(crow[0]));
  TORCH_CHECK(static_cast<int64_t>(crow[n_rows]) == nnz, op, ": crow_indices[-1] must equal nnz = ", text(nnz),
              ", got ", text(crow[n_rows]));
  int64_t bad = -1;
  for (int64_t i = 0; i < n_rows; ++i) {
    if (crow[i + 1] < crow[i]) {
      bad = i;
      break;
    }
  }
  TORCH_CHECK(bad < 0, op, ": crow_indices must be non-decreasing, but crow_indices[", text(bad + 1), "] = ",
              text(bad < 0 ? 0 : crow[bad + 1]), " < crow_indices[", text(bad), "] = ", text(bad < 0 ? 0 : crow[bad]));
}

// The first k with col[k] outside [0, n_cols), or -1. The row loops check the indices they read; a call whose
// loops read none (r = 0, or an empty batch) checks them here, so that a bad index is an error at any width.
template <typename index_t>
int64_t first_bad_column(const index_t* col, int64_t nnz, int64_t n_cols) {
  for (int64_t k = 0; k < nnz; ++k) {
    if (col[k] < 0 || static_cast<int64_t>(col[k]) >= n_cols) return k;
  }
  return -1;
}

// The row loops are compiled twice, for AVX2 + FMA and for the baseline ISA; this picks one at run time.
// SYMNMF_CPU_BASELINE=1 in the environment (read once) forces the baseline loops, so that they can be tested
// on a machine with AVX2.
inline bool cpu_has_avx2() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && !baseline_forced();
  return has;
#else
  return false;
#endif
}

}  // namespace symnmf
