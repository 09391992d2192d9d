// The loop of the CPU projected-gradient norm (csrc/cpu/projected_gradient_cpu.cpp). Included there once per
// instruction set, inside a namespace of its own that defines kVectorBytes (the vector width the set does in
// one instruction), so there is no include guard.

// sum over [begin, end) of P(g)^2, P(g) = 0 where u <= 0 and g >= 0, else g (NaN where u is not finite).
// Runs of kRun entries are summed in T over the lanes of one vector (independent sums, so the compiler needs
// no reordering), each run added in float64.
template <typename T>
double projected_gradient_sq_range(const T* g, const T* u, int64_t begin, int64_t end) {
  typedef T Vec __attribute__((vector_size(kVectorBytes)));
  constexpr int64_t L = kVectorBytes / sizeof(T);
  constexpr int64_t kRun = 256;
  const Vec zero = {};
  double part = 0.0;
  int64_t i = begin;
  for (; i + kRun <= end; i += kRun) {
    Vec acc = zero;
    for (int64_t j = 0; j < kRun; j += L) {
      Vec x, w;
      std::memcpy(&x, g + i + j, sizeof(Vec));
      std::memcpy(&w, u + i + j, sizeof(Vec));
      // Dropped: a non-negative gradient on a zero entry (it points out of the feasible set). A NaN is kept,
      // in the gradient or in U (w - w is NaN for a NaN or infinite entry of U, else 0).
      const Vec keep = ((w <= zero) & (x >= zero) ? zero : x) + (w - w);
      acc += keep * keep;
    }
    T run = T(0);
    for (int64_t l = 0; l < L; ++l) run += acc[l];
    part += static_cast<double>(run);
  }
  for (; i < end; ++i) {
    const T x = g[i];
    const T keep = ((u[i] <= T(0) && x >= T(0)) ? T(0) : x) + (u[i] - u[i]);
    part += static_cast<double>(keep * keep);
  }
  return part;
}
