// Internal: QSGD's per-element quantizer on the device, shared by the fixed coding (dense.cu) and the Elias coding
// (qsgd_elias.cu). The same float operations in the same order as qsgd.cc's GZ_QSGD_QUANTIZE_BODY (compiled with
// --fmad=false), so the codes equal the CPU's bit for bit.
#pragma once

#include <cstdint>

#include "common.cuh"

namespace gradzip::detail::cuda {

/// r = min((|x| * pre) * scale, sf): pre an exact power of two, scale = s / (N pre), sf = s.
struct QuantDev {
  float pre, scale, sf;
};

/// code = sign | level << 1 of value v with the Philox draw rnd (sign 0 when the level is 0).
__device__ __forceinline__ std::uint32_t qsgd_code(float v, std::uint32_t rnd, const QuantDev& q) {
  const std::uint32_t u = __float_as_uint(v);
  const std::uint32_t sign = u >> 31;
  float r = fabsf(v) * q.pre * q.scale;
  r = r < q.sf ? r : q.sf;
  const int l = static_cast<int>(r);
  const float frac = r - static_cast<float>(l);
  const float u24 = static_cast<float>(static_cast<int>(rnd >> 8));
  const std::uint32_t lvl = static_cast<std::uint32_t>(l) + static_cast<std::uint32_t>(u24 < frac * 16777216.0f);
  return (lvl << 1) | (sign & static_cast<std::uint32_t>(lvl != 0));
}

/// QSGD's norm N and quantization parameters on the device (dense.cu; shared by both codings): launches the norm
/// reduction and the parameter kernel on ex.stream, which writes N as float32 at norm_out and the parameters at
/// *q_out (carved from `scratch`, which must have qsgd_workspace(x.size()) bytes left). kNonFinite / kOutOfRange go
/// to `status`.
Status qsgd_params(std::uint32_t levels, bool linf, Span<const float> x, std::uint8_t* norm_out, Scratch& scratch,
                   QuantDev** q_out, std::uint32_t* status, const Exec& ex);

}  // namespace gradzip::detail::cuda
