// Schema of the symnmf_kernels operators. The kernels register themselves from cpu/ and cuda/;
// the fake (meta) kernel and the autograd formula are registered from Python, in the
// module named below, which torch imports when it needs them.
#include <torch/library.h>

TORCH_LIBRARY(symnmf_kernels, m) {
  m.set_python_module("symnmf_kernels.ops.spmm");
  // out = X @ dense for the CSR matrix X = (crow_indices, col_indices, values) of shape
  // (crow_indices.numel() - 1, dense.size(-2)); dense is (n_cols, r) or a batch (B, n_cols, r). The optional t_* tensors are X^T in CSR form,
  // used only by the backward (dense.grad = X^T out.grad); leaving them out declares X symmetric.
  m.def(
      "spmm_csr(Tensor crow_indices, Tensor col_indices, Tensor values, Tensor dense, "
      "Tensor? t_crow_indices=None, Tensor? t_col_indices=None, Tensor? t_values=None) -> Tensor");
}
