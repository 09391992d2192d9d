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

// 256-bit registers of float32 (8 lanes) and float64 (4 lanes) for row_masked, with a mask of the first
// `valid` lanes (a masked load never touches the masked-off memory, so the last row of u is safe).
struct Lanes32 {
  using scalar = float;
  using vec = __m256;
  static constexpr int kLanes = 8;
  static vec zero() { return _mm256_setzero_ps(); }
  static vec set1(float x) { return _mm256_set1_ps(x); }
  static vec load(const float* p) { return _mm256_loadu_ps(p); }
  static vec mask_load(const float* p, __m256i m) { return _mm256_maskload_ps(p, m); }
  static vec fmadd(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  static vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  static void store(float* p, vec a) { _mm256_storeu_ps(p, a); }
  static void mask_store(float* p, __m256i m, vec a) { _mm256_maskstore_ps(p, m, a); }
  static __m256i mask(int valid) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
};
struct Lanes64 {
  using scalar = double;
  using vec = __m256d;
  static constexpr int kLanes = 4;
  static vec zero() { return _mm256_setzero_pd(); }
  static vec set1(double x) { return _mm256_set1_pd(x); }
  static vec load(const double* p) { return _mm256_loadu_pd(p); }
  static vec mask_load(const double* p, __m256i m) { return _mm256_maskload_pd(p, m); }
  static vec fmadd(vec a, vec b, vec c) { return _mm256_fmadd_pd(a, b, c); }
  static vec add(vec a, vec b) { return _mm256_add_pd(a, b); }
  static void store(double* p, vec a) { _mm256_storeu_pd(p, a); }
  static void mask_store(double* p, __m256i m, vec a) { _mm256_maskstore_pd(p, m, a); }
  static __m256i mask(int valid) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(valid), _mm256_setr_epi64x(0, 1, 2, 3));
  }
};

// One output row of r columns in one pass over the row's nonzeros: NV = ceil(r / lanes) accumulators, the last
// read and written through a mask. ALT: two sets of accumulators take alternate nonzeros (as row8_f32), so that
// consecutive multiply-adds need not wait for each other; without it, rows of at least kPrefetchRowBytes are
// prefetched as in row_fixed. Each column is summed over the nonzeros in order (two interleaved partial sums
// with ALT). Before, float32 r = 9-15 (and float64 9-15) ran the compiler's code for those widths and float32
// 17-31 took two passes (16, then the rest). Timed in turns against those loops at n = 100,000 (random and kNN
// graphs, one thread): float32 1.25-1.45x at r = 10 and 14 and 1.09-1.22x at 20-28, but 0.80-0.95x from r = 33
// on, which keeps the two passes; float64 1.03-1.20x at r = 9-12 and 15, 1.04-1.06x at 14, 0.99-1.09x at 13,
// and a tie at 5-7 (0.93-1.06x), which keep row_fixed.
template <typename L, int NV, bool ALT, typename index_t>
inline void row_masked_loop(int64_t start, int64_t end, int64_t nnz, const index_t* __restrict__ col,
                            const typename L::scalar* __restrict__ val, const typename L::scalar* __restrict__ u,
                            int64_t n_cols, int64_t stride_n, int64_t r, typename L::scalar* __restrict__ o,
                            int64_t& bad) {
  using vec = typename L::vec;
  const __m256i mask = L::mask(static_cast<int>(r - L::kLanes * (NV - 1)));
  vec acc[NV], alt[NV];
  for (int v = 0; v < NV; ++v) acc[v] = alt[v] = L::zero();
  // a[] += val[k] * u[col[k], 0 .. r), or k recorded in bad when col[k] is out of range
  auto add_nonzero = [&](vec* a, int64_t k) {
    const int64_t j = static_cast<int64_t>(col[k]);
    if (static_cast<uint64_t>(j) >= static_cast<uint64_t>(n_cols)) {
      bad = k;
      return;
    }
    const vec x = L::set1(val[k]);
    const typename L::scalar* __restrict__ uj = u + j * stride_n;
    for (int v = 0; v < NV - 1; ++v) a[v] = L::fmadd(x, L::load(uj + L::kLanes * v), a[v]);
    a[NV - 1] = L::fmadd(x, L::mask_load(uj + L::kLanes * (NV - 1), mask), a[NV - 1]);
  };
  int64_t k = start;
  if constexpr (ALT) {
    for (; k + 2 <= end; k += 2) {
      add_nonzero(acc, k);
      add_nonzero(alt, k + 1);
    }
  }
  for (; k < end; ++k) {
    if constexpr (!ALT && NV * sizeof(vec) >= kPrefetchRowBytes) {
      if (k + kPrefetchDistance < nnz) {
        const char* ahead = reinterpret_cast<const char*>(u + static_cast<int64_t>(col[k + kPrefetchDistance]) *
                                                                  stride_n);
        for (size_t c = 0; c < NV * sizeof(vec); c += 64) __builtin_prefetch(ahead + c, 0, 1);
      }
    }
    add_nonzero(acc, k);
  }
  for (int v = 0; v < NV - 1; ++v) L::store(o + L::kLanes * v, ALT ? L::add(acc[v], alt[v]) : acc[v]);
  L::mask_store(o + L::kLanes * (NV - 1), mask, ALT ? L::add(acc[NV - 1], alt[NV - 1]) : acc[NV - 1]);
}

// row_masked_loop for the widths it serves: float32 r = 9-31 but 16 (alternating at r < 16), float64 r = 9-15
// (alternating); false for any other r.
template <typename index_t>
inline bool row_masked(int64_t start, int64_t end, int64_t nnz, const index_t* col, const float* val, const float* u,
                       int64_t n_cols, int64_t r, int64_t stride_n, float* o, int64_t& bad) {
  if (r <= 8 || r >= 32 || r == 16) return false;
  if (r < 16) {
    row_masked_loop<Lanes32, 2, true>(start, end, nnz, col, val, u, n_cols, stride_n, r, o, bad);
  } else if (r <= 24) {
    row_masked_loop<Lanes32, 3, false>(start, end, nnz, col, val, u, n_cols, stride_n, r, o, bad);
  } else {
    row_masked_loop<Lanes32, 4, false>(start, end, nnz, col, val, u, n_cols, stride_n, r, o, bad);
  }
  return true;
}

template <typename index_t>
inline bool row_masked(int64_t start, int64_t end, int64_t nnz, const index_t* col, const double* val,
                       const double* u, int64_t n_cols, int64_t r, int64_t stride_n, double* o, int64_t& bad) {
  if (r <= 8 || r >= 16) return false;
  if (r <= 12) {
    row_masked_loop<Lanes64, 3, true>(start, end, nnz, col, val, u, n_cols, stride_n, r, o, bad);
  } else {
    row_masked_loop<Lanes64, 4, true>(start, end, nnz, col, val, u, n_cols, stride_n, r, o, bad);
  }
  return true;
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

// Problems side by side. A batch of problems that share X multiplies X by each problem's n x r factor. One problem
// at a time, every nonzero of X is read once per problem and gathers a row of r values; with the factors
// interleaved into one (n, B r) copy, a group of problems reads each nonzero once and gathers their rows as one
// contiguous stretch. Each column is still summed over the nonzeros in the same order as one problem's loop sums
// it (the alternating accumulators of row8_f32, lane by lane), so the result is bitwise the same.
// Only float32 r = 8 takes this path, in groups of up to 4 problems (4 registers, 8 with the alternates). Timed
// in turns against one problem at a time (4 problems, planted graphs of 2,000 to 200,000 nodes, 1 and 2 threads;
// docs/cpu_backend.md, "Problems side by side"), r = 8 gained 1.04-2.28x in the SpMM and the two sparse-loss
// kernels; r = 9-15 in groups of 2-3 problems gained at 200,000 nodes on one thread but lost up to 0.74x at
// 20,000 nodes on two, where one problem's rows fit in a core's L2 cache and the group's do not.
constexpr int64_t kSideBySideWidth = 8;
constexpr int64_t kSideBySideGroup = 4;
constexpr int64_t kSideBySideRows = 256;  // rows per block of side_by_side_blocks (the sparse loss passes its own)

// dst[0 .. kSideBySideWidth) = src[...]: a row of the side-by-side buffer to its problem (a vector move, not a call).
template <typename scalar_t>
inline void copy_row(const scalar_t* __restrict__ src, scalar_t* __restrict__ dst) {
  for (int64_t c = 0; c < kSideBySideWidth; ++c) dst[c] = src[c];
}

#ifdef SYMNMF_ROWS_AVX2
// Problems per side-by-side group for rows of r columns, or 0 where they take their own loops.
template <typename scalar_t>
inline int64_t side_by_side_group(int64_t r, int64_t batch) {
  if (!std::is_same_v<scalar_t, float> || r != kSideBySideWidth || batch < 2 || !side_by_side_allowed()) return 0;
  return std::min(batch, kSideBySideGroup);
}

// A row of w = g 8 columns (g = 1 .. 4) of the interleaved factors (row stride ld), summed as row8_f32 sums each
// problem's row.
template <typename scalar_t, typename index_t>
inline void side_by_side_row(int64_t start, int64_t end, int64_t nnz, const index_t* col, const scalar_t* val,
                             const scalar_t* wide, int64_t n_cols, int64_t ld, int64_t w, scalar_t* o, int64_t& bad) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    switch (w / Lanes32::kLanes) {
#define SYMNMF_SIDE_CASE(NV) \
  case NV:                   \
    return row_masked_loop<Lanes32, NV, true>(start, end, nnz, col, val, wide, n_cols, ld, w, o, bad);
      SYMNMF_SIDE_CASE(1) SYMNMF_SIDE_CASE(2) SYMNMF_SIDE_CASE(3) SYMNMF_SIDE_CASE(4)
#undef SYMNMF_SIDE_CASE
      default: break;
    }
  }
}
#else
template <typename scalar_t>
inline int64_t side_by_side_group(int64_t, int64_t) {
  return 0;
}
template <typename scalar_t, typename index_t>
inline void side_by_side_row(int64_t, int64_t, int64_t, const index_t*, const scalar_t*, const scalar_t*, int64_t,
                             int64_t, int64_t, scalar_t*, int64_t&) {}
#endif

// X times the batch's factors dense[b] (rows of kSideBySideWidth columns, strides stride_b and stride_n) side by
// side, one block of rows_per_block rows at a time: the block's rows for every problem go to a buffer (row i of
// problem b at ((i - i0) batch + b) kSideBySideWidth), then block_done(blk, i0, i1, buffer) writes them out while
// they are hot (the sparse-loss kernels run their epilogues there). Returns the position of an out-of-range column
// index, or -1.
template <typename scalar_t, typename crow_t, typename index_t, typename BlockDone>
int64_t side_by_side_blocks(const crow_t* crow, const index_t* col, const scalar_t* val, const scalar_t* dense,
                            int64_t stride_b, int64_t stride_n, int64_t batch, int64_t n_rows, int64_t n_cols,
                            int64_t group, int64_t rows_per_block, bool parallel, int threads, BlockDone block_done) {
  constexpr int64_t r = kSideBySideWidth;
  const int64_t w = batch * r, nnz = static_cast<int64_t>(crow[n_rows]);
  (void)threads;  // unused without OpenMP
  // wide[j, b r .. (b + 1) r) = dense[b, j, :], the one extra pass over the factors
  std::unique_ptr<scalar_t[]> wide(new scalar_t[static_cast<size_t>(n_cols * w)]);
#pragma omp parallel for schedule(static) if (parallel) num_threads(threads)
  for (int64_t j = 0; j < n_cols; ++j) {
    for (int64_t b = 0; b < batch; ++b) {
      copy_row(dense + b * stride_b + j * stride_n, wide.get() + j * w + b * r);
    }
  }
  std::atomic<int64_t> bad_entry{-1};
  const int64_t n_blocks = (n_rows + rows_per_block - 1) / rows_per_block;
#pragma omp parallel if (parallel) num_threads(threads)
  {
    int64_t bad = -1;
    std::unique_ptr<scalar_t[]> acc(new scalar_t[static_cast<size_t>(rows_per_block * w)]);
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
      const int64_t i0 = blk * rows_per_block, i1 = std::min(n_rows, i0 + rows_per_block);
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t b0 = 0; b0 < batch; b0 += group) {
          side_by_side_row(static_cast<int64_t>(crow[i]), static_cast<int64_t>(crow[i + 1]), nnz, col, val,
                           wide.get() + b0 * r, n_cols, w, std::min(group, batch - b0) * r,
                           acc.get() + (i - i0) * w + b0 * r, bad);
        }
      }
      block_done(blk, i0, i1, static_cast<const scalar_t*>(acc.get()));
    }
    if (bad >= 0) bad_entry.store(bad, std::memory_order_relaxed);
  }
  return bad_entry.load();
}

// out[b, i, :] = sum_k val[k] * dense[b, col[k], :] over row i's nonzeros k, for every batch b. Returns the
// position of an out-of-range column index (the rows that hold one are incomplete), or -1.
template <typename scalar_t, typename crow_t, typename index_t>
int64_t spmm_rows(const crow_t* crow, const index_t* col, const scalar_t* val, const scalar_t* dense, scalar_t* out,
                  int64_t batch, int64_t n_rows, int64_t n_cols, int64_t r, int64_t stride_b, int64_t stride_n,
                  bool parallel, int threads) {
  const int64_t group = side_by_side_group<scalar_t>(r, batch);
  if (group > 0) {
    return side_by_side_blocks(crow, col, val, dense, stride_b, stride_n, batch, n_rows, n_cols, group,
                               kSideBySideRows, parallel, threads,
                               [&](int64_t, int64_t i0, int64_t i1, const scalar_t* rows) {
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t i = i0; i < i1; ++i) copy_row(rows + ((i - i0) * batch + b) * r, out + (b * n_rows + i) * r);
      }
    });
  }
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
