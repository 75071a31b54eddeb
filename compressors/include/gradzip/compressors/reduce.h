// Deterministic reductions used by the codecs (norms, scales). The summation order is fixed and documented so
// that a CUDA implementation can reproduce the CPU result bit for bit:
//   elements are split into chunks of kReduceChunk consecutive elements; inside a chunk, lane j (j = 0..7)
//   accumulates elements i with i % 8 == j in double, in index order; the 8 lanes are combined as
//   ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)); the chunk sums c_0 .. c_{m-1} are combined in double by the level-wise
//   pairwise tree: at level L = 0, 1, ..., every i that is a multiple of 2^(L+1) takes c_i += c_{i + 2^L} when that
//   element exists; the result is c_0. (This equals splitting at the largest power of two below m, recursively; the
//   CPU streams it with a binary-counter stack, PairwiseChunkSum, and a CUDA kernel runs the levels in parallel. A
//   left-to-right combination would be a sequential chain of m dependent additions on the device.)
// max_abs is order-independent. Results are returned in double. Pure functions; thread-safe.
#pragma once

#include <cstdint>

#include "gradzip/compressors/core.h"

namespace gradzip {

inline constexpr std::size_t kReduceChunk = 4096;

double sum_abs(Span<const float> x);  // ||x||_1
double sum_sq(Span<const float> x);   // ||x||_2^2
/// One chunk's term of sum_abs (len <= kReduceChunk, p at a chunk boundary): pushing the chunk terms in order into a
/// PairwiseChunkSum gives exactly sum_abs(x). For codecs that fuse the reduction with another pass over the same chunk.
double sum_abs_chunk(const float* p, std::size_t len);

/// Combines chunk sums, pushed in chunk order, in the documented pairwise tree order. No allocation.
class PairwiseChunkSum {
 public:
  void push(double v) {
    ++count_;
    for (std::uint64_t c = count_; (c & 1u) == 0; c >>= 1) v = stack_[--top_] + v;  // merge equal-size subtrees
    stack_[top_++] = v;
  }
  /// The tree's root: the partial subtrees combined right to left (0 when nothing was pushed).
  double result() const {
    if (top_ == 0) return 0.0;
    double acc = stack_[top_ - 1];
    for (int i = top_ - 2; i >= 0; --i) acc = stack_[i] + acc;
    return acc;
  }

 private:
  double stack_[65] = {};
  std::uint64_t count_ = 0;
  int top_ = 0;
};
float max_abs(Span<const float> x);  // ||x||_inf

}  // namespace gradzip
