// The loop of the CPU projected-gradient norm (csrc/cpu/projected_gradient_cpu.cpp). Included there once per
// instruction set, inside a namespace of its own that defines kVectorBytes (the vector width the set does in
// one instruction), so there is no include guard.

// sum over [begin, end) of P(g)^2, P(g) = 0 where u <= 0 and g >= 0, else g (NaN where u is not finite).
// Each P(g) is squared in float64: the square of a float32 entry leaves float32's range below about 1e-19 and
// above 1e19, where a solver's first measure read 0 (a stop at iteration 0) or inf (a divergence that was not).
// Runs of kRun entries are summed over the lanes of one vector (independent sums, so the compiler needs no
// reordering), each run added to the part.
template <typename T>
double projected_gradient_sq_range(const T* g, const T* u, int64_t begin, int64_t end) {
  typedef T Vec __attribute__((vector_size(kVectorBytes)));
  constexpr int64_t L = kVectorBytes / sizeof(T);
  constexpr int64_t kRun = 256;
  const Vec zero = {};
  double part = 0.0;
  int64_t i = begin;
  for (; i + kRun <= end; i += kRun) {
    double acc[L] = {};
    for (int64_t j = 0; j < kRun; j += L) {
      Vec x, w;
      std::memcpy(&x, g + i + j, sizeof(Vec));
      std::memcpy(&w, u + i + j, sizeof(Vec));
      // Dropped: a non-negative gradient on a zero entry (it points out of the feasible set). A NaN is kept,
      // in the gradient or in U (w - w is NaN for a NaN or infinite entry of U, else 0).
      const Vec keep = ((w <= zero) & (x >= zero) ? zero : x) + (w - w);
      for (int64_t l = 0; l < L; ++l) {
        const double k = static_cast<double>(keep[l]);
        acc[l] += k * k;
      }
    }
    double run = 0.0;
    for (int64_t l = 0; l < L; ++l) run += acc[l];
    part += run;
  }
  for (; i < end; ++i) {
    const T x = g[i];
    const double keep = static_cast<double>(((u[i] <= T(0) && x >= T(0)) ? T(0) : x) + (u[i] - u[i]));
    part += keep * keep;
  }
  return part;
}
