// sign: scaled sign (Karimireddy et al. 2019, EF-SignSGD; algorithms.md §2.2 "Scaled sign").
//
// Formula: C(x) = s * sign(x) with s = ||x||_1 / d, and sign(t) = -1 for t < 0, +1 otherwise. sign(0) := +1
// (algorithms.md §9.9 leaves the choice to us); -0.0 also counts as 0, i.e. +1, because the test is `t < 0`.
// ||x||_1 is sum_abs() from reduce.h (fixed chunked summation order in double, reproducible by a CUDA kernel);
// s = float(sum_abs(x) / d) (division in double, one rounding to float).
//
// Error: ||C(x) - x||^2 = ||x||^2 - 2 s ||x||_1 + d s^2, which for s = ||x||_1 / d is ||x||^2 - ||x||_1^2 / d
// (the float rounding of s adds d (s - ||x||_1/d)^2 >= 0, at most ~2^-48 ||x||_1^2 / d). Zeros map to +s, which
// the formula already covers (|0| contributes nothing to ||x||_1 and s^2 to the error).
// Guarantee: contractive with the input-dependent delta(x) = ||x||_1^2 / (d ||x||^2) in [1/d, 1]; traits()
// reports the worst case delta = 1/d. (Plain sign(x) without s is not contractive and is not offered.)
//
// Body (little-endian), body bits = 32 + d, body bytes = ceil((32 + d) / 8) = 4 + ceil(d / 8):
//   bytes [0, 4)        s as an fp32
//   bytes [4, 4+ceil(d/8)) sign bits, 1 = negative, LSB-first: element i is bit (i % 8) of byte 4 + i / 8;
//                       padding bits of the last byte are 0.
// The scale goes first so that the byte count is exactly ceil((d + 32) / 8). Header: flags = 0, param0 = 0,
// param1 = 0.
//
// Decode: y_i = scale * (bit_i ? -s : s) (kOverwrite) or y_i += that (kAccumulate). Validation (kInvalidPayload):
// header fields 0, body_bytes == 4 + ceil(d/8), s finite and non-negative (the sign bit of s clear, so -0.0 is
// rejected too; the encoder writes +0.0 for x = 0), padding bits zero.
// Encode errors: kNonFinite for NaN/Inf input (base class); kOutOfRange if s is not finite (only reachable with
// check_finite = false).
//
// Determinism: deterministic; bit-reproducible for a given x. Thread-safety: immutable codec.
// Speed: one pass over x (per 4096-element chunk: sum_abs's lanes, then 8 comparisons per output byte), no
// allocation.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "builtin.h"
#include "gradzip/compressors/config.h"
#if GRADZIP_HAS_CUDA
#include "cuda/codecs_cuda.h"
#endif
#include "gradzip/compressors/reduce.h"

namespace gradzip {
namespace {

// Output bytes per block: fixed-length inner loops vectorise even under GCC's -O2 cost model.
constexpr std::size_t kBlockBytes = 256;

// out[b] = sign bits of p[8b .. 8b+8), LSB-first, 1 = negative.
inline void pack_signs(const float* __restrict p, std::uint8_t* __restrict out, std::size_t nbytes) {
  for (std::size_t b = 0; b < nbytes; ++b) {
    std::uint32_t byte = 0;
    for (int j = 0; j < 8; ++j) byte |= static_cast<std::uint32_t>(p[8 * b + j] < 0.0f) << j;
    out[b] = static_cast<std::uint8_t>(byte);
  }
}

// out[8b + j] (+)= bit j of in[b] ? neg : pos.
template <bool kAccumulate>
inline void unpack_signs(const std::uint8_t* __restrict in, float* __restrict out, std::size_t nbytes,
                         std::uint32_t pos_bits) {
  for (std::size_t b = 0; b < nbytes; ++b) {
    const std::uint32_t byte = in[b];
    for (int j = 0; j < 8; ++j) {
      const float v = float_of(pos_bits ^ (((byte >> j) & 1u) << 31));
      if (kAccumulate)
        out[8 * b + j] += v;
      else
        out[8 * b + j] = v;
    }
  }
}

class ScaledSign final : public Compressor {
 public:
  std::string_view name() const override { return "sign"; }
  std::string spec() const override { return "sign"; }
  std::uint16_t codec_id() const override { return static_cast<std::uint16_t>(CodecId::kSign); }
  CompressorTraits traits(std::size_t numel) const override {
    CompressorTraits t;
    t.kind = GuaranteeKind::kContractive;
    t.delta = numel > 0 ? 1.0 / static_cast<double>(numel) : 0.0;  // worst case of ||x||_1^2 / (d ||x||^2)
    t.omega = 0.0;
    t.deterministic = true;
    t.linear = false;
    t.stateful = false;
    return t;
  }
  std::size_t max_encoded_bytes(std::size_t n) const override { return kHeaderBytes + body_size(n); }

#if GRADZIP_HAS_CUDA
  bool has_cuda() const override {
    return true;
  }
  std::size_t workspace_bytes(std::size_t numel, Device d) const override {
    return d == Device::kCuda ? detail::cuda::sign_workspace(numel) : 0;
  }

 protected:
  Status encode_cuda(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader&,
                     const Exec& ex) const override {
    return detail::cuda::sign_encode(x, body, body_bytes, ex);
  }
  Status decode_cuda(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                     const Exec& ex) const override {
    PayloadHeader e = h;  // flags: the wrapper bits in h.flags; this codec sets no flags of its own
    e.body_bytes = static_cast<std::uint32_t>(body_size(y.size()));
    return detail::cuda::sign_decode(e, body, y, mode, scale, ex);
  }
#endif

 protected:
  // ||x||_1 is computed anyway and is non-finite iff x holds Inf/NaN (a double sum of finite floats cannot
  // overflow), so the base class's NaN/Inf pre-scan is skipped and the index is looked up only on failure.
  bool detects_nonfinite() const override {
    return true;
  }

  Status encode_cpu(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader&,
                    const Exec& ex) const override {
    const std::size_t n = x.size();
    std::uint8_t* out = body.data() + 4;
    const float* p = x.data();
    const std::size_t full = n / 8;
    // One pass: each reduce chunk (kReduceChunk = 4096 elements = 512 sign bytes) is summed in sum_abs's exact
    // order and its signs packed while it is in L1, so x is read from memory once.
    static_assert(kReduceChunk % (8 * kBlockBytes) == 0, "sign packing blocks must tile a reduce chunk");
    PairwiseChunkSum l1_sum;
    std::size_t b = 0;
    for (std::size_t c = 0; c < n; c += kReduceChunk) {
      const std::size_t len = std::min(kReduceChunk, n - c);
      l1_sum.push(sum_abs_chunk(p + c, len));
      const std::size_t end = std::min(full, (c + len) / 8);
      for (; b + kBlockBytes <= end; b += kBlockBytes) pack_signs(p + 8 * b, out + b, kBlockBytes);
      pack_signs(p + 8 * b, out + b, end - b);
      b = end;
    }
    const double l1 = l1_sum.result();
    if (!std::isfinite(l1) && ex.check_finite) GZ_RETURN_IF_ERROR(check_finite(x, "sign.encode"));
    const float s = static_cast<float>(l1 / static_cast<double>(n));
    if (!std::isfinite(s))
      return Status::OutOfRange("sign.encode: scale ||x||_1/d = ", s, " is not finite (non-finite input?)");
    store_le<float>(body.data(), s);
    if (n % 8 != 0) {
      std::uint32_t byte = 0;
      for (std::size_t i = 8 * full; i < n; ++i) byte |= static_cast<std::uint32_t>(p[i] < 0.0f) << (i - 8 * full);
      out[full] = static_cast<std::uint8_t>(byte);
    }
    *body_bytes = body_size(n);
    return Status::Ok();
  }

  Status decode_cpu(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                    const Exec&) const override {
    if (h.flags != 0 || h.param0 != 0 || h.param1 != 0)
      return Status::InvalidPayload("sign.decode: unexpected header fields flags=", h.flags, " param0=", h.param0,
                                    " param1=", h.param1, " (all must be 0)");
    const std::size_t n = y.size();
    if (body.size() != body_size(n))
      return Status::InvalidPayload("sign.decode: body of ", body.size(), " bytes, expected 4 + ceil(", n,
                                    " / 8) = ", body_size(n));
    const std::uint8_t* in = body.data();
    const std::uint32_t s_bits = load_le<std::uint32_t>(in);
    if (s_bits >= 0x7f800000u)  // sign bit set (negative or -0.0), Inf or NaN
      return Status::InvalidPayload("sign.decode: scale ", float_of(s_bits), " (bits 0x", std::hex, s_bits,
                                    ") is not a finite non-negative number");
    in += 4;
    const std::size_t full = n / 8;
    const std::size_t rem = n % 8;
    if (rem != 0 && (in[full] >> rem) != 0)
      return Status::InvalidPayload("sign.decode: padding bits of the last byte are not zero (byte 0x", std::hex,
                                    static_cast<unsigned>(in[full]), ", ", std::dec, rem, " used bits)");
    // scale * (+-s) == +-(scale * s) exactly, so the sign is applied by flipping the sign bit of scale * s.
    const std::uint32_t pos = bits_of(scale * float_of(s_bits));
    float* out = y.data();
    std::size_t b = 0;
    if (mode == DecodeMode::kOverwrite) {
      for (; b + kBlockBytes <= full; b += kBlockBytes) unpack_signs<false>(in + b, out + 8 * b, kBlockBytes, pos);
      unpack_signs<false>(in + b, out + 8 * b, full - b, pos);
    } else {
      for (; b + kBlockBytes <= full; b += kBlockBytes) unpack_signs<true>(in + b, out + 8 * b, kBlockBytes, pos);
      unpack_signs<true>(in + b, out + 8 * b, full - b, pos);
    }
    for (std::size_t i = 8 * full; i < n; ++i) {
      const float v = float_of(pos ^ (((static_cast<std::uint32_t>(in[full]) >> (i - 8 * full)) & 1u) << 31));
      if (mode == DecodeMode::kOverwrite)
        out[i] = v;
      else
        out[i] += v;
    }
    return Status::Ok();
  }

 private:
  static std::size_t body_size(std::size_t n) {
    return 4 + (n + 7) / 8;
  }
};

}  // namespace

StatusOr<std::unique_ptr<Compressor>> make_sign() {
  return std::unique_ptr<Compressor>(new ScaledSign());
}

namespace detail {
StatusOr<CompressorPtr> sign_from_params(const Params& p) {
  GZ_RETURN_IF_ERROR(p.finish("sign", {}));
  return make_sign();
}
}  // namespace detail
}  // namespace gradzip
