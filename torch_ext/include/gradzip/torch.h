// gradzip for LibTorch (C++ training without Python): tensor adapters and GradSync, which synchronises a model's
// gradients across ranks through a Communicator (MPI, or any other engine) exactly like the Python DDP hook
// (gradzip.ddp.State + gradzip.ddp.hook) does through a process group.
//
//   #include "gradzip/collectives/mpi_communicator.h"
//   #include "gradzip/torch.h"
//   auto comm = gradzip::MpiCommunicator::create(MPI_COMM_WORLD);                       // after MPI_Init
//   gradzip::libtorch::GradSyncOptions o;  o.compressor = "topk:ratio=0.01";  o.feedback = "econtrol";
//   auto sync = gradzip::libtorch::GradSync::create(model->parameters(), o, **comm);   // StatusOr
//   for (...) { loss.backward();  gradzip::Status s = (*sync)->step();  optimizer.step(); }
//
// What step() does, per bucket (a fixed group of parameters of one dtype), all math in C++ (units.h, the same engine
// as the Python hook, so the same inputs give the same bits):
//   * steps < warmup_steps: plain averaging (x / world, all-reduce sum), as torch's allreduce_hook;
//   * otherwise each bucket's parameters form compression units (granularity "bucket": one unit per bucket;
//     "param": one unit per parameter tensor); a unit with fewer than min_compress_numel elements travels
//     uncompressed ("raw", in the bucket's dtype or float16 with small_dtype = "fp16"); each unit runs one
//     error-feedback step and its payload travels by allgather of fixed-size slots (allgatherv for variable-size
//     codecs: QSGD coding=elias), or by an all-reduce of the payload values for linear steps (identity, shared-seed
//     Rand-K, EF21/EControl's uncompressed first step); every rank decodes all payloads in rank order and writes the
//     same averaged direction into its .grad() tensors.
// Units and their random streams are made at the first compressed step, in bucket order (unit ids 0, 1, ...), like
// the Python hook's units after DDP's first-iteration rebuild (use warmup_steps >= 1 there). With `buckets` set to
// the parameter groups of DDP's rebuilt buckets (in bucket order), GradSync reproduces the hook's gradients bit for
// bit on 2 ranks (tests/torch_ext/libtorch_sync_test.cc; with more ranks the raw and linear all-reduces sum in the
// engine's order, which may differ from gloo's in the last bit).
//
// State: state_dict() is the Python hook's format ("gradzip.ddp.State/1": compressor, feedback, seed, rank,
// world_size, step, next_unit_id, warmup_steps, min_compress_numel, units [{id, keys, numel, state: 3 uint8
// tensors}], raw_keys), saved with torch::pickle_save, so torch.load reads it; load_state_dict() / load() accept it
// from either side (torch.save'd by gradzip.ddp.State.state_dict() in Python, or save() here). Loading matches the
// saved units, sorted by id, to this GradSync's units in creation order by numel (ids become the random streams);
// a Python state whose units were made after a DDP bucket rebuild at a compressed step may not match
// (kInvalidArgument). Keys written here are (bucket index, position, numel) of GradSync's own buckets.
//
// Devices and dtypes: parameters may be float32/float64/float16/bfloat16, on the CPU or a CUDA device; buckets never
// mix dtypes or devices. Units compress in float32 on the host (CUDA gradients are staged through host memory, as
// the Python hook does until gradzip's CUDA kernels exist); results are written back in each gradient's dtype.
// A parameter whose .grad() is undefined at step() contributes zeros (its .grad() is set).
// Verification: the first step() (and the first after a load) allgathers a hash of the options, the buckets, the
// parameter sizes, the units and the step counter; ranks that disagree all get the same kMismatch before any
// gradient moves (instead of exchanging payloads they cannot decode, or silently diverging).
// Thread-safety: one thread per GradSync; step() is collective (every rank, same order, same options and
// parameter shapes). Errors are Status values, never exceptions (torch exceptions from tensor operations are caught
// and returned as kInternal): kInvalidArgument (options, parameters, state), kMismatch / kCommunication / kTimeout
// (the Communicator), kNonFinite (NaN/Inf gradient), kInvalidPayload. After any error during step() the ranks'
// states may differ: treat it as fatal (abort the job).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gradzip/collectives/communicator.h"
#include "gradzip/compressors/core.h"

namespace gradzip::libtorch {

// ------------------------------------------------------------------------------------------------ tensor adapters
/// Where a tensor lives, as gradzip's Exec: kCpu; kCuda with the tensor's device's current stream when gradzip and
/// torch were built with CUDA; kUnsupported otherwise.
StatusOr<Exec> exec_for(const at::Tensor& t);
/// Views of a contiguous float32 tensor (CPU, or CUDA device memory when exec_for() accepts it). kInvalidArgument for
/// undefined, non-float32 or non-contiguous tensors; no copy is ever made.
StatusOr<Span<float>> float_span(const at::Tensor& t);
StatusOr<Span<const float>> const_float_span(const at::Tensor& t);
/// Bytes of a contiguous uint8 CPU tensor.
StatusOr<ConstBytes> byte_span(const at::Tensor& t);

// ------------------------------------------------------------------------------------------------------- GradSync
struct GradSyncOptions {
  std::string compressor = "topk:ratio=0.01";  // compressor spec (README "Spec grammar")
  std::string feedback = "ef14";               // none | ef14 | ef21[:init=...] | econtrol[:eta=...]
  std::int64_t warmup_steps = 0;               // steps averaged uncompressed first
  std::int64_t min_compress_numel = 4096;      // smaller units travel uncompressed
  std::string small_dtype = "fp32";            // wire dtype of uncompressed units: "fp32" (the bucket's) or "fp16"
  std::string granularity = "bucket";          // "bucket" (one unit per bucket) or "param" (one per parameter)
  std::uint64_t seed = 0;                      // < 2^63 (the state dict stores it as an int64)
  bool track_error = true;                     // compute rel_error (one extra decode per unit)
  /// Buckets when `buckets` is empty: parameters in reverse order (the order backward produces their gradients),
  /// grouped by dtype and device; a bucket closes once it holds at least this many bytes (DDP's rule, so with the
  /// same cap and a model whose gradients arrive in reverse order, the buckets of DDP's rebuilt layout).
  std::int64_t bucket_cap_bytes = 25 * 1024 * 1024;
  /// Explicit buckets: parameter indices (into the list given to create()), in bucket order; every parameter
  /// exactly once, one dtype and device per bucket.
  std::vector<std::vector<std::int64_t>> buckets;
};

/// Per step (this rank), or summed over steps by totals(). Bytes as in the Python hook (gradzip/_comm.py): sent =
/// this rank's contribution to the collectives, received = what the other ranks contributed, raw = the gradient
/// bytes plain averaging would all-reduce, payload = exact payload bytes without slot padding.
struct GradSyncMetrics {
  std::int64_t steps = 0;  // steps covered (1 for metrics(), the count for totals())
  double bytes_sent = 0, bytes_received = 0, raw_bytes = 0, payload_bytes = 0;
  double err2 = 0, norm2 = 0;  // sum ||D(C(v)) - v||^2 and ||v||^2 over compressed units (track_error)
  double encode_s = 0, comm_s = 0, decode_s = 0;
  std::int64_t compressed_buckets = 0, uncompressed_buckets = 0;
  /// raw_bytes / bytes_sent (0 when nothing was sent); sqrt(err2 / norm2) (-1 when nothing was compressed).
  double compression_ratio() const { return bytes_sent > 0 ? raw_bytes / bytes_sent : 0.0; }
  double rel_error() const;
};

class GradSync {
 public:
  /// Validates the options (specs and their pairing, as gradzip.ddp.State does) and the parameters, and forms the
  /// buckets. Not collective; `comm` must outlive the GradSync.
  static StatusOr<std::unique_ptr<GradSync>> create(std::vector<at::Tensor> params, GradSyncOptions options,
                                                    Communicator& comm);
  ~GradSync();
  GradSync(const GradSync&) = delete;
  GradSync& operator=(const GradSync&) = delete;

  /// Collective: averages every parameter's .grad() across ranks (see the file comment).
  [[nodiscard]] Status step();

  std::int64_t steps() const;  // completed steps (warm-up included)
  const GradSyncMetrics& metrics() const;
  const GradSyncMetrics& totals() const;
  const GradSyncOptions& options() const;  // canonical specs
  /// Parameter indices per bucket, in bucket order.
  const std::vector<std::vector<std::int64_t>>& buckets() const;
  std::size_t num_units() const;  // 0 before the first compressed step

  /// This rank's state (see the file comment). Call between steps.
  StatusOr<c10::IValue> state_dict() const;
  /// Restores a state dict of the same rank, world, compressor and feedback; all or nothing.
  [[nodiscard]] Status load_state_dict(const c10::IValue& sd);
  /// state_dict() to a file (torch.load reads it) / load_state_dict() from a file written by save() or torch.save.
  [[nodiscard]] Status save(const std::string& path) const;
  [[nodiscard]] Status load(const std::string& path);

 private:
  GradSync();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gradzip::libtorch
