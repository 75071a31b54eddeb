// lowrank (PowerSGD rank r): exact recovery of rank-r matrices, convergence of warm-started calls to the best
// rank-r error, the m x n view with padding, payload formula and layout, state handling, bad ranks, garbage.
#include <cstring>
#include <limits>

#include "gradzip/compressors/payload.h"
#include "test_util.h"

namespace gradzip {
namespace {

using testing::lowrank;
using testing::must_parse;

// Random m x k matrix with orthonormal columns (Gram-Schmidt twice, double), row-major.
std::vector<double> random_orthonormal(std::size_t m, std::size_t k, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<double> nd;
  std::vector<double> a(m * k);
  for (auto& v : a) v = nd(g);
  for (std::size_t c = 0; c < k; ++c) {
    for (int pass = 0; pass < 2; ++pass) {
      for (std::size_t l = 0; l < c; ++l) {
        double dot = 0;
        for (std::size_t i = 0; i < m; ++i) dot += a[i * k + l] * a[i * k + c];
        for (std::size_t i = 0; i < m; ++i) a[i * k + c] -= dot * a[i * k + l];
      }
    }
    double nrm = 0;
    for (std::size_t i = 0; i < m; ++i) nrm += a[i * k + c] * a[i * k + c];
    nrm = std::sqrt(nrm);
    for (std::size_t i = 0; i < m; ++i) a[i * k + c] /= nrm;
  }
  return a;
}

// M = U diag(sigma) V^T (m x n, row-major, as floats): its singular values are sigma (up to float rounding).
std::vector<float> matrix_with_spectrum(std::size_t m, std::size_t n, const std::vector<double>& sigma, unsigned seed) {
  const std::size_t k = sigma.size();
  const auto u = random_orthonormal(m, k, seed);
  const auto v = random_orthonormal(n, k, seed + 1000);
  std::vector<float> x(m * n);
  for (std::size_t i = 0; i < m; ++i) {
    for (std::size_t j = 0; j < n; ++j) {
      double s = 0;
      for (std::size_t l = 0; l < k; ++l) s += u[i * k + l] * sigma[l] * v[j * k + l];
      x[i * n + j] = static_cast<float>(s);
    }
  }
  return x;
}

std::vector<std::uint8_t> encode_ok(const Compressor& c, const std::vector<float>& x, const Exec& ex) {
  auto p = c.encode(Span<const float>(x.data(), x.size()), ex);
  EXPECT_TRUE(p.ok()) << p.status().to_string();
  return p.ok() ? *p : std::vector<std::uint8_t>{};
}

std::vector<float> decode_ok(const Compressor& c, const std::vector<std::uint8_t>& p, std::size_t d) {
  std::vector<float> y(d, std::nanf(""));
  const Status s = c.decode(ConstBytes(p.data(), p.size()), Span<float>(y.data(), d), DecodeMode::kOverwrite, Exec{});
  EXPECT_TRUE(s.ok()) << s.to_string();
  return y;
}

std::vector<std::uint8_t> with_header(const std::vector<std::uint8_t>& p, std::size_t numel, std::uint32_t flags,
                                      std::uint32_t p0, std::uint32_t p1, std::size_t body_bytes) {
  PayloadHeader h;
  h.codec_id = static_cast<std::uint16_t>(CodecId::kLowRank);
  h.numel = numel;
  h.flags = flags;
  h.param0 = p0;
  h.param1 = p1;
  h.body_bytes = static_cast<std::uint32_t>(body_bytes);
  std::vector<std::uint8_t> out(kHeaderBytes + body_bytes, 0);
  write_header(h, out.data());
  std::copy(p.begin() + kHeaderBytes, p.begin() + kHeaderBytes + std::min(body_bytes, p.size() - kHeaderBytes),
            out.begin() + kHeaderBytes);
  return out;
}

double rel_err(const std::vector<float>& x, const std::vector<float>& y) {
  return std::sqrt(testing::sq_dist(x, y) / testing::sq_norm(x));
}

TEST(LowRank, SpecParamsAndTraits) {
  auto a = must_parse("lowrank:rank=2");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->spec(), "lowrank:rank=2");
  auto b = must_parse("lowrank:cols=64,rank=3");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->spec(), "lowrank:rank=3,cols=64");
  EXPECT_EQ(must_parse(b->spec())->spec(), b->spec());
  EXPECT_EQ(must_parse("lowrank")->spec(), "lowrank:rank=1");
  for (const char* bad : {"lowrank:rank=0", "lowrank:rank=-1", "lowrank:rank=x", "lowrank:rank=2,colz=3",
                          "lowrank:cols=-4", "lowrank:rank=4294967296"}) {
    EXPECT_EQ(parse_compressor(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
  LowRankConfig c;
  c.rank = 0;
  EXPECT_EQ(make_lowrank(c).status().code(), StatusCode::kInvalidArgument);
  const CompressorTraits t = a->traits(100);
  EXPECT_EQ(t.kind, GuaranteeKind::kBiased);  // one power-iteration step: no worst-case delta
  EXPECT_EQ(t.delta, 0.0);
  EXPECT_FALSE(t.deterministic);
  EXPECT_TRUE(t.stateful);
  EXPECT_EQ(a->codec_id(), static_cast<std::uint16_t>(CodecId::kLowRank));
}

TEST(LowRank, PayloadSizeFormulaAndHeader) {
  struct Row {
    std::size_t d, cols;
    std::uint32_t r;
    std::size_t m, n;
  };
  // cols = 0: n = ceil(sqrt(d)), m = ceil(d / n).
  const Row rows[] = {{100, 0, 2, 10, 10}, {101, 0, 2, 10, 11}, {50, 7, 2, 8, 7},   {1, 0, 1, 1, 1},
                      {16, 0, 4, 4, 4},    {17, 0, 3, 4, 5},    {10, 10, 1, 1, 10}, {1000, 1, 1, 1000, 1}};
  for (const Row& w : rows) {
    auto c = lowrank(w.r, w.cols);
    ASSERT_TRUE(c);
    const auto x = testing::gaussian(w.d, static_cast<unsigned>(w.d));
    const auto p = encode_ok(*c, x, Exec{});
    const std::size_t want = 32 + 4 * w.r * (w.m + w.n);  // 32 r (m + n) body bits
    EXPECT_EQ(p.size(), want) << "d=" << w.d;
    EXPECT_EQ(c->max_encoded_bytes(w.d), want) << "d=" << w.d;
    auto h = read_header(ConstBytes(p.data(), p.size()));
    ASSERT_TRUE(h.ok());
    EXPECT_EQ(h->param0, w.r);
    EXPECT_EQ(h->param1, w.n);
    EXPECT_EQ(h->flags, 0u);
    decode_ok(*c, p, w.d);
  }
}

TEST(LowRank, DecodeIsPTimesQTransposeWithPaddingDropped) {
  // d = 10 viewed as 3 x 4 (two padded zeros). Decode must equal P Q'^T read from the payload (P row-major m x r,
  // then Q' row-major n x r), truncated to the first d entries of the row-major product.
  auto c = lowrank(2, 4);
  ASSERT_TRUE(c);
  const auto x = testing::gaussian(10, 4);
  const auto p = encode_ok(*c, x, Exec{});
  const std::size_t m = 3, n = 4, r = 2;
  ASSERT_EQ(p.size(), kHeaderBytes + 4 * r * (m + n));
  auto f = [&](std::size_t k) { return static_cast<double>(load_le<float>(p.data() + kHeaderBytes + 4 * k)); };
  // P has orthonormal columns.
  for (std::size_t a = 0; a < r; ++a) {
    for (std::size_t b = 0; b < r; ++b) {
      double dot = 0;
      for (std::size_t i = 0; i < m; ++i) dot += f(i * r + a) * f(i * r + b);
      EXPECT_NEAR(dot, a == b ? 1.0 : 0.0, 1e-6);
    }
  }
  const auto y = decode_ok(*c, p, 10);
  for (std::size_t k = 0; k < 10; ++k) {
    const std::size_t i = k / n, j = k % n;
    double s = 0;
    for (std::size_t l = 0; l < r; ++l) s += f(i * r + l) * f(m * r + j * r + l);
    EXPECT_NEAR(y[k], s, 1e-5) << k;
  }
  // Q' = M^T P with M zero-padded: check one entry per column of the view.
  for (std::size_t j = 0; j < n; ++j) {
    for (std::size_t l = 0; l < r; ++l) {
      double s = 0;
      for (std::size_t i = 0; i < m; ++i) {
        if (i * n + j < 10) s += static_cast<double>(x[i * n + j]) * f(i * r + l);
      }
      EXPECT_NEAR(f(m * r + j * r + l), s, 1e-5);
    }
  }
  // A rank-1 matrix whose padded entries are zero anyway is reproduced through the padding.
  const std::vector<float> rank1 = {1, -2, 0, 0, 2, -4, 0, 0, -1, 2};
  auto c1 = lowrank(1, 4);
  const auto y1 = decode_ok(*c1, encode_ok(*c1, rank1, Exec{}), 10);
  EXPECT_LT(rel_err(rank1, y1), 1e-6);
}

TEST(LowRank, ReproducesARankRMatrix) {
  const std::size_t m = 48, n = 40;
  const auto x = matrix_with_spectrum(m, n, {5.0, 2.0, 0.5}, 1);
  auto c = lowrank(3, n);
  ASSERT_TRUE(c);
  LowRankState st;
  Exec ex;
  ex.state = &st;
  ex.rng.seed = 9;
  for (int call = 0; call < 2; ++call) {
    const auto y = decode_ok(*c, encode_ok(*c, x, ex), x.size());
    EXPECT_LT(rel_err(x, y), 1e-4) << "call " << call;  // float rounding only (~1e-7)
  }
  EXPECT_EQ(st.rows, m);
  EXPECT_EQ(st.cols, n);
  EXPECT_EQ(st.rank, 3u);
  EXPECT_EQ(st.q.size(), n * 3);
  // Without a state every call starts cold, and still recovers an exactly rank-r matrix.
  const auto y = decode_ok(*c, encode_ok(*c, x, Exec{}), x.size());
  EXPECT_LT(rel_err(x, y), 1e-4);
}

TEST(LowRank, WarmStartConvergesToBestRankRError) {
  // M = U diag(sigma) V^T; the best rank-3 error is sum_{i>3} sigma_i^2 = 36.8125 (Eckart-Young). Each
  // warm-started call is one step of subspace iteration on M M^T, whose error converges to the optimum at rate
  // ~(sigma_4 / sigma_3)^2 = 0.5625 per call: after 10 calls the excess is far below 1%.
  const std::size_t m = 40, n = 30;
  const std::vector<double> sigma = {10, 8, 6, 4.5, 3, 2, 1.5, 1, 0.5, 0.25};
  double opt = 0;
  for (std::size_t i = 3; i < sigma.size(); ++i) opt += sigma[i] * sigma[i];
  const auto x = matrix_with_spectrum(m, n, sigma, 2);
  auto c = lowrank(3, n);
  ASSERT_TRUE(c);
  LowRankState st;
  Exec ex;
  ex.state = &st;
  ex.rng.seed = 5;
  std::vector<double> err;
  for (int call = 0; call < 10; ++call) {
    const auto y = decode_ok(*c, encode_ok(*c, x, ex), x.size());
    err.push_back(testing::sq_dist(x, y));
  }
  EXPECT_GT(err[0], 1.01 * opt) << "the first (cold) call should be visibly worse than optimal";
  for (std::size_t t = 1; t < err.size(); ++t) EXPECT_LE(err[t], err[t - 1] * (1 + 1e-5) + 1e-9) << t;
  EXPECT_LE(err.back(), 1.01 * opt);
  EXPECT_GE(err.back(), opt * (1 - 1e-4));  // cannot beat the truncated SVD (up to float rounding of M)
}

TEST(LowRank, ErrorNeverExceedsInputNorm) {
  // C = P P^T M is an orthogonal projection of M's columns: ||C - M||^2 = ||M||^2 - ||P^T M||^2 <= ||M||^2.
  for (unsigned seed = 1; seed <= 10; ++seed) {
    const std::size_t d = 50 + seed * 37;
    const auto x = testing::gaussian(d, seed);
    auto c = lowrank(1 + seed % 3);
    const auto y = decode_ok(*c, encode_ok(*c, x, Exec{}), d);
    EXPECT_LE(testing::sq_dist(x, y), testing::sq_norm(x) * (1 + 1e-6)) << seed;
  }
}

TEST(LowRank, ZeroAndRankDeficientInputsDoNotStallTheWarmStart) {
  // An all-zero gradient makes Q' = 0; the degenerate-column fix keeps P orthonormal so that the next call still
  // recovers a rank-1 input (zeroing columns instead would leave P = M 0 = 0 forever).
  auto c = lowrank(2, 10);
  ASSERT_TRUE(c);
  LowRankState st;
  Exec ex;
  ex.state = &st;
  const std::vector<float> zero(100, 0.0f);
  const auto p0 = encode_ok(*c, zero, ex);
  const auto y0 = decode_ok(*c, p0, 100);
  for (float v : y0) EXPECT_EQ(v, 0.0f);
  for (float q : st.q) EXPECT_EQ(q, 0.0f);
  std::vector<float> x(100);
  for (std::size_t i = 0; i < 10; ++i)
    for (std::size_t j = 0; j < 10; ++j) x[i * 10 + j] = static_cast<float>((i + 1.0) * (j % 3 == 0 ? 1.0 : -0.5));
  // Call 0 starts from Q = 0: both columns of P are degenerate and become e_0, e_1, so C holds rows 0 and 1 of M
  // and Q' = (rows 0, 1 of M)^T, a multiple of M's row space. From call 1 on, P = M Q' spans M's column space.
  const auto first = decode_ok(*c, encode_ok(*c, x, ex), 100);
  for (std::size_t k = 0; k < 20; ++k) EXPECT_FLOAT_EQ(first[k], x[k]) << k;
  for (std::size_t k = 20; k < 100; ++k) EXPECT_EQ(first[k], 0.0f) << k;
  for (int call = 1; call < 3; ++call) {
    const auto y = decode_ok(*c, encode_ok(*c, x, ex), 100);
    EXPECT_LT(rel_err(x, y), 1e-5) << "call " << call;  // rank 1 < r = 2: the second column is degenerate
  }
}

TEST(LowRank, StateAndRngDetermineTheOutput) {
  auto c = lowrank(2);
  ASSERT_TRUE(c);
  const auto x = testing::gaussian(300, 3);
  Exec a;
  a.rng = RngKey{1, 2, 3, 4};
  EXPECT_EQ(encode_ok(*c, x, a), encode_ok(*c, x, a));  // same key, no state: same cold start
  Exec b = a;
  b.rng.seed = 2;
  EXPECT_NE(encode_ok(*c, x, a), encode_ok(*c, x, b));
  // The state receives Q' (the second block of the payload), bit for bit.
  LowRankState st;
  Exec s = a;
  s.state = &st;
  const auto p = encode_ok(*c, x, s);
  EXPECT_EQ(p, encode_ok(*c, x, a)) << "a cold state draws the same Q as no state";
  const std::size_t n = 18, m = 17, r = 2;  // ceil(sqrt(300)) = 18, ceil(300 / 18) = 17
  ASSERT_EQ(st.q.size(), n * r);
  ASSERT_EQ(p.size(), kHeaderBytes + 4 * r * (m + n));
  for (std::size_t k = 0; k < n * r; ++k)
    EXPECT_EQ(st.q[k], load_le<float>(p.data() + kHeaderBytes + 4 * (m * r + k))) << k;
  // A warm call differs from the cold one and ignores the key.
  Exec s2 = s;
  s2.rng.seed = 77;
  LowRankState copy = st;
  Exec s3 = s;
  s3.state = &copy;
  EXPECT_EQ(encode_ok(*c, x, s2), encode_ok(*c, x, s3));
  // A state of another shape is re-initialised and takes the new shape.
  const auto x2 = testing::gaussian(120, 4);
  encode_ok(*c, x2, s);
  EXPECT_EQ(st.cols, 11u);
  EXPECT_EQ(st.rows, 11u);
  EXPECT_EQ(st.q.size(), 11u * 2);
  // A state of the wrong type is an argument error.
  struct OtherState : CompressorState {};
  OtherState other;
  Exec o = a;
  o.state = &other;
  GZ_EXPECT_CODE(c->encode(Span<const float>(x.data(), x.size()), o).status(), StatusCode::kInvalidArgument);
}

TEST(LowRank, WorkspaceGivesTheSameResult) {
  auto c = lowrank(3);
  ASSERT_TRUE(c);
  const auto x = testing::gaussian(1000, 6);
  std::vector<std::uint8_t> ws(c->workspace_bytes(x.size(), Device::kCpu) + 3);
  Exec e;
  e.workspace = MutableBytes(ws.data() + 3, ws.size() - 3);  // deliberately misaligned
  const auto p = encode_ok(*c, x, e);
  EXPECT_EQ(p, encode_ok(*c, x, Exec{}));
  std::vector<float> y1(x.size()), y2(x.size());
  GZ_ASSERT_OK(c->decode(ConstBytes(p.data(), p.size()), Span<float>(y1.data(), y1.size()), DecodeMode::kOverwrite, e));
  GZ_ASSERT_OK(
      c->decode(ConstBytes(p.data(), p.size()), Span<float>(y2.data(), y2.size()), DecodeMode::kOverwrite, Exec{}));
  EXPECT_EQ(y1, y2);
}

TEST(LowRank, AccumulatesWithScale) {
  auto c = lowrank(2, 25);
  ASSERT_TRUE(c);
  const auto x = testing::gaussian(310, 8);
  const auto p = encode_ok(*c, x, Exec{});
  const auto once = decode_ok(*c, p, x.size());
  auto y = testing::gaussian(310, 9);
  const auto y0 = y;
  GZ_ASSERT_OK(c->decode(ConstBytes(p.data(), p.size()), Span<float>(y.data(), y.size()), DecodeMode::kAccumulate,
                         Exec{}, 0.5f));
  for (std::size_t i = 0; i < y.size(); ++i) EXPECT_FLOAT_EQ(y[i], y0[i] + 0.5f * once[i]) << i;
}

TEST(LowRank, RejectsBadRankAndCols) {
  const auto x = testing::gaussian(10, 1);  // n = 4, m = 3
  auto bad = lowrank(4);
  ASSERT_TRUE(bad);
  const Status s = bad->check(DType::kF32, 10);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("rank=4"), std::string::npos) << s.message();
  GZ_EXPECT_CODE(bad->encode(Span<const float>(x.data(), x.size()), Exec{}).status(), StatusCode::kInvalidArgument);
  GZ_ASSERT_OK(lowrank(3)->check(DType::kF32, 10));
  GZ_EXPECT_CODE(lowrank(2, 1)->check(DType::kF32, 10), StatusCode::kInvalidArgument);   // 10 x 1: rank <= 1
  GZ_EXPECT_CODE(lowrank(1, 11)->check(DType::kF32, 10), StatusCode::kInvalidArgument);  // cols > numel
  GZ_EXPECT_CODE(lowrank(1)->check(DType::kF16, 10), StatusCode::kInvalidArgument);
  // Decoding with a codec whose rank is impossible for the output size is an argument error.
  const auto p = encode_ok(*lowrank(2), x, Exec{});
  std::vector<float> y(10);
  GZ_EXPECT_CODE(bad->decode(ConstBytes(p.data(), p.size()), Span<float>(y.data(), 10), DecodeMode::kOverwrite, Exec{}),
                 StatusCode::kInvalidArgument);
}

TEST(LowRank, RejectsGarbagePayloads) {
  auto c = lowrank(2);
  ASSERT_TRUE(c);
  const std::size_t d = 100;  // 10 x 10
  const auto x = testing::gaussian(d, 2);
  const auto p = encode_ok(*c, x, Exec{});
  const std::size_t body = 4 * 2 * 20;
  ASSERT_EQ(p.size(), kHeaderBytes + body);
  std::vector<float> y;
  auto dec = [&](const std::vector<std::uint8_t>& b, std::size_t n = 100) {
    y.assign(n, 0.0f);
    return c->decode(ConstBytes(b.data(), b.size()), Span<float>(y.data(), n), DecodeMode::kOverwrite, Exec{});
  };
  GZ_ASSERT_OK(dec(p));
  GZ_ASSERT_OK(dec(with_header(p, d, 0, 2, 10, body)));
  auto truncated = p;
  truncated.pop_back();
  GZ_EXPECT_CODE(dec(truncated), StatusCode::kInvalidPayload);
  GZ_EXPECT_CODE(dec(with_header(p, d, 1, 2, 10, body)), StatusCode::kInvalidPayload);   // flags
  GZ_EXPECT_CODE(dec(with_header(p, d, 0, 1, 10, body)), StatusCode::kInvalidPayload);   // rank differs
  GZ_EXPECT_CODE(dec(with_header(p, d, 0, 0, 10, body)), StatusCode::kInvalidPayload);   // rank 0
  GZ_EXPECT_CODE(dec(with_header(p, d, 0, 11, 10, body)), StatusCode::kInvalidPayload);  // rank > min(m, n)
  GZ_EXPECT_CODE(dec(with_header(p, d, 0, 2, 20, body)), StatusCode::kInvalidPayload);   // cols differ
  GZ_EXPECT_CODE(dec(with_header(p, d, 0, 2, 0, body)), StatusCode::kInvalidPayload);    // cols 0
  GZ_EXPECT_CODE(dec(with_header(p, d, 0, 2, 0xFFFFFFFFu, body)), StatusCode::kInvalidPayload);
  GZ_EXPECT_CODE(dec(with_header(p, d, 0, 2, 10, body - 4)), StatusCode::kInvalidPayload);  // short body
  GZ_EXPECT_CODE(dec(with_header(p, d, 0, 2, 10, body + 4)), StatusCode::kInvalidPayload);  // long body
  GZ_EXPECT_CODE(dec(with_header(p, d, 0x80000000u, 2, 10, body)), StatusCode::kInvalidPayload);
  GZ_EXPECT_CODE(dec(p, 99), StatusCode::kInvalidPayload);
  auto foreign = p;
  store_le<std::uint16_t>(foreign.data() + 6, static_cast<std::uint16_t>(CodecId::kIdentity));
  GZ_EXPECT_CODE(dec(foreign), StatusCode::kInvalidPayload);
  // A payload from a codec with another cols setting is rejected by name.
  auto c5 = lowrank(2, 5);
  const auto p5 = encode_ok(*c5, x, Exec{});
  const Status s = dec(p5);
  EXPECT_EQ(s.code(), StatusCode::kInvalidPayload);
  EXPECT_NE(s.message().find("lowrank.decode"), std::string::npos) << s.message();
  // Garbage float values decode to garbage, never out of bounds.
  auto junk = p;
  for (std::size_t i = kHeaderBytes; i < junk.size(); ++i) junk[i] = 0xFF;  // NaNs
  GZ_ASSERT_OK(dec(junk));
}

TEST(LowRank, NonFiniteOrHugeInputNeverCrashes) {
  auto c = lowrank(2);
  ASSERT_TRUE(c);
  std::vector<float> x = testing::gaussian(64, 1);
  x[10] = std::numeric_limits<float>::infinity();
  GZ_EXPECT_CODE(c->encode(Span<const float>(x.data(), x.size()), Exec{}).status(), StatusCode::kNonFinite);
  Exec unchecked;
  unchecked.check_finite = false;
  for (float bad : {std::numeric_limits<float>::infinity(), std::nanf("")}) {
    x[10] = bad;
    GZ_EXPECT_CODE(c->encode(Span<const float>(x.data(), x.size()), unchecked).status(), StatusCode::kOutOfRange);
  }
  // Finite but Q' = M^T P overflows float32.
  std::vector<float> big(64, 3e38f);
  GZ_EXPECT_CODE(c->encode(Span<const float>(big.data(), big.size()), Exec{}).status(), StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace gradzip
