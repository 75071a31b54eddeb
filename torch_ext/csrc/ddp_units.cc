// The custom classes torch.classes.gradzip.Unit and torch.classes.gradzip.Plan: per-bucket state of the DDP
// communication hook and of gradzip.allreduce. They adapt tensors to the torch-free engine in
// gradzip/torch_ext/units.h (which documents the units, the plans, the wire layouts, the metrics and the state
// blobs) and turn its Status into exceptions; the LibTorch helper (gradzip/torch.h) runs the same engine, so the
// Python hook and the C++ helper produce the same bits.
//
// Tensors: buckets are CPU floating-point tensors of any float dtype (computed in float32, written back in the
// bucket's dtype); slots and state blobs are uint8 CPU tensors.
// Thread-safety: one thread at a time per Unit and per Plan (DDP finishes a bucket's future before the bucket is
//   encoded again); distinct units are independent. Errors: ValueError for invalid configurations and sizes,
//   RuntimeError naming the unit, the rank and the C++ Status for bad payloads.
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common.h"
#include "gradzip/torch_ext/units.h"

namespace gradzip::torch_ext {
namespace {

class Unit : public torch::CustomClassHolder {
 public:
  Unit(const std::string& compressor, const std::string& feedback, std::int64_t numel, std::int64_t rank,
       std::int64_t world, std::int64_t seed, std::int64_t stream, double gamma)
      : core_(value_or_throw(units::Unit::create(compressor, feedback, numel, rank, world,
                                                 static_cast<std::uint64_t>(seed), stream, gamma),
                             "Unit")) {}

  std::int64_t numel() const { return static_cast<std::int64_t>(core_->numel()); }
  std::int64_t stream() const { return core_->stream(); }
  std::int64_t steps() const { return static_cast<std::int64_t>(core_->steps()); }
  std::string compressor_spec() const { return core_->compressor_spec(); }
  std::string feedback_spec() const { return core_->feedback_spec(); }
  bool variable_size() const { return core_->variable_size(); }
  /// Copies of [e, estimate h_i/G_i, shared estimate hbar/Gbar] (empty tensors where the algorithm has none).
  std::vector<at::Tensor> memories() const {
    return {floats_tensor(core_->error()), floats_tensor(core_->estimate()), floats_tensor(core_->shared_estimate())};
  }
  /// [worker state, aggregator state, codec state] as uint8 tensors (units.h).
  std::vector<at::Tensor> state() const {
    const units::Unit::State s = core_->state();
    return {bytes_tensor(s.worker), bytes_tensor(s.aggregator), bytes_tensor(s.codec)};
  }
  /// Restores state(). All or nothing.
  void load_state(const std::vector<at::Tensor>& blobs) {
    TORCH_CHECK_VALUE(blobs.size() == 3,
                      "gradzip.Unit.load_state: expected 3 tensors [worker, aggregator, codec], got ", blobs.size());
    const at::Tensor wb = blobs[0].contiguous(), ab = blobs[1].contiguous(), cb = blobs[2].contiguous();
    throw_if_error(
        core_->load_state(as_bytes(wb, "Unit.load_state", "worker"), as_bytes(ab, "Unit.load_state", "aggregator"),
                          as_bytes(cb, "Unit.load_state", "codec")),
        "Unit.load_state");
  }

  const std::shared_ptr<units::Unit>& core() const { return core_; }

 private:
  std::shared_ptr<units::Unit> core_;
};

class Plan : public torch::CustomClassHolder {
 public:
  Plan(std::int64_t numel, std::int64_t world) : core_(value_or_throw(units::Plan::create(numel, world), "Plan")) {}

  /// Adds a unit whose vector is the concatenation of buffer[segments[2i], segments[2i] + segments[2i+1]).
  void add(const c10::intrusive_ptr<Unit>& unit, const std::vector<std::int64_t>& segments) {
    TORCH_CHECK_VALUE(unit, "gradzip.Plan.add: unit is None");
    throw_if_error(core_->add(unit->core(), Span<const std::int64_t>(segments.data(), segments.size())), "Plan.add");
  }

  std::int64_t num_units() const { return static_cast<std::int64_t>(core_->num_units()); }
  std::int64_t numel() const { return static_cast<std::int64_t>(core_->numel()); }
  bool linear_step() const { return core_->linear_step(); }
  bool variable_size() const { return core_->variable_size(); }
  std::int64_t slot_bytes() const { return static_cast<std::int64_t>(core_->slot_bytes()); }
  std::int64_t used_bytes() const { return static_cast<std::int64_t>(core_->used_bytes()); }
  /// (payload bytes, sum ||D(C(v)) - v||^2, sum ||v||^2) of the last encode.
  std::tuple<std::int64_t, double, double> last_metrics() const {
    return {static_cast<std::int64_t>(core_->used_bytes()), core_->last_err2(), core_->last_norm2()};
  }

  /// Allgather layout: uint8 [slot_bytes()] with this rank's payloads back to back, zero padded.
  at::Tensor encode(const at::Tensor& bucket, bool track_error) {
    const at::Tensor b = input(bucket, "Plan.encode");
    at::Tensor out = at::empty({slot_bytes()}, at::kByte);
    throw_if_error(core_->encode(b.data_ptr<float>(), out.data_ptr<std::uint8_t>(),
                                 static_cast<std::size_t>(out.numel()), track_error),
                   "Plan.encode");
    return out;
  }

  /// Linear layout: float32 [sum of body floats], the units' payload values times float(1 / world).
  at::Tensor encode_linear(const at::Tensor& bucket, bool track_error) {
    TORCH_CHECK_VALUE(core_->num_units() > 0, "gradzip.Plan.encode_linear: the plan has no units");
    TORCH_CHECK_VALUE(core_->linear_step(),
                      "gradzip.Plan.encode_linear: not every unit sends a linear payload this step");
    const at::Tensor b = input(bucket, "Plan.encode_linear");
    std::vector<float> vals;
    throw_if_error(core_->encode_linear(b.data_ptr<float>(), &vals, track_error), "Plan.encode_linear");
    return floats_tensor(Span<const float>(vals.data(), vals.size()));
  }

  /// gathered: uint8 [world * slot] (rank r's slot at r * slot). Writes the averaged direction into the bucket's
  /// covered elements (in the bucket's dtype); other elements are left as they are.
  void decode(const at::Tensor& gathered, std::int64_t slot, const at::Tensor& bucket) {
    TORCH_CHECK_VALUE(core_->num_units() > 0, "gradzip.Plan.decode: the plan has no units");
    TORCH_CHECK_VALUE(slot >= static_cast<std::int64_t>(kHeaderBytes), "gradzip.Plan.decode: slot=", slot,
                      " is smaller than a payload header");
    const at::Tensor g = gathered.contiguous();
    const ConstBytes all = as_bytes(g, "Plan.decode", "gathered");
    const std::int64_t world = core_->world();
    TORCH_CHECK_VALUE(all.size() == static_cast<std::size_t>(slot * world), "gradzip.Plan.decode: gathered holds ",
                      all.size(), " bytes, expected world * slot = ", world, " * ", slot);
    Output out(bucket, core_->numel(), "Plan.decode");
    std::vector<ConstBytes> slots;
    for (std::int64_t r = 0; r < world; ++r) slots.emplace_back(all.data() + r * slot, static_cast<std::size_t>(slot));
    throw_if_error(core_->decode(Span<const ConstBytes>(slots.data(), slots.size()), out.data()), "Plan.decode");
    out.commit();
  }

  /// summed: float32 [sum of body floats] after the all-reduce of encode_linear()'s output.
  void decode_linear(const at::Tensor& summed, const at::Tensor& bucket) {
    TORCH_CHECK_VALUE(core_->num_units() > 0, "gradzip.Plan.decode_linear: the plan has no units");
    check_cpu(summed, "Plan.decode_linear", "summed");
    TORCH_CHECK_VALUE(summed.scalar_type() == at::kFloat, "gradzip.Plan.decode_linear: summed must be float32, got ",
                      summed.scalar_type());
    const at::Tensor s = summed.contiguous();
    Output out(bucket, core_->numel(), "Plan.decode_linear");
    throw_if_error(
        core_->decode_linear(Span<const float>(s.data_ptr<float>(), static_cast<std::size_t>(s.numel())), out.data()),
        "Plan.decode_linear");
    out.commit();
  }

 private:
  /// The bucket as float32 (a view when it already is contiguous float32), written back by commit().
  class Output {
   public:
    Output(const at::Tensor& bucket, std::size_t n, const char* op) : bucket_(bucket) {
      check_cpu(bucket, op, "bucket");
      TORCH_CHECK_VALUE(static_cast<std::size_t>(bucket.numel()) == n, "gradzip.", op, ": bucket has ", bucket.numel(),
                        " elements, the plan covers ", n);
      TORCH_CHECK_VALUE(at::isFloatingType(bucket.scalar_type()), "gradzip.", op,
                        ": bucket must be floating point, got ", bucket.scalar_type());
      direct_ = bucket.scalar_type() == at::kFloat && bucket.is_contiguous();
      f32_ = direct_ ? bucket : bucket.to(at::kFloat).contiguous();
    }
    float* data() { return f32_.data_ptr<float>(); }
    void commit() {
      if (!direct_) bucket_.copy_(f32_.view(bucket_.sizes()));
    }

   private:
    at::Tensor bucket_, f32_;
    bool direct_ = false;
  };

  at::Tensor input(const at::Tensor& bucket, const char* op) const {
    TORCH_CHECK_VALUE(core_->num_units() > 0, "gradzip.", op, ": the plan has no units");
    const at::Tensor b = to_f32(bucket, op, "bucket");
    TORCH_CHECK_VALUE(static_cast<std::size_t>(b.numel()) == core_->numel(), "gradzip.", op, ": bucket has ", b.numel(),
                      " elements, the plan covers ", core_->numel());
    return b;
  }

  std::unique_ptr<units::Plan> core_;
};

}  // namespace

void register_ddp_units(torch::Library& m) {
  m.class_<Unit>("Unit")
      .def(torch::init<std::string, std::string, std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                       double>())
      .def("numel", &Unit::numel)
      .def("stream", &Unit::stream)
      .def("steps", &Unit::steps)
      .def("compressor_spec", &Unit::compressor_spec)
      .def("feedback_spec", &Unit::feedback_spec)
      .def("variable_size", &Unit::variable_size)
      .def("memories", &Unit::memories)
      .def("state", &Unit::state)
      .def("load_state", &Unit::load_state);
  m.class_<Plan>("Plan")
      .def(torch::init<std::int64_t, std::int64_t>())
      .def("add", &Plan::add)
      .def("num_units", &Plan::num_units)
      .def("numel", &Plan::numel)
      .def("linear_step", &Plan::linear_step)
      .def("variable_size", &Plan::variable_size)
      .def("slot_bytes", &Plan::slot_bytes)
      .def("used_bytes", &Plan::used_bytes)
      .def("last_metrics", &Plan::last_metrics)
      .def("encode", &Plan::encode)
      .def("encode_linear", &Plan::encode_linear)
      .def("decode", &Plan::decode)
      .def("decode_linear", &Plan::decode_linear);
}

}  // namespace gradzip::torch_ext
