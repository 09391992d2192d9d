// The row loops of the fused sparse layer loss (csrc/cpu/sparse_loss_cpu.cpp). Included there once per
// instruction set, after spmm_cpu_rows.h (whose one_row computes a row of X times a dense matrix), inside a
// namespace of its own, so there is no include guard. All n x r arrays are (B, n, r) and contiguous.

// A block's float64 sums of one problem, (<S, U>, ||R||^2, <R, U>), kept in locals and stored once: threads on
// neighbouring blocks would otherwise write to the same cache lines of the partial array at every row. For
// r <= kColumns the sums are kept per column: each row adds its products (exact in float64 for float32 data)
// in one vector loop, with no sum across the row's lanes, and store() adds the columns up once per block. A
// sum across the row per row and per sum cost about as much as the rest of the loss's epilogue (15-20 ns a row
// at r = 8).
struct BlockSums {
  static constexpr int64_t kColumns = 64;
  double su = 0.0, rr = 0.0, ru = 0.0;
  int64_t columns = 0;  // r while the per-column sums are used, else 0
  double col_su[kColumns], col_rr[kColumns], col_ru[kColumns];

  explicit BlockSums(int64_t r) {
    if (r <= kColumns) {
      columns = r;
      for (int64_t c = 0; c < r; ++c) col_su[c] = col_rr[c] = col_ru[c] = 0.0;
    }
  }
  void store(double* part) {
    for (int64_t c = 0; c < columns; ++c) {
      su += col_su[c];
      rr += col_rr[c];
      ru += col_ru[c];
    }
    part[0] = su;
    part[1] = rr;
    part[2] = ru;
  }
};

// The rest of a row of the forward once its S_i is in s: <S_i, U_i> into sums.su and, with P, R_i = P_i - S_i -
// lam U_i into q with ||R_i||^2 and <R_i, U_i> into sums.rr and sums.ru. Both forms of terms_blocks call it on
// the row of S, so that the sums are the same code, and so the same bits, whichever form ran.
template <typename scalar_t>
inline void terms_epilogue(const scalar_t* __restrict__ s, const scalar_t* __restrict__ u,
                           const scalar_t* __restrict__ p, scalar_t* __restrict__ q, scalar_t l, int64_t r,
                           BlockSums& sums) {
  if (sums.columns > 0) {
    double* __restrict__ su = sums.col_su;
#pragma omp simd
    for (int64_t c = 0; c < r; ++c) su[c] += static_cast<double>(s[c]) * static_cast<double>(u[c]);
    if (p != nullptr) {
      double* __restrict__ rr = sums.col_rr;
      double* __restrict__ ru = sums.col_ru;
#pragma omp simd
      for (int64_t c = 0; c < r; ++c) {
        const scalar_t v = p[c] - s[c] - l * u[c];
        q[c] = v;
        const double w = static_cast<double>(v);
        rr[c] += w * w;
        ru[c] += w * static_cast<double>(u[c]);
      }
    }
    return;
  }
  // Wider rows: one float64 sum across the row per sum, whose cost is small beside such a row's SpMM.
  double a = 0.0;
#pragma omp simd reduction(+ : a)
  for (int64_t c = 0; c < r; ++c) a += static_cast<double>(s[c]) * static_cast<double>(u[c]);
  sums.su += a;
  if (p != nullptr) {
    double x = 0.0, y = 0.0;
#pragma omp simd reduction(+ : x, y)
    for (int64_t c = 0; c < r; ++c) {
      const scalar_t v = p[c] - s[c] - l * u[c];
      q[c] = v;
      const double w = static_cast<double>(v);
      x += w * w;
      y += w * static_cast<double>(u[c]);
    }
    sums.rr += x;
    sums.ru += y;
  }
}

// The rest of a row of the backward once its (X R)_i is in xr: o = t + cs s - cr (l q + xr), t optional (xr may
// be o itself).
template <typename scalar_t>
inline void grad_epilogue(const scalar_t* xr, scalar_t* o, const scalar_t* __restrict__ t,
                          const scalar_t* __restrict__ s, const scalar_t* __restrict__ q, scalar_t cs, scalar_t cr,
                          scalar_t l, int64_t r) {
  if (t != nullptr) {
#pragma omp simd
    for (int64_t c = 0; c < r; ++c) o[c] = t[c] + cs * s[c] - cr * (l * q[c] + xr[c]);
  } else {
#pragma omp simd
    for (int64_t c = 0; c < r; ++c) o[c] = cs * s[c] - cr * (l * q[c] + xr[c]);
  }
}

// Per block of rows: S = X U, R = P - S - lam U (when P is given), and the block's float64 partial sums
// (<S, U>, ||R||^2, <R, U>) per problem at partial[(blk * B + b) * 3 + 0..2]. Returns the position of an
// out-of-range column index, or -1.
template <typename scalar_t, typename crow_t, typename index_t>
int64_t terms_blocks(const crow_t* crow, const index_t* col, const scalar_t* val, const scalar_t* U,
                     const scalar_t* P, const scalar_t* lam, scalar_t* S, scalar_t* R, int64_t B, int64_t n,
                     int64_t r, int64_t n_blocks, int64_t rows_per_block, double* partial, bool parallel) {
  const int threads = at::get_num_threads();
  const int64_t group = side_by_side_group<scalar_t>(r, B);
  if (group > 0) {  // every problem's rows at once (spmm_cpu_rows.h), then each problem's epilogue over the block
    return side_by_side_blocks(crow, col, val, U, n * r, r, B, n, n, group, rows_per_block, parallel, threads,
                               [&](int64_t blk, int64_t i0, int64_t i1, const scalar_t* rows) {
      for (int64_t b = 0; b < B; ++b) {
        BlockSums sums(r);
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t row = (b * n + i) * r;
          copy_row(rows + ((i - i0) * B + b) * r, S + row);
          terms_epilogue(S + row, U + row, P == nullptr ? nullptr : P + row, P == nullptr ? nullptr : R + row,
                         lam[b], r, sums);
        }
        sums.store(partial + (blk * B + b) * 3);
      }
    });
  }
  std::atomic<int64_t> bad_entry{-1};
  const int64_t nnz = static_cast<int64_t>(crow[n]);
  // Problem-major: all the blocks of one problem, then the next, so that the rows of U the SpMM gathers
  // from stay in cache (taking the problems in turn row by row, each gathering from its own U, 4 restarts at
  // n = 20,000 ran 2x slower per problem).
#pragma omp parallel for schedule(dynamic, 1) if (parallel) num_threads(threads)
  for (int64_t task = 0; task < B * n_blocks; ++task) {
    int64_t bad = -1;
    const int64_t b = task / n_blocks, blk = task % n_blocks;
    const int64_t i0 = blk * rows_per_block, i1 = std::min(n, i0 + rows_per_block);
    const int64_t off = b * n * r;
    BlockSums sums(r);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t row = off + i * r;
      one_row(static_cast<int64_t>(crow[i]), static_cast<int64_t>(crow[i + 1]), nnz, col, val, U + off, n, r, r,
              S + row, bad);
      terms_epilogue(S + row, U + row, P == nullptr ? nullptr : P + row, P == nullptr ? nullptr : R + row, lam[b], r,
                     sums);
    }
    sums.store(partial + (blk * B + b) * 3);
    if (bad >= 0) bad_entry.store(bad, std::memory_order_relaxed);
  }
  return bad_entry.load();
}

// dU = T + coef_s S - coef_r (lam R + X R), row by row: (X R)_i lands in dU's row and the rest is added to it
// while the row is hot. T may be null (T = 0). Returns the position of an out-of-range column index, or -1.
template <typename scalar_t, typename crow_t, typename index_t>
int64_t grad_rows(const crow_t* crow, const index_t* col, const scalar_t* val, const scalar_t* T, const scalar_t* S,
                  const scalar_t* R, const scalar_t* lam, const scalar_t* coef_s, const scalar_t* coef_r, scalar_t* dU,
                  int64_t B, int64_t n, int64_t r, bool parallel) {
  const int threads = at::get_num_threads();
  const int64_t group = side_by_side_group<scalar_t>(r, B);
  if (group > 0) {  // every problem's rows of X R at once, as in terms_blocks
    return side_by_side_blocks(crow, col, val, R, n * r, r, B, n, n, group, kSideBySideRows, parallel, threads,
                               [&](int64_t, int64_t i0, int64_t i1, const scalar_t* rows) {
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t row = (b * n + i) * r;
          grad_epilogue(rows + ((i - i0) * B + b) * r, dU + row, T == nullptr ? nullptr : T + row, S + row, R + row,
                        coef_s[b], coef_r[b], lam[b], r);
        }
      }
    });
  }
  std::atomic<int64_t> bad_entry{-1};
  const int64_t nnz = static_cast<int64_t>(crow[n]);
#pragma omp parallel if (parallel) num_threads(threads)
  {
    int64_t bad = -1;
    // problem-major, as in terms_blocks
#pragma omp for schedule(dynamic, 256) nowait
    for (int64_t task = 0; task < B * n; ++task) {
      const int64_t b = task / n, i = task % n;
      const int64_t row = (b * n + i) * r;
      one_row(static_cast<int64_t>(crow[i]), static_cast<int64_t>(crow[i + 1]), nnz, col, val, R + b * n * r, n, r, r,
              dU + row, bad);
      grad_epilogue(dU + row, dU + row, T == nullptr ? nullptr : T + row, S + row, R + row, coef_s[b], coef_r[b],
                    lam[b], r);
    }
    if (bad >= 0) bad_entry.store(bad, std::memory_order_relaxed);
  }
  return bad_entry.load();
}
