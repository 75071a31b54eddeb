// Adapters between torch and the gradzip C++ layers: at::Tensor <-> Span, Status -> exception.
//
// Exceptions are thrown only here, at the torch boundary (CONVENTIONS.md C4): a kInvalidArgument Status becomes a
// c10::ValueError (Python ValueError), any other code a c10::Error (Python RuntimeError) whose message starts with
// "gradzip.<op>: <Code>: " followed by the library's own message, which names the codec and the values.
// Only CPU tensors are accepted by the C++ ops; the Python layer moves CUDA buckets through the CPU (there are no
// CUDA kernels behind these ops yet).
#pragma once

#include <ATen/ATen.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "gradzip/compressors/core.h"

namespace gradzip::torch_ext {

/// Throws for a non-ok Status: ValueError for kInvalidArgument, RuntimeError otherwise.
inline void throw_if_error(const Status& s, const char* op) {
  if (s.ok()) return;
  if (s.code() == StatusCode::kInvalidArgument) TORCH_CHECK_VALUE(false, "gradzip.", op, ": ", s.message());
  TORCH_CHECK(false, "gradzip.", op, ": ", status_code_name(s.code()), ": ", s.message());
}

/// Unwraps a StatusOr or throws like throw_if_error.
template <class T>
T value_or_throw(StatusOr<T>&& v, const char* op) {
  if (!v.ok()) throw_if_error(v.status(), op);
  return std::move(v).value();
}

/// Checks that `t` is a CPU tensor; names the op and the argument.
inline void check_cpu(const at::Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK(t.defined(), "gradzip.", op, ": ", arg, " is undefined");
  TORCH_CHECK(t.device().is_cpu(), "gradzip.", op, ": ", arg, " must be a CPU tensor, got device ", t.device(),
              " (move it with .cpu(); the gradzip ops have no CUDA kernels yet)");
}

/// A contiguous float32 CPU version of a floating-point tensor (no copy when it already is one).
inline at::Tensor to_f32(const at::Tensor& t, const char* op, const char* arg) {
  check_cpu(t, op, arg);
  TORCH_CHECK_VALUE(at::isFloatingType(t.scalar_type()), "gradzip.", op, ": ", arg,
                    " must be a floating-point tensor (float32, float16, bfloat16 or float64), got ", t.scalar_type());
  return t.to(at::kFloat).contiguous();
}

/// Read-only bytes of a contiguous uint8 CPU tensor.
inline ConstBytes as_bytes(const at::Tensor& t, const char* op, const char* arg) {
  check_cpu(t, op, arg);
  TORCH_CHECK_VALUE(t.scalar_type() == at::kByte, "gradzip.", op, ": ", arg, " must be a uint8 tensor, got ",
                    t.scalar_type());
  TORCH_CHECK_VALUE(t.is_contiguous(), "gradzip.", op, ": ", arg, " must be contiguous");
  return ConstBytes(t.data_ptr<std::uint8_t>(), static_cast<std::size_t>(t.numel()));
}

inline Span<const float> as_span(const at::Tensor& f32) {
  return Span<const float>(f32.data_ptr<float>(), static_cast<std::size_t>(f32.numel()));
}
inline Span<float> as_mut_span(const at::Tensor& f32) {
  return Span<float>(f32.data_ptr<float>(), static_cast<std::size_t>(f32.numel()));
}

/// A RngKey from Python ints; seed is any 64-bit value, the others must fit in 32 bits.
inline RngKey make_key(std::int64_t seed, std::int64_t step, std::int64_t rank, std::int64_t stream, const char* op) {
  TORCH_CHECK_VALUE(step >= 0 && step <= 0xFFFFFFFFll, "gradzip.", op, ": step=", step, " must be in [0, 2^32)");
  TORCH_CHECK_VALUE(rank >= 0 && rank <= 0xFFFFFFFFll, "gradzip.", op, ": rank=", rank, " must be in [0, 2^32)");
  TORCH_CHECK_VALUE(stream >= 0 && stream <= 0xFFFFFFFFll, "gradzip.", op, ": stream=", stream,
                    " must be in [0, 2^32)");
  RngKey k;
  k.seed = static_cast<std::uint64_t>(seed);
  k.step = static_cast<std::uint32_t>(step);
  k.rank = static_cast<std::uint32_t>(rank);
  k.stream = static_cast<std::uint32_t>(stream);
  return k;
}

/// A uint8 CPU tensor holding a copy of b (state blobs).
inline at::Tensor bytes_tensor(const std::vector<std::uint8_t>& b) {
  at::Tensor t = at::empty({static_cast<std::int64_t>(b.size())}, at::kByte);
  if (!b.empty()) std::memcpy(t.data_ptr<std::uint8_t>(), b.data(), b.size());
  return t;
}

/// A float32 CPU tensor holding a copy of v.
inline at::Tensor floats_tensor(Span<const float> v) {
  at::Tensor t = at::empty({static_cast<std::int64_t>(v.size())}, at::kFloat);
  if (!v.empty()) std::memcpy(t.data_ptr<float>(), v.data(), v.size_bytes());
  return t;
}

// Registration hooks, called from the single TORCH_LIBRARY block in module.cc.
void register_codec_ops(torch::Library& m);
void register_ddp_units(torch::Library& m);
void register_fed_ops(torch::Library& m);
// CPU kernels of the dispatcher ops (registered in module.cc's TORCH_LIBRARY_IMPL(gradzip, CPU)).
at::Tensor encode_cpu(const at::Tensor& x, c10::string_view spec, std::int64_t seed, std::int64_t step,
                      std::int64_t rank, std::int64_t stream);
at::Tensor decode_cpu(const at::Tensor& payload, c10::string_view spec, std::int64_t numel, std::int64_t seed,
                      std::int64_t step, std::int64_t rank, std::int64_t stream);

}  // namespace gradzip::torch_ext
