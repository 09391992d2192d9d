// The CSR x dense kernel, free of torch headers so it compiles on its own with nvcc.
//
// Each CSR row is handled by a group of `group` lanes of one warp (a sub-warp):
//   - lanes_col lanes span the columns of a tile, VEC consecutive columns each, read with one
//     16-byte load (float4 / double2) when the dense rows are 16-byte aligned;
//   - lanes_nnz = group / lanes_col lanes split the row's nonzeros and add their partial rows
//     with shuffles at the end.
// The group first reads `group` (column, value) pairs of its row with one coalesced load,
// then broadcasts them with shuffles, so index traffic is never repeated per column lane.
// Row pointers are int64; column indices int32 or int64. Out-of-range column indices are
// skipped: the kernel never reads out of bounds and never synchronises with the host.
// A batch of dense operands multiplied by the same X runs along gridDim.z.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace symnmf {
namespace cuda {

constexpr int kThreads = 256;

template <typename scalar_t>
struct VecWidth {
  static constexpr int value = 16 / sizeof(scalar_t);
};

template <typename scalar_t, int VEC, bool ALIGNED>
struct RowSlice;

// 16-byte vector loads: the tile's columns c0 .. c0 + VEC - 1 all lie inside the row.
template <>
struct RowSlice<float, 4, true> {
  __device__ static void load(const float* p, int64_t /*left*/, float (&x)[4]) {
    const float4 t = __ldg(reinterpret_cast<const float4*>(p));
    x[0] = t.x; x[1] = t.y; x[2] = t.z; x[3] = t.w;
  }
  __device__ static void store(float* p, int64_t /*left*/, const float (&x)[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(x[0], x[1], x[2], x[3]);
  }
};

template <>
struct RowSlice<double, 2, true> {
  __device__ static void load(const double* p, int64_t /*left*/, double (&x)[2]) {
    const double2 t = __ldg(reinterpret_cast<const double2*>(p));
    x[0] = t.x; x[1] = t.y;
  }
  __device__ static void store(double* p, int64_t /*left*/, const double (&x)[2]) {
    *reinterpret_cast<double2*>(p) = make_double2(x[0], x[1]);
  }
};

// Unaligned or ragged rows: element loads, `left` columns remain in the row.
template <typename scalar_t, int VEC>
struct RowSlice<scalar_t, VEC, false> {
  __device__ static void load(const scalar_t* p, int64_t left, scalar_t (&x)[VEC]) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) x[i] = i < left ? __ldg(p + i) : scalar_t(0);
  }
  __device__ static void store(scalar_t* p, int64_t left, const scalar_t (&x)[VEC]) {
#pragma unroll
    for (int i = 0; i < VEC; ++i)
      if (i < left) p[i] = x[i];
  }
};

// GATHERS: nonzeros a lane gathers before it multiplies (loads in flight per lane); 1 is the plain loop.
template <typename scalar_t, typename index_t, bool ALIGNED, int GATHERS>
__global__ void spmm_csr_kernel(const int64_t* __restrict__ crow, const index_t* __restrict__ col,
                    const scalar_t* __restrict__ val, const scalar_t* __restrict__ dense,
                    scalar_t* __restrict__ out, int64_t n_rows, int64_t n_cols, int64_t r, int64_t stride_b,
                    int64_t ld_dense, int lanes_col_log2, int group_log2) {
  constexpr int VEC = VecWidth<scalar_t>::value;
  using Slice = RowSlice<scalar_t, VEC, ALIGNED>;
  const int group = 1 << group_log2;
  const int lanes_col = 1 << lanes_col_log2;
  const int lanes_nnz = group >> lanes_col_log2;
  const int lane = threadIdx.x & 31;
  const int lane_in_group = lane & (group - 1);
  const int lane_col = lane_in_group & (lanes_col - 1);
  const int lane_nnz = lane_in_group >> lanes_col_log2;
  const unsigned mask = group == 32 ? 0xffffffffu : (((1u << group) - 1u) << (lane & ~(group - 1)));

  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> group_log2;
  if (row >= n_rows) return;  // the whole group leaves together: no shuffle is left waiting
  const int64_t c0 = (static_cast<int64_t>(blockIdx.y) * lanes_col + lane_col) * VEC;
  // blockIdx.z is the batch entry: dense[b] is (n_cols, r) with row stride ld_dense, out[b] is (n_rows, r).
  dense += static_cast<int64_t>(blockIdx.z) * stride_b;
  out += static_cast<int64_t>(blockIdx.z) * n_rows * r;
  const int64_t left = r - c0;  // columns of this row from c0 on; <= 0 for idle column lanes
  const int64_t start = crow[row];
  const int64_t end = crow[row + 1];

  scalar_t acc[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) acc[i] = scalar_t(0);

  for (int64_t base = start; base < end; base += group) {
    index_t my_col = 0;
    scalar_t my_val = scalar_t(0);
    if (base + lane_in_group < end) {
      my_col = __ldg(col + base + lane_in_group);
      my_val = __ldg(val + base + lane_in_group);
    }
    const int count = static_cast<int>(min(end - base, static_cast<int64_t>(group)));
    // t is a multiple of lanes_nnz below count <= group, so t + lane_nnz < group: every lane
    // of the group shuffles the same number of times.
    int t = 0;
    // GATHERS nonzeros at a time: their shuffles and 16-byte loads first, then their multiply-adds (in the
    // same order as one at a time), so that each lane keeps several gathers in flight instead of one.
    for (; GATHERS > 1 && t + (GATHERS - 1) * lanes_nnz < count; t += GATHERS * lanes_nnz) {
      index_t j[GATHERS];
      scalar_t v[GATHERS];
      bool valid[GATHERS];
      scalar_t u[GATHERS][VEC];
#pragma unroll
      for (int k = 0; k < GATHERS; ++k) {
        const int src = t + k * lanes_nnz + lane_nnz;  // < group (as above); < count is checked below
        j[k] = __shfl_sync(mask, my_col, src, group);
        v[k] = __shfl_sync(mask, my_val, src, group);
        valid[k] = src < count && left > 0 && static_cast<uint64_t>(j[k]) < static_cast<uint64_t>(n_cols);
      }
#pragma unroll
      for (int k = 0; k < GATHERS; ++k) {
        if (valid[k]) Slice::load(dense + static_cast<int64_t>(j[k]) * ld_dense + c0, left, u[k]);
      }
#pragma unroll
      for (int k = 0; k < GATHERS; ++k) {
        if (valid[k]) {
#pragma unroll
          for (int i = 0; i < VEC; ++i) acc[i] += v[k] * u[k][i];
        }
      }
    }
    for (; t < count; t += lanes_nnz) {
      const int src = t + lane_nnz;
      const index_t j = __shfl_sync(mask, my_col, src, group);
      const scalar_t v = __shfl_sync(mask, my_val, src, group);
      if (src < count && left > 0 && static_cast<uint64_t>(j) < static_cast<uint64_t>(n_cols)) {
        scalar_t u[VEC];
        Slice::load(dense + static_cast<int64_t>(j) * ld_dense + c0, left, u);
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[i] += v * u[i];
      }
    }
  }
  for (int offset = lanes_col; offset < group; offset <<= 1) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] += __shfl_xor_sync(mask, acc[i], offset, group);
  }
  if (lane_nnz == 0 && left > 0) Slice::store(out + row * r + c0, left, acc);
}

}  // namespace cuda
}  // namespace symnmf
