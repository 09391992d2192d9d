// Schema of the batched NNLS on the CPU (kernel in cpu/nnls_cpu.cpp). The Python layer
// (symnmf_kernels/ops/nnls.py, which also registers its fake kernel) calls it below its autograd, on CPU
// tensors; on CUDA the Triton kernel of symnmf_kernels/triton/nnls.py does the same work.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(symnmf_kernels, m) {
  m.set_python_module("symnmf_kernels.ops.nnls");
  // For G (B, k, k), read as its symmetric part, and C (B, m, k): every row x of the result solves
  // min_{x >= 0} 1/2 x^T G x - c^T x
  // by block principal pivoting from the passive set {x0 > 0} (empty without x0), at most max_rounds rounds,
  // negative entries clipped at the end; y_j < -tol_rel * max|c| off the passive set counts as infeasible.
  // solve_only: one solve on the passive set {x0 > 0} and nothing else (the backward's z_P = G_PP^{-1} c_P).
  // A factorisation that meets a non-positive pivot makes its row NaN, and so does (outside solve_only) a NaN
  // or Inf in the row of C or anywhere in its problem's G.
  m.def("nnls_rows(Tensor G, Tensor C, Tensor? x0, int max_rounds, float tol_rel, bool solve_only) -> Tensor");
}
