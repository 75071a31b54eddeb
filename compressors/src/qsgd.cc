// qsgd: QSGD stochastic quantization with s levels (Alistarh et al. 2017, arXiv 1610.02132; algorithms.md §2.2).
//
//   Q_s(x)_j = N * sign(x_j) * xi_j / s,  r_j = s |x_j| / N,  l_j = floor(r_j),
//   xi_j = l_j + 1 with probability r_j - l_j, else l_j;  Q_s(0) = 0.
//   N = ||x||_2 (norm=l2, default: sqrt of reduce.h's sum_sq, rounded to float) or ||x||_inf (norm=linf, max_abs).
//   The encoder uses the float N it writes, so the decoder's N is exactly the encoder's. r_j is clamped to s
//   (float rounding can push s|x_j|/N a hair above s when x has one dominant coordinate).
//
// Randomness: element j's rounding uses u_j = CounterRng(ex.rng).u32(j) >> 8, a 24-bit integer, and rounds up
// iff u_j < (r_j - l_j) * 2^24 (compared in float, where both sides are exact). So P(round up) =
// ceil(frac * 2^24) / 2^24: given the float r_j, exactly unbiased whenever frac is a multiple of 2^-24, which holds
// for every r_j >= 1/2 (the ulp of r_j is then <= 2^-24); for r_j < 1/2 the bias is below 2^-24 levels, i.e.
// < N / (s 2^24) per coordinate (and r_j = (|x_j| * pre) * (s / (N * pre)) itself carries float rounding, a relative
// 2^-23 at most; pre = 2^64 only when N < 2^-64, else 1). Q(0) = 0 and level 0 is sent with sign 0.
//
// Speed (CPU): elements are processed in chunks of 1024. With AVX2 (detected at run time with
// __builtin_cpu_supports; the library is built without -march flags) Philox runs 32 blocks per step with four
// independent vectors in flight, fused with the quantizer so the draws never leave registers, and the codes are
// pre-combined four to a 64-bit word before the scalar packer; without AVX2 the portable loops do the same
// arithmetic. Every path computes the same bits (tests compare them with a scalar CounterRng reference), so a CUDA
// kernel evaluating CounterRng::u32(j) reproduces them.
//
// Constants (traits): unbiased; omega = min(d/s^2, sqrt(d)/s) for l2 (the QSGD paper's bound, as algorithms.md
// states it). For linf the level spacing is N/s with N = ||x||_inf <= ||x||_2 and the two-point variance of
// coordinate j is (N/s)^2 t(1-t) with t = r_j - l_j, which is <= (N/s)^2/4 and also <= (N/s)^2 r_j = (N/s)|x_j|;
// summing: E||Q(x)-x||^2 <= min(d N^2/(4s^2), N ||x||_1 / s) <= min(d/(4s^2), sqrt(d)/s) ||x||_2^2, which is the
// omega reported for linf. (The same argument gives min(d/(4s^2), sqrt(d)/s) for l2 as well; we keep the paper's
// constant there so that the reported omega matches algorithms.md.) Not deterministic (depends on Exec::rng).
//
// Wire (body; payload = 32-byte header + body):
//   coding=fixed (default): 32-bit float N, then per element a W = 1 + L bit code, L = ceil(log2(s + 1)),
//     code = sign | level << 1 (sign bit 1 = negative; level 0 is always written with sign 0), LSB-first.
//     body bits = 32 + d (1 + ceil(log2(s + 1))), body bytes = 4 + ceil(d W / 8).
//   coding=elias (chunked, so that chunks are coded and parsed independently, on the CPU and one GPU warp/thread per
//     chunk): the d elements are cut into C = ceil(d / B) chunks of B = detail::omega::kChunk = 16384 consecutive
//     elements (the last one shorter; elias_omega.h says why 16384). body = 32-bit float N | C u32 little-endian
//     END byte offsets of the chunk streams, relative to the start of the streams area (non-decreasing; the last
//     one = the streams area's length) | the C chunk streams, each starting on a byte boundary: Elias-omega codes
//     (elias_omega.h), LSB-first: omega(nnz_c + 1), then for each nonzero level of the chunk in index order
//     omega(gap) with gap = index in chunk - previous index in chunk (previous = -1 at the chunk start),
//     omega(level), sign bit (1 = negative); zero padded to a byte (an empty chunk is the one byte 0x00).
//     body bytes = 4 + 4C + sum of the stream bytes. Same levels as coding=fixed for the same key (same iterates;
//     only the coding differs).
//     max_encoded_bytes: 4 + 4C + sum over chunks of ceil(Lmax(n_c) / 8), with the worst case of a chunk of n
//     elements, every one nonzero at level s: Lmax(n) = L(n + 1) + n (L(s) + 2), L(n) = Elias-omega length of n.
//     Proof: L is non-decreasing and L(n) <= 3n - 2 (induction: for n >= 2, k = floor(log2 n), L(n) = k + 1 + L(k)
//     <= 4k - 1 <= 3 * 2^k - 2), so a nonzero with gap g costs L(g) + L(level) + 1 <= (L(s) + 2) g (L(s) >= 1),
//     and the gaps of one chunk sum to <= n; nnz_c <= n gives L(nnz_c + 1) <= L(n + 1).
//   Header: flags 0; param0 = s; param1 = norm (0 = l2, 1 = linf) | coding << 8 (0 = fixed, 1 = elias).
//
// Errors: encode: kOutOfRange when ||x||_2 overflows float32 (|x| near FLT_MAX). decode: kInvalidPayload for a
// header whose flags/params differ from this codec's config, a body length other than the exact one, a norm that
// is negative or not finite, a level above s, nonzero padding bits, and (elias) a body shorter than N and the
// table, a table entry below its predecessor or past the streams area, a last entry other than the streams area's
// length, and per chunk stream: a malformed or truncated code, nnz_c above the chunk length, an index outside the
// chunk, a level of 0, records that end before the stream's last byte. Decode validates the whole payload before it
// writes y, so a rejected payload leaves y untouched.
// CUDA (both codings): cuda/dense.cu (fixed) and cuda/qsgd_elias.cu (elias: the same quantizer writes codes to
// scratch, one warp per chunk writes its stream, a scan of the stream lengths gives the table; decode validates
// every chunk in one kernel and writes y in a second one only when the status word is clean). The elias encoder
// synchronises its stream once, to learn the exact body length for the header.
// Spec: canonical "qsgd:levels=S[,norm=linf][,coding=elias]"; bits=b is accepted as input and means
// s = 2^(b-1) - 1 (so sign + level take exactly b bits in the fixed coding), b in [2, 16].
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "builtin.h"
#include "gradzip/compressors/config.h"
#if GRADZIP_HAS_CUDA
#include "cuda/codecs_cuda.h"
#include "cuda/qsgd_elias_cuda.h"
#endif
#include "elias_omega.h"
#include "gradzip/compressors/reduce.h"
#include "gradzip/compressors/rng.h"
#include "philox_avx2.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define GZ_QSGD_X86_DISPATCH 1
#else
#define GZ_QSGD_X86_DISPATCH 0
#endif

namespace gradzip {
namespace detail {
bool cpu_has_avx2();
}  // namespace detail

namespace {

constexpr std::uint32_t kMaxLevels = 65535;
constexpr std::size_t kChunk = 1024;  // elements per inner block (multiple of 8 and of 32)

int level_bits(std::uint32_t s) {
  return index_bits(static_cast<std::uint64_t>(s) + 1);
}  // ceil(log2(s + 1))

/// Largest coding=elias body for d elements: N, the table, and every chunk's worst-case stream (see the comment).
std::size_t elias_max_body(std::size_t d, std::uint32_t s) {
  const std::uint64_t full = d / detail::omega::kChunk, rest = d % detail::omega::kChunk;
  std::uint64_t bytes =
      4 + 4 * detail::omega::chunks(d) + full * bits_to_bytes(detail::omega::chunk_max_bits(detail::omega::kChunk, s));
  if (rest != 0) bytes += bits_to_bytes(detail::omega::chunk_max_bits(rest, s));
  return static_cast<std::size_t>(bytes);
}

/// C6: maps the runtime code width W = 1 + ceil(log2(s + 1)) in [2, 17] to a template parameter.
template <class F>
Status dispatch_width(int w, F&& f) {
  switch (w) {
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 3:
      return f(std::integral_constant<int, 3>{});
    case 4:
      return f(std::integral_constant<int, 4>{});
    case 5:
      return f(std::integral_constant<int, 5>{});
    case 6:
      return f(std::integral_constant<int, 6>{});
    case 7:
      return f(std::integral_constant<int, 7>{});
    case 8:
      return f(std::integral_constant<int, 8>{});
    case 9:
      return f(std::integral_constant<int, 9>{});
    case 10:
      return f(std::integral_constant<int, 10>{});
    case 11:
      return f(std::integral_constant<int, 11>{});
    case 12:
      return f(std::integral_constant<int, 12>{});
    case 13:
      return f(std::integral_constant<int, 13>{});
    case 14:
      return f(std::integral_constant<int, 14>{});
    case 15:
      return f(std::integral_constant<int, 15>{});
    case 16:
      return f(std::integral_constant<int, 16>{});
    case 17:
      return f(std::integral_constant<int, 17>{});
    default:
      return Status::Internal("qsgd: code width ", w, " not in [2, 17]");
  }
}

/// Packs / unpacks groups of 8 W-bit codes = W bytes, LSB-first, with every shift a compile-time constant.
template <int W>
struct Codes {
  static constexpr int kWords = (8 * W + 63) / 64;
  static constexpr std::uint64_t kMask = (std::uint64_t{1} << W) - 1;

  template <int J>
  static inline void put(std::uint64_t* acc, std::uint64_t c) {
    constexpr int p = J * W, word = p / 64, off = p % 64;
    acc[word] |= c << off;
    if constexpr (off + W > 64) acc[word + 1] |= c >> (64 - off);
  }
  template <int J>
  static inline std::uint32_t get(const std::uint64_t* acc) {
    constexpr int p = J * W, word = p / 64, off = p % 64;
    std::uint64_t v = acc[word] >> off;
    if constexpr (off + W > 64) v |= acc[word + 1] << (64 - off);
    return static_cast<std::uint32_t>(v & kMask);
  }
  template <std::size_t... J>
  static inline void pack8(const std::uint32_t* c, std::uint64_t* acc, std::index_sequence<J...>) {
    (put<static_cast<int>(J)>(acc, c[J]), ...);
  }
  template <std::size_t... J>
  static inline void unpack8(const std::uint64_t* acc, std::uint32_t* c, std::index_sequence<J...>) {
    ((c[J] = get<static_cast<int>(J)>(acc)), ...);
  }

  /// Packs n codes (the first at a byte boundary) into ceil(n W / 8) bytes at out; `room` bytes are writable at
  /// out. Whole 64-bit words are stored where there is room (the next group overwrites the zero high bytes), so
  /// the compiler never splits a store into odd sizes.
  static void pack(const std::uint32_t* c, std::size_t n, std::uint8_t* out, std::size_t room) {
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8, out += W, room -= W) {
      std::uint64_t acc[kWords] = {};
      pack8(c + i, acc, std::make_index_sequence<8>{});
      if (room >= 8 * kWords) {
        for (int k = 0; k < kWords; ++k) store_le<std::uint64_t>(out + 8 * k, acc[k]);
      } else {
        store_bytes(acc, out, W);
      }
    }
    if (i < n) {
      std::uint32_t tail[8] = {};
      for (std::size_t j = 0; i + j < n; ++j) tail[j] = c[i + j];
      std::uint64_t acc[kWords] = {};
      pack8(tail, acc, std::make_index_sequence<8>{});
      store_bytes(acc, out, bits_to_bytes((n - i) * W));
    }
  }
  /// Unpacks n codes starting at a byte boundary; `avail` bytes are readable at in. Whole 64-bit words are loaded
  /// where they fit (a byte-wise copy into a word stalls store-to-load forwarding).
  static void unpack(const std::uint8_t* in, std::size_t n, std::uint32_t* c, std::size_t avail) {
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8, in += W, avail -= W) {
      std::uint64_t acc[kWords];
      if (avail >= 8 * kWords) {
        for (int k = 0; k < kWords; ++k) acc[k] = load_le<std::uint64_t>(in + 8 * k);
      } else {
        load_bytes(in, W, acc);
      }
      unpack8(acc, c + i, std::make_index_sequence<8>{});
    }
    if (i < n) {
      std::uint64_t acc[kWords];
      load_bytes(in, bits_to_bytes((n - i) * W), acc);
      std::uint32_t tail[8];
      unpack8(acc, tail, std::make_index_sequence<8>{});
      for (std::size_t j = 0; i + j < n; ++j) c[i + j] = tail[j];
    }
  }

  /// Packs `groups` groups of 8 codes given as pairs of 4-code words (quad[2g] = codes 8g .. 8g+3 at W-bit
  /// spacing, quad[2g+1] = codes 8g+4 .. 8g+7; see quantize_fused_avx2). Only for W <= 16 (4 W <= 64).
  static void pack_quads(const std::uint64_t* quad, std::size_t groups, std::uint8_t* out, std::size_t room) {
    static_assert(W <= 16, "quads hold 4 codes in 64 bits");
    for (std::size_t g = 0; g < groups; ++g, out += W, room -= W) {
      const std::uint64_t q0 = quad[2 * g], q1 = quad[2 * g + 1];
      std::uint64_t acc[kWords];
      if constexpr (4 * W == 64) {
        acc[0] = q0;
        acc[1] = q1;
      } else {
        acc[0] = q0 | (q1 << (4 * W));
        if constexpr (kWords == 2) acc[1] = q1 >> (64 - 4 * W);
      }
      if (room >= 8 * kWords) {
        for (int k = 0; k < kWords; ++k) store_le<std::uint64_t>(out + 8 * k, acc[k]);
      } else {
        store_bytes(acc, out, W);
      }
    }
  }

 private:
  static void store_bytes(const std::uint64_t* acc, std::uint8_t* out, std::size_t nbytes) {
    for (std::size_t b = 0; b < nbytes; ++b) out[b] = static_cast<std::uint8_t>(acc[b / 8] >> (8 * (b % 8)));
  }
  static void load_bytes(const std::uint8_t* in, std::size_t nbytes, std::uint64_t* acc) {
    for (int k = 0; k < kWords; ++k) acc[k] = 0;
    for (std::size_t b = 0; b < nbytes; ++b) acc[b / 8] |= static_cast<std::uint64_t>(in[b]) << (8 * (b % 8));
  }
};

/// Quantization parameters shared by the encoder's chunks: r = min((|x| * pre) * scale, s).
struct Quant {
  float pre = 1.0f;    // exact power-of-two pre-scale so that scale stays finite for tiny norms
  float scale = 0.0f;  // s / (N * pre)
  float sf = 1.0f;     // s as float
};

/// codes[i] = sign | level << 1 for the n elements of x whose draws are rnd[0..n) (sign 0 when the level is 0).
/// Plain float ops only (no FMA can be contracted), so every instruction set gives the same bits.
#define GZ_QSGD_QUANTIZE_BODY                                                                                       \
  const float pre = q.pre, scale = q.scale, sf = q.sf;                                                              \
  for (std::size_t i = 0; i < n; ++i) {                                                                             \
    std::uint32_t u;                                                                                                \
    std::memcpy(&u, x + i, 4);                                                                                      \
    const std::uint32_t sign = u >> 31;                                                                             \
    float r = std::fabs(x[i]) * pre * scale;                                                                        \
    r = r < sf ? r : sf; /* clamps rounding overshoot; NaN (unchecked input) becomes s instead of UB below */       \
    const std::int32_t l = static_cast<std::int32_t>(r); /* r in [0, s]: truncation == floor */                     \
    const float frac = r - static_cast<float>(l);        /* exact */                                                \
    const float u24 = static_cast<float>(static_cast<std::int32_t>(rnd[i] >> 8));                                   \
    const std::uint32_t lvl = static_cast<std::uint32_t>(l) + static_cast<std::uint32_t>(u24 < frac * 16777216.0f); \
    codes[i] = (lvl << 1) | (sign & static_cast<std::uint32_t>(lvl != 0));                                          \
  }

/// y (+)= value of each code: level * m with the sign bit applied (m = scale * N / s).
#define GZ_QSGD_APPLY_BODY                                                      \
  for (std::size_t i = 0; i < n; ++i) {                                         \
    float v = static_cast<float>(static_cast<std::int32_t>(codes[i] >> 1)) * m; \
    std::uint32_t b;                                                            \
    std::memcpy(&b, &v, 4);                                                     \
    b ^= codes[i] << 31;                                                        \
    std::memcpy(&v, &b, 4);                                                     \
    if (accumulate) {                                                           \
      y[i] += v;                                                                \
    } else {                                                                    \
      y[i] = v;                                                                 \
    }                                                                           \
  }

void quantize_generic(const float* x, std::size_t n, const Quant& q, const std::uint32_t* rnd, std::uint32_t* codes) {
  GZ_QSGD_QUANTIZE_BODY
}
template <bool accumulate>
void apply_generic(const std::uint32_t* codes, std::size_t n, float m, float* y) {
  GZ_QSGD_APPLY_BODY
}
#if GZ_QSGD_X86_DISPATCH
// The same loops compiled for AVX2 (8 lanes instead of SSE2's 4); chosen at run time.
__attribute__((target("avx2"))) void quantize_avx2(const float* x, std::size_t n, const Quant& q,
                                                   const std::uint32_t* rnd, std::uint32_t* codes) {
  GZ_QSGD_QUANTIZE_BODY
}
template <bool accumulate>
__attribute__((target("avx2"))) void apply_avx2(const std::uint32_t* codes, std::size_t n, float m, float* y) {
  GZ_QSGD_APPLY_BODY
}
/// Philox and the quantizer fused (the draws never leave registers): `runs` runs of 128 elements of x starting at
/// element `first` (a multiple of 4; the runs must not straddle a 2^32-block boundary). Same operations, in the
/// same order, as GZ_QSGD_QUANTIZE_BODY, so the same bits.
/// With `quads` non-null (code width w <= 16) it writes, instead of codes, each group of 8 codes as two 64-bit words
/// of 4 codes at w-bit spacing (pairs, then pairs of pairs, combined in registers), for Codes<W>::pack_quads.
template <bool kPre>
__attribute__((target("avx2"))) void quantize_fused_avx2(const float* x, std::size_t runs, std::uint64_t first,
                                                         const Quant& q, const RngKey& key, std::uint32_t* codes,
                                                         std::uint64_t* quads, int w) {
  detail::PhiloxAvx2Consts pk;
  detail::philox_avx2_consts(key, first >> 2, &pk);
  const __m256 pre = _mm256_set1_ps(q.pre), scale = _mm256_set1_ps(q.scale), sf = _mm256_set1_ps(q.sf);
  const __m256 two24 = _mm256_set1_ps(16777216.0f);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256i zero = _mm256_setzero_si256();
  const __m256i lo32 = _mm256_set1_epi64x(0xFFFFFFFFll);
  const __m128i sw = _mm_cvtsi32_si128(w), sw2 = _mm_cvtsi32_si128(2 * w);
  for (std::size_t g = 0; g < runs; ++g) {
    __m256i rw[16];
    detail::philox128_avx2((first >> 2) + 32 * g, pk, rw);
    for (int k = 0; k < 16; ++k) {
      const __m256 xv = _mm256_loadu_ps(x + 128 * g + 8 * k);
      const __m256i sign = _mm256_srli_epi32(_mm256_castps_si256(xv), 31);
      // (|x| * pre) * scale; pre == 1 (all but denormal-scale norms) skips the exact multiply by 1.
      const __m256 ax = _mm256_and_ps(xv, abs_mask);
      __m256 r = _mm256_mul_ps(kPre ? _mm256_mul_ps(ax, pre) : ax, scale);
      r = _mm256_min_ps(r, sf);  // r < s ? r : s (NaN -> s), as the scalar loop
      const __m256i l = _mm256_cvttps_epi32(r);
      const __m256 frac = _mm256_sub_ps(r, _mm256_cvtepi32_ps(l));
      const __m256 u24 = _mm256_cvtepi32_ps(_mm256_srli_epi32(rw[k], 8));
      const __m256i up = _mm256_castps_si256(_mm256_cmp_ps(u24, _mm256_mul_ps(frac, two24), _CMP_LT_OQ));
      const __m256i lvl = _mm256_sub_epi32(l, up);  // up is 0 or -1
      const __m256i sgn = _mm256_andnot_si256(_mm256_cmpeq_epi32(lvl, zero), sign);
      const __m256i code = _mm256_or_si256(_mm256_slli_epi32(lvl, 1), sgn);
      if (quads == nullptr) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + 128 * g + 8 * k), code);
        continue;
      }
      // 64-bit lane j holds codes (2j, 2j+1) as two 32-bit halves: make it c_2j | c_2j+1 << w, then join the two
      // lanes of each 128-bit half: c_4i | c_4i+1 << w | c_4i+2 << 2w | c_4i+3 << 3w in its low 64 bits.
      const __m256i pair =
          _mm256_or_si256(_mm256_and_si256(code, lo32), _mm256_sll_epi64(_mm256_srli_epi64(code, 32), sw));
      const __m256i quad = _mm256_or_si256(pair, _mm256_sll_epi64(_mm256_srli_si256(pair, 8), sw2));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(quads + 32 * g + 2 * k),
                       _mm256_castsi256_si128(_mm256_permute4x64_epi64(quad, 0x08)));
    }
  }
}
#endif
#undef GZ_QSGD_QUANTIZE_BODY
#undef GZ_QSGD_APPLY_BODY

bool use_avx2() {
  return detail::cpu_has_avx2();
}

/// Quantizes elements first .. first+n-1 (first a multiple of kChunk). Writes codes[0, n), except that with AVX2
/// and `quads` non-null the first *fused elements (whole runs of 128) go to quads (see quantize_fused_avx2) and
/// only codes[*fused, n) are written.
inline void quantize_chunk(const float* x, std::size_t n, std::uint64_t first, const Quant& q, const RngKey& key,
                           bool avx2, std::uint32_t* rnd, std::uint32_t* codes, std::uint64_t* quads = nullptr,
                           int w = 0, std::size_t* fused = nullptr) {
  if (fused) *fused = 0;
#if GZ_QSGD_X86_DISPATCH
  if (avx2) {
    // Whole runs of 128 elements fused; first is a multiple of kChunk, so runs start on a block and, as numel <
    // 2^32, never reach the 2^32-block boundary.
    const std::size_t runs = n / 128;
    if (q.pre == 1.0f) {
      quantize_fused_avx2<false>(x, runs, first, q, key, codes, quads, w);
    } else {
      quantize_fused_avx2<true>(x, runs, first, q, key, codes, quads, w);
    }
    const std::size_t done = runs * 128;
    if (quads && fused) *fused = done;
    if (done < n) {
      CounterRng(key).fill_u32(first + done, rnd, n - done);
      quantize_avx2(x + done, n - done, q, rnd, codes + done);
    }
    return;
  }
#endif
  (void)quads;
  (void)w;
  CounterRng(key).fill_u32(first, rnd, n);
  (void)avx2;
  quantize_generic(x, n, q, rnd, codes);
}

inline void apply_codes(const std::uint32_t* codes, std::size_t n, float m, float* y, bool accumulate, bool avx2) {
#if GZ_QSGD_X86_DISPATCH
  if (avx2) return accumulate ? apply_avx2<true>(codes, n, m, y) : apply_avx2<false>(codes, n, m, y);
#endif
  (void)avx2;
  accumulate ? apply_generic<true>(codes, n, m, y) : apply_generic<false>(codes, n, m, y);
}

/// The nonzero count of codes[0, n) and mask[w] bit j = (codes[64 w + j] != 0) for w < ceil(n / 64).
inline std::uint32_t nonzero_mask_generic(const std::uint32_t* codes, std::size_t n, std::uint64_t* mask,
                                          std::size_t from) {
  std::uint32_t nnz = 0;
  for (std::size_t w = from; w < (n + 63) / 64; ++w) {
    std::uint64_t m = 0;
    for (std::size_t j = 0; j < 64 && 64 * w + j < n; ++j) m |= static_cast<std::uint64_t>(codes[64 * w + j] != 0) << j;
    mask[w] = m;
    nnz += static_cast<std::uint32_t>(__builtin_popcountll(m));
  }
  return nnz;
}
#if GZ_QSGD_X86_DISPATCH
__attribute__((target("avx2,popcnt"))) std::uint32_t nonzero_mask_avx2(const std::uint32_t* codes, std::size_t n,
                                                                       std::uint64_t* mask) {
  const __m256i zero = _mm256_setzero_si256();
  std::uint32_t nnz = 0;
  const std::size_t whole = n / 64;
  for (std::size_t w = 0; w < whole; ++w) {
    std::uint64_t m = 0;
    for (int k = 0; k < 8; ++k) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + 64 * w + 8 * k));
      const unsigned z = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(v, zero))));
      m |= static_cast<std::uint64_t>(~z & 0xFFu) << (8 * k);
    }
    mask[w] = m;
    nnz += static_cast<std::uint32_t>(_mm_popcnt_u64(m));
  }
  return nnz + nonzero_mask_generic(codes, n, mask, whole);
}
#endif
inline std::uint32_t nonzero_mask(const std::uint32_t* codes, std::size_t n, std::uint64_t* mask, bool avx2) {
#if GZ_QSGD_X86_DISPATCH
  if (avx2) return nonzero_mask_avx2(codes, n, mask);
#endif
  (void)avx2;
  return nonzero_mask_generic(codes, n, mask, 0);
}

inline float signed_value(std::uint32_t level, std::uint32_t sign, float m) {
  float v = static_cast<float>(level) * m;
  std::uint32_t b;
  std::memcpy(&b, &v, 4);
  b ^= sign << 31;
  std::memcpy(&v, &b, 4);
  return v;
}

const char* norm_name(QsgdConfig::Norm n) {
  return n == QsgdConfig::Norm::kLinf ? "linf" : "l2";
}
const char* coding_name(QsgdConfig::Coding c) {
  return c == QsgdConfig::Coding::kElias ? "elias" : "fixed";
}

class Qsgd final : public Compressor {
 public:
  explicit Qsgd(const QsgdConfig& c) : cfg_(c), width_(1 + level_bits(c.levels)) {}

  std::string_view name() const override { return "qsgd"; }
  std::string spec() const override {
    std::string s = "qsgd:levels=" + std::to_string(cfg_.levels);
    if (cfg_.norm != QsgdConfig::Norm::kL2) s += std::string(",norm=") + norm_name(cfg_.norm);
    if (cfg_.coding != QsgdConfig::Coding::kFixed) s += std::string(",coding=") + coding_name(cfg_.coding);
    return s;
  }
  std::uint16_t codec_id() const override { return static_cast<std::uint16_t>(CodecId::kQsgd); }
  CompressorTraits traits(std::size_t numel) const override {
    const double d = static_cast<double>(numel), s = cfg_.levels;
    CompressorTraits t;
    t.kind = GuaranteeKind::kUnbiased;
    t.delta = 0.0;
    t.omega = cfg_.norm == QsgdConfig::Norm::kL2 ? std::min(d / (s * s), std::sqrt(d) / s)
                                                 : std::min(d / (4.0 * s * s), std::sqrt(d) / s);
    t.deterministic = false;
    t.linear = false;
    return t;
  }
  std::size_t max_encoded_bytes(std::size_t d) const override {
    std::uint64_t bits;
    if (cfg_.coding == QsgdConfig::Coding::kFixed) {
      bits = static_cast<std::uint64_t>(d) * static_cast<std::uint64_t>(width_);
    } else {
      return kHeaderBytes + elias_max_body(d, cfg_.levels);
    }
    return kHeaderBytes + 4 + bits_to_bytes(bits);
  }

#if GRADZIP_HAS_CUDA
  bool has_cuda() const override {
    return true;
  }
  std::size_t workspace_bytes(std::size_t numel, Device d) const override {
    if (d != Device::kCuda) return 0;
    return cfg_.coding == QsgdConfig::Coding::kFixed ? detail::cuda::qsgd_workspace(numel)
                                                     : detail::cuda::qsgd_elias_workspace(numel, cfg_.levels);
  }

 protected:
  Status encode_cuda(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader& h,
                     const Exec& ex) const override {
    h.flags = 0;
    h.param0 = cfg_.levels;
    h.param1 = param1();
    if (cfg_.coding == QsgdConfig::Coding::kElias)
      return detail::cuda::qsgd_elias_encode(cfg_.levels, cfg_.norm == QsgdConfig::Norm::kLinf, x, body, body_bytes,
                                             ex);
    return detail::cuda::qsgd_encode(cfg_.levels, width_, cfg_.norm == QsgdConfig::Norm::kLinf, x, body, body_bytes,
                                     ex);
  }
  Status decode_cuda(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                     const Exec& ex) const override {
    PayloadHeader e = h;  // flags: the wrapper bits in h.flags; this codec sets no flags of its own
    e.param0 = cfg_.levels;
    e.param1 = param1();
    if (cfg_.coding == QsgdConfig::Coding::kElias) {
      // Variable length: the kernels check every header field but body_bytes against e, and body_bytes against the
      // table and the buffer.
      e.body_bytes = 0;
      return detail::cuda::qsgd_elias_decode(cfg_.levels, e, body, y, mode, scale, ex);
    }
    e.body_bytes = static_cast<std::uint32_t>(4 + bits_to_bytes(static_cast<std::uint64_t>(y.size()) * width_));
    return detail::cuda::qsgd_decode(cfg_.levels, width_, e, body, y, mode, scale, ex);
  }
#endif

 protected:
  // The norm is computed anyway and is non-finite iff x holds Inf/NaN (sum_sq accumulates in double, which finite
  // floats cannot overflow; max_abs orders Inf/NaN above every finite value), so the base class's NaN/Inf pre-scan
  // is skipped and the offending index is looked up only then.
  bool detects_nonfinite() const override {
    return true;
  }

  Status encode_cpu(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader& h,
                    const Exec& ex) const override {
    const std::size_t d = x.size();
    double norm;
    if (cfg_.norm == QsgdConfig::Norm::kL2) {
      norm = std::sqrt(sum_sq(x));
    } else {
      norm = max_abs(x);
    }
    if (!std::isfinite(norm) && ex.check_finite) GZ_RETURN_IF_ERROR(check_finite(x, "qsgd.encode"));
    const float nf = static_cast<float>(norm);
    if (std::isinf(nf))
      return Status::OutOfRange("qsgd.encode: the ", norm_name(cfg_.norm), " norm ", norm,
                                " exceeds the float32 range of the wire format; scale the input down");
    Quant q;
    q.sf = static_cast<float>(cfg_.levels);
    if (nf > 0.0f) {
      // s / N overflows float for N < s / FLT_MAX; pre-scaling |x| and N by 2^64 (exact) keeps it finite.
      if (nf < 0x1p-64f) q.pre = 0x1p64f;
      q.scale = q.sf / (nf * q.pre);
    }
    h.flags = 0;
    h.param0 = cfg_.levels;
    h.param1 = param1();
    store_le<float>(body.data(), nf);
    std::uint32_t rnd[kChunk], codes[kChunk];
    std::uint64_t quads[kChunk / 4];
    const bool avx2 = use_avx2();
    if (cfg_.coding == QsgdConfig::Coding::kFixed) {
      std::uint8_t* out = body.data() + 4;
      const std::size_t room = body.size() - 4;
      GZ_RETURN_IF_ERROR(dispatch_width(width_, [&](auto wc) {
        constexpr int W = decltype(wc)::value;
        std::uint64_t* qd = W <= 16 ? quads : nullptr;
        for (std::size_t c0 = 0; c0 < d; c0 += kChunk) {
          const std::size_t n = std::min(kChunk, d - c0);
          std::size_t fused = 0;
          quantize_chunk(x.data() + c0, n, c0, q, ex.rng, avx2, rnd, codes, qd, W, &fused);
          if constexpr (W <= 16) Codes<W>::pack_quads(quads, fused / 8, out + c0 / 8 * W, room - c0 / 8 * W);
          const std::size_t at = (c0 + fused) / 8 * W;
          Codes<W>::pack(codes + fused, n - fused, out + at, room - at);
        }
        return Status::Ok();
      }));
      *body_bytes = 4 + bits_to_bytes(static_cast<std::uint64_t>(d) * width_);
      return Status::Ok();
    }
    // Elias, chunked: per chunk of B elements one quantize pass into codes[] (sub-blocks of kChunk, the fixed
    // coding's draws), count the nonzeros, write the chunk's stream and its end offset.
    const std::size_t nchunks = static_cast<std::size_t>(detail::omega::chunks(d));
    if (body.size() < 4 + 4 * nchunks)
      return Status::Internal("qsgd.encode: body buffer of ", body.size(), " bytes has no room for the table");
    std::uint8_t* table = body.data() + 4;
    std::uint8_t* streams = table + 4 * nchunks;
    const std::size_t room = body.size() - 4 - 4 * nchunks;
    static_assert(detail::omega::kChunk % kChunk == 0, "chunks hold whole quantizer blocks");
    std::uint32_t chunk_codes[detail::omega::kChunk];
    std::uint64_t mask[detail::omega::kChunk / 64];
    std::size_t pos = 0;
    for (std::size_t c = 0; c < nchunks; ++c) {
      const std::size_t c0 = c * detail::omega::kChunk;
      const std::size_t n = std::min<std::size_t>(detail::omega::kChunk, d - c0);
      for (std::size_t b0 = 0; b0 < n; b0 += kChunk)
        quantize_chunk(x.data() + c0 + b0, std::min(kChunk, n - b0), c0 + b0, q, ex.rng, avx2, rnd, chunk_codes + b0);
      const std::uint32_t nnz = nonzero_mask(chunk_codes, n, mask, avx2);
      const std::size_t worst = bits_to_bytes(detail::omega::chunk_max_bits(n, cfg_.levels));
      if (room - pos < worst)
        return Status::Internal("qsgd.encode: chunk ", c, " may need ", worst, " bytes but only ", room - pos,
                                " are left of the bound");
      // omega::write_chunk's stream (a test compares the two), visiting only the nonzeros through the mask.
      detail::omega::Writer w(streams + pos);
      std::uint64_t hc = 0;
      const int hl = detail::omega::code(static_cast<std::uint64_t>(nnz) + 1, &hc);
      w.put(hc, hl);
      std::uint32_t next = 0;
      for (std::size_t wi = 0; wi < (n + 63) / 64; ++wi) {
        for (std::uint64_t m = mask[wi]; m != 0; m &= m - 1) {
          const std::uint32_t i = static_cast<std::uint32_t>(64 * wi) + static_cast<std::uint32_t>(__builtin_ctzll(m));
          std::uint64_t rec = 0;
          const int rl = detail::omega::record(i + 1 - next, chunk_codes[i], &rec);
          w.put(rec, rl);
          next = i + 1;
        }
      }
      pos += w.finish();
      store_le<std::uint32_t>(table + 4 * c, static_cast<std::uint32_t>(pos));
    }
    *body_bytes = 4 + 4 * nchunks + pos;
    return Status::Ok();
  }

  Status decode_cpu(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                    const Exec&) const override {
    if ((h.flags & ~kFlagScaledWrapper) != 0)
      return Status::InvalidPayload("qsgd.decode: unexpected header flags 0x", std::hex, h.flags);
    if (h.param0 != cfg_.levels)
      return Status::InvalidPayload("qsgd.decode: payload has levels=", h.param0,
                                    " but this codec has levels=", cfg_.levels);
    if (h.param1 != param1())
      return Status::InvalidPayload("qsgd.decode: payload norm/coding field 0x", std::hex, h.param1,
                                    " does not match this codec (", norm_name(cfg_.norm), ", ",
                                    coding_name(cfg_.coding), " = 0x", param1(), ")");
    if (body.size() < 4) return Status::InvalidPayload("qsgd.decode: body of ", body.size(), " bytes has no norm");
    const float nf = load_le<float>(body.data());
    if (!(nf >= 0.0f) || std::isinf(nf))
      return Status::InvalidPayload("qsgd.decode: norm ", nf, " is not a finite non-negative number");
    const float m = scale * (nf / static_cast<float>(cfg_.levels));
    const bool acc = mode == DecodeMode::kAccumulate;
    if (cfg_.coding == QsgdConfig::Coding::kFixed) return decode_fixed(body, y, m, acc);
    return decode_elias(body, y, m, acc);
  }

 private:
  std::uint32_t param1() const {
    return static_cast<std::uint32_t>(cfg_.norm) | (static_cast<std::uint32_t>(cfg_.coding) << 8);
  }

  Status decode_fixed(ConstBytes body, Span<float> y, float m, bool acc) const {
    const std::size_t d = y.size();
    const std::uint64_t bits = static_cast<std::uint64_t>(d) * width_;
    const std::size_t want = 4 + bits_to_bytes(bits);
    if (body.size() != want)
      return Status::InvalidPayload("qsgd.decode: body of ", body.size(), " bytes, expected ", want, " for numel=", d,
                                    " at ", width_, " bits per value");
    const std::uint8_t* in = body.data() + 4;
    const std::size_t avail = want - 4;
    if (bits % 8 != 0 && (in[want - 5] >> (bits % 8)) != 0)
      return Status::InvalidPayload("qsgd.decode: nonzero padding bits after the last code");
    const std::uint32_t s = cfg_.levels;
    const bool need_level_check = ((std::uint32_t{1} << (width_ - 1)) - 1) != s;
    std::uint32_t codes[kChunk];
    const bool avx2 = use_avx2();
    return dispatch_width(width_, [&](auto wc) -> Status {
      constexpr int W = decltype(wc)::value;
      if (need_level_check) {  // a level field can hold values above s: validate everything before writing y
        for (std::size_t c0 = 0; c0 < d; c0 += kChunk) {
          const std::size_t n = std::min(kChunk, d - c0);
          Codes<W>::unpack(in + c0 / 8 * W, n, codes, avail - c0 / 8 * W);
          // Levels are < 2^16, so a signed compare is exact and vectorises without SSE4.1's unsigned max.
          std::int32_t bad = 0;
          for (std::size_t i = 0; i < n; ++i)
            bad |= static_cast<std::int32_t>(static_cast<std::int32_t>(codes[i] >> 1) > static_cast<std::int32_t>(s));
          if (bad) {
            for (std::size_t i = 0; i < n; ++i) {
              if ((codes[i] >> 1) > s)
                return Status::InvalidPayload("qsgd.decode: level ", codes[i] >> 1, " at index ", c0 + i,
                                              " exceeds levels=", s);
            }
          }
        }
      }
      for (std::size_t c0 = 0; c0 < d; c0 += kChunk) {
        const std::size_t n = std::min(kChunk, d - c0);
        Codes<W>::unpack(in + c0 / 8 * W, n, codes, avail - c0 / 8 * W);
        apply_codes(codes, n, m, y.data() + c0, acc, avx2);
      }
      return Status::Ok();
    });
  }

  /// Validates the chunked Elias body (table and every chunk stream) without writing anything.
  Status validate_elias(ConstBytes body, std::size_t d) const {
    const std::size_t nchunks = static_cast<std::size_t>(detail::omega::chunks(d));
    if (body.size() < 4 + 4 * nchunks)
      return Status::InvalidPayload("qsgd.decode: body of ", body.size(), " bytes is shorter than the norm and the ",
                                    nchunks, "-entry chunk table (", 4 + 4 * nchunks, " bytes) for numel=", d);
    const std::uint8_t* table = body.data() + 4;
    const std::uint8_t* streams = table + 4 * nchunks;
    const std::size_t len = body.size() - 4 - 4 * nchunks;
    if (nchunks == 0 && len != 0)
      return Status::InvalidPayload("qsgd.decode: ", len, " trailing bytes after an empty Elias body");
    std::size_t start = 0;
    for (std::size_t c = 0; c < nchunks; ++c) {
      const std::size_t end = load_le<std::uint32_t>(table + 4 * c);
      if (end < start || end > len)
        return Status::InvalidPayload("qsgd.decode: chunk table entry ", c, " = ", end, " is not in [", start, ", ",
                                      len, "] (previous end, streams area length)");
      if (c + 1 == nchunks && end != len)
        return Status::InvalidPayload("qsgd.decode: the last chunk ends at byte ", end, " but the streams area has ",
                                      len, " bytes");
      const std::size_t c0 = c * detail::omega::kChunk;
      const std::uint32_t n = static_cast<std::uint32_t>(std::min<std::size_t>(detail::omega::kChunk, d - c0));
      std::uint32_t k = 0;
      const detail::omega::ChunkError e = detail::omega::parse_chunk(
          streams + start, end - start, n, cfg_.levels, [](std::uint32_t, std::uint32_t, std::uint32_t) {}, &k);
      if (e != detail::omega::ChunkError::kOk) return chunk_error(e, c, k, end - start, n);
      start = end;
    }
    return Status::Ok();
  }

  Status chunk_error(detail::omega::ChunkError e, std::size_t c, std::uint32_t k, std::size_t bytes,
                     std::uint32_t n) const {
    using E = detail::omega::ChunkError;
    const char* what = e == E::kBadCount    ? "a malformed nonzero count or one above the chunk length"
                       : e == E::kBadRecord ? "a malformed or truncated Elias code in a nonzero"
                       : e == E::kBadIndex  ? "an index outside the chunk"
                       : e == E::kBadLevel  ? "a level outside [1, levels]"
                       : e == E::kLength    ? "codes that end before the stream's last byte"
                                            : "nonzero padding bits";
    const bool rec = e == E::kBadRecord || e == E::kBadIndex || e == E::kBadLevel;
    const std::string where = rec ? " at nonzero " + std::to_string(k) : std::string();
    return Status::InvalidPayload("qsgd.decode: Elias chunk ", c, " (", n, " elements, ", bytes, " stream bytes) has ",
                                  what, where, " (levels=", cfg_.levels, ")");
  }

  Status decode_elias(ConstBytes body, Span<float> y, float m, bool acc) const {
    const std::size_t d = y.size();
    GZ_RETURN_IF_ERROR(validate_elias(body, d));
    if (!acc) std::memset(y.data(), 0, d * sizeof(float));
    const std::size_t nchunks = static_cast<std::size_t>(detail::omega::chunks(d));
    const std::uint8_t* table = body.data() + 4;
    const std::uint8_t* streams = table + 4 * nchunks;
    std::size_t start = 0;
    for (std::size_t c = 0; c < nchunks; ++c) {
      const std::size_t end = load_le<std::uint32_t>(table + 4 * c);
      const std::size_t c0 = c * detail::omega::kChunk;
      const std::uint32_t n = static_cast<std::uint32_t>(std::min<std::size_t>(detail::omega::kChunk, d - c0));
      float* yc = y.data() + c0;
      std::uint32_t k = 0;
      (void)detail::omega::parse_chunk(
          streams + start, end - start, n, cfg_.levels,
          [&](std::uint32_t i, std::uint32_t level, std::uint32_t sign) { yc[i] += signed_value(level, sign, m); }, &k);
      start = end;
    }
    return Status::Ok();
  }

  QsgdConfig cfg_;
  int width_;  // bits per value in the fixed coding
};

}  // namespace

StatusOr<std::unique_ptr<Compressor>> make_qsgd(const QsgdConfig& c) {
  if (c.levels < 1 || c.levels > kMaxLevels)
    return Status::InvalidArgument("qsgd: levels=", c.levels, " must be in [1, ", kMaxLevels, "]");
  if (c.norm != QsgdConfig::Norm::kL2 && c.norm != QsgdConfig::Norm::kLinf)
    return Status::InvalidArgument("qsgd: norm=", static_cast<int>(c.norm), " is not l2 (0) or linf (1)");
  if (c.coding != QsgdConfig::Coding::kFixed && c.coding != QsgdConfig::Coding::kElias)
    return Status::InvalidArgument("qsgd: coding=", static_cast<int>(c.coding), " is not fixed (0) or elias (1)");
  return std::unique_ptr<Compressor>(new Qsgd(c));
}

namespace detail {
StatusOr<CompressorPtr> qsgd_from_params(const Params& p) {
  QsgdConfig c;
  if (p.has("levels") && p.has("bits"))
    return Status::InvalidArgument("qsgd: give levels= or bits=, not both (bits=b means levels=2^(b-1)-1)");
  if (p.has("bits")) {
    GZ_ASSIGN_OR_RETURN(std::uint64_t b, p.get_uint("bits", 0));
    if (b < 2 || b > 16)
      return Status::InvalidArgument("qsgd: bits=", b, " must be in [2, 16] (levels = 2^(bits-1) - 1 >= 1)");
    c.levels = (std::uint32_t{1} << (b - 1)) - 1;
  } else {
    GZ_ASSIGN_OR_RETURN(std::uint64_t s, p.get_uint("levels", c.levels));
    if (s < 1 || s > kMaxLevels)
      return Status::InvalidArgument("qsgd: levels=", s, " must be in [1, ", kMaxLevels, "]");
    c.levels = static_cast<std::uint32_t>(s);
  }
  GZ_ASSIGN_OR_RETURN(std::string norm, p.get_choice("norm", "l2", {"l2", "linf"}));
  GZ_ASSIGN_OR_RETURN(std::string coding, p.get_choice("coding", "fixed", {"fixed", "elias"}));
  c.norm = norm == "linf" ? QsgdConfig::Norm::kLinf : QsgdConfig::Norm::kL2;
  c.coding = coding == "elias" ? QsgdConfig::Coding::kElias : QsgdConfig::Coding::kFixed;
  GZ_RETURN_IF_ERROR(p.finish("qsgd", kQsgdParams));
  return make_qsgd(c);
}
}  // namespace detail
}  // namespace gradzip
