// gradzip for LibTorch: tensor adapters and GradSync (gradzip/torch.h).
#include "gradzip/torch.h"

#include <torch/csrc/jit/serialization/pickle.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <fstream>
#include <iterator>
#include <utility>

#include "gradzip/compressors/config.h"
#include "gradzip/compressors/registry.h"
#include "gradzip/error_feedback/feedback.h"
#include "gradzip/torch_ext/units.h"

// GRADZIP_LIBTORCH_CUDA: set by CMake when gradzip has CUDA and the torch it builds against has too.
#ifndef GRADZIP_LIBTORCH_CUDA
#define GRADZIP_LIBTORCH_CUDA 0
#endif
#if GRADZIP_LIBTORCH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace gradzip::libtorch {

// ------------------------------------------------------------------------------------------------ tensor adapters
StatusOr<Exec> exec_for(const at::Tensor& t) {
  if (!t.defined()) return Status::InvalidArgument("gradzip::libtorch: tensor is undefined");
  Exec ex;
  if (t.device().is_cpu()) return ex;
#if GRADZIP_LIBTORCH_CUDA
  if (t.device().is_cuda()) {
    ex.device = Device::kCuda;
    ex.stream = c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
    return ex;
  }
#endif
  return Status::Unsupported("gradzip::libtorch: tensors on ", t.device().str(),
                             " are not supported by this build (CPU", GRADZIP_LIBTORCH_CUDA ? " and CUDA" : "",
                             " only); GradSync stages CUDA gradients through host memory");
}

namespace {

Status check_f32(const at::Tensor& t) {
  if (!t.defined()) return Status::InvalidArgument("gradzip::libtorch: tensor is undefined");
  if (t.scalar_type() != at::kFloat)
    return Status::InvalidArgument("gradzip::libtorch: expected a float32 tensor, got ", c10::toString(t.scalar_type()),
                                   " (convert with .to(at::kFloat))");
  if (!t.is_contiguous())
    return Status::InvalidArgument("gradzip::libtorch: tensor of shape ", t.sizes(),
                                   " is not contiguous (a view needs .contiguous(), which copies)");
  GZ_ASSIGN_OR_RETURN(Exec ex, exec_for(t));
  (void)ex;
  return Status::Ok();
}

}  // namespace

StatusOr<Span<float>> float_span(const at::Tensor& t) {
  GZ_RETURN_IF_ERROR(check_f32(t));
  return Span<float>(t.data_ptr<float>(), static_cast<std::size_t>(t.numel()));
}

StatusOr<Span<const float>> const_float_span(const at::Tensor& t) {
  GZ_RETURN_IF_ERROR(check_f32(t));
  return Span<const float>(t.data_ptr<float>(), static_cast<std::size_t>(t.numel()));
}

StatusOr<ConstBytes> byte_span(const at::Tensor& t) {
  if (!t.defined()) return Status::InvalidArgument("gradzip::libtorch: tensor is undefined");
  if (!t.device().is_cpu())
    return Status::InvalidArgument("gradzip::libtorch: byte tensor must be on the CPU, got ", t.device().str());
  if (t.scalar_type() != at::kByte)
    return Status::InvalidArgument("gradzip::libtorch: expected a uint8 tensor, got ", c10::toString(t.scalar_type()));
  if (!t.is_contiguous()) return Status::InvalidArgument("gradzip::libtorch: uint8 tensor is not contiguous");
  return ConstBytes(t.data_ptr<std::uint8_t>(), static_cast<std::size_t>(t.numel()));
}

double GradSyncMetrics::rel_error() const {
  return norm2 > 0 ? std::sqrt(err2 / norm2) : -1.0;
}

// ------------------------------------------------------------------------------------------------------- GradSync
namespace {

constexpr const char* kFormat = "gradzip.ddp.State/1";
using Segments = std::vector<std::pair<std::int64_t, std::int64_t>>;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

/// Joins adjacent (offset, length) pairs, as gradzip._comm.merge_segments.
Segments merge(const Segments& segs) {
  Segments out;
  for (const auto& [off, n] : segs) {
    if (!out.empty() && out.back().first + out.back().second == off)
      out.back().second += n;
    else
      out.emplace_back(off, n);
  }
  return out;
}

struct UnitRec {
  std::int64_t id = 0;
  std::vector<std::array<std::int64_t, 3>> keys;  // (bucket index, position, numel)
  std::int64_t numel = 0;
  std::shared_ptr<units::Unit> unit;
};

struct Bucket {
  std::vector<std::int64_t> params;  // indices into GradSync's parameter list, in bucket order
  std::vector<std::int64_t> offsets, numels;
  std::int64_t numel = 0;
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
  // Made at the first compressed step:
  std::unique_ptr<units::Plan> plan;  // null when every parameter travels raw
  Segments raw;                       // uncompressed segments (merged)
  std::vector<std::int64_t> raw_positions;
};

std::string join(const std::vector<std::int64_t>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// ---- IValue helpers (state dicts) ----
StatusOr<c10::IValue> field(const c10::impl::GenericDict& d, const char* name) {
  auto it = d.find(c10::IValue(std::string(name)));
  if (it == d.end()) return Status::InvalidArgument("state dict has no '", name, "' entry");
  return it->value();
}

StatusOr<std::int64_t> int_field(const c10::impl::GenericDict& d, const char* name) {
  GZ_ASSIGN_OR_RETURN(c10::IValue v, field(d, name));
  if (!v.isInt()) return Status::InvalidArgument("state dict entry '", name, "' is a ", v.tagKind(), ", not an int");
  return v.toInt();
}

StatusOr<std::string> str_field(const c10::impl::GenericDict& d, const char* name) {
  GZ_ASSIGN_OR_RETURN(c10::IValue v, field(d, name));
  if (!v.isString()) return Status::InvalidArgument("state dict entry '", name, "' is a ", v.tagKind(), ", not a str");
  return v.toStringRef();
}

StatusOr<std::vector<c10::IValue>> list_field(const c10::IValue& v, const std::string& what) {
  if (v.isList()) {
    const auto ref = v.toListRef();
    return std::vector<c10::IValue>(ref.begin(), ref.end());
  }
  if (v.isTuple()) {
    const auto& el = v.toTupleRef().elements();
    return std::vector<c10::IValue>(el.begin(), el.end());
  }
  return Status::InvalidArgument("state dict entry ", what, " is a ", v.tagKind(), ", not a list");
}

}  // namespace

struct GradSync::Impl {
  std::vector<at::Tensor> params;
  GradSyncOptions opt;
  Communicator* comm = nullptr;
  int rank = 0, world = 1;
  std::vector<Bucket> buckets;
  std::vector<std::vector<std::int64_t>> bucket_ids;
  std::vector<UnitRec> units;
  bool planned = false, verified = false;
  std::int64_t step = 0, next_uid = 0;
  GradSyncMetrics last, total;
  std::vector<std::uint8_t> slot, gathered;
  std::vector<float> linear;

  /// Units and plans of every bucket, as gradzip.ddp.State._build_plan makes them at the first compressed step
  /// (no saved units, no rebuild). ids: the unit ids to use in creation order (empty: next_uid, next_uid + 1, ...).
  Status make_plans(std::uint64_t seed, const std::vector<std::int64_t>& ids, std::vector<UnitRec>* out_units,
                    std::vector<std::unique_ptr<units::Plan>>* plans, std::vector<Segments>* raws,
                    std::vector<std::vector<std::int64_t>>* raw_pos, std::int64_t* next) const;
  void install(std::vector<UnitRec> u, std::vector<std::unique_ptr<units::Plan>> plans, std::vector<Segments> raws,
               std::vector<std::vector<std::int64_t>> raw_pos);
  Status sync_bucket(Bucket& b, bool warmup, GradSyncMetrics* m);
  Status verify();
  Status reduce_raw(at::Tensor& t, GradSyncMetrics* m);
};

Status GradSync::Impl::make_plans(std::uint64_t seed, const std::vector<std::int64_t>& ids,
                                  std::vector<UnitRec>* out_units, std::vector<std::unique_ptr<units::Plan>>* plans,
                                  std::vector<Segments>* raws, std::vector<std::vector<std::int64_t>>* raw_pos,
                                  std::int64_t* next) const {
  const std::int64_t min_numel = std::max<std::int64_t>(opt.min_compress_numel, 1);
  std::int64_t uid = next_uid;
  std::size_t made = 0;
  for (std::size_t bi = 0; bi < buckets.size(); ++bi) {
    const Bucket& b = buckets[bi];
    std::vector<std::vector<std::int64_t>> groups;  // positions of each unit
    std::vector<std::int64_t> raw;
    if (opt.granularity == "param") {
      for (std::size_t pos = 0; pos < b.params.size(); ++pos) {
        if (b.numels[pos] >= min_numel)
          groups.push_back({static_cast<std::int64_t>(pos)});
        else
          raw.push_back(static_cast<std::int64_t>(pos));
      }
    } else {
      std::vector<std::int64_t> all(b.params.size());
      for (std::size_t pos = 0; pos < all.size(); ++pos) all[pos] = static_cast<std::int64_t>(pos);
      if (b.numel >= min_numel)
        groups.push_back(all);
      else
        raw = all;
    }
    std::unique_ptr<units::Plan> plan;
    if (!groups.empty()) {
      GZ_ASSIGN_OR_RETURN(plan, units::Plan::create(b.numel, world));
    }
    for (const auto& g : groups) {
      UnitRec rec;
      rec.id = made < ids.size() ? ids[made] : uid++;
      ++made;
      Segments segs;
      for (std::int64_t pos : g) {
        rec.keys.push_back({static_cast<std::int64_t>(bi), pos, b.numels[pos]});
        rec.numel += b.numels[pos];
        segs.emplace_back(b.offsets[pos], b.numels[pos]);
      }
      auto u = units::Unit::create(opt.compressor, opt.feedback, rec.numel, rank, world, seed, rec.id, 1.0);
      if (!u.ok())
        return Status(u.status().code(), "GradSync: unit " + std::to_string(rec.id) + " (bucket " + std::to_string(bi) +
                                             "): " + u.status().message());
      rec.unit = std::shared_ptr<units::Unit>(std::move(u).value());
      std::vector<std::int64_t> flat;
      for (const auto& [o, n] : merge(segs)) {
        flat.push_back(o);
        flat.push_back(n);
      }
      GZ_RETURN_IF_ERROR(plan->add(rec.unit, Span<const std::int64_t>(flat.data(), flat.size())));
      out_units->push_back(std::move(rec));
    }
    Segments rs;
    for (std::int64_t pos : raw) rs.emplace_back(b.offsets[pos], b.numels[pos]);
    plans->push_back(std::move(plan));
    raws->push_back(merge(rs));
    raw_pos->push_back(raw);
  }
  *next = std::max(uid, next_uid);
  return Status::Ok();
}

void GradSync::Impl::install(std::vector<UnitRec> u, std::vector<std::unique_ptr<units::Plan>> plans,
                             std::vector<Segments> raws, std::vector<std::vector<std::int64_t>> raw_pos) {
  units = std::move(u);
  for (std::size_t i = 0; i < buckets.size(); ++i) {
    buckets[i].plan = std::move(plans[i]);
    buckets[i].raw = std::move(raws[i]);
    buckets[i].raw_positions = std::move(raw_pos[i]);
  }
  planned = true;
}

Status GradSync::Impl::reduce_raw(at::Tensor& t, GradSyncMetrics* m) {
  // t (contiguous, CPU, the wire dtype) <- sum over ranks. float32 travels by the engine's all-reduce; other dtypes
  // by an allgather and a sum in rank order in that dtype (MPI has no float16 reduction).
  const double nbytes = static_cast<double>(t.numel() * t.element_size());
  const auto t0 = Clock::now();
  if (t.scalar_type() == at::kFloat) {
    GZ_RETURN_IF_ERROR(comm->allreduce_sum(Span<float>(t.data_ptr<float>(), static_cast<std::size_t>(t.numel())), {}));
  } else {
    const std::size_t nb = static_cast<std::size_t>(nbytes);
    at::Tensor all = at::empty({static_cast<std::int64_t>(nb) * world}, at::kByte);
    GZ_RETURN_IF_ERROR(comm->allgather(ConstBytes(static_cast<const std::uint8_t*>(t.data_ptr()), nb),
                                       MutableBytes(all.data_ptr<std::uint8_t>(), nb * world), {}));
    at::Tensor parts = all.view(t.scalar_type()).view({world, t.numel()});
    at::Tensor acc = parts[0].clone();
    for (int r = 1; r < world; ++r) acc = acc + parts[r];
    t.copy_(acc);
  }
  m->comm_s += seconds_since(t0);
  m->bytes_sent += nbytes;
  m->bytes_received += (world - 1) * nbytes;
  return Status::Ok();
}

Status GradSync::Impl::sync_bucket(Bucket& b, bool warmup, GradSyncMetrics* m) {
  // Flatten the gradients (the bucket's dtype, host memory).
  std::vector<at::Tensor> flat_parts;
  for (std::int64_t i : b.params) {
    at::Tensor& p = params[static_cast<std::size_t>(i)];
    if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
    flat_parts.push_back(p.grad().detach().reshape({-1}));
  }
  at::Tensor flat = at::cat(flat_parts).to(at::kCPU).contiguous();
  m->raw_bytes += static_cast<double>(flat.numel() * flat.element_size());

  units::Plan* plan = warmup ? nullptr : b.plan.get();
  const Segments whole{{0, b.numel}};
  const Segments& raw = warmup ? whole : b.raw;
  at::Tensor cbuf;
  if (plan != nullptr) {
    m->compressed_buckets += 1;
    cbuf = flat.scalar_type() == at::kFloat ? flat : flat.to(at::kFloat).contiguous();
    float* x = cbuf.data_ptr<float>();
    auto t0 = Clock::now();
    if (plan->linear_step()) {
      GZ_RETURN_IF_ERROR(plan->encode_linear(x, &linear, opt.track_error));
      m->encode_s += seconds_since(t0);
      t0 = Clock::now();
      GZ_RETURN_IF_ERROR(comm->allreduce_sum(Span<float>(linear.data(), linear.size()), {}));
      m->comm_s += seconds_since(t0);
      const double sent = 4.0 * static_cast<double>(linear.size());
      m->bytes_sent += sent;
      m->bytes_received += (world - 1) * sent;
      t0 = Clock::now();
      GZ_RETURN_IF_ERROR(plan->decode_linear(Span<const float>(linear.data(), linear.size()), x));
      m->decode_s += seconds_since(t0);
    } else {
      const std::size_t cap = plan->slot_bytes();
      slot.resize(cap);
      GZ_RETURN_IF_ERROR(plan->encode(x, slot.data(), cap, opt.track_error));
      m->encode_s += seconds_since(t0);
      std::vector<ConstBytes> slots;
      t0 = Clock::now();
      if (plan->variable_size()) {
        // Exact sizes instead of the Python hook's max-agreed slot: the same payloads, fewer bytes.
        std::vector<std::size_t> sizes;
        GZ_RETURN_IF_ERROR(comm->allgatherv(ConstBytes(slot.data(), plan->used_bytes()), gathered, sizes, {}));
        std::size_t pos = 0, others = 0;
        for (std::size_t r = 0; r < sizes.size(); ++r) {
          slots.emplace_back(gathered.data() + pos, sizes[r]);
          pos += sizes[r];
          if (static_cast<int>(r) != rank) others += sizes[r];
        }
        m->bytes_sent += static_cast<double>(plan->used_bytes());
        m->bytes_received += static_cast<double>(others);
      } else {
        gathered.resize(cap * static_cast<std::size_t>(world));
        GZ_RETURN_IF_ERROR(
            comm->allgather(ConstBytes(slot.data(), cap), MutableBytes(gathered.data(), gathered.size()), {}));
        for (int r = 0; r < world; ++r) slots.emplace_back(gathered.data() + static_cast<std::size_t>(r) * cap, cap);
        m->bytes_sent += static_cast<double>(cap);
        m->bytes_received += static_cast<double>((world - 1) * cap);
      }
      m->comm_s += seconds_since(t0);
      t0 = Clock::now();
      GZ_RETURN_IF_ERROR(plan->decode(Span<const ConstBytes>(slots.data(), slots.size()), x));
      m->decode_s += seconds_since(t0);
    }
    m->payload_bytes += static_cast<double>(plan->used_bytes());
    m->err2 += plan->last_err2();
    m->norm2 += plan->last_norm2();
  }

  at::Tensor t;
  if (!raw.empty()) {
    m->uncompressed_buckets += 1;
    // As gradzip._comm.launch: the raw segments (in the wire dtype) divided by world, summed over ranks.
    const at::ScalarType wire = (!warmup && opt.small_dtype == "fp16") ? at::kHalf : flat.scalar_type();
    std::vector<at::Tensor> parts;
    for (const auto& [o, n] : raw) parts.push_back(flat.narrow(0, o, n));
    t = (parts.size() == 1 ? parts[0].clone() : at::cat(parts)).to(wire).contiguous();
    t.div_(world);
    GZ_RETURN_IF_ERROR(reduce_raw(t, m));
  }
  // Write back: the compressed units' direction, then the raw segments.
  if (plan != nullptr && cbuf.data_ptr() != flat.data_ptr()) flat.copy_(cbuf);
  if (t.defined()) {
    std::int64_t pos = 0;
    for (const auto& [o, n] : raw) {
      flat.narrow(0, o, n).copy_(t.narrow(0, pos, n));
      pos += n;
    }
  }
  for (std::size_t j = 0; j < b.params.size(); ++j) {
    at::Tensor& g = params[static_cast<std::size_t>(b.params[j])].mutable_grad();
    g.copy_(flat.narrow(0, b.offsets[j], b.numels[j]).view(g.sizes()));
  }
  return Status::Ok();
}

Status GradSync::Impl::verify() {
  // Ranks that disagree on anything that shapes the exchange (or on their step counters after a load) would
  // exchange mismatched payloads or silently diverge: compare a hash of all of it first, like SyncSession's
  // descriptor check. Every rank sees every hash, so all get the same kMismatch.
  std::string d = opt.compressor + "|" + opt.feedback + "|" + opt.granularity + "|" + opt.small_dtype + "|" +
                  std::to_string(opt.warmup_steps) + "|" + std::to_string(opt.min_compress_numel) + "|" +
                  std::to_string(opt.seed) + "|" + std::to_string(step) + "|" + std::to_string(world);
  for (const Bucket& b : buckets) {
    d += "|" + std::string(c10::toString(b.dtype));
    for (std::size_t j = 0; j < b.params.size(); ++j)
      d += "," + std::to_string(b.params[j]) + ":" + std::to_string(b.numels[j]);
  }
  for (const UnitRec& u : units) d += "|u" + std::to_string(u.id) + ":" + std::to_string(u.numel);
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a 64
  for (unsigned char c : d) h = (h ^ c) * 1099511628211ull;
  std::vector<std::uint64_t> all(static_cast<std::size_t>(world));
  GZ_RETURN_IF_ERROR(comm->allgather(ConstBytes(reinterpret_cast<const std::uint8_t*>(&h), sizeof(h)),
                                     MutableBytes(reinterpret_cast<std::uint8_t*>(all.data()), all.size() * sizeof(h)),
                                     {}));
  for (int r = 1; r < world; ++r)
    if (all[static_cast<std::size_t>(r)] != all[0])
      return Status::Mismatch("GradSync: rank ", r,
                              " disagrees with rank 0 on the configuration (compressor, "
                              "feedback, granularity, small_dtype, warmup_steps, min_compress_numel, seed, buckets "
                              "and parameter sizes, units, or the step counter after a load)");
  verified = true;
  return Status::Ok();
}

GradSync::GradSync() : impl_(std::make_unique<Impl>()) {}
GradSync::~GradSync() = default;

StatusOr<std::unique_ptr<GradSync>> GradSync::create(std::vector<at::Tensor> params, GradSyncOptions o,
                                                     Communicator& comm) {
  if (o.warmup_steps < 0) return Status::InvalidArgument("GradSync: warmup_steps=", o.warmup_steps, " must be >= 0");
  if (o.min_compress_numel < 0)
    return Status::InvalidArgument("GradSync: min_compress_numel=", o.min_compress_numel, " must be >= 0");
  if (o.granularity != "bucket" && o.granularity != "param")
    return Status::InvalidArgument("GradSync: granularity='", o.granularity, "' must be 'bucket' or 'param'");
  if (o.small_dtype != "fp32" && o.small_dtype != "fp16")
    return Status::InvalidArgument("GradSync: small_dtype='", o.small_dtype, "' must be 'fp32' or 'fp16'");
  if (o.seed >= (std::uint64_t{1} << 63))
    return Status::InvalidArgument("GradSync: seed=", o.seed, " must be < 2^63 (state dicts store an int64)");
  if (o.bucket_cap_bytes < 1)
    return Status::InvalidArgument("GradSync: bucket_cap_bytes=", o.bucket_cap_bytes, " must be >= 1");
  if (params.empty()) return Status::InvalidArgument("GradSync: no parameters");
  // Canonical specs and the pairing check, as gradzip.ddp.State does (a representative size; every unit checks again).
  {
    auto codec = parse_compressor(o.compressor);
    if (!codec.ok()) return Status(codec.status().code(), "GradSync: " + codec.status().message());
    auto fb = parse_feedback(o.feedback);
    if (!fb.ok()) return Status(fb.status().code(), "GradSync: " + fb.status().message());
    const Status s =
        check_pairing(*fb, **codec, static_cast<std::size_t>(std::max<std::int64_t>(o.min_compress_numel, 1 << 16)));
    if (!s.ok()) return Status(s.code(), "GradSync: " + s.message());
    o.compressor = (*codec)->spec();
    o.feedback = feedback_spec(*fb);
  }
  for (std::size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    if (!p.defined()) return Status::InvalidArgument("GradSync: parameter ", i, " is undefined");
    if (!at::isFloatingType(p.scalar_type()))
      return Status::InvalidArgument("GradSync: parameter ", i, " is ", c10::toString(p.scalar_type()),
                                     ", not floating point");
    if (p.numel() == 0) return Status::InvalidArgument("GradSync: parameter ", i, " is empty");
    if (!p.device().is_cpu() && !p.device().is_cuda())
      return Status::InvalidArgument("GradSync: parameter ", i, " is on ", p.device().str(), " (CPU or CUDA only)");
  }
  std::unique_ptr<GradSync> g(new GradSync());
  Impl& im = *g->impl_;
  im.params = std::move(params);
  im.comm = &comm;
  im.rank = comm.rank();
  im.world = comm.size();
  const std::int64_t np = static_cast<std::int64_t>(im.params.size());
  if (o.buckets.empty()) {
    std::vector<std::int64_t> cur;
    std::int64_t bytes = 0;
    // DDP's rule (compute_bucket_assignment_by_size): a bucket closes once it reaches the cap, so it may exceed it
    // by its last parameter; a dtype or device change closes it too.
    for (std::int64_t i = np - 1; i >= 0; --i) {
      const at::Tensor& p = im.params[static_cast<std::size_t>(i)];
      if (!cur.empty()) {
        const at::Tensor& q = im.params[static_cast<std::size_t>(cur.back())];
        if (q.scalar_type() != p.scalar_type() || q.device() != p.device()) {
          o.buckets.push_back(cur);
          cur.clear();
          bytes = 0;
        }
      }
      cur.push_back(i);
      bytes += p.numel() * static_cast<std::int64_t>(p.element_size());
      if (bytes >= o.bucket_cap_bytes) {
        o.buckets.push_back(cur);
        cur.clear();
        bytes = 0;
      }
    }
    if (!cur.empty()) o.buckets.push_back(cur);
  } else {
    std::vector<int> seen(static_cast<std::size_t>(np), 0);
    for (std::size_t bi = 0; bi < o.buckets.size(); ++bi) {
      if (o.buckets[bi].empty()) return Status::InvalidArgument("GradSync: bucket ", bi, " is empty");
      for (std::int64_t i : o.buckets[bi]) {
        if (i < 0 || i >= np)
          return Status::InvalidArgument("GradSync: bucket ", bi, " names parameter ", i, ", outside [0, ", np, ")");
        if (seen[static_cast<std::size_t>(i)]++)
          return Status::InvalidArgument("GradSync: parameter ", i, " is in more than one bucket (or twice)");
        const at::Tensor& first = im.params[static_cast<std::size_t>(o.buckets[bi][0])];
        const at::Tensor& p = im.params[static_cast<std::size_t>(i)];
        if (p.scalar_type() != first.scalar_type() || p.device() != first.device())
          return Status::InvalidArgument("GradSync: bucket ", bi, " mixes ", c10::toString(first.scalar_type()), " on ",
                                         first.device().str(), " and ", c10::toString(p.scalar_type()), " on ",
                                         p.device().str());
      }
    }
    for (std::int64_t i = 0; i < np; ++i)
      if (!seen[static_cast<std::size_t>(i)])
        return Status::InvalidArgument("GradSync: parameter ", i, " is in no bucket");
  }
  for (const auto& ids : o.buckets) {
    Bucket b;
    b.params = ids;
    for (std::int64_t i : ids) {
      const at::Tensor& p = im.params[static_cast<std::size_t>(i)];
      b.offsets.push_back(b.numel);
      b.numels.push_back(p.numel());
      b.numel += p.numel();
      b.dtype = p.scalar_type();
      b.device = p.device();
    }
    im.buckets.push_back(std::move(b));
  }
  im.bucket_ids = o.buckets;
  im.opt = std::move(o);
  return g;
}

Status GradSync::step() {
  Impl& im = *impl_;
  GradSyncMetrics m;
  m.steps = 1;
  const bool warmup = im.step < im.opt.warmup_steps;
  try {
    if (!im.verified) GZ_RETURN_IF_ERROR(im.verify());
    if (!warmup && !im.planned) {
      std::vector<UnitRec> u;
      std::vector<std::unique_ptr<units::Plan>> plans;
      std::vector<Segments> raws;
      std::vector<std::vector<std::int64_t>> raw_pos;
      std::int64_t next = 0;
      GZ_RETURN_IF_ERROR(im.make_plans(im.opt.seed, {}, &u, &plans, &raws, &raw_pos, &next));
      im.next_uid = next;
      im.install(std::move(u), std::move(plans), std::move(raws), std::move(raw_pos));
    }
    for (std::size_t bi = 0; bi < im.buckets.size(); ++bi) {
      const Status s = im.sync_bucket(im.buckets[bi], warmup, &m);
      if (!s.ok())
        return Status(s.code(), "GradSync.step " + std::to_string(im.step) + ", bucket " + std::to_string(bi) + ": " +
                                    s.message());
    }
  } catch (const std::exception& e) {
    return Status::Internal("GradSync.step ", im.step, ": torch raised: ", e.what());
  }
  im.step += 1;
  im.last = m;
  GradSyncMetrics& t = im.total;
  t.steps += 1;
  t.bytes_sent += m.bytes_sent;
  t.bytes_received += m.bytes_received;
  t.raw_bytes += m.raw_bytes;
  t.payload_bytes += m.payload_bytes;
  t.err2 += m.err2;
  t.norm2 += m.norm2;
  t.encode_s += m.encode_s;
  t.comm_s += m.comm_s;
  t.decode_s += m.decode_s;
  t.compressed_buckets += m.compressed_buckets;
  t.uncompressed_buckets += m.uncompressed_buckets;
  return Status::Ok();
}

std::int64_t GradSync::steps() const {
  return impl_->step;
}
const GradSyncMetrics& GradSync::metrics() const {
  return impl_->last;
}
const GradSyncMetrics& GradSync::totals() const {
  return impl_->total;
}
const GradSyncOptions& GradSync::options() const {
  return impl_->opt;
}
const std::vector<std::vector<std::int64_t>>& GradSync::buckets() const {
  return impl_->bucket_ids;
}
std::size_t GradSync::num_units() const {
  return impl_->units.size();
}

// ------------------------------------------------------------------------------------------------------- state
StatusOr<c10::IValue> GradSync::state_dict() const {
  const Impl& im = *impl_;
  try {
    c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
    d.insert(std::string("format"), std::string(kFormat));
    d.insert(std::string("writer"), std::string("gradzip::libtorch::GradSync"));  // ddp.py matches its units by order
    d.insert(std::string("compressor"), im.opt.compressor);
    d.insert(std::string("feedback"), im.opt.feedback);
    d.insert(std::string("seed"), static_cast<std::int64_t>(im.opt.seed));
    d.insert(std::string("rank"), static_cast<std::int64_t>(im.rank));
    d.insert(std::string("world_size"), static_cast<std::int64_t>(im.world));
    d.insert(std::string("step"), im.step);
    d.insert(std::string("next_unit_id"), im.next_uid);
    d.insert(std::string("warmup_steps"), im.opt.warmup_steps);
    d.insert(std::string("min_compress_numel"), im.opt.min_compress_numel);
    c10::impl::GenericList units(c10::AnyType::get());
    for (const UnitRec& u : im.units) {
      c10::impl::GenericDict ud(c10::StringType::get(), c10::AnyType::get());
      ud.insert(std::string("id"), u.id);
      c10::impl::GenericList keys(c10::AnyType::get());
      for (const auto& k : u.keys) keys.push_back(c10::List<std::int64_t>({k[0], k[1], k[2]}));
      ud.insert(std::string("keys"), keys);
      ud.insert(std::string("numel"), u.numel);
      const units::Unit::State s = u.unit->state();
      c10::List<at::Tensor> blobs;
      for (const auto* v : {&s.worker, &s.aggregator, &s.codec}) {
        at::Tensor t = at::empty({static_cast<std::int64_t>(v->size())}, at::kByte);
        if (!v->empty()) std::memcpy(t.data_ptr<std::uint8_t>(), v->data(), v->size());
        blobs.push_back(t);
      }
      ud.insert(std::string("state"), blobs);
      units.push_back(ud);
    }
    d.insert(std::string("units"), units);
    c10::impl::GenericList raw_keys(c10::AnyType::get());
    if (im.planned) {
      for (std::size_t bi = 0; bi < im.buckets.size(); ++bi)
        for (std::int64_t pos : im.buckets[bi].raw_positions)
          raw_keys.push_back(c10::List<std::int64_t>({static_cast<std::int64_t>(bi), pos, im.buckets[bi].numels[pos]}));
    }
    d.insert(std::string("raw_keys"), raw_keys);
    return c10::IValue(d);
  } catch (const std::exception& e) {
    return Status::Internal("GradSync.state_dict: torch raised: ", e.what());
  }
}

Status GradSync::load_state_dict(const c10::IValue& sd) {
  Impl& im = *impl_;
  try {
    if (!sd.isGenericDict())
      return Status::InvalidArgument("GradSync.load_state_dict: not a ", kFormat, " state dict (a ", sd.tagKind(), ")");
    const c10::impl::GenericDict d = sd.toGenericDict();
    auto fmt = str_field(d, "format");
    if (!fmt.ok() || *fmt != kFormat)
      return Status::InvalidArgument("GradSync.load_state_dict: not a ", kFormat,
                                     " state dict (format=", fmt.ok() ? *fmt : fmt.status().message(), ")");
    GZ_ASSIGN_OR_RETURN(const std::string compressor, str_field(d, "compressor"));
    GZ_ASSIGN_OR_RETURN(const std::string feedback, str_field(d, "feedback"));
    if (compressor != im.opt.compressor || feedback != im.opt.feedback)
      return Status::InvalidArgument("GradSync.load_state_dict: the state was saved with compressor='", compressor,
                                     "', feedback='", feedback, "', but this GradSync runs compressor='",
                                     im.opt.compressor, "', feedback='", im.opt.feedback, "'");
    GZ_ASSIGN_OR_RETURN(const std::int64_t rank, int_field(d, "rank"));
    GZ_ASSIGN_OR_RETURN(const std::int64_t world, int_field(d, "world_size"));
    if (rank != im.rank || world != im.world)
      return Status::InvalidArgument("GradSync.load_state_dict: the state belongs to rank ", rank, " of ", world,
                                     ", this is rank ", im.rank, " of ", im.world,
                                     " (feedback memories are per rank: load each rank's own file)");
    GZ_ASSIGN_OR_RETURN(const std::int64_t seed, int_field(d, "seed"));
    GZ_ASSIGN_OR_RETURN(const std::int64_t step, int_field(d, "step"));
    GZ_ASSIGN_OR_RETURN(const std::int64_t next_uid, int_field(d, "next_unit_id"));
    if (seed < 0 || step < 0 || next_uid < 0)
      return Status::InvalidArgument("GradSync.load_state_dict: seed=", seed, ", step=", step,
                                     ", next_unit_id=", next_uid, " must be >= 0");
    GZ_ASSIGN_OR_RETURN(const c10::IValue units_v, field(d, "units"));
    GZ_ASSIGN_OR_RETURN(std::vector<c10::IValue> recs, list_field(units_v, "'units'"));
    struct Saved {
      std::int64_t id, numel;
      std::vector<at::Tensor> blobs;
    };
    std::vector<Saved> saved;
    for (std::size_t i = 0; i < recs.size(); ++i) {
      if (!recs[i].isGenericDict())
        return Status::InvalidArgument("GradSync.load_state_dict: units[", i, "] is not a dict");
      const c10::impl::GenericDict r = recs[i].toGenericDict();
      Saved s;
      GZ_ASSIGN_OR_RETURN(s.id, int_field(r, "id"));
      GZ_ASSIGN_OR_RETURN(s.numel, int_field(r, "numel"));
      GZ_ASSIGN_OR_RETURN(const c10::IValue st, field(r, "state"));
      GZ_ASSIGN_OR_RETURN(std::vector<c10::IValue> blobs, list_field(st, "units[].state"));
      if (blobs.size() != 3)
        return Status::InvalidArgument("GradSync.load_state_dict: unit ", s.id, " state holds ", blobs.size(),
                                       " entries, expected 3 [worker, aggregator, codec]");
      for (const auto& b : blobs) {
        if (!b.isTensor())
          return Status::InvalidArgument("GradSync.load_state_dict: unit ", s.id, " state entry is a ", b.tagKind());
        s.blobs.push_back(b.toTensor().to(at::kCPU).contiguous());
      }
      saved.push_back(std::move(s));
    }
    std::sort(saved.begin(), saved.end(), [](const Saved& a, const Saved& b) { return a.id < b.id; });

    // Make the units this layout gives (with the saved ids as random streams), then check they match.
    std::vector<std::int64_t> ids;
    for (const auto& s : saved) ids.push_back(s.id);
    std::vector<UnitRec> u;
    std::vector<std::unique_ptr<units::Plan>> plans;
    std::vector<Segments> raws;
    std::vector<std::vector<std::int64_t>> raw_pos;
    std::int64_t next = 0;
    const bool compressed = step >= im.opt.warmup_steps;
    if (compressed || !saved.empty())
      GZ_RETURN_IF_ERROR(im.make_plans(static_cast<std::uint64_t>(seed), ids, &u, &plans, &raws, &raw_pos, &next));
    if (compressed || !saved.empty()) {
      std::vector<std::int64_t> want, have;
      for (const auto& x : saved) have.push_back(x.numel);
      for (const auto& x : u) want.push_back(x.numel);
      if (want != have)
        return Status::InvalidArgument("GradSync.load_state_dict: the state holds ", have.size(),
                                       " unit(s) with numel ", join(have), ", this GradSync makes ", want.size(),
                                       " with numel ", join(want),
                                       " (another model, bucket layout, granularity or min_compress_numel?)");
      for (std::size_t i = 0; i < u.size(); ++i) {
        auto b0 = byte_span(saved[i].blobs[0]);
        auto b1 = byte_span(saved[i].blobs[1]);
        auto b2 = byte_span(saved[i].blobs[2]);
        if (!b0.ok() || !b1.ok() || !b2.ok())
          return Status::InvalidArgument("GradSync.load_state_dict: unit ", saved[i].id,
                                         " state must be 3 uint8 tensors");
        const Status ls = u[i].unit->load_state(*b0, *b1, *b2);
        if (!ls.ok())
          return Status(ls.code(),
                        "GradSync.load_state_dict: unit " + std::to_string(saved[i].id) + ": " + ls.message());
      }
    }
    // Commit.
    im.opt.seed = static_cast<std::uint64_t>(seed);
    im.step = step;
    im.next_uid = std::max(next_uid, next);
    im.verified = false;  // the ranks check again that they resumed alike
    if (compressed || !saved.empty()) {
      im.install(std::move(u), std::move(plans), std::move(raws), std::move(raw_pos));
    } else {
      im.units.clear();
      for (auto& b : im.buckets) {
        b.plan.reset();
        b.raw.clear();
        b.raw_positions.clear();
      }
      im.planned = false;
    }
    return Status::Ok();
  } catch (const std::exception& e) {
    return Status::Internal("GradSync.load_state_dict: torch raised: ", e.what());
  }
}

Status GradSync::save(const std::string& path) const {
  GZ_ASSIGN_OR_RETURN(const c10::IValue sd, state_dict());
  std::vector<char> bytes;
  try {
    bytes = torch::jit::pickle_save(sd);
  } catch (const std::exception& e) {
    return Status::Internal("GradSync.save: torch raised: ", e.what());
  }
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return Status::InvalidArgument("GradSync.save: cannot open '", path, "' for writing");
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  f.close();
  if (!f) return Status::InvalidArgument("GradSync.save: writing '", path, "' failed");
  return Status::Ok();
}

Status GradSync::load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Status::InvalidArgument("GradSync.load: cannot open '", path, "'");
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  c10::IValue sd;
  try {
    sd = torch::jit::pickle_load(bytes);
  } catch (const std::exception& e) {
    return Status::InvalidArgument("GradSync.load: '", path, "' is not a torch.save / GradSync.save file: ", e.what());
  }
  return load_state_dict(sd);
}

}  // namespace gradzip::libtorch
