// Shared helpers for the compressor tests.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gradzip/compressors/codecs.h"
#include "gradzip/compressors/compressor.h"
#include "gradzip/compressors/registry.h"

namespace gradzip::testing {

#define GZ_ASSERT_OK(expr)                        \
  do {                                            \
    const ::gradzip::Status gz_t_ = (expr);       \
    ASSERT_TRUE(gz_t_.ok()) << gz_t_.to_string(); \
  } while (0)
#define GZ_EXPECT_CODE(expr, c)                        \
  do {                                                 \
    const ::gradzip::Status gz_t_ = (expr);            \
    EXPECT_EQ(gz_t_.code(), (c)) << gz_t_.to_string(); \
  } while (0)

/// Parses a spec that must be valid.
inline std::unique_ptr<Compressor> must_parse(const std::string& spec) {
  auto r = parse_compressor(spec);
  EXPECT_TRUE(r.ok()) << spec << ": " << r.status().to_string();
  if (!r.ok()) return nullptr;
  return std::move(r).value();
}

/// Encodes then decodes (overwrite) x; fails the test on error.
inline std::vector<float> roundtrip(const Compressor& c, const std::vector<float>& x, const Exec& ex = {},
                                    std::vector<std::uint8_t>* payload_out = nullptr) {
  auto p = c.encode(Span<const float>(x.data(), x.size()), ex);
  EXPECT_TRUE(p.ok()) << c.spec() << ": " << p.status().to_string();
  std::vector<float> y(x.size(), std::nanf(""));
  if (!p.ok()) return y;
  const Status s =
      c.decode(ConstBytes(p->data(), p->size()), Span<float>(y.data(), y.size()), DecodeMode::kOverwrite, ex);
  EXPECT_TRUE(s.ok()) << c.spec() << ": " << s.to_string();
  if (payload_out) *payload_out = *p;
  return y;
}

/// A payload with a hand-written header (for corruption tests): header fields as given, then `body`.
inline std::vector<std::uint8_t> make_payload(CodecId id, std::size_t numel, const std::vector<std::uint8_t>& body,
                                              std::uint32_t flags = 0, std::uint32_t p0 = 0, std::uint32_t p1 = 0) {
  PayloadHeader h;
  h.codec_id = static_cast<std::uint16_t>(id);
  h.numel = numel;
  h.body_bytes = static_cast<std::uint32_t>(body.size());
  h.flags = flags;
  h.param0 = p0;
  h.param1 = p1;
  std::vector<std::uint8_t> out(kHeaderBytes + body.size());
  write_header(h, out.data());
  std::copy(body.begin(), body.end(), out.begin() + kHeaderBytes);
  return out;
}

/// A lowrank codec of rank r (and cols, 0 = near-square view) that must be valid.
inline std::unique_ptr<Compressor> lowrank(std::uint32_t rank, std::size_t cols = 0) {
  LowRankConfig c;
  c.rank = rank;
  c.cols = cols;
  auto r = make_lowrank(c);
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  return r.ok() ? std::move(r).value() : nullptr;
}

inline std::vector<float> gaussian(std::size_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> x(n);
  for (auto& v : x) v = d(g);
  return x;
}

inline double sq_norm(const std::vector<float>& x) {
  double s = 0;
  for (float v : x) s += static_cast<double>(v) * v;
  return s;
}
inline double sq_dist(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    s += d * d;
  }
  return s;
}

}  // namespace gradzip::testing
