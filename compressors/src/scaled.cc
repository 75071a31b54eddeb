// scaled(<unbiased spec>): the unbiased -> contractive wrapper ScaledUnbiased (algorithms.md §2.1
// "Unbiased -> contractive"; example in §2.3).
//
//   C'(x) = C(x) / (omega + 1) for an unbiased inner C with E||C(x) - x||^2 <= omega ||x||^2. Then
//   E||C'(x) - x||^2 <= (1 - 1/(omega + 1)) ||x||^2: contractive with delta = 1/(omega + 1). omega depends on
//   numel (Rand-K: d/k - 1), so it is computed per call from inner.traits(numel).
//
// Wire: exactly the inner codec's payload (same codec id, params and body; bits as the inner's formula) with
// header flag bit 31 (kFlagScaledWrapper) set, so that a plain inner decoder rejects it and vice versa (the base
// class checks the bit against required_wrapper_flags()). CPU decode clears the bit in a copy of the header it read
// and calls the inner decoder with scale * 1/(omega + 1); the inner codec validates everything else.
//
// CUDA (when the inner codec has kernels): encode = the inner encode_cuda, then the base class writes the header
// with bit 31 from the device; decode = the inner decode_cuda given the header the base class built, whose flags
// hold bit 31 (required_wrapper_flags()): by the flags rule of Compressor::decode_cuda the inner codec ORs its own
// flags into them, so its kernels expect bit 31 in the payload's header and validate the rest as for the plain codec.
//
// Determinism and randomness: those of the inner codec (it receives the same Exec). Thread-safety: const; the
// inner codec is shared, immutable. Errors: kInvalidArgument when the inner codec is null or not unbiased
// (naming its spec); otherwise the inner codec's errors; kInvalidPayload for a payload without bit 31.
#include "builtin.h"

namespace gradzip {

class ScaledUnbiased final : public Compressor {
 public:
  explicit ScaledUnbiased(std::shared_ptr<const Compressor> inner)
      : inner_(std::move(inner)), spec_("scaled(" + inner_->spec() + ")") {}

  std::string_view name() const override { return "scaled"; }
  std::string spec() const override { return spec_; }
  std::uint16_t codec_id() const override { return inner_->codec_id(); }
  CompressorTraits traits(std::size_t numel) const override {
    const CompressorTraits in = inner_->traits(numel);
    CompressorTraits t;
    t.kind = GuaranteeKind::kContractive;
    t.delta = 1.0 / (in.omega + 1.0);
    t.omega = 0.0;
    t.deterministic = in.deterministic;
    t.linear = in.linear;  // a fixed scale preserves summability of payloads
    t.stateful = in.stateful;
    return t;
  }
  std::size_t max_encoded_bytes(std::size_t numel) const override { return inner_->max_encoded_bytes(numel); }
  std::size_t workspace_bytes(std::size_t numel, Device d) const override { return inner_->workspace_bytes(numel, d); }
  bool has_cuda() const override { return inner_->has_cuda(); }

 protected:
  Status check_numel(std::size_t numel) const override { return inner_->check_numel(numel); }
  Status encode_cpu(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader& h,
                    const Exec& ex) const override {
    GZ_RETURN_IF_ERROR(inner_->encode_cpu(x, body, body_bytes, h, ex));
    h.flags |= kFlagScaledWrapper;
    return Status::Ok();
  }
  Status encode_cuda(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader& h,
                     const Exec& ex) const override {
    GZ_RETURN_IF_ERROR(inner_->encode_cuda(x, body, body_bytes, h, ex));
    h.flags |= kFlagScaledWrapper;
    return Status::Ok();
  }
  Status decode_cpu(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                    const Exec& ex) const override {
    PayloadHeader inner_h = h;
    inner_h.flags &= ~kFlagScaledWrapper;
    return inner_->decode_cpu(inner_h, body, y, mode, inner_scale(scale, y.size()), ex);
  }
  Status decode_cuda(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                     const Exec& ex) const override {
    // The payload's header carries bit 31 and the inner decoder's kernels compare the whole header with the one it
    // expects: h.flags keeps the bit (the base class set it from required_wrapper_flags()), and the inner codec ORs
    // its own flags into it (on the device, no host round trip).
    PayloadHeader inner_h = h;
    inner_h.flags |= kFlagScaledWrapper;
    return inner_->decode_cuda(inner_h, body, y, mode, inner_scale(scale, y.size()), ex);
  }
  std::uint32_t required_wrapper_flags() const override { return kFlagScaledWrapper; }

 private:
  float inner_scale(float scale, std::size_t numel) const {
    return static_cast<float>(static_cast<double>(scale) / (inner_->traits(numel).omega + 1.0));
  }

  std::shared_ptr<const Compressor> inner_;
  std::string spec_;
};

StatusOr<std::unique_ptr<Compressor>> make_scaled(std::shared_ptr<const Compressor> unbiased) {
  if (!unbiased) return Status::InvalidArgument("scaled: inner codec is null");
  // The kind does not depend on numel; omega does and is evaluated per call.
  constexpr std::size_t kRepresentativeNumel = std::size_t{1} << 20;
  const CompressorTraits t = unbiased->traits(kRepresentativeNumel);
  if (t.kind != GuaranteeKind::kUnbiased)
    return Status::InvalidArgument("scaled: inner codec '", unbiased->spec(), "' is ", guarantee_kind_name(t.kind),
                                   ", not unbiased; scaled() turns an unbiased codec into a contractive one");
  return std::unique_ptr<Compressor>(new ScaledUnbiased(std::move(unbiased)));
}

}  // namespace gradzip
