// Schema of the tall-skinny dense products on the CPU (kernels in cpu/gram_cpu.cpp). The Python layer
// (symnmf_kernels/ops/gram.py, which also registers their fake kernels) calls them from the torch path of
// the ops on CPU tensors.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(symnmf_kernels, m) {
  m.set_python_module("symnmf_kernels.ops.gram");
  // A (n, r) or (B, n, r) row-major, M (r, r) or (B, r, r): returns A @ M, plus add (A's shape) when given.
  m.def("tall_mm(Tensor A, Tensor M, Tensor? add=None) -> Tensor");
  // A, B (n, r) or (B, n, r) row-major: returns A^T B, (r, r) or (B, r, r).
  m.def("tall_gram(Tensor A, Tensor B) -> Tensor");
  // P (n, r) or (B, n, r) row-major, Ginv per problem: returns (Y, Y^T Y) with Y = ReLU(P @ Ginv).
  m.def("tall_apply_relu_gram(Tensor P, Tensor Ginv) -> (Tensor, Tensor)");
  // The backward of Y = ReLU(P @ Ginv) given dL/dY = grad + Y @ H (H optional): returns (dP, dGinv).
  m.def("tall_apply_relu_backward(Tensor grad, Tensor Y, Tensor P, Tensor Ginv, Tensor? H=None) "
        "-> (Tensor, Tensor)");
}
