#include "gradzip/compressors/compressor.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "gradzip/compressors/config.h"
#include "gradzip/compressors/cuda.h"
#if GRADZIP_HAS_CUDA
#include "cuda/codecs_cuda.h"
#endif

namespace gradzip {

const char* guarantee_kind_name(GuaranteeKind k) {
  switch (k) {
    case GuaranteeKind::kContractive:
      return "contractive";
    case GuaranteeKind::kUnbiased:
      return "unbiased";
    case GuaranteeKind::kBiased:
      return "biased";
  }
  return "unknown";
}

std::size_t k_from_ratio(double ratio, std::size_t numel) {
  const double k = std::ceil(ratio * static_cast<double>(numel));
  if (k < 1.0) return 1;
  if (k > static_cast<double>(numel)) return numel;
  return static_cast<std::size_t>(k);
}

Status check_finite(Span<const float> x, const char* op) {
  // Branch-free scan (vectorises): a float is non-finite iff its exponent bits are all ones.
  const std::size_t n = x.size();
  const float* p = x.data();
  constexpr std::size_t kBlock = 1024;
  for (std::size_t b = 0; b < n; b += kBlock) {
    const std::size_t end = b + kBlock < n ? b + kBlock : n;
    std::uint32_t bad = 0;
    for (std::size_t i = b; i < end; ++i) {
      std::uint32_t u;
      std::memcpy(&u, p + i, 4);
      bad |= static_cast<std::uint32_t>((u & 0x7f800000u) == 0x7f800000u);
    }
    if (bad) {
      for (std::size_t i = b; i < end; ++i) {
        if (!std::isfinite(p[i])) return Status::NonFinite(op, ": x[", i, "] = ", p[i], " is not finite");
      }
    }
  }
  return Status::Ok();
}

Status Compressor::check(DType dtype, std::size_t numel) const {
  if (dtype != DType::kF32)
    return Status::InvalidArgument(name(), ": dtype ", dtype_name(dtype), " is not supported (float32 only)");
  if (numel == 0) return Status::InvalidArgument(name(), ": numel=0; cannot compress an empty vector");
  if (numel > std::numeric_limits<std::uint32_t>::max())
    return Status::InvalidArgument(name(), ": numel=", numel, " exceeds the limit 2^32-1; split the tensor");
  return check_numel(numel);
}

Status Compressor::encode(Span<const float> x, MutableBytes out, std::size_t* written, const Exec& ex) const {
  if (written == nullptr) return Status::InvalidArgument(name(), ".encode: written must not be null");
  *written = 0;
  GZ_RETURN_IF_ERROR(check(DType::kF32, x.size()));
  if (x.data() == nullptr) return Status::InvalidArgument(name(), ".encode: x is null");
  const std::size_t need = max_encoded_bytes(x.size());
  if (out.data() == nullptr || out.size() < need)
    return Status::InvalidArgument(name(), ".encode: output buffer of ", out.size(), " bytes is smaller than ",
                                   "max_encoded_bytes(", x.size(), ") = ", need);
  if (ex.device == Device::kCuda) return encode_cuda_with_header(x, out, written, ex);
  if (ex.device == Device::kCpu && ex.check_finite && !detects_nonfinite()) {
    const std::string op = std::string(name()) + ".encode";
    GZ_RETURN_IF_ERROR(check_finite(x, op.c_str()));
  }
  PayloadHeader h;
  h.codec_id = codec_id();
  h.numel = x.size();
  std::size_t body = 0;
  MutableBytes body_out(out.data() + kHeaderBytes, out.size() - kHeaderBytes);
  Status s =
      ex.device == Device::kCuda ? encode_cuda(x, body_out, &body, h, ex) : encode_cpu(x, body_out, &body, h, ex);
  if (!s.ok()) return s;
  if (body > body_out.size() || body > std::numeric_limits<std::uint32_t>::max())
    return Status::Internal(name(), ".encode: body of ", body, " bytes overflows the buffer (", body_out.size(), ")");
  h.body_bytes = static_cast<std::uint32_t>(body);
  write_header(h, out.data());
  *written = kHeaderBytes + body;
  return Status::Ok();
}

StatusOr<std::vector<std::uint8_t>> Compressor::encode(Span<const float> x, const Exec& ex) const {
  GZ_RETURN_IF_ERROR(check(DType::kF32, x.size()));
  std::vector<std::uint8_t> out(max_encoded_bytes(x.size()));
  std::size_t written = 0;
  GZ_RETURN_IF_ERROR(encode(x, MutableBytes(out.data(), out.size()), &written, ex));
  out.resize(written);
  return out;
}

Status Compressor::decode(ConstBytes payload, Span<float> y, DecodeMode mode, const Exec& ex, float scale) const {
  const std::string op = std::string(name()) + ".decode";
  if (ex.device == Device::kCuda) {
    // The header lives in device memory: the codec's kernels validate it against the expected one (decode_cuda).
    if (payload.data() == nullptr || payload.size() < kHeaderBytes)
      return Status::InvalidPayload(op, ": payload of ", payload.size(), " bytes is shorter than the ", kHeaderBytes,
                                    "-byte header");
    if (y.size() > 0 && y.data() == nullptr) return Status::InvalidArgument(op, ": output is null");
    GZ_RETURN_IF_ERROR(check(DType::kF32, y.size()));
    if (!std::isfinite(scale)) return Status::InvalidArgument(op, ": scale=", scale, " is not finite");
    PayloadHeader h;
    h.codec_id = codec_id();
    h.numel = y.size();
    h.flags = required_wrapper_flags();  // the wrapper bits the payload must carry; the codec ORs its own in
    return decode_cuda(h, ConstBytes(payload.data() + kHeaderBytes, payload.size() - kHeaderBytes), y, mode, scale, ex);
  }
  GZ_ASSIGN_OR_RETURN(PayloadHeader h, read_header(payload, op.c_str()));
  if (h.codec_id != codec_id())
    return Status::InvalidPayload(op, ": payload was encoded by codec ", h.codec_id, " (", codec_id_name(h.codec_id),
                                  "), not by ", codec_id(), " (", name(), ")");
  if (h.numel != y.size())
    return Status::InvalidPayload(op, ": payload holds ", h.numel, " elements but the output has ", y.size());
  if (y.size() > 0 && y.data() == nullptr) return Status::InvalidArgument(op, ": output is null");
  const std::uint32_t want = required_wrapper_flags();
  if ((h.flags & kFlagScaledWrapper) != want)
    return Status::InvalidPayload(op, want ? ": payload was not produced by the scaled() wrapper"
                                           : ": payload was produced by a scaled() wrapper; decode it with one");
  GZ_RETURN_IF_ERROR(check(DType::kF32, y.size()));
  if (!std::isfinite(scale)) return Status::InvalidArgument(op, ": scale=", scale, " is not finite");
  ConstBytes body(payload.data() + kHeaderBytes, h.body_bytes);
  if (ex.device == Device::kCuda) return decode_cuda(h, body, y, mode, scale, ex);
  return decode_cpu(h, body, y, mode, scale, ex);
}

Status Compressor::encode_cuda_with_header(Span<const float> x, MutableBytes out, std::size_t* written,
                                           const Exec& ex) const {
#if GRADZIP_HAS_CUDA
  if (!has_cuda()) {
    PayloadHeader unused;
    return encode_cuda(x, out, written, unused, ex);
  }
  if (ex.check_finite) {
    const std::string op = std::string(name()) + ".encode";
    GZ_RETURN_IF_ERROR(detail::cuda::check_finite(x, op.c_str(), ex));
  }
  PayloadHeader h;
  h.codec_id = codec_id();
  h.numel = x.size();
  std::size_t body = 0;
  MutableBytes body_out(out.data() + kHeaderBytes, out.size() - kHeaderBytes);
  GZ_RETURN_IF_ERROR(encode_cuda(x, body_out, &body, h, ex));
  if (body > body_out.size() || body > std::numeric_limits<std::uint32_t>::max())
    return Status::Internal(name(), ".encode: body of ", body, " bytes overflows the buffer (", body_out.size(), ")");
  h.body_bytes = static_cast<std::uint32_t>(body);
  GZ_RETURN_IF_ERROR(detail::cuda::write_header(h, out.data(), ex));
  *written = kHeaderBytes + body;
  return Status::Ok();
#else
  PayloadHeader h;
  return encode_cuda(x, out, written, h, ex);
#endif
}

Status Compressor::encode_cuda(Span<const float>, MutableBytes, std::size_t*, PayloadHeader&, const Exec&) const {
#if GRADZIP_HAS_CUDA
  return Status::Unsupported(name(), ".encode: no CUDA kernel for this codec yet");
#else
  return Status::Unsupported(name(), ".encode: gradzip was built without CUDA (GRADZIP_ENABLE_CUDA=OFF)");
#endif
}

Status Compressor::decode_cuda(const PayloadHeader&, ConstBytes, Span<float>, DecodeMode, float, const Exec&) const {
#if GRADZIP_HAS_CUDA
  return Status::Unsupported(name(), ".decode: no CUDA kernel for this codec yet");
#else
  return Status::Unsupported(name(), ".decode: gradzip was built without CUDA (GRADZIP_ENABLE_CUDA=OFF)");
#endif
}

#if !GRADZIP_HAS_CUDA
bool cuda_available() {
  return false;
}
Status device_status_to_status(std::uint32_t bits, const char* op) {
  if (bits == 0) return Status::Ok();
  return Status::Unsupported(op, ": device status bits 0x", std::hex, bits, " in a build without CUDA");
}
Status cuda_take_status(std::uint32_t*, void*, const char* op) {
  return Status::Unsupported(op, ": gradzip was built without CUDA (GRADZIP_ENABLE_CUDA=OFF)");
}
#endif

}  // namespace gradzip
