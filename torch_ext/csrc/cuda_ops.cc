// CUDA kernels of the gradzip ops (compiled only when gradzip is built with CUDA against a CUDA torch):
//   torch.ops.gradzip.encode / decode on CUDA tensors (the dispatcher picks these for device tensors); they run on
//   the current stream and, like the CPU ops, return exact errors (one stream synchronisation per call);
//   torch.ops.gradzip.cuda_supported(spec) -> bool          whether the codec has CUDA kernels;
//   torch.ops.gradzip.cuda_step(g, e, h, scratch, out, status, compressor, feedback, eta, seed, step, rank, stream)
//       -> int   one error-feedback step on the device (none / ef14 / ef21 / econtrol, device_feedback.h) writing the
//       payload into `out`; returns its size (known on the host: nothing synchronises; device-side errors go to the
//       int32 `status` word, read with cuda_take_status);
//   torch.ops.gradzip.cuda_decode_mean(gathered, slot, world, y, status, compressor, accumulate, seed, step, stream)
//       y (+)= (1/world) sum_r D(payload_r), payload r at gathered[r * slot:] (rank r's RngKey rank), on the device.
//   torch.ops.gradzip.cuda_take_status(status) -> ()       raises the Status the word holds (synchronises), zeroes it.
// Only adapters here: tensors -> spans, the current stream -> Exec, Status -> exceptions.
#include <ATen/cuda/CUDAContext.h>

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "common.h"
#include "gradzip/compressors/cuda.h"
#include "gradzip/compressors/registry.h"
#include "gradzip/error_feedback/device_feedback.h"

namespace gradzip::torch_ext {
namespace {

std::shared_ptr<const Compressor> codec_for(c10::string_view spec, const char* op) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::shared_ptr<const Compressor>> cache;
  const std::string key(spec.data(), spec.size());
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  std::shared_ptr<const Compressor> c(value_or_throw(parse_compressor(key), op));
  cache.emplace(key, c);
  return c;
}

void check_cuda(const at::Tensor& t, const char* op, const char* arg, at::ScalarType type) {
  TORCH_CHECK(t.defined() && t.is_cuda(), "gradzip.", op, ": ", arg, " must be a CUDA tensor");
  TORCH_CHECK_VALUE(t.scalar_type() == type, "gradzip.", op, ": ", arg, " must be ", type, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.is_contiguous(), "gradzip.", op, ": ", arg, " must be contiguous");
}

Exec cuda_exec(const at::Tensor& like, const Compressor& c, std::size_t n, at::Tensor& ws_holder) {
  Exec ex;
  ex.device = Device::kCuda;
  ex.stream = at::cuda::getCurrentCUDAStream(like.device().index()).stream();
  const std::size_t ws = c.workspace_bytes(n, Device::kCuda);
  if (ws > 0) {
    ws_holder = at::empty({static_cast<std::int64_t>(ws + 256)}, like.options().dtype(at::kByte));
    auto* p = ws_holder.data_ptr<std::uint8_t>();
    const std::size_t skew = (256 - reinterpret_cast<std::uintptr_t>(p) % 256) % 256;
    ex.workspace = MutableBytes(p + skew, ws);
  }
  return ex;
}

at::Tensor encode_cuda(const at::Tensor& x, c10::string_view spec, std::int64_t seed, std::int64_t step,
                       std::int64_t rank, std::int64_t stream) {
  const char* op = "encode";
  TORCH_CHECK(x.is_cuda(), "gradzip.encode: x must be a CUDA tensor here");
  TORCH_CHECK_VALUE(at::isFloatingType(x.scalar_type()), "gradzip.encode: x must be a floating-point tensor");
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  TORCH_CHECK_VALUE(xf.numel() > 0, "gradzip.encode: x is empty");
  const auto c = codec_for(spec, op);
  const std::size_t n = static_cast<std::size_t>(xf.numel());
  throw_if_error(c->check(DType::kF32, n), op);
  at::Tensor ws;
  Exec ex = cuda_exec(xf, *c, n, ws);
  ex.rng = make_key(seed, step, rank, stream, op);
  at::Tensor out = at::empty({static_cast<std::int64_t>(c->max_encoded_bytes(n))}, xf.options().dtype(at::kByte));
  std::size_t written = 0;
  throw_if_error(
      c->encode(Span<const float>(xf.data_ptr<float>(), n),
                MutableBytes(out.data_ptr<std::uint8_t>(), static_cast<std::size_t>(out.numel())), &written, ex),
      op);
  return out.narrow(0, 0, static_cast<std::int64_t>(written));
}

at::Tensor decode_cuda(const at::Tensor& payload, c10::string_view spec, std::int64_t numel, std::int64_t seed,
                       std::int64_t step, std::int64_t rank, std::int64_t stream) {
  const char* op = "decode";
  TORCH_CHECK_VALUE(numel > 0, "gradzip.decode: numel=", numel, " must be >= 1");
  const at::Tensor p = payload.contiguous();
  check_cuda(p, op, "payload", at::kByte);
  const auto c = codec_for(spec, op);
  at::Tensor ws;
  Exec ex = cuda_exec(p, *c, static_cast<std::size_t>(numel), ws);
  ex.rng = make_key(seed, step, rank, stream, op);
  at::Tensor y = at::empty({numel}, p.options().dtype(at::kFloat));
  throw_if_error(
      c->decode(ConstBytes(p.data_ptr<std::uint8_t>(), static_cast<std::size_t>(p.numel())),
                Span<float>(y.data_ptr<float>(), static_cast<std::size_t>(numel)), DecodeMode::kOverwrite, ex),
      op);
  return y;
}

bool cuda_supported(c10::string_view spec) {
  return codec_for(spec, "cuda_supported")->has_cuda();
}

Span<float> fspan(const at::Tensor& t) {
  return Span<float>(t.data_ptr<float>(), static_cast<std::size_t>(t.numel()));
}

std::int64_t cuda_step(const at::Tensor& g, const at::Tensor& e, const at::Tensor& h, const at::Tensor& scratch,
                       const at::Tensor& out, const at::Tensor& status, c10::string_view compressor,
                       c10::string_view feedback, double eta, std::int64_t seed, std::int64_t step, std::int64_t rank,
                       std::int64_t stream) {
  const char* op = "cuda_step";
  check_cuda(g, op, "g", at::kFloat);
  check_cuda(out, op, "out", at::kByte);
  check_cuda(status, op, "status", at::kInt);
  const auto c = codec_for(compressor, op);
  const std::size_t n = static_cast<std::size_t>(g.numel());
  // lowrank's warm-started Q lives in a LowRankState this op does not carry: a cold start every step would be
  // another algorithm, so stateful codecs stay on the hook's host path (_cuda_path.codec_supported).
  TORCH_CHECK_VALUE(!c->traits(n).stateful, "gradzip.cuda_step: '", std::string(compressor.data(), compressor.size()),
                    "' keeps state across calls, which the device step does not carry; use the host path");
  TORCH_CHECK_VALUE(static_cast<std::size_t>(out.numel()) >= c->max_encoded_bytes(n), "gradzip.cuda_step: out of ",
                    out.numel(), " bytes is smaller than max_encoded_bytes = ", c->max_encoded_bytes(n));
  at::Tensor ws;
  Exec ex = cuda_exec(g, *c, n, ws);
  ex.rng = make_key(seed, step, rank, stream, op);
  ex.check_finite = false;
  ex.device_status = reinterpret_cast<std::uint32_t*>(status.data_ptr<std::int32_t>());
  const MutableBytes o(out.data_ptr<std::uint8_t>(), static_cast<std::size_t>(out.numel()));
  const Span<const float> gs(g.data_ptr<float>(), n);
  const std::string fb(feedback.data(), feedback.size());
  std::size_t written = 0;
  if (fb == "none") {
    throw_if_error(c->encode(gs, o, &written, ex), op);
  } else if (fb == "ef14") {
    check_cuda(e, op, "e", at::kFloat);
    throw_if_error(device_feedback::ef14_step(*c, gs, 1.0f, fspan(e), o, &written, ex), op);
  } else if (fb == "ef21") {
    check_cuda(h, op, "h", at::kFloat);
    check_cuda(scratch, op, "scratch", at::kFloat);
    throw_if_error(device_feedback::ef21_step(*c, gs, fspan(h), fspan(scratch), o, &written, ex), op);
  } else if (fb == "econtrol") {
    check_cuda(e, op, "e", at::kFloat);
    check_cuda(h, op, "h", at::kFloat);
    check_cuda(scratch, op, "scratch", at::kFloat);
    throw_if_error(device_feedback::econtrol_step(*c, gs, static_cast<float>(eta), fspan(e), fspan(h), fspan(scratch),
                                                  o, &written, ex),
                   op);
  } else {
    TORCH_CHECK_VALUE(false, "gradzip.cuda_step: feedback '", fb, "' is not one of none, ef14, ef21, econtrol");
  }
  return static_cast<std::int64_t>(written);
}

void cuda_decode_mean(const at::Tensor& gathered, std::int64_t slot, std::int64_t world, const at::Tensor& y,
                      const at::Tensor& status, c10::string_view compressor, bool accumulate, std::int64_t seed,
                      std::int64_t step, std::int64_t stream) {
  const char* op = "cuda_decode_mean";
  check_cuda(gathered, op, "gathered", at::kByte);
  check_cuda(y, op, "y", at::kFloat);
  check_cuda(status, op, "status", at::kInt);
  TORCH_CHECK_VALUE(world >= 1 && slot >= 1 && gathered.numel() >= slot * world,
                    "gradzip.cuda_decode_mean: ", gathered.numel(), " gathered bytes cannot hold ", world, " slots of ",
                    slot);
  const auto c = codec_for(compressor, op);
  const std::size_t n = static_cast<std::size_t>(y.numel());
  at::Tensor ws;
  Exec ex = cuda_exec(y, *c, n, ws);
  ex.device_status = reinterpret_cast<std::uint32_t*>(status.data_ptr<std::int32_t>());
  const float scale = static_cast<float>(1.0 / static_cast<double>(world));
  const std::uint8_t* base = gathered.data_ptr<std::uint8_t>();
  for (std::int64_t r = 0; r < world; ++r) {
    ex.rng = make_key(seed, step, r, stream, op);
    const DecodeMode mode = (r == 0 && !accumulate) ? DecodeMode::kOverwrite : DecodeMode::kAccumulate;
    throw_if_error(c->decode(ConstBytes(base + r * slot, static_cast<std::size_t>(slot)), fspan(y), mode, ex, scale),
                   op);
  }
}

void cuda_take_status_op(const at::Tensor& status) {
  check_cuda(status, "cuda_take_status", "status", at::kInt);
  throw_if_error(cuda_take_status(reinterpret_cast<std::uint32_t*>(status.data_ptr<std::int32_t>()),
                                  at::cuda::getCurrentCUDAStream(status.device().index()).stream(), "gradzip.cuda"),
                 "cuda_take_status");
}

}  // namespace
}  // namespace gradzip::torch_ext

TORCH_LIBRARY_FRAGMENT(gradzip, m) {
  using namespace gradzip::torch_ext;
  m.def("cuda_supported(str spec) -> bool", &cuda_supported);
  m.def(
      "cuda_step(Tensor g, Tensor(a!) e, Tensor(b!) h, Tensor(c!) scratch, Tensor(d!) out, Tensor(e!) status, "
      "str compressor, str feedback, float eta, int seed, int step, int rank, int stream) -> int",
      &cuda_step);
  m.def(
      "cuda_decode_mean(Tensor gathered, int slot, int world, Tensor(a!) y, Tensor(b!) status, str compressor, "
      "bool accumulate, int seed, int step, int stream) -> ()",
      &cuda_decode_mean);
  m.def("cuda_take_status(Tensor(a!) status) -> ()", &cuda_take_status_op);
}

TORCH_LIBRARY_IMPL(gradzip, CUDA, m) {
  m.impl("encode", &gradzip::torch_ext::encode_cuda);
  m.impl("decode", &gradzip::torch_ext::decode_cuda);
}
