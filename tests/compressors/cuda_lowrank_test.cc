// lowrank (PowerSGD rank r) on the CUDA device against the CPU codec (CTest label gpu; skipped without a device).
// Warm-started calls (the same Q on both sides) must agree bit for bit: payload bytes, decoded floats (overwrite into
// a NaN-poisoned buffer, accumulate, scale, misaligned payloads) and the state sequence Q'_1, Q'_2, ... A cold start
// draws Q with the device's double log/cos, which may differ from the C library's in the last bit of a float
// (lowrank_math.h: about 1e-8 per entry): the draw itself is compared (at most a few one-ulp differences in 4M
// draws) and a cold payload must be bit-exact whenever the two draws agree, else within a tolerance. Degenerate
// inputs (zero, rank-deficient, repeated columns), odd shapes (padding, cols given, rank = min(m, n), very wide and
// very tall views), malformed payloads (rejected on the device with y untouched, synchronously and through the
// status word), overflow (the previous Q survives, as on the CPU), host/device state hand-over and a 25M-element
// case are covered too.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda/lowrank_cuda.h"  // internal: the device draw alone
#include "cuda_test_util.h"
#include "gradzip/compressors/codecs.h"
#include "gradzip/compressors/cuda.h"
#include "gradzip/compressors/lowrank_math.h"
#include "gradzip/compressors/payload.h"
#include "gradzip/compressors/registry.h"
#include "test_util.h"

namespace gradzip {
namespace {

using testing::bits;
using testing::Dev;
using testing::gaussian;
using testing::lowrank;

struct Shape {
  std::size_t d, cols;
  std::uint32_t r;
};
std::string name(const Shape& s) {
  return "d=" + std::to_string(s.d) + " cols=" + std::to_string(s.cols) + " r=" + std::to_string(s.r);
}
std::size_t cols_of(const Shape& s) {
  return detail::lowrank_view_cols(s.d, s.cols);
}
std::size_t rows_of(const Shape& s) {
  const std::size_t n = cols_of(s);
  return (s.d + n - 1) / n;
}

std::vector<std::uint8_t> cpu_encode(const Compressor& c, const std::vector<float>& x, const Exec& ex) {
  auto p = c.encode(Span<const float>(x.data(), x.size()), ex);
  EXPECT_TRUE(p.ok()) << p.status().to_string();
  return p.ok() ? *p : std::vector<std::uint8_t>{};
}

// Device encode from x at float offset x_off; checks nothing is written past max_encoded_bytes.
std::vector<std::uint8_t> gpu_encode(const Compressor& c, const std::vector<float>& x, const Exec& ex,
                                     std::size_t x_off = 0, Status* status = nullptr) {
  const std::size_t n = x.size();
  Dev<float> dx(n + x_off);
  dx.put(x, x_off);
  const std::size_t cap = c.max_encoded_bytes(n);
  Dev<std::uint8_t> dp(cap + 1);
  EXPECT_EQ(cudaMemset(dp.p, 0xA5, cap + 1), cudaSuccess);
  std::size_t written = 0;
  const Status s = c.encode(Span<const float>(dx.p + x_off, n), MutableBytes(dp.p, cap), &written, ex);
  if (status != nullptr) {
    *status = s;
    if (!s.ok()) return {};
  } else {
    EXPECT_TRUE(s.ok()) << s.to_string();
    if (!s.ok()) return {};
  }
  EXPECT_EQ(dp.get(1, cap)[0], 0xA5) << "wrote past max_encoded_bytes";
  return dp.get(written);
}

std::size_t count_diff(const std::vector<float>& a, const std::vector<float>& b, std::size_t* first) {
  std::size_t bad = 0;
  *first = a.size();
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (bits(a[i]) != bits(b[i])) {
      if (*first == a.size()) *first = i;
      ++bad;
    }
  }
  return bad + (a.size() > b.size() ? a.size() - b.size() : b.size() - a.size());
}

// Device decode of `payload` equals the CPU decode bit for bit: overwrite (NaN-poisoned y) and accumulate (onto a
// random base), scale 0.5 and -1, payload at byte offsets 0 and 1.
void expect_decode_matches(const Compressor& c, const std::vector<std::uint8_t>& payload, std::size_t n) {
  const std::vector<float> base = gaussian(n, 77);
  Exec cpu;
  Exec gpu;
  gpu.device = Device::kCuda;
  for (float scale : {0.5f, -1.0f}) {
    for (int mode = 0; mode < 2; ++mode) {
      const DecodeMode dm = mode == 0 ? DecodeMode::kOverwrite : DecodeMode::kAccumulate;
      std::vector<float> want = mode == 0 ? std::vector<float>(n, 0.0f) : base;
      ASSERT_TRUE(
          c.decode(ConstBytes(payload.data(), payload.size()), Span<float>(want.data(), n), dm, cpu, scale).ok());
      for (std::size_t p_off : {std::size_t{0}, std::size_t{1}}) {
        SCOPED_TRACE("scale " + std::to_string(scale) + " mode " + std::to_string(mode) + " p_off " +
                     std::to_string(p_off));
        Dev<std::uint8_t> pp(payload.size() + p_off);
        pp.put(payload, p_off);
        Dev<float> dy(n + 1);
        if (mode == 0) {
          ASSERT_EQ(cudaMemset(dy.p, 0xFF, (n + 1) * 4), cudaSuccess);  // NaN poison
        } else {
          dy.put(base, 1);
        }
        float* y = mode == 0 ? dy.p : dy.p + 1;
        const Status s = c.decode(ConstBytes(pp.p + p_off, payload.size()), Span<float>(y, n), dm, gpu, scale);
        ASSERT_TRUE(s.ok()) << s.to_string();
        const auto got = dy.get(n, mode == 0 ? 0 : 1);
        std::size_t first = 0;
        const std::size_t bad = count_diff(got, want, &first);
        ASSERT_EQ(bad, 0u) << "first mismatch at " << first << ": got " << got[first] << " want " << want[first];
      }
    }
  }
}

// The current Q of a state, whichever side holds it (the copy constructor downloads a device copy).
std::vector<float> q_of(const LowRankState& st) {
  LowRankState copy(st);
  EXPECT_FALSE(copy.on_device());
  return copy.q;
}

// Warm-started CPU and device sequences from the same Q: equal payloads, decodes and states at every call.
void compare_warm(const Shape& sh, std::uint32_t seed, int calls, std::size_t x_off = 0) {
  SCOPED_TRACE(name(sh));
  auto c = lowrank(sh.r, sh.cols);
  ASSERT_TRUE(c);
  const std::size_t n = cols_of(sh), m = rows_of(sh), r = sh.r;
  LowRankState cs, gs;
  cs.q = gaussian(n * r, seed + 1);
  cs.rows = m;
  cs.cols = n;
  cs.rank = sh.r;
  gs = cs;
  Exec cpu;
  cpu.rng = {99, 1, 2, 3};
  cpu.state = &cs;
  Exec gpu = cpu;
  gpu.device = Device::kCuda;
  gpu.state = &gs;
  for (int call = 0; call < calls; ++call) {
    SCOPED_TRACE("call " + std::to_string(call));
    const std::vector<float> x = gaussian(sh.d, seed * 7 + static_cast<std::uint32_t>(call));
    const auto want = cpu_encode(*c, x, cpu);
    const auto got = gpu_encode(*c, x, gpu, x_off);
    ASSERT_EQ(got.size(), want.size());
    ASSERT_EQ(got.size(), kHeaderBytes + 4 * r * (m + n));
    ASSERT_EQ(std::memcmp(got.data(), want.data(), got.size()), 0) << "payload differs from the CPU's";
    EXPECT_TRUE(gs.on_device());
    EXPECT_TRUE(gs.q.empty()) << "q is not current while the device holds Q";
    EXPECT_EQ(gs.rows, m);
    EXPECT_EQ(gs.cols, n);
    EXPECT_EQ(gs.rank, sh.r);
    const auto gq = q_of(gs);
    std::size_t first = 0;
    ASSERT_EQ(count_diff(gq, cs.q, &first), 0u) << "state Q' differs at " << first;
    if (call == 0) expect_decode_matches(*c, got, sh.d);
  }
}

const Shape kShapes[] = {
    {100, 0, 2},      // 10 x 10
    {101, 0, 3},      // 10 x 11, padded
    {50, 7, 2},       // cols given, padded
    {16, 0, 4},       // rank = min(m, n)
    {10, 10, 1},      // one row
    {1000, 1, 1},     // one column
    {4097, 0, 5},     // 64 x 65, padded, rank not a multiple of 4
    {12345, 100, 4},  // cols given
    {4096, 64, 64},   // full rank 64 x 64
    {2000, 3, 3},     // tall: rank = n
    {5000, 2500, 2},  // wide: m = 2 = rank
    {300007, 0, 7},   // 548 x 548, padded
    {100003, 517, 8}, {70000, 0, 1},
};

TEST(CudaLowRank, WarmStartBitExactOddShapes) {
  REQUIRE_GPU();
  std::uint32_t seed = 1;
  for (const Shape& sh : kShapes) compare_warm(sh, seed++, 3);
}

TEST(CudaLowRank, MisalignedInput) {
  REQUIRE_GPU();
  compare_warm({100003, 0, 4}, 41, 2, 1);
  compare_warm({4097, 0, 3}, 42, 2, 3);
}

TEST(CudaLowRank, LargeWarmStartBitExact) {
  REQUIRE_GPU();
  compare_warm({25'000'000, 0, 4}, 7, 2);
}

TEST(CudaLowRank, WorkspaceGivesTheSameResult) {
  REQUIRE_GPU();
  auto c = lowrank(4);
  ASSERT_TRUE(c);
  const std::vector<float> x = gaussian(300007, 5);
  const std::size_t ws_bytes = c->workspace_bytes(x.size(), Device::kCuda);
  ASSERT_GT(ws_bytes, 0u);
  Dev<std::uint8_t> ws(ws_bytes);
  Exec gpu;
  gpu.device = Device::kCuda;
  gpu.rng = {1, 2, 3, 4};
  Exec with = gpu;
  with.workspace = MutableBytes(ws.p, ws_bytes);
  EXPECT_EQ(gpu_encode(*c, x, gpu), gpu_encode(*c, x, with));
}

TEST(CudaLowRank, ColdStartDrawMatchesHostUpToRareLastBit) {
  REQUIRE_GPU();
  const std::size_t count = std::size_t{1} << 22;
  for (const RngKey key : {RngKey{1, 0, 0, 0}, RngKey{0xDEADBEEFCAFEull, 7, 3, 11}}) {
    std::vector<float> host(count);
    detail::lowrank_draw_gaussian(key, host.data(), count);
    Dev<float> dq(count);
    Exec gpu;
    gpu.device = Device::kCuda;
    ASSERT_TRUE(detail::cuda::lowrank_draw_gaussian(key, dq.p, count, gpu).ok());
    const auto dev = dq.get(count);
    std::size_t diff = 0;
    for (std::size_t k = 0; k < count; ++k) {
      if (bits(dev[k]) == bits(host[k])) continue;
      ++diff;
      const std::int64_t ulps =
          static_cast<std::int64_t>(bits(dev[k])) - static_cast<std::int64_t>(bits(host[k]));  // same sign
      EXPECT_LE(std::llabs(ulps), 1) << "draw " << k << ": device " << dev[k] << " host " << host[k];
    }
    // Expected ~0.04 differences in 4M draws (1-2 ulp double log/cos vs ~1e-8 chance per draw of a float boundary).
    EXPECT_LE(diff, 8u) << "device Box-Muller differs from the host's more often than last-bit noise";
  }
}

// Without a state every call draws Q from Exec::rng. Bit-exact when the device draw equals the host's (nearly
// always), else the factors differ by float rounding only: relative decode error within 1e-4 (a one-ulp change of
// a Q entry, 6e-8 relative, amplified by the conditioning of M Q, which is small for Gaussian inputs).
TEST(CudaLowRank, ColdStartExactWhenTheDrawsAgree) {
  REQUIRE_GPU();
  std::uint32_t seed = 100;
  for (const Shape& sh : kShapes) {
    SCOPED_TRACE(name(sh));
    auto c = lowrank(sh.r, sh.cols);
    ASSERT_TRUE(c);
    const std::size_t n = cols_of(sh), count = n * sh.r;
    Exec cpu;
    cpu.rng = {seed, 3, 1, 4};
    Exec gpu = cpu;
    gpu.device = Device::kCuda;
    std::vector<float> host(count);
    detail::lowrank_draw_gaussian(cpu.rng, host.data(), count);
    Dev<float> dq(count);
    ASSERT_TRUE(detail::cuda::lowrank_draw_gaussian(cpu.rng, dq.p, count, gpu).ok());
    std::size_t first = 0;
    const bool same_draw = count_diff(dq.get(count), host, &first) == 0;
    const std::vector<float> x = gaussian(sh.d, seed++);
    const auto want = cpu_encode(*c, x, cpu);
    const auto got = gpu_encode(*c, x, gpu);
    ASSERT_EQ(got.size(), want.size());
    if (same_draw) {
      EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size()), 0) << "cold payload differs with equal draws";
    } else {
      std::vector<float> yc(sh.d), yg(sh.d);
      ASSERT_TRUE(
          c->decode(ConstBytes(want.data(), want.size()), Span<float>(yc.data(), sh.d), DecodeMode::kOverwrite, cpu)
              .ok());
      ASSERT_TRUE(
          c->decode(ConstBytes(got.data(), got.size()), Span<float>(yg.data(), sh.d), DecodeMode::kOverwrite, cpu)
              .ok());
      double num = 0, den = 0;
      for (std::size_t i = 0; i < sh.d; ++i) {
        num += (static_cast<double>(yc[i]) - yg[i]) * (static_cast<double>(yc[i]) - yg[i]);
        den += static_cast<double>(yc[i]) * yc[i];
      }
      EXPECT_LE(std::sqrt(num), 1e-4 * std::sqrt(den) + 1e-30);
    }
  }
}

// A cold state takes the draw, then the sequence is warm: from the second call on the CPU and device agree bit for
// bit whenever the first draws agreed.
TEST(CudaLowRank, ColdStateThenWarmSequence) {
  REQUIRE_GPU();
  const Shape sh{40000, 0, 4};
  auto c = lowrank(sh.r);
  const std::size_t count = cols_of(sh) * sh.r;
  LowRankState cs, gs;
  Exec cpu;
  cpu.rng = {5, 6, 7, 8};
  cpu.state = &cs;
  Exec gpu = cpu;
  gpu.device = Device::kCuda;
  gpu.state = &gs;
  std::vector<float> host(count);
  detail::lowrank_draw_gaussian(cpu.rng, host.data(), count);
  Dev<float> dq(count);
  ASSERT_TRUE(detail::cuda::lowrank_draw_gaussian(cpu.rng, dq.p, count, gpu).ok());
  std::size_t first = 0;
  if (count_diff(dq.get(count), host, &first) != 0) GTEST_SKIP() << "the device draw differs in a last bit";
  for (int call = 0; call < 4; ++call) {
    const std::vector<float> x = gaussian(sh.d, 500 + static_cast<std::uint32_t>(call));
    const auto want = cpu_encode(*c, x, cpu);
    const auto got = gpu_encode(*c, x, gpu);
    ASSERT_EQ(got, want) << "call " << call;
    ASSERT_EQ(count_diff(q_of(gs), cs.q, &first), 0u) << "call " << call;
  }
}

// Degenerate columns: an all-zero input (every column of P = M Q is zero), a zero warm state, a rank-1 matrix with
// r = 3 (columns 2 and 3 become dependent), and a warm Q with repeated columns (P's columns coincide).
TEST(CudaLowRank, DegenerateInputsFollowTheCpuRule) {
  REQUIRE_GPU();
  const std::size_t m = 30, n = 20, d = m * n;
  auto c = lowrank(3, n);
  ASSERT_TRUE(c);
  std::vector<float> rank1(d);
  for (std::size_t i = 0; i < m; ++i)
    for (std::size_t j = 0; j < n; ++j)
      rank1[i * n + j] = static_cast<float>((i + 1.0) * (j % 3 == 0 ? 1.0 : -0.5) * (i % 2 ? 1 : -1));
  const std::vector<float> zero(d, 0.0f);
  std::vector<float> rep = gaussian(n * 3, 9);
  for (std::size_t j = 0; j < n; ++j) rep[j * 3 + 2] = rep[j * 3 + 0];  // column 2 = column 0

  for (int start = 0; start < 3; ++start) {  // Q: zero, repeated columns, random
    SCOPED_TRACE("start " + std::to_string(start));
    LowRankState cs, gs;
    cs.rows = m;
    cs.cols = n;
    cs.rank = 3;
    cs.q = start == 0 ? std::vector<float>(n * 3, 0.0f) : start == 1 ? rep : gaussian(n * 3, 10);
    gs = cs;
    Exec cpu;
    cpu.state = &cs;
    Exec gpu = cpu;
    gpu.device = Device::kCuda;
    gpu.state = &gs;
    const std::vector<const std::vector<float>*> seq = {&zero, &rank1, &rank1, &zero, &rank1};
    for (std::size_t call = 0; call < seq.size(); ++call) {
      const auto want = cpu_encode(*c, *seq[call], cpu);
      const auto got = gpu_encode(*c, *seq[call], gpu);
      ASSERT_EQ(got, want) << "call " << call;
      std::size_t first = 0;
      ASSERT_EQ(count_diff(q_of(gs), cs.q, &first), 0u) << "call " << call << " at " << first;
      expect_decode_matches(*c, got, d);
    }
  }
}

TEST(CudaLowRank, MalformedPayloadsAreRejectedOnTheDevice) {
  REQUIRE_GPU();
  auto c = lowrank(2);
  ASSERT_TRUE(c);
  const std::size_t d = 100;  // 10 x 10
  const std::vector<float> x = gaussian(d, 2);
  const auto p = cpu_encode(*c, x, Exec{});
  const std::size_t body = 4 * 2 * 20;
  ASSERT_EQ(p.size(), kHeaderBytes + body);
  auto rewrite = [&](std::uint32_t flags, std::uint32_t p0, std::uint32_t p1, std::size_t body_bytes,
                     std::uint64_t numel = 100, std::uint16_t id = static_cast<std::uint16_t>(CodecId::kLowRank)) {
    PayloadHeader h;
    h.codec_id = id;
    h.numel = numel;
    h.flags = flags;
    h.param0 = p0;
    h.param1 = p1;
    h.body_bytes = static_cast<std::uint32_t>(body_bytes);
    std::vector<std::uint8_t> out(kHeaderBytes + std::max(body_bytes, body), 0);
    write_header(h, out.data());
    std::memcpy(out.data() + kHeaderBytes, p.data() + kHeaderBytes, body);
    return out;
  };
  auto magic = p;
  magic[0] ^= 1;
  auto version = p;
  version[4] ^= 1;
  const std::vector<std::vector<std::uint8_t>> bad = {rewrite(1, 2, 10, body),
                                                      rewrite(0x80000000u, 2, 10, body),
                                                      rewrite(0, 1, 10, body),
                                                      rewrite(0, 0, 10, body),
                                                      rewrite(0, 11, 10, body),
                                                      rewrite(0, 2, 20, body),
                                                      rewrite(0, 2, 0, body),
                                                      rewrite(0, 2, 9, body),
                                                      rewrite(0, 2, 10, body - 4),
                                                      rewrite(0, 2, 10, body + 4),
                                                      rewrite(0, 2, 10, body, 99),
                                                      rewrite(0, 2, 10, body, 100, 1),
                                                      cpu_encode(*lowrank(2, 5), x, {}),
                                                      magic,
                                                      version};
  Exec gpu;
  gpu.device = Device::kCuda;
  Dev<float> dy(d);
  const std::vector<float> poison(d, 7.25f);
  Dev<std::uint32_t> word(1);
  for (std::size_t k = 0; k < bad.size(); ++k) {
    SCOPED_TRACE("case " + std::to_string(k));
    // The CPU rejects it too.
    std::vector<float> hy(d);
    EXPECT_EQ(
        c->decode(ConstBytes(bad[k].data(), bad[k].size()), Span<float>(hy.data(), d), DecodeMode::kOverwrite, Exec{})
            .code(),
        StatusCode::kInvalidPayload);
    Dev<std::uint8_t> dp(bad[k].size());
    dp.put(bad[k]);
    for (int mode = 0; mode < 2; ++mode) {
      const DecodeMode dm = mode == 0 ? DecodeMode::kOverwrite : DecodeMode::kAccumulate;
      dy.put(poison);
      Status s = c->decode(ConstBytes(dp.p, bad[k].size()), Span<float>(dy.p, d), dm, gpu);
      EXPECT_EQ(s.code(), StatusCode::kInvalidPayload) << s.to_string();
      for (float v : dy.get(d)) ASSERT_EQ(v, 7.25f) << "y touched";
      ASSERT_EQ(cudaMemset(word.p, 0, 4), cudaSuccess);
      Exec async = gpu;
      async.device_status = word.p;
      s = c->decode(ConstBytes(dp.p, bad[k].size()), Span<float>(dy.p, d), dm, async);
      if (s.ok()) {
        EXPECT_EQ(cuda_take_status(word.p, nullptr, "test").code(), StatusCode::kInvalidPayload);
      } else {
        EXPECT_EQ(s.code(), StatusCode::kInvalidPayload) << s.to_string();  // rejected on the host (short buffer)
      }
      for (float v : dy.get(d)) ASSERT_EQ(v, 7.25f) << "y touched (async)";
    }
  }
  // A buffer shorter than the body the expected header announces is rejected on the host.
  Dev<std::uint8_t> dp(p.size());
  dp.put(p);
  EXPECT_EQ(c->decode(ConstBytes(dp.p, p.size() - 1), Span<float>(dy.p, d), DecodeMode::kOverwrite, gpu).code(),
            StatusCode::kInvalidPayload);
  // The valid payload still decodes, and garbage floats in the body decode without error (as on the CPU).
  EXPECT_TRUE(c->decode(ConstBytes(dp.p, p.size()), Span<float>(dy.p, d), DecodeMode::kOverwrite, gpu).ok());
  auto junk = p;
  for (std::size_t i = kHeaderBytes; i < junk.size(); ++i) junk[i] = 0xFF;
  dp.put(junk);
  EXPECT_TRUE(c->decode(ConstBytes(dp.p, junk.size()), Span<float>(dy.p, d), DecodeMode::kOverwrite, gpu).ok());
}

// Q' out of float range: kOutOfRange (synchronously, or kDeviceOutOfRange through the word), and the state keeps its
// previous Q as on the CPU; NaN input with check_finite is kNonFinite.
TEST(CudaLowRank, OverflowKeepsThePreviousQ) {
  REQUIRE_GPU();
  auto c = lowrank(2);
  ASSERT_TRUE(c);
  const std::size_t d = 64;
  const std::vector<float> x = gaussian(d, 1);
  const std::vector<float> big(d, 3e38f);
  LowRankState cs, gs;
  Exec cpu;
  cpu.rng = {1, 1, 1, 1};
  cpu.state = &cs;
  Exec gpu = cpu;
  gpu.device = Device::kCuda;
  gpu.state = &gs;
  cs.q = gaussian(8 * 2, 3);
  cs.rows = 8;
  cs.cols = 8;
  cs.rank = 2;
  gs = cs;
  ASSERT_EQ(cpu_encode(*c, x, cpu), gpu_encode(*c, x, gpu));
  const std::vector<float> q1 = cs.q;
  EXPECT_EQ(c->encode(Span<const float>(big.data(), d), cpu).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(cs.q, q1);
  Status s;
  gpu_encode(*c, big, gpu, 0, &s);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange) << s.to_string();
  EXPECT_EQ(q_of(gs), q1);
  Dev<std::uint32_t> word(1);
  ASSERT_EQ(cudaMemset(word.p, 0, 4), cudaSuccess);
  Exec async = gpu;
  async.device_status = word.p;
  gpu_encode(*c, big, async, 0, &s);
  EXPECT_TRUE(s.ok()) << s.to_string();
  EXPECT_EQ(cuda_take_status(word.p, nullptr, "test").code(), StatusCode::kOutOfRange);
  EXPECT_EQ(q_of(gs), q1);
  // The sequence goes on identically.
  ASSERT_EQ(cpu_encode(*c, x, cpu), gpu_encode(*c, x, gpu));
  EXPECT_EQ(q_of(gs), cs.q);
  std::vector<float> nan = x;
  nan[5] = std::nanf("");
  gpu_encode(*c, nan, gpu, 0, &s);
  EXPECT_EQ(s.code(), StatusCode::kNonFinite) << s.to_string();
}

// One state used on the host and the device in turn gives the pure CPU sequence: a host encode after device
// encodes brings Q back itself, a device encode after host encodes uploads it; copies and sync_to_host agree.
TEST(CudaLowRank, StateMovesBetweenHostAndDevice) {
  REQUIRE_GPU();
  const Shape sh{5000, 0, 3};
  auto c = lowrank(sh.r);
  const std::size_t n = cols_of(sh), m = rows_of(sh);
  LowRankState ref, mixed;
  ref.q = gaussian(n * sh.r, 4);
  ref.rows = m;
  ref.cols = n;
  ref.rank = sh.r;
  mixed = ref;
  Exec cpu;
  cpu.state = &ref;
  Exec mc;
  mc.state = &mixed;
  Exec mg = mc;
  mg.device = Device::kCuda;
  const bool on_gpu[] = {true, true, false, true, false, false, true};
  for (std::size_t call = 0; call < sizeof(on_gpu) / sizeof(on_gpu[0]); ++call) {
    const std::vector<float> x = gaussian(sh.d, 900 + static_cast<std::uint32_t>(call));
    const auto want = cpu_encode(*c, x, cpu);
    const auto got = on_gpu[call] ? gpu_encode(*c, x, mg) : cpu_encode(*c, x, mc);
    ASSERT_EQ(got, want) << "call " << call;
    EXPECT_EQ(mixed.on_device(), on_gpu[call]);
  }
  LowRankState copy = mixed;  // from the device
  EXPECT_FALSE(copy.on_device());
  EXPECT_EQ(copy.q, ref.q);
  ASSERT_TRUE(mixed.sync_to_host().ok());
  EXPECT_FALSE(mixed.on_device());
  EXPECT_EQ(mixed.q, ref.q);
  EXPECT_TRUE(mixed.sync_to_host().ok()) << "a no-op when q is current";
  // A state of another shape restarts cold on both sides (compared where the draws agree: same key, same draw).
  const Shape other{3000, 0, 3};
  const std::vector<float> x2 = gaussian(other.d, 5);
  Exec kc = cpu, kg = mg;
  kc.rng = kg.rng = {8, 8, 8, 8};
  const auto want = cpu_encode(*c, x2, kc);
  const auto got = gpu_encode(*c, x2, kg);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(mixed.cols, cols_of(other));
  EXPECT_EQ(mixed.rows, rows_of(other));
}

TEST(CudaLowRank, WrongStateTypeIsAnArgumentError) {
  REQUIRE_GPU();
  struct OtherState : CompressorState {};
  OtherState other;
  auto c = lowrank(1);
  Exec gpu;
  gpu.device = Device::kCuda;
  gpu.state = &other;
  Status s;
  gpu_encode(*c, gaussian(100, 1), gpu, 0, &s);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  EXPECT_TRUE(c->has_cuda());
}

}  // namespace
}  // namespace gradzip
