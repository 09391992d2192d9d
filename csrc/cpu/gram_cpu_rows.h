// The row loops of the tall-skinny products (csrc/cpu/gram_cpu.cpp). Included there once per instruction set,
// inside a namespace of its own that defines kVectorBytes (the vector width the set does in one instruction),
// so there is no include guard.
//
// A row of r values is held in NV = ceil(r / lanes) vectors. M's rows are padded with zeros to NV vectors once
// per call (Mp), so that a row of A @ M is r broadcasts and r NV vector multiply-adds. R > 0 is r known at
// compile time: the loops then unroll and a row's sums stay in vector registers; R == 0 takes r at run time
// (r <= kMaxRank).

template <typename T>
struct TallLanes {
  // aligned(sizeof(T)): rows of A, B and out start at any element, so loads and stores may be unaligned.
  typedef T V __attribute__((vector_size(kVectorBytes), aligned(sizeof(T))));
  static constexpr int64_t lanes = kVectorBytes / sizeof(T);
  static constexpr int64_t vectors(int64_t r) { return (r + lanes - 1) / lanes; }
};

// A row of src (r values) into NV vectors. whole: as whole vectors, the lanes past r then holding the next rows'
// values (the caller makes sure they exist); otherwise element by element, zero past r.
template <typename T, int R>
inline void load_row(const T* __restrict__ src, int64_t r_run, bool whole, typename TallLanes<T>::V* __restrict__ dst) {
  using L = TallLanes<T>;
  const int64_t r = R > 0 ? R : r_run;
  const int64_t nv = L::vectors(r);
  if (whole) {
    for (int64_t v = 0; v < nv; ++v) dst[v] = *reinterpret_cast<const typename L::V*>(src + v * L::lanes);
  } else {
    T* d = reinterpret_cast<T*>(dst);
    for (int64_t j = 0; j < nv * L::lanes; ++j) d[j] = j < r ? src[j] : T(0);
  }
}

// out[i] = add[i] + A[i] @ M for rows [begin, end); add may be null. Mp is M with each row padded to NV vectors.
// Each output entry sums over q = 0 .. r-1 in order. When r is not a whole number of vectors, a row whose whole
// vectors end inside the range reads add and writes out in whole vectors: the lanes past r belong to the next
// rows, which this loop writes after (in order), and they never reach a stored lane of this row. The range's
// last rows go element by element.
template <typename T, int R>
void mm_rows(const T* __restrict__ A, const typename TallLanes<T>::V* __restrict__ Mp, const T* __restrict__ add,
             T* __restrict__ out, int64_t r_run, int64_t begin, int64_t end) {
  using L = TallLanes<T>;
  using V = typename L::V;
  const int64_t r = R > 0 ? R : r_run;
  constexpr int64_t kMaxVectors = L::vectors(R > 0 ? R : kMaxRank);
  const int64_t nv = L::vectors(r);
  const V zero = {};
  for (int64_t i = begin; i < end; ++i) {
    const bool whole = (end - i) * r >= nv * L::lanes;
    V acc[kMaxVectors];
    if (add == nullptr) {
      for (int64_t v = 0; v < nv; ++v) acc[v] = zero;
    } else {
      load_row<T, R>(add + i * r, r, whole, acc);
    }
    const T* a = A + i * r;
    for (int64_t q = 0; q < r; ++q) {
      const V aq = zero + a[q];
      for (int64_t v = 0; v < nv; ++v) acc[v] += aq * Mp[q * nv + v];
    }
    T* o = out + i * r;
    if (whole) {
      for (int64_t v = 0; v < nv; ++v) *reinterpret_cast<V*>(o + v * L::lanes) = acc[v];
    } else {
      const T* s = reinterpret_cast<const T*>(acc);
      for (int64_t j = 0; j < r; ++j) o[j] = s[j];
    }
  }
}

// sum[q * r + j] = sum over rows [begin, end) of A[i, q] B[i, j], the rows taken in order. A row whose whole
// vectors end inside the range reads B in whole vectors: the lanes past r (the next rows' values) only reach
// sums past r, which are never read.
// accumulate: add to the sums already in sum (which then hold r x r values) instead of starting from zero; a
// range split in two this way gives the same sums as one call over the whole range.
template <typename T, int R>
void gram_rows(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ sum, int64_t r_run, int64_t begin,
               int64_t end, bool accumulate = false) {
  using L = TallLanes<T>;
  using V = typename L::V;
  const int64_t r = R > 0 ? R : r_run;
  constexpr int64_t kMaxVectors = L::vectors(R > 0 ? R : kMaxRank);
  const int64_t nv = L::vectors(r);
  const V zero = {};
  V acc[(R > 0 ? R : kMaxRank) * kMaxVectors];  // row q of the sums in acc[q * nv .. q * nv + nv - 1]
  for (int64_t k = 0; k < r * nv; ++k) acc[k] = zero;
  if (accumulate) {
    for (int64_t q = 0; q < r; ++q) {
      T* s = reinterpret_cast<T*>(acc + q * nv);
      for (int64_t j = 0; j < r; ++j) s[j] = sum[q * r + j];
    }
  }
  for (int64_t i = begin; i < end; ++i) {
    V b[kMaxVectors];
    load_row<T, R>(B + i * r, r, (end - i) * r >= nv * L::lanes, b);
    const T* a = A + i * r;
    for (int64_t q = 0; q < r; ++q) {
      const V aq = zero + a[q];
      for (int64_t v = 0; v < nv; ++v) acc[q * nv + v] += aq * b[v];
    }
  }
  for (int64_t q = 0; q < r; ++q) {
    const T* s = reinterpret_cast<const T*>(acc + q * nv);
    for (int64_t j = 0; j < r; ++j) sum[q * r + j] = s[j];
  }
}

// The ReLU of ops/apply_relu.py and its backward, fused with their products: each runs the loops above on tiles
// of kTileRows rows, so that a tile's intermediate is still in the L1 cache when the next loop reads it, and the
// n x r data crosses memory once. Every value is computed by the same operations in the same order as the
// unfused chain (tall_mm, torch's ReLU or mask, tall_gram), so the results are the same to the bit.
constexpr int64_t kTileRows = 64;

// Y = ReLU(P @ M) and sum = Y^T Y over rows [begin, end). The ReLU keeps NaN, as torch's does.
template <typename T, int R>
void relu_gram_rows(const T* __restrict__ P, const typename TallLanes<T>::V* __restrict__ Mp, T* __restrict__ Y,
                    T* __restrict__ sum, int64_t r_run, int64_t begin, int64_t end) {
  const int64_t r = R > 0 ? R : r_run;
  for (int64_t t = begin; t < end; t += kTileRows) {
    const int64_t len = std::min(end - t, kTileRows);
    T* y = Y + t * r;
    mm_rows<T, R>(P + t * r, Mp, nullptr, y, r, 0, len);
    for (int64_t k = 0; k < len * r; ++k) y[k] = y[k] < T(0) ? T(0) : y[k];
    gram_rows<T, R>(y, y, sum, r, 0, len, t > begin);
  }
}

// For rows [begin, end): Z = mask(grad + Y @ H) (H optional, Hp null without it; the mask zeroes where Y <= 0,
// as torch's threshold_backward), dP = Z @ M (M = G^{-T}) and sum = P^T Z.
template <typename T, int R>
void relu_backward_rows(const T* __restrict__ grad, const T* __restrict__ Y, const typename TallLanes<T>::V* Hp,
                        const T* __restrict__ P, const typename TallLanes<T>::V* __restrict__ Mp, T* __restrict__ dP,
                        T* __restrict__ sum, int64_t r_run, int64_t begin, int64_t end) {
  const int64_t r = R > 0 ? R : r_run;
  alignas(64) T z[kTileRows * (R > 0 ? R : kMaxRank)];
  for (int64_t t = begin; t < end; t += kTileRows) {
    const int64_t len = std::min(end - t, kTileRows);
    const T* y = Y + t * r;
    if (Hp != nullptr) {
      mm_rows<T, R>(y, Hp, grad + t * r, z, r, 0, len);
    } else {
      std::copy(grad + t * r, grad + (t + len) * r, z);
    }
    for (int64_t k = 0; k < len * r; ++k) z[k] = y[k] <= T(0) ? T(0) : z[k];
    mm_rows<T, R>(z, Mp, nullptr, dP + t * r, r, 0, len);
    gram_rows<T, R>(P + t * r, z, sum, r, 0, len, t > begin);
  }
}
