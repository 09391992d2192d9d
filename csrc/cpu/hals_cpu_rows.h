// The row loop of the CPU SymHALS sweep (csrc/cpu/hals_cpu.cpp). Included there once per instruction set,
// inside a namespace of its own that defines kVectorBytes (the vector width the set does in one instruction),
// so there is no include guard.
//
// Rows are independent, but within a row column k's update reads the columns updated before it. A block of
// kBlockRows rows is copied into a column-major buffer of vectors, so that every step of the sweep
// is a few vector operations on kBlockRows independent lanes, with the block's sums held in registers; then
// it is copied back. Each row's sum over j runs in the order j = 0 .. r-1.

constexpr int64_t kBlockRows = 16;

template <typename T>
struct Lanes {
  typedef T V __attribute__((vector_size(kVectorBytes)));
  static constexpr int64_t per_vector = kVectorBytes / sizeof(T);
  static constexpr int64_t per_block = kBlockRows / per_vector;  // vectors per column of a block
};

// Sweeps rows [begin, end) of W in place; m (r values) takes the running column maxima (NaN sticks).
// Bt is B transposed (row k = column k of B), d its diagonal; buf holds 2 r Lanes<T>::per_block vectors.
template <typename T>
void hals_rows(T* __restrict__ W, const T* __restrict__ C, const T* __restrict__ V, T lam, const T* __restrict__ Bt,
               const T* __restrict__ d, int64_t r, int64_t begin, int64_t end, typename Lanes<T>::V* __restrict__ buf,
               T* __restrict__ m) {
  using Vec = typename Lanes<T>::V;
  constexpr int64_t NV = Lanes<T>::per_block;
  Vec* __restrict__ wb = buf;           // wb[j * NV + v]: column j of the block's rows, kBlockRows lanes
  Vec* __restrict__ cb = buf + r * NV;  // the right-hand side c, likewise
  T* __restrict__ wbs = reinterpret_cast<T*>(wb);
  T* __restrict__ cbs = reinterpret_cast<T*>(cb);
  const Vec zero = {};
  for (int64_t i0 = begin; i0 < end; i0 += kBlockRows) {
    const int64_t rows = std::min<int64_t>(kBlockRows, end - i0);
    for (int64_t t = 0; t < kBlockRows; ++t) {
      // The padding lanes of a last short block sweep zeros and are never written back.
      const bool live = t < rows;
      const T* w = W + (i0 + t) * r;
      const T* c = C + (i0 + t) * r;
      const T* v = V == nullptr ? nullptr : V + (i0 + t) * r;
      for (int64_t j = 0; j < r; ++j) {
        wbs[j * kBlockRows + t] = live ? w[j] : T(0);
        cbs[j * kBlockRows + t] = live ? (v == nullptr ? c[j] : c[j] + lam * v[j]) : T(0);
      }
    }
    for (int64_t k = 0; k < r; ++k) {
      Vec acc[NV];
      for (int64_t q = 0; q < NV; ++q) acc[q] = zero;
      const T* bk = Bt + k * r;
      for (int64_t j = 0; j < r; ++j) {
        const Vec b = zero + bk[j];
        for (int64_t q = 0; q < NV; ++q) acc[q] += wb[j * NV + q] * b;
      }
      const Vec dk = zero + d[k];
      for (int64_t q = 0; q < NV; ++q) {
        const Vec x = wb[k * NV + q] + (cb[k * NV + q] - acc[q]) / dk;
        wb[k * NV + q] = x < zero ? zero : x;  // a NaN fails the test and stays
      }
    }
    for (int64_t t = 0; t < rows; ++t) {
      T* w = W + (i0 + t) * r;
      for (int64_t j = 0; j < r; ++j) {
        const T x = wbs[j * kBlockRows + t];
        w[j] = x;
        if (!(x <= m[j]) && !std::isnan(m[j])) m[j] = x;  // x > m, or x NaN; a NaN maximum stays
      }
    }
  }
}
