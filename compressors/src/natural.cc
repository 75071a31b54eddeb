// natural: natural compression, stochastic rounding to a power of two (Horvath et al. 2019, arXiv 1905.10988;
// algorithms.md §2.2). For t != 0 with 2^a <= |t| < 2^(a+1): C(t) = sign(t) 2^(a+1) with probability
// (|t| - 2^a) / 2^a, else sign(t) 2^a; C(0) = 0. Unbiased with omega = 1/8 (the variance of one coordinate is
// (2^(a+1) - |t|)(|t| - 2^a) <= t^2 / 8). Not deterministic (depends on Exec::rng).
//
// Computed on the fp32 bits: biased exponent e, 23-bit mantissa m, so |t| = 2^a (1 + m / 2^23) for e >= 1 and
// (|t| - 2^a) / 2^a = m / 2^23. With the 23-bit random integer u_j = CounterRng(ex.rng).u32(j) >> 9, element j
// rounds up iff u_j < m, i.e. with probability exactly m / 2^23: the new exponent code is e + (u_j < m).
// Denormals (e = 0, m != 0) are t = m 2^-149; the same rule gives code 1 (= 2^-126) with probability m / 2^23, else
// code 0 (zero), whose mean is m 2^-149 = t: exactly unbiased too (the variance is t (2^-126 - t) <= 2^-126 |t|,
// which is not bounded by omega t^2 for tiny t -- irrelevant in practice and documented here). Zeros stay zero.
// Rounding up from e = 254 would need 2^128, which float32 cannot represent: encode returns kOutOfRange naming the
// index (it happens with probability m / 2^23 for |t| >= 2^127).
//
// Wire (body): sign bitmap of ceil(d / 8) bytes (bit j % 8 of byte j / 8, 1 = negative; written 0 for a zero
// output) then one exponent code per element (0 = zero, 1..254 = 2^(code - 127)). body bits = 9 d rounded up to
// bytes: d + ceil(d / 8) = ceil(9 d / 8) bytes. Header: flags 0, param0 0, param1 0.
// Decode builds each float from its code with bit operations (sign << 31 | code << 23).
//
// Errors: encode kOutOfRange (rounding up past 2^127), kNonFinite for NaN/Inf when Exec::check_finite is false.
// decode kInvalidPayload: flags/params not 0, body length != d + ceil(d / 8), exponent code 255, nonzero padding
// bits in the last sign byte. The payload is validated before y is written.
#include <cmath>
#include <cstring>

#include "builtin.h"
#include "gradzip/compressors/config.h"
#if GRADZIP_HAS_CUDA
#include "cuda/codecs_cuda.h"
#endif
#include "gradzip/compressors/rng.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define GZ_NATURAL_X86_DISPATCH 1
#else
#define GZ_NATURAL_X86_DISPATCH 0
#endif

namespace gradzip {

namespace {

constexpr std::size_t kChunk = 1024;  // elements per inner block (multiple of 32)

/// Exponent codes (exps[i]) and the sign bitmap (signs[i / 8], bit i % 8) of n elements whose draws are rnd[0, n).
/// Returns a value whose bits above bit 7 are set iff some code is >= 255 (code + 1 >= 256): rounding past 2^127, or
/// an unchecked Inf/NaN input.
std::uint32_t natural_codes_generic(const float* x, std::size_t n, const std::uint32_t* rnd, std::uint32_t* sgn,
                                    std::uint8_t* exps, std::uint8_t* signs) {
  std::uint32_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t u;
    std::memcpy(&u, x + i, 4);
    const std::uint32_t e = (u >> 23) & 0xFFu;
    const auto m = static_cast<std::int32_t>(u & 0x7FFFFFu);
    const std::uint32_t code = e + static_cast<std::uint32_t>(static_cast<std::int32_t>(rnd[i] >> 9) < m);
    bad |= code + 1;
    exps[i] = static_cast<std::uint8_t>(code);
    sgn[i] = (u >> 31) & static_cast<std::uint32_t>(code != 0);
  }
  std::size_t g = 0;
  for (; 8 * g + 8 <= n; ++g) {
    const std::uint32_t* s = sgn + 8 * g;
    signs[g] = static_cast<std::uint8_t>(s[0] | s[1] << 1 | s[2] << 2 | s[3] << 3 | s[4] << 4 | s[5] << 5 | s[6] << 6 |
                                         s[7] << 7);
  }
  if (8 * g < n) {
    std::uint32_t b = 0;
    for (std::size_t j = 0; 8 * g + j < n; ++j) b |= sgn[8 * g + j] << j;
    signs[g] = static_cast<std::uint8_t>(b);
  }
  return bad;
}

#if GZ_NATURAL_X86_DISPATCH
/// The same for n a multiple of 32, AVX2 (identical bits: integer operations only; a code of 256, possible only for
/// an unchecked Inf/NaN, is stored as 255 instead of 0 -- encode fails on it either way).
__attribute__((target("avx2"))) std::uint32_t natural_codes_avx2(const float* x, std::size_t n,
                                                                 const std::uint32_t* rnd, std::uint8_t* exps,
                                                                 std::uint8_t* signs) {
  const __m256i ff = _mm256_set1_epi32(0xFF), mant = _mm256_set1_epi32(0x7FFFFF), one = _mm256_set1_epi32(1);
  const __m256i zero = _mm256_setzero_si256();
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i bad = zero;
  for (std::size_t i = 0; i < n; i += 32) {
    __m256i code[4];
    for (int v = 0; v < 4; ++v) {
      const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i + 8 * v));
      const __m256i r = _mm256_srli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rnd + i + 8 * v)), 9);
      const __m256i e = _mm256_and_si256(_mm256_srli_epi32(u, 23), ff);
      const __m256i up = _mm256_cmpgt_epi32(_mm256_and_si256(u, mant), r);  // -1 where r < m
      code[v] = _mm256_sub_epi32(e, up);
      bad = _mm256_or_si256(bad, _mm256_add_epi32(code[v], one));
      // Sign bits of the elements whose code is nonzero, 8 per byte.
      const __m256i s = _mm256_andnot_si256(_mm256_cmpeq_epi32(code[v], zero), u);
      signs[(i + 8 * v) / 8] = static_cast<std::uint8_t>(_mm256_movemask_ps(_mm256_castsi256_ps(s)));
    }
    const __m256i p01 = _mm256_packus_epi32(code[0], code[1]), p23 = _mm256_packus_epi32(code[2], code[3]);
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(p01, p23), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(exps + i), bytes);
  }
  alignas(32) std::uint32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), bad);
  std::uint32_t b = 0;
  for (std::uint32_t l : lanes) b |= l;
  return b;
}
#endif

bool use_avx2() {
  return detail::cpu_has_avx2();
}

/// Codes for n elements starting at `first` (a multiple of 8); see natural_codes_generic for the return value.
inline std::uint32_t natural_chunk(const float* x, std::size_t n, std::uint64_t first, const RngKey& key, bool avx2,
                                   std::uint32_t* rnd, std::uint32_t* sgn, std::uint8_t* exps, std::uint8_t* signs) {
  CounterRng(key).fill_u32(first, rnd, n);
  std::uint32_t bad = 0;
  std::size_t done = 0;
#if GZ_NATURAL_X86_DISPATCH
  if (avx2) {
    done = n / 32 * 32;
    bad = natural_codes_avx2(x, done, rnd, exps, signs);
  }
#endif
  (void)avx2;
  if (done < n) bad |= natural_codes_generic(x + done, n - done, rnd + done, sgn, exps + done, signs + done / 8);
  return bad;
}

/// y[i] (+)= scale * value(i) for i in [i0, d), value = bits (sign << 31 | code << 23); i0 a multiple of 8.
template <bool kAcc>
void natural_apply_generic(const std::uint8_t* signs, const std::uint8_t* exps, std::size_t i0, std::size_t d,
                           float scale, float* out) {
  std::size_t g = i0 / 8;
  for (; 8 * g + 8 <= d; ++g) {
    const std::uint32_t sb = signs[g];
    const std::uint8_t* e = exps + 8 * g;
    float* o = out + 8 * g;
    for (int j = 0; j < 8; ++j) {
      const std::uint32_t bits = (((sb >> j) & 1u) << 31) | (static_cast<std::uint32_t>(e[j]) << 23);
      float v;
      std::memcpy(&v, &bits, 4);
      o[j] = kAcc ? o[j] + scale * v : scale * v;
    }
  }
  for (std::size_t i = 8 * g; i < d; ++i) {
    const std::uint32_t bits = (((static_cast<std::uint32_t>(signs[i / 8]) >> (i % 8)) & 1u) << 31) |
                               (static_cast<std::uint32_t>(exps[i]) << 23);
    float v;
    std::memcpy(&v, &bits, 4);
    out[i] = kAcc ? out[i] + scale * v : scale * v;
  }
}

#if GZ_NATURAL_X86_DISPATCH
/// Groups of 8 with AVX2: the sign byte is broadcast and bit j moved to bit 31 of lane j; the codes widened from
/// bytes and shifted into the exponent field. Returns the number of elements done (a multiple of 8).
template <bool kAcc>
__attribute__((target("avx2"))) std::size_t natural_apply_avx2(const std::uint8_t* signs, const std::uint8_t* exps,
                                                               std::size_t d, float scale, float* out) {
  const __m256i to_bit31 = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
  const __m256i sign_mask = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256 sc = _mm256_set1_ps(scale);
  std::size_t g = 0;
  for (; 8 * g + 8 <= d; ++g) {
    const __m256i sb = _mm256_set1_epi32(signs[g]);
    const __m256i sbits = _mm256_and_si256(_mm256_sllv_epi32(sb, to_bit31), sign_mask);
    std::int64_t e8;
    std::memcpy(&e8, exps + 8 * g, 8);
    const __m256i e = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(e8));
    const __m256 v = _mm256_mul_ps(sc, _mm256_castsi256_ps(_mm256_or_si256(_mm256_slli_epi32(e, 23), sbits)));
    float* o = out + 8 * g;
    _mm256_storeu_ps(o, kAcc ? _mm256_add_ps(_mm256_loadu_ps(o), v) : v);
  }
  return 8 * g;
}
#endif

template <bool kAcc>
void natural_apply(const std::uint8_t* signs, const std::uint8_t* exps, std::size_t d, float scale, float* out,
                   bool avx2) {
  std::size_t done = 0;
#if GZ_NATURAL_X86_DISPATCH
  if (avx2) done = natural_apply_avx2<kAcc>(signs, exps, d, scale, out);
#endif
  (void)avx2;
  natural_apply_generic<kAcc>(signs, exps, done, d, scale, out);
}

class Natural final : public Compressor {
 public:
  std::string_view name() const override { return "natural"; }
  std::string spec() const override { return "natural"; }
  std::uint16_t codec_id() const override { return static_cast<std::uint16_t>(CodecId::kNatural); }
  CompressorTraits traits(std::size_t) const override {
    CompressorTraits t;
    t.kind = GuaranteeKind::kUnbiased;
    t.delta = 0.0;
    t.omega = 1.0 / 8.0;
    t.deterministic = false;
    t.linear = false;
    return t;
  }
  std::size_t max_encoded_bytes(std::size_t n) const override { return kHeaderBytes + body_bytes_for(n); }

#if GRADZIP_HAS_CUDA
  bool has_cuda() const override {
    return true;
  }

 protected:
  Status encode_cuda(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader&,
                     const Exec& ex) const override {
    return detail::cuda::natural_encode(x, body, body_bytes, ex);
  }
  Status decode_cuda(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                     const Exec& ex) const override {
    PayloadHeader e = h;  // flags: the wrapper bits in h.flags; this codec sets no flags of its own
    e.body_bytes = static_cast<std::uint32_t>(body_bytes_for(y.size()));
    return detail::cuda::natural_decode(e, body, y, mode, scale, ex);
  }
#endif

 protected:
  // The encode loop flags exponent 255 (Inf/NaN) and reports the first such index itself, so the base class's
  // separate NaN/Inf pre-scan is skipped.
  bool detects_nonfinite() const override {
    return true;
  }

  Status encode_cpu(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader& h,
                    const Exec& ex) const override {
    const std::size_t d = x.size();
    std::uint8_t* signs = body.data();
    std::uint8_t* exps = body.data() + (d + 7) / 8;
    std::uint32_t rnd[kChunk], sgn[kChunk];
    const bool avx2 = use_avx2();
    for (std::size_t c0 = 0; c0 < d; c0 += kChunk) {
      const std::size_t n = std::min(kChunk, d - c0);
      const std::uint32_t bad = natural_chunk(x.data() + c0, n, c0, ex.rng, avx2, rnd, sgn, exps + c0, signs + c0 / 8);
      if (bad >> 8) {
        for (std::size_t i = c0; i < c0 + n; ++i) {
          std::uint32_t u;
          std::memcpy(&u, x.data() + i, 4);
          if (((u >> 23) & 0xFFu) == 0xFFu)
            return Status::NonFinite("natural.encode: x[", i, "] = ", x[i], " is not finite");
          if (((u >> 23) & 0xFFu) == 254 && exps[i] == 0xFFu)
            return Status::OutOfRange("natural.encode: x[", i, "] = ", x[i],
                                      " rounded up to 2^128, which float32 cannot represent");
        }
        return Status::Internal("natural.encode: exponent overflow not located");
      }
    }
    h.flags = 0;
    h.param0 = 0;
    h.param1 = 0;
    *body_bytes = body_bytes_for(d);
    return Status::Ok();
  }

  Status decode_cpu(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                    const Exec&) const override {
    if ((h.flags & ~kFlagScaledWrapper) != 0 || h.param0 != 0 || h.param1 != 0)
      return Status::InvalidPayload("natural.decode: unexpected header flags/params (flags=0x", std::hex, h.flags,
                                    ", param0=", std::dec, h.param0, ", param1=", h.param1, ")");
    const std::size_t d = y.size();
    if (body.size() != body_bytes_for(d))
      return Status::InvalidPayload("natural.decode: body of ", body.size(), " bytes, expected ", body_bytes_for(d),
                                    " for numel=", d);
    const std::size_t nb = (d + 7) / 8;
    const std::uint8_t* signs = body.data();
    const std::uint8_t* exps = body.data() + nb;
    if (d % 8 != 0 && (signs[nb - 1] >> (d % 8)) != 0)
      return Status::InvalidPayload("natural.decode: nonzero padding bits in the last sign byte");
    // Validate every exponent code before writing y (255 would decode to Inf/NaN).
    for (std::size_t c0 = 0; c0 < d; c0 += kChunk) {
      const std::size_t n = std::min(kChunk, d - c0);
      std::uint8_t bad = 0;
      for (std::size_t i = 0; i < n; ++i) bad |= static_cast<std::uint8_t>(exps[c0 + i] == 0xFFu);
      if (bad) {
        for (std::size_t i = c0; i < c0 + n; ++i) {
          if (exps[i] == 0xFFu)
            return Status::InvalidPayload("natural.decode: exponent code 255 at index ", i,
                                          " (reserved; valid codes are 0..254)");
        }
      }
    }
    const bool avx2 = use_avx2();
    if (mode == DecodeMode::kAccumulate) {
      natural_apply<true>(signs, exps, d, scale, y.data(), avx2);
    } else {
      natural_apply<false>(signs, exps, d, scale, y.data(), avx2);
    }
    return Status::Ok();
  }

 private:
  static std::size_t body_bytes_for(std::size_t d) {
    return d + (d + 7) / 8;
  }
};

}  // namespace

StatusOr<std::unique_ptr<Compressor>> make_natural() {
  return std::unique_ptr<Compressor>(new Natural());
}

namespace detail {
StatusOr<CompressorPtr> natural_from_params(const Params& p) {
  GZ_RETURN_IF_ERROR(p.finish("natural", {}));
  return make_natural();
}
}  // namespace detail
}  // namespace gradzip
