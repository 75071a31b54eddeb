// lowrank_math.h, the one copy of the low-rank numerics shared by the codec, the lowrank allreduce and the CUDA
// kernels: each function against an independent serial reference of its documented order (bit for bit), the
// Box-Muller draw against the written-out formula and its moments, the degenerate-column rule on hand-made
// matrices, and the codec's payload against the pipeline of shared functions.
#include <cstring>
#include <limits>

#include "gradzip/compressors/lowrank_math.h"
#include "gradzip/compressors/payload.h"
#include "gradzip/compressors/rng.h"
#include "test_util.h"

namespace gradzip {
namespace {

using detail::kLowRankDotLanes;

std::uint64_t dbits(double v) {
  std::uint64_t u;
  std::memcpy(&u, &v, 8);
  return u;
}
std::uint32_t fbits(float v) {
  std::uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
}

std::vector<double> random_doubles(std::size_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<double> nd;
  std::vector<double> v(n);
  for (auto& x : v) x = nd(g);
  return v;
}

// The documented dot order written differently: lane t's terms listed explicitly, then a recursive halving tree
// (equal to the level-wise pairwise tree on a power-of-two count).
double tree(const std::vector<double>& lanes, std::size_t lo, std::size_t size) {
  if (size == 1) return lanes[lo];
  return tree(lanes, lo, size / 2) + tree(lanes, lo + size / 2, size / 2);
}
double reference_dot(const std::vector<double>& A, std::size_t m, std::size_t r, std::size_t a, std::size_t b) {
  std::vector<double> lanes(kLowRankDotLanes, 0.0);
  for (std::size_t t = 0; t < kLowRankDotLanes; ++t) {
    for (std::size_t i = t; i < m; i += kLowRankDotLanes) lanes[t] = lanes[t] + A[i * r + a] * A[i * r + b];
  }
  return tree(lanes, 0, kLowRankDotLanes);
}

TEST(LowRankMath, ColDotFollowsTheDocumentedOrder) {
  for (std::size_t m : {1u, 5u, 1023u, 1024u, 1025u, 5000u, 70001u}) {
    const std::size_t r = 3;
    const auto A = random_doubles(m * r, static_cast<unsigned>(m));
    for (std::size_t a = 0; a < r; ++a) {
      for (std::size_t b = 0; b < r; ++b) {
        const double got = detail::lowrank_col_dot(A.data(), m, r, a, b);
        EXPECT_EQ(dbits(got), dbits(reference_dot(A, m, r, a, b))) << "m=" << m << " a=" << a << " b=" << b;
        long double exact = 0;
        for (std::size_t i = 0; i < m; ++i) exact += static_cast<long double>(A[i * r + a]) * A[i * r + b];
        EXPECT_NEAR(got, static_cast<double>(exact), 1e-12 * static_cast<double>(m));
      }
    }
  }
}

// P[i][l] = sum_{j ascending} double(M[i][j]) double(Q[j][l]), padding skipped; r from 1 to 9 covers every column
// chunking (4 + 4 + 1, ...).
TEST(LowRankMath, MulMqMatchesTheSerialOrder) {
  for (std::size_t r = 1; r <= 9; ++r) {
    for (std::size_t d : {37u, 100u, 1001u}) {
      const std::size_t n = 10, m = (d + n - 1) / n;
      const auto x = testing::gaussian(d, static_cast<unsigned>(d + r));
      const auto Q = testing::gaussian(n * r, static_cast<unsigned>(7 * r));
      std::vector<double> P(m * r, -1.0);
      detail::lowrank_mul_mq(x.data(), d, m, n, Q.data(), r, P.data());
      for (std::size_t i = 0; i < m; ++i) {
        for (std::size_t l = 0; l < r; ++l) {
          double s = 0.0;
          for (std::size_t j = 0; j < n && i * n + j < d; ++j)
            s = s + static_cast<double>(x[i * n + j]) * static_cast<double>(Q[j * r + l]);
          ASSERT_EQ(dbits(P[i * r + l]), dbits(s)) << "r=" << r << " d=" << d << " i=" << i << " l=" << l;
        }
      }
    }
  }
}

TEST(LowRankMath, MulMtpMatchesTheSerialOrderAndStoresFloats) {
  for (std::size_t r = 1; r <= 9; ++r) {
    for (std::size_t d : {37u, 100u, 3001u}) {
      const std::size_t n = 13, m = (d + n - 1) / n;
      const auto x = testing::gaussian(d, static_cast<unsigned>(d * 3 + r));
      const auto Pf = testing::gaussian(m * r, static_cast<unsigned>(r));
      std::vector<double> P(Pf.begin(), Pf.end()), work(n * r);
      std::vector<std::uint8_t> out(4 * n * r + 1);
      double bad = 0;
      ASSERT_EQ(detail::lowrank_mul_mtp(x.data(), d, m, n, P.data(), r, work.data(), out.data() + 1, &bad), n * r);
      for (std::size_t j = 0; j < n; ++j) {
        for (std::size_t l = 0; l < r; ++l) {
          double s = 0.0;
          for (std::size_t i = 0; i < m && i * n + j < d; ++i) s = s + static_cast<double>(x[i * n + j]) * P[i * r + l];
          ASSERT_EQ(fbits(load_le<float>(out.data() + 1 + 4 * (j * r + l))), fbits(static_cast<float>(s)))
              << "r=" << r << " d=" << d << " j=" << j << " l=" << l;
        }
      }
    }
  }
}

TEST(LowRankMath, MulMtpReportsTheFirstEntryOutOfFloatRange) {
  const std::size_t m = 3, n = 4, r = 2, d = 12;
  std::vector<float> x(d, 1.0f);
  for (std::size_t i = 0; i < m; ++i) x[i * n + 2] = x[i * n + 3] = 3e38f;
  std::vector<double> P(m * r);
  for (std::size_t i = 0; i < m; ++i) {
    P[i * r + 0] = 0.0;
    P[i * r + 1] = 1.0;
  }
  std::vector<double> work(n * r);
  std::vector<std::uint8_t> out(4 * n * r);
  double bad = 0;
  // Q'[2][1] = Q'[3][1] = 3 * 3e38 (the first in row-major order is entry 2 r + 1); Q'[j][0] = 0.
  EXPECT_EQ(detail::lowrank_mul_mtp(x.data(), d, m, n, P.data(), r, work.data(), out.data(), &bad), 2 * r + 1);
  EXPECT_EQ(bad, 3.0 * static_cast<double>(3e38f));
  EXPECT_TRUE(detail::lowrank_fits_float(std::numeric_limits<float>::max()));
  EXPECT_FALSE(
      detail::lowrank_fits_float(std::nextafter(static_cast<double>(std::numeric_limits<float>::max()), 1e39)));
  EXPECT_FALSE(detail::lowrank_fits_float(std::nan("")));
  EXPECT_FALSE(detail::lowrank_fits_float(-std::numeric_limits<double>::infinity()));
}

TEST(LowRankMath, GaussianIsTheWrittenOutBoxMuller) {
  const std::uint32_t words[][2] = {{0u, 0u},
                                    {0xFFFFFFFFu, 0xFFFFFFFFu},
                                    {0x12345678u, 0x9ABCDEF0u},
                                    {255u, 0x40000000u},
                                    {0x80000000u, 0x00000100u}};
  for (const auto& w : words) {
    const double u1 = static_cast<double>((w[0] >> 8) + 1u) / 16777216.0;
    const double u2 = static_cast<double>(w[1] >> 8) / 16777216.0;
    const float want = static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
    EXPECT_EQ(fbits(detail::lowrank_gaussian(w[0], w[1])), fbits(want)) << w[0] << " " << w[1];
  }
  // The draw uses words 2k and 2k + 1 of the counter RNG; its moments are those of N(0, 1).
  const RngKey key{42, 1, 2, 3};
  const std::size_t count = 200000;
  std::vector<float> q(count);
  detail::lowrank_draw_gaussian(key, q.data(), count);
  const CounterRng rng(key);
  double s1 = 0, s2 = 0;
  for (std::size_t k = 0; k < count; ++k) {
    ASSERT_EQ(fbits(q[k]), fbits(detail::lowrank_gaussian(rng.u32(2 * k), rng.u32(2 * k + 1)))) << k;
    s1 += q[k];
    s2 += static_cast<double>(q[k]) * q[k];
  }
  const double mean = s1 / count, var = s2 / count - mean * mean;
  EXPECT_LT(std::fabs(mean), 5.0 / std::sqrt(static_cast<double>(count)));  // 5 sigma
  EXPECT_LT(std::fabs(var - 1.0), 5.0 * std::sqrt(2.0 / count));
}

TEST(LowRankMath, DegenerateColumnsBecomeTheBestBasisVector) {
  // Column 1 = 2 x column 0: its residual vanishes, so it becomes e_i for the i maximising 1 - P[i][0]^2, i.e. the
  // smallest |P[i][0]|: row 2 (zero), already orthogonal to column 0, so exactly e_2.
  const std::size_t m = 4, r = 2;
  std::vector<double> P = {1, 2, 2, 4, 0, 0, 3, 6};
  std::vector<double> scratch(m);
  detail::orthonormalise_columns(P.data(), m, r, scratch.data());
  const double nrm = std::sqrt(14.0);
  for (std::size_t i = 0; i < m; ++i) EXPECT_NEAR(P[i * r], (i == 0 ? 1 : i == 1 ? 2 : i == 2 ? 0 : 3) / nrm, 1e-15);
  for (std::size_t i = 0; i < m; ++i) EXPECT_EQ(P[i * r + 1], i == 2 ? 1.0 : 0.0) << i;
  // All zero: e_0, e_1, e_2 in turn (ties go to the lowest index).
  std::vector<double> Z(5 * 3, 0.0);
  scratch.resize(5);
  detail::orthonormalise_columns(Z.data(), 5, 3, scratch.data());
  for (std::size_t i = 0; i < 5; ++i)
    for (std::size_t k = 0; k < 3; ++k) EXPECT_EQ(Z[i * 3 + k], i == k ? 1.0 : 0.0) << i << "," << k;
  // Random tall matrix: orthonormal columns to double rounding.
  const std::size_t mm = 3000, rr = 6;
  auto A = random_doubles(mm * rr, 3);
  scratch.resize(mm);
  detail::orthonormalise_columns(A.data(), mm, rr, scratch.data());
  for (std::size_t a = 0; a < rr; ++a)
    for (std::size_t b = 0; b < rr; ++b)
      EXPECT_NEAR(detail::lowrank_col_dot(A.data(), mm, rr, a, b), a == b ? 1.0 : 0.0, 1e-13);
}

// The codec's payload is exactly the pipeline of shared functions: cold draw, M Q, Gram-Schmidt, round, M^T P.
TEST(LowRankMath, CodecPayloadIsTheSharedPipeline) {
  for (std::size_t cols : {0u, 7u}) {
    for (std::uint32_t r : {1u, 3u, 5u}) {
      const std::size_t d = 1234;
      LowRankConfig cfg;
      cfg.rank = r;
      cfg.cols = cols;
      auto c = make_lowrank(cfg);
      ASSERT_TRUE(c.ok());
      const auto x = testing::gaussian(d, r + 11);
      Exec ex;
      ex.rng = {77, 1, 2, 3};
      auto p = (*c)->encode(Span<const float>(x.data(), d), ex);
      ASSERT_TRUE(p.ok());
      const std::size_t n = detail::lowrank_view_cols(d, cols), m = (d + n - 1) / n;
      std::vector<float> Q(n * r);
      detail::lowrank_draw_gaussian(ex.rng, Q.data(), Q.size());
      std::vector<double> P(m * r), scratch(m), work(n * r);
      detail::lowrank_mul_mq(x.data(), d, m, n, Q.data(), r, P.data());
      detail::orthonormalise_columns(P.data(), m, r, scratch.data());
      std::vector<std::uint8_t> body(4 * r * (m + n));
      for (std::size_t k = 0; k < m * r; ++k) {
        P[k] = static_cast<float>(P[k]);
        store_le<float>(body.data() + 4 * k, static_cast<float>(P[k]));
      }
      double bad = 0;
      ASSERT_EQ(detail::lowrank_mul_mtp(x.data(), d, m, n, P.data(), r, work.data(), body.data() + 4 * m * r, &bad),
                n * r);
      ASSERT_EQ(p->size(), kHeaderBytes + body.size());
      EXPECT_EQ(std::memcmp(p->data() + kHeaderBytes, body.data(), body.size()), 0) << "cols=" << cols << " r=" << r;
    }
  }
}

// Without CUDA (or before any device encode) a state's q is always current and sync_to_host is free; copies are
// deep.
TEST(LowRankMath, HostStateCopiesAndSyncs) {
  LowRankState a;
  a.q = {1.0f, 2.0f};
  a.rows = 3;
  a.cols = 2;
  a.rank = 1;
  EXPECT_FALSE(a.on_device());
  EXPECT_TRUE(a.sync_to_host().ok());
  LowRankState b(a);
  EXPECT_EQ(b.q, a.q);
  EXPECT_EQ(b.rows, 3u);
  LowRankState c;
  c = a;
  c.q[0] = 5.0f;
  EXPECT_EQ(a.q[0], 1.0f);
  EXPECT_EQ(c.cols, 2u);
  EXPECT_EQ(c.rank, 1u);
}

}  // namespace
}  // namespace gradzip
