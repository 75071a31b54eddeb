// Internal: Elias-omega codes and QSGD's chunked Elias wire, as __host__ __device__ inline functions shared by the
// CPU codec (qsgd.cc, bitcodes.cc) and the CUDA kernels (cuda/qsgd_elias.cu), so the CPU tests exercise the exact
// bit logic the kernels run. Header-only, no allocation, no global state; thread-safe.
//
// Elias-omega (Elias 1975) of n >= 1, written MSB-first group by group into gradzip's LSB-first bit stream: the
// groups bin(n), bin(len(bin(n)) - 1), ... emitted from the innermost out, then one 0 bit. 1 -> "0", 2 -> "10 0",
// 4 -> "10 100 0", 16 -> "10 100 10000 0". L(1) = 1, L(n) = floor(log2 n) + 1 + L(floor(log2 n)).
// Here n < 2^32, so a code has at most L(2^32 - 1) = 43 bits and fits one 64-bit word (bitcodes.cc handles the
// general 64-bit API on top of this).
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define GZ_OMEGA_HD __host__ __device__ __forceinline__
#else
#define GZ_OMEGA_HD inline
#endif

namespace gradzip::detail::omega {

/// QSGD coding=elias chunk length B (elements per independently coded chunk). Why 16384: the chunk table costs 32
/// bits per chunk, 32 / 16384 ~ 0.002 bits per element, small next to the stream itself (QSGD-l2 with s levels keeps
/// about s sqrt(d) nonzeros at ~10-20 bits each); and a 25M-float gradient still has 1526 chunks, so one warp per
/// chunk gives the H100's 132 SMs ~11 warps each (a chunk of 4096 would quadruple the table for no GPU need, a chunk
/// of 65536 would leave SMs with 3 warps). A chunk's worst-case stream (s = 65535: 25 bits per element) is 51 KB.
constexpr std::uint32_t kChunk = 16384;

GZ_OMEGA_HD int bit_length(std::uint64_t v) {
#if defined(__CUDA_ARCH__)
  return 64 - __clzll(static_cast<long long>(v));
#else
  return v == 0 ? 0 : 64 - __builtin_clzll(v);
#endif
}

/// The low `len` (<= 32) bits of v in reversed order (bit len-1 first).
GZ_OMEGA_HD std::uint32_t reverse_low(std::uint32_t v, int len) {
#if defined(__CUDA_ARCH__)
  return len == 0 ? 0u : __brev(v) >> (32 - len);
#else
  v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
  v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
  v = ((v >> 4) & 0x0F0F0F0Fu) | ((v & 0x0F0F0F0Fu) << 4);
  v = ((v >> 8) & 0x00FF00FFu) | ((v & 0x00FF00FFu) << 8);
  v = (v >> 16) | (v << 16);
  return len == 0 ? 0u : v >> (32 - len);
#endif
}

/// Length of the code of n (0 for n = 0, which has no code).
GZ_OMEGA_HD int bits(std::uint64_t n) {
  if (n == 0) return 0;
  int b = 1;
  while (n > 1) {
    const int len = bit_length(n);
    b += len;
    n = static_cast<std::uint64_t>(len - 1);
  }
  return b;
}

/// The code of 1 <= n < 2^32 as stream bits (bit 0 is written first); returns its length (0 for n out of range).
/// Built from the last group back: the terminating 0, then each group prepended (outermost group first).
GZ_OMEGA_HD int code(std::uint64_t n, std::uint64_t* out) {
  if (n == 0 || (n >> 32) != 0) return 0;
  std::uint64_t acc = 0;  // the terminating 0 bit
  int len = 1;
  while (n > 1) {
    const int g = bit_length(n);
    acc = (acc << g) | reverse_low(static_cast<std::uint32_t>(n), g);
    len += g;
    n = static_cast<std::uint64_t>(g - 1);
  }
  *out = acc;
  return len;
}

/// LSB-first writer of up to 56 bits per put into a buffer the caller sized (no bounds checks: the encoders write
/// at most the worst case they sized for). Whole bytes only are stored until finish() pads the last one with zeros.
struct Writer {
  std::uint8_t* out;
  std::size_t pos = 0;  // bytes stored
  std::uint64_t acc = 0;
  int fill = 0;  // bits in acc, < 8 between puts
  GZ_OMEGA_HD explicit Writer(std::uint8_t* o) : out(o) {}
  GZ_OMEGA_HD void put(std::uint64_t v, int n) {  // n <= 56, v < 2^n
    acc |= v << fill;
    fill += n;
    while (fill >= 8) {
      out[pos++] = static_cast<std::uint8_t>(acc);
      acc >>= 8;
      fill -= 8;
    }
  }
  GZ_OMEGA_HD std::size_t finish() {
    if (fill > 0) {
      out[pos++] = static_cast<std::uint8_t>(acc);
      acc = 0;
      fill = 0;
    }
    return pos;
  }
};

/// LSB-first reader of a `size`-byte stream; reads past the end yield zeros and set `over` (never out of bounds).
struct Reader {
  const std::uint8_t* in;
  std::size_t size;
  std::uint64_t pos = 0;  // bits consumed
  bool over = false;
  GZ_OMEGA_HD Reader(const std::uint8_t* p, std::size_t n) : in(p), size(n) {}
  /// The next n <= 32 bits.
  GZ_OMEGA_HD std::uint32_t get(int n) {
    if (pos + static_cast<std::uint64_t>(n) > 8 * static_cast<std::uint64_t>(size)) over = true;
    std::uint64_t byte = pos >> 3;
    const int shift = static_cast<int>(pos & 7u);
    std::uint64_t w = 0;
    const int nbytes = (shift + n + 7) >> 3;  // <= 5
    for (int b = 0; b < nbytes; ++b, ++byte)
      if (byte < size) w |= static_cast<std::uint64_t>(in[byte]) << (8 * b);
    pos += static_cast<std::uint64_t>(n);
    return static_cast<std::uint32_t>((w >> shift) & ((std::uint64_t{1} << n) - 1));
  }
};

/// Reads one code of a value < 2^32 (a longer group is malformed here); false on a malformed or exhausted stream.
GZ_OMEGA_HD bool get(Reader& r, std::uint32_t* out) {
  std::uint64_t n = 1;
  while (r.get(1) != 0) {
    if (n > 31 || r.over) return false;  // the next group would have n + 1 > 32 bits
    const int len = static_cast<int>(n);
    n = (std::uint64_t{1} << len) | reverse_low(r.get(len), len);
    if ((n >> 32) != 0) return false;
  }
  if (r.over) return false;
  *out = static_cast<std::uint32_t>(n);
  return true;
}

// ---- QSGD coding=elias, chunked (qsgd.cc documents the format) ------------------------------------------------------

/// Chunks of d elements: ceil(d / B).
GZ_OMEGA_HD std::uint64_t chunks(std::uint64_t d) {
  return (d + kChunk - 1) / kChunk;
}
/// Worst-case stream bits of a chunk of n elements at `levels` (every element nonzero at level s): L(n + 1) +
/// n (L(s) + 2). See qsgd.cc for the proof.
GZ_OMEGA_HD std::uint64_t chunk_max_bits(std::uint64_t n, std::uint32_t levels) {
  return static_cast<std::uint64_t>(bits(n + 1)) + n * static_cast<std::uint64_t>(bits(levels) + 2);
}

/// One nonzero's record as stream bits: omega(gap) omega(level) sign, for code = sign | level << 1 (level >= 1,
/// gap <= B, level <= 65535: at most 22 + 23 + 1 = 46 bits). Returns its length.
GZ_OMEGA_HD int record(std::uint32_t gap, std::uint32_t k, std::uint64_t* rec) {
  std::uint64_t cg = 0, cl = 0;
  const int lg = code(gap, &cg);
  const int ll = code(k >> 1, &cl);
  *rec = cg | (cl << lg) | (static_cast<std::uint64_t>(k & 1u) << (lg + ll));
  return lg + ll + 1;
}

/// Writes chunk `codes[0, n)` (code = sign | level << 1, 0 for level 0) with `nnz` nonzeros: omega(nnz + 1), then per
/// nonzero omega(gap) omega(level) sign, gaps from previous = -1. Returns the stream bytes (zero padded).
GZ_OMEGA_HD std::size_t write_chunk(const std::uint32_t* codes, std::uint32_t n, std::uint32_t nnz, std::uint8_t* out) {
  Writer w(out);
  std::uint64_t c = 0;
  int len = code(static_cast<std::uint64_t>(nnz) + 1, &c);
  w.put(c, len);
  std::uint32_t next = 0;  // previous index + 1
  for (std::uint32_t i = 0; i < n; ++i) {
    const std::uint32_t k = codes[i];
    if (k == 0) continue;
    std::uint64_t rec = 0;
    const int rl = record(i + 1 - next, k, &rec);
    w.put(rec, rl);
    next = i + 1;
  }
  return w.finish();
}

/// Outcome of parsing one chunk stream.
enum class ChunkError : int {
  kOk = 0,
  kBadCount,   // malformed count code or nnz > chunk length
  kBadRecord,  // malformed or truncated gap/level code, or the stream ends inside a record
  kBadIndex,   // index outside the chunk
  kBadLevel,   // level 0 or above s
  kLength,     // the records end in another byte than the stream's last
  kPadding,    // nonzero padding bits
};

/// Parses the chunk stream `in[0, size)` of a chunk of n elements, validating everything. With `emit` non-null,
/// calls emit(index_in_chunk, level, sign) for each nonzero (only meaningful when the whole chunk validates; callers
/// that must not write on error validate first). `*bad_at` gets the nonzero ordinal of a record error.
template <class Emit>
GZ_OMEGA_HD ChunkError parse_chunk(const std::uint8_t* in, std::size_t size, std::uint32_t n, std::uint32_t levels,
                                   Emit&& emit, std::uint32_t* bad_at) {
  Reader r(in, size);
  std::uint32_t nnz1 = 0;
  if (!get(r, &nnz1) || nnz1 - 1 > n) return ChunkError::kBadCount;
  const std::uint32_t nnz = nnz1 - 1;
  std::uint32_t next = 0;
  for (std::uint32_t k = 0; k < nnz; ++k) {
    std::uint32_t gap = 0, level = 0;
    *bad_at = k;
    if (!get(r, &gap) || !get(r, &level)) return ChunkError::kBadRecord;
    const std::uint32_t sign = r.get(1);
    if (r.over) return ChunkError::kBadRecord;
    if (gap > n - next) return ChunkError::kBadIndex;  // index next + gap - 1 must be < n (gap >= 1)
    if (level == 0 || level > levels) return ChunkError::kBadLevel;
    const std::uint32_t idx = next + gap - 1;
    emit(idx, level, sign);
    next = idx + 1;
  }
  const std::uint64_t used = r.pos;
  if ((used + 7) / 8 != size) return ChunkError::kLength;
  if ((used & 7u) != 0 && r.get(static_cast<int>(8 - (used & 7u))) != 0) return ChunkError::kPadding;
  return ChunkError::kOk;
}

}  // namespace gradzip::detail::omega
