#include "gradzip/compressors/reduce.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace gradzip {
namespace {

/// One chunk of the documented order: 8 double lanes (lane j takes elements i % 8 == j in index order), combined
/// as ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)).
template <class F>
double chunk_sum(const float* p, std::size_t len, F f) {
  double l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    for (int j = 0; j < 8; ++j) l[j] += f(static_cast<double>(p[i + j]));
  }
  for (int j = 0; i < len; ++i, ++j) l[j] += f(static_cast<double>(p[i]));
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

template <class F>
double chunked_sum(Span<const float> x, F f) {
  PairwiseChunkSum total;
  const std::size_t n = x.size();
  for (std::size_t c = 0; c < n; c += kReduceChunk)
    total.push(chunk_sum(x.data() + c, std::min(n - c, kReduceChunk), f));
  return total.result();
}

}  // namespace

double sum_abs(Span<const float> x) {
  return chunked_sum(x, [](double v) { return std::fabs(v); });
}
double sum_abs_chunk(const float* p, std::size_t len) {
  return chunk_sum(p, len, [](double v) { return std::fabs(v); });
}
double sum_sq(Span<const float> x) {
  return chunked_sum(x, [](double v) { return v * v; });
}
float max_abs(Span<const float> x) {
  // On the bit patterns with the sign cleared, integer order equals float order for finite values (and puts
  // Inf/NaN above every finite value), so a signed 32-bit max vectorises where std::max on floats does not.
  std::int32_t m = 0;
  const float* p = x.data();
  for (std::size_t i = 0; i < x.size(); ++i) {
    std::int32_t u;
    std::memcpy(&u, p + i, 4);
    u &= 0x7fffffff;
    m = u > m ? u : m;
  }
  float r;
  std::memcpy(&r, &m, 4);
  return r;
}

}  // namespace gradzip
