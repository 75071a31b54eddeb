// topk: exact Top-K by magnitude (algorithms.md §2.2 "Top-K", example in §2.3).
//
//   C(x)_j = x_j for the k indices of largest |x_j|, 0 elsewhere. Ties break on the LOWER index, so the
//   selection is the k largest (|x_j|, -j) pairs in lexicographic order: deterministic and unique for any
//   input (all-equal values, zeros, k = d). k = cfg.k, or ceil(ratio * d) clamped to [1, d].
//   Contractive with delta = k/d (worst case; the actual error is sum_{j not kept} x_j^2). Not unbiased.
//
// Wire body (d = numel, b = index_bits(d) = ceil(log2 d)), bit-packed LSB-first with BitWriter:
//   index form   k (b + 32) bits: for each kept element in ascending index order, its index in b bits then
//                its fp32 bit pattern in 32 bits;
//   bitmap form  d + 32 k bits: a d-bit membership bitmap (bit j = element j kept), then the k fp32 values in
//                ascending index order.
//   The bitmap form is used only when strictly cheaper (d < k b); on a tie the index form is used. The form is a
//   function of (d, k), and decode rejects a payload in the other form.
//   body_bytes = ceil(bits / 8); the trailing pad bits are zero.
// Header: flags bit 0 = bitmap form (no other bit may be set); param0 = k; param1 = 0.
//
// Selection algorithm (CPU, one thread): magnitudes are compared as integers (|x| bits = bits & 0x7fffffff is
// monotone in |x| for finite floats); a candidate packs (|x| bits, 2^32 - 1 - j, sign) into 64 bits, so larger =
// preferred and all candidates are distinct. A threshold t a little below the estimated k-th largest |x| comes
// from a deterministic strided sample of kSample magnitudes. One pass (a vectorised test per group of 16, then a
// branch-free compaction of the groups that hit) collects S = {j : |x_j| > t} in index order. If |S| >= k,
// nth_element among S finds the k-th largest candidate and a filter pass keeps those above it, already in
// ascending index order. If |S| < k, the lowest-index k - |S| elements with |x_j| = t complete the set (this
// makes ties, zeros and all-equal vectors cheap); if there are not enough, t is lowered (finally to 0, where
// every element is in S or a tie). The result never depends on the sample, only the amount of work does.
// Measured (16M gaussian floats, 1%, one core, this repo's dev box): ~14 ms vs ~5 ms for memcpy of the buffer.
//
// Determinism: deterministic (bit-identical across runs; does not use Exec::rng). Thread-safety: const.
// Non-finite inputs (only when Exec::check_finite = false) are ordered by their bit patterns (NaN above Inf);
// the output is then meaningless but the call is well defined.
// Errors: kInvalidArgument for a bad config (k = 0, ratio not in (0, 1], both or neither given) and for
// k > numel ("topk: k=5 must be in [1, numel=3]"); kInvalidPayload from decode for a wrong flag, k, body length,
// an index >= d, non-increasing indices or a bitmap whose popcount differs from k.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>

#include "builtin.h"
#include "gradzip/compressors/config.h"
#if GRADZIP_HAS_CUDA
#include "cuda/codecs_cuda.h"
#endif

namespace gradzip {
namespace {

constexpr std::uint32_t kFlagBitmap = 1u;
constexpr std::size_t kSample = 4096;  // sampled magnitudes used to estimate the threshold
constexpr std::size_t kGroup = 16;     // elements tested together (vectorised) before the scalar collect

inline std::uint32_t load_bits(const float* p) {
  std::uint32_t u;
  std::memcpy(&u, p, 4);
  return u;
}
inline float bits_float(std::uint32_t u) {
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}
inline std::int32_t abs_key(const float* p) {
  return static_cast<std::int32_t>(load_bits(p) & 0x7fffffffu);
}

// A candidate packs (|x| bits: 31) (2^32 - 1 - j: 32) (sign bit: 1) into 64 bits, so that comparing candidates
// as integers orders them by |x| descending then index ascending (the sign never decides: the first 63 bits
// are unique), and the value and index can be recovered without touching x again.
inline std::uint64_t composite(std::uint32_t bits, std::size_t i) {
  return (static_cast<std::uint64_t>(bits & 0x7fffffffu) << 33) |
         (static_cast<std::uint64_t>(0xffffffffu - static_cast<std::uint32_t>(i)) << 1) | (bits >> 31);
}
inline std::uint32_t composite_index(std::uint64_t c) {
  return 0xffffffffu - static_cast<std::uint32_t>((c >> 1) & 0xffffffffu);
}
inline std::uint32_t composite_value_bits(std::uint64_t c) {
  return static_cast<std::uint32_t>(c >> 33) | (static_cast<std::uint32_t>(c & 1u) << 31);
}

/// True when pred(|x| bits) holds for any of x[0..kGroup). A fixed-trip-count OR reduction, which vectorises.
template <class Pred>
inline bool any_in_group(const float* x, Pred pred) {
  std::int32_t hit = 0;
  // Without this GCC unrolls the 16 iterations into scalar code before its loop vectoriser runs.
#pragma GCC unroll 1
  for (std::size_t j = 0; j < kGroup; ++j) hit |= -static_cast<std::int32_t>(pred(abs_key(x + j)));
  return hit != 0;
}

/// Replaces `out` by the candidates (see composite()) of the j in [0, d) with pred(|x_j| bits), ascending j,
/// stopping once `limit` are found. `hint` sizes the first allocation. Groups of kGroup elements are tested with
/// a vectorised reduction; groups with a hit are compacted branch-free (every element is stored, the write
/// position advances only on a hit).
template <class Pred>
void collect(const float* x, std::size_t d, Pred pred, std::size_t limit, std::size_t hint,
             std::vector<std::uint64_t>& out) {
  out.resize(std::max(hint, 2 * kGroup));
  std::size_t n = 0;
  std::size_t b = 0;
  for (; b + kGroup <= d && n < limit; b += kGroup) {
    if (!any_in_group(x + b, pred)) continue;
    if (n + kGroup > out.size()) out.resize(2 * out.size());
    std::uint64_t* o = out.data();
    for (std::size_t j = 0; j < kGroup; ++j) {
      const std::uint32_t u = load_bits(x + b + j);
      o[n] = composite(u, b + j);
      n += static_cast<std::size_t>(pred(static_cast<std::int32_t>(u & 0x7fffffffu)));
    }
  }
  if (n + kGroup > out.size()) out.resize(n + kGroup);
  for (; b < d && n < limit; ++b) {
    const std::uint32_t u = load_bits(x + b);
    out[n] = composite(u, b);
    n += static_cast<std::size_t>(pred(static_cast<std::int32_t>(u & 0x7fffffffu)));
  }
  out.resize(std::min(n, limit));
}

/// The exact Top-k of x[0..d) (|x| desc, index asc), written to `kept` as candidates (see composite()) in
/// ascending index order. 1 <= k <= d.
///
/// With a threshold t: S = {j : |x_j| > t} (strict) and T = {j : |x_j| = t} (ties).
///  - |S| >= k: the Top-k lies in S; nth_element among S finds it.
///  - |S| < k <= |S| + |T|: the Top-k is S plus the lowest-index k - |S| ties (no selection needed; this is what
///    makes heavy ties, zeros and all-equal vectors cheap).
///  - |S| + |T| < k: t was too high; lower it. t = 0 gives |S| + |T| = d >= k, so this terminates.
void topk_select(const float* x, std::size_t d, std::size_t k, std::vector<std::uint64_t>& kept) {
  kept.clear();
  if (k >= d) {
    kept.resize(d);
    for (std::size_t i = 0; i < d; ++i) kept[i] = composite(load_bits(x + i), i);
    return;
  }
  // Threshold from a deterministic strided sample. With q = k * kSample / d the expected number of sampled
  // values at or above the k-th largest, the (q + 3 sqrt(q) + 4)-th largest sampled value is below it with
  // high probability (3 binomial standard deviations), so S is a little larger than k.
  std::vector<std::int32_t> sample;
  std::int32_t t = 0;
  std::size_t j = kSample;
  if (d > 2 * kSample) {
    sample.resize(kSample);
    const std::size_t stride = d / kSample;
    for (std::size_t s = 0; s < kSample; ++s) sample[s] = abs_key(x + s * stride);
    const double q = static_cast<double>(k) * static_cast<double>(kSample) / static_cast<double>(d);
    j = static_cast<std::size_t>(q + 3.0 * std::sqrt(q) + 4.0);
    if (j < kSample) {
      std::nth_element(sample.begin(), sample.begin() + static_cast<std::ptrdiff_t>(j), sample.end(),
                       std::greater<std::int32_t>());
      t = sample[j];
    }
  }
  std::vector<std::uint64_t> strict, ties;
  for (;;) {
    const double expect = static_cast<double>(j + 1) * static_cast<double>(d) / kSample * 1.25 + 64.0;
    const std::size_t hint = static_cast<std::size_t>(std::min(expect, static_cast<double>(d)));
    const auto above = [t](std::int32_t key) { return key > t; };
    collect(x, d, above, d, hint, strict);
    if (strict.size() >= k) break;
    const std::size_t need = k - strict.size();
    const auto tied = [t](std::int32_t key) { return key == t; };
    collect(x, d, tied, need, need + kGroup, ties);
    if (ties.size() == need || t == 0) {  // t == 0: S + T is everything, so ties.size() == need
      kept.resize(strict.size() + ties.size());
      std::merge(strict.begin(), strict.end(), ties.begin(), ties.end(), kept.begin(),
                 [](std::uint64_t a, std::uint64_t b) { return composite_index(a) < composite_index(b); });
      return;
    }
    // The sample was unrepresentative: lower the threshold.
    const std::int32_t old = t;
    while (t == old && t != 0) {
      j = 2 * j + 16;
      if (j >= kSample) {
        t = 0;
      } else {
        std::nth_element(sample.begin(), sample.begin() + static_cast<std::ptrdiff_t>(j), sample.end(),
                         std::greater<std::int32_t>());
        t = sample[j];
      }
    }
  }
  if (strict.size() == k) {
    kept.swap(strict);
    return;
  }
  // Exact selection in S: the k-th largest candidate (all distinct in their top 63 bits), then keep those >= it
  // in S's (ascending index) order.
  std::vector<std::uint64_t> scratch(strict);
  std::nth_element(scratch.begin(), scratch.begin() + static_cast<std::ptrdiff_t>(k - 1), scratch.end(),
                   std::greater<std::uint64_t>());
  const std::uint64_t kth = scratch[k - 1];
  kept.reserve(k);
  for (std::uint64_t c : strict) {
    if (c >= kth) kept.push_back(c);
  }
}

std::uint64_t index_form_bits(std::uint64_t d, std::uint64_t k) {
  return k * (32u + index_bits(d));
}
std::uint64_t bitmap_form_bits(std::uint64_t d, std::uint64_t k) {
  return d + 32u * k;
}
bool use_bitmap(std::uint64_t d, std::uint64_t k) {
  return bitmap_form_bits(d, k) < index_form_bits(d, k);
}

class TopK final : public Compressor, public Sparsifier {
 public:
  explicit TopK(const TopKConfig& c) : cfg_(c) {}

  std::string_view name() const override { return "topk"; }
  std::string spec() const override { return "topk:" + detail::ratio_or_k_spec(cfg_.ratio, cfg_.k); }
  std::uint16_t codec_id() const override { return static_cast<std::uint16_t>(CodecId::kTopK); }
  CompressorTraits traits(std::size_t numel) const override {
    CompressorTraits t;
    t.kind = GuaranteeKind::kContractive;
    const std::size_t k = std::min(k_for(numel), numel);
    t.delta = numel == 0 ? 1.0 : static_cast<double>(k) / static_cast<double>(numel);
    t.omega = 0.0;
    t.deterministic = true;
    t.linear = false;
    return t;
  }
  std::size_t max_encoded_bytes(std::size_t numel) const override {
    const std::uint64_t k = std::min(k_for(numel), numel);
    return kHeaderBytes + bits_to_bytes(std::min(index_form_bits(numel, k), bitmap_form_bits(numel, k)));
  }

  std::size_t k_for(std::size_t numel) const override { return cfg_.k > 0 ? cfg_.k : k_from_ratio(cfg_.ratio, numel); }
  Status select(Span<const float> x, std::vector<std::uint32_t>& idx, float* value_scale,
                const Exec& ex) const override {
    GZ_RETURN_IF_ERROR(check(DType::kF32, x.size()));
    if (ex.device != Device::kCpu) return Status::Unsupported("topk.select: only host (CPU) inputs are supported");
    if (x.data() == nullptr) return Status::InvalidArgument("topk.select: x is null");
    std::vector<std::uint64_t> kept;
    topk_select(x.data(), x.size(), k_for(x.size()), kept);
    idx.resize(kept.size());
    for (std::size_t i = 0; i < kept.size(); ++i) idx[i] = composite_index(kept[i]);
    if (value_scale) *value_scale = 1.0f;
    return Status::Ok();
  }

#if GRADZIP_HAS_CUDA
  bool has_cuda() const override {
    return true;
  }
  std::size_t workspace_bytes(std::size_t numel, Device d) const override {
    return d == Device::kCuda ? detail::cuda::topk_workspace(numel, std::min(k_for(numel), numel)) : 0;
  }

 protected:
  Status encode_cuda(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader& h,
                     const Exec& ex) const override {
    const std::size_t k = k_for(x.size());
    h.flags = use_bitmap(x.size(), k) ? kFlagBitmap : 0u;
    h.param0 = static_cast<std::uint32_t>(k);
    h.param1 = 0;
    return detail::cuda::topk_encode(k, x, body, body_bytes, ex);
  }
  Status decode_cuda(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                     const Exec& ex) const override {
    const std::size_t d = y.size(), k = k_for(d);
    PayloadHeader e = h;
    const bool bitmap = use_bitmap(d, k);
    e.flags = h.flags | (bitmap ? kFlagBitmap : 0u);  // the wrapper bits in h.flags, then its own
    e.param0 = static_cast<std::uint32_t>(k);
    e.body_bytes = static_cast<std::uint32_t>(bits_to_bytes(bitmap ? bitmap_form_bits(d, k) : index_form_bits(d, k)));
    return detail::cuda::topk_decode(k, e, body, y, mode, scale, ex);
  }
#endif

 protected:
  Status check_numel(std::size_t numel) const override {
    if (cfg_.k > numel) return Status::InvalidArgument("topk: k=", cfg_.k, " must be in [1, numel=", numel, "]");
    return Status::Ok();
  }

  Status encode_cpu(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader& h,
                    const Exec&) const override {
    const std::size_t d = x.size();
    const std::size_t k = k_for(d);
    std::vector<std::uint64_t> kept;
    topk_select(x.data(), d, k, kept);
    const bool bitmap = use_bitmap(d, k);
    const std::size_t expect = bits_to_bytes(bitmap ? bitmap_form_bits(d, k) : index_form_bits(d, k));
    if (kept.size() != k || body.size() < expect)
      return Status::Internal("topk.encode: selected ", kept.size(), " of k=", k, "; body buffer ", body.size(),
                              " bytes, need ", expect);
    WordPacker w(body.data());
    if (bitmap) {
      std::size_t p = 0;
      for (std::size_t lo = 0; lo < d; lo += 32) {
        const std::size_t hi = std::min(d, lo + 32);
        std::uint32_t word = 0;
        for (; p < k && composite_index(kept[p]) < hi; ++p) word |= 1u << (composite_index(kept[p]) - lo);
        w.put(word, static_cast<int>(hi - lo));
      }
      for (std::uint64_t c : kept) w.put(composite_value_bits(c), 32);
    } else {
      const int ib = index_bits(d);
      for (std::uint64_t c : kept) {
        w.put(composite_index(c), ib);
        w.put(composite_value_bits(c), 32);
      }
    }
    const std::size_t n = w.finish();
    if (n != expect) return Status::Internal("topk.encode: wrote ", n, " body bytes, expected ", expect);
    *body_bytes = n;
    h.flags = bitmap ? kFlagBitmap : 0u;
    h.param0 = static_cast<std::uint32_t>(k);
    h.param1 = 0;
    return Status::Ok();
  }

  Status decode_cpu(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                    const Exec&) const override {
    const std::size_t d = y.size();
    const std::size_t k = k_for(d);
    if ((h.flags & ~kFlagBitmap) != 0)
      return Status::InvalidPayload("topk.decode: unknown flags 0x", std::hex, h.flags, " (only bit 0 is defined)");
    if (h.param0 != k)
      return Status::InvalidPayload("topk.decode: payload k=", h.param0, " but this codec (", spec(), ") keeps k=", k,
                                    " of numel=", d);
    if (h.param1 != 0) return Status::InvalidPayload("topk.decode: param1=", h.param1, " must be 0");
    const bool bitmap = (h.flags & kFlagBitmap) != 0;
    if (bitmap != use_bitmap(d, k))
      return Status::InvalidPayload("topk.decode: flags announce the ", bitmap ? "bitmap" : "index", " form but k=", k,
                                    ", numel=", d, " is always sent in the ", bitmap ? "index" : "bitmap", " form");
    const std::size_t expect = bits_to_bytes(bitmap ? bitmap_form_bits(d, k) : index_form_bits(d, k));
    if (body.size() != expect)
      return Status::InvalidPayload("topk.decode: body of ", body.size(), " bytes, expected ", expect, " for the ",
                                    bitmap ? "bitmap" : "index", " form with k=", k, ", numel=", d);
    float* out = y.data();
    if (bitmap) {
      // Pass 1: the bitmap's popcount must be k (validated before y is touched).
      BitReader br(body.data(), body.size());
      std::size_t count = 0;
      for (std::size_t lo = 0; lo < d; lo += 32) {
        const int n = static_cast<int>(std::min<std::size_t>(32, d - lo));
        count += static_cast<std::size_t>(__builtin_popcount(br.get(n)));
      }
      if (count != k) return Status::InvalidPayload("topk.decode: bitmap marks ", count, " elements, expected k=", k);
      if (mode == DecodeMode::kOverwrite) std::fill(out, out + d, 0.0f);
      BitReader bits(body.data(), body.size());
      BitReader vals(body.data() + d / 8, body.size() - d / 8);
      vals.get(static_cast<int>(d % 8));
      for (std::size_t lo = 0; lo < d; lo += 32) {
        const int n = static_cast<int>(std::min<std::size_t>(32, d - lo));
        std::uint32_t word = bits.get(n);
        while (word != 0) {
          const std::size_t i = lo + static_cast<std::size_t>(__builtin_ctz(word));
          word &= word - 1;
          const float v = scale * bits_float(vals.get(32));
          if (mode == DecodeMode::kOverwrite)
            out[i] = v;
          else
            out[i] += v;
        }
      }
      return Status::Ok();
    }
    // Index form. Pass 1 validates every index (< d, strictly increasing) before y is touched.
    const int ib = index_bits(d);
    {
      BitReader br(body.data(), body.size());
      std::uint64_t prev = 0;
      for (std::size_t e = 0; e < k; ++e) {
        const std::uint64_t i = br.get(ib);
        br.get(32);
        if (i >= d) return Status::InvalidPayload("topk.decode: entry ", e, " has index ", i, " >= numel=", d);
        if (e > 0 && i <= prev)
          return Status::InvalidPayload("topk.decode: entry ", e, " has index ", i, " after ", prev,
                                        " (indices must be strictly increasing)");
        prev = i;
      }
    }
    if (mode == DecodeMode::kOverwrite) std::fill(out, out + d, 0.0f);
    BitReader br(body.data(), body.size());
    for (std::size_t e = 0; e < k; ++e) {
      const std::uint32_t i = br.get(ib);
      const float v = scale * bits_float(br.get(32));
      if (mode == DecodeMode::kOverwrite)
        out[i] = v;
      else
        out[i] += v;
    }
    return Status::Ok();
  }

 private:
  TopKConfig cfg_;
};

}  // namespace

StatusOr<std::unique_ptr<Compressor>> make_topk(const TopKConfig& c) {
  GZ_RETURN_IF_ERROR(detail::check_ratio_or_k("topk", c.ratio, c.k));
  return std::unique_ptr<Compressor>(new TopK(c));
}

namespace detail {
StatusOr<CompressorPtr> topk_from_params(const Params& p) {
  TopKConfig c;
  const Status rk = read_ratio_or_k(p, "topk", &c.ratio, &c.k);
  // Neither ratio nor k: a misspelt key ("ratoi") is the likelier cause, so report unknown keys first.
  if (!rk.ok() && (p.has("ratio") || p.has("k"))) return rk;
  GZ_RETURN_IF_ERROR(p.finish("topk", kTopKParams));
  GZ_RETURN_IF_ERROR(rk);
  if (c.k > 0) c.ratio = 0.0;
  return make_topk(c);
}
}  // namespace detail
}  // namespace gradzip
