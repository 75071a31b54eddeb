// Internal device helpers shared by the CUDA codecs: error mapping, scratch and status words, header checks,
// Philox, unaligned loads and stores.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "codecs_cuda.h"
#include "gradzip/compressors/cuda.h"
#include "gradzip/compressors/payload.h"

#define GZ_CUDA_CHECK(expr)                                                   \
  do {                                                                        \
    cudaError_t gz_e_ = (expr);                                               \
    if (gz_e_ != cudaSuccess) {                                               \
      (void)cudaGetLastError();                                               \
      return ::gradzip::Status::Cuda(#expr, ": ", cudaGetErrorString(gz_e_)); \
    }                                                                         \
  } while (0)
#define GZ_CUDA_LAUNCH_CHECK() GZ_CUDA_CHECK(cudaGetLastError())

namespace gradzip::detail::cuda {

inline cudaStream_t stream_of(const Exec& ex) {
  return static_cast<cudaStream_t>(ex.stream);
}
inline bool aligned(const void* p, std::size_t a) {
  return reinterpret_cast<std::uintptr_t>(p) % a == 0;
}
inline unsigned grid_for(std::size_t items, unsigned per_block) {
  return static_cast<unsigned>((items + per_block - 1) / per_block);
}

/// Scratch memory: the caller's workspace when big enough, else a stream-ordered allocation freed at scope exit.
class Scratch {
 public:
  Status init(std::size_t bytes, const Exec& ex) {
    stream_ = stream_of(ex);
    if (bytes == 0) bytes = 16;
    if (ex.workspace.size() >= bytes && aligned(ex.workspace.data(), 256)) {
      ptr_ = ex.workspace.data();
      return Status::Ok();
    }
    void* p = nullptr;
    GZ_CUDA_CHECK(cudaMallocAsync(&p, bytes, stream_));
    ptr_ = static_cast<std::uint8_t*>(p);
    owned_ = true;
    return Status::Ok();
  }
  ~Scratch() {
    if (owned_) (void)cudaFreeAsync(ptr_, stream_);
  }
  std::uint8_t* data() const { return ptr_; }
  /// Carves 256-byte-aligned pieces off the scratch in order.
  template <class T>
  T* take(std::size_t count) {
    T* p = reinterpret_cast<T*>(ptr_ + used_);
    used_ += (count * sizeof(T) + 255) / 256 * 256;
    return p;
  }
  static std::size_t round(std::size_t bytes) { return (bytes + 255) / 256 * 256; }

 private:
  std::uint8_t* ptr_ = nullptr;
  std::size_t used_ = 0;
  cudaStream_t stream_ = nullptr;
  bool owned_ = false;
};

/// The device status word of one call: Exec::device_status, or an owned word read back (synchronously) by finish().
class StatusWord {
 public:
  Status init(const Exec& ex) {
    stream_ = stream_of(ex);
    if (ex.device_status != nullptr) {
      word_ = ex.device_status;
      return Status::Ok();
    }
    void* p = nullptr;
    GZ_CUDA_CHECK(cudaMallocAsync(&p, sizeof(std::uint32_t), stream_));
    word_ = static_cast<std::uint32_t*>(p);
    owned_ = true;
    GZ_CUDA_CHECK(cudaMemsetAsync(word_, 0, sizeof(std::uint32_t), stream_));
    return Status::Ok();
  }
  ~StatusWord() {
    if (owned_) (void)cudaFreeAsync(word_, stream_);
  }
  std::uint32_t* get() const { return word_; }
  bool owned() const { return owned_; }
  /// Checks the launches; for an owned word waits for the stream and maps the bits to a Status.
  Status finish(const char* op) {
    GZ_CUDA_LAUNCH_CHECK();
    if (!owned_) return Status::Ok();
    std::uint32_t bits = 0;
    GZ_CUDA_CHECK(cudaMemcpyAsync(&bits, word_, sizeof(bits), cudaMemcpyDeviceToHost, stream_));
    GZ_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return device_status_to_status(bits, op);
  }

 private:
  std::uint32_t* word_ = nullptr;
  cudaStream_t stream_ = nullptr;
  bool owned_ = false;
};

/// The expected 32 header bytes as 8 little-endian words (a kernel parameter).
struct HeaderWords {
  std::uint32_t w[8];
};
inline HeaderWords header_words(const PayloadHeader& h) {
  std::uint8_t b[kHeaderBytes];
  write_header(h, b);
  HeaderWords hw;
  std::memcpy(hw.w, b, kHeaderBytes);
  return hw;
}

/// Host side of every decoder: the buffer must hold the exact body the expected header announces.
inline Status check_body_capacity(const PayloadHeader& expect, ConstBytes body, const char* op) {
  if (body.size() < expect.body_bytes)
    return Status::InvalidPayload(op, ": payload buffer of ", body.size() + kHeaderBytes, " bytes is shorter than the ",
                                  kHeaderBytes + expect.body_bytes, " bytes this codec's payload needs");
  return Status::Ok();
}

__device__ __forceinline__ std::uint32_t load_u32_any(const std::uint8_t* p) {
  if ((reinterpret_cast<std::uintptr_t>(p) & 3u) == 0) return *reinterpret_cast<const std::uint32_t*>(p);
  return static_cast<std::uint32_t>(p[0]) | static_cast<std::uint32_t>(p[1]) << 8 |
         static_cast<std::uint32_t>(p[2]) << 16 | static_cast<std::uint32_t>(p[3]) << 24;
}
__device__ __forceinline__ void store_u32_any(std::uint8_t* p, std::uint32_t v) {
  if ((reinterpret_cast<std::uintptr_t>(p) & 3u) == 0) {
    *reinterpret_cast<std::uint32_t*>(p) = v;
  } else {
    p[0] = static_cast<std::uint8_t>(v);
    p[1] = static_cast<std::uint8_t>(v >> 8);
    p[2] = static_cast<std::uint8_t>(v >> 16);
    p[3] = static_cast<std::uint8_t>(v >> 24);
  }
}
/// Stores the low `nbytes` (<= 4) bytes of v at p.
__device__ __forceinline__ void store_bytes(std::uint8_t* p, std::uint32_t v, int nbytes) {
  for (int b = 0; b < nbytes; ++b) p[b] = static_cast<std::uint8_t>(v >> (8 * b));
}

/// Block-wide header check (blockDim >= 8): true when the payload header equals `e`. Block 0 reports a mismatch.
__device__ __forceinline__ bool block_header_ok(const std::uint8_t* payload, const HeaderWords& e,
                                                std::uint32_t* status) {
  const unsigned t = threadIdx.x;
  const bool bad = __syncthreads_or(t < 8 && load_u32_any(payload + 4 * t) != e.w[t]);
  if (bad && t == 0 && blockIdx.x == 0 && blockIdx.y == 0) atomicOr(status, kDeviceBadHeader);
  return !bad;
}

/// Warp-aggregated atomicOr of `bit` when `cond` holds in any lane (all lanes of the warp must call it).
__device__ __forceinline__ void warp_flag(bool cond, std::uint32_t* status, std::uint32_t bit) {
  if (__any_sync(0xffffffffu, cond) && (threadIdx.x & 31u) == 0) atomicOr(status, bit);
}

// ---- Philox4x32-10, the same function as rng.h ------------------------------------------------------------------
struct U4 {
  std::uint32_t v[4];
};
__device__ __forceinline__ U4 philox_block(std::uint32_t c0, std::uint32_t c1, std::uint32_t c2, std::uint32_t c3,
                                           std::uint32_t k0, std::uint32_t k1) {
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const std::uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const std::uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return U4{{c0, c1, c2, c3}};
}
__device__ __forceinline__ U4 philox_key_block(const RngKey& key, std::uint64_t b) {
  return philox_block(static_cast<std::uint32_t>(b), key.stream ^ static_cast<std::uint32_t>(b >> 32) * 0x9E3779B9u,
                      key.step, key.rank, static_cast<std::uint32_t>(key.seed),
                      static_cast<std::uint32_t>(key.seed >> 32));
}
__device__ __forceinline__ std::uint32_t philox_u32(const RngKey& key, std::uint64_t i) {
  const U4 b = philox_key_block(key, i >> 2);
  const unsigned w = static_cast<unsigned>(i & 3u);
  return w == 0 ? b.v[0] : w == 1 ? b.v[1] : w == 2 ? b.v[2] : b.v[3];
}
/// CounterRng::below: Lemire's multiply-shift with rejection, same draws.
__device__ __forceinline__ std::uint64_t philox_below(const RngKey& key, std::uint64_t i, std::uint64_t bound) {
  for (std::uint64_t attempt = 0;; ++attempt) {
    const std::uint64_t base = 2 * i + (attempt << 41);
    const U4 b = philox_key_block(key, base >> 2);
    const bool hi_pair = (base & 3u) != 0;
    const std::uint64_t r = hi_pair ? (static_cast<std::uint64_t>(b.v[3]) << 32 | b.v[2])
                                    : (static_cast<std::uint64_t>(b.v[1]) << 32 | b.v[0]);
    const std::uint64_t lo = r * bound;
    if (lo >= bound || lo >= (0 - bound) % bound) return __umul64hi(r, bound);
  }
}

/// Reads `nbits` (<= 64) bits starting at bit `pos` of an LSB-first stream of `size` bytes (bytes past the end read 0).
__device__ __forceinline__ std::uint64_t read_bits(const std::uint8_t* p, std::uint64_t size, std::uint64_t pos,
                                                   int nbits) {
  const std::uint64_t first = pos >> 3;
  const int shift = static_cast<int>(pos & 7u);
  unsigned __int128 acc = 0;
  const int nbytes = (shift + nbits + 7) / 8;
  for (int b = 0; b < nbytes; ++b) {
    const std::uint64_t at = first + static_cast<std::uint64_t>(b);
    const unsigned __int128 byte = at < size ? p[at] : 0;
    acc |= byte << (8 * b);
  }
  acc >>= shift;
  return nbits == 64 ? static_cast<std::uint64_t>(acc)
                     : static_cast<std::uint64_t>(acc) & ((std::uint64_t{1} << nbits) - 1);
}

/// Level-wise pairwise tree over `count` doubles (reduce.h): block b reduces in[1024 b .. 1024 b + 1024) to out[b].
__global__ void tree_sum_kernel(const double* in, double* out, std::size_t count);
/// Runs tree_sum_kernel rounds until one value is left; returns where it is (inside `a` or `b`, each >= count).
Status tree_sum(double* a, double* b, std::size_t count, double** result, cudaStream_t s);

}  // namespace gradzip::detail::cuda
