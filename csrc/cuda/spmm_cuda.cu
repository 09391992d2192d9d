// Launcher of the CSR x dense kernel (spmm_kernel.cuh) for the symnmf::spmm_csr op on CUDA.
// The Python layer validates indices once per matrix; this file only checks metadata.
#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include <cuda_runtime.h>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../spmm.h"
#include "spmm_kernel.cuh"

namespace symnmf {
namespace {

using cuda::kThreads;
using cuda::spmm_csr_kernel;
using cuda::VecWidth;

int ceil_log2(int64_t x) {
  int k = 0;
  while ((int64_t(1) << k) < x) ++k;
  return k;
}

template <typename scalar_t, typename index_t>
void launch(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& val, const at::Tensor& U,
            at::Tensor& out) {
  constexpr int VEC = VecWidth<scalar_t>::value;
  constexpr int64_t kMaxGridZ = 65535;
  const int64_t batch = U.size(0), n_cols = U.size(1), r = U.size(2);
  const int64_t n_rows = crow.numel() - 1;
  const int64_t stride_b = U.stride(0);
  const int64_t ld = U.stride(1);  // the row stride: a column of a wider U (r = 1) keeps its own
  const int64_t nnz = col.numel();

  // Column lanes: enough 16-byte slices to cover r, at most a warp (a tile of 32 * VEC columns).
  const int lanes_col_log2 = std::min(5, ceil_log2((r + VEC - 1) / VEC));
  const int64_t tile = (int64_t(1) << lanes_col_log2) * VEC;
  // Spare lanes of the warp split the nonzeros of a row, up to about one per two nonzeros.
  const int64_t avg_nnz = n_rows > 0 ? nnz / n_rows : 0;
  const int lanes_nnz_log2 = std::min(5 - lanes_col_log2, std::max(0, ceil_log2(avg_nnz / 2)));
  const int group_log2 = lanes_col_log2 + lanes_nnz_log2;

  const int64_t grid_x = (n_rows * (int64_t(1) << group_log2) + kThreads - 1) / kThreads;
  const int64_t grid_y = (r + tile - 1) / tile;
  TORCH_CHECK(grid_x <= 0x7fffffff && grid_y <= 65535, "spmm_csr: problem too large for one launch (n_rows = ",
              text(n_rows), ", r = ", text(r), ")");

  const scalar_t* dense = U.data_ptr<scalar_t>();
  scalar_t* dst = out.data_ptr<scalar_t>();
  const bool aligned = r % VEC == 0 && ld % VEC == 0 && (batch == 1 || stride_b % VEC == 0) &&
                       reinterpret_cast<uintptr_t>(dense) % 16 == 0;
  // The loop that keeps four gathers in flight per lane uses 63-72 registers against 36-40 (sm_90), so fewer
  // warps per SM hide the latency the other way. On an H200 (float32, 100k-4M rows, 25-32 stored entries per
  // row) it was 1.05-1.12x the one-at-a-time loop at r = 64 and 1.14-1.20x at r = 128, but 0.84-0.94x at
  // r = 16: it is taken from kFourGathersMinR columns. SYMNMF_SPMM_GATHERS=1 or 4 forces one loop, read at
  // every launch so that a benchmark can compare the two in one process.
  constexpr int64_t kFourGathersMinR = 64;
  const char* gathers_env = std::getenv("SYMNMF_SPMM_GATHERS");
  const int forced = gathers_env != nullptr ? std::atoi(gathers_env) : 0;
  const int gathers = forced == 1 || forced == 4 ? forced : (r >= kFourGathersMinR ? 4 : 1);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t b0 = 0; b0 < batch; b0 += kMaxGridZ) {
    const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y),
                    static_cast<unsigned>(std::min(kMaxGridZ, batch - b0)));
    auto run = [&](auto kernel) {
      kernel<<<grid, kThreads, 0, stream>>>(crow.data_ptr<int64_t>(), col.data_ptr<index_t>(),
                                           val.data_ptr<scalar_t>(), dense + b0 * stride_b, dst + b0 * n_rows * r,
                                           n_rows, n_cols, r, stride_b, ld, lanes_col_log2, group_log2);
    };
    if (gathers == 4) {
      if (aligned)
        run(spmm_csr_kernel<scalar_t, index_t, true, 4>);
      else
        run(spmm_csr_kernel<scalar_t, index_t, false, 4>);
    } else {
      if (aligned)
        run(spmm_csr_kernel<scalar_t, index_t, true, 1>);
      else
        run(spmm_csr_kernel<scalar_t, index_t, false, 1>);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

at::Tensor spmm_csr_cuda(const at::Tensor& crow_indices, const at::Tensor& col_indices, const at::Tensor& values,
                         const at::Tensor& dense, const std::optional<at::Tensor>& /*t_crow_indices*/,
                         const std::optional<at::Tensor>& /*t_col_indices*/,
                         const std::optional<at::Tensor>& /*t_values*/) {
  check_spmm_args(crow_indices, col_indices, values, dense);
  const c10::cuda::CUDAGuard guard(dense.device());
  const at::Tensor crow = crow_indices.to(at::kLong).contiguous();
  const at::Tensor col = col_indices.contiguous();
  const at::Tensor val = values.contiguous();
  const at::Tensor U3 = dense.dim() == 3 ? dense : dense.unsqueeze(0);
  const at::Tensor U = (U3.stride(2) == 1 || U3.size(2) <= 1) ? U3 : U3.contiguous();
  at::Tensor out = at::empty({U.size(0), crow.numel() - 1, U.size(2)}, U.options());
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "spmm_csr_cuda", [&] {
      AT_DISPATCH_INDEX_TYPES(col.scalar_type(), "spmm_csr_cuda_index",
                              [&] { launch<scalar_t, index_t>(crow, col, val, U, out); });
    });
  }
  return dense.dim() == 3 ? out : out.squeeze(0);
}

}  // namespace
}  // namespace symnmf

TORCH_LIBRARY_IMPL(symnmf_kernels, CUDA, m) { m.impl("spmm_csr", &symnmf::spmm_csr_cuda); }
