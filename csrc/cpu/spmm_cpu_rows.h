// The row loops of the CPU SpMM (csrc/cpu/spmm_cpu.cpp). Included there once per instruction set, inside a
// namespace of its own, so there is no include guard; it uses kPrefetchDistance and kPrefetchRowBytes from
// that file.

// acc[0..W) += sum over row i's nonzeros of val[k] * u[col[k], c0 .. c0 + W), W fixed at compile time, then
// stored once. An out-of-range column index is skipped and its position kept in bad. Rows of u of at least
// kPrefetchRowBytes are prefetched kPrefetchDistance nonzeros ahead (within the whole matrix); narrower rows
// are not (on a Xeon with random graphs of 1e5-3e5 nodes the prefetch cost 5-20% at r <= 16 in float32 and
// gained 5-15% from r = 32 up, bench/results/bench_cpu-*.md).
template <int W, typename scalar_t, typename index_t>
inline void row_fixed(int64_t start, int64_t end, int64_t nnz, const index_t* __restrict__ col,
                      const scalar_t* __restrict__ val, const scalar_t* __restrict__ u, int64_t n_cols,
                      int64_t stride_n, int64_t c0, scalar_t* __restrict__ o, int64_t& bad) {
  constexpr int kLine = 64 / sizeof(scalar_t);
  scalar_t acc[W];
  for (int c = 0; c < W; ++c) acc[c] = scalar_t(0);
  for (int64_t k = start; k < end; ++k) {
    if constexpr (W * sizeof(scalar_t) >= kPrefetchRowBytes) {
      if (k + kPrefetchDistance < nnz) {
        const scalar_t* next = u + static_cast<int64_t>(col[k + kPrefetchDistance]) * stride_n + c0;
        for (int c = 0; c < W; c += kLine) __builtin_prefetch(next + c, 0, 1);
      }
    }
    const int64_t j = static_cast<int64_t>(col[k]);
    if (static_cast<uint64_t>(j) >= static_cast<uint64_t>(n_cols)) {
      bad = k;
      continue;
    }
    const scalar_t v = val[k];
    const scalar_t* __restrict__ uj = u + j * stride_n + c0;
#pragma omp simd
    for (int c = 0; c < W; ++c) acc[c] += v * uj[c];
  }
  for (int c = 0; c < W; ++c) o[c0 + c] = acc[c];
}

// The same for a run-time width w <= W (an r between the fixed widths): one pass over the row's nonzeros, the
// accumulator sized for W, the columns loop bounded by w.
template <int W, typename scalar_t, typename index_t>
inline void row_upto(int64_t start, int64_t end, int64_t nnz, const index_t* __restrict__ col,
                     const scalar_t* __restrict__ val, const scalar_t* __restrict__ u, int64_t n_cols,
                     int64_t stride_n, int64_t c0, int64_t w, scalar_t* __restrict__ o, int64_t& bad) {
  scalar_t acc[W];
  for (int c = 0; c < W; ++c) acc[c] = scalar_t(0);
  for (int64_t k = start; k < end; ++k) {
    const int64_t j = static_cast<int64_t>(col[k]);
    if (static_cast<uint64_t>(j) >= static_cast<uint64_t>(n_cols)) {
      bad = k;
      continue;
    }
    const scalar_t v = val[k];
    const scalar_t* __restrict__ uj = u + j * stride_n + c0;
#pragma omp simd
    for (int64_t c = 0; c < w; ++c) acc[c] += v * uj[c];
  }
  for (int64_t c = 0; c < w; ++c) o[c0 + c] = acc[c];
}

// One output row of one problem of the batch.
template <typename scalar_t, typename index_t>
inline void one_row(int64_t start, int64_t end, int64_t nnz, const index_t* col, const scalar_t* val,
                    const scalar_t* u, int64_t n_cols, int64_t r, int64_t stride_n, scalar_t* o, int64_t& bad) {
  switch (r) {
    case 4: return row_fixed<4>(start, end, nnz, col, val, u, n_cols, stride_n, 0, o, bad);
    case 8: return row_fixed<8>(start, end, nnz, col, val, u, n_cols, stride_n, 0, o, bad);
    case 16: return row_fixed<16>(start, end, nnz, col, val, u, n_cols, stride_n, 0, o, bad);
    case 32: return row_fixed<32>(start, end, nnz, col, val, u, n_cols, stride_n, 0, o, bad);
    case 64: return row_fixed<64>(start, end, nnz, col, val, u, n_cols, stride_n, 0, o, bad);
    case 128: return row_fixed<128>(start, end, nnz, col, val, u, n_cols, stride_n, 0, o, bad);
    default: break;
  }
  // Other widths: 128-wide chunks, then the rest in one pass with the next wider accumulator.
  int64_t c0 = 0;
  for (; c0 + 128 <= r; c0 += 128) row_fixed<128>(start, end, nnz, col, val, u, n_cols, stride_n, c0, o, bad);
  const int64_t w = r - c0;
  if (w == 0) return;
  if (w <= 8) return row_upto<8>(start, end, nnz, col, val, u, n_cols, stride_n, c0, w, o, bad);
  if (w <= 16) return row_upto<16>(start, end, nnz, col, val, u, n_cols, stride_n, c0, w, o, bad);
  if (w <= 32) return row_upto<32>(start, end, nnz, col, val, u, n_cols, stride_n, c0, w, o, bad);
  if (w <= 64) return row_upto<64>(start, end, nnz, col, val, u, n_cols, stride_n, c0, w, o, bad);
  row_upto<128>(start, end, nnz, col, val, u, n_cols, stride_n, c0, w, o, bad);
}

// out[b, i, :] = sum_k val[k] * dense[b, col[k], :] over row i's nonzeros k, for every batch b. Returns the
// position of an out-of-range column index (the rows that hold one are incomplete), or -1.
template <typename scalar_t, typename crow_t, typename index_t>
int64_t spmm_rows(const crow_t* crow, const index_t* col, const scalar_t* val, const scalar_t* dense, scalar_t* out,
                  int64_t batch, int64_t n_rows, int64_t n_cols, int64_t r, int64_t stride_b, int64_t stride_n,
                  bool parallel, int threads) {
  std::atomic<int64_t> bad_entry{-1};
  const int64_t nnz = static_cast<int64_t>(crow[n_rows]);
  (void)threads;  // unused without OpenMP
#pragma omp parallel if (parallel) num_threads(threads)
  {
    int64_t bad = -1;
#pragma omp for schedule(dynamic, 256) nowait
    for (int64_t i = 0; i < n_rows; ++i) {
      const int64_t start = static_cast<int64_t>(crow[i]), end = static_cast<int64_t>(crow[i + 1]);
      for (int64_t b = 0; b < batch; ++b) {
        one_row(start, end, nnz, col, val, dense + b * stride_b, n_cols, r, stride_n, out + (b * n_rows + i) * r,
                bad);
      }
    }
    if (bad >= 0) bad_entry.store(bad, std::memory_order_relaxed);
  }
  return bad_entry.load();
}
