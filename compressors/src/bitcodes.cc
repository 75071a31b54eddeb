// Elias-omega codes, used by QSGD's sparse coding (qsgd.cc). See bitcodes.h. Values below 2^32 go through the
// __host__ __device__ code shared with the CUDA kernels (elias_omega.h); larger ones through the general loop here.
#include "gradzip/compressors/bitcodes.h"

#include "elias_omega.h"

namespace gradzip {
namespace detail {

// ---------------------------------------------------------------------------------------------------------------
// Elias-omega codes (Elias 1975) of integers n >= 1, written MSB-first into the LSB-first bit stream: the code is
// the groups bin(n), bin(len(bin(n)) - 1), ... emitted from the innermost out, then a single 0 bit. 1 -> "0",
// 2 -> "10 0", 4 -> "10 100 0", 16 -> "10 100 10000 0". Length L(1) = 1, L(n) = floor(log2 n) + 1 + L(floor(log2 n)).
// ---------------------------------------------------------------------------------------------------------------
namespace {

inline int bit_length(std::uint64_t v) {
  int b = 0;
  while (v) {
    ++b;
    v >>= 1;
  }
  return b;
}

inline std::uint32_t reverse_bits32(std::uint32_t v) {
  v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
  v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
  v = ((v >> 4) & 0x0F0F0F0Fu) | ((v & 0x0F0F0F0Fu) << 4);
  v = ((v >> 8) & 0x00FF00FFu) | ((v & 0x00FF00FFu) << 8);
  return (v >> 16) | (v << 16);
}

/// Writes the low `len` bits of v (len <= 64), most significant first.
inline void put_msb_first(BitWriter& w, std::uint64_t v, int len) {
  while (len > 0) {
    const int chunk = len < 32 ? len : 32;
    len -= chunk;
    const std::uint32_t part =
        static_cast<std::uint32_t>((v >> len) & ((chunk == 32) ? 0xFFFFFFFFull : ((std::uint64_t{1} << chunk) - 1)));
    w.put(reverse_bits32(part) >> (32 - chunk), chunk);
  }
}

/// Reads `len` bits (len <= 64), most significant first.
inline std::uint64_t get_msb_first(BitReader& r, int len) {
  std::uint64_t v = 0;
  while (len > 0) {
    const int chunk = len < 32 ? len : 32;
    len -= chunk;
    const std::uint32_t part = reverse_bits32(r.get(chunk)) >> (32 - chunk);
    v = (v << chunk) | part;
  }
  return v;
}

}  // namespace

int elias_omega_bits(std::uint64_t n) {
  return omega::bits(n);
}

bool elias_omega_put(BitWriter& w, std::uint64_t n) {
  if (n == 0) return false;
  std::uint64_t code = 0;
  if (const int len = omega::code(n, &code)) {  // n < 2^32: at most 43 bits
    w.put(static_cast<std::uint32_t>(code), len < 32 ? len : 32);
    if (len > 32) w.put(static_cast<std::uint32_t>(code >> 32), len - 32);
    return true;
  }
  std::uint64_t groups[8];
  int lens[8];
  int g = 0;
  while (n > 1) {  // at most 5 groups for n < 2^64 (64 -> 6 -> 2 -> 1)
    const int len = bit_length(n);
    groups[g] = n;
    lens[g] = len;
    ++g;
    n = static_cast<std::uint64_t>(len - 1);
  }
  for (int i = g - 1; i >= 0; --i) put_msb_first(w, groups[i], lens[i]);
  w.put(0, 1);
  return true;
}

bool elias_omega_get(BitReader& r, std::uint64_t* out) {
  std::uint64_t n = 1;
  while (r.get_bit() != 0) {
    // The group that starts with this 1 bit has n + 1 bits; cap it so the value fits in 63 bits (each step grows
    // n to at least 2^n, so the loop runs at most 6 times).
    if (n > 62 || r.exhausted()) return false;
    const int len = static_cast<int>(n);
    n = (std::uint64_t{1} << len) | get_msb_first(r, len);
  }
  if (r.exhausted()) return false;
  *out = n;
  return true;
}

}  // namespace detail
}  // namespace gradzip
