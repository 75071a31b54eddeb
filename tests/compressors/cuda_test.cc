// CUDA codecs against the CPU reference, bit for bit (CTest label gpu; skipped without a device).
// Every spec x odd sizes x random inputs: the device payload equals the CPU payload byte for byte, device decode
// (overwrite into a poisoned buffer, and accumulate) equals the CPU decode bit for bit, also from misaligned
// buffers; corrupted headers and bodies are rejected (synchronously and through the device status word); the device
// feedback steps equal the CPU rules.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "gradzip/compressors/cuda.h"
#include "gradzip/compressors/registry.h"
#include "gradzip/error_feedback/device_feedback.h"

namespace gradzip {
namespace {

using testing::bits;
using testing::Dev;

std::vector<float> random_input(std::size_t n, std::uint32_t seed, int kind) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = nd(rng);
  if (kind == 1) {  // heavy ties and zeros
    std::uniform_int_distribution<int> q(-3, 3);
    for (auto& v : x) v = 0.25f * static_cast<float>(q(rng));
  } else if (kind == 2) {  // wide dynamic range incl. tiny values
    std::uniform_int_distribution<int> ex(-30, 10);
    for (auto& v : x) v = std::ldexp(v, ex(rng));
  } else if (kind == 3) {  // defeats Top-K's strided sample: large values exactly at the sampled positions
    const std::size_t stride = n / 4096 > 0 ? n / 4096 : 1;
    for (std::size_t i = 0; i < n; ++i) x[i] = i % stride == 0 ? 10.0f + std::fabs(x[i]) : 1e-3f * x[i];
  }
  return x;
}

const char* kSpecs[] = {"identity", "fp16", "bf16", "sign", "natural", "qsgd:levels=7", "qsgd:bits=2",
                        "qsgd:levels=100,norm=linf", "qsgd:bits=16", "topk:ratio=0.01", "topk:ratio=0.3", "topk:k=1",
                        "randk:ratio=0.05", "randk:ratio=0.2,shared=0,mode=contractive", "scaled(natural)",
                        "scaled(qsgd:levels=7)", "scaled(randk:ratio=0.05)", "scaled(randk:ratio=0.2,shared=0)",
                        "topk:ratio=0.01+qsgd:levels=7", "topk:ratio=0.3+natural", "topk:k=1+sign",
                        "topk:ratio=0.05+fp16",
                        // compose with a Rand-K first stage: shared and per-rank subsets, a fixed seed=, both value
                        // modes, the index-list and the bitmap form (ratio 0.3; ratio 0.05 at n = 2^20 + 3), a scaled()
                        // quantizer inside and scaled() around the composition.
                        "randk:ratio=0.05+qsgd:levels=7", "randk:ratio=0.2,shared=0,mode=contractive+natural",
                        "randk:ratio=0.3,shared=0+qsgd:bits=2", "randk:k=1+sign",
                        "randk:ratio=0.05,mode=contractive,seed=42+fp16", "randk:ratio=0.05+scaled(qsgd:levels=7)",
                        "scaled(randk:ratio=0.05+qsgd:levels=7)", "scaled(randk:ratio=0.2,shared=0+natural)",
                        // QSGD's chunked Elias coding (variable length; 1 to 65 chunks over kSizes), the largest
                        // worst-case slots (bits=16, linf: every element nonzero), under scaled().
                        "qsgd:levels=7,coding=elias", "qsgd:levels=3,norm=linf,coding=elias",
                        "qsgd:bits=16,norm=linf,coding=elias", "scaled(qsgd:levels=7,coding=elias)"};
const std::size_t kSizes[] = {1, 7, 33, 4095, 4097, 100003, (1u << 20) + 3};

void compare_spec(const std::string& spec, std::size_t n, int kind, std::size_t x_off) {
  SCOPED_TRACE(spec + " n=" + std::to_string(n) + " kind=" + std::to_string(kind) + " off=" + std::to_string(x_off));
  auto codec = parse_compressor(spec);
  ASSERT_TRUE(codec.ok()) << codec.status().to_string();
  const Compressor& c = **codec;
  ASSERT_TRUE(c.has_cuda());
  const std::vector<float> x = random_input(n, static_cast<std::uint32_t>(n * 31 + kind), kind);
  Exec cpu;
  cpu.rng = {1234, 5, 2, 9};
  Exec gpu = cpu;
  gpu.device = Device::kCuda;
  auto ref = c.encode(Span<const float>(x.data(), n), cpu);
  ASSERT_TRUE(ref.ok()) << ref.status().to_string();

  Dev<float> dx(n + x_off);
  dx.put(x, x_off);
  const std::size_t cap = c.max_encoded_bytes(n);
  Dev<std::uint8_t> dp(cap + 1);
  ASSERT_EQ(cudaMemset(dp.p, 0xA5, cap + 1), cudaSuccess);  // poison
  std::size_t written = 0;
  Status s = c.encode(Span<const float>(dx.p + x_off, n), MutableBytes(dp.p, cap), &written, gpu);
  ASSERT_TRUE(s.ok()) << s.to_string();
  ASSERT_EQ(written, ref->size());
  const auto got = dp.get(written);
  ASSERT_EQ(std::memcmp(got.data(), ref->data(), written), 0) << "payload differs from the CPU's";
  EXPECT_EQ(dp.get(1, cap)[0], 0xA5) << "wrote past max_encoded_bytes";

  // Decode (overwrite into NaN-poisoned y; accumulate onto a random base), misaligned payload by 1 byte too.
  const std::vector<float> base = random_input(n, 77, 0);
  for (int mode = 0; mode < 2; ++mode) {
    for (std::size_t p_off : {std::size_t{0}, std::size_t{1}}) {
      std::vector<float> want = mode == 0 ? std::vector<float>(n, 0.0f) : base;
      ASSERT_TRUE(c.decode(ConstBytes(ref->data(), ref->size()), Span<float>(want.data(), n),
                           mode == 0 ? DecodeMode::kOverwrite : DecodeMode::kAccumulate, cpu, 0.5f)
                      .ok());
      Dev<std::uint8_t> pp(written + p_off);
      pp.put(*ref, p_off);
      Dev<float> dy(n + 1);
      if (mode == 0) {
        ASSERT_EQ(cudaMemset(dy.p, 0xFF, (n + 1) * 4), cudaSuccess);  // NaN poison
      } else {
        dy.put(base, 1);
      }
      float* y = mode == 0 ? dy.p : dy.p + 1;
      s = c.decode(ConstBytes(pp.p + p_off, written), Span<float>(y, n),
                   mode == 0 ? DecodeMode::kOverwrite : DecodeMode::kAccumulate, gpu, 0.5f);
      ASSERT_TRUE(s.ok()) << s.to_string();
      const auto out = dy.get(n, mode == 0 ? 0 : 1);
      std::size_t bad = 0, first = n;
      for (std::size_t i = 0; i < n; ++i)
        if (bits(out[i]) != bits(want[i])) {
          if (first == n) first = i;
          ++bad;
        }
      ASSERT_EQ(bad, 0u) << "decode mode " << mode << " p_off " << p_off << ": first mismatch at " << first << " got "
                         << out[first] << " want " << want[first];
    }
  }
}

TEST(CudaCodecs, MatchCpuBitwiseAtOddSizes) {
  REQUIRE_GPU();
  for (const char* spec : kSpecs)
    for (std::size_t n : kSizes)
      for (int kind = 0; kind < 3; ++kind) compare_spec(spec, n, kind, 0);
}

TEST(CudaCodecs, MisalignedInputs) {
  REQUIRE_GPU();
  for (const char* spec : kSpecs) compare_spec(spec, 100003, 0, 1);
}

TEST(CudaCodecs, TopKUnluckySampleFallsBackToEveryIndex) {
  REQUIRE_GPU();
  // The sample sees only the ~4096 large values, so fewer than k candidates pass its threshold: the device must
  // fall back to every index and still select exactly the CPU's k (1% of n > 4096 here).
  compare_spec("topk:ratio=0.01", (1u << 20) + 3, 3, 0);
  compare_spec("topk:ratio=0.01", 3'000'017, 3, 1);
  compare_spec("topk:ratio=0.002", 5'000'000, 3, 0);
}

TEST(CudaCodecs, LargeTopKMatchesCpu) {
  REQUIRE_GPU();
  compare_spec("topk:ratio=0.01", 25'000'000, 0, 0);
  compare_spec("topk:ratio=0.01", 3'000'001, 1, 0);              // heavy ties
  compare_spec("qsgd:levels=7,coding=elias", 25'000'000, 0, 0);  // 1526 chunks
}

TEST(CudaCodecs, BadPayloadsAreRejected) {
  REQUIRE_GPU();
  for (const char* spec : kSpecs) {
    SCOPED_TRACE(spec);
    auto codec = parse_compressor(spec);
    const Compressor& c = **codec;
    const std::size_t n = 4097;
    const std::vector<float> x = random_input(n, 3, 0);
    Exec cpu;
    auto ref = c.encode(Span<const float>(x.data(), n), cpu);
    ASSERT_TRUE(ref.ok());
    Exec gpu;
    gpu.device = Device::kCuda;
    Dev<float> dy(n);
    ASSERT_EQ(cudaMemset(dy.p, 0, n * 4), cudaSuccess);
    // Header corruption: every byte of the header in turn must be rejected with y untouched.
    for (std::size_t b : {0u, 4u, 6u, 8u, 16u, 20u, 24u}) {
      std::vector<std::uint8_t> bad = *ref;
      bad[b] ^= 0x01;
      Dev<std::uint8_t> dp(bad.size());
      dp.put(bad);
      Status s = c.decode(ConstBytes(dp.p, bad.size()), Span<float>(dy.p, n), DecodeMode::kOverwrite, gpu);
      EXPECT_EQ(s.code(), StatusCode::kInvalidPayload) << "byte " << b << ": " << s.to_string();
      const auto y = dy.get(n);
      for (float v : y) ASSERT_EQ(v, 0.0f);
    }
    // A truncated buffer is rejected on the host.
    Dev<std::uint8_t> dp(ref->size());
    dp.put(*ref);
    Status s = c.decode(ConstBytes(dp.p, ref->size() - 1), Span<float>(dy.p, n), DecodeMode::kOverwrite, gpu);
    EXPECT_EQ(s.code(), StatusCode::kInvalidPayload) << s.to_string();
    // Through the device status word: nothing synchronises, the bits arrive later.
    std::vector<std::uint8_t> bad = *ref;
    bad[0] ^= 0x10;
    dp.put(bad);
    Dev<std::uint32_t> word(1);
    ASSERT_EQ(cudaMemset(word.p, 0, 4), cudaSuccess);
    Exec async = gpu;
    async.device_status = word.p;
    ASSERT_TRUE(c.decode(ConstBytes(dp.p, ref->size()), Span<float>(dy.p, n), DecodeMode::kOverwrite, async).ok());
    EXPECT_EQ(cuda_take_status(word.p, nullptr, "test").code(), StatusCode::kInvalidPayload);
    EXPECT_TRUE(cuda_take_status(word.p, nullptr, "test").ok()) << "the word is zeroed after reading";
  }
}

TEST(CudaCodecs, BodyCorruptionIsReported) {
  REQUIRE_GPU();
  // Top-K index form: an index >= d; natural: exponent code 255; qsgd 7 levels -> 3-bit level field can hold 7 only,
  // so use levels=5 where 6 and 7 are invalid.
  struct Case {
    const char* spec;
    std::size_t at;  // body byte to overwrite
    std::uint8_t v;
  };
  const std::size_t n = 1000;
  // compose: padding bits after a 3 x 10-bit index list, the nested payload's magic, a bitmap with more than k bits.
  // compose(randk): the same checks (its indices travel in the same section as Top-K's).
  for (const Case& k :
       {Case{"topk:k=3", 1, 0xff}, Case{"natural", 200, 0xff}, Case{"qsgd:levels=5", 10, 0xff},
        Case{"scaled(natural)", 200, 0xff}, Case{"topk:k=3+qsgd:levels=5", 3, 0xff},
        Case{"topk:k=3+qsgd:levels=5", 4, 0x00}, Case{"topk:ratio=0.3+natural", 0, 0xff},
        Case{"randk:k=3+qsgd:levels=5", 3, 0xff}, Case{"randk:k=3,shared=0+qsgd:levels=5", 4, 0x00},
        Case{"randk:ratio=0.3+natural", 0, 0xff}, Case{"scaled(randk:k=3+qsgd:levels=5)", 4, 0x00},
        // Elias (one chunk at n = 1000): the table entry (its high byte: past the body), the chunk's count code.
        Case{"qsgd:levels=5,coding=elias", 7, 0xff}, Case{"qsgd:levels=5,coding=elias", 8, 0xff}}) {
    SCOPED_TRACE(k.spec);
    auto codec = parse_compressor(k.spec);
    const Compressor& c = **codec;
    const std::vector<float> x = random_input(n, 5, 0);
    auto ref = c.encode(Span<const float>(x.data(), n), Exec{});
    ASSERT_TRUE(ref.ok());
    std::vector<std::uint8_t> bad = *ref;
    bad[kHeaderBytes + k.at] = k.v;
    Exec cpu;
    Exec gpu;
    gpu.device = Device::kCuda;
    std::vector<float> hy(n);
    EXPECT_EQ(
        c.decode(ConstBytes(bad.data(), bad.size()), Span<float>(hy.data(), n), DecodeMode::kOverwrite, cpu).code(),
        StatusCode::kInvalidPayload);
    Dev<std::uint8_t> dp(bad.size());
    dp.put(bad);
    Dev<float> dy(n);
    ASSERT_EQ(cudaMemset(dy.p, 0, n * 4), cudaSuccess);
    EXPECT_EQ(c.decode(ConstBytes(dp.p, bad.size()), Span<float>(dy.p, n), DecodeMode::kOverwrite, gpu).code(),
              StatusCode::kInvalidPayload);
    // compose and Elias write y only after full validation.
    if (std::string(k.spec).find('+') != std::string::npos || std::string(k.spec).find("elias") != std::string::npos) {
      const auto y = dy.get(n);
      for (float v : y) ASSERT_EQ(v, 0.0f);
    }
  }
}

// enc's payload of x is rejected by dec on the CPU and on the device (kInvalidPayload, y left at 0); with
// `also_async_and_matching` also through the device status word (y untouched), and enc's own device decode accepts it.
void expect_foreign_payload_rejected(const Compressor& enc, const Compressor& dec, const std::vector<float>& x,
                                     const Exec& cpu, const Exec& gpu, bool also_async_and_matching) {
  const std::size_t n = x.size();
  auto pay = enc.encode(Span<const float>(x.data(), n), cpu);
  ASSERT_TRUE(pay.ok());
  std::vector<float> hy(n, 0.0f);
  EXPECT_EQ(
      dec.decode(ConstBytes(pay->data(), pay->size()), Span<float>(hy.data(), n), DecodeMode::kOverwrite, cpu).code(),
      StatusCode::kInvalidPayload);
  Dev<std::uint8_t> dp(pay->size());
  dp.put(*pay);
  Dev<float> dy(n);
  ASSERT_EQ(cudaMemset(dy.p, 0, n * 4), cudaSuccess);
  Status s = dec.decode(ConstBytes(dp.p, pay->size()), Span<float>(dy.p, n), DecodeMode::kOverwrite, gpu);
  EXPECT_EQ(s.code(), StatusCode::kInvalidPayload) << s.to_string();
  for (float v : dy.get(n)) ASSERT_EQ(v, 0.0f);
  if (!also_async_and_matching) return;
  Dev<std::uint32_t> word(1);
  ASSERT_EQ(cudaMemset(word.p, 0, 4), cudaSuccess);
  Exec async = gpu;
  async.device_status = word.p;
  ASSERT_TRUE(dec.decode(ConstBytes(dp.p, pay->size()), Span<float>(dy.p, n), DecodeMode::kAccumulate, async).ok());
  EXPECT_EQ(cuda_take_status(word.p, nullptr, "test").code(), StatusCode::kInvalidPayload);
  for (float v : dy.get(n)) ASSERT_EQ(v, 0.0f);
  // The matching decoder accepts it (the bit is expected exactly where it is written).
  ASSERT_EQ(cudaMemset(dy.p, 0, n * 4), cudaSuccess);
  s = enc.decode(ConstBytes(dp.p, pay->size()), Span<float>(dy.p, n), DecodeMode::kOverwrite, gpu);
  EXPECT_TRUE(s.ok()) << s.to_string();
}

// scaled() payloads carry header flag bit 31: the device decoders of the plain codec and of the wrapper each reject
// the other's payload (as on the CPU), synchronously and through the device status word, with y untouched. The
// expected bit reaches the inner codec's kernels only through decode_cuda's header (Compressor::decode_cuda's flags
// rule), so this covers every codec that builds an expected header under scaled(), compose's outer header included.
TEST(CudaCodecs, ScaledFlagIsRequiredExactly) {
  REQUIRE_GPU();
  const std::size_t n = 4097;
  const std::vector<float> x = random_input(n, 11, 0);
  Exec cpu;
  cpu.rng = {3, 1, 4, 1};
  Exec gpu = cpu;
  gpu.device = Device::kCuda;
  for (const char* inner :
       {"natural", "qsgd:levels=7", "qsgd:bits=2", "randk:ratio=0.05", "randk:ratio=0.2,shared=0",
        "randk:ratio=0.05+qsgd:levels=7", "randk:ratio=0.3,shared=0+natural", "qsgd:levels=7,coding=elias"}) {
    SCOPED_TRACE(inner);
    auto plain = parse_compressor(inner);
    auto wrapped = parse_compressor(std::string("scaled(") + inner + ")");
    ASSERT_TRUE(plain.ok() && wrapped.ok());
    ASSERT_TRUE((*plain)->has_cuda() && (*wrapped)->has_cuda());
    for (int which = 0; which < 2; ++which) {
      SCOPED_TRACE(which == 0 ? "plain payload, scaled decoder" : "scaled payload, plain decoder");
      expect_foreign_payload_rejected(which == 0 ? **plain : **wrapped, which == 0 ? **wrapped : **plain, x, cpu, gpu,
                                      /*also_async_and_matching=*/true);
    }
  }
}

// compose's nested payload is decoded through the quantizer's public decode: a scaled() quantizer expects bit 31 in
// the nested header, a plain one rejects it, whatever the outer header carries (the outer ids and params are equal).
TEST(CudaCodecs, ComposeNestedScaledFlag) {
  REQUIRE_GPU();
  const std::size_t n = 4097;
  const std::vector<float> x = random_input(n, 12, 0);
  Exec cpu;
  Exec gpu;
  gpu.device = Device::kCuda;
  for (const char* sp : {"randk:ratio=0.05", "randk:ratio=0.2,shared=0", "topk:ratio=0.05"}) {
    SCOPED_TRACE(sp);
    auto plain = parse_compressor(std::string(sp) + "+qsgd:levels=7");
    auto nested = parse_compressor(std::string(sp) + "+scaled(qsgd:levels=7)");
    ASSERT_TRUE(plain.ok() && nested.ok());
    ASSERT_TRUE((*plain)->has_cuda() && (*nested)->has_cuda());
    for (int which = 0; which < 2; ++which)
      expect_foreign_payload_rejected(which == 0 ? **plain : **nested, which == 0 ? **nested : **plain, x, cpu, gpu,
                                      /*also_async_and_matching=*/false);
  }
}

// compose(randk, identity) keeps exactly Rand-K's subset and values (identity is exact, and unbiased Rand-K's d/k
// factor is the same float on both sides), so on the device its decode equals plain randk's decode for the same key,
// bit for bit: the subset key rule is shared (detail::randk_subset_key), independently of the compose CPU path.
TEST(CudaCodecs, ComposeRandKKeepsRandKSubset) {
  REQUIRE_GPU();
  const std::size_t n = 100003;
  const std::vector<float> x = random_input(n, 13, 0);
  Exec gpu;
  gpu.device = Device::kCuda;
  gpu.rng = {77, 3, 5, 2};
  Dev<float> dx(n);
  dx.put(x);
  for (const char* sp : {"randk:ratio=0.05", "randk:ratio=0.05,shared=0", "randk:ratio=0.3,mode=contractive",
                         "randk:k=17,shared=0,seed=9"}) {
    SCOPED_TRACE(sp);
    auto r = parse_compressor(sp);
    auto cmp = parse_compressor(std::string(sp) + "+identity");
    ASSERT_TRUE(r.ok() && cmp.ok());
    ASSERT_TRUE((*cmp)->has_cuda());
    std::vector<float> ys[2];
    for (int which = 0; which < 2; ++which) {
      const Compressor& c = which == 0 ? **r : **cmp;
      const std::size_t cap = c.max_encoded_bytes(n);
      Dev<std::uint8_t> dp(cap);
      std::size_t w = 0;
      Status s = c.encode(Span<const float>(dx.p, n), MutableBytes(dp.p, cap), &w, gpu);
      ASSERT_TRUE(s.ok()) << s.to_string();
      Dev<float> dy(n);
      ASSERT_EQ(cudaMemset(dy.p, 0xFF, n * 4), cudaSuccess);
      s = c.decode(ConstBytes(dp.p, w), Span<float>(dy.p, n), DecodeMode::kOverwrite, gpu);
      ASSERT_TRUE(s.ok()) << s.to_string();
      ys[which] = dy.get(n);
    }
    std::size_t kept = 0;
    for (std::size_t i = 0; i < n; ++i) {
      ASSERT_EQ(bits(ys[0][i]), bits(ys[1][i])) << "i=" << i;
      kept += ys[0][i] != 0.0f;
    }
    EXPECT_GT(kept, 0u);
  }
}

TEST(CudaCodecs, DeviceCoverage) {
  REQUIRE_GPU();
  EXPECT_TRUE((*parse_compressor("randk:ratio=0.05+qsgd:levels=7"))->has_cuda());
  EXPECT_TRUE((*parse_compressor("randk:ratio=0.05,shared=0+natural"))->has_cuda());
  EXPECT_FALSE((*parse_compressor("randk:ratio=0.05+qsgd:levels=7,coding=elias"))->has_cuda());
  EXPECT_FALSE((*parse_compressor("topk:ratio=0.05+qsgd:levels=7,coding=elias"))->has_cuda());
  // Elias has kernels; compose needs a fixed-size nested payload, so compose(..., elias) stays on the host.
  EXPECT_TRUE((*parse_compressor("qsgd:levels=7,coding=elias"))->has_cuda());
  EXPECT_TRUE((*parse_compressor("scaled(qsgd:levels=7,coding=elias)"))->has_cuda());
}

TEST(CudaCodecs, EncodeErrors) {
  REQUIRE_GPU();
  Exec gpu;
  gpu.device = Device::kCuda;
  std::vector<float> x(100, 1.0f);
  x[37] = NAN;
  Dev<float> dx(100);
  dx.put(x);
  Dev<std::uint8_t> out(1000);
  std::size_t w = 0;
  auto fp16 = parse_compressor("fp16");
  Status s = (*fp16)->encode(Span<const float>(dx.p, 100), MutableBytes(out.p, 1000), &w, gpu);
  EXPECT_EQ(s.code(), StatusCode::kNonFinite) << s.to_string();
  EXPECT_NE(s.message().find("x[37]"), std::string::npos) << s.message();
  x[37] = 70000.0f;
  dx.put(x);
  s = (*fp16)->encode(Span<const float>(dx.p, 100), MutableBytes(out.p, 1000), &w, gpu);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange) << s.to_string();
  auto elias = parse_compressor("qsgd:levels=7,coding=elias");
  EXPECT_TRUE((*elias)->has_cuda());
  s = (*elias)->encode(Span<const float>(dx.p, 100), MutableBytes(out.p, 1000), &w, gpu);
  EXPECT_TRUE(s.ok()) << s.to_string();
  x[37] = std::nanf("");
  dx.put(x);
  s = (*elias)->encode(Span<const float>(dx.p, 100), MutableBytes(out.p, 1000), &w, gpu);
  EXPECT_EQ(s.code(), StatusCode::kNonFinite) << s.to_string();
}

// The device feedback steps against the CPU rules computed here (same float operations), over several steps.
TEST(CudaFeedback, StepsMatchCpuRules) {
  REQUIRE_GPU();
  const std::size_t n = 300007;
  for (const char* spec :
       {"topk:ratio=0.01", "sign", "qsgd:levels=7", "randk:ratio=0.05", "scaled(qsgd:levels=7)",
        "topk:ratio=0.01+qsgd:levels=7", "randk:ratio=0.05,shared=0+qsgd:levels=7", "qsgd:levels=7,coding=elias"}) {
    SCOPED_TRACE(spec);
    auto codec = parse_compressor(spec);
    const Compressor& c = **codec;
    std::vector<float> e14(n, 0.0f), G(n, 0.0f), e(n, 0.0f), h(n, 0.0f);
    Dev<float> de14(n), dG(n), de(n), dh(n), dg(n), ds(n);
    de14.put(e14);
    dG.put(G);
    de.put(e);
    dh.put(h);
    Dev<std::uint8_t> out(c.max_encoded_bytes(n));
    const float eta = 0.1f, gamma = 0.5f;
    for (std::uint32_t t = 0; t < 4; ++t) {
      const std::vector<float> g = random_input(n, 100 + t, 0);
      dg.put(g);
      Exec cpu;
      cpu.rng = {9, t, 0, 3};
      Exec gpu = cpu;
      gpu.device = Device::kCuda;
      // EF14
      std::vector<float> p(n);
      for (std::size_t i = 0; i < n; ++i) p[i] = e14[i] + gamma * g[i];
      auto pay = c.encode(Span<const float>(p.data(), n), cpu);
      ASSERT_TRUE(pay.ok());
      ASSERT_TRUE(c.decode(*pay, Span<float>(p.data(), n), DecodeMode::kAccumulate, cpu, -1.0f).ok());
      e14 = p;
      std::size_t w = 0;
      ASSERT_TRUE(device_feedback::ef14_step(c, Span<const float>(dg.p, n), gamma, Span<float>(de14.p, n),
                                             MutableBytes(out.p, c.max_encoded_bytes(n)), &w, gpu)
                      .ok());
      ASSERT_EQ(w, pay->size());
      ASSERT_EQ(std::memcmp(out.get(w).data(), pay->data(), w), 0);
      ASSERT_EQ(std::memcmp(de14.get(n).data(), e14.data(), 4 * n), 0);
      // EF21
      std::vector<float> sdiff(n);
      for (std::size_t i = 0; i < n; ++i) sdiff[i] = g[i] - G[i];
      pay = c.encode(Span<const float>(sdiff.data(), n), cpu);
      ASSERT_TRUE(c.decode(*pay, Span<float>(G.data(), n), DecodeMode::kAccumulate, cpu, 1.0f).ok());
      ASSERT_TRUE(device_feedback::ef21_step(c, Span<const float>(dg.p, n), Span<float>(dG.p, n), Span<float>(ds.p, n),
                                             MutableBytes(out.p, c.max_encoded_bytes(n)), &w, gpu)
                      .ok());
      ASSERT_EQ(std::memcmp(dG.get(n).data(), G.data(), 4 * n), 0);
      // EControl
      std::vector<float> u(n), en(n);
      for (std::size_t i = 0; i < n; ++i) u[i] = eta * e[i] + (g[i] - h[i]);
      pay = c.encode(Span<const float>(u.data(), n), cpu);
      for (std::size_t i = 0; i < n; ++i) en[i] = e[i] + (g[i] - h[i]);
      ASSERT_TRUE(c.decode(*pay, Span<float>(en.data(), n), DecodeMode::kAccumulate, cpu, -1.0f).ok());
      ASSERT_TRUE(c.decode(*pay, Span<float>(h.data(), n), DecodeMode::kAccumulate, cpu, 1.0f).ok());
      e = en;
      ASSERT_TRUE(device_feedback::econtrol_step(c, Span<const float>(dg.p, n), eta, Span<float>(de.p, n),
                                                 Span<float>(dh.p, n), Span<float>(ds.p, n),
                                                 MutableBytes(out.p, c.max_encoded_bytes(n)), &w, gpu)
                      .ok());
      ASSERT_EQ(std::memcmp(de.get(n).data(), e.data(), 4 * n), 0);
      ASSERT_EQ(std::memcmp(dh.get(n).data(), h.data(), 4 * n), 0);
    }
  }
}

}  // namespace
}  // namespace gradzip
