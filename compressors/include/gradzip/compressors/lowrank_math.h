// Shared numerics of PowerSGD-style low rank (lowrank.cc, algorithms.md §2.2 "PowerSGD, rank r"): the one copy of
// the view, the cold-start Q, the products M Q and M^T P and the Gram-Schmidt step, used by the single-worker codec
// (compressors/src/lowrank.cc), by the collectives' factor-allreduce path (collectives/src/compressed_allreduce.cc)
// and, for the per-element formulas marked GZ_LOWRANK_HD, by the CUDA kernels (compressors/src/cuda/lowrank.cu), so
// that all of them compute bit-identical factors.
//
// Layouts: x (length d) is the row-major m x n matrix M, M[i][j] = x[i n + j], zero-padded past d (padded entries
// are skipped, never multiplied). Q and Q' are n x r, P is m x r, all row-major.
// Summation orders (fixed so that a CUDA kernel reproduces them bit for bit, with no FMA contraction):
//   M Q:    P[i][l]  = sum over j ascending of double(M[i][j]) * double(Q[j][l]), one sequential sum per (i, l);
//   M^T P:  Q'[j][l] = sum over i ascending of double(M[i][j]) * P[i][l], one sequential sum per (j, l);
//   column dot products inside Gram-Schmidt (lowrank_col_dot): kLowRankDotLanes lanes, lane t summing the terms
//   i = t, t + L, t + 2L, ... ascending in double, the lanes then combined by the level-wise pairwise tree
//   (level s = 1, 2, 4, ...: lane t, a multiple of 2s, takes lane[t] += lane[t + s]); the result is lane 0.
// Pure functions on caller-owned buffers; thread-safe; deterministic (lowrank_gaussian: see its comment).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "gradzip/compressors/core.h"

#if defined(__CUDACC__)
#define GZ_LOWRANK_HD __host__ __device__
#else
#define GZ_LOWRANK_HD
#endif

namespace gradzip::detail {

/// Lanes of lowrank_col_dot (a power of two; the CUDA Gram-Schmidt kernel runs one thread per lane).
inline constexpr std::size_t kLowRankDotLanes = 1024;

/// Columns n of the m x n view of a d-element vector: `cols` when non-zero, else the near-square ceil(sqrt(d)).
/// The view has m = ceil(d / n) rows; the last row is zero-padded.
std::size_t lowrank_view_cols(std::size_t d, std::size_t cols);

/// One standard normal of the cold-start Q from the counter-RNG words a = u32(2k), b = u32(2k + 1) of element k:
/// Box-Muller in double, sqrt(-2 ln u1) cos(2 pi u2) with u1 = ((a >> 8) + 1) 2^-24 in (0, 1] and
/// u2 = (b >> 8) 2^-24, rounded to float. On the host ln and cos are the C library's; in a CUDA kernel they are
/// CUDA's double log (1 ulp) and cos (2 ulp), so a device draw can differ from the host's in the last bit of the
/// float in the rare case (about 1e-8 per element) where the double lands that close to a float rounding boundary.
GZ_LOWRANK_HD inline float lowrank_gaussian(std::uint32_t a, std::uint32_t b) {
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  const double u1 = static_cast<double>((a >> 8) + 1u) * 0x1p-24;
  const double u2 = static_cast<double>(b >> 8) * 0x1p-24;
  return static_cast<float>(::sqrt(-2.0 * ::log(u1)) * ::cos(kTwoPi * u2));
}

/// Rounds a double to float and says whether it fits: |v| <= FLT_MAX (false for NaN and Inf too).
GZ_LOWRANK_HD inline bool lowrank_fits_float(double v) {
  return ::fabs(v) <= 0x1.fffffep127;  // FLT_MAX
}

/// q[k] = lowrank_gaussian(u32(2k), u32(2k + 1)) of CounterRng(key), k < count: the cold-start Q.
void lowrank_draw_gaussian(const RngKey& key, float* q, std::size_t count);

/// P = M Q in double (the order above): P[i r + l] for i < m, l < r. Q holds n r floats.
void lowrank_mul_mq(const float* x, std::size_t d, std::size_t m, std::size_t n, const float* Q, std::size_t r,
                    double* P);

/// Q' = M^T P (the order above) rounded to float and stored little-endian, row-major (n x r) at `out` (any
/// alignment). P holds m r doubles (the float-rounded factor the decoder sees); `work` holds n r doubles.
/// Returns n r when every entry fits in float (lowrank_fits_float), else the row-major index of the first entry
/// that does not, with its double value in *bad_value (every entry is stored either way).
std::size_t lowrank_mul_mtp(const float* x, std::size_t d, std::size_t m, std::size_t n, const double* P, std::size_t r,
                            double* work, std::uint8_t* out, double* bad_value);

/// Dot product of columns a and b of the row-major m x r matrix A in the fixed lane/tree order above.
double lowrank_col_dot(const double* A, std::size_t m, std::size_t r, std::size_t a, std::size_t b);

/// Orthonormalises the r columns of the row-major m x r matrix P in place: modified Gram-Schmidt in double, each
/// column orthogonalised twice against the previous ones (c = lowrank_col_dot(l, k), then P[i][k] -= c P[i][l] for
/// every i), normalised by 1 / sqrt(lowrank_col_dot(k, k)). A degenerate column (norm after orthogonalisation
/// <= 1e-10 of its norm before, zero, or NaN) is replaced by the basis vector e_i maximising
/// 1 - sum_{l<k} P[i][l]^2 (computed l ascending; lowest i on ties; i = 0 when every value is NaN), orthogonalised
/// the same way and normalised (zeroed if that leaves nothing: NaN in earlier columns). Keeps a warm start from
/// freezing at zero. `scratch` holds m doubles.
void orthonormalise_columns(double* P, std::size_t m, std::size_t r, double* scratch);

}  // namespace gradzip::detail
