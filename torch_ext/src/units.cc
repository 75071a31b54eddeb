// Compression units and buffer plans (units.h): shared by the Python DDP hook and the LibTorch helper.
#include "gradzip/torch_ext/units.h"

#include <cmath>
#include <cstring>
#include <string>
#include <utility>

#include "gradzip/compressors/registry.h"
#include "gradzip/compressors/state_io.h"

namespace gradzip::units {

// ------------------------------------------------------------------------------------------------------------ Unit
StatusOr<std::unique_ptr<Unit>> Unit::create(const std::string& compressor, const std::string& feedback,
                                             std::int64_t numel, std::int64_t rank, std::int64_t world,
                                             std::uint64_t seed, std::int64_t stream, double gamma) {
  if (numel < 1 || numel >= (std::int64_t{1} << 32))
    return Status::InvalidArgument("numel=", numel, " must be in [1, 2^32)");
  if (world < 1) return Status::InvalidArgument("world=", world, " must be >= 1");
  if (rank < 0 || rank >= world) return Status::InvalidArgument("rank=", rank, " must be in [0, world=", world, ")");
  if (!(std::isfinite(gamma) && gamma > 0.0))
    return Status::InvalidArgument("gamma=", gamma, " must be finite and > 0");
  if (stream < 0 || stream > 0xFFFFFFFFll) return Status::InvalidArgument("stream=", stream, " must be in [0, 2^32)");
  std::unique_ptr<Unit> u(new Unit());
  u->n_ = static_cast<std::size_t>(numel);
  u->gamma_ = static_cast<float>(gamma);
  u->key_.seed = seed;
  u->key_.step = 0;
  u->key_.rank = static_cast<std::uint32_t>(rank);
  u->key_.stream = static_cast<std::uint32_t>(stream);
  GZ_ASSIGN_OR_RETURN(std::unique_ptr<Compressor> codec, parse_compressor(compressor));
  u->codec_ = std::shared_ptr<const Compressor>(std::move(codec));
  GZ_ASSIGN_OR_RETURN(std::unique_ptr<Compressor> ident, parse_compressor("identity"));
  u->identity_ = std::shared_ptr<const Compressor>(std::move(ident));
  GZ_ASSIGN_OR_RETURN(u->cfg_, parse_feedback(feedback));
  GZ_RETURN_IF_ERROR(u->codec_->check(DType::kF32, u->n_));
  GZ_RETURN_IF_ERROR(check_pairing(u->cfg_, *u->codec_, u->n_));
  const CompressorTraits t = u->codec_->traits(u->n_);
  u->linear_ = t.linear;
  if (t.stateful) {
    if (u->codec_->name() != "lowrank")
      return Status::InvalidArgument("stateful codec '", u->codec_->spec(),
                                     "' is not supported (only lowrank keeps state)");
    u->lowrank_ = std::make_unique<LowRankState>();
  }
  // QSGD's Elias coding is the only variable-length body; every other codec writes exactly its bound.
  u->variable_ = u->codec_->spec().find("coding=elias") != std::string::npos;
  GZ_RETURN_IF_ERROR(u->make_feedback(&u->worker_, &u->aggregator_));
  u->payload_.assign(u->worker_->max_payload_bytes(), 0);
  return u;
}

Unit::~Unit() = default;

std::uint64_t Unit::steps() const {
  return worker_->steps();
}
std::string Unit::compressor_spec() const {
  return codec_->spec();
}
std::string Unit::feedback_spec() const {
  return gradzip::feedback_spec(cfg_);
}
Span<const float> Unit::error() const {
  return worker_->error();
}
Span<const float> Unit::estimate() const {
  return worker_->estimate();
}
Span<const float> Unit::shared_estimate() const {
  return aggregator_->estimate();
}

Status Unit::make_feedback(std::unique_ptr<FeedbackWorker>* w, std::unique_ptr<FeedbackAggregator>* a) const {
  GZ_ASSIGN_OR_RETURN(*w, FeedbackWorker::create(cfg_, codec_, n_));
  GZ_ASSIGN_OR_RETURN(*a, FeedbackAggregator::create(cfg_, codec_, n_));
  return Status::Ok();
}

Unit::State Unit::state() const {
  StateWriter w, a;
  worker_->save(w);
  aggregator_->save(a);
  State s;
  if (lowrank_ != nullptr) {
    // A copy holds the current Q in `q` also when the last encode left it in device memory (LowRankState's copy
    // downloads it); cheap: n x r floats, and states are saved rarely.
    const LowRankState q(*lowrank_);
    StateWriter cw;
    cw.put_u64("lowrank_rows", q.rows);
    cw.put_u64("lowrank_cols", q.cols);
    cw.put_u64("lowrank_rank", q.rank);
    cw.put_floats("lowrank_q", Span<const float>(q.q.data(), q.q.size()));
    s.codec = cw.take();
  }
  s.worker = w.take();
  s.aggregator = a.take();
  return s;
}

Status Unit::load_state(ConstBytes worker, ConstBytes aggregator, ConstBytes codec) {
  std::unique_ptr<FeedbackWorker> w;
  std::unique_ptr<FeedbackAggregator> a;
  GZ_RETURN_IF_ERROR(make_feedback(&w, &a));
  {
    StateReader r(worker, "Unit.load_state(worker)");
    GZ_RETURN_IF_ERROR(w->load(r));
    GZ_RETURN_IF_ERROR(r.finish());
  }
  {
    StateReader r(aggregator, "Unit.load_state(aggregator)");
    GZ_RETURN_IF_ERROR(a->load(r));
    GZ_RETURN_IF_ERROR(r.finish());
  }
  if (w->steps() != a->steps())
    return Status::InvalidArgument("worker is at step ", w->steps(), " but the aggregator at step ", a->steps(),
                                   " (state of two different units?)");
  std::unique_ptr<LowRankState> lr;
  if (lowrank_ != nullptr) {
    lr = std::make_unique<LowRankState>();
    if (!codec.empty()) {
      StateReader r(codec, "Unit.load_state(lowrank)");
      std::uint64_t rows = 0, cols = 0, rank = 0;
      GZ_RETURN_IF_ERROR(r.get_u64("lowrank_rows", &rows));
      GZ_RETURN_IF_ERROR(r.get_u64("lowrank_cols", &cols));
      GZ_RETURN_IF_ERROR(r.get_u64("lowrank_rank", &rank));
      if (!(cols <= n_ && rank <= n_ && rows <= n_))
        return Status::InvalidArgument("lowrank state ", rows, "x", cols, " rank ", rank, " does not fit numel=", n_);
      GZ_RETURN_IF_ERROR(r.get_floats_any("lowrank_q", &lr->q, static_cast<std::size_t>(cols * rank)));
      if (lr->q.size() != cols * rank)
        return Status::InvalidArgument("lowrank q holds ", lr->q.size(), " floats, expected cols*rank=", cols * rank);
      GZ_RETURN_IF_ERROR(r.finish());
      lr->rows = rows;
      lr->cols = cols;
      lr->rank = static_cast<std::uint32_t>(rank);
    }
  } else if (!codec.empty()) {
    return Status::InvalidArgument("codec state given but '", codec_->spec(), "' keeps none");
  }
  worker_ = std::move(w);
  aggregator_ = std::move(a);
  lowrank_ = std::move(lr);
  return Status::Ok();
}

bool Unit::identity_step() const {
  // feedback.h: EF21/EControl with init=uncompressed send g_0 as an identity payload at step 0.
  return worker_->steps() == 0 && cfg_.init == FeedbackInit::kUncompressed &&
         (cfg_.kind == FeedbackKind::kEF21 || cfg_.kind == FeedbackKind::kEControl);
}

std::size_t Unit::step_max_bytes() const {
  return identity_step() ? identity_->max_encoded_bytes(n_) : codec_->max_encoded_bytes(n_);
}

Status Unit::encode_into(const float* x, std::uint8_t* out, std::size_t cap, std::size_t* written, bool track,
                         double* err2, double* norm2) {
  const bool ident = identity_step();
  const std::uint32_t step_before = static_cast<std::uint32_t>(worker_->steps());
  if (track && !ident) compute_codec_input(x);
  Exec ex;
  ex.rng = key_;
  ex.state = lowrank_.get();
  // The worker wants room for its largest payload (the uncompressed first step), so it writes into payload_ and
  // the (usually much smaller) payload of this step is copied into the caller's slot.
  const Status st =
      worker_->step(Span<const float>(x, n_), gamma_, MutableBytes(payload_.data(), payload_.size()), written, ex);
  if (!st.ok()) return Status(st.code(), "unit " + std::to_string(key_.stream) + ": " + st.message());
  if (*written > cap)
    return Status::Internal("unit ", key_.stream, " wrote ", *written, " bytes, more than the ", cap,
                            " bytes reserved for this step");
  std::memcpy(out, payload_.data(), *written);
  std::memcpy(header_, out, kHeaderBytes);
  body_bytes_ = *written - kHeaderBytes;
  last_identity_ = ident;
  if (!track) return Status::Ok();
  double nv = 0.0, ne = 0.0;
  if (ident) {
    for (std::size_t i = 0; i < n_; ++i) nv += static_cast<double>(x[i]) * x[i];
  } else {
    dec_.resize(n_);
    Exec dex;
    dex.rng = key_;
    dex.rng.step = step_before;
    const Status s =
        codec_->decode(ConstBytes(out, *written), Span<float>(dec_.data(), n_), DecodeMode::kOverwrite, dex);
    if (!s.ok()) return Status(s.code(), "self-decode: " + s.message());
    for (std::size_t i = 0; i < n_; ++i) {
      const double v = v_[i], d = static_cast<double>(dec_[i]) - v;
      nv += v * v;
      ne += d * d;
    }
  }
  *err2 += ne;
  *norm2 += nv;
  return Status::Ok();
}

Status Unit::aggregate(Span<const ConstBytes> payloads, float* direction) {
  Exec ex;
  ex.rng = key_;
  const Status s = aggregator_->aggregate(payloads, gamma_, Span<float>(direction, n_), ex);
  if (!s.ok()) return Status(s.code(), "unit " + std::to_string(key_.stream) + ": " + s.message());
  return Status::Ok();
}

Status Unit::apply_linear(const float* sum, std::size_t count, float* direction) {
  if (count * 4 != body_bytes_)
    return Status::Internal("unit ", key_.stream, " expected ", body_bytes_ / 4, " summed values, got ", count);
  std::uint8_t* p = payload_.data();
  std::memcpy(p, header_, kHeaderBytes);
  std::memcpy(p + kHeaderBytes, sum, body_bytes_);
  mean_.resize(n_);
  Exec ex;
  ex.rng = key_;
  ex.rng.step = static_cast<std::uint32_t>(aggregator_->steps());  // the senders' key (shared Rand-K)
  const Compressor& dec = last_identity_ ? *identity_ : *codec_;
  GZ_RETURN_IF_ERROR(
      dec.decode(ConstBytes(p, kHeaderBytes + body_bytes_), Span<float>(mean_.data(), n_), DecodeMode::kOverwrite, ex));
  return aggregator_->apply_mean(Span<const float>(mean_.data(), n_), gamma_, Span<float>(direction, n_));
}

void Unit::compute_codec_input(const float* x) {
  v_.resize(n_);
  float* v = v_.data();
  const float* e = worker_->error().data();
  const float* h = worker_->estimate().data();
  switch (cfg_.kind) {
    case FeedbackKind::kNone:
      std::memcpy(v, x, n_ * sizeof(float));
      break;
    case FeedbackKind::kEF14:
      for (std::size_t i = 0; i < n_; ++i) v[i] = e[i] + gamma_ * x[i];
      break;
    case FeedbackKind::kEF21:
      for (std::size_t i = 0; i < n_; ++i) v[i] = x[i] - h[i];
      break;
    case FeedbackKind::kEControl: {
      const float eta = static_cast<float>(worker_->config().eta);
      for (std::size_t i = 0; i < n_; ++i) v[i] = eta * e[i] + x[i] - h[i];
      break;
    }
  }
}

// ------------------------------------------------------------------------------------------------------------ Plan
StatusOr<std::unique_ptr<Plan>> Plan::create(std::int64_t numel, std::int64_t world) {
  if (numel < 1) return Status::InvalidArgument("numel=", numel, " must be >= 1");
  if (world < 1) return Status::InvalidArgument("world=", world, " must be >= 1");
  std::unique_ptr<Plan> p(new Plan());
  p->n_ = static_cast<std::size_t>(numel);
  p->world_ = world;
  p->covered_.assign(p->n_, 0);
  return p;
}

Status Plan::add(std::shared_ptr<Unit> unit, Span<const std::int64_t> segments) {
  if (unit == nullptr) return Status::InvalidArgument("unit is None");
  if (segments.empty() || segments.size() % 2 != 0)
    return Status::InvalidArgument("segments must be a non-empty flat list of (offset, length) pairs, got ",
                                   segments.size(), " ints");
  Entry e;
  std::size_t total = 0;
  std::vector<std::uint8_t> covered = covered_;  // committed only when the whole call is valid
  for (std::size_t i = 0; i < segments.size(); i += 2) {
    const std::int64_t off = segments[i], len = segments[i + 1];
    if (!(off >= 0 && len >= 1 && static_cast<std::size_t>(off) + static_cast<std::size_t>(len) <= n_))
      return Status::InvalidArgument("segment (offset=", off, ", length=", len, ") is outside the buffer of ", n_,
                                     " elements");
    for (std::int64_t j = off; j < off + len; ++j) {
      if (covered[static_cast<std::size_t>(j)])
        return Status::InvalidArgument("element ", j, " is already covered by another segment");
      covered[static_cast<std::size_t>(j)] = 1;
    }
    e.segs.emplace_back(static_cast<std::size_t>(off), static_cast<std::size_t>(len));
    total += static_cast<std::size_t>(len);
  }
  if (total != unit->numel())
    return Status::InvalidArgument("segments cover ", total, " elements but the unit has numel=", unit->numel());
  e.unit = std::move(unit);
  covered_.swap(covered);
  entries_.push_back(std::move(e));
  return Status::Ok();
}

bool Plan::linear_step() const {
  if (entries_.empty()) return false;
  for (const auto& e : entries_)
    if (!e.unit->linear_step()) return false;
  return true;
}

bool Plan::variable_size() const {
  for (const auto& e : entries_)
    if (e.unit->variable_step()) return true;
  return false;
}

std::size_t Plan::slot_bytes() const {
  std::size_t s = 0;
  for (const auto& e : entries_) s += e.unit->step_max_bytes();
  return s;
}

Status Plan::check_entries() const {
  if (entries_.empty()) return Status::InvalidArgument("the plan has no units");
  return Status::Ok();
}

const float* Plan::gather(Entry& e, const float* src) {
  if (e.segs.size() == 1) return src + e.segs[0].first;
  e.scratch.resize(e.unit->numel());
  float* d = e.scratch.data();
  for (const auto& [off, len] : e.segs) {
    std::memcpy(d, src + off, len * sizeof(float));
    d += len;
  }
  return e.scratch.data();
}

float* Plan::direction_target(Entry& e, float* buffer) {
  if (e.segs.size() == 1) return buffer + e.segs[0].first;
  e.scratch.resize(e.unit->numel());
  return e.scratch.data();
}

void Plan::scatter(const Entry& e, const float* dir, float* buffer) {
  if (e.segs.size() == 1) return;
  for (const auto& [off, len] : e.segs) {
    std::memcpy(buffer + off, dir, len * sizeof(float));
    dir += len;
  }
}

Status Plan::encode(const float* buffer, std::uint8_t* out, std::size_t cap, bool track_error) {
  GZ_RETURN_IF_ERROR(check_entries());
  const std::size_t slot = slot_bytes();
  if (cap < slot) return Status::InvalidArgument("output holds ", cap, " bytes, the slot needs ", slot);
  std::memset(out, 0, cap);
  std::size_t pos = 0;
  err2_ = norm2_ = 0.0;
  for (auto& e : entries_) {
    std::size_t w = 0;
    GZ_RETURN_IF_ERROR(e.unit->encode_into(gather(e, buffer), out + pos, slot - pos, &w, track_error, &err2_, &norm2_));
    pos += w;
  }
  used_ = pos;
  return Status::Ok();
}

Status Plan::encode_linear(const float* buffer, std::vector<float>* out, bool track_error) {
  GZ_RETURN_IF_ERROR(check_entries());
  if (!linear_step()) return Status::InvalidArgument("not every unit sends a linear payload this step");
  std::vector<std::uint8_t> scratch;
  std::vector<std::vector<float>> bodies;
  std::size_t total = 0, used = 0;
  err2_ = norm2_ = 0.0;
  for (auto& e : entries_) {
    scratch.assign(e.unit->step_max_bytes(), 0);
    std::size_t w = 0;
    GZ_RETURN_IF_ERROR(
        e.unit->encode_into(gather(e, buffer), scratch.data(), scratch.size(), &w, track_error, &err2_, &norm2_));
    if ((w - kHeaderBytes) % 4 != 0)
      return Status::Internal("linear payload body of ", w - kHeaderBytes, " bytes is not a float array");
    const float* body = reinterpret_cast<const float*>(scratch.data() + kHeaderBytes);
    bodies.emplace_back(body, body + e.unit->body_floats());
    total += e.unit->body_floats();
    used += w;
  }
  out->resize(total);
  float* o = out->data();
  const float inv = static_cast<float>(1.0 / static_cast<double>(world_));
  for (const auto& body : bodies) {
    for (std::size_t i = 0; i < body.size(); ++i) o[i] = body[i] * inv;
    o += body.size();
  }
  used_ = used;
  return Status::Ok();
}

Status Plan::decode(Span<const ConstBytes> slots, float* buffer) {
  GZ_RETURN_IF_ERROR(check_entries());
  if (slots.size() != static_cast<std::size_t>(world_))
    return Status::InvalidArgument("got ", slots.size(), " slots, expected one per rank (world=", world_, ")");
  std::vector<std::size_t> cursor(slots.size(), 0);
  std::vector<ConstBytes> payloads(slots.size());
  for (auto& e : entries_) {
    for (std::size_t r = 0; r < payloads.size(); ++r) {
      const ConstBytes rest(slots[r].data() + cursor[r], slots[r].size() - cursor[r]);
      auto h = read_header(rest, "Plan.decode");
      if (!h.ok())
        return Status(h.status().code(), "rank " + std::to_string(r) + ", unit " + std::to_string(e.unit->stream()) +
                                             ": " + h.status().message());
      const std::size_t len = kHeaderBytes + h->body_bytes;
      payloads[r] = ConstBytes(rest.data(), len);
      cursor[r] += len;
    }
    float* dst = direction_target(e, buffer);
    GZ_RETURN_IF_ERROR(e.unit->aggregate(Span<const ConstBytes>(payloads.data(), payloads.size()), dst));
    scatter(e, dst, buffer);
  }
  return Status::Ok();
}

Status Plan::decode_linear(Span<const float> summed, float* buffer) {
  GZ_RETURN_IF_ERROR(check_entries());
  std::size_t total = 0;
  for (const auto& e : entries_) total += e.unit->body_floats();
  if (summed.size() != total)
    return Status::InvalidArgument("summed holds ", summed.size(), " values, the units sent ", total);
  const float* p = summed.data();
  for (auto& e : entries_) {
    float* dst = direction_target(e, buffer);
    GZ_RETURN_IF_ERROR(e.unit->apply_linear(p, e.unit->body_floats(), dst));
    p += e.unit->body_floats();
    scatter(e, dst, buffer);
  }
  return Status::Ok();
}

}  // namespace gradzip::units
