// QSGD (algorithms.md §2.2, worked example §2.3, checklist §8.1): spec parsing, exact payload sizes, the
// s = 2 example, a scalar reference of the quantizer and the bit packing, Monte-Carlo unbiasedness and variance,
// Elias-omega coding (the chunked wire, checked by an independent reference decoder), corrupted payloads.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "../../compressors/src/elias_omega.h"  // internal: the chunk length B and the code shared with CUDA
#include "gradzip/compressors/bitcodes.h"
#include "gradzip/compressors/payload.h"
#include "gradzip/compressors/rng.h"
#include "test_util.h"

namespace gradzip {
namespace {

using testing::gaussian;
using testing::must_parse;
using testing::roundtrip;

Exec key_exec(std::uint64_t seed, std::uint32_t step = 0) {
  Exec ex;
  ex.rng.seed = seed;
  ex.rng.step = step;
  ex.rng.rank = 3;
  ex.rng.stream = 11;
  return ex;
}

std::vector<float> decode_or_fail(const Compressor& c, const std::vector<std::uint8_t>& p, std::size_t n) {
  std::vector<float> y(n, std::nanf(""));
  const Status s = c.decode(ConstBytes(p.data(), p.size()), Span<float>(y.data(), n), DecodeMode::kOverwrite, Exec{});
  EXPECT_TRUE(s.ok()) << s.to_string();
  return y;
}

int width_for(std::uint32_t s) {
  return 1 + index_bits(static_cast<std::uint64_t>(s) + 1);
}

// ------------------------------------------------------------------------------------------------ spec / params

TEST(QsgdSpec, CanonicalFormsRoundTrip) {
  EXPECT_EQ(must_parse("qsgd")->spec(), "qsgd:levels=16");
  EXPECT_EQ(must_parse("qsgd:levels=2")->spec(), "qsgd:levels=2");
  // bits=b means s = 2^(b-1) - 1 so that sign + level take b bits; canonical form is always levels=.
  EXPECT_EQ(must_parse("qsgd:bits=4")->spec(), "qsgd:levels=7");
  EXPECT_EQ(must_parse("qsgd:bits=2")->spec(), "qsgd:levels=1");
  EXPECT_EQ(must_parse("qsgd:bits=16")->spec(), "qsgd:levels=32767");
  EXPECT_EQ(must_parse("qsgd:coding=elias,norm=linf,levels=3")->spec(), "qsgd:levels=3,norm=linf,coding=elias");
  EXPECT_EQ(must_parse("qsgd:levels=5,norm=l2,coding=fixed")->spec(), "qsgd:levels=5");
  for (const char* s : {"qsgd", "qsgd:bits=8", "qsgd:levels=65535,norm=linf", "qsgd:levels=1,coding=elias"}) {
    auto c = must_parse(s);
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(must_parse(c->spec())->spec(), c->spec()) << s;
  }
}

TEST(QsgdSpec, BadParamsAreInvalidArgument) {
  for (const char* s :
       {"qsgd:levels=0", "qsgd:levels=65536", "qsgd:levels=-3", "qsgd:levels=x", "qsgd:bits=1", "qsgd:bits=0",
        "qsgd:bits=17", "qsgd:norm=foo", "qsgd:coding=huffman", "qsgd:level=4", "qsgd:levels=4,bits=3"}) {
    auto r = parse_compressor(s);
    EXPECT_FALSE(r.ok()) << s;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << s << ": " << r.status().to_string();
  }
  auto r = parse_compressor("qsgd:norm=foo");
  EXPECT_NE(r.status().message().find("foo"), std::string::npos) << r.status().message();
  QsgdConfig c;
  c.levels = 0;
  EXPECT_EQ(make_qsgd(c).status().code(), StatusCode::kInvalidArgument);
  c.levels = 70000;
  EXPECT_EQ(make_qsgd(c).status().code(), StatusCode::kInvalidArgument);
}

TEST(QsgdSpec, Traits) {
  auto l2 = must_parse("qsgd:levels=4");
  auto t = l2->traits(100);
  EXPECT_EQ(t.kind, GuaranteeKind::kUnbiased);
  EXPECT_FALSE(t.deterministic);
  EXPECT_DOUBLE_EQ(t.omega, std::min(100.0 / 16.0, 10.0 / 4.0));  // 2.5
  EXPECT_DOUBLE_EQ(l2->traits(4).omega, 4.0 / 16.0);              // d/s^2 branch
  auto linf = must_parse("qsgd:levels=4,norm=linf");
  EXPECT_DOUBLE_EQ(linf->traits(100).omega, 100.0 / 64.0);
  EXPECT_DOUBLE_EQ(linf->traits(10000).omega, 100.0 / 4.0);  // sqrt(d)/s branch: 25 < 10000/64
}

// ------------------------------------------------------------------------------------------------ §2.3 example

TEST(Qsgd, WorkedExampleS2) {
  // x = (3, -4), ||x|| = 5, s = 2: r = (1.2, 1.6). Coordinate 0 -> 5 w.p. 0.2, else 2.5; coordinate 1 -> -5 w.p.
  // 0.6, else -2.5. Fixed bits 32 + 2 * (1 + 2) = 38 -> 5 body bytes.
  auto c = must_parse("qsgd:levels=2");
  const std::vector<float> x = {3.0f, -4.0f};
  const int kTrials = 4000;
  int hi0 = 0, hi1 = 0;
  for (int t = 0; t < kTrials; ++t) {
    std::vector<std::uint8_t> p;
    const auto y = roundtrip(*c, x, key_exec(1000 + t), &p);
    ASSERT_EQ(p.size(), kHeaderBytes + 5u);
    ASSERT_EQ(load_le<float>(p.data() + kHeaderBytes), 5.0f);
    ASSERT_TRUE(y[0] == 2.5f || y[0] == 5.0f) << y[0];
    ASSERT_TRUE(y[1] == -2.5f || y[1] == -5.0f) << y[1];
    hi0 += y[0] == 5.0f;
    hi1 += y[1] == -5.0f;
  }
  // Binomial(4000, p): 5 standard deviations sqrt(p (1 - p) / n) <= 5 * 0.0078 = 0.039.
  auto tol = [&](double p) { return 5.0 * std::sqrt(p * (1 - p) / kTrials); };
  EXPECT_NEAR(hi0 / double(kTrials), 0.2, tol(0.2));
  EXPECT_NEAR(hi1 / double(kTrials), 0.6, tol(0.6));
}

TEST(Qsgd, LinfVariantExample) {
  // norm=linf: N = 4, s = 2, spacing 2: r = (1.5, 2). Coordinate 0 -> 2 or 4 w.p. 1/2; coordinate 1 is exactly -4.
  auto c = must_parse("qsgd:levels=2,norm=linf");
  const std::vector<float> x = {3.0f, -4.0f};
  const int kTrials = 4000;
  int hi0 = 0;
  for (int t = 0; t < kTrials; ++t) {
    const auto y = roundtrip(*c, x, key_exec(77 + t));
    ASSERT_TRUE(y[0] == 2.0f || y[0] == 4.0f) << y[0];
    ASSERT_EQ(y[1], -4.0f);
    hi0 += y[0] == 4.0f;
  }
  EXPECT_NEAR(hi0 / double(kTrials), 0.5, 5.0 * std::sqrt(0.25 / kTrials));
}

// ------------------------------------------------------------------------------------------------ sizes / layout

TEST(Qsgd, FixedBitFormula) {
  for (std::uint32_t s : {1u, 2u, 3u, 7u, 16u, 255u, 1000u, 40000u, 65535u}) {
    auto c = must_parse("qsgd:levels=" + std::to_string(s));
    for (std::size_t d : {1u, 7u, 8u, 9u, 1000u, 1024u, 4097u}) {
      const auto x = gaussian(d, static_cast<unsigned>(d + s));
      auto p = c->encode(Span<const float>(x.data(), d), key_exec(5));
      ASSERT_TRUE(p.ok()) << p.status().to_string();
      // 32 + d (1 + ceil(log2(s + 1))) body bits.
      const std::uint64_t bits = 32 + static_cast<std::uint64_t>(d) * width_for(s);
      EXPECT_EQ(p->size(), kHeaderBytes + (bits + 7) / 8) << "s=" << s << " d=" << d;
      EXPECT_EQ(p->size(), c->max_encoded_bytes(d));
      auto h = read_header(ConstBytes(p->data(), p->size()));
      ASSERT_TRUE(h.ok());
      EXPECT_EQ(h->codec_id, static_cast<std::uint16_t>(CodecId::kQsgd));
      EXPECT_EQ(h->param0, s);
      EXPECT_EQ(h->param1, 0u);
      EXPECT_EQ(h->flags, 0u);
    }
  }
  EXPECT_EQ(width_for(7), 4);  // bits=4 <-> levels=7
  auto b4 = must_parse("qsgd:bits=4");
  EXPECT_EQ(b4->max_encoded_bytes(1000), kHeaderBytes + 4 + 500);
  auto e = must_parse("qsgd:levels=3,norm=linf,coding=elias");
  auto p = e->encode(Span<const float>(gaussian(100, 2).data(), 100), Exec{});
  ASSERT_TRUE(p.ok());
  auto he = read_header(ConstBytes(p->data(), p->size()));
  ASSERT_TRUE(he.ok());
  EXPECT_EQ(he->param1, 1u | (1u << 8));
}

/// Reference quantizer and unpacker: levels from CounterRng::u32 (scalar) with the same float arithmetic, and the
/// codes read back one by one with BitReader. Checks the batched RNG, the quantizer and every packing width.
TEST(Qsgd, FixedMatchesScalarReference) {
  for (std::uint32_t s : {1u, 2u, 4u, 8u, 16u, 32u, 64u, 128u, 256u, 512u, 1024u, 2048u, 4096u, 8192u, 16384u, 32768u,
                          65535u, 5u, 100u}) {
    for (const char* norm : {"l2", "linf"}) {
      auto c = must_parse("qsgd:levels=" + std::to_string(s) + ",norm=" + norm);
      const std::size_t d = 2300;  // 2 chunks of 1024, then 252 = one SIMD run of 128 + a 124-element tail
      auto x = gaussian(d, s);
      x[7] = 0.0f;
      x[8] = -0.0f;
      const Exec ex = key_exec(s * 31 + 1, 4);
      std::vector<std::uint8_t> p;
      const auto y = roundtrip(*c, x, ex, &p);
      const float nf = load_le<float>(p.data() + kHeaderBytes);
      const double n64 = std::string(norm) == "l2" ? std::sqrt(testing::sq_norm(x)) : [&] {
        double m = 0;
        for (float v : x) m = std::max(m, std::fabs(static_cast<double>(v)));
        return m;
      }();
      EXPECT_EQ(nf, static_cast<float>(n64));
      const float sf = static_cast<float>(s), scale = sf / nf, m = nf / sf;
      const int w = width_for(s);
      BitReader r(p.data() + kHeaderBytes + 4, p.size() - kHeaderBytes - 4);
      const CounterRng rng(ex.rng);
      for (std::size_t j = 0; j < d; ++j) {
        const std::uint32_t code = r.get(w);
        const std::uint32_t lvl = code >> 1, sign = code & 1u;
        float rr = std::fabs(x[j]) * scale;
        rr = rr < sf ? rr : sf;
        const auto l = static_cast<std::uint32_t>(rr);
        const float frac = rr - static_cast<float>(l);
        const std::uint32_t want = l + ((rng.u32(j) >> 8) < frac * 16777216.0f ? 1u : 0u);
        ASSERT_EQ(lvl, want) << "s=" << s << " j=" << j;
        ASSERT_EQ(sign, lvl != 0 && std::signbit(x[j]) ? 1u : 0u) << j;
        // Independent of the float detail: the level brackets s |x_j| / N computed in double.
        const double r64 = s * std::fabs(static_cast<double>(x[j])) / n64;
        ASSERT_GE(lvl + 1e-6, std::floor(r64 - 1e-5)) << j;
        ASSERT_LE(lvl, std::ceil(r64 + 1e-5)) << j;
        const float v = static_cast<float>(lvl) * m;
        ASSERT_EQ(y[j], sign ? -v : v) << j;
      }
      EXPECT_FALSE(r.exhausted());
    }
  }
}

TEST(Qsgd, ZeroVectorTinyNormAndHugeNorm) {
  auto c = must_parse("qsgd:levels=4");
  std::vector<float> z(37, 0.0f);
  std::vector<std::uint8_t> p;
  auto y = roundtrip(*c, z, key_exec(1), &p);
  for (float v : y) EXPECT_EQ(v, 0.0f);
  EXPECT_EQ(load_le<float>(p.data() + kHeaderBytes), 0.0f);
  // A denormal-only vector: s / N overflows float, the pre-scaled path must still give levels in {0, .., s}.
  std::vector<float> tiny = {1e-42f, 0.0f, -3e-43f, 0.0f};
  for (int t = 0; t < 50; ++t) {
    auto yt = roundtrip(*c, tiny, key_exec(t));
    for (std::size_t j = 0; j < tiny.size(); ++j) {
      EXPECT_TRUE(std::isfinite(yt[j]));
      if (tiny[j] == 0.0f) {
        EXPECT_EQ(yt[j], 0.0f);
      }
      EXPECT_LE(std::fabs(yt[j]), 2e-42f);
    }
  }
  // ||x||_2 overflows float32: the l2 codec cannot write its norm; linf can.
  std::vector<float> huge = {3e38f, -3e38f, 1.0f};
  auto r = c->encode(Span<const float>(huge.data(), huge.size()), Exec{});
  EXPECT_EQ(r.status().code(), StatusCode::kOutOfRange) << r.status().to_string();
  auto li = must_parse("qsgd:levels=4,norm=linf");
  auto yl = roundtrip(*li, huge, key_exec(2));
  EXPECT_EQ(yl[0], 3e38f);
  EXPECT_EQ(yl[1], -3e38f);
}

TEST(Qsgd, UncheckedNonFiniteInputDoesNotCrash) {
  Exec ex = key_exec(3);
  ex.check_finite = false;
  for (const char* spec : {"qsgd:levels=4", "qsgd:levels=4,norm=linf", "qsgd:levels=4,coding=elias"}) {
    auto c = must_parse(spec);
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
      std::vector<float> x = {1.0f, bad, -2.0f, 0.5f};
      std::vector<std::uint8_t> out(c->max_encoded_bytes(x.size()));
      std::size_t w = 0;
      const Status s = c->encode(Span<const float>(x.data(), x.size()), MutableBytes(out.data(), out.size()), &w, ex);
      if (s.ok()) {
        EXPECT_LE(w, out.size());  // garbage is acceptable, UB and crashes are not
      }
    }
  }
  auto c = must_parse("qsgd");
  std::vector<float> x = {1.0f, std::nanf("")};
  EXPECT_EQ(c->encode(Span<const float>(x.data(), 2), Exec{}).status().code(), StatusCode::kNonFinite);
}

TEST(Qsgd, AccumulateScaleAndDeterminism) {
  auto c = must_parse("qsgd:levels=7");
  const auto x = gaussian(3001, 9);
  const Exec ex = key_exec(42, 7);
  auto p1 = c->encode(Span<const float>(x.data(), x.size()), ex);
  auto p2 = c->encode(Span<const float>(x.data(), x.size()), ex);
  auto p3 = c->encode(Span<const float>(x.data(), x.size()), key_exec(42, 8));
  ASSERT_TRUE(p1.ok() && p2.ok() && p3.ok());
  EXPECT_EQ(*p1, *p2);  // same key, same bits
  EXPECT_NE(*p1, *p3);  // another step, other draws
  const auto y = decode_or_fail(*c, *p1, x.size());
  std::vector<float> acc = gaussian(x.size(), 10);
  const std::vector<float> before = acc;
  GZ_ASSERT_OK(c->decode(ConstBytes(p1->data(), p1->size()), Span<float>(acc.data(), acc.size()),
                         DecodeMode::kAccumulate, Exec{}, 0.5f));
  for (std::size_t i = 0; i < x.size(); ++i) {
    // decode computes level * (scale * N / s); compare with a float64 value, tolerance a few ulps.
    EXPECT_NEAR(acc[i], before[i] + 0.5 * y[i], 1e-6 * (std::fabs(before[i]) + std::fabs(y[i]) + 1)) << i;
  }
}

// ------------------------------------------------------------------------------------------------ statistics

/// Per coordinate, Q_j takes the two values l_j Δ and (l_j + 1) Δ (Δ = N / s, signed) with probabilities 1 - t_j,
/// t_j (t_j = r_j - l_j): mean |x_j|, variance Δ² t_j (1 - t_j). Over T independent keys the sample mean has
/// standard error sqrt(var / T); 4 standard errors per coordinate (§8.1). The squared error e = Σ_j (Q_j - x_j)²
/// has E e = Σ Δ² t (1 - t) and Var e = Σ_j Var((Q_j - x_j)²) with (Q_j - x_j)² in {(t Δ)², ((1 - t) Δ)²}.
void check_unbiased_and_variance(const std::string& spec, double s, const std::vector<float>& x, int trials) {
  const double omega = must_parse(spec)->traits(x.size()).omega;
  auto c = must_parse(spec);
  const std::size_t d = x.size();
  std::vector<double> sum(d, 0.0);
  double err_sum = 0.0;
  float nf = 0.0f;
  for (int t = 0; t < trials; ++t) {
    std::vector<std::uint8_t> p;
    const auto y = roundtrip(*c, x, key_exec(0xABC0000ull + t), &p);
    nf = load_le<float>(p.data() + kHeaderBytes);
    for (std::size_t j = 0; j < d; ++j) sum[j] += y[j];
    err_sum += testing::sq_dist(y, x);
  }
  const double delta = nf / s;
  double exp_err = 0.0, var_err = 0.0;
  for (std::size_t j = 0; j < d; ++j) {
    const double r = std::fabs(static_cast<double>(x[j])) / delta;
    const double tj = r - std::floor(r);
    const double var = delta * delta * tj * (1 - tj);
    const double se = std::sqrt(var / trials);
    EXPECT_NEAR(sum[j] / trials, x[j], 4 * se + 1e-6 * std::fabs(x[j])) << spec << " j=" << j;
    exp_err += var;
    const double a = (tj * delta) * (tj * delta), b = ((1 - tj) * delta) * ((1 - tj) * delta);
    const double m2 = tj * b + (1 - tj) * a;  // E (Q_j - x_j)^2
    const double m4 = tj * b * b + (1 - tj) * a * a;
    var_err += m4 - m2 * m2;
  }
  const double nx = testing::sq_norm(x);
  EXPECT_LE(exp_err, omega * nx) << spec;  // the theory's bound for this x
  const double mean_err = err_sum / trials, se_err = std::sqrt(var_err / trials);
  EXPECT_NEAR(mean_err, exp_err, 4 * se_err + 1e-9 * nx) << spec;
  EXPECT_LE(mean_err, omega * nx + 4 * se_err) << spec;
}

TEST(Qsgd, MonteCarloUnbiasedAndVarianceWithinOmega) {
  auto x = gaussian(48, 5);
  x[3] = 0.0f;
  x[10] *= 20.0f;  // one dominant coordinate
  check_unbiased_and_variance("qsgd:levels=3", 3, x, 20000);
  check_unbiased_and_variance("qsgd:levels=1,norm=linf", 1, x, 20000);
}

// ------------------------------------------------------------------------------------------------ Elias-omega

std::string stream_bits(const std::vector<std::uint8_t>& buf, std::uint64_t nbits) {
  std::string s;
  for (std::uint64_t i = 0; i < nbits; ++i) s += ((buf[i / 8] >> (i % 8)) & 1) ? '1' : '0';
  return s;
}

TEST(EliasOmega, KnownCodesAndLengths) {
  // Elias (1975): 1 -> 0, 2 -> 10 0, 3 -> 11 0, 4 -> 10 100 0, 7 -> 10 111 0, 8 -> 11 1000 0,
  // 16 -> 10 100 10000 0, 100 -> 10 110 1100100 0; the stream order is the code's reading order.
  const std::vector<std::pair<std::uint64_t, std::string>> known = {
      {1, "0"},        {2, "100"},         {3, "110"},          {4, "101000"},
      {7, "101110"},   {8, "1110000"},     {16, "10100100000"}, {100, "1011011001000"},
      {15, "1111110"}, {17, "10100100010"}};
  for (const auto& kv : known) {
    std::vector<std::uint8_t> buf(16, 0);
    BitWriter w(buf.data(), buf.size());
    ASSERT_TRUE(detail::elias_omega_put(w, kv.first));
    EXPECT_EQ(w.bits_written(), kv.second.size()) << kv.first;
    EXPECT_EQ(detail::elias_omega_bits(kv.first), static_cast<int>(kv.second.size())) << kv.first;
    w.finish();
    EXPECT_EQ(stream_bits(buf, kv.second.size()), kv.second) << kv.first;
  }
  std::vector<std::uint8_t> buf(4, 0);
  BitWriter w(buf.data(), buf.size());
  EXPECT_FALSE(detail::elias_omega_put(w, 0));  // 0 has no code
  EXPECT_EQ(w.bits_written(), 0u);
  EXPECT_EQ(detail::elias_omega_bits(0), 0);
}

TEST(EliasOmega, RoundTripAndLengthBoundsUsedByMaxEncodedBytes) {
  std::vector<std::uint64_t> vals;
  for (std::uint64_t n = 1; n <= 3000; ++n) vals.push_back(n);
  for (int b = 2; b < 63; ++b) {
    const std::uint64_t p = std::uint64_t{1} << b;
    vals.insert(vals.end(), {p - 1, p, p + 1});
  }
  vals.push_back((std::uint64_t{1} << 63) - 1);
  std::uint64_t total = 0;
  for (auto v : vals) total += detail::elias_omega_bits(v);
  std::vector<std::uint8_t> buf(bits_to_bytes(total));
  BitWriter w(buf.data(), buf.size());
  for (auto v : vals) ASSERT_TRUE(detail::elias_omega_put(w, v));
  EXPECT_EQ(w.bits_written(), total);
  w.finish();
  EXPECT_FALSE(w.overflowed());
  BitReader r(buf.data(), buf.size());
  for (auto v : vals) {
    std::uint64_t got = 0;
    ASSERT_TRUE(detail::elias_omega_get(r, &got)) << v;
    ASSERT_EQ(got, v);
  }
  // qsgd.cc's max_encoded_bytes relies on: L non-decreasing and L(n) <= 3n - 2.
  int prev = 0;
  for (std::uint64_t n = 1; n <= 200000; ++n) {
    const int l = detail::elias_omega_bits(n);
    ASSERT_GE(l, prev) << n;
    ASSERT_LE(static_cast<std::uint64_t>(l), 3 * n - 2) << n;
    prev = l;
  }
}

TEST(EliasOmega, MalformedStreamsAreRejected) {
  // All ones: group lengths explode; must stop (no loop, no shift overflow).
  std::vector<std::uint8_t> ones(64, 0xFF);
  BitReader r1(ones.data(), ones.size());
  std::uint64_t v = 0;
  EXPECT_FALSE(detail::elias_omega_get(r1, &v));
  // Truncated: the 31-bit code of 10^6 cut after 8 bits.
  std::vector<std::uint8_t> buf(2, 0);
  BitWriter w(buf.data(), buf.size());
  detail::elias_omega_put(w, 1000000);
  w.finish();
  BitReader r2(buf.data(), 1);
  EXPECT_FALSE(detail::elias_omega_get(r2, &v));
  BitReader r3(nullptr, 0);
  EXPECT_FALSE(detail::elias_omega_get(r3, &v));
}

TEST(QsgdElias, SameIteratesAsFixed) {
  for (const char* tail : {"", ",norm=linf"}) {
    for (std::uint32_t s : {1u, 2u, 7u, 300u}) {
      const std::string base = "qsgd:levels=" + std::to_string(s) + tail;
      auto fixed = must_parse(base);
      auto elias = must_parse(base + ",coding=elias");
      auto x = gaussian(2500, s + 3);
      x[0] = 0.0f;
      x[2499] = -0.0f;
      const Exec ex = key_exec(s, 2);
      std::vector<std::uint8_t> pf, pe;
      const auto yf = roundtrip(*fixed, x, ex, &pf);
      const auto ye = roundtrip(*elias, x, ex, &pe);
      EXPECT_NE(pf, pe);
      for (std::size_t j = 0; j < x.size(); ++j) ASSERT_EQ(yf[j], ye[j]) << base << " j=" << j;
      EXPECT_LE(pe.size(), elias->max_encoded_bytes(x.size()));
    }
  }
}

TEST(QsgdElias, ShorterThanFixedForSmallLevelsAndNearTheQsgdBound) {
  // s = 1 on large d: about sqrt(d) nonzeros, so the sparse code is far below 2 bits per value.
  {
    const std::size_t d = 100000;
    const auto x = gaussian(d, 1);
    auto fixed = must_parse("qsgd:levels=1");
    auto elias = must_parse("qsgd:levels=1,coding=elias");
    const Exec ex = key_exec(9);
    const auto pf = fixed->encode(Span<const float>(x.data(), d), ex);
    const auto pe = elias->encode(Span<const float>(x.data(), d), ex);
    ASSERT_TRUE(pf.ok() && pe.ok());
    EXPECT_LT(pe->size() * 10, pf->size());
    ::testing::Test::RecordProperty("elias_bytes_s1_d1e5", static_cast<int>(pe->size()));
  }
  // s = sqrt(d): QSGD's Corollary gives <= 2.8 d + 32 expected bits; the general bound
  // (3 + 1.5 log2(2(s^2 + d) / (s(s + sqrt d)))) s (s + sqrt d) + 32 is 9 d + 32 here.
  // Measured (seed below, Gaussian x): 27648 body bits = 2.76 bits per value.
  const std::size_t d = 10000;
  const std::uint32_t s = 100;
  const auto x = gaussian(d, 2);
  auto elias = must_parse("qsgd:levels=100,coding=elias");
  const auto pe = elias->encode(Span<const float>(x.data(), d), key_exec(4));
  ASSERT_TRUE(pe.ok());
  const double bits = 8.0 * (pe->size() - kHeaderBytes);
  const double sd = s, dd = d, nnz_bound = sd * (sd + std::sqrt(dd));
  const double general = (3 + 1.5 * std::log2(2 * (sd * sd + dd) / nnz_bound)) * nnz_bound + 32;
  ::testing::Test::RecordProperty("elias_bits_s100_d1e4", static_cast<int>(bits));
  EXPECT_LE(bits, general + 32);            // + the one-entry chunk table (d < B)
  EXPECT_LE(bits, 2.8 * dd + 32 + 32 + 7);  // + the table + padding to a byte
  EXPECT_LT(bits, 8.0 * (must_parse("qsgd:levels=100")->max_encoded_bytes(d) - kHeaderBytes));
}

TEST(QsgdElias, MaxEncodedBytesIsTightForTheWorstCase) {
  // linf with all |x_j| equal: every level is exactly s, every gap 1: the bound L(d+1) + d (L(s) + 2) is reached.
  for (std::uint32_t s : {1u, 5u, 65535u}) {
    auto c = must_parse("qsgd:levels=" + std::to_string(s) + ",norm=linf,coding=elias");
    std::vector<float> x(1001);
    for (std::size_t j = 0; j < x.size(); ++j) x[j] = (j % 3) ? 2.5f : -2.5f;
    auto p = c->encode(Span<const float>(x.data(), x.size()), Exec{});
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(p->size(), c->max_encoded_bytes(x.size())) << s;
    const std::uint64_t bits = detail::elias_omega_bits(1002) + 1001ull * (detail::elias_omega_bits(s) + 2);
    EXPECT_EQ(p->size(), kHeaderBytes + 4 + 4 + bits_to_bytes(bits));  // N, a one-entry table, the stream
  }
  // Several chunks (two full ones and a short one): the bound is reached chunk by chunk.
  const std::size_t B = detail::omega::kChunk, d = 2 * B + 5;
  for (std::uint32_t s : {1u, 7u}) {
    auto c = must_parse("qsgd:levels=" + std::to_string(s) + ",norm=linf,coding=elias");
    std::vector<float> x(d);
    for (std::size_t j = 0; j < d; ++j) x[j] = (j % 5) ? -1.5f : 1.5f;
    auto p = c->encode(Span<const float>(x.data(), d), Exec{});
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(p->size(), c->max_encoded_bytes(d)) << s;
    auto chunk = [&](std::uint64_t n) {
      return bits_to_bytes(detail::elias_omega_bits(n + 1) + n * (detail::elias_omega_bits(s) + 2));
    };
    EXPECT_EQ(p->size(), kHeaderBytes + 4 + 3 * 4 + 2 * chunk(B) + chunk(5)) << s;
  }
}

// ---- the chunked wire, read by a reference decoder written here from qsgd.cc's format description ----------------

/// LSB-first bit reader over a byte range, one bit at a time (independent of BitReader and elias_omega.h).
struct RefBits {
  const std::uint8_t* p;
  std::size_t nbytes;
  std::uint64_t pos = 0;
  bool over = false;
  int bit() {
    if (pos >= 8 * nbytes) {
      over = true;
      return 0;
    }
    const int b = (p[pos / 8] >> (pos % 8)) & 1;
    ++pos;
    return b;
  }
  // Elias omega: N = 1; while the next bit is 1, that bit and the following N bits (MSB first) are the new N.
  bool omega(std::uint64_t* out) {
    std::uint64_t n = 1;
    while (bit() == 1) {
      if (over || n > 40) return false;
      std::uint64_t v = 1;
      for (std::uint64_t i = 0; i < n; ++i) v = (v << 1) | static_cast<std::uint64_t>(bit());
      n = v;
    }
    if (over) return false;
    *out = n;
    return true;
  }
};

/// Decodes a QSGD coding=elias payload into (N, per-element signed levels); false for any format violation.
bool reference_elias_decode(const std::vector<std::uint8_t>& payload, std::size_t d, std::uint32_t s, float* norm,
                            std::vector<std::int64_t>* levels) {
  const std::size_t B = 16384;  // the chunk length the format fixes
  if (payload.size() < kHeaderBytes) return false;
  const std::size_t body = load_le<std::uint32_t>(payload.data() + 16);
  if (payload.size() != kHeaderBytes + body) return false;
  const std::size_t C = (d + B - 1) / B;
  if (body < 4 + 4 * C) return false;
  const std::uint8_t* b = payload.data() + kHeaderBytes;
  *norm = load_le<float>(b);
  const std::size_t len = body - 4 - 4 * C;
  levels->assign(d, 0);
  std::size_t start = 0;
  for (std::size_t c = 0; c < C; ++c) {
    const std::size_t end = load_le<std::uint32_t>(b + 4 + 4 * c);
    if (end < start || end > len) return false;
    const std::size_t n = std::min(B, d - c * B);
    RefBits r{b + 4 + 4 * C + start, end - start};
    std::uint64_t nnz1 = 0;
    if (!r.omega(&nnz1) || nnz1 - 1 > n) return false;
    std::int64_t prev = -1;
    for (std::uint64_t k = 0; k + 1 < nnz1; ++k) {
      std::uint64_t gap = 0, level = 0;
      if (!r.omega(&gap) || !r.omega(&level)) return false;
      const int sign = r.bit();
      if (r.over) return false;
      const std::int64_t idx = prev + static_cast<std::int64_t>(gap);
      if (idx >= static_cast<std::int64_t>(n) || level == 0 || level > s) return false;
      (*levels)[c * B + static_cast<std::size_t>(idx)] =
          sign ? -static_cast<std::int64_t>(level) : static_cast<std::int64_t>(level);
      prev = idx;
    }
    if ((r.pos + 7) / 8 != end - start) return false;  // the stream ends in its last byte
    while (r.pos % 8 != 0)
      if (r.bit() != 0) return false;  // zero padding
    start = end;
  }
  return start == len;
}

/// The fixed coding's per-element signed levels (W-bit codes, LSB-first) of the same x and key.
std::vector<std::int64_t> fixed_levels(const std::vector<std::uint8_t>& p, std::size_t d, std::uint32_t s) {
  const int w = width_for(s);
  std::vector<std::int64_t> out(d);
  RefBits r{p.data() + kHeaderBytes + 4, p.size() - kHeaderBytes - 4};
  for (std::size_t j = 0; j < d; ++j) {
    std::uint64_t code = 0;
    for (int i = 0; i < w; ++i) code |= static_cast<std::uint64_t>(r.bit()) << i;
    out[j] = (code & 1) ? -static_cast<std::int64_t>(code >> 1) : static_cast<std::int64_t>(code >> 1);
  }
  return out;
}

TEST(QsgdEliasChunked, ReferenceDecoderAgreesAtChunkBoundaries) {
  const std::size_t B = detail::omega::kChunk;
  ASSERT_EQ(B, 16384u);
  for (std::size_t d : {std::size_t{1}, B - 1, B, B + 1, 3 * B + 5}) {
    for (const char* spec : {"qsgd:levels=7", "qsgd:levels=3,norm=linf"}) {
      const std::uint32_t s = std::string(spec).find("levels=7") != std::string::npos ? 7 : 3;
      auto x = gaussian(d, static_cast<unsigned>(d % 1000 + 5));
      // Large values on both sides of every chunk boundary (and at the ends), so chunks start and end nonzero.
      for (std::size_t c = 0; c * B <= d; ++c) {
        if (c * B < d) x[c * B] = 40.0f;
        if (c * B >= 1) x[c * B - 1] = -40.0f;
      }
      x[d - 1] = 35.0f;
      auto elias = must_parse(std::string(spec) + ",coding=elias");
      auto fixed = must_parse(spec);
      const Exec ex = key_exec(d, 4);
      auto pe = elias->encode(Span<const float>(x.data(), d), ex);
      auto pf = fixed->encode(Span<const float>(x.data(), d), ex);
      ASSERT_TRUE(pe.ok() && pf.ok());
      EXPECT_LE(pe->size(), elias->max_encoded_bytes(d));
      float norm = 0.0f;
      std::vector<std::int64_t> lv;
      ASSERT_TRUE(reference_elias_decode(*pe, d, s, &norm, &lv)) << spec << " d=" << d;
      EXPECT_EQ(norm, load_le<float>(pf->data() + kHeaderBytes));
      const auto want = fixed_levels(*pf, d, s);
      ASSERT_EQ(lv, want) << spec << " d=" << d;
      for (std::size_t c = 0; c * B < d; ++c) ASSERT_NE(lv[c * B], 0) << "chunk start " << c;
      // The encoder's chunk streams equal omega::write_chunk (the plain loop beside the CUDA kernel's) of the codes.
      const std::size_t C = (d + B - 1) / B;
      const std::uint8_t* table = pe->data() + kHeaderBytes + 4;
      std::size_t start = 0;
      for (std::size_t c = 0; c < C; ++c) {
        const std::size_t n = std::min(B, d - c * B), end = load_le<std::uint32_t>(table + 4 * c);
        std::vector<std::uint32_t> codes(n);
        std::uint32_t nnz = 0;
        for (std::size_t i = 0; i < n; ++i) {
          const std::int64_t l = want[c * B + i];
          codes[i] = static_cast<std::uint32_t>(l < 0 ? (-l << 1) | 1 : l << 1);
          nnz += l != 0;
        }
        std::vector<std::uint8_t> buf(bits_to_bytes(detail::omega::chunk_max_bits(n, s)));
        const std::size_t nb = detail::omega::write_chunk(codes.data(), static_cast<std::uint32_t>(n), nnz, buf.data());
        ASSERT_EQ(nb, end - start) << "chunk " << c;
        ASSERT_EQ(std::memcmp(buf.data(), table + 4 * C + start, nb), 0) << "chunk " << c;
        start = end;
      }
      // The codec's own decode gives level * (N / s) with the sign, as the fixed coding's decode.
      const auto ye = decode_or_fail(*elias, *pe, d);
      const auto yf = decode_or_fail(*fixed, *pf, d);
      for (std::size_t j = 0; j < d; ++j) ASSERT_EQ(ye[j], yf[j]) << spec << " d=" << d << " j=" << j;
    }
  }
}

TEST(QsgdEliasChunked, SharedOmegaCodeMatchesTheReference) {
  // elias_omega.h (the code the CUDA kernels run) against RefBits, for every value the wire can carry.
  std::vector<std::uint32_t> vals;
  for (std::uint32_t n = 1; n <= 70000; ++n) vals.push_back(n);
  vals.push_back(0xFFFFFFFFu);
  for (std::uint32_t v : vals) {
    std::uint64_t code = 0;
    const int len = detail::omega::code(v, &code);
    ASSERT_EQ(len, detail::elias_omega_bits(v)) << v;
    std::uint8_t buf[8];
    store_le<std::uint64_t>(buf, code);
    RefBits r{buf, 8};
    std::uint64_t got = 0;
    ASSERT_TRUE(r.omega(&got)) << v;
    ASSERT_EQ(got, v);
    ASSERT_EQ(r.pos, static_cast<std::uint64_t>(len));
    detail::omega::Reader rd(buf, bits_to_bytes(len));
    std::uint32_t g2 = 0;
    ASSERT_TRUE(detail::omega::get(rd, &g2)) << v;
    ASSERT_EQ(g2, v);
    ASSERT_EQ(rd.pos, static_cast<std::uint64_t>(len));
  }
  std::uint64_t c = 0;
  EXPECT_EQ(detail::omega::code(0, &c), 0);
  EXPECT_EQ(detail::omega::code(std::uint64_t{1} << 32, &c), 0);
  // A code with a group longer than 32 bits is malformed for the wire (no value can need it).
  std::vector<std::uint8_t> big(16, 0);
  BitWriter w(big.data(), big.size());
  detail::elias_omega_put(w, std::uint64_t{1} << 40);
  w.finish();
  detail::omega::Reader rd(big.data(), big.size());
  std::uint32_t v = 0;
  EXPECT_FALSE(detail::omega::get(rd, &v));
}

// ------------------------------------------------------------------------------------------------ corruption

/// Decoding `p` must fail with kInvalidPayload and leave y (accumulate mode) untouched.
void expect_rejected(const Compressor& c, const std::vector<std::uint8_t>& p, std::size_t n, const char* what) {
  std::vector<float> y(n, 1.25f);
  const Status s = c.decode(ConstBytes(p.data(), p.size()), Span<float>(y.data(), n), DecodeMode::kAccumulate, Exec{});
  EXPECT_EQ(s.code(), StatusCode::kInvalidPayload) << what << ": " << s.to_string();
  for (float v : y) ASSERT_EQ(v, 1.25f) << what << ": y modified by a rejected payload";
}

void set_body_bytes(std::vector<std::uint8_t>& p, std::size_t body) {
  store_le<std::uint32_t>(p.data() + 16, static_cast<std::uint32_t>(body));
}

TEST(Qsgd, CorruptedFixedPayloadsAreRejected) {
  auto c = must_parse("qsgd:levels=5");  // W = 4: level fields can hold 6, 7 > s
  const std::size_t d = 1001;
  const auto x = gaussian(d, 8);
  auto p = *c->encode(Span<const float>(x.data(), d), key_exec(1));
  const std::size_t body = p.size() - kHeaderBytes;
  {
    auto q = p;  // truncated body (header says shorter)
    q.pop_back();
    set_body_bytes(q, body - 1);
    expect_rejected(*c, q, d, "short body");
  }
  {
    auto q = p;  // trailing garbage inside the announced body
    q.push_back(0);
    set_body_bytes(q, body + 1);
    expect_rejected(*c, q, d, "long body");
  }
  {
    auto q = p;
    store_le<std::uint32_t>(q.data() + 24, 6);  // param0 = levels
    expect_rejected(*c, q, d, "levels");
    q = p;
    store_le<std::uint32_t>(q.data() + 28, 1);  // param1 = linf
    expect_rejected(*c, q, d, "norm field");
    q = p;
    store_le<std::uint32_t>(q.data() + 28, 1u << 8);  // param1 = elias
    expect_rejected(*c, q, d, "coding field");
    q = p;
    store_le<std::uint32_t>(q.data() + 20, 4);  // flags
    expect_rejected(*c, q, d, "flags");
  }
  for (float bad : {-1.0f, std::nanf(""), std::numeric_limits<float>::infinity()}) {
    auto q = p;
    store_le<float>(q.data() + kHeaderBytes, bad);
    expect_rejected(*c, q, d, "norm");
  }
  {
    auto q = p;  // element 500's level field (bits 1..3 of its 4-bit code) set to 7 > 5
    const std::size_t bit = 500 * 4;
    q[kHeaderBytes + 4 + bit / 8] |= static_cast<std::uint8_t>(0xE << (bit % 8));
    expect_rejected(*c, q, d, "level above s");
  }
  {
    auto q = p;  // d * 4 bits = 4004 bits: the last byte has 4 padding bits
    q.back() |= 0x80;
    expect_rejected(*c, q, d, "padding");
  }
  // Another codec's payload / another numel.
  auto fp = must_parse("identity")->encode(Span<const float>(x.data(), d), Exec{});
  expect_rejected(*c, *fp, d, "foreign codec");
  std::vector<float> y(d + 1);
  EXPECT_EQ(
      c->decode(ConstBytes(p.data(), p.size()), Span<float>(y.data(), y.size()), DecodeMode::kOverwrite, Exec{}).code(),
      StatusCode::kInvalidPayload);
}

/// A chunked Elias payload from hand-made chunk streams (each a list of omega values, -1 = a 0 sign bit, -2 = a 1
/// sign bit), written with BitWriter + detail::elias_omega_put, with the header of `like`; `extra` is appended to the
/// given chunk's bytes (trailing garbage), `pad` ORed into the given chunk's last byte.
struct Chunk {
  Chunk(std::vector<std::int64_t> i, std::vector<std::uint8_t> e = {}, std::uint8_t p = 0)
      : items(std::move(i)), extra(std::move(e)), pad(p) {}
  std::vector<std::int64_t> items;
  std::vector<std::uint8_t> extra;
  std::uint8_t pad;
};
std::vector<std::uint8_t> make_elias(const std::vector<std::uint8_t>& like, const std::vector<Chunk>& chunks,
                                     float norm = 1.0f) {
  std::vector<std::uint8_t> streams;
  std::vector<std::uint32_t> ends;
  for (const Chunk& ch : chunks) {
    std::vector<std::uint8_t> b(256, 0);
    BitWriter w(b.data(), b.size());
    for (std::int64_t it : ch.items) {
      if (it == -1 || it == -2) {
        w.put(it == -2 ? 1u : 0u, 1);
      } else {
        detail::elias_omega_put(w, static_cast<std::uint64_t>(it));
      }
    }
    b.resize(w.finish());
    b.back() |= ch.pad;
    b.insert(b.end(), ch.extra.begin(), ch.extra.end());
    streams.insert(streams.end(), b.begin(), b.end());
    ends.push_back(static_cast<std::uint32_t>(streams.size()));
  }
  std::vector<std::uint8_t> q(like.begin(), like.begin() + kHeaderBytes);
  std::uint32_t nb;
  std::memcpy(&nb, &norm, 4);
  ends.insert(ends.begin(), nb);  // N first, then the table
  for (std::uint32_t v : ends)
    for (int b = 0; b < 4; ++b) q.push_back(static_cast<std::uint8_t>(v >> (8 * b)));
  q.insert(q.end(), streams.begin(), streams.end());
  set_body_bytes(q, q.size() - kHeaderBytes);
  return q;
}

TEST(Qsgd, CorruptedEliasPayloadsAreRejected) {
  auto c = must_parse("qsgd:levels=3,coding=elias");
  const std::size_t d = 300;
  const auto x = gaussian(d, 12);
  auto p = *c->encode(Span<const float>(x.data(), d), key_exec(2));
  const std::size_t body = p.size() - kHeaderBytes;
  {
    auto q = p;
    q.push_back(0);
    set_body_bytes(q, body + 1);
    expect_rejected(*c, q, d, "trailing byte");
    q = p;
    q.pop_back();
    set_body_bytes(q, body - 1);
    expect_rejected(*c, q, d, "truncated");
    q = p;  // table entry != streams length
    store_le<std::uint32_t>(q.data() + kHeaderBytes + 4, load_le<std::uint32_t>(q.data() + kHeaderBytes + 4) - 1);
    expect_rejected(*c, q, d, "table entry");
    q.resize(kHeaderBytes + 6);  // shorter than N + the table
    set_body_bytes(q, 6);
    expect_rejected(*c, q, d, "no table");
  }
  // Hand-made one-chunk streams: norm 1.0; chunk = omega(nnz + 1), then (gap, level, sign) per nonzero.
  {
    auto ok = make_elias(p, {{{3, 1, 2, -1, 5, 3, -1}}});  // nnz = 2: index 0 level 2, index 5 level 3
    std::vector<float> y(d, 0.0f);
    GZ_ASSERT_OK(c->decode(ConstBytes(ok.data(), ok.size()), Span<float>(y.data(), d), DecodeMode::kOverwrite, Exec{}));
    EXPECT_EQ(y[0], 2.0f / 3.0f);
    EXPECT_EQ(y[5], 1.0f);
  }
  expect_rejected(*c, make_elias(p, {{{static_cast<std::int64_t>(d + 2)}}}), d, "nnz > chunk length");
  expect_rejected(*c, make_elias(p, {{{2, static_cast<std::int64_t>(d + 1), 1, -1}}}), d, "index >= d");
  expect_rejected(*c, make_elias(p, {{{2, 1, 4, -1}}}), d, "level > s");
  expect_rejected(*c, make_elias(p, {{{3, 1, 1, -1}}}), d, "stream exhausted");
  expect_rejected(*c, make_elias(p, {{{2, 1, 1, -1}, {0}}}), d, "trailing zero byte in the chunk");
  expect_rejected(*c, make_elias(p, {{{2, 1, 1, -1}, {}, 0x80}}), d, "padding bit");
  expect_rejected(*c, make_elias(p, {{{2, 1, 1, -1}}}, -1.0f), d, "negative norm");
}

TEST(QsgdEliasChunked, CorruptedChunksAndTablesAreRejected) {
  const std::size_t B = detail::omega::kChunk, d = 3 * B + 5;
  auto c = must_parse("qsgd:levels=3,coding=elias");
  const auto x = gaussian(d, 21);
  const auto p = *c->encode(Span<const float>(x.data(), d), key_exec(6));
  // A valid hand-made payload: chunk 1 has element B (its index 0) at level 1, chunk 3 (5 elements) element
  // 3B + 4 at level 3, negative; chunks 0 and 2 are empty.
  const Chunk empty{{1}};
  const std::vector<Chunk> good = {empty, {{2, 1, 1, -1}}, empty, {{2, 5, 3, -2}}};
  {
    const auto q = make_elias(p, good, 3.0f);
    std::vector<float> y(d, 7.0f);
    GZ_ASSERT_OK(c->decode(ConstBytes(q.data(), q.size()), Span<float>(y.data(), d), DecodeMode::kOverwrite, Exec{}));
    for (std::size_t j = 0; j < d; ++j) {
      const float want = j == B ? 1.0f : j == 3 * B + 4 ? -3.0f : 0.0f;
      ASSERT_EQ(y[j], want) << j;
    }
    float norm = 0.0f;
    std::vector<std::int64_t> lv;
    ASSERT_TRUE(reference_elias_decode(q, d, 3, &norm, &lv));
  }
  // Every table entry of the real payload moved by +-1, and past the streams area: rejected.
  const std::size_t C = 4;
  for (std::size_t k = 0; k < C; ++k) {
    for (int delta : {-1, 1, 1 << 20}) {
      auto q = p;
      std::uint8_t* e = q.data() + kHeaderBytes + 4 + 4 * k;
      store_le<std::uint32_t>(e, load_le<std::uint32_t>(e) + static_cast<std::uint32_t>(delta));
      expect_rejected(*c, q, d, ("table entry " + std::to_string(k) + " + " + std::to_string(delta)).c_str());
    }
  }
  // Each chunk in turn: an index outside the chunk, a level above s, a count above the chunk length, trailing
  // bytes, a padding bit, a truncated stream. The other chunks stay valid.
  for (std::size_t k = 0; k < C; ++k) {
    const std::uint64_t n = k + 1 < C ? B : 5;
    const std::vector<std::pair<Chunk, std::string>> bad = {
        {{{2, static_cast<std::int64_t>(n + 1), 1, -1}}, "index outside the chunk"},
        {{{2, 1, 4, -1}}, "level above s"},
        {{{static_cast<std::int64_t>(n + 2)}}, "nnz above the chunk length"},
        {{{2, 1, 1, -1}, {0}}, "trailing byte"},
        {{{2, 1, 1, -1}, {}, 0x40}, "padding bit"},
        {{{3, 1, 1, -1}}, "truncated"},
    };
    for (const auto& b : bad) {
      auto chunks = good;
      chunks[k] = b.first;
      expect_rejected(*c, make_elias(p, chunks), d, (b.second + " in chunk " + std::to_string(k)).c_str());
    }
  }
  // Too few chunks for numel (the table is read at the wrong place) and one chunk too many.
  expect_rejected(*c, make_elias(p, {empty, empty, empty}), d, "3 chunks");
  expect_rejected(*c, make_elias(p, {empty, empty, empty, empty, empty}), d, "5 chunks");
}

// ------------------------------------------------------------------------------------------------ batched RNG

TEST(Qsgd, BatchedPhiloxMatchesCounterRng) {
  RngKey key;
  key.seed = 0xFEDCBA9876543210ull;
  key.step = 123456;
  key.rank = 7;
  key.stream = 0xDEADBEEF;
  const CounterRng rng(key);
  for (std::uint64_t first : std::vector<std::uint64_t>{0, 1, 3, 5, 130, 4096, (std::uint64_t{1} << 33) + 2}) {
    for (std::size_t n : {0u, 1u, 31u, 128u, 129u, 1000u, 4099u}) {
      std::vector<std::uint32_t> a(n), b(n), c(n);
      CounterRng(key).fill_u32(first, a.data(), n);
      detail::philox_fill_u32_impl(key, first, c.data(), n, /*simd=*/false);  // the portable path
      rng.fill_u32(first, b.data(), n);
      ASSERT_EQ(a, b) << "first=" << first << " n=" << n;
      ASSERT_EQ(c, b) << "portable, first=" << first << " n=" << n;
    }
  }
  // Runs that straddle the 2^32-block boundary (the counter's second word changes there).
  const std::uint64_t edge = (std::uint64_t{1} << 34) - 4 * 40 + 1;
  std::vector<std::uint32_t> a(700), b(700), c(700);
  CounterRng(key).fill_u32(edge, a.data(), a.size());
  detail::philox_fill_u32_impl(key, edge, c.data(), c.size(), false);
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = rng.u32(edge + i);
  EXPECT_EQ(a, b);
  EXPECT_EQ(c, b);
}

}  // namespace
}  // namespace gradzip
