// Internal: host entry points of the CUDA kernels (compressors/src/cuda/*.cu), called from the codecs' encode_cuda /
// decode_cuda overrides. All buffers are device memory; everything runs on ex.stream. Encoders write the body only
// (the base class writes the header with write_header); decoders get the complete expected header (`expect`, with
// the exact body_bytes) and validate the payload's header against it, all 32 bytes, on the device before touching y.
// expect.flags already holds every bit the payload must carry: the wrapper bits the codec's decode_cuda received in
// h.flags (kFlagScaledWrapper under scaled()) ORed with the codec's own flags (see Compressor::decode_cuda).
// Bit-exact with the CPU codecs (same formulas, float operations in the same order, no FMA contraction: the sources
// are compiled with --fmad=false; reductions in reduce.h's documented order; Philox draws by element index).
#pragma once

#include <cstddef>
#include <cstdint>

#include "gradzip/compressors/compressor.h"

namespace gradzip::detail::cuda {

Status write_header(const PayloadHeader& h, std::uint8_t* dst, const Exec& ex);

/// kNonFinite naming the first bad index (synchronous), or the kDeviceNonFinite bit (asynchronous).
Status check_finite(Span<const float> x, const char* op, const Exec& ex);

Status identity_encode(Span<const float> x, MutableBytes body, std::size_t* body_bytes, const Exec& ex);
Status identity_decode(const PayloadHeader& expect, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                       const Exec& ex);
Status half_encode(bool bf16, Span<const float> x, MutableBytes body, std::size_t* body_bytes, const Exec& ex);
Status half_decode(bool bf16, const PayloadHeader& expect, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                   const Exec& ex);
Status sign_encode(Span<const float> x, MutableBytes body, std::size_t* body_bytes, const Exec& ex);
Status sign_decode(const PayloadHeader& expect, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                   const Exec& ex);
Status natural_encode(Span<const float> x, MutableBytes body, std::size_t* body_bytes, const Exec& ex);
Status natural_decode(const PayloadHeader& expect, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                      const Exec& ex);
/// Fixed coding only; width = 1 + ceil(log2(levels + 1)).
Status qsgd_encode(std::uint32_t levels, int width, bool linf, Span<const float> x, MutableBytes body,
                   std::size_t* body_bytes, const Exec& ex);
Status qsgd_decode(std::uint32_t levels, int width, const PayloadHeader& expect, ConstBytes body, Span<float> y,
                   DecodeMode mode, float scale, const Exec& ex);
std::size_t qsgd_workspace(std::size_t d);
std::size_t sign_workspace(std::size_t d);

/// Exact Top-K (|x| desc, index asc) in the CPU's wire forms.
Status topk_encode(std::size_t k, Span<const float> x, MutableBytes body, std::size_t* body_bytes, const Exec& ex);
Status topk_decode(std::size_t k, const PayloadHeader& expect, ConstBytes body, Span<float> y, DecodeMode mode,
                   float scale, const Exec& ex);
std::size_t topk_workspace(std::size_t d, std::size_t k);
/// Rand-K with Floyd's subset (computed in parallel, same subset as the CPU's sequential loop).
Status randk_encode(std::size_t k, bool shared, const RngKey& key, Span<const float> x, MutableBytes body,
                    std::size_t* body_bytes, const Exec& ex);
Status randk_decode(std::size_t k, bool shared, float factor, const RngKey& key, const PayloadHeader& expect,
                    ConstBytes body, Span<float> y, DecodeMode mode, const Exec& ex);
std::size_t randk_workspace(std::size_t d, std::size_t k);

/// The first stage of compose on the device, as Sparsifier::select draws it on the CPU.
struct ComposeSelect {
  bool randk = false;        // false: Top-K's exact selection; true: Rand-K's Floyd subset for `key`
  RngKey key;                // Rand-K: detail::randk_subset_key(config, Exec::rng) (builtin.h)
  float value_scale = 1.0f;  // v = x_U * value_scale (detail::randk_value_scale: d/k for unbiased Rand-K)
};
/// compose(topk|randk:..., <quantizer with CUDA kernels>) (compose.cc's wire): the subset U (ascending indices; Top-K
/// as topk_encode selects, Rand-K as randk_encode draws), the index section (d-bit bitmap when `bitmap`, else the k
/// indices in index_bits(d) bits, zero-padded to `section_bytes`), then q.encode of v = x_U * value_scale (k
/// elements) into the rest of the body, with `qex` (compose.cc's quantizer Exec: ex without its workspace, the seed
/// mixed for Rand-K, as on the CPU).
Status compose_encode(std::size_t k, const ComposeSelect& sel, bool bitmap, std::size_t section_bytes,
                      const Compressor& q, const Exec& qex, Span<const float> x, MutableBytes body,
                      std::size_t* body_bytes, const Exec& ex);
/// compose decode (any sparsifier: the indices travel): validates the outer header against `expect` (exact
/// body_bytes) and the index section on the device, decodes the nested payload with q (reporting to the same status
/// word), and writes y (scale * values on the indices; overwrite zeroes the rest) only when all of it validated.
Status compose_decode(std::size_t k, bool bitmap, std::size_t section_bytes, const Compressor& q,
                      const PayloadHeader& expect, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                      const Exec& ex);

}  // namespace gradzip::detail::cuda
