// device_feedback.h in a build without CUDA: every step is kUnsupported.
#include "gradzip/error_feedback/device_feedback.h"

namespace gradzip::device_feedback {

Status ef14_step(const Compressor&, Span<const float>, float, Span<float>, MutableBytes, std::size_t*, const Exec&) {
  return Status::Unsupported("ef14.step (CUDA): gradzip was built without CUDA (GRADZIP_ENABLE_CUDA=OFF)");
}
Status ef21_step(const Compressor&, Span<const float>, Span<float>, Span<float>, MutableBytes, std::size_t*,
                 const Exec&) {
  return Status::Unsupported("ef21.step (CUDA): gradzip was built without CUDA (GRADZIP_ENABLE_CUDA=OFF)");
}
Status econtrol_step(const Compressor&, Span<const float>, float, Span<float>, Span<float>, Span<float>, MutableBytes,
                     std::size_t*, const Exec&) {
  return Status::Unsupported("econtrol.step (CUDA): gradzip was built without CUDA (GRADZIP_ENABLE_CUDA=OFF)");
}

}  // namespace gradzip::device_feedback
