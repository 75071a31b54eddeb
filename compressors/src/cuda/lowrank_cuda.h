// Internal: host entry points of the lowrank CUDA kernels (lowrank.cu), called by lowrank.cc's encode_cuda /
// decode_cuda and LowRankState. All buffers are device memory unless named host; everything runs on ex.stream.
// The math and its orders are lowrank_math.h's; the kernels reproduce the CPU codec bit for bit given the same Q
// (the cold-start draw may differ in the last float bit, see lowrank_gaussian).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "gradzip/compressors/compressor.h"

namespace gradzip::detail::cuda {

/// The device copy of a LowRankState's Q: one cudaMalloc'ed block holding a validity word (1: q holds a Q' of this
/// shape; 0: the next encode starts cold) and q (cols x rank floats, row-major), plus the shape and the stream of
/// the last call (host fields).
struct LowRankDeviceQ {
  void* block = nullptr;
  std::uint32_t* valid = nullptr;
  float* q = nullptr;
  std::size_t rows = 0, cols = 0, rank = 0;
  void* stream = nullptr;
};

/// Makes `dq` hold the shape (rows, cols, rank): reallocates when the shape differs (cudaMalloc, synchronous, only
/// then). Then, when `host_q` is non-null (cols x rank floats), uploads it (valid = 1); when null and `keep` is false
/// or the shape changed, sets valid = 0. Stream-ordered on ex.stream.
Status lowrank_device_q_prepare(LowRankDeviceQ* dq, std::size_t rows, std::size_t cols, std::size_t rank,
                                const float* host_q, bool keep, const Exec& ex);
/// Waits for dq->stream and copies the validity word and q to the host: *valid and q (resized to cols x rank, or
/// cleared when not valid).
Status lowrank_device_q_download(const LowRankDeviceQ& dq, std::vector<float>* q);
/// Frees the block (cudaFree; errors ignored) and resets dq.
void lowrank_device_q_free(LowRankDeviceQ* dq);

/// Scratch bytes of lowrank_encode for an m x n view and rank r (decode needs none).
std::size_t lowrank_workspace(std::size_t m, std::size_t n, std::size_t r);

/// One encode (lowrank.cc's formulas, lowrank_math.h's orders): Q = dq's q when dq is non-null and its validity
/// word is set, else the cold-start draw from ex.rng (decided on the device); P = M Q; Gram-Schmidt (one block);
/// P and Q' = M^T P written as the body (4 r (m + n) bytes). A Q' entry that does not fit in float sets
/// kDeviceOutOfRange; otherwise, with dq, Q' is copied into dq's q and its validity word set (on the device, so an
/// asynchronous failure leaves the previous Q in place, as on the CPU). Synchronises only without
/// Exec::device_status.
Status lowrank_encode(std::size_t m, std::size_t n, std::size_t r, Span<const float> x, MutableBytes body,
                      std::size_t* body_bytes, LowRankDeviceQ* dq, const Exec& ex);
/// y = scale * P Q'^T (or y +=), the padding dropped; the payload header (body.data() - 32) must equal `expect`
/// (complete: flags, rank, cols, exact body_bytes), checked on the device before y is touched.
Status lowrank_decode(std::size_t m, std::size_t n, std::size_t r, const PayloadHeader& expect, ConstBytes body,
                      Span<float> y, DecodeMode mode, float scale, const Exec& ex);

/// The cold-start draw alone (for tests): q[k] = lowrank_gaussian(u32(2k), u32(2k + 1)) of key, k < count.
Status lowrank_draw_gaussian(const RngKey& key, float* q, std::size_t count, const Exec& ex);

}  // namespace gradzip::detail::cuda
