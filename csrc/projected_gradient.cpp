// Schema of the solvers' stopping measure on the CPU (kernel in cpu/projected_gradient_cpu.cpp). The Python
// layer (symnmf_kernels/ops/projected_gradient.py, which also registers its fake kernel) calls it on CPU
// tensors; elsewhere the same sum runs in torch.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(symnmf_kernels, m) {
  m.set_python_module("symnmf_kernels.ops.projected_gradient");
  // sum of grad^2 over the entries that are not (U <= 0 and grad >= 0), i.e. the squared norm of the projected
  // gradient of a factor U >= 0: grad where U > 0, min(grad, 0) where U = 0. Summed in float64, returned as a
  // 0-d tensor of grad's dtype. A NaN in grad gives NaN.
  m.def("projected_gradient_sq(Tensor grad, Tensor U) -> Tensor");
}
