// CUDA error-feedback steps (see device_feedback.h). Compiled with --fmad=false so that eta * e + (g - h) rounds
// exactly as the CPU loop does (a product, a difference and a sum, each rounded once).
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "gradzip/error_feedback/device_feedback.h"

namespace gradzip::device_feedback {
namespace {

// Elementwise prep kernels: 4 elements per thread (16-byte accesses when every buffer is 16-byte aligned), scalar tail.
constexpr unsigned kPer = 4;
__device__ __forceinline__ std::size_t tid4() {
  return (blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x) * kPer;
}
__device__ __forceinline__ float4 ld4(const float* p, std::size_t i) {
  return *reinterpret_cast<const float4*>(p + i);
}
__device__ __forceinline__ void st4(float* p, std::size_t i, float4 v) {
  *reinterpret_cast<float4*>(p + i) = v;
}

__global__ void ef14_prep(const float* g, float gamma, float* e, std::size_t n, bool vec) {
  const std::size_t i0 = tid4();
  if (vec && i0 + kPer <= n) {
    const float4 a = ld4(g, i0), b = ld4(e, i0);
    st4(e, i0, make_float4(b.x + gamma * a.x, b.y + gamma * a.y, b.z + gamma * a.z, b.w + gamma * a.w));
    return;
  }
  for (std::size_t i = i0; i < n && i < i0 + kPer; ++i) e[i] = e[i] + gamma * g[i];
}
__global__ void ef21_prep(const float* g, const float* G, float* s, std::size_t n, bool vec) {
  const std::size_t i0 = tid4();
  if (vec && i0 + kPer <= n) {
    const float4 a = ld4(g, i0), b = ld4(G, i0);
    st4(s, i0, make_float4(a.x - b.x, a.y - b.y, a.z - b.z, a.w - b.w));
    return;
  }
  for (std::size_t i = i0; i < n && i < i0 + kPer; ++i) s[i] = g[i] - G[i];
}
__device__ __forceinline__ void econtrol_one(float g, float h, float eta, float& e, float& u) {
  const float diff = g - h;
  const float ei = e;
  u = eta * ei + diff;
  e = ei + diff;
}
/// One pass: u = eta e + (g - h) into scratch, and e <- e + (g - h) (the pre-decode part of the new e).
__global__ void econtrol_prep(const float* g, float eta, float* e, const float* h, float* u, std::size_t n, bool vec) {
  const std::size_t i0 = tid4();
  if (vec && i0 + kPer <= n) {
    const float4 a = ld4(g, i0), b = ld4(h, i0);
    float4 c = ld4(e, i0), o;
    econtrol_one(a.x, b.x, eta, c.x, o.x);
    econtrol_one(a.y, b.y, eta, c.y, o.y);
    econtrol_one(a.z, b.z, eta, c.z, o.z);
    econtrol_one(a.w, b.w, eta, c.w, o.w);
    st4(u, i0, o);
    st4(e, i0, c);
    return;
  }
  for (std::size_t i = i0; i < n && i < i0 + kPer; ++i) econtrol_one(g[i], h[i], eta, e[i], u[i]);
}
bool al16(std::initializer_list<const void*> ps) {
  for (const void* p : ps)
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return false;
  return true;
}

Status launched(const char* op) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return Status::Cuda(op, ": ", cudaGetErrorString(err));
  return Status::Ok();
}
Status check(const Compressor& c, const Exec& ex, const char* op, std::size_t n,
             std::initializer_list<std::size_t> sz) {
  if (ex.device != Device::kCuda) return Status::InvalidArgument(op, ": Exec::device must be kCuda");
  if (!c.has_cuda()) return Status::Unsupported(op, ": codec ", c.spec(), " has no CUDA kernels in this build");
  for (std::size_t s : sz)
    if (s != n) return Status::InvalidArgument(op, ": buffers of ", s, " and ", n, " elements differ in length");
  return Status::Ok();
}
unsigned blocks(std::size_t n) {
  return static_cast<unsigned>((n + 256 * kPer - 1) / (256 * kPer));
}

}  // namespace

Status ef14_step(const Compressor& codec, Span<const float> g, float gamma, Span<float> e, MutableBytes out,
                 std::size_t* written, const Exec& ex) {
  GZ_RETURN_IF_ERROR(check(codec, ex, "ef14.step (CUDA)", g.size(), {e.size()}));
  const auto s = static_cast<cudaStream_t>(ex.stream);
  ef14_prep<<<blocks(g.size()), 256, 0, s>>>(g.data(), gamma, e.data(), g.size(), al16({g.data(), e.data()}));
  GZ_RETURN_IF_ERROR(launched("ef14.step (CUDA)"));
  GZ_RETURN_IF_ERROR(codec.encode(Span<const float>(e.data(), e.size()), out, written, ex));
  return codec.decode(ConstBytes(out.data(), *written), e, DecodeMode::kAccumulate, ex, -1.0f);
}

Status ef21_step(const Compressor& codec, Span<const float> g, Span<float> G, Span<float> scratch, MutableBytes out,
                 std::size_t* written, const Exec& ex) {
  GZ_RETURN_IF_ERROR(check(codec, ex, "ef21.step (CUDA)", g.size(), {G.size(), scratch.size()}));
  const auto s = static_cast<cudaStream_t>(ex.stream);
  ef21_prep<<<blocks(g.size()), 256, 0, s>>>(g.data(), G.data(), scratch.data(), g.size(),
                                             al16({g.data(), G.data(), scratch.data()}));
  GZ_RETURN_IF_ERROR(launched("ef21.step (CUDA)"));
  GZ_RETURN_IF_ERROR(codec.encode(Span<const float>(scratch.data(), scratch.size()), out, written, ex));
  return codec.decode(ConstBytes(out.data(), *written), G, DecodeMode::kAccumulate, ex, 1.0f);
}

Status econtrol_step(const Compressor& codec, Span<const float> g, float eta, Span<float> e, Span<float> h,
                     Span<float> scratch, MutableBytes out, std::size_t* written, const Exec& ex) {
  GZ_RETURN_IF_ERROR(check(codec, ex, "econtrol.step (CUDA)", g.size(), {e.size(), h.size(), scratch.size()}));
  const auto s = static_cast<cudaStream_t>(ex.stream);
  econtrol_prep<<<blocks(g.size()), 256, 0, s>>>(g.data(), eta, e.data(), h.data(), scratch.data(), g.size(),
                                                 al16({g.data(), e.data(), h.data(), scratch.data()}));
  GZ_RETURN_IF_ERROR(launched("econtrol.step (CUDA)"));
  GZ_RETURN_IF_ERROR(codec.encode(Span<const float>(scratch.data(), scratch.size()), out, written, ex));
  const ConstBytes payload(out.data(), *written);
  GZ_RETURN_IF_ERROR(codec.decode(payload, e, DecodeMode::kAccumulate, ex, -1.0f));
  return codec.decode(payload, h, DecodeMode::kAccumulate, ex, 1.0f);
}

}  // namespace gradzip::device_feedback
