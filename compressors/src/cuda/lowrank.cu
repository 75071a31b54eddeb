// CUDA kernels of the lowrank codec (PowerSGD rank r; formulas in lowrank.cc, orders in lowrank_math.h).
// Each sum keeps the CPU's order, so the result is bit-identical for the same Q:
//   prep_q_kernel  Q = the state's device Q when its validity word is set, else the cold-start draw
//                  (lowrank_gaussian, one thread per element; see there for the last-bit caveat of device log/cos);
//   mq_kernel      P = M Q: one thread per (i, l), the sequential sum over j ascending (double), M staged through
//                  shared memory in tiles of 32 rows x 64 columns (coalesced loads); P kept column-major in double;
//   gs_kernel      Gram-Schmidt: one block of kLowRankDotLanes threads, thread t = lane t of every column dot
//                  product (lowrank_col_dot's order), the updates parallel over rows; P rounded to float into the
//                  body (row-major) and a float copy for the next kernel;
//   mtp_kernel     Q' = M^T P: one thread per (j, l), the sequential sum over i ascending (double), M staged in
//                  tiles of 64 rows x 32 columns; rounded to float into the body, with the range check;
//   commit_kernel  copies Q' into the state's device Q when no entry overflowed (so a failed call keeps the old Q);
//   decode_kernel  y[i n + j] (=|+=) scale * sum_{l ascending} P[i][l] Q'[j][l] (float), one thread per element,
//                  after the block's header check.
// Parallelism: M Q has m r independent sums of n terms and M^T P n r sums of m terms, so the near-square view
// (m ~ n ~ sqrt(d)) keeps ~r sqrt(d) threads busy; a very wide (m tiny) or very tall view serialises that product.
#include <cfloat>

#include "common.cuh"
#include "gradzip/compressors/lowrank_math.h"
#include "lowrank_cuda.h"

namespace gradzip::detail::cuda {
namespace {

constexpr unsigned kBlock = 128;    // mq / mtp: 32 lanes x 4 columns l (one warp per column)
constexpr unsigned kCols = 4;       // columns l of P / Q' per block
constexpr unsigned kLongTile = 64;  // tile extent along the summed index
constexpr unsigned kElemThreads = 256;
constexpr unsigned kGsThreads = static_cast<unsigned>(kLowRankDotLanes);
static_assert(kGsThreads <= 1024, "one thread per lane in one block");

__device__ __forceinline__ std::size_t gtid() {
  return blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
}
__device__ __forceinline__ std::size_t min_sz(std::size_t a, std::size_t b) {
  return a < b ? a : b;
}

__global__ void prep_q_kernel(const float* dq, const std::uint32_t* valid, RngKey key, std::size_t count, float* Q) {
  const std::size_t k = gtid();
  if (k >= count) return;
  if (valid != nullptr && *valid != 0) {
    Q[k] = dq[k];
    return;
  }
  Q[k] = lowrank_gaussian(philox_u32(key, 2 * k), philox_u32(key, 2 * k + 1));
}

__global__ void draw_kernel(RngKey key, std::size_t count, float* q) {
  const std::size_t k = gtid();
  if (k < count) q[k] = lowrank_gaussian(philox_u32(key, 2 * k), philox_u32(key, 2 * k + 1));
}

// Pc[l m + i] = sum_{j ascending, i n + j < d} double(M[i][j]) * double(Q[j][l]).
// Block (bx, by): rows [32 bx, 32 bx + 32), columns l in [4 by, 4 by + 4); thread t: row lane t % 32, column t / 32.
__global__ void __launch_bounds__(kBlock)
    mq_kernel(const float* x, std::size_t d, std::size_t m, std::size_t n, const float* Q, std::size_t r, double* Pc) {
  __shared__ float xs[32][kLongTile + 1];
  __shared__ float qs[kLongTile][kCols];
  const unsigned t = threadIdx.x, lane = t % 32, w = t / 32;
  const std::size_t i0 = blockIdx.x * static_cast<std::size_t>(32);
  const std::size_t l0 = blockIdx.y * static_cast<std::size_t>(kCols);
  const std::size_t i = i0 + lane, l = l0 + w;
  const bool active = i < m && l < r;
  const std::size_t len = i < m ? min_sz(n, d - i * n) : 0;  // the last row may stop short (padding)
  double acc = 0.0;
  for (std::size_t j0 = 0; j0 < n; j0 += kLongTile) {
    for (unsigned e = t; e < 32 * kLongTile; e += kBlock) {
      const unsigned row = e / kLongTile, col = e % kLongTile;
      const std::size_t gi = i0 + row, gj = j0 + col;
      xs[row][col] = gi < m && gj < n && gi * n + gj < d ? x[gi * n + gj] : 0.0f;
    }
    for (unsigned e = t; e < kLongTile * kCols; e += kBlock) {
      const unsigned jj = e / kCols, ww = e % kCols;
      const std::size_t gj = j0 + jj, gl = l0 + ww;
      qs[jj][ww] = gj < n && gl < r ? Q[gj * r + gl] : 0.0f;
    }
    __syncthreads();
    if (active && len > j0) {
      const std::size_t jn = min_sz(kLongTile, len - j0);
      for (std::size_t jj = 0; jj < jn; ++jj) acc += static_cast<double>(xs[lane][jj]) * static_cast<double>(qs[jj][w]);
    }
    __syncthreads();
  }
  if (active) Pc[l * m + i] = acc;
}

// lowrank_col_dot of columns a and b (column-major, length m): thread t is lane t; all threads get the result.
__device__ double block_dot(const double* a, const double* b, std::size_t m, double* lanes) {
  const unsigned t = threadIdx.x;
  double s = 0.0;
  for (std::size_t i = t; i < m; i += kGsThreads) s += a[i] * b[i];
  lanes[t] = s;
  __syncthreads();
  for (unsigned st = 1; st < kGsThreads; st *= 2) {
    if (t % (2 * st) == 0) lanes[t] += lanes[t + st];
    __syncthreads();
  }
  const double v = lanes[0];
  __syncthreads();  // every thread has read lanes[0] before the next dot overwrites it
  return v;
}

__device__ void orthogonalise_against_previous(double* Pc, std::size_t m, std::size_t k, double* lanes) {
  double* ck = Pc + k * m;
  for (int pass = 0; pass < 2; ++pass) {
    for (std::size_t l = 0; l < k; ++l) {
      const double* cl = Pc + l * m;
      const double c = block_dot(cl, ck, m, lanes);
      for (std::size_t i = threadIdx.x; i < m; i += kGsThreads) ck[i] -= c * cl[i];
      __syncthreads();
    }
  }
}

__device__ void scale_col(double* c, std::size_t m, double s) {
  for (std::size_t i = threadIdx.x; i < m; i += kGsThreads) c[i] *= s;
  __syncthreads();
}

// orthonormalise_columns (lowrank_math.cc) on the column-major Pc, then P rounded to float: body (row-major,
// little-endian, any alignment) and Pf (row-major). Every branch depends only on values all threads read from shared
// memory, so the block stays converged at each barrier.
__global__ void __launch_bounds__(kGsThreads)
    gs_kernel(double* Pc, std::size_t m, std::size_t r, std::uint8_t* body, float* Pf) {
  __shared__ double lanes[kGsThreads];
  __shared__ std::size_t best_i[kGsThreads];
  constexpr double kRelTol = 1e-10;
  const unsigned t = threadIdx.x;
  for (std::size_t k = 0; k < r; ++k) {
    double* ck = Pc + k * m;
    const double before = sqrt(block_dot(ck, ck, m, lanes));
    orthogonalise_against_previous(Pc, m, k, lanes);
    const double after = sqrt(block_dot(ck, ck, m, lanes));
    if (before > 0.0 && after > kRelTol * before) {  // false for NaN too
      scale_col(ck, m, 1.0 / after);
      continue;
    }
    // Degenerate: the lowest i maximising 1 - sum_{l<k} P[i][l]^2 (strict > in index order per thread, as the CPU's
    // scan; then the larger value, on ties the lower index; (-1, 0) when nothing beats -1, i.e. all NaN).
    double bv = -1.0;
    std::size_t bi = 0;
    for (std::size_t i = t; i < m; i += kGsThreads) {
      double s = 1.0;
      for (std::size_t l = 0; l < k; ++l) {
        const double p = Pc[l * m + i];
        s -= p * p;
      }
      if (s > bv) {
        bv = s;
        bi = i;
      }
    }
    lanes[t] = bv;
    best_i[t] = bi;
    __syncthreads();
    for (unsigned st = 1; st < kGsThreads; st *= 2) {
      if (t % (2 * st) == 0) {
        const double ov = lanes[t + st];
        const std::size_t oi = best_i[t + st];
        if (ov > lanes[t] || (ov == lanes[t] && oi < best_i[t])) {
          lanes[t] = ov;
          best_i[t] = oi;
        }
      }
      __syncthreads();
    }
    const std::size_t best = best_i[0];
    __syncthreads();
    for (std::size_t i = t; i < m; i += kGsThreads) ck[i] = i == best ? 1.0 : 0.0;
    __syncthreads();
    orthogonalise_against_previous(Pc, m, k, lanes);
    const double nv = sqrt(block_dot(ck, ck, m, lanes));
    if (nv > 0.0) {
      scale_col(ck, m, 1.0 / nv);
    } else {  // only with NaN in earlier columns (unchecked non-finite input)
      for (std::size_t i = t; i < m; i += kGsThreads) ck[i] = 0.0;
      __syncthreads();
    }
  }
  for (std::size_t idx = t; idx < m * r; idx += kGsThreads) {
    const std::size_t i = idx / r, l = idx % r;
    const float f = static_cast<float>(Pc[l * m + i]);
    store_u32_any(body + 4 * idx, __float_as_uint(f));
    Pf[idx] = f;
  }
}

// Q'[j][l] = float(sum_{i ascending, i n + j < d} double(M[i][j]) * double(P[i][l])) into qout (row-major n x r,
// little-endian, any alignment) and Qf; an entry with |v| > FLT_MAX (or NaN) sets *bad and kDeviceOutOfRange.
// Block (bx, by): columns j in [32 bx, 32 bx + 32), l in [4 by, 4 by + 4); thread t: j lane t % 32, l = t / 32.
__global__ void __launch_bounds__(kBlock)
    mtp_kernel(const float* x, std::size_t d, std::size_t m, std::size_t n, const float* Pf, std::size_t r,
               std::uint8_t* qout, float* Qf, std::uint32_t* bad, std::uint32_t* status) {
  __shared__ float xs[kLongTile][32 + 1];
  __shared__ float ps[kLongTile][kCols];
  const unsigned t = threadIdx.x, lane = t % 32, w = t / 32;
  const std::size_t j0 = blockIdx.x * static_cast<std::size_t>(32);
  const std::size_t l0 = blockIdx.y * static_cast<std::size_t>(kCols);
  const std::size_t j = j0 + lane, l = l0 + w;
  const bool active = j < n && l < r;
  const std::size_t rows = active ? (d - j + n - 1) / n : 0;  // rows i with i n + j < d
  double acc = 0.0;
  for (std::size_t i0 = 0; i0 < m; i0 += kLongTile) {
    for (unsigned e = t; e < kLongTile * 32; e += kBlock) {
      const unsigned row = e / 32, col = e % 32;
      const std::size_t gi = i0 + row, gj = j0 + col;
      xs[row][col] = gi < m && gj < n && gi * n + gj < d ? x[gi * n + gj] : 0.0f;
    }
    for (unsigned e = t; e < kLongTile * kCols; e += kBlock) {
      const unsigned ii = e / kCols, ww = e % kCols;
      const std::size_t gi = i0 + ii, gl = l0 + ww;
      ps[ii][ww] = gi < m && gl < r ? Pf[gi * r + gl] : 0.0f;
    }
    __syncthreads();
    if (active && rows > i0) {
      const std::size_t in = min_sz(kLongTile, rows - i0);
      for (std::size_t ii = 0; ii < in; ++ii) acc += static_cast<double>(xs[ii][lane]) * static_cast<double>(ps[ii][w]);
    }
    __syncthreads();
  }
  if (!active) return;
  const float f = static_cast<float>(acc);
  store_u32_any(qout + 4 * (j * r + l), __float_as_uint(f));
  Qf[j * r + l] = f;
  if (!lowrank_fits_float(acc)) {
    atomicOr(bad, 1u);
    atomicOr(status, kDeviceOutOfRange);
  }
}

__global__ void commit_kernel(const float* Qf, std::size_t count, const std::uint32_t* bad, float* dq,
                              std::uint32_t* valid) {
  if (*bad != 0) return;
  const std::size_t k = gtid();
  if (k < count) dq[k] = Qf[k];
  if (k == 0) *valid = 1u;
}

__device__ __forceinline__ float load_f32(const std::uint8_t* p) {
  return __uint_as_float(load_u32_any(p));
}

__global__ void __launch_bounds__(kElemThreads)
    decode_kernel(const std::uint8_t* payload, HeaderWords e, std::uint32_t d, std::uint32_t n, std::size_t m,
                  std::size_t r, float scale, bool acc, float* y, std::uint32_t* status) {
  const std::size_t k = gtid();
  const float yv = acc && k < d ? y[k] : 0.0f;
  if (!block_header_ok(payload, e, status) || k >= d) return;
  const std::uint32_t kk = static_cast<std::uint32_t>(k);
  const std::size_t i = kk / n, j = kk - static_cast<std::uint32_t>(i) * n;
  const std::uint8_t* P = payload + kHeaderBytes + 4 * (i * r);
  const std::uint8_t* Q = payload + kHeaderBytes + 4 * (m * r + j * r);
  float tmp = 0.0f;
  for (std::size_t l = 0; l < r; ++l) tmp += load_f32(P + 4 * l) * load_f32(Q + 4 * l);
  const float v = scale * tmp;
  y[k] = acc ? yv + v : v;
}

}  // namespace

// ---- host entry points ----------------------------------------------------------------------------------------------
Status lowrank_device_q_prepare(LowRankDeviceQ* dq, std::size_t rows, std::size_t cols, std::size_t rank,
                                const float* host_q, bool keep, const Exec& ex) {
  const cudaStream_t s = stream_of(ex);
  const bool same = dq->block != nullptr && dq->rows == rows && dq->cols == cols && dq->rank == rank;
  if (!same) {
    lowrank_device_q_free(dq);
    void* p = nullptr;
    GZ_CUDA_CHECK(cudaMalloc(&p, 256 + 4 * cols * rank));
    dq->block = p;
    dq->valid = static_cast<std::uint32_t*>(p);
    dq->q = reinterpret_cast<float*>(static_cast<std::uint8_t*>(p) + 256);
    dq->rows = rows;
    dq->cols = cols;
    dq->rank = rank;
  }
  dq->stream = ex.stream;
  if (host_q != nullptr) {
    // Pageable source: staged before the call returns, so the caller may change it afterwards.
    GZ_CUDA_CHECK(cudaMemcpyAsync(dq->q, host_q, 4 * cols * rank, cudaMemcpyHostToDevice, s));
    GZ_CUDA_CHECK(cudaMemsetAsync(dq->valid, 1, sizeof(std::uint32_t), s));  // any non-zero word is valid
  } else if (!same || !keep) {
    GZ_CUDA_CHECK(cudaMemsetAsync(dq->valid, 0, sizeof(std::uint32_t), s));
  }
  return Status::Ok();
}

Status lowrank_device_q_download(const LowRankDeviceQ& dq, std::vector<float>* q) {
  if (dq.block == nullptr) {
    q->clear();
    return Status::Ok();
  }
  const cudaStream_t s = static_cast<cudaStream_t>(dq.stream);
  std::uint32_t valid = 0;
  std::vector<float> tmp(dq.cols * dq.rank);
  GZ_CUDA_CHECK(cudaMemcpyAsync(&valid, dq.valid, sizeof(valid), cudaMemcpyDeviceToHost, s));
  GZ_CUDA_CHECK(cudaMemcpyAsync(tmp.data(), dq.q, 4 * tmp.size(), cudaMemcpyDeviceToHost, s));
  GZ_CUDA_CHECK(cudaStreamSynchronize(s));
  if (valid != 0) {
    *q = std::move(tmp);
  } else {
    q->clear();
  }
  return Status::Ok();
}

void lowrank_device_q_free(LowRankDeviceQ* dq) {
  if (dq->block != nullptr) {
    if (cudaFree(dq->block) != cudaSuccess) (void)cudaGetLastError();
  }
  *dq = LowRankDeviceQ{};
}

std::size_t lowrank_workspace(std::size_t m, std::size_t n, std::size_t r) {
  return Scratch::round(4 * n * r) + Scratch::round(8 * m * r) + Scratch::round(4 * m * r) + Scratch::round(4 * n * r) +
         Scratch::round(sizeof(std::uint32_t));
}

Status lowrank_encode(std::size_t m, std::size_t n, std::size_t r, Span<const float> x, MutableBytes body,
                      std::size_t* body_bytes, LowRankDeviceQ* dq, const Exec& ex) {
  const std::size_t d = x.size();
  const cudaStream_t s = stream_of(ex);
  Scratch scratch;
  GZ_RETURN_IF_ERROR(scratch.init(lowrank_workspace(m, n, r), ex));
  float* Q = scratch.take<float>(n * r);
  double* Pc = scratch.take<double>(m * r);
  float* Pf = scratch.take<float>(m * r);
  float* Qf = scratch.take<float>(n * r);
  std::uint32_t* bad = scratch.take<std::uint32_t>(1);
  StatusWord st;
  GZ_RETURN_IF_ERROR(st.init(ex));
  GZ_CUDA_CHECK(cudaMemsetAsync(bad, 0, sizeof(std::uint32_t), s));
  prep_q_kernel<<<grid_for(n * r, kElemThreads), kElemThreads, 0, s>>>(
      dq != nullptr ? dq->q : nullptr, dq != nullptr ? dq->valid : nullptr, ex.rng, n * r, Q);
  GZ_CUDA_LAUNCH_CHECK();
  const unsigned col_blocks = grid_for(r, kCols);
  mq_kernel<<<dim3(grid_for(m, 32), col_blocks), kBlock, 0, s>>>(x.data(), d, m, n, Q, r, Pc);
  GZ_CUDA_LAUNCH_CHECK();
  gs_kernel<<<1, kGsThreads, 0, s>>>(Pc, m, r, body.data(), Pf);
  GZ_CUDA_LAUNCH_CHECK();
  mtp_kernel<<<dim3(grid_for(n, 32), col_blocks), kBlock, 0, s>>>(x.data(), d, m, n, Pf, r, body.data() + 4 * m * r, Qf,
                                                                  bad, st.get());
  GZ_CUDA_LAUNCH_CHECK();
  if (dq != nullptr) {
    commit_kernel<<<grid_for(n * r, kElemThreads), kElemThreads, 0, s>>>(Qf, n * r, bad, dq->q, dq->valid);
    dq->stream = ex.stream;
  }
  *body_bytes = 4 * r * (m + n);
  return st.finish("lowrank.encode");
}

Status lowrank_decode(std::size_t m, std::size_t n, std::size_t r, const PayloadHeader& expect, ConstBytes body,
                      Span<float> y, DecodeMode mode, float scale, const Exec& ex) {
  GZ_RETURN_IF_ERROR(check_body_capacity(expect, body, "lowrank.decode"));
  StatusWord st;
  GZ_RETURN_IF_ERROR(st.init(ex));
  const std::size_t d = y.size();
  decode_kernel<<<grid_for(d, kElemThreads), kElemThreads, 0, stream_of(ex)>>>(
      body.data() - kHeaderBytes, header_words(expect), static_cast<std::uint32_t>(d), static_cast<std::uint32_t>(n), m,
      r, scale, mode == DecodeMode::kAccumulate, y.data(), st.get());
  return st.finish("lowrank.decode");
}

Status lowrank_draw_gaussian(const RngKey& key, float* q, std::size_t count, const Exec& ex) {
  if (count == 0) return Status::Ok();
  draw_kernel<<<grid_for(count, kElemThreads), kElemThreads, 0, stream_of(ex)>>>(key, count, q);
  GZ_CUDA_LAUNCH_CHECK();
  return Status::Ok();
}

}  // namespace gradzip::detail::cuda
