// The row loops of the fused sparse layer loss (csrc/cpu/sparse_loss_cpu.cpp). Included there once per
// instruction set, after spmm_cpu_rows.h (whose one_row computes a row of X times a dense matrix), inside a
// namespace of its own, so there is no include guard. All n x r arrays are (B, n, r) and contiguous.

// Per block of rows: S = X U, R = P - S - lam U (when P is given), and the block's float64 partial sums
// (<S, U>, ||R||^2, <R, U>) per problem at partial[(blk * B + b) * 3 + 0..2]. Returns the position of an
// out-of-range column index, or -1.
template <typename scalar_t, typename crow_t, typename index_t>
int64_t terms_blocks(const crow_t* crow, const index_t* col, const scalar_t* val, const scalar_t* U,
                     const scalar_t* P, const scalar_t* lam, scalar_t* S, scalar_t* R, int64_t B, int64_t n,
                     int64_t r, int64_t n_blocks, int64_t rows_per_block, double* partial, bool parallel) {
  std::atomic<int64_t> bad_entry{-1};
  const int64_t nnz = static_cast<int64_t>(crow[n]);
  // Problem-major: all the blocks of one problem, then the next, so that the rows of U the SpMM gathers
  // from stay in cache (with the problems interleaved, 4 restarts at n = 20,000 ran 2x slower per problem).
#pragma omp parallel for schedule(dynamic, 1) if (parallel) num_threads(at::get_num_threads())
  for (int64_t task = 0; task < B * n_blocks; ++task) {
    int64_t bad = -1;
    const int64_t b = task / n_blocks, blk = task % n_blocks;
    const int64_t i0 = blk * rows_per_block, i1 = std::min(n, i0 + rows_per_block);
    {
      const int64_t off = b * n * r;
      const scalar_t l = lam[b];
      double su = 0.0, rr = 0.0, ru = 0.0;
      for (int64_t i = i0; i < i1; ++i) {
        scalar_t* __restrict__ s = S + off + i * r;
        one_row(static_cast<int64_t>(crow[i]), static_cast<int64_t>(crow[i + 1]), nnz, col, val, U + off, n, r, r,
                s, bad);
        const scalar_t* __restrict__ u = U + off + i * r;
        scalar_t a = scalar_t(0);
#pragma omp simd reduction(+ : a)
        for (int64_t c = 0; c < r; ++c) a += s[c] * u[c];
        su += a;
        if (P != nullptr) {
          const scalar_t* __restrict__ p = P + off + i * r;
          scalar_t* __restrict__ q = R + off + i * r;
          scalar_t x = scalar_t(0), y = scalar_t(0);
#pragma omp simd reduction(+ : x, y)
          for (int64_t c = 0; c < r; ++c) {
            const scalar_t v = p[c] - s[c] - l * u[c];
            q[c] = v;
            x += v * v;
            y += v * u[c];
          }
          rr += x;
          ru += y;
        }
      }
      double* part = partial + (blk * B + b) * 3;
      part[0] = su;
      part[1] = rr;
      part[2] = ru;
    }
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
  std::atomic<int64_t> bad_entry{-1};
  const int64_t nnz = static_cast<int64_t>(crow[n]);
#pragma omp parallel if (parallel) num_threads(at::get_num_threads())
  {
    int64_t bad = -1;
    // problem-major, as in terms_blocks
#pragma omp for schedule(dynamic, 256) nowait
    for (int64_t task = 0; task < B * n; ++task) {
      const int64_t b = task / n, i = task % n;
      {
        const int64_t row = (b * n + i) * r;
        scalar_t* __restrict__ o = dU + row;
        one_row(static_cast<int64_t>(crow[i]), static_cast<int64_t>(crow[i + 1]), nnz, col, val, R + b * n * r, n,
                r, r, o, bad);
        const scalar_t* __restrict__ s = S + row;
        const scalar_t* __restrict__ q = R + row;
        const scalar_t cs = coef_s[b], cr = coef_r[b], l = lam[b];
        if (T != nullptr) {
          const scalar_t* __restrict__ t = T + row;
#pragma omp simd
          for (int64_t c = 0; c < r; ++c) o[c] = t[c] + cs * s[c] - cr * (l * q[c] + o[c]);
        } else {
#pragma omp simd
          for (int64_t c = 0; c < r; ++c) o[c] = cs * s[c] - cr * (l * q[c] + o[c]);
        }
      }
    }
    if (bad >= 0) bad_entry.store(bad, std::memory_order_relaxed);
  }
  return bad_entry.load();
}
