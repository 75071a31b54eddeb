// Error-feedback steps on the CUDA device (algorithms.md §4.2, §4.3, §4.6): the same rules and the same float
// operations, in the same order, as FeedbackWorker's CPU steps (feedback.h), over caller-owned device buffers and on
// Exec::stream, with no host round trip when Exec::device_status is set. The dense part of each rule is one fused
// elementwise pass; the memories then take the payload through the codec's decode-accumulate (scale -1 or +1), which
// for sparse codecs touches only the kept entries.
//
//   ef14_step      e <- e + gamma g ; payload = C(e) ; e <- e - D(payload)                    (gamma-inside form)
//   ef21_step      s = g - G ; payload = C(s) ; G <- G + D(payload)                          (step >= 1)
//   econtrol_step  u = eta e + (g - h) ; payload = C(u) ; e <- e + (g - h) - D(payload) ; h <- h + D(payload)
//                  (step >= 1; step 0 with init=uncompressed sends g itself and sets h = g, e = 0 -- the caller's job)
// Buffers: all of length numel, device memory, no aliasing between g and the memories; `scratch` may not alias
// anything. `out` must hold codec.max_encoded_bytes(numel); *written is the payload size (known on the host).
// Errors: as the codec's encode/decode (kUnsupported when !codec.has_cuda()), kInvalidArgument for size mismatches,
// kUnsupported in a build without CUDA. Thread-safety: the buffers belong to one call at a time.
#pragma once

#include <cstddef>

#include "gradzip/compressors/compressor.h"

namespace gradzip::device_feedback {

Status ef14_step(const Compressor& codec, Span<const float> g, float gamma, Span<float> e, MutableBytes out,
                 std::size_t* written, const Exec& ex);
Status ef21_step(const Compressor& codec, Span<const float> g, Span<float> G, Span<float> scratch, MutableBytes out,
                 std::size_t* written, const Exec& ex);
Status econtrol_step(const Compressor& codec, Span<const float> g, float eta, Span<float> e, Span<float> h,
                     Span<float> scratch, MutableBytes out, std::size_t* written, const Exec& ex);

}  // namespace gradzip::device_feedback
