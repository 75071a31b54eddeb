// See lowrank_math.h.
#include "gradzip/compressors/lowrank_math.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "gradzip/compressors/payload.h"
#include "gradzip/compressors/rng.h"

namespace gradzip::detail {
namespace {

static_assert((kLowRankDotLanes & (kLowRankDotLanes - 1)) == 0, "lanes must be a power of two");

void orthogonalise_against_previous(double* A, std::size_t m, std::size_t r, std::size_t k) {
  for (int pass = 0; pass < 2; ++pass) {
    for (std::size_t l = 0; l < k; ++l) {
      const double c = lowrank_col_dot(A, m, r, l, k);
      for (std::size_t i = 0; i < m; ++i) A[i * r + k] -= c * A[i * r + l];
    }
  }
}
void scale_col(double* A, std::size_t m, std::size_t r, std::size_t k, double s) {
  for (std::size_t i = 0; i < m; ++i) A[i * r + k] *= s;
}

// Calls f(std::integral_constant<int, W>, l0) for column chunks [l0, l0 + W) of width 4 (then 3, 2 or 1 for the
// rest), so that the loops below keep W accumulators in registers whatever r is. Each (row, column) sum keeps its
// documented order whatever the chunking.
template <class F>
void for_column_chunks(std::size_t r, F&& f) {
  std::size_t l0 = 0;
  for (; l0 + 4 <= r; l0 += 4) f(std::integral_constant<int, 4>{}, l0);
  switch (r - l0) {
    case 3:
      f(std::integral_constant<int, 3>{}, l0);
      break;
    case 2:
      f(std::integral_constant<int, 2>{}, l0);
      break;
    case 1:
      f(std::integral_constant<int, 1>{}, l0);
      break;
    default:
      break;
  }
}

// P[i][l] = sum_{j ascending} M[i][j] Q[j][l] for l in [l0, l0 + W), in double (padding entries are skipped).
template <int W>
void mul_mq(const float* xp, std::size_t d, std::size_t m, std::size_t n, const float* Q, std::size_t r, std::size_t l0,
            double* P) {
  for (std::size_t i = 0; i < m; ++i) {
    const float* row = xp + i * n;
    const std::size_t len = std::min(n, d - i * n);
    double acc[W] = {};
    for (std::size_t j = 0; j < len; ++j) {
      const double xv = row[j];
      const float* q = Q + j * r + l0;
      for (int w = 0; w < W; ++w) acc[w] += xv * static_cast<double>(q[w]);
    }
    for (int w = 0; w < W; ++w) P[i * r + l0 + w] = acc[w];
  }
}

// Q'[j][l] = sum_{i ascending} M[i][j] P[i][l] for l in [l0, l0 + W), in double, accumulated into the chunk-major
// block Qc = work + n * l0 (Qc[j * W + w]: the n x W block of columns [l0, l0 + W), so that the inner loop is
// contiguous). Tiled over j so that the block stays in L1; each entry is still summed over i ascending.
template <int W>
void mul_mtp(const float* xp, std::size_t d, std::size_t m, std::size_t n, const double* P, std::size_t r,
             std::size_t l0, double* work) {
  constexpr std::size_t kTile = 1024;
  double* __restrict Qc = work + n * l0;
  for (std::size_t k = 0; k < n * W; ++k) Qc[k] = 0.0;
  for (std::size_t j0 = 0; j0 < n; j0 += kTile) {
    const std::size_t j1 = std::min(n, j0 + kTile);
    for (std::size_t i = 0; i < m; ++i) {
      const float* __restrict row = xp + i * n;
      const std::size_t end = std::min(j1, d - i * n);  // the last row may stop short (padding)
      double pw[W];
      for (int w = 0; w < W; ++w) pw[w] = P[i * r + l0 + w];
      for (std::size_t j = j0; j < end; ++j) {
        const double xv = row[j];
        for (int w = 0; w < W; ++w) Qc[j * W + w] += xv * pw[w];
      }
    }
  }
}

}  // namespace

std::size_t lowrank_view_cols(std::size_t d, std::size_t cols) {
  if (cols != 0) return cols;
  std::size_t s = static_cast<std::size_t>(std::sqrt(static_cast<double>(d)));
  while (s * s < d) ++s;
  while (s > 1 && (s - 1) * (s - 1) >= d) --s;
  return s == 0 ? 1 : s;
}

void lowrank_draw_gaussian(const RngKey& key, float* q, std::size_t count) {
  const CounterRng rng(key);
  for (std::size_t k = 0; k < count; ++k) q[k] = lowrank_gaussian(rng.u32(2 * k), rng.u32(2 * k + 1));
}

void lowrank_mul_mq(const float* x, std::size_t d, std::size_t m, std::size_t n, const float* Q, std::size_t r,
                    double* P) {
  for_column_chunks(r, [&](auto w, std::size_t l0) { mul_mq<decltype(w)::value>(x, d, m, n, Q, r, l0, P); });
}

std::size_t lowrank_mul_mtp(const float* x, std::size_t d, std::size_t m, std::size_t n, const double* P, std::size_t r,
                            double* work, std::uint8_t* out, double* bad_value) {
  for_column_chunks(r, [&](auto w, std::size_t l0) { mul_mtp<decltype(w)::value>(x, d, m, n, P, r, l0, work); });
  // work is chunk-major (see mul_mtp); convert to row-major n x r floats while checking the range.
  std::size_t first_bad = n * r;
  for_column_chunks(r, [&](auto wc, std::size_t l0) {
    constexpr int W = decltype(wc)::value;
    const double* Qc = work + n * l0;
    for (std::size_t j = 0; j < n; ++j) {
      for (int w = 0; w < W; ++w) {
        const double v = Qc[j * W + w];
        const std::size_t k = j * r + l0 + static_cast<std::size_t>(w);
        if (!lowrank_fits_float(v) && k < first_bad) {
          first_bad = k;
          *bad_value = v;
        }
        store_le<float>(out + 4 * k, static_cast<float>(v));
      }
    }
  });
  return first_bad;
}

double lowrank_col_dot(const double* A, std::size_t m, std::size_t r, std::size_t a, std::size_t b) {
  double lane[kLowRankDotLanes] = {};
  for (std::size_t i0 = 0; i0 < m; i0 += kLowRankDotLanes) {
    const std::size_t len = std::min(kLowRankDotLanes, m - i0);
    for (std::size_t t = 0; t < len; ++t) lane[t] += A[(i0 + t) * r + a] * A[(i0 + t) * r + b];
  }
  for (std::size_t s = 1; s < kLowRankDotLanes; s *= 2) {
    for (std::size_t t = 0; t < kLowRankDotLanes; t += 2 * s) lane[t] += lane[t + s];
  }
  return lane[0];
}

// Modified Gram-Schmidt with re-orthogonalisation and the deterministic degenerate-column fix (header comment).
void orthonormalise_columns(double* P, std::size_t m, std::size_t r, double* res) {
  constexpr double kRelTol = 1e-10;
  for (std::size_t k = 0; k < r; ++k) {
    const double before = std::sqrt(lowrank_col_dot(P, m, r, k, k));
    orthogonalise_against_previous(P, m, r, k);
    const double after = std::sqrt(lowrank_col_dot(P, m, r, k, k));
    if (before > 0.0 && after > kRelTol * before) {  // false for NaN too
      scale_col(P, m, r, k, 1.0 / after);
      continue;
    }
    // Degenerate: the basis vector with the largest component outside span(P[:, 0..k)).
    std::size_t best = 0;
    double best_res = -1.0;
    for (std::size_t i = 0; i < m; ++i) {
      double s = 1.0;
      for (std::size_t l = 0; l < k; ++l) s -= P[i * r + l] * P[i * r + l];
      res[i] = s;
      if (s > best_res) {
        best_res = s;
        best = i;
      }
    }
    for (std::size_t i = 0; i < m; ++i) P[i * r + k] = i == best ? 1.0 : 0.0;
    orthogonalise_against_previous(P, m, r, k);
    const double nv = std::sqrt(lowrank_col_dot(P, m, r, k, k));
    if (nv > 0.0) {
      scale_col(P, m, r, k, 1.0 / nv);
    } else {  // only with NaN in earlier columns (unchecked non-finite input)
      for (std::size_t i = 0; i < m; ++i) P[i * r + k] = 0.0;
    }
  }
}

}  // namespace gradzip::detail
