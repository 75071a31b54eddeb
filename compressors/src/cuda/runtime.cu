// CUDA runtime glue of the compressors layer: header writes, the device status word, the NaN/Inf scan and the
// pairwise-tree reduction of reduce.h.
#include <string>

#include "common.cuh"

namespace gradzip {

bool cuda_available() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return n > 0;
}

Status device_status_to_status(std::uint32_t bits, const char* op) {
  if (bits == 0) return Status::Ok();
  if (bits & kDeviceBadHeader)
    return Status::InvalidPayload(op,
                                  " (CUDA): the payload header does not match this codec's (codec id, numel, "
                                  "flags, parameters or body length)");
  if (bits & kDeviceBadBody)
    return Status::InvalidPayload(op,
                                  " (CUDA): invalid payload body (an index out of range or not increasing, a "
                                  "reserved code, a bad scale or nonzero padding); the output may be partly "
                                  "written");
  if (bits & kDeviceNonFinite) return Status::NonFinite(op, " (CUDA): the input holds NaN or Inf");
  if (bits & kDeviceOutOfRange)
    return Status::OutOfRange(op, " (CUDA): a finite input value is outside the range the codec can represent");
  return Status::Internal(op, " (CUDA): unknown device status bits 0x", std::hex, bits);
}

Status cuda_take_status(std::uint32_t* word, void* stream, const char* op) {
  if (word == nullptr) return Status::InvalidArgument(op, ": status word is null");
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  std::uint32_t bits = 0;
  GZ_CUDA_CHECK(cudaMemcpyAsync(&bits, word, sizeof(bits), cudaMemcpyDeviceToHost, s));
  GZ_CUDA_CHECK(cudaMemsetAsync(word, 0, sizeof(bits), s));
  GZ_CUDA_CHECK(cudaStreamSynchronize(s));
  return device_status_to_status(bits, op);
}

namespace detail::cuda {

namespace {

__global__ void write_header_kernel(HeaderWords h, std::uint8_t* dst) {
  const unsigned t = threadIdx.x;
  if (t < 8) store_u32_any(dst + 4 * t, h.w[t]);
}

/// first[0] = min index of a non-finite element (atomicMin), or stays at the initial value.
__global__ void nonfinite_kernel(const float* x, std::size_t n, unsigned long long* first) {
  const std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (i < n && (__float_as_uint(x[i]) & 0x7f800000u) == 0x7f800000u)
    atomicMin(first, static_cast<unsigned long long>(i));
}
__global__ void nonfinite_flag_kernel(const unsigned long long* first, std::size_t n, std::uint32_t* status) {
  if (*first < n) atomicOr(status, kDeviceNonFinite);
}

}  // namespace

__global__ void tree_sum_kernel(const double* in, double* out, std::size_t count) {
  __shared__ double a[1024];
  const unsigned t = threadIdx.x;
  const std::size_t base = static_cast<std::size_t>(blockIdx.x) * 1024;
  const std::size_t cnt = count - base < 1024 ? count - base : 1024;
  a[t] = t < cnt ? in[base + t] : 0.0;
  __syncthreads();
  for (unsigned s = 1; s < 1024; s <<= 1) {
    if (t % (2 * s) == 0 && t + s < cnt) a[t] = a[t] + a[t + s];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = a[0];
}

Status tree_sum(double* a, double* b, std::size_t count, double** result, cudaStream_t s) {
  double* in = a;
  double* out = b;
  while (count > 1) {
    const unsigned blocks = grid_for(count, 1024);
    tree_sum_kernel<<<blocks, 1024, 0, s>>>(in, out, count);
    GZ_CUDA_LAUNCH_CHECK();
    count = blocks;
    double* t = in;
    in = out;
    out = t;
  }
  *result = in;
  return Status::Ok();
}

Status write_header(const PayloadHeader& h, std::uint8_t* dst, const Exec& ex) {
  write_header_kernel<<<1, 32, 0, stream_of(ex)>>>(header_words(h), dst);
  GZ_CUDA_LAUNCH_CHECK();
  return Status::Ok();
}

Status check_finite(Span<const float> x, const char* op, const Exec& ex) {
  const cudaStream_t s = stream_of(ex);
  Scratch scratch;
  GZ_RETURN_IF_ERROR(scratch.init(sizeof(unsigned long long), ex));
  auto* first = reinterpret_cast<unsigned long long*>(scratch.data());
  GZ_CUDA_CHECK(cudaMemsetAsync(first, 0xff, sizeof(unsigned long long), s));
  nonfinite_kernel<<<grid_for(x.size(), 256), 256, 0, s>>>(x.data(), x.size(), first);
  GZ_CUDA_LAUNCH_CHECK();
  if (ex.device_status != nullptr) {
    nonfinite_flag_kernel<<<1, 1, 0, s>>>(first, x.size(), ex.device_status);
    GZ_CUDA_LAUNCH_CHECK();
    return Status::Ok();
  }
  unsigned long long idx = 0;
  float v = 0.0f;
  GZ_CUDA_CHECK(cudaMemcpyAsync(&idx, first, sizeof(idx), cudaMemcpyDeviceToHost, s));
  GZ_CUDA_CHECK(cudaStreamSynchronize(s));
  if (idx >= x.size()) return Status::Ok();
  GZ_CUDA_CHECK(cudaMemcpy(&v, x.data() + idx, sizeof(float), cudaMemcpyDeviceToHost));
  return Status::NonFinite(op, ": x[", idx, "] = ", v, " is not finite");
}

}  // namespace detail::cuda
}  // namespace gradzip
