// Compression units and buffer plans: the engine of the PyTorch DDP hook (torch.classes.gradzip.Unit / Plan, see
// torch_ext/csrc/ddp_units.cc) and of the LibTorch helper gradzip::libtorch::GradSync (gradzip/torch.h). Torch-free:
// both front ends adapt their tensors to float pointers and their process groups / Communicators to byte slots, and
// run exactly this code, so that the Python hook and the C++ helper produce the same bits for the same inputs.
//
// Unit: one compression unit (a fixed, ordered set of parameters, usually one DDP bucket) on one rank. It owns a
//   FeedbackWorker (this rank's memories), a FeedbackAggregator replica (the shared estimate, identical on every
//   rank because every rank aggregates the same payloads in rank order), the codec and, for lowrank, the warm-started
//   Q (LowRankState). Randomness: RngKey{seed, step = the worker's step counter, rank, stream = unit id}, so the
//   random state is fully described by (seed, step counters) and a resumed unit draws the same bits.
//   The feedback step size gamma is fixed per unit (1 in the DDP hook: the optimizer applies the learning rate to
//   the direction; EF14's gamma-inside form with gamma = 1 is the classic gamma-outside form, exact for constant
//   learning rates; see feedback.h).
//
// Plan: how one communicated buffer (a DDP bucket) maps onto units: for each unit, the segments [offset, offset +
//   length) of the buffer that, concatenated in order, form the unit's vector. Usually one unit covering the whole
//   bucket ("direct": no copy); after a restart DDP's first iteration uses one large bucket that holds several saved
//   units, gathered and scattered here. Elements no unit covers are left untouched (the front end all-reduces them
//   uncompressed).
//
// Wire layouts (every rank, every step, the same for all ranks because every decision depends only on the config,
// the layout and the step counters):
//   allgather: each rank's slot holds its units' payloads back to back (payload.h format, each self-sized by its
//     header), zero padded. The slot is slot_bytes() (the sum of the units' largest payloads for this step) unless
//     variable_size() (QSGD's Elias coding), where the ranks agree on the slot first (the Python hook: max of
//     used_bytes(); an allgatherv gives each rank's exact bytes). decode() walks every rank's slot and aggregates
//     unit by unit in rank order; bytes after the last payload of a slot are ignored.
//   linear (linear_step(): identity, shared Rand-K, and EF21/EControl's uncompressed first step): the units' payload
//     bodies are float arrays whose sum is the payload of the sum; encode_linear() returns them multiplied by
//     float(1 / world) (as DDP scales gradients before its all-reduce, so identity reproduces plain DDP's bits), the
//     caller all-reduces (sum) them, decode_linear() decodes the summed bodies with this rank's headers (identical on
//     every rank) and applies the mean (FeedbackAggregator::apply_mean).
// Metrics of the last encode: payload bytes (sum of exact payload sizes), and, when track_error, the squared norms
//   sum ||D(C(v)) - v||^2 and sum ||v||^2 over units, v being the vector the codec compressed this step (g for none,
//   e + gamma g for EF14, g - G_i for EF21, eta e + g - h_i for EControl: feedback.h); the uncompressed first step
//   has error 0.
// State: Unit::state() gives three blobs (state_io.h format): the worker's, the aggregator's and the codec's (empty
//   unless lowrank: u64 lowrank_rows, lowrank_cols, lowrank_rank, f32[] lowrank_q). load_state() is all or nothing.
// Thread-safety: one thread at a time per Unit and per Plan; distinct units are independent. Buffers are host
//   memory. Determinism: a pure function of (config, inputs, step counters); the front end's all-reduce of the
//   linear layout sums in the engine's order.
// Errors (messages name the value, never the op: the front end prefixes "gradzip.<op>: "): kInvalidArgument for
//   invalid configurations, sizes and foreign state; kInvalidPayload ("rank r, unit s: ...") for bad payloads;
//   kInternal for broken invariants.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gradzip/compressors/codecs.h"
#include "gradzip/compressors/core.h"
#include "gradzip/compressors/payload.h"
#include "gradzip/error_feedback/feedback.h"

namespace gradzip::units {

class Unit {
 public:
  /// numel in [1, 2^32), world >= 1, rank in [0, world), stream in [0, 2^32), gamma finite and > 0; the compressor
  /// and feedback specs must parse and pair (check_pairing).
  static StatusOr<std::unique_ptr<Unit>> create(const std::string& compressor, const std::string& feedback,
                                                std::int64_t numel, std::int64_t rank, std::int64_t world,
                                                std::uint64_t seed, std::int64_t stream, double gamma);
  ~Unit();
  Unit(const Unit&) = delete;
  Unit& operator=(const Unit&) = delete;

  std::size_t numel() const { return n_; }
  std::uint32_t stream() const { return key_.stream; }
  std::uint64_t steps() const;
  std::string compressor_spec() const;
  std::string feedback_spec() const;
  /// True when this step's payload has a data-dependent size (QSGD coding=elias after any uncompressed first step).
  bool variable_size() const { return variable_step(); }
  /// The worker's e, its estimate h_i / G_i and the aggregator's shared estimate (empty where the algorithm has none).
  Span<const float> error() const;
  Span<const float> estimate() const;
  Span<const float> shared_estimate() const;

  struct State {
    std::vector<std::uint8_t> worker, aggregator, codec;
  };
  State state() const;
  /// Restores state(); nothing changes unless every part loads.
  [[nodiscard]] Status load_state(ConstBytes worker, ConstBytes aggregator, ConstBytes codec);

  // ---- used by Plan ----
  bool identity_step() const;
  bool linear_step() const { return identity_step() || linear_; }
  bool variable_step() const { return variable_ && !identity_step(); }
  std::size_t step_max_bytes() const;
  /// One feedback step on x (numel floats): writes the payload into out[0, *written) (cap bytes available), updates
  /// the worker, accumulates the error metrics when track.
  [[nodiscard]] Status encode_into(const float* x, std::uint8_t* out, std::size_t cap, std::size_t* written, bool track,
                                   double* err2, double* norm2);
  /// Aggregates the world payloads (rank order) into direction (numel floats).
  [[nodiscard]] Status aggregate(Span<const ConstBytes> payloads, float* direction);
  /// Body floats of the last payload (linear steps only).
  std::size_t body_floats() const { return body_bytes_ / 4; }
  /// Linear path: `sum` holds the all-reduced (already 1/world-scaled) body floats; writes the direction.
  [[nodiscard]] Status apply_linear(const float* sum, std::size_t count, float* direction);

 private:
  Unit() = default;
  Status make_feedback(std::unique_ptr<FeedbackWorker>* w, std::unique_ptr<FeedbackAggregator>* a) const;
  void compute_codec_input(const float* x);

  std::size_t n_ = 0;
  float gamma_ = 1.0f;
  RngKey key_{};
  FeedbackConfig cfg_{};
  std::shared_ptr<const Compressor> codec_, identity_;
  std::unique_ptr<FeedbackWorker> worker_;
  std::unique_ptr<FeedbackAggregator> aggregator_;
  std::unique_ptr<LowRankState> lowrank_;
  bool linear_ = false, variable_ = false, last_identity_ = false;
  std::vector<std::uint8_t> payload_;
  std::uint8_t header_[kHeaderBytes] = {};
  std::size_t body_bytes_ = 0;
  std::vector<float> v_, dec_, mean_;
};

class Plan {
 public:
  /// numel >= 1 elements, world >= 1 ranks.
  static StatusOr<std::unique_ptr<Plan>> create(std::int64_t numel, std::int64_t world);

  /// Adds a unit whose vector is the concatenation of buffer[segments[2i], segments[2i] + segments[2i+1]). Segments
  /// must lie inside the buffer, cover no element twice (across units too) and add up to the unit's numel.
  [[nodiscard]] Status add(std::shared_ptr<Unit> unit, Span<const std::int64_t> segments);

  std::size_t num_units() const { return entries_.size(); }
  std::size_t numel() const { return n_; }
  std::int64_t world() const { return world_; }
  const Unit& unit(std::size_t i) const { return *entries_[i].unit; }
  bool linear_step() const;
  bool variable_size() const;
  /// The allgather slot of this step: the sum of the units' largest payloads.
  std::size_t slot_bytes() const;
  /// Bytes the last encode wrote (sum of exact payload sizes).
  std::size_t used_bytes() const { return used_; }
  double last_err2() const { return err2_; }
  double last_norm2() const { return norm2_; }

  /// Allgather layout: writes this rank's payloads back to back into out (cap >= slot_bytes(), zero filled first).
  /// buffer: numel floats (read only).
  [[nodiscard]] Status encode(const float* buffer, std::uint8_t* out, std::size_t cap, bool track_error);
  /// Linear layout: out = the units' payload values times float(1 / world) (resized).
  [[nodiscard]] Status encode_linear(const float* buffer, std::vector<float>* out, bool track_error);
  /// slots[r] = rank r's slot. Writes the averaged direction into the covered elements of buffer (numel floats);
  /// other elements are left as they are.
  [[nodiscard]] Status decode(Span<const ConstBytes> slots, float* buffer);
  /// summed: the all-reduce (sum) of every rank's encode_linear() output. Writes the covered elements of buffer.
  [[nodiscard]] Status decode_linear(Span<const float> summed, float* buffer);

 private:
  struct Entry {
    std::shared_ptr<Unit> unit;
    std::vector<std::pair<std::size_t, std::size_t>> segs;
    std::vector<float> scratch;  // gather / direction buffer when the unit is not one contiguous segment
  };
  Plan() = default;
  Status check_entries() const;
  const float* gather(Entry& e, const float* src);
  float* direction_target(Entry& e, float* buffer);
  static void scatter(const Entry& e, const float* dir, float* buffer);

  std::size_t n_ = 0;
  std::int64_t world_ = 1;
  std::vector<Entry> entries_;
  std::vector<std::uint8_t> covered_;
  std::size_t used_ = 0;
  double err2_ = 0.0, norm2_ = 0.0;
};

}  // namespace gradzip::units
