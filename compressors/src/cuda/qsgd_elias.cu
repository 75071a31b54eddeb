// CUDA kernels of QSGD coding=elias (the chunked wire of qsgd.cc; elias_omega.h holds the code shared with the CPU).
//
// Encode (6 launches + one synchronisation):
//   1-2. qsgd_params (dense.cu): the norm reduction and the parameter kernel, N written at body[0, 4);
//   3.   codes_kernel: codes[i] = sign | level << 1, the fixed coding's quantizer (qsgd_code) and Philox draws;
//   4.   chunk_write_kernel, one warp per chunk: a ballot count of the chunk's nonzeros, lane 0 ORs omega(nnz + 1) into
//        the chunk's slot (zeroed, worst-case sized), then 32 elements per step: each nonzero lane finds its previous
//        nonzero from the ballot mask (or the carry from the previous step), builds its record (elias_omega.h's
//        omega::record, as the CPU encoder), an inclusive shuffle scan of the record lengths gives
//        its bit offset, and it ORs the record into the slot (atomicOr: neighbouring records share words);
//   5.   cub::DeviceScan::InclusiveSum of the stream byte lengths = the table of end offsets;
//   6.   compact_kernel, one block per chunk: the table entry and the slot's bytes into the streams area.
//   The body length (4 + 4C + last end) is read back with one synchronisation (the header needs it).
// Decode (3 launches, no synchronisation unless the status word is owned):
//   1. validate_kernel, one thread per chunk (grid-stride): thread 0 compares the header (every field but body_bytes
//      with the expected one; body_bytes = 4 + 4C + last table entry, within the buffer) and the norm; every chunk
//      checks its table entries and parses its stream with omega::parse_chunk (the CPU's validator);
//   2. zero_kernel (overwrite only) and 3. write_kernel (one thread per chunk, omega::parse_chunk again emitting the
//      values): both do nothing unless the status word is still 0, so a rejected payload never touches y.
#include <cub/device/device_scan.cuh>

#include "../elias_omega.h"
#include "common.cuh"
#include "qsgd_elias_cuda.h"
#include "qsgd_quant.cuh"

namespace gradzip::detail::cuda {
namespace {

constexpr unsigned kThreads = 256;
constexpr unsigned kWarpsPerBlock = 4;
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ std::size_t tid() {
  return blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
}
__device__ __forceinline__ std::size_t nthreads() {
  return static_cast<std::size_t>(gridDim.x) * blockDim.x;
}

/// 32-bit words of one chunk's slot: the worst-case stream of a full chunk, plus one spare word.
std::size_t slot_words(std::uint32_t levels) {
  return static_cast<std::size_t>((omega::chunk_max_bits(omega::kChunk, levels) + 31) / 32) + 1;
}
std::size_t scan_temp_bytes(std::size_t chunks) {
  std::size_t bytes = 0;
  if (chunks == 0) return 0;
  (void)cub::DeviceScan::InclusiveSum(nullptr, bytes, static_cast<const std::uint64_t*>(nullptr),
                                      static_cast<std::uint64_t*>(nullptr), static_cast<int>(chunks));
  return bytes;
}

/// codes[i] = qsgd_code(x[i], Philox u32 number i): one Philox block per 4 elements, as dense.cu's encoder.
__global__ void codes_kernel(const float* x, std::size_t n, RngKey key, const QuantDev* qp, std::uint32_t* codes) {
  const QuantDev q = *qp;
  for (std::size_t g = tid(); 4 * g < n; g += nthreads()) {
    const U4 r = philox_key_block(key, g);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const std::size_t i = 4 * g + static_cast<std::size_t>(j);
      if (i < n) codes[i] = qsgd_code(x[i], r.v[j], q);
    }
  }
}

/// ORs the low `len` (<= 56) bits of v into the bit stream `slot` at bit `pos`.
__device__ __forceinline__ void or_bits(std::uint32_t* slot, std::uint64_t pos, std::uint64_t v, int len) {
  const std::uint64_t w = pos >> 5;
  const int sh = static_cast<int>(pos & 31u);
  atomicOr(slot + w, static_cast<std::uint32_t>(v << sh));
  if (sh + len > 32) atomicOr(slot + w + 1, static_cast<std::uint32_t>(v >> (32 - sh)));
  if (sh + len > 64) atomicOr(slot + w + 2, static_cast<std::uint32_t>(v >> (64 - sh)));
}

/// One warp per chunk: its stream into its slot (zeroed by the caller), its byte length into lens[c]. Lengths and
/// their scan are 64-bit: the streams of a huge input can sum past 2^32 bytes (the encoder then reports the overflow
/// as the CPU does, instead of wrapping the table).
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    chunk_write_kernel(const std::uint32_t* codes, std::size_t d, std::size_t chunks, std::size_t words,
                       std::uint32_t* slots, std::uint64_t* lens) {
  const std::size_t c = blockIdx.x * static_cast<std::size_t>(kWarpsPerBlock) + threadIdx.x / 32;
  if (c >= chunks) return;  // whole warps leave together
  const unsigned lane = threadIdx.x & 31u;
  const std::size_t c0 = c * omega::kChunk;
  const std::uint32_t n = static_cast<std::uint32_t>(d - c0 < omega::kChunk ? d - c0 : omega::kChunk);
  const std::uint32_t* cc = codes + c0;
  std::uint32_t* slot = slots + c * words;
  std::uint32_t nnz = 0;
  for (std::uint32_t base = 0; base < n; base += 32) {
    const std::uint32_t i = base + lane;
    nnz += static_cast<std::uint32_t>(__popc(__ballot_sync(kFull, i < n && cc[i] != 0)));
  }
  std::uint64_t bitpos = 0;
  {
    std::uint64_t hc = 0;
    const int hl = omega::code(static_cast<std::uint64_t>(nnz) + 1, &hc);
    if (lane == 0) or_bits(slot, 0, hc, hl);
    bitpos = static_cast<std::uint64_t>(hl);
  }
  std::uint32_t next = 0;  // previous nonzero's index + 1 (0 at the chunk start)
  const std::uint32_t below = (1u << lane) - 1u;
  for (std::uint32_t base = 0; base < n; base += 32) {
    const std::uint32_t i = base + lane;
    const std::uint32_t k = i < n ? cc[i] : 0u;
    const std::uint32_t mask = __ballot_sync(kFull, k != 0);
    const std::uint32_t lower = mask & below;
    const std::uint32_t my_next = lower ? base + static_cast<std::uint32_t>(32 - __clz(lower)) : next;
    std::uint64_t rec = 0;
    int len = 0;
    if (k != 0) len = omega::record(i + 1 - my_next, k, &rec);  // <= 46 bits
    int incl = len;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int t = __shfl_up_sync(kFull, incl, o);
      if (static_cast<int>(lane) >= o) incl += t;
    }
    if (k != 0) or_bits(slot, bitpos + static_cast<std::uint64_t>(incl - len), rec, len);
    bitpos += static_cast<std::uint64_t>(__shfl_sync(kFull, incl, 31));
    if (mask) next = base + static_cast<std::uint32_t>(32 - __clz(mask));
  }
  if (lane == 0) lens[c] = (bitpos + 7) / 8;
}

/// One block per chunk: the table entry and the stream bytes (the slot's first bytes, little-endian words). The
/// entry is truncated to 32 bits only when the body exceeds 2^32 bytes, which the host then rejects.
__global__ void compact_kernel(const std::uint32_t* slots, std::size_t words, const std::uint64_t* ends,
                               std::uint8_t* table, std::uint8_t* streams) {
  const std::size_t c = blockIdx.x;
  const std::uint64_t start = c == 0 ? 0u : ends[c - 1], end = ends[c];
  if (threadIdx.x == 0) store_u32_any(table + 4 * c, static_cast<std::uint32_t>(end));
  const std::uint8_t* src = reinterpret_cast<const std::uint8_t*>(slots + c * words);
  for (std::uint64_t b = threadIdx.x; b < end - start; b += blockDim.x) streams[start + b] = src[b];
}

struct DecodeArgs {
  const std::uint8_t* payload;  // header, then the body
  std::size_t capacity;         // bytes of the buffer after the header (>= 4 + 4C, checked on the host)
  std::size_t d, chunks;
  std::uint32_t levels;
  HeaderWords e;  // expected header, body_bytes (word 4) excluded
};

__device__ __forceinline__ std::uint32_t chunk_len(const DecodeArgs& a, std::size_t c) {
  const std::size_t c0 = c * omega::kChunk;
  return static_cast<std::uint32_t>(a.d - c0 < omega::kChunk ? a.d - c0 : omega::kChunk);
}

__global__ void validate_kernel(DecodeArgs a, std::uint32_t* status) {
  const std::uint8_t* body = a.payload + kHeaderBytes;
  const std::uint8_t* table = body + 4;
  const std::uint8_t* streams = table + 4 * a.chunks;
  const std::size_t cap = a.capacity - 4 - 4 * a.chunks;  // stream bytes the buffer can hold
  if (tid() == 0) {
    bool hdr = false;
#pragma unroll
    for (int w = 0; w < 8; ++w)
      if (w != 4) hdr |= load_u32_any(a.payload + 4 * w) != a.e.w[w];
    const std::uint64_t bb = load_u32_any(a.payload + 16);
    const std::uint64_t last = a.chunks == 0 ? 0 : load_u32_any(table + 4 * (a.chunks - 1));
    hdr |= bb > a.capacity || bb != 4 + 4 * static_cast<std::uint64_t>(a.chunks) + last;
    if (hdr) atomicOr(status, kDeviceBadHeader);
    const float nf = __uint_as_float(load_u32_any(body));
    if (!(nf >= 0.0f) || isinf(nf)) atomicOr(status, kDeviceBadBody);
  }
  for (std::size_t c = tid(); c < a.chunks; c += nthreads()) {
    const std::uint32_t start = c == 0 ? 0u : load_u32_any(table + 4 * (c - 1));
    const std::uint32_t end = load_u32_any(table + 4 * c);
    if (end < start || end > cap) {
      atomicOr(status, kDeviceBadBody);
      continue;
    }
    std::uint32_t k = 0;
    const omega::ChunkError err = omega::parse_chunk(
        streams + start, end - start, chunk_len(a, c), a.levels, [](std::uint32_t, std::uint32_t, std::uint32_t) {},
        &k);
    if (err != omega::ChunkError::kOk) atomicOr(status, kDeviceBadBody);
  }
}

__global__ void zero_kernel(float* y, std::size_t n, const std::uint32_t* status) {
  if (*status != 0) return;
  for (std::size_t i = tid(); i < n; i += nthreads()) y[i] = 0.0f;
}

/// y[c0 + i] (+)= level * m with the sign bit applied, m = scale * (N / s), as qsgd.cc's decode_elias (which adds
/// onto a zeroed y in overwrite mode: 0.0f + v here too).
__global__ void write_kernel(DecodeArgs a, float scale, bool acc, float* y, const std::uint32_t* status) {
  if (*status != 0) return;
  const std::uint8_t* body = a.payload + kHeaderBytes;
  const std::uint8_t* table = body + 4;
  const std::uint8_t* streams = table + 4 * a.chunks;
  const float m = scale * (__uint_as_float(load_u32_any(body)) / static_cast<float>(a.levels));
  for (std::size_t c = tid(); c < a.chunks; c += nthreads()) {
    const std::uint32_t start = c == 0 ? 0u : load_u32_any(table + 4 * (c - 1));
    const std::uint32_t end = load_u32_any(table + 4 * c);
    float* yc = y + c * omega::kChunk;
    std::uint32_t k = 0;
    (void)omega::parse_chunk(
        streams + start, end - start, chunk_len(a, c), a.levels,
        [&](std::uint32_t i, std::uint32_t level, std::uint32_t sign) {
          const float v = __uint_as_float(__float_as_uint(static_cast<float>(level) * m) ^ (sign << 31));
          yc[i] = (acc ? yc[i] : 0.0f) + v;
        },
        &k);
  }
}

}  // namespace

std::size_t qsgd_elias_workspace(std::size_t d, std::uint32_t levels) {
  const std::size_t chunks = static_cast<std::size_t>(omega::chunks(d));
  return qsgd_workspace(d) + Scratch::round(4 * d) + Scratch::round(4 * chunks * slot_words(levels)) +
         2 * Scratch::round(8 * chunks) + Scratch::round(scan_temp_bytes(chunks));
}

Status qsgd_elias_encode(std::uint32_t levels, bool linf, Span<const float> x, MutableBytes body,
                         std::size_t* body_bytes, const Exec& ex) {
  const std::size_t d = x.size(), chunks = static_cast<std::size_t>(omega::chunks(d));
  const std::size_t words = slot_words(levels);
  const cudaStream_t s = stream_of(ex);
  if (body.size() < 4 + 4 * chunks)
    return Status::Internal("qsgd.encode: body buffer of ", body.size(), " bytes has no room for the chunk table");
  Scratch scratch;
  GZ_RETURN_IF_ERROR(scratch.init(qsgd_elias_workspace(d, levels), ex));
  StatusWord st;
  GZ_RETURN_IF_ERROR(st.init(ex));
  QuantDev* q = nullptr;
  GZ_RETURN_IF_ERROR(qsgd_params(levels, linf, x, body.data(), scratch, &q, st.get(), ex));
  if (chunks == 0) {
    *body_bytes = 4;
    return st.finish("qsgd.encode");
  }
  std::uint32_t* codes = scratch.take<std::uint32_t>(d);
  std::uint32_t* slots = scratch.take<std::uint32_t>(chunks * words);
  std::uint64_t* lens = scratch.take<std::uint64_t>(chunks);
  std::uint64_t* ends = scratch.take<std::uint64_t>(chunks);
  std::size_t scan_bytes = scan_temp_bytes(chunks);
  std::uint8_t* tmp = scratch.take<std::uint8_t>(scan_bytes);
  GZ_CUDA_CHECK(cudaMemsetAsync(slots, 0, 4 * chunks * words, s));
  codes_kernel<<<grid_for((d + 3) / 4, kThreads), kThreads, 0, s>>>(x.data(), d, ex.rng, q, codes);
  GZ_CUDA_LAUNCH_CHECK();
  chunk_write_kernel<<<grid_for(chunks, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, s>>>(codes, d, chunks, words, slots,
                                                                                      lens);
  GZ_CUDA_LAUNCH_CHECK();
  GZ_CUDA_CHECK(cub::DeviceScan::InclusiveSum(tmp, scan_bytes, lens, ends, static_cast<int>(chunks), s));
  compact_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, s>>>(slots, words, ends, body.data() + 4,
                                                                    body.data() + 4 + 4 * chunks);
  GZ_CUDA_LAUNCH_CHECK();
  std::uint64_t total = 0;
  GZ_CUDA_CHECK(cudaMemcpyAsync(&total, ends + chunks - 1, sizeof(total), cudaMemcpyDeviceToHost, s));
  GZ_CUDA_CHECK(cudaStreamSynchronize(s));
  *body_bytes = 4 + 4 * chunks + total;
  // Cannot happen: every stream is within its chunk's share of the bound. (A body past 2^32 bytes fits the buffer
  // and is rejected by Compressor::encode, as on the CPU.)
  if (*body_bytes > body.size())
    return Status::Internal("qsgd.encode: Elias body of ", *body_bytes, " bytes exceeds the buffer of ", body.size());
  return st.finish("qsgd.encode");
}

Status qsgd_elias_decode(std::uint32_t levels, const PayloadHeader& expect, ConstBytes body, Span<float> y,
                         DecodeMode mode, float scale, const Exec& ex) {
  const std::size_t d = y.size(), chunks = static_cast<std::size_t>(omega::chunks(d));
  if (body.size() < 4 + 4 * chunks)
    return Status::InvalidPayload("qsgd.decode: payload buffer of ", body.size() + kHeaderBytes,
                                  " bytes is shorter than the header, the norm and the ", chunks,
                                  "-entry chunk table for numel=", d);
  const cudaStream_t s = stream_of(ex);
  StatusWord st;
  GZ_RETURN_IF_ERROR(st.init(ex));
  DecodeArgs a;
  a.payload = body.data() - kHeaderBytes;
  a.capacity = body.size() < 0xffffffffu ? body.size() : 0xffffffffu;  // body_bytes is a u32
  a.d = d;
  a.chunks = chunks;
  a.levels = levels;
  a.e = header_words(expect);
  const unsigned grid = chunks == 0 ? 1u : grid_for(chunks, kThreads);
  validate_kernel<<<grid, kThreads, 0, s>>>(a, st.get());
  GZ_CUDA_LAUNCH_CHECK();
  const bool acc = mode == DecodeMode::kAccumulate;
  if (!acc && d > 0) {
    const unsigned zgrid = grid_for(d, kThreads) < 132u * 8u ? grid_for(d, kThreads) : 132u * 8u;
    zero_kernel<<<zgrid, kThreads, 0, s>>>(y.data(), d, st.get());
    GZ_CUDA_LAUNCH_CHECK();
  }
  if (chunks > 0) write_kernel<<<grid, kThreads, 0, s>>>(a, scale, acc, y.data(), st.get());
  return st.finish("qsgd.decode");
}

}  // namespace gradzip::detail::cuda
