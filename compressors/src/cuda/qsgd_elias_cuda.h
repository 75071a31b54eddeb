// Internal: host entry points of QSGD coding=elias on the device (compressors/src/cuda/qsgd_elias.cu), called from
// qsgd.cc's encode_cuda / decode_cuda. The wire is the CPU's chunked Elias body (qsgd.cc's comment); the chunk coding
// itself is elias_omega.h, shared with the CPU. Device buffers, ex.stream. Bit-exact with the CPU codec.
#pragma once

#include <cstddef>
#include <cstdint>

#include "gradzip/compressors/compressor.h"

namespace gradzip::detail::cuda {

/// Scratch bytes of qsgd_elias_encode for d elements at `levels` (the decoder needs none).
std::size_t qsgd_elias_workspace(std::size_t d, std::uint32_t levels);

/// Encodes x into the chunked Elias body: N and the quantization parameters as qsgd_encode (the same norm kernels and
/// draws), per-element codes into scratch, one warp per chunk writing its stream into a worst-case-sized slot, a
/// scan of the stream lengths (the table), then a copy of the slots into the body. Synchronises ex.stream once to
/// read the body length back. Errors: kNonFinite / kOutOfRange as qsgd_encode (the status word), kCuda.
Status qsgd_elias_encode(std::uint32_t levels, bool linf, Span<const float> x, MutableBytes body,
                         std::size_t* body_bytes, const Exec& ex);

/// Decodes a chunked Elias body: `expect` is the complete expected header except body_bytes (0 there); the kernels
/// compare the other 28 header bytes, check body_bytes against body.size() (the buffer) and the table, validate
/// every chunk stream (one thread per chunk), and write y in a second kernel only when the status word is still 0
/// (nothing was written when a payload is rejected). Errors (status word bits): kDeviceBadHeader, kDeviceBadBody.
Status qsgd_elias_decode(std::uint32_t levels, const PayloadHeader& expect, ConstBytes body, Span<float> y,
                         DecodeMode mode, float scale, const Exec& ex);

}  // namespace gradzip::detail::cuda
