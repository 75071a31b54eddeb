// CUDA helpers of the compressors layer: device availability and the device status word (Exec::device_status).
//
// Every codec with has_cuda() encodes and decodes device buffers on Exec::stream without synchronising when
// Exec::device_status is set: errors that only the device can see (a corrupted payload, an fp16 overflow, a NaN)
// are OR-ed into that word as the bits below, and the caller reads them once, later, with cuda_take_status(). With
// Exec::device_status null each call synchronises its stream once and returns the exact Status itself.
//
// Device-path contract differences (documented, tested): a payload whose 32-byte header differs from the expected
// one (codec, numel, flags, params, exact body length) never touches y; a payload with a valid header but invalid
// body content (an index >= d, a reserved code) is detected in the same pass, so y may be partly updated when the
// error is reported (the CPU path validates the whole body first).
// Thread-safety: functions are thread-safe; a status word belongs to one stream at a time.
#pragma once

#include <cstdint>

#include "gradzip/compressors/core.h"

namespace gradzip {

enum DeviceStatusBits : std::uint32_t {
  kDeviceBadHeader = 1u,  // payload header differs from the expected one (kInvalidPayload)
  kDeviceBadBody = 2u,    // invalid body content: index out of range or not increasing, reserved code (kInvalidPayload)
  kDeviceNonFinite = 4u,  // NaN/Inf in an encoder input (kNonFinite)
  kDeviceOutOfRange = 8u,  // a finite value the codec cannot represent (kOutOfRange)
};

/// True when gradzip was built with CUDA and a CUDA device is visible.
bool cuda_available();

/// Waits for `stream`, reads the status word, zeroes it, and turns its bits into a Status naming `op`.
/// kUnsupported in a build without CUDA.
Status cuda_take_status(std::uint32_t* word, void* stream, const char* op);

/// The Status for a set of DeviceStatusBits (Ok for 0).
Status device_status_to_status(std::uint32_t bits, const char* op);

}  // namespace gradzip
