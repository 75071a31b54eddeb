// CUDA kernels of the dense codecs: identity, fp16, bf16, scaled sign, natural, QSGD (fixed coding).
// Each reproduces its CPU codec bit for bit (see the CPU sources for the formulas; the comments here only say how the
// work is split). Elementwise kernels give each thread 8 consecutive elements (two 16-byte loads when x is 16-byte
// aligned) and write the packed bytes of those 8 elements; reductions follow reduce.h's chunk/lane/tree order.
#include "common.cuh"
#include "gradzip/compressors/reduce.h"
#include "qsgd_quant.cuh"

namespace gradzip::detail::cuda {
namespace {

constexpr unsigned kThreads = 256;
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float4 f4(const float* v, int o) {
  return make_float4(v[o], v[o + 1], v[o + 2], v[o + 3]);
}
__device__ __forceinline__ void load8(const float* x, std::size_t i0, std::size_t n, bool vec, float v[8]) {
  if (vec && i0 + 8 <= n) {
    const float4 a = *reinterpret_cast<const float4*>(x + i0);
    const float4 b = *reinterpret_cast<const float4*>(x + i0 + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    return;
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = i0 + j < n ? x[i0 + j] : 0.0f;
}
/// Loads y[i0 .. i0+8) when accumulating (before the caller waits on anything else), zeros otherwise.
__device__ __forceinline__ void load_y8(const float* y, std::size_t i0, std::size_t n, bool vec, bool acc, float v[8]) {
  if (!acc || i0 >= n) {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = 0.0f;
    return;
  }
  load8(y, i0, n, vec, v);
}
/// y[i0 + j] = v[j], or yv[j] + v[j] when accumulating (yv from load_y8; a separate addition after the caller's
/// multiplication, as on the CPU).
__device__ __forceinline__ void store_y8(float* y, std::size_t i0, std::size_t n, bool vec, bool acc, const float yv[8],
                                         const float v[8]) {
  float o[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) o[j] = acc ? yv[j] + v[j] : v[j];
  if (vec && i0 + 8 <= n) {
    float4* p = reinterpret_cast<float4*>(y + i0);
    p[0] = f4(o, 0);
    p[1] = f4(o, 4);
    return;
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (i0 + j < n) y[i0 + j] = o[j];
  }
}
/// Stores `nbytes` (<= 16) bytes of w[] at p (16-byte store when aligned and whole).
__device__ __forceinline__ void store16(std::uint8_t* p, const std::uint32_t w[4], std::size_t nbytes) {
  if (nbytes == 16 && (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0) {
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
    return;
  }
  // Unrolled with constant indices so that w[] stays in registers (a run-time index would put it in local memory).
#pragma unroll
  for (unsigned b = 0; b < 16; ++b)
    if (b < nbytes) p[b] = static_cast<std::uint8_t>(w[b / 4] >> (8 * (b % 4)));
}
__device__ __forceinline__ void load16(const std::uint8_t* p, std::size_t nbytes, std::uint32_t w[4]) {
  if (nbytes == 16 && (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    w[0] = u.x, w[1] = u.y, w[2] = u.z, w[3] = u.w;
    return;
  }
  w[0] = w[1] = w[2] = w[3] = 0;
#pragma unroll
  for (unsigned b = 0; b < 16; ++b)
    if (b < nbytes) w[b / 4] |= static_cast<std::uint32_t>(p[b]) << (8 * (b % 4));
}
inline unsigned grid8(std::size_t n) {
  return grid_for((n + 7) / 8, kThreads);
}
__device__ __forceinline__ std::size_t tid() {
  return blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
}

// ---- identity -----------------------------------------------------------------------------------------------------
__global__ void identity_decode_kernel(const std::uint8_t* payload, HeaderWords e, std::size_t n, float scale, bool acc,
                                       bool vec, float* y, std::uint32_t* status) {
  // Every load is issued before the header check's barrier, so the check's latency overlaps the data's.
  const std::size_t i0 = 8 * tid();
  const std::uint8_t* body = payload + kHeaderBytes;
  float v[8], yv[8];
  if (i0 + 8 <= n && (reinterpret_cast<std::uintptr_t>(body) & 15u) == 0) {
    const float4 a = reinterpret_cast<const float4*>(body)[i0 / 4];
    const float4 b = reinterpret_cast<const float4*>(body)[i0 / 4 + 1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = i0 + j < n ? __uint_as_float(load_u32_any(body + 4 * (i0 + j))) : 0.0f;
  }
  load_y8(y, i0, n, vec, acc, yv);
  if (!block_header_ok(payload, e, status) || i0 >= n) return;
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = scale * v[j];
  store_y8(y, i0, n, vec, acc, yv, v);
}

// ---- fp16 / bf16 --------------------------------------------------------------------------------------------------
__device__ __forceinline__ std::uint32_t fp16_bits(std::uint32_t u) {
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t a = u & 0x7fffffffu;
  const std::uint32_t normal = (a - 0x38000000u + 0x0fffu + ((a >> 13) & 1u)) >> 13;
  const std::uint32_t sub = __float_as_uint(__uint_as_float(a) + 0.5f) - 0x3f000000u;
  return (a < 0x38800000u ? sub : normal) | sign;
}
__device__ __forceinline__ float fp16_value(std::uint32_t h) {
  const std::uint32_t sign = (h & 0x8000u) << 16;
  const std::uint32_t a = h & 0x7fffu;
  if (a < 0x0400u) return __uint_as_float(sign | __float_as_uint(static_cast<float>(static_cast<int>(a)) * 0x1p-24f));
  return __uint_as_float(sign | ((a << 13) + 0x38000000u + (a >= 0x7c00u ? 0x38000000u : 0u)));
}
__device__ __forceinline__ std::uint32_t bf16_bits(std::uint32_t u) {
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

__global__ void half_encode_kernel(const float* x, std::size_t n, bool bf16, bool vec, std::uint8_t* body,
                                   std::uint32_t* status) {
  const std::size_t i0 = 8 * tid();
  bool bad = false, nonfinite = false;
  if (i0 < n) {
    float v[8];
    load8(x, i0, n, vec, v);
    const std::uint32_t limit = bf16 ? 0x7f7f8000u : 0x477ff000u;
    std::uint32_t w[4] = {0, 0, 0, 0};
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const std::uint32_t u = __float_as_uint(v[j]);
      const bool in = i0 + j < n;
      bad |= in && (u & 0x7fffffffu) >= limit;
      nonfinite |= in && (u & 0x7f800000u) == 0x7f800000u;
      const std::uint32_t h = (bf16 ? bf16_bits(u) : fp16_bits(u)) & 0xffffu;
      w[j / 2] |= h << (16 * (j % 2));
    }
    const std::size_t left = 2 * (n - i0);
    store16(body + 2 * i0, w, left < 16 ? left : 16);
  }
  warp_flag(nonfinite, status, kDeviceNonFinite);
  warp_flag(bad && !nonfinite, status, kDeviceOutOfRange);
}
__global__ void half_decode_kernel(const std::uint8_t* payload, HeaderWords e, std::size_t n, bool bf16, float scale,
                                   bool acc, bool vec, float* y, std::uint32_t* status) {
  const std::size_t i0 = 8 * tid();
  std::uint32_t w[4] = {0, 0, 0, 0};
  const std::size_t left = i0 < n ? 2 * (n - i0) : 0;
  if (left > 0) load16(payload + kHeaderBytes + 2 * i0, left < 16 ? left : 16, w);
  float v[8], yv[8];
  load_y8(y, i0, n, vec, acc, yv);
  if (!block_header_ok(payload, e, status) || i0 >= n) return;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const std::uint32_t h = (w[j / 2] >> (16 * (j % 2))) & 0xffffu;
    v[j] = scale * (bf16 ? __uint_as_float(h << 16) : fp16_value(h));
  }
  store_y8(y, i0, n, vec, acc, yv, v);
}

// ---- reductions in reduce.h's order ---------------------------------------------------------------------------------
/// Chunks per block of chunk_lane_kernel (64 threads: one per (chunk, lane)); the block also combines its chunk sums
/// by the first three levels of reduce.h's pairwise tree (aligned groups of 8 chunks), so the final combine
/// (total_kernel) sees m / 8 values.
constexpr unsigned kLaneChunks = 8;
constexpr unsigned kLaneThreads = 8 * kLaneChunks;
/// Rows (of 8 elements) each thread has in flight per stage: lane j of a chunk is a serial chain of 512 double
/// additions, so parallelism is one thread per (chunk, lane) and the loads must be deep to keep HBM busy.
constexpr unsigned kRows = 16;

/// Lane j of chunk c sums f(x[c*4096 + j + 8i]) over i in index order (double); the 8 lanes are combined
/// ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)); the block's 8 chunk sums are combined by tree levels 0..2 into part[block].
/// With kSigns the sign bits (1 = negative) of the chunk are packed into signs[] (LSB-first) in the same pass.
/// Loads are double-buffered kRows deep.
template <bool kSquare, bool kSigns>
__global__ void __launch_bounds__(kLaneThreads)
    chunk_lane_kernel(const float* x, std::size_t n, double* part, std::uint8_t* signs, std::size_t nbytes) {
  __shared__ double cs[kLaneChunks];
  const unsigned t = threadIdx.x, lane8 = t & 7u, lane = t & 31u;
  const std::size_t c = blockIdx.x * static_cast<std::size_t>(kLaneChunks) + t / 8;
  const std::size_t base = c * kReduceChunk;
  const float* p = x + base + lane8;
  const std::size_t lim = base + lane8 < n ? n - base - lane8 : 0;  // elements p[8r] exist for 8r < lim
  double l = 0.0;
  float cur[kRows], nxt[kRows];
#pragma unroll
  for (unsigned q = 0; q < kRows; ++q) cur[q] = 8 * q < lim ? p[8 * q] : 0.0f;
#pragma unroll 1
  for (unsigned i = 0; i < kReduceChunk / 8; i += kRows) {
    if (i + kRows < kReduceChunk / 8) {
#pragma unroll
      for (unsigned q = 0; q < kRows; ++q) {
        const std::size_t r = 8 * static_cast<std::size_t>(i + kRows + q);
        nxt[q] = r < lim ? p[r] : 0.0f;
      }
    }
#pragma unroll
    for (unsigned g4 = 0; g4 < kRows; g4 += 4) {
      std::uint32_t word = 0;
#pragma unroll
      for (unsigned q = 0; q < 4; ++q) {
        const float v = cur[g4 + q];
        const double d = static_cast<double>(v);
        l += kSquare ? d * d : fabs(d);
        if (kSigns) {
          const std::uint32_t bal = __ballot_sync(kFull, v < 0.0f);
          word |= ((bal >> (lane & ~7u)) & 0xffu) << (8 * q);
        }
      }
      if (kSigns && lane8 == 0) {
        const std::size_t b0 = c * (kReduceChunk / 8) + i + g4;
        if (b0 + 4 <= nbytes) {
          store_u32_any(signs + b0, word);
        } else if (b0 < nbytes) {
          store_bytes(signs + b0, word, static_cast<int>(nbytes - b0));
        }
      }
    }
#pragma unroll
    for (unsigned q = 0; q < kRows; ++q) cur[q] = nxt[q];
  }
  const double t1 = l + __shfl_down_sync(kFull, l, 1);
  const double t2 = t1 + __shfl_down_sync(kFull, t1, 2);
  const double t3 = t2 + __shfl_down_sync(kFull, t2, 4);
  if (lane8 == 0) cs[t / 8] = t3;
  __syncthreads();
  if (t == 0) {
    const std::size_t first = blockIdx.x * static_cast<std::size_t>(kLaneChunks);
    const std::size_t m = (n + kReduceChunk - 1) / kReduceChunk;
    const unsigned cnt = m - first < kLaneChunks ? static_cast<unsigned>(m - first) : kLaneChunks;
    double v[kLaneChunks];
#pragma unroll
    for (unsigned q = 0; q < kLaneChunks; ++q) v[q] = cs[q];
#pragma unroll
    for (unsigned s = 1; s < kLaneChunks; s <<= 1) {
#pragma unroll
      for (unsigned q = 0; q + s < kLaneChunks; q += 2 * s)
        if (q + s < cnt) v[q] = v[q] + v[q + s];
    }
    part[blockIdx.x] = v[0];
  }
}
inline std::size_t chunks_of(std::size_t n) {
  return (n + kReduceChunk - 1) / kReduceChunk;
}
inline std::size_t parts_of(std::size_t n) {
  return (chunks_of(n) + kLaneChunks - 1) / kLaneChunks;
}
/// Doubles of scratch the reductions need: the per-block partial sums.
inline std::size_t reduce_doubles(std::size_t n) {
  return parts_of(n) + 1;
}

constexpr unsigned kTotalThreads = 1024;
constexpr unsigned kTile = 4096;  // partial sums per shared-memory tile of total_kernel
/// The remaining levels of the pairwise tree over `count` partial sums (each the root of an aligned group of 8 chunk
/// sums), in one block: aligned tiles of kTile values are reduced level by level in shared memory, then the tile
/// roots (at most kTotalThreads; the host checks) likewise. Returns the total in thread 0.
__device__ double block_tree_total(const double* part, std::size_t count) {
  __shared__ double a[kTile];
  __shared__ double roots[kTotalThreads];
  const unsigned t = threadIdx.x;
  const std::size_t tiles = (count + kTile - 1) / kTile;
  for (std::size_t tile = 0; tile < tiles; ++tile) {
    const std::size_t lo = tile * kTile;
    const unsigned cnt = count - lo < kTile ? static_cast<unsigned>(count - lo) : kTile;
    for (unsigned i = t; i < kTile; i += kTotalThreads) a[i] = i < cnt ? part[lo + i] : 0.0;
    __syncthreads();
    for (unsigned s = 1; s < kTile; s <<= 1) {
      for (unsigned i = 2 * s * t; i < kTile; i += 2 * s * kTotalThreads)
        if (i + s < cnt) a[i] = a[i] + a[i + s];
      __syncthreads();
    }
    if (t == 0) roots[tile] = a[0];
    __syncthreads();
  }
  const unsigned rc = static_cast<unsigned>(tiles);
  for (unsigned s = 1; s < rc; s <<= 1) {
    const unsigned i = 2 * s * t;
    if (i + s < rc) roots[i] = roots[i] + roots[i + s];
    __syncthreads();
  }
  return roots[0];
}
inline Status check_total_fits(std::size_t n) {
  if ((parts_of(n) + kTile - 1) / kTile > kTotalThreads)
    return Status::Unsupported("CUDA reduction: ", n, " elements exceed the single-block final combine");
  return Status::Ok();
}

__global__ void max_abs_kernel(const float* x, std::size_t n, bool vec, unsigned* out) {
  const std::size_t i0 = 8 * tid();
  unsigned m = 0;
  if (i0 < n) {
    float v[8];
    load8(x, i0, n, vec, v);
#pragma unroll
    for (int j = 0; j < 8; ++j) m = max(m, __float_as_uint(v[j]) & 0x7fffffffu);
  }
  for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_down_sync(kFull, m, o));
  if ((threadIdx.x & 31u) == 0 && m != 0) atomicMax(out, m);
}

// ---- sign -----------------------------------------------------------------------------------------------------------
/// One block of kTotalThreads: the total of the partial sums (pairwise tree), then the scale.
__global__ void __launch_bounds__(kTotalThreads)
    sign_finish_kernel(const double* part, std::size_t count, std::size_t n, std::uint8_t* body,
                       std::uint32_t* status) {
  const double l1 = block_tree_total(part, count);
  if (threadIdx.x != 0) return;
  const float s = static_cast<float>(l1 / static_cast<double>(n));
  if (!isfinite(l1))
    atomicOr(status, kDeviceNonFinite);
  else if (!isfinite(s))
    atomicOr(status, kDeviceOutOfRange);
  store_u32_any(body, __float_as_uint(s));
}
__global__ void sign_decode_kernel(const std::uint8_t* payload, HeaderWords e, std::size_t n, float scale, bool acc,
                                   bool vec, float* y, std::uint32_t* status) {
  const std::uint8_t* body = payload + kHeaderBytes;
  const std::uint32_t sbits = load_u32_any(body);
  const std::size_t g = tid(), i0 = 8 * g;
  const std::uint32_t byte = i0 < n ? body[4 + g] : 0u;
  float yv[8];
  load_y8(y, i0, n, vec, acc, yv);
  if (!block_header_ok(payload, e, status)) return;
  const bool bad_s = (sbits & 0x80000000u) != 0 || (sbits & 0x7f800000u) == 0x7f800000u;
  if (bad_s) {
    if (g == 0) atomicOr(status, kDeviceBadBody);
    return;
  }
  if (i0 >= n) return;
  if (i0 + 8 > n && (byte >> (n - i0)) != 0) {
    atomicOr(status, kDeviceBadBody);
    return;
  }
  const std::uint32_t pos = __float_as_uint(scale * __uint_as_float(sbits));
  float v[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = __uint_as_float(pos ^ (((byte >> j) & 1u) << 31));
  store_y8(y, i0, n, vec, acc, yv, v);
}

// ---- natural --------------------------------------------------------------------------------------------------------
__global__ void natural_encode_kernel(const float* x, std::size_t n, RngKey key, bool vec, std::uint8_t* signs,
                                      std::uint8_t* exps, std::uint32_t* status) {
  const std::size_t g = tid(), i0 = 8 * g;
  bool nonfinite = false, range = false;
  if (i0 < n) {
    float v[8];
    load8(x, i0, n, vec, v);
    const U4 r0 = philox_key_block(key, i0 >> 2), r1 = philox_key_block(key, (i0 >> 2) + 1);
    std::uint32_t sbyte = 0, lo = 0, hi = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const std::uint32_t u = __float_as_uint(v[j]);
      const std::uint32_t ex = (u >> 23) & 0xffu;
      const int m = static_cast<int>(u & 0x7fffffu);
      const std::uint32_t rnd = j < 4 ? r0.v[j] : r1.v[j - 4];
      const std::uint32_t code = ex + static_cast<std::uint32_t>(static_cast<int>(rnd >> 9) < m);
      const bool in = i0 + j < n;
      nonfinite |= in && ex == 0xffu;
      range |= in && ex == 254u && code == 255u;
      sbyte |= ((u >> 31) & static_cast<std::uint32_t>(code != 0)) << j;
      if (j < 4)
        lo |= (code & 0xffu) << (8 * j);
      else
        hi |= (code & 0xffu) << (8 * (j - 4));
    }
    signs[g] = static_cast<std::uint8_t>(sbyte);
    std::uint8_t* p = exps + i0;
    if (i0 + 8 <= n && (reinterpret_cast<std::uintptr_t>(p) & 7u) == 0) {
      *reinterpret_cast<uint2*>(p) = make_uint2(lo, hi);
    } else {
      const std::size_t left = n - i0 < 8 ? n - i0 : 8;
      for (std::size_t b = 0; b < left; ++b) p[b] = static_cast<std::uint8_t>((b < 4 ? lo : hi) >> (8 * (b % 4)));
    }
  }
  warp_flag(nonfinite, status, kDeviceNonFinite);
  warp_flag(range, status, kDeviceOutOfRange);
}
__global__ void natural_decode_kernel(const std::uint8_t* payload, HeaderWords e, std::size_t n, float scale, bool acc,
                                      bool vec, float* y, std::uint32_t* status) {
  const std::size_t g = tid(), i0 = 8 * g;
  const std::uint8_t* signs = payload + kHeaderBytes;
  const std::uint8_t* exps = signs + (n + 7) / 8 + i0;
  const std::size_t left = i0 >= n ? 0 : n - i0 < 8 ? n - i0 : 8;
  const std::uint32_t sbyte = left > 0 ? signs[g] : 0u;
  std::uint32_t codes[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) codes[j] = static_cast<std::size_t>(j) < left ? exps[j] : 0u;
  float v[8], yv[8];
  load_y8(y, i0, n, vec, acc, yv);
  if (!block_header_ok(payload, e, status) || i0 >= n) return;
  bool bad = left < 8 && (sbyte >> left) != 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const std::uint32_t code = codes[j];
    bad |= code == 0xffu;
    v[j] = scale * __uint_as_float((((sbyte >> j) & 1u) << 31) | (code << 23));
  }
  if (bad) {
    atomicOr(status, kDeviceBadBody);
    return;
  }
  store_y8(y, i0, n, vec, acc, yv, v);
}

// ---- QSGD (fixed coding)
// ----------------------------------------------------------------------------------------------
/// One block of kTotalThreads: ||x||_2 from the partial sums of squares (pairwise tree), or ||x||_inf; the scale.
__global__ void __launch_bounds__(kTotalThreads)
    qsgd_params_kernel(const double* part, std::size_t count, const unsigned* linf, std::uint32_t levels,
                       std::uint8_t* body, QuantDev* q, std::uint32_t* status) {
  const double norm =
      linf == nullptr ? sqrt(block_tree_total(part, count)) : static_cast<double>(__uint_as_float(*linf));
  if (threadIdx.x != 0) return;
  const float nf = static_cast<float>(norm);
  if (!isfinite(norm))
    atomicOr(status, kDeviceNonFinite);
  else if (isinf(nf))
    atomicOr(status, kDeviceOutOfRange);
  QuantDev r;
  r.pre = 1.0f;
  r.scale = 0.0f;
  r.sf = static_cast<float>(levels);
  if (nf > 0.0f) {
    if (nf < 0x1p-64f) r.pre = 0x1p64f;
    r.scale = r.sf / (nf * r.pre);
  }
  *q = r;
  store_u32_any(body, __float_as_uint(nf));
}
template <int W>
__global__ void qsgd_encode_kernel(const float* x, std::size_t n, RngKey key, const QuantDev* qp, bool vec,
                                   std::uint8_t* codes_out, std::size_t code_bytes) {
  const std::size_t g = tid(), i0 = 8 * g;
  if (i0 >= n) return;
  const QuantDev q = *qp;
  float v[8];
  load8(x, i0, n, vec, v);
  const U4 r0 = philox_key_block(key, i0 >> 2), r1 = philox_key_block(key, (i0 >> 2) + 1);
  std::uint64_t acc[3] = {0, 0, 0};
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    std::uint64_t code = qsgd_code(v[j], j < 4 ? r0.v[j] : r1.v[j - 4], q);
    if (i0 + j >= n) code = 0;
    const int p = j * W, word = p / 64, off = p % 64;
    acc[word] |= code << off;
    if (off + W > 64) acc[word + 1] |= code >> (64 - off);
  }
  std::uint8_t* out = codes_out + g * W;
  const std::size_t left = code_bytes - g * W;
  const std::size_t nb = left < static_cast<std::size_t>(W) ? left : W;
  if (W % 4 == 0 && nb == static_cast<std::size_t>(W) && (reinterpret_cast<std::uintptr_t>(out) & 3u) == 0) {
#pragma unroll
    for (int k = 0; k < W / 4; ++k)
      reinterpret_cast<std::uint32_t*>(out)[k] = static_cast<std::uint32_t>(acc[k / 2] >> (32 * (k % 2)));
  } else {
#pragma unroll
    for (int b = 0; b < W; ++b)
      if (static_cast<std::size_t>(b) < nb) out[b] = static_cast<std::uint8_t>(acc[b / 8] >> (8 * (b % 8)));
  }
}
template <int W>
__global__ void qsgd_decode_kernel(const std::uint8_t* payload, HeaderWords e, std::size_t n, std::uint32_t levels,
                                   float scale, bool acc_mode, bool vec, float* y, std::uint32_t* status) {
  const std::uint8_t* body = payload + kHeaderBytes;
  const float nf = __uint_as_float(load_u32_any(body));
  const std::size_t g = tid(), i0 = 8 * g;
  const std::uint8_t* in = body + 4 + g * W;
  const std::size_t code_bytes = (n * W + 7) / 8;
  const std::size_t left = i0 < n ? code_bytes - g * W : 0;
  const std::size_t nb = left < static_cast<std::size_t>(W) ? left : W;
  std::uint64_t acc[3] = {0, 0, 0};
  if (W % 4 == 0 && nb == static_cast<std::size_t>(W) && (reinterpret_cast<std::uintptr_t>(in) & 3u) == 0) {
#pragma unroll
    for (int k = 0; k < W / 4; ++k)
      acc[k / 2] |= static_cast<std::uint64_t>(reinterpret_cast<const std::uint32_t*>(in)[k]) << (32 * (k % 2));
  } else {
#pragma unroll
    for (int b = 0; b < W; ++b)
      if (static_cast<std::size_t>(b) < nb) acc[b / 8] |= static_cast<std::uint64_t>(in[b]) << (8 * (b % 8));
  }
  float yv[8];
  load_y8(y, i0, n, vec, acc_mode, yv);
  if (!block_header_ok(payload, e, status)) return;
  if (!(nf >= 0.0f) || isinf(nf)) {
    if (g == 0) atomicOr(status, kDeviceBadBody);
    return;
  }
  if (i0 >= n) return;
  const float m = scale * (nf / static_cast<float>(levels));
  const std::size_t cnt = n - i0 < 8 ? n - i0 : 8;
  bool bad = false;
  float v[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int p = j * W, word = p / 64, off = p % 64;
    std::uint64_t c = acc[word] >> off;
    if (off + W > 64) c |= acc[word + 1] << (64 - off);
    const std::uint32_t code = static_cast<std::uint32_t>(c & ((std::uint64_t{1} << W) - 1));
    if (static_cast<std::size_t>(j) >= cnt) {
      bad |= code != 0;  // padding bits must be zero
      v[j] = 0.0f;
      continue;
    }
    bad |= (code >> 1) > levels;
    v[j] = __uint_as_float(__float_as_uint(static_cast<float>(static_cast<int>(code >> 1)) * m) ^ (code << 31));
  }
  if (bad) {
    atomicOr(status, kDeviceBadBody);
    return;
  }
  store_y8(y, i0, n, vec, acc_mode, yv, v);
}

template <class F>
Status dispatch_width(int w, F&& f) {
  switch (w) {
#define GZ_W(k) \
  case k:       \
    return f(std::integral_constant<int, k>{});
    GZ_W(2)
    GZ_W(3)
    GZ_W(4)
    GZ_W(5) GZ_W(6) GZ_W(7) GZ_W(8) GZ_W(9) GZ_W(10) GZ_W(11) GZ_W(12) GZ_W(13) GZ_W(14) GZ_W(15) GZ_W(16) GZ_W(17)
#undef GZ_W
        default : return Status::Internal("qsgd (CUDA): code width ", w, " not in [2, 17]");
  }
}

}  // namespace

// ---- host entry points ----------------------------------------------------------------------------------------------
Status identity_encode(Span<const float> x, MutableBytes body, std::size_t* body_bytes, const Exec& ex) {
  GZ_CUDA_CHECK(cudaMemcpyAsync(body.data(), x.data(), 4 * x.size(), cudaMemcpyDeviceToDevice, stream_of(ex)));
  *body_bytes = 4 * x.size();
  return Status::Ok();
}
Status identity_decode(const PayloadHeader& expect, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                       const Exec& ex) {
  GZ_RETURN_IF_ERROR(check_body_capacity(expect, body, "identity.decode"));
  StatusWord st;
  GZ_RETURN_IF_ERROR(st.init(ex));
  identity_decode_kernel<<<grid8(y.size()), kThreads, 0, stream_of(ex)>>>(
      body.data() - kHeaderBytes, header_words(expect), y.size(), scale, mode == DecodeMode::kAccumulate,
      aligned(y.data(), 16), y.data(), st.get());
  return st.finish("identity.decode");
}

Status half_encode(bool bf16, Span<const float> x, MutableBytes body, std::size_t* body_bytes, const Exec& ex) {
  StatusWord st;
  GZ_RETURN_IF_ERROR(st.init(ex));
  half_encode_kernel<<<grid8(x.size()), kThreads, 0, stream_of(ex)>>>(x.data(), x.size(), bf16, aligned(x.data(), 16),
                                                                      body.data(), st.get());
  *body_bytes = 2 * x.size();
  return st.finish(bf16 ? "bf16.encode" : "fp16.encode");
}
Status half_decode(bool bf16, const PayloadHeader& expect, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                   const Exec& ex) {
  const char* op = bf16 ? "bf16.decode" : "fp16.decode";
  GZ_RETURN_IF_ERROR(check_body_capacity(expect, body, op));
  StatusWord st;
  GZ_RETURN_IF_ERROR(st.init(ex));
  half_decode_kernel<<<grid8(y.size()), kThreads, 0, stream_of(ex)>>>(
      body.data() - kHeaderBytes, header_words(expect), y.size(), bf16, scale, mode == DecodeMode::kAccumulate,
      aligned(y.data(), 16), y.data(), st.get());
  return st.finish(op);
}

std::size_t sign_workspace(std::size_t d) {
  return Scratch::round(reduce_doubles(d) * sizeof(double));
}
Status sign_encode(Span<const float> x, MutableBytes body, std::size_t* body_bytes, const Exec& ex) {
  const std::size_t n = x.size(), parts = parts_of(n), nbytes = (n + 7) / 8;
  const cudaStream_t s = stream_of(ex);
  GZ_RETURN_IF_ERROR(check_total_fits(n));
  Scratch scratch;
  GZ_RETURN_IF_ERROR(scratch.init(sign_workspace(n), ex));
  double* part = scratch.take<double>(parts);
  StatusWord st;
  GZ_RETURN_IF_ERROR(st.init(ex));
  chunk_lane_kernel<false, true>
      <<<static_cast<unsigned>(parts), kLaneThreads, 0, s>>>(x.data(), n, part, body.data() + 4, nbytes);
  GZ_CUDA_LAUNCH_CHECK();
  sign_finish_kernel<<<1, kTotalThreads, 0, s>>>(part, parts, n, body.data(), st.get());
  *body_bytes = 4 + nbytes;
  return st.finish("sign.encode");
}
Status sign_decode(const PayloadHeader& expect, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                   const Exec& ex) {
  GZ_RETURN_IF_ERROR(check_body_capacity(expect, body, "sign.decode"));
  StatusWord st;
  GZ_RETURN_IF_ERROR(st.init(ex));
  sign_decode_kernel<<<grid8(y.size()), kThreads, 0, stream_of(ex)>>>(body.data() - kHeaderBytes, header_words(expect),
                                                                      y.size(), scale, mode == DecodeMode::kAccumulate,
                                                                      aligned(y.data(), 16), y.data(), st.get());
  return st.finish("sign.decode");
}

Status natural_encode(Span<const float> x, MutableBytes body, std::size_t* body_bytes, const Exec& ex) {
  const std::size_t n = x.size(), nb = (n + 7) / 8;
  StatusWord st;
  GZ_RETURN_IF_ERROR(st.init(ex));
  natural_encode_kernel<<<grid8(n), kThreads, 0, stream_of(ex)>>>(x.data(), n, ex.rng, aligned(x.data(), 16),
                                                                  body.data(), body.data() + nb, st.get());
  *body_bytes = n + nb;
  return st.finish("natural.encode");
}
Status natural_decode(const PayloadHeader& expect, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                      const Exec& ex) {
  GZ_RETURN_IF_ERROR(check_body_capacity(expect, body, "natural.decode"));
  StatusWord st;
  GZ_RETURN_IF_ERROR(st.init(ex));
  natural_decode_kernel<<<grid8(y.size()), kThreads, 0, stream_of(ex)>>>(
      body.data() - kHeaderBytes, header_words(expect), y.size(), scale, mode == DecodeMode::kAccumulate,
      aligned(y.data(), 16), y.data(), st.get());
  return st.finish("natural.decode");
}

std::size_t qsgd_workspace(std::size_t d) {
  return Scratch::round(reduce_doubles(d) * sizeof(double)) + Scratch::round(2 * sizeof(double)) +
         Scratch::round(sizeof(QuantDev)) + 256;
}
Status qsgd_params(std::uint32_t levels, bool linf, Span<const float> x, std::uint8_t* norm_out, Scratch& scratch,
                   QuantDev** q_out, std::uint32_t* status, const Exec& ex) {
  const std::size_t n = x.size(), parts = parts_of(n);
  const cudaStream_t s = stream_of(ex);
  const bool vec = aligned(x.data(), 16);
  if (!linf) GZ_RETURN_IF_ERROR(check_total_fits(n));
  double* part = scratch.take<double>(parts);
  unsigned* mx = scratch.take<unsigned>(2);
  QuantDev* q = scratch.take<QuantDev>(1);
  if (linf) {
    GZ_CUDA_CHECK(cudaMemsetAsync(mx, 0, sizeof(unsigned), s));
    max_abs_kernel<<<grid8(n), kThreads, 0, s>>>(x.data(), n, vec, mx);
    GZ_CUDA_LAUNCH_CHECK();
    qsgd_params_kernel<<<1, kTotalThreads, 0, s>>>(nullptr, 0, mx, levels, norm_out, q, status);
  } else {
    chunk_lane_kernel<true, false><<<static_cast<unsigned>(parts), kLaneThreads, 0, s>>>(x.data(), n, part, nullptr, 0);
    GZ_CUDA_LAUNCH_CHECK();
    qsgd_params_kernel<<<1, kTotalThreads, 0, s>>>(part, parts, nullptr, levels, norm_out, q, status);
  }
  GZ_CUDA_LAUNCH_CHECK();
  *q_out = q;
  return Status::Ok();
}
Status qsgd_encode(std::uint32_t levels, int width, bool linf, Span<const float> x, MutableBytes body,
                   std::size_t* body_bytes, const Exec& ex) {
  const std::size_t n = x.size();
  const cudaStream_t s = stream_of(ex);
  const bool vec = aligned(x.data(), 16);
  Scratch scratch;
  GZ_RETURN_IF_ERROR(scratch.init(qsgd_workspace(n), ex));
  StatusWord st;
  GZ_RETURN_IF_ERROR(st.init(ex));
  QuantDev* q = nullptr;
  GZ_RETURN_IF_ERROR(qsgd_params(levels, linf, x, body.data(), scratch, &q, st.get(), ex));
  const std::size_t code_bytes = (n * static_cast<std::size_t>(width) + 7) / 8;
  GZ_RETURN_IF_ERROR(dispatch_width(width, [&](auto wc) {
    constexpr int W = decltype(wc)::value;
    qsgd_encode_kernel<W><<<grid8(n), kThreads, 0, s>>>(x.data(), n, ex.rng, q, vec, body.data() + 4, code_bytes);
    return Status::Ok();
  }));
  *body_bytes = 4 + code_bytes;
  return st.finish("qsgd.encode");
}
Status qsgd_decode(std::uint32_t levels, int width, const PayloadHeader& expect, ConstBytes body, Span<float> y,
                   DecodeMode mode, float scale, const Exec& ex) {
  GZ_RETURN_IF_ERROR(check_body_capacity(expect, body, "qsgd.decode"));
  StatusWord st;
  GZ_RETURN_IF_ERROR(st.init(ex));
  GZ_RETURN_IF_ERROR(dispatch_width(width, [&](auto wc) {
    constexpr int W = decltype(wc)::value;
    qsgd_decode_kernel<W><<<grid8(y.size()), kThreads, 0, stream_of(ex)>>>(
        body.data() - kHeaderBytes, header_words(expect), y.size(), levels, scale, mode == DecodeMode::kAccumulate,
        aligned(y.data(), 16), y.data(), st.get());
    return Status::Ok();
  }));
  return st.finish("qsgd.decode");
}

}  // namespace gradzip::detail::cuda
