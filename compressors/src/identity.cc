// identity: C(x) = x. delta = 1, omega = 0; body = the d floats, little-endian (32 d bits).
#include <cstring>

#include "builtin.h"
#include "gradzip/compressors/config.h"
#if GRADZIP_HAS_CUDA
#include "cuda/codecs_cuda.h"
#endif

namespace gradzip {
namespace {

class Identity final : public Compressor {
 public:
  std::string_view name() const override { return "identity"; }
  std::string spec() const override { return "identity"; }
  std::uint16_t codec_id() const override { return static_cast<std::uint16_t>(CodecId::kIdentity); }
  CompressorTraits traits(std::size_t) const override {
    CompressorTraits t;
    t.kind = GuaranteeKind::kContractive;  // also unbiased with omega = 0; contractive is the stronger use
    t.delta = 1.0;
    t.omega = 0.0;
    t.deterministic = true;
    t.linear = true;
    return t;
  }
  std::size_t max_encoded_bytes(std::size_t n) const override { return kHeaderBytes + 4 * n; }

#if GRADZIP_HAS_CUDA
  bool has_cuda() const override {
    return true;
  }

 protected:
  Status encode_cuda(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader&,
                     const Exec& ex) const override {
    return detail::cuda::identity_encode(x, body, body_bytes, ex);
  }
  Status decode_cuda(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                     const Exec& ex) const override {
    PayloadHeader e = h;  // flags: the wrapper bits in h.flags; this codec sets no flags of its own
    e.body_bytes = static_cast<std::uint32_t>(4 * y.size());
    return detail::cuda::identity_decode(e, body, y, mode, scale, ex);
  }
#endif

 protected:
  Status encode_cpu(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader&,
                    const Exec&) const override {
    std::memcpy(body.data(), x.data(), 4 * x.size());  // little-endian hosts; see payload.h
    *body_bytes = 4 * x.size();
    return Status::Ok();
  }
  Status decode_cpu(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                    const Exec&) const override {
    if (h.flags != 0 || h.param0 != 0 || h.param1 != 0)
      return Status::InvalidPayload("identity.decode: unexpected flags/params in header");
    if (body.size() != 4 * y.size())
      return Status::InvalidPayload("identity.decode: body of ", body.size(), " bytes, expected ", 4 * y.size());
    const std::uint8_t* p = body.data();
    float* out = y.data();
    const std::size_t n = y.size();
    if (mode == DecodeMode::kOverwrite) {
      if (scale == 1.0f) {
        std::memcpy(out, p, 4 * n);
      } else {
        for (std::size_t i = 0; i < n; ++i) out[i] = scale * load_le<float>(p + 4 * i);
      }
    } else {
      for (std::size_t i = 0; i < n; ++i) out[i] += scale * load_le<float>(p + 4 * i);
    }
    return Status::Ok();
  }
};

}  // namespace

StatusOr<std::unique_ptr<Compressor>> make_identity() {
  return std::unique_ptr<Compressor>(new Identity());
}

namespace detail {
StatusOr<CompressorPtr> identity_from_params(const Params& p) {
  GZ_RETURN_IF_ERROR(p.finish("identity", {}));
  return make_identity();
}
}  // namespace detail
}  // namespace gradzip
