// Schema of the SymHALS sweep on the CPU (kernel in cpu/hals_cpu.cpp). The Python layer
// (symnmf_kernels/ops/hals.py, which also registers its fake kernel) calls it on CPU tensors; on CUDA the
// Triton kernel of symnmf_kernels/triton/hals.py does the same work.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(symnmf_kernels, m) {
  m.set_python_module("symnmf_kernels.ops.hals");
  // In place on the row-major factor W (n, r): for k = 0 .. r-1 in turn, every row gets
  //   w_k <- max(0, w_k + (c_k - w . B[:, k]) / B[k, k]),   c = C (+ lam V when V is given).
  // Returns W's column maxima (r,) after the sweep. A NaN stays NaN (in W and in its column's maximum).
  m.def("hals_sweep_rows_(Tensor(a!) W, Tensor C, Tensor B, Tensor? V, float lam) -> Tensor");
}
