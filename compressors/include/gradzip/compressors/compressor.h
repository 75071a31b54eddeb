// The Compressor interface: an immutable, thread-safe codec that turns a float vector into a self-describing
// payload (see payload.h) and decodes payloads back, optionally accumulating.
//
// Contract (all codecs):
//  - `check(dtype, numel)` says whether the codec can handle the input before any work (like CUTLASS's
//    can_implement); only DType::kF32 inputs with 1 <= numel < 2^32 are accepted by the built-in codecs.
//  - `max_encoded_bytes(numel)` bounds the payload; `encode` requires `out.size() >= max_encoded_bytes(numel)`
//    and reports the exact size in `*written` (= kHeaderBytes + body bytes of the codec's bit formula).
//  - Inputs must be finite unless `Exec::check_finite` is false: NaN/Inf give kNonFinite naming the index.
//  - `decode` validates the payload (magic, version, codec id, numel == y.size(), body length, parameters)
//    before reading it; a bad payload gives kInvalidPayload and never reads or writes out of bounds.
//    kOverwrite: y = scale * C(x); kAccumulate: y += scale * C(x). `y` must not alias the payload.
//  - Randomness comes only from `Exec::rng` (counter-based, see rng.h): the same key gives the same bits.
//  - Thread-safety: all methods are const and safe to call concurrently; per-call state (lowrank's Q) lives in
//    `Exec::state`, owned by the caller.
//  - Determinism: deterministic codecs are bit-reproducible; stochastic codecs are bit-reproducible for a fixed
//    RngKey. Reductions (norms, scales) use the fixed order documented in reduce.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gradzip/compressors/core.h"
#include "gradzip/compressors/payload.h"

namespace gradzip {

/// Which guarantee the theory gives (algorithms.md §2.1).
enum class GuaranteeKind : std::uint8_t {
  kContractive,  // E||C(x) - x||^2 <= (1 - delta) ||x||^2, delta in (0, 1]
  kUnbiased,     // E C(x) = x and E||C(x) - x||^2 <= omega ||x||^2
  kBiased,       // biased with no worst-case bound (one-step PowerSGD, compositions with large omega)
};
const char* guarantee_kind_name(GuaranteeKind k);

struct CompressorTraits {
  GuaranteeKind kind = GuaranteeKind::kBiased;
  double delta = 0.0;         // contractive constant for this numel (1 for identity); 0 when not contractive
  double omega = 0.0;         // unbiased variance constant for this numel; 0 when deterministic-unbiased
  bool deterministic = true;  // the output depends on x alone (not on Exec::rng)
  bool linear = false;        // C(x) + C(y) is decodable from summed payload values (identity, shared Rand-K)
  bool stateful = false;      // uses Exec::state (lowrank)
};

class Compressor {
 public:
  virtual ~Compressor() = default;

  /// Registry name, e.g. "topk".
  virtual std::string_view name() const = 0;
  /// Canonical spec string; parse_compressor(spec())->spec() == spec().
  virtual std::string spec() const = 0;
  /// Wire id written to the header (CodecId for built-ins).
  virtual std::uint16_t codec_id() const = 0;
  /// Guarantee for inputs of length numel.
  virtual CompressorTraits traits(std::size_t numel) const = 0;
  /// Upper bound on the payload size (header included) for numel elements.
  virtual std::size_t max_encoded_bytes(std::size_t numel) const = 0;
  /// Scratch bytes the call may use through Exec::workspace (0: none needed). On the CUDA device a call whose
  /// workspace is smaller allocates it stream-ordered (cudaMallocAsync) for the call.
  virtual std::size_t workspace_bytes(std::size_t /*numel*/, Device /*d*/) const { return 0; }
  /// True when encode and decode run on the CUDA device in this build (buffers in device memory, Exec::device =
  /// kCuda, Exec::stream). False: a kCuda call returns kUnsupported.
  virtual bool has_cuda() const { return false; }

  /// Can this codec handle `numel` elements of `dtype`? kInvalidArgument naming the codec and values if not.
  Status check(DType dtype, std::size_t numel) const;

  /// Encodes x into out[0 .. *written). See the contract above.
  [[nodiscard]] Status encode(Span<const float> x, MutableBytes out, std::size_t* written, const Exec& ex) const;
  /// Convenience: encodes into a fresh vector sized exactly to the payload (allocates).
  StatusOr<std::vector<std::uint8_t>> encode(Span<const float> x, const Exec& ex) const;
  /// Decodes `payload` into y (overwrite or accumulate, times `scale`). See the contract above.
  [[nodiscard]] Status decode(ConstBytes payload, Span<float> y, DecodeMode mode, const Exec& ex,
                              float scale = 1.0f) const;

 protected:
  /// Codec-specific checks of numel (k <= numel, 2-D shape, ...). Called by check().
  virtual Status check_numel(std::size_t /*numel*/) const { return Status::Ok(); }
  /// Writes the body for x into `body` (capacity max_encoded_bytes - kHeaderBytes), sets *body_bytes and the
  /// codec fields of `h` (flags, param0, param1). x is finite (if checked) and passed check().
  virtual Status encode_cpu(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader& h,
                            const Exec& ex) const = 0;
  /// Decodes a body whose header has passed the generic validation (codec id, numel, body length in bounds).
  /// The codec validates flags, params and the exact body length.
  virtual Status decode_cpu(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                            const Exec& ex) const = 0;
  /// CUDA seams (device buffers). encode_cuda: like encode_cpu; the base class then writes the header into device
  /// memory with a kernel (no host round trip). decode_cuda: the base class cannot read a header in device memory,
  /// so `h` holds only what it expects (codec_id, numel, flags) and `body` spans the whole rest of the payload
  /// buffer; the codec completes the expected header (flags, params, exact body_bytes) and its kernels compare all
  /// of it with the payload's on the device before touching y.
  /// Flags rule: h.flags = the wrapper bits the payload must carry; the codec ORs its own flags into the expected
  /// header (e.flags = h.flags | own), never overwrites them. The base class starts from required_wrapper_flags();
  /// a wrapper (scaled()) calls its inner codec's decode_cuda with its own bit kept set in h.flags; a nested payload
  /// (compose's quantizer) is decoded through the public decode(), so it starts again from the nested codec's
  /// required_wrapper_flags() (0 for a plain quantizer), whatever wraps the outer payload.
  virtual Status encode_cuda(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader& h,
                             const Exec& ex) const;
  virtual Status decode_cuda(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                             const Exec& ex) const;
  /// True when encode_cpu itself detects NaN/Inf (e.g. through a norm it computes anyway) and then returns
  /// check_finite()'s kNonFinite error; the base class then skips its separate pre-scan of x, which costs about
  /// half a memcpy of the input.
  virtual bool detects_nonfinite() const { return false; }
  /// Header flag bits this decoder requires set (the scaled() wrapper sets kFlagScaledWrapper) — any other
  /// reserved bit set in a payload is rejected.
  virtual std::uint32_t required_wrapper_flags() const { return 0; }

  friend class ScaledUnbiased;  // forwards to the inner codec's protected hooks
  friend class Compose;

 private:
  Status encode_cuda_with_header(Span<const float> x, MutableBytes out, std::size_t* written, const Exec& ex) const;
};

/// "k=0 must be ..." style helper: the k for a ratio (ceil(ratio * numel), at least 1, at most numel).
std::size_t k_from_ratio(double ratio, std::size_t numel);

/// Scans x for NaN/Inf. Returns kNonFinite "op: x[i] = nan" for the first offending index.
Status check_finite(Span<const float> x, const char* op);

}  // namespace gradzip
