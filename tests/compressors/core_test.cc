// Vocabulary types, wire header, bit packing, counter-based RNG, reductions.
#include <cstring>
#include <limits>

#include "gradzip/compressors/payload.h"
#include "gradzip/compressors/reduce.h"
#include "gradzip/compressors/rng.h"
#include "gradzip/compressors/state_io.h"
#include "test_util.h"

namespace gradzip {
namespace {

TEST(Status, CarriesCodeAndMessage) {
  Status s = Status::InvalidArgument("topk: k=", 0, " must be in [1, numel=", 10, "]");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "topk: k=0 must be in [1, numel=10]");
  EXPECT_EQ(s.to_string(), "InvalidArgument: topk: k=0 must be in [1, numel=10]");
  EXPECT_TRUE(Status::Ok().ok());
  EXPECT_EQ(Status::Ok().to_string(), "OK");
}

TEST(StatusOr, ValueOrError) {
  StatusOr<int> a(5);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, 5);
  StatusOr<int> b(Status::OutOfRange("x"));
  EXPECT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kOutOfRange);
  StatusOr<int> c(Status::Ok());  // misuse is reported, not silently ok
  EXPECT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kInternal);
}

TEST(Span, ViewsContainers) {
  std::vector<float> v = {1, 2, 3};
  Span<float> s(v);
  Span<const float> cs = s;
  EXPECT_EQ(cs.size(), 3u);
  EXPECT_EQ(cs[2], 3.0f);
  EXPECT_EQ(s.subspan(1, 2)[0], 2.0f);
  EXPECT_EQ(s.size_bytes(), 12u);
}

TEST(PayloadHeader, RoundTripsLittleEndian) {
  PayloadHeader h;
  h.codec_id = 4;
  h.numel = 0x0102030405060708ull;
  h.body_bytes = 3;
  h.flags = 0xA0000001u;
  h.param0 = 7;
  h.param1 = 9;
  std::vector<std::uint8_t> buf(kHeaderBytes + 3, 0xEE);
  write_header(h, buf.data());
  EXPECT_EQ(buf[0], 'G');
  EXPECT_EQ(buf[1], 'Z');
  EXPECT_EQ(buf[2], 'P');
  EXPECT_EQ(buf[3], '1');
  EXPECT_EQ(buf[8], 0x08);  // numel little-endian
  EXPECT_EQ(buf[15], 0x01);
  auto r = read_header(ConstBytes(buf.data(), buf.size()));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->codec_id, 4);
  EXPECT_EQ(r->numel, h.numel);
  EXPECT_EQ(r->flags, h.flags);
  EXPECT_EQ(r->param0, 7u);
  EXPECT_EQ(r->param1, 9u);
}

TEST(PayloadHeader, RejectsGarbage) {
  std::vector<std::uint8_t> buf(kHeaderBytes + 4, 0);
  PayloadHeader h;
  h.codec_id = 1;
  h.numel = 1;
  h.body_bytes = 4;
  write_header(h, buf.data());
  EXPECT_TRUE(read_header(ConstBytes(buf.data(), buf.size())).ok());
  // truncated: shorter than the header, or body cut off
  EXPECT_EQ(read_header(ConstBytes(buf.data(), 10)).status().code(), StatusCode::kInvalidPayload);
  EXPECT_EQ(read_header(ConstBytes(buf.data(), buf.size() - 1)).status().code(), StatusCode::kInvalidPayload);
  EXPECT_EQ(read_header(ConstBytes(nullptr, 0)).status().code(), StatusCode::kInvalidPayload);
  // foreign magic
  auto bad = buf;
  bad[0] = 'X';
  EXPECT_EQ(read_header(ConstBytes(bad.data(), bad.size())).status().code(), StatusCode::kInvalidPayload);
  // future version
  bad = buf;
  bad[4] = 2;
  auto r = read_header(ConstBytes(bad.data(), bad.size()));
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidPayload);
  EXPECT_NE(r.status().message().find("version 2"), std::string::npos) << r.status().message();
  // body length overflow (0xFFFFFFFF)
  bad = buf;
  std::memset(bad.data() + 16, 0xFF, 4);
  EXPECT_EQ(read_header(ConstBytes(bad.data(), bad.size())).status().code(), StatusCode::kInvalidPayload);
}

TEST(Bits, IndexBits) {
  EXPECT_EQ(index_bits(0), 0);
  EXPECT_EQ(index_bits(1), 0);
  EXPECT_EQ(index_bits(2), 1);
  EXPECT_EQ(index_bits(6), 3);
  EXPECT_EQ(index_bits(8), 3);
  EXPECT_EQ(index_bits(9), 4);
  EXPECT_EQ(index_bits(1u << 20), 20);
  EXPECT_EQ(index_bits((1u << 20) + 1), 21);
}

TEST(Bits, WriterReaderRoundTrip) {
  std::mt19937 g(3);
  std::vector<std::pair<std::uint32_t, int>> items;
  std::uint64_t total = 0;
  for (int i = 0; i < 5000; ++i) {
    const int nb = static_cast<int>(g() % 33);
    const std::uint32_t v = nb == 32 ? g() : (g() & ((1u << nb) - 1));
    items.emplace_back(v, nb);
    total += nb;
  }
  std::vector<std::uint8_t> buf(bits_to_bytes(total));
  BitWriter w(buf.data(), buf.size());
  for (auto& it : items) w.put(it.first, it.second);
  EXPECT_EQ(w.bits_written(), total);
  EXPECT_EQ(w.finish(), buf.size());
  EXPECT_FALSE(w.overflowed());
  BitReader r(buf.data(), buf.size());
  for (auto& it : items) ASSERT_EQ(r.get(it.second), it.first);
  EXPECT_FALSE(r.exhausted());
  r.get(9);  // past the end: zeros and flagged, never out of bounds
  EXPECT_TRUE(r.exhausted());
}

TEST(Bits, WriterReportsOverflowInsteadOfWriting) {
  std::uint8_t buf[3] = {0, 0, 0};
  BitWriter w(buf, 2);
  w.put(0xFFFFFF, 24);
  w.finish();
  EXPECT_TRUE(w.overflowed());
  EXPECT_EQ(buf[2], 0);
}

TEST(Philox, Random123KnownAnswers) {
  // Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
  auto a = Philox::block(0, 0, 0, 0, 0, 0);
  EXPECT_EQ(a[0], 0x6627e8d5u);
  EXPECT_EQ(a[1], 0xe169c58du);
  EXPECT_EQ(a[2], 0xbc57ac4cu);
  EXPECT_EQ(a[3], 0x9b00dbd8u);
  auto b = Philox::block(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu);
  EXPECT_EQ(b[0], 0x408f276du);
  EXPECT_EQ(b[1], 0x41c83b0eu);
  EXPECT_EQ(b[2], 0xa20bc7c6u);
  EXPECT_EQ(b[3], 0x6d5451fdu);
  auto c = Philox::block(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u);
  EXPECT_EQ(c[0], 0xd16cfe09u);
  EXPECT_EQ(c[1], 0x94fdccebu);
  EXPECT_EQ(c[2], 0x5001e420u);
  EXPECT_EQ(c[3], 0x24126ea1u);
}

TEST(CounterRng, IsAPureFunctionOfKeyAndIndex) {
  RngKey k{42, 3, 1, 7};
  CounterRng r(k);
  std::vector<std::uint32_t> bulk(37);
  r.fill_u32(5, bulk.data(), bulk.size());
  for (std::size_t i = 0; i < bulk.size(); ++i) EXPECT_EQ(bulk[i], r.u32(5 + i));
  // every key component changes the stream
  for (int which = 0; which < 4; ++which) {
    RngKey k2 = k;
    if (which == 0) k2.seed++;
    if (which == 1) k2.step++;
    if (which == 2) k2.rank++;
    if (which == 3) k2.stream++;
    CounterRng r2(k2);
    int same = 0;
    for (std::uint64_t i = 0; i < 64; ++i) same += r2.u32(i) == r.u32(i);
    EXPECT_LT(same, 2) << "key component " << which;
  }
}

TEST(CounterRng, UniformAndBelowAreUniform) {
  CounterRng r(RngKey{1, 0, 0, 0});
  const int n = 200000;
  double sum = 0;
  std::vector<int> hist(7, 0);
  for (int i = 0; i < n; ++i) {
    const float u = r.uniform(i);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
    const auto b = r.below(i, 7);
    ASSERT_LT(b, 7u);
    hist[b]++;
  }
  // mean of U(0,1): sd of the mean = sqrt(1/12/n) = 6.5e-4; 5 sigma
  EXPECT_NEAR(sum / n, 0.5, 5 * std::sqrt(1.0 / 12 / n));
  // each bucket ~ Binomial(n, 1/7): sd = sqrt(n p (1-p)) = 156; 5 sigma
  for (int c : hist) EXPECT_NEAR(c, n / 7.0, 5 * std::sqrt(n * (1.0 / 7) * (6.0 / 7)));
}

TEST(Reduce, MatchesFloat64Reference) {
  auto x = testing::gaussian(10007, 5);
  double s1 = 0, s2 = 0;
  float mx = 0;
  for (float v : x) {
    s1 += std::fabs(static_cast<double>(v));
    s2 += static_cast<double>(v) * v;
    mx = std::max(mx, std::fabs(v));
  }
  EXPECT_NEAR(sum_abs(x), s1, 1e-9 * s1);
  EXPECT_NEAR(sum_sq(x), s2, 1e-9 * s2);
  EXPECT_EQ(max_abs(x), mx);
}

TEST(Compressor, KFromRatio) {
  EXPECT_EQ(k_from_ratio(0.01, 1000), 10u);
  EXPECT_EQ(k_from_ratio(0.01, 1001), 11u);  // ceil
  EXPECT_EQ(k_from_ratio(1e-9, 5), 1u);      // at least one
  EXPECT_EQ(k_from_ratio(1.0, 5), 5u);
}

TEST(Compressor, CheckFiniteNamesTheIndex) {
  std::vector<float> x(3000, 1.0f);
  GZ_ASSERT_OK(check_finite(x, "t"));
  x[2047] = std::numeric_limits<float>::infinity();
  Status s = check_finite(x, "t");
  EXPECT_EQ(s.code(), StatusCode::kNonFinite);
  EXPECT_NE(s.message().find("x[2047]"), std::string::npos) << s.message();
  x[2047] = 1.0f;
  x[5] = std::nanf("");
  EXPECT_EQ(check_finite(x, "t").code(), StatusCode::kNonFinite);
}

TEST(StateIo, ByteStringsNestAndTruncationIsReported) {
  StateWriter inner;
  inner.put_u64("k", 42);
  StateWriter outer;
  outer.put_bytes("blob", ConstBytes(inner.bytes().data(), inner.bytes().size()));
  outer.put_bytes("empty", ConstBytes());
  outer.put_u64("after", 7);
  const std::vector<std::uint8_t> b = outer.take();
  StateReader r(ConstBytes(b.data(), b.size()), "t");
  ConstBytes blob, empty;
  ASSERT_TRUE(r.get_bytes("blob", &blob).ok());
  ASSERT_TRUE(r.get_bytes("empty", &empty).ok());
  EXPECT_EQ(empty.size(), 0u);
  std::uint64_t v = 0;
  ASSERT_TRUE(r.get_u64("after", &v).ok());
  EXPECT_EQ(v, 7u);
  EXPECT_TRUE(r.finish().ok());
  StateReader ri(blob, "inner");
  ASSERT_TRUE(ri.get_u64("k", &v).ok());
  EXPECT_EQ(v, 42u);
  EXPECT_TRUE(ri.finish().ok());
  // Every truncation of the outer state is an error, never an over-read.
  for (std::size_t cut = 0; cut < b.size(); ++cut) {
    StateReader t(ConstBytes(b.data(), cut), "t");
    ConstBytes x;
    Status s = t.get_bytes("blob", &x);
    if (s.ok()) s = t.get_bytes("empty", &x);
    if (s.ok()) s = t.get_u64("after", &v);
    EXPECT_FALSE(s.ok()) << "cut " << cut;
  }
  // A record of another type is named.
  StateReader w(ConstBytes(b.data(), b.size()), "t");
  Status s = w.get_u64("blob", &v);
  EXPECT_NE(s.message().find("bytes"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace gradzip
