// Shared declarations of the symnmf_kernels::spmm_csr op: argument checks common to every backend.
#pragma once

#include <optional>

#include <torch/library.h>
#include <ATen/ATen.h>

#include "error_text.h"

namespace symnmf {

// Checks the metadata of (crow_indices, col_indices, values, dense) for out = X @ dense,
// X an n_rows x n_cols CSR matrix with n_cols = dense.size(-2); a 3-D dense is a batch
// multiplied by the same X. Reads no tensor values,
// so it never synchronises with a device.
// Argument errors are c10::Error (RuntimeError in Python) or c10::TypeError, their messages text
// only (error_text.h). The Python layer raises ValueError for the same checks before the op runs.
inline void check_spmm_args(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                            const at::Tensor& dense) {
  TORCH_CHECK(crow.dim() == 1 && crow.numel() >= 1,
                    "spmm_csr: crow_indices must be 1-D with n_rows + 1 >= 1 entries, got shape ", text(crow.sizes()));
  TORCH_CHECK(col.dim() == 1, "spmm_csr: col_indices must be 1-D, got shape ", text(col.sizes()));
  TORCH_CHECK(values.dim() == 1 && values.numel() == col.numel(),
                    "spmm_csr: values must be 1-D with one entry per column index (", text(col.numel()),
                    "), got shape ", text(values.sizes()));
  TORCH_CHECK(dense.dim() == 2 || dense.dim() == 3,
                    "spmm_csr: dense must be (n_cols, r) or (B, n_cols, r), got shape ", text(dense.sizes()));
  TORCH_CHECK_TYPE(crow.scalar_type() == at::kLong || crow.scalar_type() == at::kInt,
                   "spmm_csr: crow_indices must be int64 or int32, got ", text(crow.scalar_type()));
  TORCH_CHECK_TYPE(col.scalar_type() == at::kLong || col.scalar_type() == at::kInt,
                   "spmm_csr: col_indices must be int64 or int32, got ", text(col.scalar_type()));
  TORCH_CHECK_TYPE(dense.scalar_type() == at::kFloat || dense.scalar_type() == at::kDouble,
                   "spmm_csr: dense must be float32 or float64, got ", text(dense.scalar_type()));
  TORCH_CHECK_TYPE(values.scalar_type() == dense.scalar_type(), "spmm_csr: values (", text(values.scalar_type()),
                   ") and dense (", text(dense.scalar_type()), ") must have the same dtype");
  TORCH_CHECK(crow.device() == dense.device() && col.device() == dense.device() &&
                        values.device() == dense.device(),
                    "spmm_csr: crow_indices (", text(crow.device()), "), col_indices (", text(col.device()), "), values (",
                    text(values.device()), ") and dense (", text(dense.device()), ") must be on the same device");
}

}  // namespace symnmf
