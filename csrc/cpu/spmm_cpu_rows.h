// The row loops of the CPU SpMM (csrc/cpu/spmm_cpu.cpp). Included there once per instruction set, inside a
// namespace of its own, so there is no include guard; it uses kPrefetchDistance and kPrefetchRowBytes from
// cpu_common.h. Where the includer defines SYMNMF_ROWS_AVX2 (inside its AVX2 + FMA region, with
// <immintrin.h> and <type_traits> included before), r = 8 in float32 takes an intrinsics loop.

// acc[0..W) += sum over row i's nonzeros of val[k] * u[col[k], c0 .. c0 + W), W fixed at compile time, then
// stored once. An out-of-range column index is skipped and its position kept in bad. Rows of u of at least
// kPrefetchRowBytes are prefetched kPrefetchDistance nonzeros ahead (within the whole matrix); narrower rows
// are not (on a Xeon with random graphs of 1e5-3e5 nodes the prefetch cost 5-20% at r <= 16 in float32 and
// gained 5-15% from r = 32 up, bench/results/bench_cpu-*.md).
#ifdef SYMNMF_ROWS_AVX2
// r = 8 in float32, the width of SymNMF on 8-10 clusters: the row is one 256-bit register, and two of them
// take alternate nonzeros, so that consecutive multiply-adds need not wait for each other. Written with
// intrinsics because the compiler's own code for the generic loop at this width ran about 20 % behind
// torch.sparse.mm (MKL) on 100,000-node graphs, and small changes to that loop (dropping the index check)
// made it vectorise across nonzeros with gathers, 4x slower.
template <typename index_t>
inline void row8_f32(int64_t start, int64_t end, const index_t* __restrict__ col, const float* __restrict__ val,
                     const float* __restrict__ u, int64_t n_cols, int64_t stride_n, int64_t c0,
                     float* __restrict__ o, int64_t& bad) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t k = start;
  for (; k + 2 <= end; k += 2) {
    const int64_t j0 = static_cast<int64_t>(col[k]), j1 = static_cast<int64_t>(col[k + 1]);
    if (static_cast<uint64_t>(j0) < static_cast<uint64_t>(n_cols)) {
      a0 = _mm256_fmadd_ps(_mm256_set1_ps(val[k]), _mm256_loadu_ps(u + j0 * stride_n + c0), a0);
    } else {
      bad = k;
    }
    if (static_cast<uint64_t>(j1) < static_cast<uint64_t>(n_cols)) {
      a1 = _mm256_fmadd_ps(_mm256_set1_ps(val[k + 1]), _mm256_loadu_ps(u + j1 * stride_n + c0), a1);
    } else {
      bad = k + 1;
    }
  }
  if (k < end) {
    const int64_t j = static_cast<int64_t>(col[k]);
    if (static_cast<uint64_t>(j) < static_cast<uint64_t>(n_cols)) {
      a0 = _mm256_fmadd_ps(_mm256_set1_ps(val[k]), _mm256_loadu_ps(u + j * stride_n + c0), a0);
    } else {
      bad = k;
    }
  }
  _mm256_storeu_ps(o + c0, _mm256_add_ps(a0, a1));
}

// Float32 widths 9-31 but 16, in one pass over the row's nonzeros: NV = ceil(r / 8) 256-bit accumulators, the
// last one loading and storing only its r - 8 (NV - 1) valid lanes (a masked load never touches the masked-off
// memory, so the last row of u is safe); at NV = 2 two sets of accumulators take alternate nonzeros, as in
// row8_f32. Before, r = 9-15 ran on the compiler's code for those widths, and 17-31 took two passes (16, then
// the rest). Timed in turns against those loops at n = 100,000 (random and kNN graphs, one thread), this loop
// was 1.25-1.45x faster at r = 10 and 14 and 1.09-1.22x at r = 20-28; from r = 33 on it was 0.80-0.95x the
// two passes, which keep those widths. Each column is summed over the nonzeros in order (two interleaved
// partial sums at NV = 2).
template <int NV, typename index_t>
inline void row_masked_f32(int64_t start, int64_t end, int64_t nnz, const index_t* __restrict__ col,
                           const float* __restrict__ val, const float* __restrict__ u, int64_t n_cols,
                           int64_t stride_n, int64_t r, float* __restrict__ o, int64_t& bad) {
  const int last = static_cast<int>(r - 8 * (NV - 1));  // 1..8 valid lanes in the last vector
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(last), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  __m256 acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = _mm256_setzero_ps();
  int64_t k = start;
  if constexpr (NV == 2) {
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
    for (; k + 2 <= end; k += 2) {
      const int64_t j0 = static_cast<int64_t>(col[k]), j1 = static_cast<int64_t>(col[k + 1]);
      if (static_cast<uint64_t>(j0) < static_cast<uint64_t>(n_cols)) {
        const __m256 x = _mm256_set1_ps(val[k]);
        acc[0] = _mm256_fmadd_ps(x, _mm256_loadu_ps(u + j0 * stride_n), acc[0]);
        acc[1] = _mm256_fmadd_ps(x, _mm256_maskload_ps(u + j0 * stride_n + 8, mask), acc[1]);
      } else {
        bad = k;
      }
      if (static_cast<uint64_t>(j1) < static_cast<uint64_t>(n_cols)) {
        const __m256 x = _mm256_set1_ps(val[k + 1]);
        b0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(u + j1 * stride_n), b0);
        b1 = _mm256_fmadd_ps(x, _mm256_maskload_ps(u + j1 * stride_n + 8, mask), b1);
      } else {
        bad = k + 1;
      }
    }
    acc[0] = _mm256_add_ps(acc[0], b0);
    acc[1] = _mm256_add_ps(acc[1], b1);
  }
  for (; k < end; ++k) {
    if constexpr (NV * 32 >= static_cast<int>(kPrefetchRowBytes)) {
      if (k + kPrefetchDistance < nnz) {
        const float* ahead = u + static_cast<int64_t>(col[k + kPrefetchDistance]) * stride_n;
        for (int c = 0; c < NV * 8; c += 16) __builtin_prefetch(ahead + c, 0, 1);
      }
    }
    const int64_t j = static_cast<int64_t>(col[k]);
    if (static_cast<uint64_t>(j) >= static_cast<uint64_t>(n_cols)) {
      bad = k;
      continue;
    }
    const __m256 x = _mm256_set1_ps(val[k]);
    const float* __restrict__ uj = u + j * stride_n;
    for (int v = 0; v < NV - 1; ++v) acc[v] = _mm256_fmadd_ps(x, _mm256_loadu_ps(uj + 8 * v), acc[v]);
    acc[NV - 1] = _mm256_fmadd_ps(x, _mm256_maskload_ps(uj + 8 * (NV - 1), mask), acc[NV - 1]);
  }
  for (int v = 0; v < NV - 1; ++v) _mm256_storeu_ps(o + 8 * v, acc[v]);
  _mm256_maskstore_ps(o + 8 * (NV - 1), mask, acc[NV - 1]);
}

// The same loop for float64 rows: NV = ceil(r / 4) 256-bit accumulators of four doubles, the last masked,
// and two sets of them taking alternate nonzeros.
template <int NV, typename index_t>
inline void row_masked_f64(int64_t start, int64_t end, const index_t* __restrict__ col,
                           const double* __restrict__ val, const double* __restrict__ u, int64_t n_cols,
                           int64_t stride_n, int64_t r, double* __restrict__ o, int64_t& bad) {
  const long long last = r - 4 * (NV - 1);  // 1..4 valid lanes in the last vector
  const __m256i mask = _mm256_cmpgt_epi64(_mm256_set1_epi64x(last), _mm256_setr_epi64x(0, 1, 2, 3));
  __m256d acc[NV], alt[NV];
  for (int v = 0; v < NV; ++v) acc[v] = alt[v] = _mm256_setzero_pd();
  int64_t k = start;
  for (; k + 2 <= end; k += 2) {  // two sets of accumulators take alternate nonzeros
    const int64_t j0 = static_cast<int64_t>(col[k]), j1 = static_cast<int64_t>(col[k + 1]);
    if (static_cast<uint64_t>(j0) < static_cast<uint64_t>(n_cols)) {
      const __m256d x = _mm256_set1_pd(val[k]);
      const double* __restrict__ uj = u + j0 * stride_n;
      for (int v = 0; v < NV - 1; ++v) acc[v] = _mm256_fmadd_pd(x, _mm256_loadu_pd(uj + 4 * v), acc[v]);
      acc[NV - 1] = _mm256_fmadd_pd(x, _mm256_maskload_pd(uj + 4 * (NV - 1), mask), acc[NV - 1]);
    } else {
      bad = k;
    }
    if (static_cast<uint64_t>(j1) < static_cast<uint64_t>(n_cols)) {
      const __m256d x = _mm256_set1_pd(val[k + 1]);
      const double* __restrict__ uj = u + j1 * stride_n;
      for (int v = 0; v < NV - 1; ++v) alt[v] = _mm256_fmadd_pd(x, _mm256_loadu_pd(uj + 4 * v), alt[v]);
      alt[NV - 1] = _mm256_fmadd_pd(x, _mm256_maskload_pd(uj + 4 * (NV - 1), mask), alt[NV - 1]);
    } else {
      bad = k + 1;
    }
  }
  if (k < end) {
    const int64_t j = static_cast<int64_t>(col[k]);
    if (static_cast<uint64_t>(j) < static_cast<uint64_t>(n_cols)) {
      const __m256d x = _mm256_set1_pd(val[k]);
      const double* __restrict__ uj = u + j * stride_n;
      for (int v = 0; v < NV - 1; ++v) acc[v] = _mm256_fmadd_pd(x, _mm256_loadu_pd(uj + 4 * v), acc[v]);
      acc[NV - 1] = _mm256_fmadd_pd(x, _mm256_maskload_pd(uj + 4 * (NV - 1), mask), acc[NV - 1]);
    } else {
      bad = k;
    }
  }
  for (int v = 0; v < NV - 1; ++v) _mm256_storeu_pd(o + 4 * v, _mm256_add_pd(acc[v], alt[v]));
  _mm256_maskstore_pd(o + 4 * (NV - 1), mask, _mm256_add_pd(acc[NV - 1], alt[NV - 1]));
}

// row_masked_f64 for float64 r = 9-15 (NV = 3, 4); false for other r. Timed in turns against row_fixed at
// n = 100,000 (random and kNN graphs, one thread): 1.03-1.20x at r = 9-12 and 15, 1.04-1.06x at 14, 0.99-1.09x
// at 13; at r = 5-7 the two tied (0.93-1.06x), so those keep row_fixed.
template <typename index_t>
inline bool row_masked(int64_t start, int64_t end, int64_t nnz, const index_t* col, const double* val,
                       const double* u, int64_t n_cols, int64_t r, int64_t stride_n, double* o, int64_t& bad) {
  (void)nnz;  // rows of at most 120 bytes: no prefetch (see the top of this file)
  if (r <= 8 || r >= 16) return false;
  if (r <= 12) {
    row_masked_f64<3>(start, end, col, val, u, n_cols, stride_n, r, o, bad);
  } else {
    row_masked_f64<4>(start, end, col, val, u, n_cols, stride_n, r, o, bad);
  }
  return true;
}

// row_masked_f32 for r's NV; false where r has no such loop (r <= 8, r = 16, r >= 32).
template <typename index_t>
inline bool row_masked(int64_t start, int64_t end, int64_t nnz, const index_t* col, const float* val, const float* u,
                       int64_t n_cols, int64_t r, int64_t stride_n, float* o, int64_t& bad) {
  if (r <= 8 || r >= 32 || r == 16) return false;
#define SYMNMF_MASKED_CASE(NV) \
  case NV:                     \
    row_masked_f32<NV>(start, end, nnz, col, val, u, n_cols, stride_n, r, o, bad); \
    return true;
  switch ((r + 7) / 8) {
    SYMNMF_MASKED_CASE(2) SYMNMF_MASKED_CASE(3) SYMNMF_MASKED_CASE(4)
    default: return false;
  }
#undef SYMNMF_MASKED_CASE
}
#endif

template <int W, typename scalar_t, typename index_t>
inline void row_fixed(int64_t start, int64_t end, int64_t nnz, const index_t* __restrict__ col,
                      const scalar_t* __restrict__ val, const scalar_t* __restrict__ u, int64_t n_cols,
                      int64_t stride_n, int64_t c0, scalar_t* __restrict__ o, int64_t& bad) {
#ifdef SYMNMF_ROWS_AVX2
  if constexpr (W == 8 && std::is_same_v<scalar_t, float>) {
    return row8_f32(start, end, col, val, u, n_cols, stride_n, c0, o, bad);
  }
#endif
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

// Columns [c0, c0 + w) of one output row, w in 1..16 or a multiple of 16 up to 128, each width its own
// unrolled loop: a loop bounded by a run-time width ran 3x slower (r = 10 against r = 16 at n = 1,797).
template <typename scalar_t, typename index_t>
inline void row_chunk(int64_t w, int64_t start, int64_t end, int64_t nnz, const index_t* col, const scalar_t* val,
                      const scalar_t* u, int64_t n_cols, int64_t stride_n, int64_t c0, scalar_t* o, int64_t& bad) {
#define SYMNMF_ROW_CASE(W) \
  case W:                  \
    return row_fixed<W>(start, end, nnz, col, val, u, n_cols, stride_n, c0, o, bad);
  switch (w) {
    SYMNMF_ROW_CASE(1) SYMNMF_ROW_CASE(2) SYMNMF_ROW_CASE(3) SYMNMF_ROW_CASE(4) SYMNMF_ROW_CASE(5)
    SYMNMF_ROW_CASE(6) SYMNMF_ROW_CASE(7) SYMNMF_ROW_CASE(8) SYMNMF_ROW_CASE(9) SYMNMF_ROW_CASE(10)
    SYMNMF_ROW_CASE(11) SYMNMF_ROW_CASE(12) SYMNMF_ROW_CASE(13) SYMNMF_ROW_CASE(14) SYMNMF_ROW_CASE(15)
    SYMNMF_ROW_CASE(16) SYMNMF_ROW_CASE(32) SYMNMF_ROW_CASE(48) SYMNMF_ROW_CASE(64) SYMNMF_ROW_CASE(80)
    SYMNMF_ROW_CASE(96) SYMNMF_ROW_CASE(112) SYMNMF_ROW_CASE(128)
    default: break;
  }
#undef SYMNMF_ROW_CASE
}

// One output row of one problem of the batch: 128-wide chunks, then the multiple of 16 that is left in one
// pass over the row's nonzeros, then the last r % 16 columns in another (so any r <= 16, and every multiple
// of 16 up to 128, takes a single pass). The AVX2 build takes float32 r = 9-31 but 16, and float64 r = 9-15,
// in one masked pass.
template <typename scalar_t, typename index_t>
inline void one_row(int64_t start, int64_t end, int64_t nnz, const index_t* col, const scalar_t* val,
                    const scalar_t* u, int64_t n_cols, int64_t r, int64_t stride_n, scalar_t* o, int64_t& bad) {
#ifdef SYMNMF_ROWS_AVX2
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
    if (row_masked(start, end, nnz, col, val, u, n_cols, r, stride_n, o, bad)) return;
  }
#endif
  int64_t c0 = 0;
  for (; c0 + 128 <= r; c0 += 128) row_fixed<128>(start, end, nnz, col, val, u, n_cols, stride_n, c0, o, bad);
  const int64_t main = (r - c0) / 16 * 16, tail = (r - c0) % 16;
  if (main > 0) row_chunk(main, start, end, nnz, col, val, u, n_cols, stride_n, c0, o, bad);
  if (tail > 0) row_chunk(tail, start, end, nnz, col, val, u, n_cols, stride_n, c0 + main, o, bad);
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
    // Problem-major: one problem's rows, then the next, so that its rows of dense stay in cache.
#pragma omp for schedule(dynamic, 256) nowait
    for (int64_t t = 0; t < batch * n_rows; ++t) {
      const int64_t b = t / n_rows, i = t % n_rows;
      const int64_t start = static_cast<int64_t>(crow[i]), end = static_cast<int64_t>(crow[i + 1]);
      one_row(start, end, nnz, col, val, dense + b * stride_b, n_cols, r, stride_n, out + (b * n_rows + i) * r, bad);
    }
    if (bad >= 0) bad_entry.store(bad, std::memory_order_relaxed);
  }
  return bad_entry.load();
}
