// compose: a sparsifier (topk, randk) followed by a quantizer of the k kept values, spec "<sparsifier>+<quantizer>",
// e.g. "topk:ratio=0.01+qsgd:levels=4". C(x) = scatter_U(Q(v)), where U (|U| = k, ascending) and the value factor
// a come from Sparsifier::select (a = d/k for unbiased Rand-K, else 1) and v = a * x_U is the k-vector.
//
// Wire (body), d = numel, k = the sparsifier's k_for(d), b = ceil(log2 d):
//   index section: min(k b, d) bits, padded to a byte: the k indices as b-bit LSB-first integers, ascending
//     (header flags bit 0 = 0), or, when d < k b, a d-bit membership bitmap (bit i % 8 of byte i / 8; flags bit 0 =
//     1). Ties go to the index list. The sparsifier's own wire choice (e.g. Rand-K's shared seed) is not used.
//   then the quantizer's complete payload (its own 32-byte header included) encoding v over k elements.
//   body bytes = ceil(min(k b, d) / 8) + 32 + quantizer body bytes for the k-vector.
//   Header: param0 = k, param1 = the quantizer's codec id; flags bit 0 as above, other bits 0.
// Randomness: the quantizer runs with the caller's Exec (same RngKey, stream untouched) when the sparsifier is
// deterministic (Top-K), so the nested payload is exactly the quantizer's payload for v. When the sparsifier is
// stochastic (Rand-K) the quantizer's key gets seed ^ kQuantizerSeedMix: Rand-K and the quantizer both index
// Philox by element number, and reusing the words that chose U for the rounding of v would correlate the two
// (E[Q(v) | U] != v); a distinct Philox key makes them independent. A CUDA path applies the same rule.
//
// Constants (traits, d = numel, quantizer constants taken at numel k). Write v = x_U for a contractive sparsifier
// (Top-K or contractive Rand-K keep values unscaled) and C_q(v) for the quantized values placed on U. Then
// x - C(x) = (x - v) + (v - C_q(v)), where x - v lives on the complement of U and v - C_q(v) on U, so the two are
// orthogonal and, for every draw,  ||x - C(x)||^2 = ||x - v||^2 + ||v - C_q(v)||^2 = ||x||^2 - ||v||^2 + ||v -
// C_q(v)||^2.
//   - contractive sparsifier (E||v||^2 >= delta_s ||x||^2, delta_s = k/d) + unbiased quantizer (omega_q):
//     E||x - C(x)||^2 <= ||x||^2 - (1 - omega_q) E||v||^2 <= (1 - (1 - omega_q) delta_s) ||x||^2, so contractive with
//     delta = (1 - omega_q) delta_s when omega_q < 1; otherwise no guarantee (kBiased, delta 0).
//   - contractive sparsifier + contractive quantizer (delta_q): E||x - C(x)||^2 <= ||x||^2 - delta_q E||v||^2
//     <= (1 - delta_q delta_s) ||x||^2: delta = delta_q delta_s.
//   - unbiased Rand-K (omega_r = d/k - 1) + unbiased quantizer (omega_q), independent draws: E[C(x)] = E_U[v] = x and
//     E||C(x)||^2 <= (1 + omega_q) E||v||^2 <= (1 + omega_q)(1 + omega_r) ||x||^2, so unbiased with
//     omega = (1 + omega_r)(1 + omega_q) - 1. An exact quantizer (identity: contractive with delta 1) counts as
//     unbiased with omega_q = 0.
//   - anything else: kBiased.
// Deterministic iff both stages are. Not linear.
//
// CUDA: has_cuda() when the sparsifier is Top-K or Rand-K and the quantizer has kernels. Encode: the same subset as
// Sparsifier::select on the device (Top-K's exact selection, or Rand-K's Floyd subset keyed by
// detail::randk_subset_key, the rule randk.cc uses), v = x_U * a by a kernel (a = detail::randk_value_scale), the
// index section by a kernel (the indices travel for Rand-K too, in the same list or bitmap form), then the
// quantizer's own device encode of v with the Exec of the CPU path (quantizer_exec: same key, seed mix for Rand-K;
// its header written on the device). Decode (the same for both, the indices travel): the outer header, the index
// section and the nested payload validated on the device, y written only when all of it passed
// (detail::cuda::compose_*). Bit-exact with the CPU path.
//
// Errors: make_compose: kInvalidArgument naming both specs when the first stage is not a sparsifier or the second is
// a sparsifier, a composition or lowrank. encode: the stages' own errors (k > d, non-finite scaled values, ...).
// decode: kInvalidPayload for flags/params not matching (form, k, quantizer id), indices not ascending or >= d, a
// bitmap without exactly k bits, nonzero padding, a nested payload that is not exactly the rest of the body, and
// whatever the quantizer's decode rejects. y is written only after the whole payload has been validated.
#include <cstring>

#include "builtin.h"
#include "gradzip/compressors/config.h"
#if GRADZIP_HAS_CUDA
#include "cuda/codecs_cuda.h"
#endif

namespace gradzip {

namespace {

constexpr std::uint64_t kQuantizerSeedMix = 0x9E3779B97F4A7C15ull;  // 2^64 / golden ratio
constexpr std::uint32_t kFlagBitmap = 1u;

struct IndexForm {
  bool bitmap = false;
  std::uint64_t bits = 0;
  std::size_t bytes = 0;
};

IndexForm index_form(std::size_t d, std::size_t k) {
  IndexForm f;
  const std::uint64_t list = static_cast<std::uint64_t>(k) * static_cast<std::uint64_t>(index_bits(d));
  f.bitmap = static_cast<std::uint64_t>(d) < list;
  f.bits = f.bitmap ? static_cast<std::uint64_t>(d) : list;
  f.bytes = bits_to_bytes(f.bits);
  return f;
}

}  // namespace

class Compose final : public Compressor {
 public:
  Compose(std::shared_ptr<const Compressor> sparsifier, const Sparsifier* select,
          std::shared_ptr<const Compressor> quantizer)
      : sp_(std::move(sparsifier)), sel_(select), q_(std::move(quantizer)) {}

  std::string_view name() const override { return "compose"; }
  std::string spec() const override { return sp_->spec() + "+" + q_->spec(); }
  std::uint16_t codec_id() const override { return static_cast<std::uint16_t>(CodecId::kCompose); }

  CompressorTraits traits(std::size_t numel) const override {
    const std::size_t k = sel_->k_for(numel);
    const CompressorTraits st = sp_->traits(numel), qt = q_->traits(k);
    CompressorTraits t;
    t.kind = GuaranteeKind::kBiased;
    t.deterministic = st.deterministic && qt.deterministic;
    t.linear = false;
    t.stateful = false;
    const bool q_exact = qt.kind == GuaranteeKind::kContractive && qt.delta >= 1.0;
    if (st.kind == GuaranteeKind::kContractive) {
      if (qt.kind == GuaranteeKind::kContractive) {
        t.kind = GuaranteeKind::kContractive;
        t.delta = qt.delta * st.delta;
      } else if (qt.kind == GuaranteeKind::kUnbiased && qt.omega < 1.0) {
        t.kind = GuaranteeKind::kContractive;
        t.delta = (1.0 - qt.omega) * st.delta;
      }
    } else if (st.kind == GuaranteeKind::kUnbiased) {
      if (qt.kind == GuaranteeKind::kUnbiased || q_exact) {
        t.kind = GuaranteeKind::kUnbiased;
        const double omega_q = q_exact ? 0.0 : qt.omega;
        t.omega = (1.0 + st.omega) * (1.0 + omega_q) - 1.0;
      }
    }
    return t;
  }

  std::size_t max_encoded_bytes(std::size_t numel) const override {
    const std::size_t k = sel_->k_for(numel);
    return kHeaderBytes + index_form(numel, k).bytes + q_->max_encoded_bytes(k);
  }

#if GRADZIP_HAS_CUDA
  bool has_cuda() const override {
    if (!sp_->has_cuda() || !q_->has_cuda()) return false;
    // The device path needs a fixed-size nested payload (decode_cuda below); QSGD's Elias coding is variable.
    if (q_->spec().find("coding=elias") != std::string::npos) return false;
    return sp_->codec_id() == static_cast<std::uint16_t>(CodecId::kTopK) || detail::randk_config(*sp_) != nullptr;
  }

 protected:
  Status encode_cuda(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader& h,
                     const Exec& ex) const override {
    if (!has_cuda())
      return Status::Unsupported("compose.encode: no CUDA kernel for '", spec(),
                                 "' (the device path needs topk or randk and a quantizer with CUDA kernels)");
    const std::size_t d = x.size();
    const std::size_t k = sel_->k_for(d);
    const IndexForm f = index_form(d, k);
    // The first stage as the CPU's Sparsifier::select draws it: Top-K's exact selection, or Rand-K's Floyd subset
    // under its own key rule (detail::randk_subset_key) with its value factor.
    detail::cuda::ComposeSelect sel;
    if (const RandKConfig* rc = detail::randk_config(*sp_)) {
      sel.randk = true;
      sel.key = detail::randk_subset_key(*rc, ex.rng);
      sel.value_scale = detail::randk_value_scale(*rc, d, k);
    }
    Exec qex = quantizer_exec(ex, d);
    // The kept values are elements of x, which the base class scanned (or the caller turned the scan off), unless
    // Rand-K's d/k factor scaled them: a finite x_j * d/k can overflow, and the quantizer then reports it as on the
    // CPU.
    qex.check_finite = ex.check_finite && sel.value_scale != 1.0f;
    GZ_RETURN_IF_ERROR(detail::cuda::compose_encode(k, sel, f.bitmap, f.bytes, *q_, qex, x, body, body_bytes, ex));
    h.flags = f.bitmap ? kFlagBitmap : 0u;
    h.param0 = static_cast<std::uint32_t>(k);
    h.param1 = q_->codec_id();
    return Status::Ok();
  }
  Status decode_cuda(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                     const Exec& ex) const override {
    if (!has_cuda())
      return Status::Unsupported("compose.decode: no CUDA kernel for '", spec(),
                                 "' (the device path needs topk or randk and a quantizer with CUDA kernels)");
    const std::size_t d = y.size();
    const std::size_t k = sel_->k_for(d);
    const IndexForm f = index_form(d, k);
    PayloadHeader e = h;
    // The wrapper bits in h.flags (scaled(compose)), then the form bit. The nested payload is decoded with q_'s
    // public decode, which expects only q_'s own wrapper bits (none for a plain quantizer).
    e.flags = h.flags | (f.bitmap ? kFlagBitmap : 0u);
    e.param0 = static_cast<std::uint32_t>(k);
    e.param1 = q_->codec_id();
    // The quantizers with CUDA kernels have fixed-size payloads: max_encoded_bytes(k) is the exact nested size.
    e.body_bytes = static_cast<std::uint32_t>(f.bytes + q_->max_encoded_bytes(k));
    return detail::cuda::compose_decode(k, f.bitmap, f.bytes, *q_, e, body, y, mode, scale, ex);
  }
#endif

 protected:
  Status check_numel(std::size_t numel) const override {
    GZ_RETURN_IF_ERROR(sp_->check(DType::kF32, numel));
    const std::size_t k = sel_->k_for(numel);
    if (k < 1 || k > numel)
      return Status::InvalidArgument("compose: ", sp_->spec(), " keeps k=", k, " of numel=", numel);
    return q_->check(DType::kF32, k);
  }

  Status encode_cpu(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader& h,
                    const Exec& ex) const override {
    const std::size_t d = x.size();
    const std::size_t k = sel_->k_for(d);
    std::vector<std::uint32_t> idx;
    float value_scale = 1.0f;
    GZ_RETURN_IF_ERROR(sel_->select(x, idx, &value_scale, ex));
    if (idx.size() != k)
      return Status::Internal("compose.encode: ", sp_->spec(), " selected ", idx.size(), " indices, expected k=", k);
    for (std::size_t i = 0; i < k; ++i) {
      if (idx[i] >= d || (i > 0 && idx[i] <= idx[i - 1]))
        return Status::Internal("compose.encode: ", sp_->spec(), " returned indices that are not ascending in [0, ", d,
                                ")");
    }
    const IndexForm f = index_form(d, k);
    std::uint8_t* out = body.data();
    if (f.bitmap) {
      std::memset(out, 0, f.bytes);
      for (std::uint32_t i : idx) out[i / 8] = static_cast<std::uint8_t>(out[i / 8] | (1u << (i % 8)));
    } else {
      BitWriter w(out, f.bytes);
      const int b = index_bits(d);
      for (std::uint32_t i : idx) w.put(i, b);
      w.finish();
      if (w.overflowed()) return Status::Internal("compose.encode: index section overflow");
    }
    std::vector<float> v(k);
    for (std::size_t i = 0; i < k; ++i) v[i] = x[idx[i]] * value_scale;
    const Exec qex = quantizer_exec(ex, d);
    std::size_t nested = 0;
    GZ_RETURN_IF_ERROR(
        q_->encode(Span<const float>(v.data(), k), MutableBytes(out + f.bytes, body.size() - f.bytes), &nested, qex));
    h.flags = f.bitmap ? kFlagBitmap : 0u;
    h.param0 = static_cast<std::uint32_t>(k);
    h.param1 = q_->codec_id();
    *body_bytes = f.bytes + nested;
    return Status::Ok();
  }

  Status decode_cpu(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                    const Exec& ex) const override {
    const std::size_t d = y.size();
    const std::size_t k = sel_->k_for(d);
    const IndexForm f = index_form(d, k);
    const std::uint32_t flags = h.flags & ~kFlagScaledWrapper;
    if (flags != (f.bitmap ? kFlagBitmap : 0u))
      return Status::InvalidPayload("compose.decode: flags 0x", std::hex, h.flags, std::dec, " do not match the ",
                                    f.bitmap ? "bitmap" : "index-list", " form used for numel=", d, ", k=", k);
    if (h.param0 != k)
      return Status::InvalidPayload("compose.decode: payload keeps k=", h.param0, " but ", sp_->spec(), " keeps k=", k,
                                    " of numel=", d);
    if (h.param1 != q_->codec_id())
      return Status::InvalidPayload("compose.decode: nested codec id ", h.param1, " (",
                                    codec_id_name(h.param1 & 0xFFFF), ") is not the quantizer ", q_->spec(), " (id ",
                                    q_->codec_id(), ")");
    if (body.size() < f.bytes + kHeaderBytes)
      return Status::InvalidPayload("compose.decode: body of ", body.size(), " bytes cannot hold the ", f.bytes,
                                    "-byte index section and a nested payload");
    ConstBytes nested(body.data() + f.bytes, body.size() - f.bytes);
    GZ_ASSIGN_OR_RETURN(PayloadHeader nh, read_header(nested, "compose.decode (nested payload)"));
    if (kHeaderBytes + static_cast<std::size_t>(nh.body_bytes) != nested.size())
      return Status::InvalidPayload("compose.decode: nested payload of ", kHeaderBytes + nh.body_bytes,
                                    " bytes does not fill the remaining ", nested.size(), " bytes of the body");

    std::vector<std::uint32_t> idx(k);
    const std::uint8_t* in = body.data();
    if (f.bitmap) {
      std::size_t n = 0;
      for (std::size_t i = 0; i < d; ++i) {
        if ((in[i / 8] >> (i % 8)) & 1u) {
          if (n == k) return Status::InvalidPayload("compose.decode: bitmap marks more than k=", k, " indices");
          idx[n++] = static_cast<std::uint32_t>(i);
        }
      }
      if (n != k) return Status::InvalidPayload("compose.decode: bitmap marks ", n, " indices, expected k=", k);
    } else {
      BitReader r(in, f.bytes);
      const int b = index_bits(d);
      for (std::size_t i = 0; i < k; ++i) {
        idx[i] = r.get(b);
        if (idx[i] >= d || (i > 0 && idx[i] <= idx[i - 1]))
          return Status::InvalidPayload("compose.decode: index ", idx[i], " at position ", i,
                                        " is out of range or not ascending (numel=", d, ")");
      }
    }
    if (f.bits % 8 != 0 && (in[f.bytes - 1] >> (f.bits % 8)) != 0)
      return Status::InvalidPayload("compose.decode: nonzero padding bits after the index section");

    std::vector<float> v(k);
    GZ_RETURN_IF_ERROR(q_->decode(nested, Span<float>(v.data(), k), DecodeMode::kOverwrite, ex));
    float* out = y.data();
    if (mode == DecodeMode::kOverwrite) {
      std::memset(out, 0, d * sizeof(float));
      for (std::size_t i = 0; i < k; ++i) out[idx[i]] = scale * v[i];
    } else {
      for (std::size_t i = 0; i < k; ++i) out[idx[i]] += scale * v[i];
    }
    return Status::Ok();
  }

 private:
  /// The quantizer's Exec on both paths: the caller's without its workspace, and for a stochastic sparsifier (Rand-K)
  /// the seed mixed with kQuantizerSeedMix (see the comment at the top).
  Exec quantizer_exec(const Exec& ex, std::size_t d) const {
    Exec qex = ex;
    qex.workspace = MutableBytes();
    if (!sp_->traits(d).deterministic) qex.rng.seed ^= kQuantizerSeedMix;
    return qex;
  }

  std::shared_ptr<const Compressor> sp_;
  const Sparsifier* sel_;  // sp_ viewed as a Sparsifier (owned by sp_)
  std::shared_ptr<const Compressor> q_;
};

StatusOr<std::unique_ptr<Compressor>> make_compose(std::shared_ptr<const Compressor> sparsifier,
                                                   std::shared_ptr<const Compressor> quantizer) {
  if (!sparsifier || !quantizer) return Status::InvalidArgument("compose: sparsifier and quantizer must not be null");
  const std::string both = sparsifier->spec() + "+" + quantizer->spec();
  const auto* sel = dynamic_cast<const Sparsifier*>(sparsifier.get());
  if (sel == nullptr)
    return Status::InvalidArgument("compose: '", both, "': the first stage '", sparsifier->spec(),
                                   "' is not a sparsifier (topk or randk)");
  if (dynamic_cast<const Sparsifier*>(quantizer.get()) != nullptr)
    return Status::InvalidArgument("compose: '", both, "': the second stage '", quantizer->spec(),
                                   "' is a sparsifier; it must be a quantizer of the kept values");
  const auto qid = static_cast<CodecId>(quantizer->codec_id());
  if (qid == CodecId::kCompose || qid == CodecId::kLowRank)
    return Status::InvalidArgument("compose: '", both, "': the second stage '", quantizer->spec(), "' (",
                                   quantizer->name(), ") cannot quantize the kept values; use a quantizer such as ",
                                   "qsgd, natural, sign, fp16");
  return std::unique_ptr<Compressor>(new Compose(std::move(sparsifier), sel, std::move(quantizer)));
}

}  // namespace gradzip
