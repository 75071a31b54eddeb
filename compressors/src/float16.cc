// fp16 and bf16: cast every element to a 16-bit float with round-to-nearest-even (RNE).
//
// Formula: C(x)_i = rne16(x_i), where rne16 rounds to IEEE 754 binary16 (fp16: 1 sign, 5 exponent, 10 fraction
// bits, subnormals included) or to bfloat16 (bf16: the top 16 bits of a binary32, 1/8/7). This is a plain
// quantizer; it is not one of the algorithms.md §2.2 compressors, but it is what DDP's fp16/bf16 comm hooks send.
//
// Body: the d 16-bit values, little-endian, in element order: body bits = 16 d, body bytes = 2 d; payload
// = 32 + 2 d bytes. Header: flags = 0, param0 = 0, param1 = 0 (decode rejects anything else).
//
// Conversion (bit-exact with CUDA's __float2half_rn / __float2bfloat16_rn for every finite input):
//  - bf16: r = (u + 0x7fff + ((u >> 16) & 1)) >> 16 on the binary32 bits u. Adding 0x7fff plus the lsb of the
//    kept part is RNE on the magnitude; a carry out of the fraction bumps the exponent, which is exactly the
//    right result, so normals, subnormals and zeros share one formula.
//  - fp16, |x| >= 2^-14 (fp16 normal range): the same trick with a 13-bit shift after rebiasing the exponent
//    (127 -> 15): h = (a - (112 << 23) + 0xfff + ((a >> 13) & 1)) >> 13 with a = |u|.
//  - fp16, |x| < 2^-14 (fp16 subnormal or zero): h = bits(|x| + 0.5f) - bits(0.5f). The single binary32 addition
//    aligns |x| to the fp16 subnormal grid (spacing 2^-24 = ulp(0.5f)) and rounds it to nearest-even, as IEEE 754
//    requires; only the integer subtraction remains. This is one float operation instead of an integer barrel
//    shift because SSE2 (the x86-64 baseline, no -march) has no per-lane variable shift, so an integer variable
//    shift would stop GCC from vectorising the loop. The result is exact under the default rounding mode (C++
//    programs start in it; gradzip never changes it) and is unaffected by FTZ/DAZ: |x| + 0.5f is a normal number,
//    and a binary32 subnormal input (< 2^-126) rounds to fp16 zero either way. FLT_EVAL_METHOD must be 0
//    (checked below; true on x86-64 SSE and AArch64).
//  - Both paths are computed for every element and blended with a mask, so the loop has no branches and
//    vectorises (SSE2/NEON) without -march; two results are packed per 32-bit store (SSE2 lacks a cheap
//    32 -> 16-bit narrowing).
//  - Decode is exact: bf16 -> float is a 16-bit shift; fp16 normals/Inf/NaN are a shift plus an exponent
//    rebias, fp16 subnormals are float(int(h & 0x3ff)) * 2^-24 (exact: an integer < 1024 times a power of two).
//
// Range and errors:
//  - fp16: a finite x with |x| >= 65520 rounds beyond the largest finite fp16 (65504): kOutOfRange naming the
//    first such index ("fp16.encode: x[7] = 70000 is outside the fp16 range ..."). |x| < 65520 (e.g. 65519.99)
//    rounds to at most 65504. The check is a branch-free OR-reduction per block of 2048 elements; the index is
//    searched only in a block that failed.
//  - bf16: only finite |x| >= 0x1.ffp127 (bits 0x7f7f8000, the midpoint between the largest finite bf16
//    0x1.fep127 and 2^128; FLT_MAX is among them) round past every finite bf16; they give kOutOfRange the same way.
//  - With Exec::check_finite = false, NaN/Inf inputs also give kOutOfRange (never undefined behaviour).
//  - Decode: kInvalidPayload for flags/params != 0 or body_bytes != 2 d. Every 16-bit pattern decodes (fp16 and
//    bf16 Inf/NaN patterns decode to float Inf/NaN; the encoder never produces them).
//
// Guarantee (traits): kBiased with delta = 0, because no nontrivial worst-case contraction bound holds for all
// finite inputs: x = (2^-26) for fp16 or x = (2^-149) for bf16 encodes to 0, so ||C(x) - x||^2 = ||x||^2. The
// bound that does hold: RNE to p significant bits has relative error <= u = 2^-p per element whenever the result
// is in the normal range, so
//   fp16 (p = 11): ||C(x) - x||^2 <= 2^-22 ||x||^2 when every nonzero |x_i| is in [2^-14, 65520),
//   bf16 (p = 8):  ||C(x) - x||^2 <= 2^-16 ||x||^2 when every nonzero |x_i| >= 2^-126 (and does not overflow),
// and below those thresholds the absolute error per element is <= 2^-25 (fp16) / 2^-134 (bf16) (half the
// subnormal spacing), never more than |x_i|. Gradients are usually well inside the normal range, so in practice
// these behave like contractive compressors with delta = 1 - 2^-22 / 1 - 2^-16, but we do not advertise it.
//
// Determinism: deterministic, bit-reproducible across hosts and (later) CUDA. Thread-safety: immutable codec.
#include <cfloat>
#include <cstring>
#include <string>

#include "builtin.h"
#include "gradzip/compressors/config.h"
#if GRADZIP_HAS_CUDA
#include "cuda/codecs_cuda.h"
#endif

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "gradzip fp16 encoding needs FLT_EVAL_METHOD == 0 (binary32 arithmetic without excess precision)"
#endif

namespace gradzip {
namespace {

// ---- fp16 -------------------------------------------------------------------------------------------------------

struct Fp16Format {
  static constexpr const char* kName = "fp16";
  static constexpr CodecId kId = CodecId::kFp16;
  // |u| at or above this rounds to a value beyond 65504 (65520 = 65504 + half an ulp, a tie that rounds to even
  // = up). Inf/NaN patterns are above it too.
  static constexpr std::uint32_t kOverflowBits = 0x477ff000u;
  static constexpr const char* kRangeText = "|x| >= 65520 rounds beyond the largest finite fp16 value 65504";

  // The 16-bit result in the low bits (higher bits are garbage only for out-of-range input).
  static inline std::uint32_t encode(std::uint32_t u) {
    const std::uint32_t sign = (u >> 16) & 0x8000u;
    const std::uint32_t a = u & 0x7fffffffu;
    // Normal range: rebias 127 -> 15 (subtract 112 << 23) and round away 13 fraction bits with RNE.
    const std::uint32_t normal = (a - 0x38000000u + 0x0fffu + ((a >> 13) & 1u)) >> 13;
    // Subnormal range: one binary32 addition aligns and rounds to the 2^-24 grid (see the header comment).
    const std::uint32_t sub = bits_of(float_of(a) + 0.5f) - 0x3f000000u;
    // Explicit mask blend (not ?:) so that GCC keeps the float addition unconditional and if-converts the loop.
    const std::uint32_t is_sub = 0u - static_cast<std::uint32_t>(static_cast<std::int32_t>(a) < 0x38800000);
    return (sub & is_sub) | (normal & ~is_sub) | sign;
  }
  static inline float decode(std::uint16_t h) {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t a = h & 0x7fffu;
    // Normal: exponent 15 -> 127. Inf/NaN (exponent 31): rebias once more so the exponent becomes 255.
    const std::uint32_t normal = (a << 13) + 0x38000000u + (a >= 0x7c00u ? 0x38000000u : 0u);
    // Subnormal or zero: a * 2^-24, exact.
    const std::uint32_t sub = bits_of(static_cast<float>(static_cast<std::int32_t>(a)) * 0x1p-24f);
    const std::uint32_t is_sub = 0u - static_cast<std::uint32_t>(a < 0x0400u);
    return float_of(sign | (sub & is_sub) | (normal & ~is_sub));
  }
};

// ---- bf16 -------------------------------------------------------------------------------------------------------

struct Bf16Format {
  static constexpr const char* kName = "bf16";
  static constexpr CodecId kId = CodecId::kBf16;
  // 0x7f7f8000 is the midpoint between the largest bf16 (0x7f7f) and Inf; it ties to even = up to Inf.
  static constexpr std::uint32_t kOverflowBits = 0x7f7f8000u;
  static constexpr const char* kRangeText = "|x| >= 0x1.ffp127 rounds beyond the largest finite bf16 value";

  static inline std::uint32_t encode(std::uint32_t u) { return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16; }
  static inline float decode(std::uint16_t h) { return float_of(static_cast<std::uint32_t>(h) << 16); }
};

template <class F>
class Half16 final : public Compressor {
 public:
  std::string_view name() const override { return F::kName; }
  std::string spec() const override { return F::kName; }
  std::uint16_t codec_id() const override { return static_cast<std::uint16_t>(F::kId); }
  CompressorTraits traits(std::size_t) const override {
    CompressorTraits t;
    t.kind = GuaranteeKind::kBiased;  // see the header comment: underflow to 0 rules out any worst-case delta > 0
    t.delta = 0.0;
    t.omega = 0.0;
    t.deterministic = true;
    t.linear = false;
    t.stateful = false;
    return t;
  }
  std::size_t max_encoded_bytes(std::size_t n) const override { return kHeaderBytes + 2 * n; }

#if GRADZIP_HAS_CUDA
  bool has_cuda() const override {
    return true;
  }

 protected:
  Status encode_cuda(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader&,
                     const Exec& ex) const override {
    return detail::cuda::half_encode(F::kId == CodecId::kBf16, x, body, body_bytes, ex);
  }
  Status decode_cuda(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                     const Exec& ex) const override {
    PayloadHeader e = h;  // flags: the wrapper bits in h.flags; this codec sets no flags of its own
    e.body_bytes = static_cast<std::uint32_t>(2 * y.size());
    return detail::cuda::half_decode(F::kId == CodecId::kBf16, e, body, y, mode, scale, ex);
  }
#endif

 protected:
  // The range flag of the encode loop also catches Inf/NaN, so the base class's separate NaN/Inf pre-scan is
  // skipped and the error is produced here (kNonFinite first when Exec::check_finite, as for every codec).
  bool detects_nonfinite() const override {
    return true;
  }

  Status encode_cpu(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader&,
                    const Exec& ex) const override {
    const float* p = x.data();
    std::uint8_t* out = body.data();
    const std::size_t n = x.size();
    // Full blocks of a compile-time length vectorise even under GCC's -O2 "very cheap" cost model (no epilogue,
    // no runtime alias check); the tail goes through the same scalar kernel.
    std::size_t b = 0;
    for (; b + kBlock <= n; b += kBlock) {
      if (encode_block(p + b, out + 2 * b, kBlock) != 0) return range_error(x, b, kBlock, ex);
    }
    if (b < n && encode_block(p + b, out + 2 * b, n - b) != 0) return range_error(x, b, n - b, ex);
    *body_bytes = 2 * n;
    return Status::Ok();
  }

  Status decode_cpu(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                    const Exec&) const override {
    if (h.flags != 0 || h.param0 != 0 || h.param1 != 0)
      return Status::InvalidPayload(F::kName, ".decode: unexpected header fields flags=", h.flags, " param0=", h.param0,
                                    " param1=", h.param1, " (all must be 0)");
    const std::size_t n = y.size();
    if (body.size() != 2 * n)
      return Status::InvalidPayload(F::kName, ".decode: body of ", body.size(), " bytes, expected 2 * numel = ", 2 * n);
    const std::uint8_t* in = body.data();
    float* out = y.data();
    std::size_t b = 0;
    if (mode == DecodeMode::kOverwrite) {
      for (; b + kBlock <= n; b += kBlock) decode_block<false>(in + 2 * b, out + b, kBlock, scale);
      decode_block<false>(in + 2 * b, out + b, n - b, scale);
    } else {
      for (; b + kBlock <= n; b += kBlock) decode_block<true>(in + 2 * b, out + b, kBlock, scale);
      decode_block<true>(in + 2 * b, out + b, n - b, scale);
    }
    return Status::Ok();
  }

 private:
  static constexpr std::size_t kBlock = 2048;

  // Converts p[0..len) into out[0..2 len); returns nonzero iff some element is beyond the format's range
  // (branch-free OR-reduction; the caller looks for the index only when it is set).
  static inline std::uint32_t encode_block(const float* __restrict p, std::uint8_t* __restrict out, std::size_t len) {
    // Two elements per 32-bit store: SSE2 has no cheap 32 -> 16-bit narrowing, so packing pairs with a shift and
    // an OR (after a stride-2 de-interleave of the input) is faster than letting GCC narrow lane by lane.
    std::uint32_t bad = 0;
    const std::size_t pairs = len / 2;
    for (std::size_t i = 0; i < pairs; ++i) {
      const std::uint32_t u0 = bits_of(p[2 * i]), u1 = bits_of(p[2 * i + 1]);
      bad |= static_cast<std::uint32_t>((u0 & 0x7fffffffu) >= F::kOverflowBits) |
             static_cast<std::uint32_t>((u1 & 0x7fffffffu) >= F::kOverflowBits);
      const std::uint32_t w = (F::encode(u0) & 0xffffu) | (F::encode(u1) << 16);
      store_le<std::uint32_t>(out + 4 * i, w);
    }
    if (len % 2 != 0) {
      const std::uint32_t u = bits_of(p[len - 1]);
      bad |= static_cast<std::uint32_t>((u & 0x7fffffffu) >= F::kOverflowBits);
      store_le<std::uint16_t>(out + 2 * (len - 1), static_cast<std::uint16_t>(F::encode(u)));
    }
    return bad;
  }
  static Status range_error(Span<const float> x, std::size_t b, std::size_t len, const Exec& ex) {
    const float* p = x.data();
    if (ex.check_finite) {
      const std::string op = std::string(F::kName) + ".encode";
      GZ_RETURN_IF_ERROR(check_finite(x, op.c_str()));
    }
    for (std::size_t i = b; i < b + len; ++i) {
      if ((bits_of(p[i]) & 0x7fffffffu) >= F::kOverflowBits)
        return Status::OutOfRange(F::kName, ".encode: x[", i, "] = ", p[i], " is outside the ", F::kName, " range (",
                                  F::kRangeText, ")");
    }
    return Status::Internal(F::kName, ".encode: range flag set but no offending element found");
  }
  template <bool kAccumulate>
  static inline void decode_block(const std::uint8_t* __restrict in, float* __restrict out, std::size_t len,
                                  float scale) {
    for (std::size_t i = 0; i < len; ++i) {
      const float v = scale * F::decode(load_le<std::uint16_t>(in + 2 * i));
      if (kAccumulate)
        out[i] += v;
      else
        out[i] = v;
    }
  }
};

}  // namespace

StatusOr<std::unique_ptr<Compressor>> make_fp16() {
  return std::unique_ptr<Compressor>(new Half16<Fp16Format>());
}
StatusOr<std::unique_ptr<Compressor>> make_bf16() {
  return std::unique_ptr<Compressor>(new Half16<Bf16Format>());
}

namespace detail {
StatusOr<CompressorPtr> fp16_from_params(const Params& p) {
  GZ_RETURN_IF_ERROR(p.finish("fp16", {}));
  return make_fp16();
}
StatusOr<CompressorPtr> bf16_from_params(const Params& p) {
  GZ_RETURN_IF_ERROR(p.finish("bf16", {}));
  return make_bf16();
}
}  // namespace detail
}  // namespace gradzip
