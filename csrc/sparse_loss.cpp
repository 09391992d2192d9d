// Schema of the sparse SymNMF-Net layer loss with its SpMM fused in (CPU kernels in cpu/sparse_loss_cpu.cpp).
// The Python layer (symnmf_kernels/ops/sparse_loss.py, which also registers their fake kernels) calls them
// below its autograd, on CPU tensors.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(symnmf_kernels, m) {
  m.set_python_module("symnmf_kernels.ops.sparse_loss");
  // U, P are (B, n, r), lam (B,): returns S = X U, R = P - S - lam U (empty without P) and the float64 sums
  // (<S, U>, ||R||^2, <R, U>) per problem, shape (B, 3).
  m.def(
      "sparse_loss_terms_csr(Tensor crow_indices, Tensor col_indices, Tensor values, Tensor U, Tensor? P, "
      "Tensor lam) -> (Tensor, Tensor, Tensor)");
  // dU = T + coef_s S - coef_r (lam R + X R) for (B, n, r) T, S, R and (B,) lam, coef_s, coef_r (no T: T = 0).
  m.def(
      "sparse_loss_grad_csr(Tensor crow_indices, Tensor col_indices, Tensor values, Tensor? T, Tensor S, "
      "Tensor R, Tensor lam, Tensor coef_s, Tensor coef_r) -> Tensor");
}
