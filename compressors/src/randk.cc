// randk: random-K sparsification (algorithms.md §2.2 "Rand-K, unbiased" and "Rand-K, contractive"; example
// in §2.3).
//
//   A uniformly random k-subset U of {0..d-1} (without replacement) is kept:
//     mode=unbiased     C(x)_j = (d/k) x_j for j in U, else 0;  E C(x) = x, E||C(x) - x||^2 = (d/k - 1)||x||^2,
//                       so omega = d/k - 1;
//     mode=contractive  C(x)_j = x_j for j in U;  E||C(x) - x||^2 = (1 - k/d)||x||^2, delta = k/d.
//   k = cfg.k, or ceil(ratio * d) clamped to [1, d].
//
// Subset generation (reproducible from the RNG key, also on a GPU): Robert Floyd's algorithm with a d-bit
// membership bitmap: for j = d-k .. d-1: t = CounterRng(key).below(j, j + 1) (draw number j, uniform in [0, j]);
// if t is already in the set, insert j, else insert t. The indices are then read ascending from the bitmap.
// The key is Exec::rng with seed replaced by cfg.seed when set; with shared=1 the rank is replaced by 0 so every
// rank draws the same subset (step and stream are kept): detail::randk_subset_key (builtin.h), which compose's
// device path uses too.
//
// Wire body (d = numel, b = index_bits(d) = ceil(log2 d)):
//   shared=1    32 k bits: the k raw fp32 values x_j, j in U ascending. The receiver regenerates U, so decode
//               must be given an Exec whose rng has the sender's seed (or the same cfg.seed), step and stream;
//               the rank does not matter.
//   shared=0    k (b + 32) bits: for each j in U ascending, j in b bits then the raw fp32 bits of x_j
//               (bit-packed LSB-first, the BitWriter layout); decode does not need the key.
//   The values on the wire are the raw x_j; the d/k factor of mode=unbiased is applied at decode, so summing
//   shared payload bodies of several ranks (same key) sums the compressed vectors (traits.linear = shared).
// Header: param0 = k; param1 = 0; flags bit 0 = shared, bit 1 = unbiased; decode requires them to match its own
// configuration exactly.
//
// Determinism: stochastic, bit-reproducible for a fixed key. Thread-safety: const. Workspace: optional, the
// d-bit bitmap (workspace_bytes = 8 ceil(d / 64)); without one the call allocates it.
// Errors: kInvalidArgument for a bad config (k = 0, ratio not in (0, 1], both or neither given) and for
// k > numel ("randk: k=5 must be in [1, numel=3]"); kInvalidPayload from decode for mismatched flags or k, a
// wrong body length, an index >= d or non-increasing indices (shared=0).
#include <algorithm>
#include <cstring>

#include "builtin.h"
#include "gradzip/compressors/config.h"
#if GRADZIP_HAS_CUDA
#include "cuda/codecs_cuda.h"
#endif
#include "gradzip/compressors/rng.h"

namespace gradzip {
namespace {

constexpr std::uint32_t kFlagShared = 1u;
constexpr std::uint32_t kFlagUnbiased = 2u;

/// A d-bit membership bitmap, in the caller's workspace when it is large enough and 8-byte aligned.
class Bitmap {
 public:
  Bitmap(std::size_t d, MutableBytes workspace) : words_((d + 63) / 64) {
    if (workspace.size() >= words_ * 8 && reinterpret_cast<std::uintptr_t>(workspace.data()) % 8 == 0) {
      bits_ = reinterpret_cast<std::uint64_t*>(workspace.data());
    } else {
      own_.resize(words_);
      bits_ = own_.data();
    }
    std::memset(bits_, 0, words_ * 8);
  }
  std::uint64_t* data() { return bits_; }
  std::size_t words() const { return words_; }

 private:
  std::size_t words_;
  std::uint64_t* bits_ = nullptr;
  std::vector<std::uint64_t> own_;
};

/// Floyd's algorithm: marks a uniform k-subset of [0, d) in `bm` (zeroed, d bits). 1 <= k <= d.
void draw_subset(std::size_t d, std::size_t k, const RngKey& key, std::uint64_t* bm) {
  const CounterRng rng(key);
  for (std::uint64_t j = d - k; j < d; ++j) {
    std::uint64_t t = rng.below(j, j + 1);
    if ((bm[t >> 6] >> (t & 63)) & 1u) t = j;
    bm[t >> 6] |= std::uint64_t{1} << (t & 63);
  }
}

/// Calls f(j) for every set bit j, ascending.
template <class F>
inline void for_each_set(const std::uint64_t* bm, std::size_t words, F&& f) {
  for (std::size_t w = 0; w < words; ++w) {
    std::uint64_t m = bm[w];
    while (m != 0) {
      f(w * 64 + static_cast<std::size_t>(__builtin_ctzll(m)));
      m &= m - 1;
    }
  }
}

class RandK final : public Compressor, public Sparsifier {
 public:
  explicit RandK(const RandKConfig& c) : cfg_(c) {}
  const RandKConfig& config() const { return cfg_; }

  std::string_view name() const override { return "randk"; }
  std::string spec() const override {
    std::string s = "randk:" + detail::ratio_or_k_spec(cfg_.ratio, cfg_.k);
    s += cfg_.unbiased ? ",mode=unbiased" : ",mode=contractive";
    s += cfg_.shared ? ",shared=1" : ",shared=0";
    if (cfg_.seed) s += ",seed=" + std::to_string(*cfg_.seed);
    return s;
  }
  std::uint16_t codec_id() const override { return static_cast<std::uint16_t>(CodecId::kRandK); }
  CompressorTraits traits(std::size_t numel) const override {
    CompressorTraits t;
    const std::size_t k = std::max<std::size_t>(1, std::min(k_for(numel), numel));
    const double ratio = numel == 0 ? 1.0 : static_cast<double>(k) / static_cast<double>(numel);
    if (cfg_.unbiased) {
      t.kind = GuaranteeKind::kUnbiased;
      t.omega = 1.0 / ratio - 1.0;
    } else {
      t.kind = GuaranteeKind::kContractive;
      t.delta = ratio;
    }
    t.deterministic = false;
    t.linear = cfg_.shared;
    return t;
  }
  std::size_t max_encoded_bytes(std::size_t numel) const override {
    const std::uint64_t k = std::min(k_for(numel), numel);
    return kHeaderBytes + bits_to_bytes(body_bits(numel, k));
  }
  std::size_t workspace_bytes(std::size_t numel, Device d) const override {
#if GRADZIP_HAS_CUDA
    if (d == Device::kCuda) return detail::cuda::randk_workspace(numel, std::min(k_for(numel), numel));
#endif
    return d == Device::kCpu ? 8 * ((numel + 63) / 64) : 0;
  }

  std::size_t k_for(std::size_t numel) const override {
    return cfg_.k > 0 ? cfg_.k : k_from_ratio(cfg_.ratio, numel);
  }
  Status select(Span<const float> x, std::vector<std::uint32_t>& idx, float* value_scale,
                const Exec& ex) const override {
    GZ_RETURN_IF_ERROR(check(DType::kF32, x.size()));
    if (ex.device != Device::kCpu) return Status::Unsupported("randk.select: only host (CPU) inputs are supported");
    const std::size_t d = x.size(), k = k_for(d);
    Bitmap bm(d, ex.workspace);
    draw_subset(d, k, key_for(ex), bm.data());
    idx.clear();
    idx.reserve(k);
    for_each_set(bm.data(), bm.words(), [&](std::size_t j) { idx.push_back(static_cast<std::uint32_t>(j)); });
    if (value_scale) *value_scale = detail::randk_value_scale(cfg_, d, k);
    return Status::Ok();
  }

#if GRADZIP_HAS_CUDA
  bool has_cuda() const override {
    return true;
  }

 protected:
  Status encode_cuda(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader& h,
                     const Exec& ex) const override {
    const std::size_t k = k_for(x.size());
    h.flags = expected_flags();
    h.param0 = static_cast<std::uint32_t>(k);
    h.param1 = 0;
    return detail::cuda::randk_encode(k, cfg_.shared, key_for(ex), x, body, body_bytes, ex);
  }
  Status decode_cuda(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                     const Exec& ex) const override {
    const std::size_t d = y.size(), k = k_for(d);
    PayloadHeader e = h;
    e.flags = h.flags | expected_flags();  // the wrapper bits in h.flags (scaled()), then its own
    e.param0 = static_cast<std::uint32_t>(k);
    e.body_bytes = static_cast<std::uint32_t>(bits_to_bytes(body_bits(d, k)));
    const float f = cfg_.unbiased ? static_cast<float>(static_cast<double>(scale) * static_cast<double>(d) / k) : scale;
    return detail::cuda::randk_decode(k, cfg_.shared, f, key_for(ex), e, body, y, mode, ex);
  }
#endif

 protected:
  Status check_numel(std::size_t numel) const override {
    if (cfg_.k > numel) return Status::InvalidArgument("randk: k=", cfg_.k, " must be in [1, numel=", numel, "]");
    return Status::Ok();
  }

  Status encode_cpu(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader& h,
                    const Exec& ex) const override {
    const std::size_t d = x.size(), k = k_for(d);
    const std::size_t expect = bits_to_bytes(body_bits(d, k));
    if (body.size() < expect)
      return Status::Internal("randk.encode: body buffer of ", body.size(), " bytes, need ", expect);
    Bitmap bm(d, ex.workspace);
    draw_subset(d, k, key_for(ex), bm.data());
    const float* xp = x.data();
    std::uint8_t* out = body.data();
    if (cfg_.shared) {
      std::size_t e = 0;
      for_each_set(bm.data(), bm.words(), [&](std::size_t j) { store_le<float>(out + 4 * e++, xp[j]); });
      *body_bytes = 4 * k;
    } else {
      const int ib = index_bits(d);
      WordPacker w(out);
      for_each_set(bm.data(), bm.words(), [&](std::size_t j) {
        w.put(static_cast<std::uint32_t>(j), ib);
        w.put(bits_of(xp[j]), 32);
      });
      const std::size_t n = w.finish();
      if (n != expect) return Status::Internal("randk.encode: wrote ", n, " body bytes, expected ", expect);
      *body_bytes = n;
    }
    h.flags = expected_flags();
    h.param0 = static_cast<std::uint32_t>(k);
    h.param1 = 0;
    return Status::Ok();
  }

  Status decode_cpu(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                    const Exec& ex) const override {
    const std::size_t d = y.size(), k = k_for(d);
    if (h.flags != expected_flags())
      return Status::InvalidPayload("randk.decode: payload flags 0x", std::hex, h.flags, " (shared=", h.flags & 1u,
                                    ", unbiased=", (h.flags >> 1) & 1u, ") do not match this codec's 0x",
                                    expected_flags(), std::dec, " (", spec(), ")");
    if (h.param0 != k)
      return Status::InvalidPayload("randk.decode: payload k=", h.param0, " but this codec (", spec(), ") keeps k=", k,
                                    " of numel=", d);
    if (h.param1 != 0) return Status::InvalidPayload("randk.decode: param1=", h.param1, " must be 0");
    const std::size_t expect = bits_to_bytes(body_bits(d, k));
    if (body.size() != expect)
      return Status::InvalidPayload("randk.decode: body of ", body.size(), " bytes, expected ", expect, " for k=", k,
                                    ", numel=", d, cfg_.shared ? " (shared)" : " (unshared)");
    const float f = cfg_.unbiased ? static_cast<float>(static_cast<double>(scale) * static_cast<double>(d) / k) : scale;
    float* out = y.data();
    const bool overwrite = mode == DecodeMode::kOverwrite;
    if (cfg_.shared) {
      Bitmap bm(d, ex.workspace);
      draw_subset(d, k, key_for(ex), bm.data());
      if (overwrite) std::fill(out, out + d, 0.0f);
      const std::uint8_t* p = body.data();
      std::size_t e = 0;
      for_each_set(bm.data(), bm.words(), [&](std::size_t j) {
        const float v = f * load_le<float>(p + 4 * e++);
        if (overwrite)
          out[j] = v;
        else
          out[j] += v;
      });
      return Status::Ok();
    }
    // Unshared: index form. Pass 1 validates every index before y is touched.
    const int ib = index_bits(d);
    {
      BitReader br(body.data(), body.size());
      std::uint64_t prev = 0;
      for (std::size_t e = 0; e < k; ++e) {
        const std::uint64_t i = br.get(ib);
        br.get(32);
        if (i >= d) return Status::InvalidPayload("randk.decode: entry ", e, " has index ", i, " >= numel=", d);
        if (e > 0 && i <= prev)
          return Status::InvalidPayload("randk.decode: entry ", e, " has index ", i, " after ", prev,
                                        " (indices must be strictly increasing)");
        prev = i;
      }
    }
    if (overwrite) std::fill(out, out + d, 0.0f);
    BitReader br(body.data(), body.size());
    for (std::size_t e = 0; e < k; ++e) {
      const std::uint32_t i = br.get(ib);
      const float v = f * float_of(br.get(32));
      if (overwrite)
        out[i] = v;
      else
        out[i] += v;
    }
    return Status::Ok();
  }

 private:
  std::uint64_t body_bits(std::uint64_t d, std::uint64_t k) const {
    return cfg_.shared ? 32u * k : k * (32u + index_bits(d));
  }
  std::uint32_t expected_flags() const {
    return (cfg_.shared ? kFlagShared : 0u) | (cfg_.unbiased ? kFlagUnbiased : 0u);
  }
  RngKey key_for(const Exec& ex) const {
    return detail::randk_subset_key(cfg_, ex.rng);
  }

  RandKConfig cfg_;
};

}  // namespace

StatusOr<std::unique_ptr<Compressor>> make_randk(const RandKConfig& c) {
  GZ_RETURN_IF_ERROR(detail::check_ratio_or_k("randk", c.ratio, c.k));
  return std::unique_ptr<Compressor>(new RandK(c));
}

namespace detail {
const RandKConfig* randk_config(const Compressor& c) {
  const auto* r = dynamic_cast<const RandK*>(&c);
  return r != nullptr ? &r->config() : nullptr;
}

StatusOr<CompressorPtr> randk_from_params(const Params& p) {
  RandKConfig c;
  const Status rk = read_ratio_or_k(p, "randk", &c.ratio, &c.k);
  // Neither ratio nor k: a misspelt key ("ratoi") is the likelier cause, so report unknown keys first.
  if (!rk.ok() && (p.has("ratio") || p.has("k"))) return rk;
  if (c.k > 0) c.ratio = 0.0;
  // Compared in place rather than moved out: GCC 12 in C++20 mode reports a false -Wmaybe-uninitialized on the move.
  const StatusOr<std::string> mode = p.get_choice("mode", "unbiased", {"unbiased", "contractive"});
  if (!mode.ok()) return mode.status();
  c.unbiased = mode.value() == "unbiased";
  GZ_ASSIGN_OR_RETURN(c.shared, p.get_bool("shared", true));
  if (p.has("seed")) {
    GZ_ASSIGN_OR_RETURN(std::uint64_t seed, p.get_uint("seed", 0));
    c.seed = seed;
  }
  GZ_RETURN_IF_ERROR(p.finish("randk", kRandKParams));
  GZ_RETURN_IF_ERROR(rk);
  return make_randk(c);
}
}  // namespace detail
}  // namespace gradzip
