// CUDA kernels of the sparsifiers: exact Top-K and Rand-K (Floyd's subset, computed in parallel), with the CPU
// codecs' wire forms (index form: index in b bits then value in 32 bits per entry; Top-K bitmap form; shared Rand-K
// values only).
//
// Top-K encode (exact, same selection as the CPU: |x| bits descending, ties to the lower index):
//  1. a deterministic strided sample of 4096 magnitudes, sorted in one block, gives a threshold t a little below the
//     estimated k-th largest (or 0);
//  2. one pass over x (select_kernel: a block per 4096-float tile, 16-byte loads, one block scan) writes each tile's
//     candidates |x| bits >= t as (index, value bits) in index order into the tile's own segment; the last block
//     to finish scans the tile counts; if fewer than k survive (an unrepresentative sample), every index is a
//     candidate (decided on the device, no host sync); compact_kernel copies the segments densely (a warp per tile)
//     and builds the first radix histogram on the way;
//  3. three radix-select rounds (11 + 10 + 10 bits; warp-aggregated shared-memory histograms; the last block of each
//     histogram kernel finds the digit and clears the bins for the next round) over the candidates' keys find the
//     exact k-th largest key K and how many of the elements equal to K to keep (the lowest-index ones);
//  4. an order-preserving filter (per-block counts; then each writing block sums the earlier blocks' counts) keeps
//     exactly k entries in ascending index order;
//  5. a word-parallel packer writes the body.
// Rand-K: Floyd's loop "for j = d-k .. d-1: t_j = below(j, j+1); insert t_j, or j if t_j is already in" inserts every
// drawn t_j, plus j itself exactly when t_j was already in the set after step j-1. With first(v) = the first step whose
// draw is v (radix sort of the draws), "v is in the set after step J" is: first(v) <= J, or (v >= d-k, v <= J and t_v
// is in the set after step v-1) -- a short chain of strictly decreasing values, evaluated per candidate in parallel.
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <cmath>

#include "common.cuh"

namespace gradzip::detail::cuda {
namespace {

constexpr unsigned kThreads = 256;
constexpr unsigned kFilterBlocks = 512;
constexpr int kSample = 4096;

__device__ __forceinline__ std::size_t tid() {
  return blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
}
__device__ __forceinline__ std::size_t nthreads() {
  return static_cast<std::size_t>(gridDim.x) * blockDim.x;
}
__device__ __forceinline__ std::uint32_t key_of(float v) {
  return __float_as_uint(v) & 0x7fffffffu;
}

struct TopkState {
  std::uint32_t t;  // candidate threshold on |x| bits
  std::uint32_t pad;
  unsigned long long count;  // candidates selected by the pass over x
  unsigned long long nc;     // candidates in use (count, or d in the fallback)
  std::uint32_t prefix;      // radix select: key bits found so far
  std::uint32_t mask;        // which bits of prefix are decided
  std::uint32_t rank;        // 1-based rank still wanted among keys matching prefix
  std::uint32_t all;         // fallback: every index is a candidate
  std::uint32_t done[4];     // last-block tickets: select, compact, radix rounds 2 and 3 (zeroed by sample_kernel)
};

__global__ void sample_kernel(const float* x, std::size_t d, std::size_t j, bool use, TopkState* st) {
  if (threadIdx.x < 4) st->done[threadIdx.x] = 0;
  if (!use) {
    if (threadIdx.x == 0) st->t = 0;
    return;
  }
  using Sort = cub::BlockRadixSort<std::uint32_t, 256, kSample / 256>;
  __shared__ typename Sort::TempStorage tmp;
  __shared__ std::uint32_t chosen;
  std::uint32_t keys[kSample / 256];
  const std::size_t stride = d / kSample;
#pragma unroll
  for (int q = 0; q < kSample / 256; ++q) keys[q] = key_of(x[(threadIdx.x * (kSample / 256) + q) * stride]);
  Sort(tmp).SortDescending(keys);  // blocked arrangement: thread t holds ranks 16t .. 16t+15
#pragma unroll
  for (int q = 0; q < kSample / 256; ++q)
    if (threadIdx.x * (kSample / 256) + q == j) chosen = keys[q];
  __syncthreads();
  if (threadIdx.x == 0) st->t = chosen;
}
/// Every block calls this once (all threads) after its global writes; true in the block that arrives last, which
/// then sees every other block's writes (threadfence-reduction pattern).
__device__ __forceinline__ bool last_block(std::uint32_t* ticket) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(ticket, 1u) == gridDim.x - 1;
  __syncthreads();
  return last;
}
/// Adds the key's digit to a shared histogram, one shared atomic per distinct bin in the warp; every lane calls it.
__device__ __forceinline__ void hist_add(std::uint32_t* h, bool active, std::uint32_t key, int shift,
                                         std::uint32_t digit_mask) {
  const std::uint32_t bin = active ? (key >> shift) & digit_mask : 0xffffffffu;
  const unsigned peers = __match_any_sync(0xffffffffu, bin);
  if (active && (__ffs(peers) - 1) == static_cast<int>(threadIdx.x & 31u))
    atomicAdd(&h[bin], static_cast<unsigned>(__popc(peers)));
}
/// A radix round's find, done by one block of kThreads (the last block of a histogram kernel): finds the digit
/// holding rank st->rank counting from the largest digit, and clears the bins it read.
__device__ void radix_find_block(std::uint32_t* hist, TopkState* st, int shift, std::uint32_t digit_mask) {
  using Scan = cub::BlockScan<std::uint32_t, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  const unsigned t = threadIdx.x;
  const unsigned bins = digit_mask + 1;  // 1024 or 2048
  const unsigned per = bins / kThreads;  // 4 or 8
  std::uint32_t c[8];
  std::uint32_t sum = 0;
#pragma unroll
  for (unsigned q = 0; q < 8; ++q) {
    c[q] = 0;
    if (q < per) {
      std::uint32_t* b = hist + (bins - 1 - (t * per + q));
      c[q] = __ldcg(b);
      *b = 0;
      sum += c[q];
    }
  }
  const std::uint32_t r = st->rank;
  std::uint32_t before = 0;
  Scan(tmp).ExclusiveSum(sum, before);
  __syncthreads();
  std::uint32_t acc = before;
#pragma unroll
  for (unsigned q = 0; q < 8; ++q) {
    if (q < per) {
      if (r > acc && r <= acc + c[q]) {
        const std::uint32_t digit = bins - 1 - (t * per + q);
        st->prefix |= digit << shift;
        st->mask |= digit_mask << shift;
        st->rank = r - acc;
      }
      acc += c[q];
    }
  }
}
/// One radix round's histogram over the candidates whose key matches the prefix; the last block to finish (ticket)
/// also runs the round's find (no separate launch).
__global__ void radix_hist_kernel(const std::uint32_t* ckey, TopkState* st, int shift, std::uint32_t digit_mask,
                                  std::uint32_t* hist, std::uint32_t* ticket) {
  __shared__ std::uint32_t h[2048];
  for (unsigned b = threadIdx.x; b < 2048; b += blockDim.x) h[b] = 0;
  __syncthreads();
  const std::size_t nc = st->nc;
  const std::uint32_t prefix = st->prefix, mask = st->mask;
  const unsigned lane = threadIdx.x & 31u;
  // Keys above the sampled threshold crowd into a few bins: one shared atomic per distinct bin in the warp.
  for (std::size_t b0 = blockIdx.x * static_cast<std::size_t>(blockDim.x); b0 < nc; b0 += nthreads()) {
    const std::size_t i = b0 + threadIdx.x;
    const std::uint32_t key = i < nc ? ckey[i] & 0x7fffffffu : 0u;
    const bool active = i < nc && (key & mask) == prefix;
    const std::uint32_t bin = active ? (key >> shift) & digit_mask : 0xffffffffu;
    const unsigned peers = __match_any_sync(0xffffffffu, bin);
    if (active && (__ffs(peers) - 1) == static_cast<int>(lane))
      atomicAdd(&h[bin], static_cast<unsigned>(__popc(peers)));
  }
  __syncthreads();
  for (unsigned b = threadIdx.x; b <= digit_mask; b += blockDim.x)
    if (h[b]) atomicAdd(&hist[b], h[b]);
  if (!last_block(ticket)) return;
  radix_find_block(hist, st, shift, digit_mask);
}
/// The candidate pass of the Top-K encode: block b reads tile b of x (kTile floats, 16-byte loads when x is aligned)
/// and writes its candidates |x| bits >= t, in index order, to its own segment sidx/skey[b * kTile ...] and their
/// number to seg_count[b]. The last block scans the counts into seg_off, sets up the radix select (count, fallback,
/// rank) and zeroes the histogram.
constexpr unsigned kSelVec = 4;                                                  // float4 loads per thread
constexpr std::size_t kTile = static_cast<std::size_t>(kThreads) * kSelVec * 4;  // floats per select block
__global__ void __launch_bounds__(kThreads)
    select_kernel(const float* x, std::size_t d, bool vec, TopkState* st, std::uint32_t* sidx, std::uint32_t* skey,
                  std::uint32_t* seg_count, std::uint32_t* seg_off, std::size_t k, std::uint32_t* hist) {
  using Scan = cub::BlockScan<unsigned long long, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  const std::uint32_t t = st->t;
  const std::size_t base = blockIdx.x * kTile;
  float v[kSelVec][4];
#pragma unroll
  for (unsigned q = 0; q < kSelVec; ++q) {
    const std::size_t i = base + (static_cast<std::size_t>(q) * kThreads + threadIdx.x) * 4;
    if (vec && i + 4 <= d) {
      const float4 f = __ldg(reinterpret_cast<const float4*>(x + i));
      v[q][0] = f.x;
      v[q][1] = f.y;
      v[q][2] = f.z;
      v[q][3] = f.w;
    } else {
#pragma unroll
      for (unsigned c = 0; c < 4; ++c) v[q][c] = i + c < d ? x[i + c] : 0.0f;
    }
  }
  // Element (q, thread, c) is x[base + (q * kThreads + thread) * 4 + c]: index order is q, then thread, then c. One
  // scan of four 16-bit per-row counts gives every row's offsets.
  unsigned m[kSelVec];
  unsigned long long packed = 0;
#pragma unroll
  for (unsigned q = 0; q < kSelVec; ++q) {
    const std::size_t i = base + (static_cast<std::size_t>(q) * kThreads + threadIdx.x) * 4;
    m[q] = 0;
#pragma unroll
    for (unsigned c = 0; c < 4; ++c)
      if (i + c < d && key_of(v[q][c]) >= t) m[q] |= 1u << c;
    packed |= static_cast<unsigned long long>(__popc(m[q])) << (16 * q);
  }
  unsigned long long before = 0, total = 0;
  Scan(tmp).ExclusiveSum(packed, before, total);
  std::uint32_t row = 0;
#pragma unroll
  for (unsigned q = 0; q < kSelVec; ++q) {
    const std::size_t i = base + (static_cast<std::size_t>(q) * kThreads + threadIdx.x) * 4;
    std::uint32_t pos = row + static_cast<std::uint32_t>((before >> (16 * q)) & 0xffffu);
#pragma unroll
    for (unsigned c = 0; c < 4; ++c) {
      if ((m[q] >> c) & 1u) {
        sidx[base + pos] = static_cast<std::uint32_t>(i + c);
        skey[base + pos] = __float_as_uint(v[q][c]);
        ++pos;
      }
    }
    row += static_cast<std::uint32_t>((total >> (16 * q)) & 0xffffu);
  }
  if (threadIdx.x == 0) seg_count[blockIdx.x] = row;
  if (!last_block(&st->done[0])) return;

  // Last block: exclusive scan of the segment counts, kPer consecutive counts per thread.
  constexpr unsigned kPer = 16;
  using Scan32 = cub::BlockScan<std::uint32_t, kThreads>;
  __shared__ typename Scan32::TempStorage tmp32;
  __shared__ std::uint32_t running;
  if (threadIdx.x == 0) running = 0;
  __syncthreads();
  const std::size_t nseg = gridDim.x;
  for (std::size_t c0 = 0; c0 < nseg; c0 += static_cast<std::size_t>(kThreads) * kPer) {
    std::uint32_t vals[kPer];
    std::uint32_t sum = 0;
    const std::size_t first = c0 + static_cast<std::size_t>(threadIdx.x) * kPer;
#pragma unroll
    for (unsigned p = 0; p < kPer; ++p) {
      vals[p] = first + p < nseg ? __ldcg(seg_count + first + p) : 0u;
      sum += vals[p];
    }
    std::uint32_t ex = 0, tot = 0;
    Scan32(tmp32).ExclusiveSum(sum, ex, tot);
    std::uint32_t acc = running + ex;
#pragma unroll
    for (unsigned p = 0; p < kPer; ++p) {
      if (first + p < nseg) seg_off[first + p] = acc;
      acc += vals[p];
    }
    __syncthreads();
    if (threadIdx.x == 0) running += tot;
    __syncthreads();
  }
  for (unsigned b = threadIdx.x; b < 2048; b += blockDim.x) hist[b] = 0;
  if (threadIdx.x == 0) {
    st->count = running;
    st->all = st->count < k ? 1u : 0u;
    st->nc = st->all ? d : st->count;
    st->prefix = 0;
    st->mask = 0;
    st->rank = static_cast<std::uint32_t>(k);
  }
}
/// Copies the segments into the dense candidate arrays cidx/ckey (a warp per segment; in the fallback every index),
/// builds the first radix round's histogram on the way, and its last block runs that round's find.
__global__ void __launch_bounds__(kThreads)
    compact_kernel(const float* x, std::size_t d, TopkState* st, const std::uint32_t* sidx, const std::uint32_t* skey,
                   const std::uint32_t* seg_count, const std::uint32_t* seg_off, std::size_t nseg, std::uint32_t* cidx,
                   std::uint32_t* ckey, std::uint32_t* hist) {
  constexpr int kShift = 20;
  constexpr std::uint32_t kMask = 0x7ffu;
  __shared__ std::uint32_t h[2048];
  for (unsigned b = threadIdx.x; b < 2048; b += blockDim.x) h[b] = 0;
  __syncthreads();
  if (st->all) {
    for (std::size_t b0 = blockIdx.x * static_cast<std::size_t>(blockDim.x); b0 < d; b0 += nthreads()) {
      const std::size_t i = b0 + threadIdx.x;
      const bool active = i < d;
      const std::uint32_t raw = active ? __float_as_uint(x[i]) : 0u;
      if (active) {
        cidx[i] = static_cast<std::uint32_t>(i);
        ckey[i] = raw;
      }
      hist_add(h, active, raw & 0x7fffffffu, kShift, kMask);
    }
  } else {
    const unsigned lane = threadIdx.x & 31u, warps = blockDim.x / 32;
    for (std::size_t seg = blockIdx.x * static_cast<std::size_t>(warps) + threadIdx.x / 32; seg < nseg;
         seg += static_cast<std::size_t>(gridDim.x) * warps) {
      const std::uint32_t n = seg_count[seg], off = seg_off[seg];
      const std::size_t src = seg * kTile;
      for (std::uint32_t j0 = 0; j0 < n; j0 += 32) {
        const std::uint32_t j = j0 + lane;
        const bool active = j < n;
        std::uint32_t raw = 0;
        if (active) {
          raw = skey[src + j];
          cidx[off + j] = sidx[src + j];
          ckey[off + j] = raw;
        }
        hist_add(h, active, raw & 0x7fffffffu, kShift, kMask);
      }
    }
  }
  __syncthreads();
  for (unsigned b = threadIdx.x; b < 2048; b += blockDim.x)
    if (h[b]) atomicAdd(&hist[b], h[b]);
  if (!last_block(&st->done[1])) return;
  radix_find_block(hist, st, kShift, kMask);
}

/// Per-block counts of (key > K, key == K) over the block's slice of candidates.
__global__ void filter_count_kernel(const std::uint32_t* ckey, const TopkState* st, unsigned long long* counts) {
  using Reduce = cub::BlockReduce<unsigned long long, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const std::size_t nc = st->nc, len = (nc + gridDim.x - 1) / gridDim.x;
  const std::size_t lo = blockIdx.x * len, hi = lo + len < nc ? lo + len : nc;
  const std::uint32_t K = st->prefix;
  unsigned long long v = 0;
  for (std::size_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const std::uint32_t key = ckey[i] & 0x7fffffffu;
    v += (key > K ? (1ull << 32) : 0ull) + (key == K ? 1ull : 0ull);
  }
  const unsigned long long s = Reduce(tmp).Sum(v);
  if (threadIdx.x == 0) counts[blockIdx.x] = s;
}
/// Writes the kept (idx, value bits) in candidate order: kept = key > K, or key == K among the first `rank` ties.
__global__ void filter_write_kernel(const std::uint32_t* cidx, const std::uint32_t* ckey, const TopkState* st,
                                    const unsigned long long* offsets, std::uint32_t* kidx, std::uint32_t* kval) {
  using Scan = cub::BlockScan<unsigned long long, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ unsigned long long running;
  const std::size_t nc = st->nc, len = (nc + gridDim.x - 1) / gridDim.x;
  const std::size_t lo = blockIdx.x * len, hi = lo + len < nc ? lo + len : nc;
  const std::uint32_t K = st->prefix;
  const unsigned long long ties_wanted = st->rank;
  {
    // This block's start: the sum of the earlier blocks' packed counts (no separate scan launch).
    using Reduce = cub::BlockReduce<unsigned long long, kThreads>;
    __shared__ typename Reduce::TempStorage rtmp;
    unsigned long long part = 0;
    for (unsigned b = threadIdx.x; b < blockIdx.x; b += blockDim.x) part += offsets[b];
    const unsigned long long start = Reduce(rtmp).Sum(part);
    if (threadIdx.x == 0) running = start;
  }
  __syncthreads();
  for (std::size_t base = lo; base < hi; base += blockDim.x) {
    const std::size_t i = base + threadIdx.x;
    const std::uint32_t raw = i < hi ? ckey[i] : 0u, key = raw & 0x7fffffffu;
    const bool strict = i < hi && key > K, tie = i < hi && key == K;
    const unsigned long long v = (strict ? (1ull << 32) : 0ull) + (tie ? 1ull : 0ull);
    unsigned long long before = 0, total = 0;
    Scan(tmp).ExclusiveSum(v, before, total);
    const unsigned long long g = running + before;
    const unsigned long long sb = g >> 32, tb = g & 0xffffffffull;
    if (strict || (tie && tb < ties_wanted)) {
      const unsigned long long pos = sb + (tb < ties_wanted ? tb : ties_wanted);
      const std::uint32_t idx = cidx[i];
      kidx[pos] = idx;
      kval[pos] = raw;
    }
    __syncthreads();
    if (threadIdx.x == 0) running += total;
    __syncthreads();
  }
}

__device__ __forceinline__ long long floor_div32(long long a) {
  return a >= 0 ? a / 32 : -((-a + 31) / 32);
}
/// Word w of a sparse body: index form (kidx in ib bits + kval per entry) or bitmap form (d-bit map + values), or
/// values only (shared Rand-K: ib < 0).
__global__ void pack_kernel(const std::uint32_t* kidx, const std::uint32_t* kval, std::size_t k, std::size_t d, int ib,
                            bool bitmap, std::uint8_t* body, std::size_t body_bytes) {
  const std::size_t w = tid();
  const std::size_t words = (body_bytes + 3) / 4;
  if (w >= words) return;
  std::uint32_t word = 0;
  const long long lo = 32ll * static_cast<long long>(w);
  if (ib < 0) {
    word = kval[w];
  } else if (!bitmap) {
    const long long R = ib + 32;
    long long e0 = lo / R, e1 = (lo + 31) / R;
    if (e1 > static_cast<long long>(k) - 1) e1 = static_cast<long long>(k) - 1;
    for (long long e = e0; e <= e1; ++e) {
      const std::uint64_t rec = static_cast<std::uint64_t>(kidx[e]) | static_cast<std::uint64_t>(kval[e]) << ib;
      const long long off = e * R - lo;
      word |= off >= 0 ? static_cast<std::uint32_t>(rec << off) : static_cast<std::uint32_t>(rec >> (-off));
    }
  } else {
    const long long dd = static_cast<long long>(d);
    if (lo < dd) {
      // lower_bound of lo in kidx
      std::size_t a = 0, b = k;
      while (a < b) {
        const std::size_t m = (a + b) / 2;
        if (static_cast<long long>(kidx[m]) < lo)
          a = m + 1;
        else
          b = m;
      }
      const long long hi = lo + 32 < dd ? lo + 32 : dd;
      for (std::size_t e = a; e < k && static_cast<long long>(kidx[e]) < hi; ++e) word |= 1u << (kidx[e] - lo);
    }
    if (lo + 32 > dd) {
      long long e0 = floor_div32(lo - dd), e1 = floor_div32(lo + 31 - dd);
      if (e0 < 0) e0 = 0;
      if (e1 > static_cast<long long>(k) - 1) e1 = static_cast<long long>(k) - 1;
      for (long long e = e0; e <= e1; ++e) {
        const long long off = dd + 32 * e - lo;
        const std::uint64_t v = kval[e];
        word |= off >= 0 ? static_cast<std::uint32_t>(v << off) : static_cast<std::uint32_t>(v >> (-off));
      }
    }
  }
  std::uint8_t* p = body + 4 * w;
  const std::size_t left = body_bytes - 4 * w;
  if (left >= 4)
    store_u32_any(p, word);
  else
    store_bytes(p, word, static_cast<int>(left));
}

// ---- decode ---------------------------------------------------------------------------------------------------------
__global__ void zero_kernel(const std::uint8_t* payload, HeaderWords e, const unsigned long long* total,
                            unsigned long long want, float* y, std::size_t n, std::uint32_t* status) {
  if (!block_header_ok(payload, e, status)) return;
  if (total != nullptr && *total != want) return;
  for (std::size_t i = tid(); i < n; i += nthreads()) y[i] = 0.0f;
}
/// Index-form entries (ib-bit index, 32-bit value): y[idx] (+)= f * value; checks idx < d and increasing.
__global__ void index_scatter_kernel(const std::uint8_t* payload, HeaderWords e, std::size_t k, std::size_t d, int ib,
                                     float f, bool acc, float* y, std::uint32_t* status) {
  if (!block_header_ok(payload, e, status)) return;
  const std::size_t i = tid();
  if (i >= k) return;
  const std::uint8_t* body = payload + kHeaderBytes;
  const std::uint64_t size = e.w[4];
  const int R = ib + 32;
  const std::uint64_t rec = read_bits(body, size, static_cast<std::uint64_t>(i) * R, R);
  const std::uint64_t imask = ib == 0 ? 0 : ((std::uint64_t{1} << ib) - 1);
  const std::uint64_t idx = rec & imask;
  bool bad = idx >= d;
  if (i > 0) bad |= (read_bits(body, size, static_cast<std::uint64_t>(i - 1) * R, R) & imask) >= idx;
  if (bad) {
    atomicOr(status, kDeviceBadBody);
    return;
  }
  const float v = f * __uint_as_float(static_cast<std::uint32_t>(rec >> ib));
  y[idx] = acc ? y[idx] + v : v;
}
__global__ void bitmap_count_kernel(const std::uint8_t* body, std::size_t d, std::uint32_t* counts) {
  const std::size_t w = tid(), words = (d + 31) / 32;
  if (w >= words) return;
  const int nb = d - 32 * w < 32 ? static_cast<int>(d - 32 * w) : 32;
  counts[w] = __popc(static_cast<std::uint32_t>(read_bits(body, (d + 7) / 8, 32 * w, nb)));
}
__global__ void total_kernel(const std::uint32_t* counts, const std::uint32_t* offsets, std::size_t words,
                             unsigned long long* total, unsigned long long want, std::uint32_t* status) {
  *total = static_cast<unsigned long long>(offsets[words - 1]) + counts[words - 1];
  if (*total != want) atomicOr(status, kDeviceBadBody);
}
__global__ void bitmap_scatter_kernel(const std::uint8_t* payload, HeaderWords e, std::size_t d,
                                      const std::uint32_t* offsets, const unsigned long long* total,
                                      unsigned long long k, float f, bool acc, float* y, std::uint32_t* status) {
  if (!block_header_ok(payload, e, status)) return;
  if (*total != k) return;
  const std::size_t w = tid(), words = (d + 31) / 32;
  if (w >= words) return;
  const std::uint8_t* body = payload + kHeaderBytes;
  const std::uint64_t size = e.w[4];
  const int nb = d - 32 * w < 32 ? static_cast<int>(d - 32 * w) : 32;
  std::uint32_t bits = static_cast<std::uint32_t>(read_bits(body, size, 32 * w, nb));
  std::uint64_t pos = offsets[w];
  while (bits) {
    const int b = __ffs(bits) - 1;
    bits &= bits - 1;
    const float v = f * __uint_as_float(static_cast<std::uint32_t>(read_bits(body, size, d + 32 * pos, 32)));
    const std::size_t i = 32 * w + b;
    y[i] = acc ? y[i] + v : v;
    ++pos;
  }
}

// ---- Rand-K subset
// ----------------------------------------------------------------------------------------------------
__global__ void randk_draw_kernel(RngKey key, std::size_t d, std::size_t k, std::uint32_t* t, std::uint32_t* r) {
  const std::size_t i = tid();
  if (i >= k) return;
  const std::uint64_t j = d - k + i;
  t[i] = static_cast<std::uint32_t>(philox_below(key, j, j + 1));
  r[i] = static_cast<std::uint32_t>(i);
}
__device__ __forceinline__ std::uint64_t first_hit(const std::uint32_t* ts, const std::uint32_t* rs, std::size_t k,
                                                   std::size_t base, std::uint64_t v) {
  std::size_t a = 0, b = k;
  while (a < b) {
    const std::size_t m = (a + b) / 2;
    if (ts[m] < v)
      a = m + 1;
    else
      b = m;
  }
  return a < k && ts[a] == v ? base + rs[a] : ~std::uint64_t{0};
}
__global__ void randk_mark_kernel(std::size_t d, std::size_t k, const std::uint32_t* t, const std::uint32_t* ts,
                                  const std::uint32_t* rs, std::uint32_t* bm) {
  const std::size_t i = tid();
  if (i >= k) return;
  const std::size_t base = d - k;
  const std::uint32_t ti = t[i];
  atomicOr(&bm[ti / 32], 1u << (ti % 32));
  std::uint64_t v = base + i, J = d - 1;
  for (;;) {
    if (first_hit(ts, rs, k, base, v) <= J) break;  // in the set
    if (v < base || v > J) return;                  // never inserted by step J
    const std::uint64_t w = t[v - base];
    J = v - 1;
    v = w;
  }
  const std::uint64_t me = base + i;
  atomicOr(&bm[me / 32], 1u << (me % 32));
}
__global__ void popc_kernel(const std::uint32_t* bm, std::size_t words, std::uint32_t* counts) {
  const std::size_t w = tid();
  if (w < words) counts[w] = __popc(bm[w]);
}
__global__ void extract_kernel(const std::uint32_t* bm, std::size_t words, const std::uint32_t* offsets, const float* x,
                               std::uint32_t* kidx, std::uint32_t* kval) {
  const std::size_t w = tid();
  if (w >= words) return;
  std::uint32_t bits = bm[w];
  std::uint32_t pos = offsets[w];
  while (bits) {
    const int b = __ffs(bits) - 1;
    bits &= bits - 1;
    const std::uint32_t idx = static_cast<std::uint32_t>(32 * w + b);
    kidx[pos] = idx;
    if (x != nullptr) kval[pos] = __float_as_uint(x[idx]);
    ++pos;
  }
}
/// Shared Rand-K decode: y[kidx[e]] (+)= f * value e.
__global__ void shared_scatter_kernel(const std::uint8_t* payload, HeaderWords e, const std::uint32_t* kidx,
                                      std::size_t k, float f, bool acc, float* y, std::uint32_t* status) {
  if (!block_header_ok(payload, e, status)) return;
  const std::size_t i = tid();
  if (i >= k) return;
  const float v = f * __uint_as_float(load_u32_any(payload + kHeaderBytes + 4 * i));
  const std::uint32_t idx = kidx[i];
  y[idx] = acc ? y[idx] + v : v;
}

bool use_bitmap(std::uint64_t d, std::uint64_t k) {
  return d + 32u * k < k * (32u + static_cast<std::uint64_t>(index_bits(d)));
}

/// Marks Floyd's subset and writes its indices (ascending) to kidx and, when x is given, the values to kval.
Status randk_subset(std::size_t d, std::size_t k, const RngKey& key, const float* x, Scratch& sc, std::uint32_t* kidx,
                    std::uint32_t* kval, cudaStream_t s) {
  const std::size_t words = (d + 31) / 32;
  std::uint32_t* t = sc.take<std::uint32_t>(k);
  std::uint32_t* r = sc.take<std::uint32_t>(k);
  std::uint32_t* ts = sc.take<std::uint32_t>(k);
  std::uint32_t* rs = sc.take<std::uint32_t>(k);
  std::uint32_t* bm = sc.take<std::uint32_t>(words);
  std::uint32_t* counts = sc.take<std::uint32_t>(words);
  std::uint32_t* offsets = sc.take<std::uint32_t>(words);
  randk_draw_kernel<<<grid_for(k, kThreads), kThreads, 0, s>>>(key, d, k, t, r);
  GZ_CUDA_LAUNCH_CHECK();
  std::size_t sort_bytes = 0, scan_bytes = 0;
  const int end_bit = index_bits(d) > 0 ? index_bits(d) : 1;
  GZ_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, t, ts, r, rs, static_cast<int>(k), 0, end_bit, s));
  GZ_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, counts, offsets, static_cast<int>(words), s));
  Scratch tmp;
  Exec on_s;
  on_s.stream = s;
  GZ_RETURN_IF_ERROR(tmp.init(sort_bytes > scan_bytes ? sort_bytes : scan_bytes, on_s));
  GZ_CUDA_CHECK(
      cub::DeviceRadixSort::SortPairs(tmp.data(), sort_bytes, t, ts, r, rs, static_cast<int>(k), 0, end_bit, s));
  GZ_CUDA_CHECK(cudaMemsetAsync(bm, 0, words * 4, s));
  randk_mark_kernel<<<grid_for(k, kThreads), kThreads, 0, s>>>(d, k, t, ts, rs, bm);
  GZ_CUDA_LAUNCH_CHECK();
  popc_kernel<<<grid_for(words, kThreads), kThreads, 0, s>>>(bm, words, counts);
  GZ_CUDA_LAUNCH_CHECK();
  GZ_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(tmp.data(), scan_bytes, counts, offsets, static_cast<int>(words), s));
  extract_kernel<<<grid_for(words, kThreads), kThreads, 0, s>>>(bm, words, offsets, x, kidx, kval);
  GZ_CUDA_LAUNCH_CHECK();
  return Status::Ok();
}

}  // namespace

std::size_t topk_workspace(std::size_t d, std::size_t k) {
  return 8 * Scratch::round(4 * d) + 2 * Scratch::round(4 * k) + (1u << 20);
}
std::size_t randk_workspace(std::size_t d, std::size_t k) {
  return 6 * Scratch::round(4 * k) + 3 * Scratch::round(4 * ((d + 31) / 32)) + (1u << 20);
}

namespace {

std::size_t topk_select_bytes(std::size_t d, std::size_t k) {
  const std::size_t nseg = (d + kTile - 1) / kTile;
  return 4 * Scratch::round(4 * d) + 2 * Scratch::round(4 * k) + Scratch::round(sizeof(TopkState)) +
         Scratch::round(2048 * 4) + Scratch::round(8 * kFilterBlocks) + 2 * Scratch::round(4 * nseg);
}

/// Steps 1-4 of the Top-K encode (topk_encode): the k kept (index, value bits) in ascending index order, in
/// scratch carved from `sc` (initialised with at least topk_select_bytes(d, k)).
Status topk_select(std::size_t k, Span<const float> x, Scratch& sc, std::uint32_t** kidx_out, std::uint32_t** kval_out,
                   cudaStream_t s) {
  const std::size_t d = x.size();
  const std::size_t nseg = (d + kTile - 1) / kTile;
  std::uint32_t* cidx = sc.take<std::uint32_t>(d);
  std::uint32_t* ckey = sc.take<std::uint32_t>(d);
  std::uint32_t* sidx = sc.take<std::uint32_t>(d);
  std::uint32_t* skey = sc.take<std::uint32_t>(d);
  std::uint32_t* kidx = sc.take<std::uint32_t>(k);
  std::uint32_t* kval = sc.take<std::uint32_t>(k);
  TopkState* st = sc.take<TopkState>(1);
  std::uint32_t* hist = sc.take<std::uint32_t>(2048);
  unsigned long long* counts = sc.take<unsigned long long>(kFilterBlocks);
  std::uint32_t* seg_count = sc.take<std::uint32_t>(nseg);
  std::uint32_t* seg_off = sc.take<std::uint32_t>(nseg);

  // 1. threshold from the sample (0 when the sample cannot help); zeroes the last-block tickets.
  std::size_t j = kSample;
  if (d > 2 * static_cast<std::size_t>(kSample)) {
    const double q = static_cast<double>(k) * kSample / static_cast<double>(d);
    j = static_cast<std::size_t>(q + 4.0 * std::sqrt(q) + 16.0);
  }
  sample_kernel<<<1, 256, 0, s>>>(x.data(), d, j, j < static_cast<std::size_t>(kSample), st);
  GZ_CUDA_LAUNCH_CHECK();
  // 2. candidates |x| >= t per tile, in index order; the last block scans the tile counts and sets up the select.
  select_kernel<<<static_cast<unsigned>(nseg), kThreads, 0, s>>>(x.data(), d, aligned(x.data(), 16), st, sidx, skey,
                                                                 seg_count, seg_off, k, hist);
  GZ_CUDA_LAUNCH_CHECK();
  // 3. dense candidates (or every index in the fallback) + radix round 1; rounds 2 and 3.
  const unsigned persistent = 132 * 8;
  compact_kernel<<<persistent, kThreads, 0, s>>>(x.data(), d, st, sidx, skey, seg_count, seg_off, nseg, cidx, ckey,
                                                 hist);
  GZ_CUDA_LAUNCH_CHECK();
  radix_hist_kernel<<<persistent, kThreads, 0, s>>>(ckey, st, 10, 0x3ffu, hist, &st->done[2]);
  GZ_CUDA_LAUNCH_CHECK();
  radix_hist_kernel<<<persistent, kThreads, 0, s>>>(ckey, st, 0, 0x3ffu, hist, &st->done[3]);
  GZ_CUDA_LAUNCH_CHECK();
  // 4. order-preserving filter down to exactly k.
  filter_count_kernel<<<kFilterBlocks, kThreads, 0, s>>>(ckey, st, counts);
  GZ_CUDA_LAUNCH_CHECK();
  filter_write_kernel<<<kFilterBlocks, kThreads, 0, s>>>(cidx, ckey, st, counts, kidx, kval);
  GZ_CUDA_LAUNCH_CHECK();
  *kidx_out = kidx;
  *kval_out = kval;
  return Status::Ok();
}

// ---- compose(topk|randk, quantizer)
// ----------------------------------------------------------------------------------------
/// Word w of compose's index section: k indices in ib bits each (LSB first), or the d-bit membership bitmap.
__global__ void compose_section_kernel(const std::uint32_t* kidx, std::size_t k, std::size_t d, int ib, bool bitmap,
                                       std::uint8_t* out, std::size_t bytes) {
  const std::size_t w = tid();
  const std::size_t words = (bytes + 3) / 4;
  if (w >= words) return;
  std::uint32_t word = 0;
  const long long lo = 32ll * static_cast<long long>(w);
  if (!bitmap) {
    if (ib > 0) {
      const long long e0 = lo / ib;
      long long e1 = (lo + 31) / ib;
      if (e1 > static_cast<long long>(k) - 1) e1 = static_cast<long long>(k) - 1;
      for (long long e = e0; e <= e1; ++e) {
        const std::uint64_t rec = kidx[e];
        const long long off = e * ib - lo;
        word |= off >= 0 ? static_cast<std::uint32_t>(rec << off) : static_cast<std::uint32_t>(rec >> (-off));
      }
    }
  } else {
    const long long dd = static_cast<long long>(d);
    std::size_t a = 0, b = k;
    while (a < b) {
      const std::size_t m = (a + b) / 2;
      if (static_cast<long long>(kidx[m]) < lo)
        a = m + 1;
      else
        b = m;
    }
    const long long hi = lo + 32 < dd ? lo + 32 : dd;
    for (std::size_t e = a; e < k && static_cast<long long>(kidx[e]) < hi; ++e) word |= 1u << (kidx[e] - lo);
  }
  std::uint8_t* p = out + 4 * w;
  const std::size_t left = bytes - 4 * w;
  if (left >= 4)
    store_u32_any(p, word);
  else
    store_bytes(p, word, static_cast<int>(left));
}
/// Index list of compose: kidx[i] = index i; checks < d, ascending, zero padding after the section.
__global__ void compose_list_kernel(const std::uint8_t* payload, HeaderWords e, std::size_t k, std::size_t d, int ib,
                                    std::size_t section_bytes, std::uint32_t* kidx, std::uint32_t* status) {
  if (!block_header_ok(payload, e, status)) return;
  const std::size_t i = tid();
  if (i >= k) return;
  const std::uint8_t* body = payload + kHeaderBytes;
  const std::uint64_t idx = read_bits(body, section_bytes, static_cast<std::uint64_t>(i) * ib, ib);
  bool bad = idx >= d;
  if (i > 0) bad |= read_bits(body, section_bytes, static_cast<std::uint64_t>(i - 1) * ib, ib) >= idx;
  if (i == 0) {
    const std::uint64_t nbits = static_cast<std::uint64_t>(k) * ib;
    if (nbits % 8 != 0 && (body[section_bytes - 1] >> (nbits % 8)) != 0) bad = true;
  }
  if (bad) atomicOr(status, kDeviceBadBody);
  kidx[i] = static_cast<std::uint32_t>(idx < d ? idx : 0);
}
/// Bitmap form: the indices of the set bits (offsets from the scan); zero padding after the d bits.
__global__ void compose_bitmap_kernel(const std::uint8_t* payload, HeaderWords e, std::size_t d,
                                      const std::uint32_t* offsets, const unsigned long long* total,
                                      unsigned long long k, std::uint32_t* kidx, std::uint32_t* status) {
  if (!block_header_ok(payload, e, status)) return;
  const std::size_t w = tid(), words = (d + 31) / 32;
  if (w >= words) return;
  const std::uint8_t* body = payload + kHeaderBytes;
  if (w == 0 && d % 8 != 0 && (body[(d + 7) / 8 - 1] >> (d % 8)) != 0) atomicOr(status, kDeviceBadBody);
  if (*total != k) return;
  const int nb = d - 32 * w < 32 ? static_cast<int>(d - 32 * w) : 32;
  std::uint32_t bits = static_cast<std::uint32_t>(read_bits(body, (d + 7) / 8, 32 * w, nb));
  std::uint64_t pos = offsets[w];
  while (bits) {
    const int b = __ffs(bits) - 1;
    bits &= bits - 1;
    kidx[pos++] = static_cast<std::uint32_t>(32 * w + b);
  }
}
/// y = 0 (overwrite) when the whole payload validated (status word still 0) and the outer header matches.
__global__ void compose_zero_kernel(const std::uint8_t* payload, HeaderWords e, float* y, std::size_t n,
                                    const std::uint32_t* status) {
  if (!block_header_ok(payload, e, const_cast<std::uint32_t*>(status)) || *status != 0) return;
  for (std::size_t i = tid(); i < n; i += nthreads()) y[i] = 0.0f;
}
/// v[i] = float(kval[i]) * f (compose's Rand-K values times d/k; --fmad=false, one rounding as on the CPU).
__global__ void scale_values_kernel(const std::uint32_t* kval, std::size_t k, float f, float* v) {
  for (std::size_t i = tid(); i < k; i += nthreads()) v[i] = __uint_as_float(kval[i]) * f;
}
__global__ void compose_scatter_kernel(const std::uint8_t* payload, HeaderWords e, const std::uint32_t* kidx,
                                       const float* v, std::size_t k, float scale, bool acc, float* y,
                                       std::uint32_t* status) {
  if (!block_header_ok(payload, e, status) || *status != 0) return;
  const std::size_t i = tid();
  if (i >= k) return;
  const std::uint32_t idx = kidx[i];
  const float val = scale * v[i];
  y[idx] = acc ? y[idx] + val : val;
}

}  // namespace

/// Top-K encode: sample, candidate pass (select_kernel), compaction + radix round 1, rounds 2-3, filter (topk_select),
/// pack: 8 launches.
Status topk_encode(std::size_t k, Span<const float> x, MutableBytes body, std::size_t* body_bytes, const Exec& ex) {
  const std::size_t d = x.size();
  const cudaStream_t s = stream_of(ex);
  const bool bitmap = use_bitmap(d, k);
  const int ib = index_bits(d);
  const std::size_t bytes = bits_to_bytes(bitmap ? d + 32ull * k : k * (32ull + ib));
  Scratch sc;
  GZ_RETURN_IF_ERROR(sc.init(topk_select_bytes(d, k), ex));
  std::uint32_t* kidx = nullptr;
  std::uint32_t* kval = nullptr;
  GZ_RETURN_IF_ERROR(topk_select(k, x, sc, &kidx, &kval, s));
  // 5. pack.
  pack_kernel<<<grid_for((bytes + 3) / 4, kThreads), kThreads, 0, s>>>(kidx, kval, k, d, ib, bitmap, body.data(),
                                                                       bytes);
  GZ_CUDA_LAUNCH_CHECK();
  *body_bytes = bytes;
  return Status::Ok();
}

Status topk_decode(std::size_t k, const PayloadHeader& expect, ConstBytes body, Span<float> y, DecodeMode mode,
                   float scale, const Exec& ex) {
  GZ_RETURN_IF_ERROR(check_body_capacity(expect, body, "topk.decode"));
  const std::size_t d = y.size();
  const cudaStream_t s = stream_of(ex);
  const std::uint8_t* payload = body.data() - kHeaderBytes;
  const HeaderWords hw = header_words(expect);
  const bool acc = mode == DecodeMode::kAccumulate;
  StatusWord st;
  GZ_RETURN_IF_ERROR(st.init(ex));
  if ((expect.flags & 1u) == 0) {
    if (!acc) {
      zero_kernel<<<132 * 8, kThreads, 0, s>>>(payload, hw, nullptr, 0, y.data(), d, st.get());
      GZ_CUDA_LAUNCH_CHECK();
    }
    index_scatter_kernel<<<grid_for(k, kThreads), kThreads, 0, s>>>(payload, hw, k, d, index_bits(d), scale, acc,
                                                                    y.data(), st.get());
    return st.finish("topk.decode");
  }
  const std::size_t words = (d + 31) / 32;
  std::size_t scan_bytes = 0;
  GZ_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, static_cast<std::uint32_t*>(nullptr),
                                              static_cast<std::uint32_t*>(nullptr), static_cast<int>(words), s));
  Scratch sc;
  GZ_RETURN_IF_ERROR(sc.init(2 * Scratch::round(4 * words) + Scratch::round(8) + Scratch::round(scan_bytes), ex));
  std::uint32_t* counts = sc.take<std::uint32_t>(words);
  std::uint32_t* offsets = sc.take<std::uint32_t>(words);
  unsigned long long* total = sc.take<unsigned long long>(1);
  std::uint8_t* tmp = sc.take<std::uint8_t>(scan_bytes);
  bitmap_count_kernel<<<grid_for(words, kThreads), kThreads, 0, s>>>(body.data(), d, counts);
  GZ_CUDA_LAUNCH_CHECK();
  GZ_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(tmp, scan_bytes, counts, offsets, static_cast<int>(words), s));
  total_kernel<<<1, 1, 0, s>>>(counts, offsets, words, total, k, st.get());
  GZ_CUDA_LAUNCH_CHECK();
  if (!acc) {
    zero_kernel<<<132 * 8, kThreads, 0, s>>>(payload, hw, total, k, y.data(), d, st.get());
    GZ_CUDA_LAUNCH_CHECK();
  }
  bitmap_scatter_kernel<<<grid_for(words, kThreads), kThreads, 0, s>>>(payload, hw, d, offsets, total, k, scale, acc,
                                                                       y.data(), st.get());
  return st.finish("topk.decode");
}

Status randk_encode(std::size_t k, bool shared, const RngKey& key, Span<const float> x, MutableBytes body,
                    std::size_t* body_bytes, const Exec& ex) {
  const std::size_t d = x.size();
  const cudaStream_t s = stream_of(ex);
  Scratch sc;
  GZ_RETURN_IF_ERROR(sc.init(randk_workspace(d, k), ex));
  std::uint32_t* kidx = sc.take<std::uint32_t>(k);
  std::uint32_t* kval = sc.take<std::uint32_t>(k);
  GZ_RETURN_IF_ERROR(randk_subset(d, k, key, x.data(), sc, kidx, kval, s));
  const int ib = shared ? -1 : index_bits(d);
  const std::size_t bytes = shared ? 4 * k : bits_to_bytes(k * (32ull + index_bits(d)));
  pack_kernel<<<grid_for((bytes + 3) / 4, kThreads), kThreads, 0, s>>>(kidx, kval, k, d, ib, false, body.data(), bytes);
  GZ_CUDA_LAUNCH_CHECK();
  *body_bytes = bytes;
  return Status::Ok();
}

Status randk_decode(std::size_t k, bool shared, float factor, const RngKey& key, const PayloadHeader& expect,
                    ConstBytes body, Span<float> y, DecodeMode mode, const Exec& ex) {
  GZ_RETURN_IF_ERROR(check_body_capacity(expect, body, "randk.decode"));
  const std::size_t d = y.size();
  const cudaStream_t s = stream_of(ex);
  const std::uint8_t* payload = body.data() - kHeaderBytes;
  const HeaderWords hw = header_words(expect);
  const bool acc = mode == DecodeMode::kAccumulate;
  StatusWord st;
  GZ_RETURN_IF_ERROR(st.init(ex));
  if (!acc) {
    zero_kernel<<<132 * 8, kThreads, 0, s>>>(payload, hw, nullptr, 0, y.data(), d, st.get());
    GZ_CUDA_LAUNCH_CHECK();
  }
  if (!shared) {
    index_scatter_kernel<<<grid_for(k, kThreads), kThreads, 0, s>>>(payload, hw, k, d, index_bits(d), factor, acc,
                                                                    y.data(), st.get());
    return st.finish("randk.decode");
  }
  Scratch sc;
  GZ_RETURN_IF_ERROR(sc.init(randk_workspace(d, k), ex));
  std::uint32_t* kidx = sc.take<std::uint32_t>(k);
  GZ_RETURN_IF_ERROR(randk_subset(d, k, key, nullptr, sc, kidx, nullptr, s));
  shared_scatter_kernel<<<grid_for(k, kThreads), kThreads, 0, s>>>(payload, hw, kidx, k, factor, acc, y.data(),
                                                                   st.get());
  return st.finish("randk.decode");
}

}  // namespace gradzip::detail::cuda

namespace gradzip::detail::cuda {

Status compose_encode(std::size_t k, const ComposeSelect& sel, bool bitmap, std::size_t section_bytes,
                      const Compressor& q, const Exec& qex, Span<const float> x, MutableBytes body,
                      std::size_t* body_bytes, const Exec& ex) {
  const std::size_t d = x.size();
  const cudaStream_t s = stream_of(ex);
  if (body.size() < section_bytes)
    return Status::Internal("compose.encode (CUDA): body smaller than the index section");
  Scratch sc;
  GZ_RETURN_IF_ERROR(
      sc.init((sel.randk ? randk_workspace(d, k) : topk_select_bytes(d, k)) + Scratch::round(4 * k), ex));
  float* v = sc.take<float>(k);
  std::uint32_t* kidx = nullptr;
  std::uint32_t* kval = nullptr;
  if (sel.randk) {
    // randk_encode's draw: the same subset for the same key, ascending, with the raw value bits.
    kidx = sc.take<std::uint32_t>(k);
    kval = sc.take<std::uint32_t>(k);
    GZ_RETURN_IF_ERROR(randk_subset(d, k, sel.key, x.data(), sc, kidx, kval, s));
  } else {
    GZ_RETURN_IF_ERROR(topk_select(k, x, sc, &kidx, &kval, s));
  }
  if (section_bytes > 0) {
    compose_section_kernel<<<grid_for((section_bytes + 3) / 4, kThreads), kThreads, 0, s>>>(
        kidx, k, d, index_bits(d), bitmap, body.data(), section_bytes);
    GZ_CUDA_LAUNCH_CHECK();
  }
  if (sel.value_scale == 1.0f) {
    // v = x_U * 1.0f: the kept values unscaled (x * 1.0f == x bit for bit), so the kept bits are copied.
    GZ_CUDA_CHECK(cudaMemcpyAsync(v, kval, 4 * k, cudaMemcpyDeviceToDevice, s));
  } else {
    // v = x_U * (d/k), one float multiplication per element as in compose.cc's encode_cpu.
    scale_values_kernel<<<grid_for(k, kThreads), kThreads, 0, s>>>(kval, k, sel.value_scale, v);
    GZ_CUDA_LAUNCH_CHECK();
  }
  std::size_t nested = 0;
  GZ_RETURN_IF_ERROR(q.encode(Span<const float>(v, k),
                              MutableBytes(body.data() + section_bytes, body.size() - section_bytes), &nested, qex));
  *body_bytes = section_bytes + nested;
  return Status::Ok();
}

Status compose_decode(std::size_t k, bool bitmap, std::size_t section_bytes, const Compressor& q,
                      const PayloadHeader& expect, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                      const Exec& ex) {
  GZ_RETURN_IF_ERROR(check_body_capacity(expect, body, "compose.decode"));
  const std::size_t d = y.size();
  const cudaStream_t s = stream_of(ex);
  const std::uint8_t* payload = body.data() - kHeaderBytes;
  const HeaderWords hw = header_words(expect);
  StatusWord st;
  GZ_RETURN_IF_ERROR(st.init(ex));
  const std::size_t words = (d + 31) / 32;
  std::size_t scan_bytes = 0;
  if (bitmap)
    GZ_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, static_cast<std::uint32_t*>(nullptr),
                                                static_cast<std::uint32_t*>(nullptr), static_cast<int>(words), s));
  Scratch sc;
  GZ_RETURN_IF_ERROR(sc.init(
      Scratch::round(4 * k) * 2 + 2 * Scratch::round(4 * words) + Scratch::round(8) + Scratch::round(scan_bytes), ex));
  std::uint32_t* kidx = sc.take<std::uint32_t>(k);
  float* v = sc.take<float>(k);
  // 1. the index section.
  if (!bitmap) {
    compose_list_kernel<<<grid_for(k, kThreads), kThreads, 0, s>>>(payload, hw, k, d, index_bits(d), section_bytes,
                                                                   kidx, st.get());
    GZ_CUDA_LAUNCH_CHECK();
  } else {
    std::uint32_t* counts = sc.take<std::uint32_t>(words);
    std::uint32_t* offsets = sc.take<std::uint32_t>(words);
    unsigned long long* total = sc.take<unsigned long long>(1);
    std::uint8_t* tmp = sc.take<std::uint8_t>(scan_bytes);
    bitmap_count_kernel<<<grid_for(words, kThreads), kThreads, 0, s>>>(body.data(), d, counts);
    GZ_CUDA_LAUNCH_CHECK();
    GZ_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(tmp, scan_bytes, counts, offsets, static_cast<int>(words), s));
    total_kernel<<<1, 1, 0, s>>>(counts, offsets, words, total, k, st.get());
    GZ_CUDA_LAUNCH_CHECK();
    compose_bitmap_kernel<<<grid_for(words, kThreads), kThreads, 0, s>>>(payload, hw, d, offsets, total, k, kidx,
                                                                         st.get());
    GZ_CUDA_LAUNCH_CHECK();
  }
  // 2. the nested quantizer payload (exactly the rest of the expected body) into v; its kernels validate its own
  //    header and report to the same status word (no synchronisation). q's public decode expects q's own wrapper
  //    bits only (none for a plain quantizer), whatever wrapper bits the outer header carries.
  {
    Exec qex = ex;
    qex.workspace = MutableBytes();
    qex.device_status = st.get();
    GZ_RETURN_IF_ERROR(q.decode(ConstBytes(body.data() + section_bytes, expect.body_bytes - section_bytes),
                                Span<float>(v, k), DecodeMode::kOverwrite, qex));
  }
  // 3. y, only when everything above validated.
  const bool acc = mode == DecodeMode::kAccumulate;
  if (!acc) {
    compose_zero_kernel<<<132 * 8, kThreads, 0, s>>>(payload, hw, y.data(), d, st.get());
    GZ_CUDA_LAUNCH_CHECK();
  }
  compose_scatter_kernel<<<grid_for(k, kThreads), kThreads, 0, s>>>(payload, hw, kidx, v, k, scale, acc, y.data(),
                                                                    st.get());
  return st.finish("compose.decode");
}

}  // namespace gradzip::detail::cuda
