// Helpers of the CUDA tests (cuda_test.cc, cuda_lowrank_test.cc): the skip without a device, a device buffer with
// host copies in and out, and a float's bits for bitwise comparisons.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gradzip/compressors/cuda.h"

namespace gradzip::testing {

#define REQUIRE_GPU() \
  if (!::gradzip::cuda_available()) GTEST_SKIP() << "no CUDA device"

/// `count` elements of device memory (plus 64 of slack for misaligned views), freed at scope exit.
template <class T>
struct Dev {
  T* p = nullptr;
  std::size_t n = 0;
  explicit Dev(std::size_t count) : n(count) { EXPECT_EQ(cudaMalloc(&p, (count + 64) * sizeof(T)), cudaSuccess); }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  void put(const std::vector<T>& v, std::size_t off = 0) {
    ASSERT_EQ(cudaMemcpy(p + off, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  std::vector<T> get(std::size_t count, std::size_t off = 0) const {
    std::vector<T> v(count);
    EXPECT_EQ(cudaMemcpy(v.data(), p + off, count * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }
};

inline std::uint32_t bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

}  // namespace gradzip::testing
