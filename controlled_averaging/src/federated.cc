// Federated averaging with control variates: FedAvg, SCAFFOLD (single-uplink form), SCALLION, SCAFCOM
// (algorithms.md §5.1-§5.5; decisions of §9.4, §9.5, §9.7 documented below).
//
// Math (x^r, c^r: server model and control; c_i, v_i: client state; y_K: last local iterate; E = K lr_local):
//   FedAvg    payload C(y_K - x^r);                     x += lr_global (1/S) sum_i D_i
//   SCAFFOLD  delta_i = (x^r - y_K)/E - c^r;            c_i += D_i
//   SCALLION  delta_i as SCAFFOLD;                      c_i += alpha D_i            (alpha = 1/(1+omega) default)
//   SCAFCOM   ghat_i = (x^r - y_K)/E + c_i - c^r ; v_i = (1-beta) v_i + beta ghat_i ; delta_i = v_i - c_i ;
//             c_i += D_i                                (v_i = c_i = 0 initially; momentum on the uncorrected
//                                                        average gradient, §9.5)
//   server    x^{r+1} = x^r - lr_global E (c^r + (1/S) sum_i D_i) ;  c^{r+1} = c^r + (a/N) sum_i D_i,
//             a = alpha for SCALLION (§9.4: the x-update uses the unscaled D_i), 1 otherwise.
// where D_i = D(C(delta_i)) is what the payload decodes to. The client updates c_i from its *own* decoded payload,
// so c^r = (1/N) sum_i c_i^r holds after every round (up to float rounding), whatever the codec.
// Client weights are uniform (§9.7).
// FedAvg with uplink feedback and the compressed downlink: see federated.h (the worker does the client math; the
// server's rules are in FedServer::aggregate below).
//
// Sampling: partial Fisher-Yates over 0..N-1 with draws CounterRng(RngKey{seed, lo32(r), hi32(r), 0x5A4D})
// .below(j, N - j), j = 0..S-1; the first S entries, sorted. Codec randomness of client i in round r:
// RngKey{seed, lo32(r), i, hi32(r)} for encode (client) and decode (server), so shared-seed codecs (randk shared=1)
// regenerate the sender's indices and every run is bit-reproducible.
//
// Precision: all vector arithmetic is float32 with float32 coefficients, single pass, fixed order (bitwise
// deterministic across runs; no reductions). Errors: kInvalidArgument for configs/pairings/sizes/wrong client
// sets, kInvalidPayload for payloads of another codec or length, kNonFinite for NaN/Inf deltas, state mismatches
// on load. A failing call leaves the object unchanged (FedSimulation::run_round rolls back the clients it had
// already finished).
#include "gradzip/controlled_averaging/federated.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "gradzip/compressors/codecs.h"
#include "gradzip/compressors/rng.h"

namespace gradzip {
namespace {

constexpr std::uint32_t kSampleStream = 0x5A4D;
constexpr std::uint32_t kDownlinkRank = 0xFFFFFFFFu, kDownlinkStream = 0xD0D0;

bool has_feedback(const FedConfig& c) {
  return c.feedback.kind != FeedbackKind::kNone;
}
bool shared_estimate(const FedConfig& c) {
  return c.feedback.kind == FeedbackKind::kEF21 || c.feedback.kind == FeedbackKind::kEControl;
}
/// The server step gamma = lr_global K lr_local (the x-update of the SCAFFOLD family and of FedAvg with feedback).
double server_gamma(const FedConfig& c) {
  return c.lr_global * static_cast<double>(c.local_steps) * c.lr_local;
}
RngKey feedback_key(std::uint64_t seed, std::size_t client) {
  RngKey k;
  k.seed = seed;
  k.step = 0;  // replaced by the worker's (and mirrored by the server's) participation counter
  k.rank = static_cast<std::uint32_t>(client);
  k.stream = 0;
  return k;
}

bool uses_control(FedAlgorithm a) {
  return a != FedAlgorithm::kFedAvg;
}

RngKey codec_key(std::uint64_t seed, std::uint64_t round, std::size_t client) {
  RngKey k;
  k.seed = seed;
  k.step = static_cast<std::uint32_t>(round);
  k.rank = static_cast<std::uint32_t>(client);
  k.stream = static_cast<std::uint32_t>(round >> 32);
  return k;
}

MutableBytes as_bytes(std::vector<std::uint64_t>& v) {
  return MutableBytes(reinterpret_cast<std::uint8_t*>(v.data()), 8 * v.size());
}

std::size_t workspace_words(const Compressor& c, std::size_t numel) {
  return (c.workspace_bytes(numel, Device::kCpu) + 7) / 8;
}

/// FNV-1a of the codec spec: saved state remembers which codec produced it.
std::uint64_t spec_hash(const Compressor& c) {
  const std::string s = c.spec();
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return h;
}

std::shared_ptr<const Compressor> or_identity(std::shared_ptr<const Compressor> c) {
  if (c) return c;
  auto id = make_identity();
  return std::shared_ptr<const Compressor>(std::move(id).value());
}

/// SCALLION's alpha: the configured value, or 1/(1 + omega(numel)) when alpha < 0.
double resolve_alpha(const FedConfig& c, const Compressor& codec, std::size_t numel) {
  if (c.algorithm != FedAlgorithm::kScallion) return 1.0;
  if (c.alpha >= 0) return c.alpha;
  return 1.0 / (1.0 + codec.traits(numel).omega);
}

bool finite_positive(double v) {
  return std::isfinite(v) && v > 0;
}

std::string list_clients(const std::vector<std::size_t>& v) {
  std::string s = "{";
  for (std::size_t i = 0; i < v.size() && i < 16; ++i) {
    if (i) s += ',';
    s += std::to_string(v[i]);
  }
  if (v.size() > 16) s += ",...";
  return s + "}";
}

/// Checks the algorithm/numel records common to client and server state.
Status expect_u64(StateReader& r, std::string_view name, std::uint64_t want, const char* op, const char* what) {
  std::uint64_t got = 0;
  GZ_RETURN_IF_ERROR(r.get_u64(name, &got));
  if (got != want)
    return Status::InvalidArgument(op, ": state was saved with ", what, "=", got, ", this object has ", want);
  return Status::Ok();
}

Status expect_algorithm(StateReader& r, std::string_view name, FedAlgorithm a, const char* op) {
  std::uint64_t got = 0;
  GZ_RETURN_IF_ERROR(r.get_u64(name, &got));
  if (got != static_cast<std::uint64_t>(a)) {
    const char* saved = got <= 3 ? fed_algorithm_name(static_cast<FedAlgorithm>(got)) : "unknown";
    return Status::InvalidArgument(op, ": state was saved by algorithm '", saved, "', this object runs '",
                                   fed_algorithm_name(a), "'");
  }
  return Status::Ok();
}

Status expect_codec(StateReader& r, std::string_view name, const Compressor& c, const char* op) {
  std::uint64_t got = 0;
  GZ_RETURN_IF_ERROR(r.get_u64(name, &got));
  if (got != spec_hash(c))
    return Status::InvalidArgument(op, ": state was saved with another uplink codec (spec hash ", got,
                                   "), this object uses '", c.spec(), "'");
  return Status::Ok();
}

// Client state records: algorithm, id, codec, c (not FedAvg), v (SCAFCOM). Reads into c/v (sized by the caller).
Status read_client(StateReader& r, const FedConfig& cfg, const Compressor& codec, std::size_t id, std::vector<float>* c,
                   std::vector<float>* v) {
  const char* op = "fed_client.load";
  GZ_RETURN_IF_ERROR(expect_algorithm(r, "fed.client.algorithm", cfg.algorithm, op));
  GZ_RETURN_IF_ERROR(expect_u64(r, "fed.client.id", id, op, "client id"));
  GZ_RETURN_IF_ERROR(expect_codec(r, "fed.client.codec", codec, op));
  if (uses_control(cfg.algorithm)) GZ_RETURN_IF_ERROR(r.get_floats("fed.client.c", Span<float>(*c)));
  if (cfg.algorithm == FedAlgorithm::kScafcom) GZ_RETURN_IF_ERROR(r.get_floats("fed.client.v", Span<float>(*v)));
  return Status::Ok();
}

// Server state records: algorithm, num_clients, codec, round, x, c.
Status read_server(StateReader& r, const FedConfig& cfg, const Compressor& codec, std::uint64_t* round,
                   std::vector<float>* x, std::vector<float>* c) {
  const char* op = "fed_server.load";
  GZ_RETURN_IF_ERROR(expect_algorithm(r, "fed.server.algorithm", cfg.algorithm, op));
  GZ_RETURN_IF_ERROR(expect_u64(r, "fed.server.num_clients", cfg.num_clients, op, "num_clients"));
  GZ_RETURN_IF_ERROR(expect_codec(r, "fed.server.codec", codec, op));
  GZ_RETURN_IF_ERROR(r.get_u64("fed.server.round", round));
  GZ_RETURN_IF_ERROR(r.get_floats("fed.server.x", Span<float>(*x)));
  GZ_RETURN_IF_ERROR(r.get_floats("fed.server.c", Span<float>(*c)));
  return Status::Ok();
}

}  // namespace

const char* fed_algorithm_name(FedAlgorithm a) {
  switch (a) {
    case FedAlgorithm::kFedAvg:
      return "fedavg";
    case FedAlgorithm::kScaffold:
      return "scaffold";
    case FedAlgorithm::kScallion:
      return "scallion";
    case FedAlgorithm::kScafcom:
      return "scafcom";
  }
  return "unknown";
}

StatusOr<FedAlgorithm> parse_fed_algorithm(std::string_view name) {
  for (FedAlgorithm a :
       {FedAlgorithm::kFedAvg, FedAlgorithm::kScaffold, FedAlgorithm::kScallion, FedAlgorithm::kScafcom}) {
    if (name == fed_algorithm_name(a)) return a;
  }
  return Status::InvalidArgument("unknown federated algorithm '", name,
                                 "'; known: fedavg, scaffold, scallion, scafcom");
}

Status validate(const FedConfig& c, const Compressor& uplink, std::size_t numel) {
  const char* alg = fed_algorithm_name(c.algorithm);
  if (std::string_view(alg) == "unknown")
    return Status::InvalidArgument("fed: algorithm=", static_cast<int>(c.algorithm), " is not a FedAlgorithm");
  if (c.num_clients < 1) return Status::InvalidArgument(alg, ": num_clients=0 must be >= 1");
  if (c.clients_per_round < 1 || c.clients_per_round > c.num_clients)
    return Status::InvalidArgument(alg, ": clients_per_round=", c.clients_per_round,
                                   " must be in [1, num_clients=", c.num_clients, "]");
  if (c.num_clients > 0xFFFFFFFFull)
    return Status::InvalidArgument(alg, ": num_clients=", c.num_clients, " exceeds 2^32-1");
  if (c.local_steps < 1) return Status::InvalidArgument(alg, ": local_steps=0 must be >= 1");
  if (!finite_positive(c.lr_local)) return Status::InvalidArgument(alg, ": lr_local=", c.lr_local, " must be > 0");
  if (!finite_positive(c.lr_global)) return Status::InvalidArgument(alg, ": lr_global=", c.lr_global, " must be > 0");
  if (std::isnan(c.alpha) || c.alpha == 0.0 || c.alpha > 1.0)
    return Status::InvalidArgument(alg, ": alpha=", c.alpha, " must be in (0, 1] (or < 0 for 1/(1+omega))");
  if (!(c.beta > 0.0 && c.beta <= 1.0)) return Status::InvalidArgument(alg, ": beta=", c.beta, " must be in (0, 1]");
  if (numel < 1) return Status::InvalidArgument(alg, ": the model has numel=0 elements");
  {
    Status s = uplink.check(DType::kF32, numel);
    if (!s.ok()) return Status::InvalidArgument(alg, ": uplink codec '", uplink.spec(), "': ", s.message());
  }
  const CompressorTraits t = uplink.traits(numel);
  // Identity (contractive with delta = 1, omega = 0) is lossless, hence also unbiased.
  const bool lossless = t.kind == GuaranteeKind::kContractive && t.delta >= 1.0 && t.omega == 0.0;
  if (c.algorithm == FedAlgorithm::kScallion && t.kind != GuaranteeKind::kUnbiased && !lossless)
    return Status::InvalidArgument("scallion: uplink codec '", uplink.spec(), "' is ", guarantee_kind_name(t.kind),
                                   "; SCALLION needs an unbiased compressor (randk, qsgd, natural) or identity; use "
                                   "scafcom for contractive codecs");
  if (c.algorithm == FedAlgorithm::kScafcom && t.kind != GuaranteeKind::kContractive)
    return Status::InvalidArgument("scafcom: uplink codec '", uplink.spec(), "' is ", guarantee_kind_name(t.kind),
                                   "; SCAFCOM needs a contractive compressor (topk, sign, scaled(<unbiased>)); use "
                                   "scallion for unbiased codecs");
  if (has_feedback(c)) {
    if (c.algorithm != FedAlgorithm::kFedAvg)
      return Status::InvalidArgument(alg, ": uplink feedback '", feedback_spec(c.feedback),
                                     "' applies to fedavg only (SCAFCOM has its own error feedback; SCAFFOLD and "
                                     "SCALLION correct drift with control variates)");
    Status s = check_pairing(c.feedback, uplink, numel);
    if (!s.ok()) return Status::InvalidArgument("fedavg+", feedback_spec(c.feedback), ": ", s.message());
  }
  if (c.algorithm == FedAlgorithm::kScallion && c.alpha < 0 && !std::isfinite(t.omega))
    return Status::InvalidArgument("scallion: omega of '", uplink.spec(), "' is not finite; set alpha explicitly");
  return Status::Ok();
}

std::size_t fed_uplink_slot_bytes(const FedConfig& c, const Compressor& uplink, std::size_t numel) {
  std::size_t b = uplink.max_encoded_bytes(numel);
  if (has_feedback(c)) b = std::max(b, kHeaderBytes + 4 * numel);  // identity first message (EF21/EControl)
  return b;
}

// ------------------------------------------------------------------------------------------------------------------
// FedClient

FedClient::FedClient(const FedConfig& c, std::shared_ptr<const Compressor> uplink, std::size_t id, std::size_t numel)
    : cfg_(c), codec_(or_identity(std::move(uplink))), id_(id), numel_(numel), alpha_(1.0) {
  valid_ = validate(cfg_, *codec_, numel_);
  if (valid_.ok() && id_ >= cfg_.num_clients)
    valid_ = Status::InvalidArgument(fed_algorithm_name(cfg_.algorithm), ": client id=", id_,
                                     " must be < num_clients=", cfg_.num_clients);
  if (!valid_.ok()) return;
  alpha_ = resolve_alpha(cfg_, *codec_, numel_);
  if (has_feedback(cfg_)) {
    auto w = FeedbackWorker::create(cfg_.feedback, codec_, numel_);
    if (!w.ok()) {
      valid_ = w.status();
      return;
    }
    fb_ = std::move(w).value();
  }
  if (uses_control(cfg_.algorithm)) c_.assign(numel_, 0.0f);
  if (cfg_.algorithm == FedAlgorithm::kScafcom) v_.assign(numel_, 0.0f);
}

Status FedClient::correction(Span<const float> server_c, Span<float> out) const {
  GZ_RETURN_IF_ERROR(valid_);
  const char* alg = fed_algorithm_name(cfg_.algorithm);
  if (out.size() != numel_ || (out.data() == nullptr))
    return Status::InvalidArgument(alg, ".correction: out has ", out.size(), " floats, expected numel=", numel_);
  if (!uses_control(cfg_.algorithm)) {
    std::fill(out.begin(), out.end(), 0.0f);
    return Status::Ok();
  }
  if (server_c.size() != numel_)
    return Status::InvalidArgument(alg, ".correction: server control has ", server_c.size(), " floats, expected ",
                                   numel_);
  const float* sc = server_c.data();
  const float* ci = c_.data();
  float* o = out.data();
  for (std::size_t i = 0; i < numel_; ++i) o[i] = sc[i] - ci[i];
  return Status::Ok();
}

Status FedClient::finish(std::uint64_t round, Span<const float> x, Span<const float> server_c, Span<const float> y_last,
                         MutableBytes out, std::size_t* written) {
  GZ_RETURN_IF_ERROR(valid_);
  if (tmp_.size() != numel_) {
    tmp_.assign(numel_, 0.0f);
    ws_.assign(workspace_words(*codec_, numel_), 0);
  }
  return finish_impl(round, x, server_c, y_last, out, written, Span<float>(tmp_), as_bytes(ws_));
}

Status FedClient::finish_impl(std::uint64_t round, Span<const float> x, Span<const float> server_c,
                              Span<const float> y_last, MutableBytes out, std::size_t* written, Span<float> scratch,
                              MutableBytes workspace) {
  const char* alg = fed_algorithm_name(cfg_.algorithm);
  if (written == nullptr) return Status::InvalidArgument(alg, ".finish: written must not be null");
  *written = 0;
  if (x.size() != numel_ || y_last.size() != numel_)
    return Status::InvalidArgument(alg, ".finish: client ", id_, ": x has ", x.size(), " and y_last ", y_last.size(),
                                   " floats, expected numel=", numel_);
  const bool ctl = uses_control(cfg_.algorithm);
  if (ctl ? server_c.size() != numel_ : (server_c.size() != 0 && server_c.size() != numel_))
    return Status::InvalidArgument(alg, ".finish: client ", id_, ": server control has ", server_c.size(),
                                   " floats, expected numel=", numel_);
  const std::size_t n = numel_;
  const float* xp = x.data();
  const float* yp = y_last.data();
  float* d = scratch.data();
  // 1/(K lr_local) rounded once to float: the same coefficient the tests' fp64 references are compared against
  // at float tolerance.
  const float inv = static_cast<float>(1.0 / (static_cast<double>(cfg_.local_steps) * cfg_.lr_local));
  const float beta = static_cast<float>(cfg_.beta), omb = static_cast<float>(1.0 - cfg_.beta);
  if (fb_) {
    // FedAvg with uplink feedback: the worker turns the pseudo-gradient into the payload and updates its memory.
    if (out.size() < fb_->max_payload_bytes())
      return Status::InvalidArgument(alg, ".finish: client ", id_, ": out has ", out.size(), " bytes, need ",
                                     fb_->max_payload_bytes());
    for (std::size_t i = 0; i < n; ++i) d[i] = (xp[i] - yp[i]) * inv;
    Exec ex;
    ex.rng = feedback_key(cfg_.seed, id_);
    ex.workspace = workspace;
    std::size_t w = 0;
    Status s = fb_->step(Span<const float>(d, n), static_cast<float>(server_gamma(cfg_)), out, &w, ex);
    if (!s.ok())
      return Status(s.code(), std::string(alg) + "+" + feedback_spec(cfg_.feedback) + ".finish: client " +
                                  std::to_string(id_) + ", round " + std::to_string(round) + ": " + s.message());
    *written = w;
    return Status::Ok();
  }
  switch (cfg_.algorithm) {
    case FedAlgorithm::kFedAvg:
      for (std::size_t i = 0; i < n; ++i) d[i] = yp[i] - xp[i];
      break;
    case FedAlgorithm::kScaffold:
    case FedAlgorithm::kScallion: {
      const float* sc = server_c.data();
      for (std::size_t i = 0; i < n; ++i) d[i] = (xp[i] - yp[i]) * inv - sc[i];
      break;
    }
    case FedAlgorithm::kScafcom: {
      const float* sc = server_c.data();
      const float* ci = c_.data();
      const float* vi = v_.data();
      for (std::size_t i = 0; i < n; ++i) {
        const float g = (xp[i] - yp[i]) * inv + ci[i] - sc[i];
        d[i] = (omb * vi[i] + beta * g) - ci[i];
      }
      break;
    }
  }
  Exec ex;
  ex.rng = codec_key(cfg_.seed, round, id_);
  ex.workspace = workspace;
  std::size_t w = 0;
  {
    Status s = codec_->encode(Span<const float>(d, n), out, &w, ex);
    if (!s.ok())
      return Status(s.code(), std::string(alg) + ".finish: client " + std::to_string(id_) + ", round " +
                                  std::to_string(round) + ": " + s.message());
  }
  if (!ctl) {
    *written = w;
    return Status::Ok();
  }
  if (cfg_.algorithm == FedAlgorithm::kScafcom) {
    // v_i is committed only now that the encode succeeded; same expression as above, so bitwise the same value.
    const float* sc = server_c.data();
    const float* ci = c_.data();
    float* vi = v_.data();
    for (std::size_t i = 0; i < n; ++i) {
      const float g = (xp[i] - yp[i]) * inv + ci[i] - sc[i];
      vi[i] = omb * vi[i] + beta * g;
    }
  }
  // c_i += a * D(payload): the client tracks exactly what the server decodes, so the invariant holds.
  const float a = static_cast<float>(alpha_);
  Status s = codec_->decode(ConstBytes(out.data(), w), Span<float>(c_), DecodeMode::kAccumulate, ex, a);
  if (!s.ok()) return Status::Internal(alg, ".finish: decoding our own payload failed: ", s.message());
  *written = w;
  return Status::Ok();
}

void FedClient::save(StateWriter& w) const {
  w.put_u64("fed.client.algorithm", static_cast<std::uint64_t>(cfg_.algorithm));
  w.put_u64("fed.client.id", id_);
  w.put_u64("fed.client.codec", spec_hash(*codec_));
  if (uses_control(cfg_.algorithm)) w.put_floats("fed.client.c", Span<const float>(c_));
  if (cfg_.algorithm == FedAlgorithm::kScafcom) w.put_floats("fed.client.v", Span<const float>(v_));
  if (fb_) {
    StateWriter inner;
    fb_->save(inner);
    w.put_bytes("fed.client.feedback", ConstBytes(inner.bytes().data(), inner.bytes().size()));
  }
}

Status FedClient::load(StateReader& r) {
  GZ_RETURN_IF_ERROR(valid_);
  std::vector<float> c(c_.size()), v(v_.size());
  GZ_RETURN_IF_ERROR(read_client(r, cfg_, *codec_, id_, &c, &v));
  if (fb_) {
    ConstBytes blob;
    GZ_RETURN_IF_ERROR(r.get_bytes("fed.client.feedback", &blob));
    // The worker's load is all-or-nothing, so it may come last among the records that can fail.
    StateReader inner(blob, "fed_client.load(feedback)");
    GZ_RETURN_IF_ERROR(fb_->load(inner));
  }
  c_.swap(c);
  v_.swap(v);
  return Status::Ok();
}

// ------------------------------------------------------------------------------------------------------------------
// FedServer

StatusOr<std::unique_ptr<FedServer>> FedServer::create(const FedConfig& c, std::shared_ptr<const Compressor> uplink,
                                                       Span<const float> x0,
                                                       std::shared_ptr<const Compressor> downlink) {
  uplink = or_identity(std::move(uplink));
  GZ_RETURN_IF_ERROR(validate(c, *uplink, x0.size()));
  if (downlink) {
    Status s = downlink->check(DType::kF32, x0.size());
    if (!s.ok())
      return Status::InvalidArgument(fed_algorithm_name(c.algorithm), ": downlink codec '", downlink->spec(),
                                     "': ", s.message());
    const CompressorTraits t = downlink->traits(x0.size());
    const bool lossless = t.kind == GuaranteeKind::kContractive && t.delta >= 1.0 && t.omega == 0.0;
    if (lossless) {
      downlink = nullptr;  // identity downlink: nothing to compress
    } else if (t.kind != GuaranteeKind::kContractive) {
      return Status::InvalidArgument(fed_algorithm_name(c.algorithm), ": downlink codec '", downlink->spec(), "' is ",
                                     guarantee_kind_name(t.kind),
                                     "; the compressed downlink (xhat += C(x - xhat)) needs a contractive "
                                     "compressor (topk, sign, scaled(<unbiased>))");
    }
  }
  if (x0.data() == nullptr) return Status::InvalidArgument(fed_algorithm_name(c.algorithm), ": x0 is null");
  {
    Status s = check_finite(x0, "fed.create");
    if (!s.ok()) return Status(s.code(), std::string(fed_algorithm_name(c.algorithm)) + ": " + s.message());
  }
  std::unique_ptr<FedServer> s(new FedServer());
  s->cfg_ = c;
  s->alpha_ = resolve_alpha(c, *uplink, x0.size());
  s->x_.assign(x0.begin(), x0.end());
  s->c_.assign(x0.size(), 0.0f);
  s->acc_.assign(x0.size(), 0.0f);
  std::size_t ws = workspace_words(*uplink, x0.size());
  if (has_feedback(c)) {
    s->identity_ = or_identity(nullptr);
    s->participations_.assign(c.num_clients, 0);
    if (shared_estimate(c)) s->gbar_.assign(x0.size(), 0.0f);
  }
  if (downlink) {
    s->xhat_.assign(x0.begin(), x0.end());
    s->diff_.assign(x0.size(), 0.0f);
    s->down_buf_.assign(downlink->max_encoded_bytes(x0.size()), 0);
    ws = std::max(ws, workspace_words(*downlink, x0.size()));
    s->down_ = std::move(downlink);
  }
  s->ws_.assign(ws, 0);
  s->codec_ = std::move(uplink);
  return s;
}

std::vector<std::size_t> FedServer::sample(std::uint64_t round) const {
  const std::size_t n = cfg_.num_clients, s = cfg_.clients_per_round;
  RngKey k;
  k.seed = cfg_.seed;
  k.step = static_cast<std::uint32_t>(round);
  k.rank = static_cast<std::uint32_t>(round >> 32);
  k.stream = kSampleStream;
  const CounterRng rng(k);
  std::vector<std::size_t> perm(n);
  for (std::size_t i = 0; i < n; ++i) perm[i] = i;
  for (std::size_t j = 0; j < s; ++j) std::swap(perm[j], perm[j + rng.below(j, n - j)]);
  perm.resize(s);
  std::sort(perm.begin(), perm.end());
  return perm;
}

Status FedServer::aggregate(const std::vector<std::size_t>& clients, Span<const ConstBytes> payloads,
                            RoundStats* stats) {
  const char* alg = fed_algorithm_name(cfg_.algorithm);
  const std::size_t n = x_.size(), S = cfg_.clients_per_round;
  if (payloads.size() != clients.size())
    return Status::InvalidArgument(alg, ".aggregate: ", payloads.size(), " payloads for ", clients.size(), " clients");
  const std::vector<std::size_t> want = sample(round_);
  if (clients != want)
    return Status::InvalidArgument(alg, ".aggregate: round ", round_, " sampled clients ", list_clients(want),
                                   " but payloads came from ", list_clients(clients));
  const bool fb = has_feedback(cfg_);
  std::uint64_t up = 0;
  for (std::size_t j = 0; j < S; ++j) {
    Exec ex;
    ex.workspace = as_bytes(ws_);
    const Compressor* dec = codec_.get();
    if (fb) {
      // Mirror of the client's FeedbackWorker: its key carries the worker's step (= participations so far), and
      // its first message is uncompressed for EF21/EControl with init=uncompressed.
      const std::uint64_t p = participations_[clients[j]];
      ex.rng = feedback_key(cfg_.seed, clients[j]);
      ex.rng.step = static_cast<std::uint32_t>(p);
      if (p == 0 && shared_estimate(cfg_) && cfg_.feedback.init == FeedbackInit::kUncompressed) dec = identity_.get();
    } else {
      ex.rng = codec_key(cfg_.seed, round_, clients[j]);
    }
    Status s =
        dec->decode(payloads[j], Span<float>(acc_), j == 0 ? DecodeMode::kOverwrite : DecodeMode::kAccumulate, ex);
    if (!s.ok())
      return Status(s.code(), std::string(alg) + ".aggregate: payload of client " + std::to_string(clients[j]) +
                                  " (expected '" + dec->spec() + "'): " + s.message());
    // The exact payload size (header + body), not the slot it came in: decode has validated the header.
    auto h = read_header(payloads[j], "fed.aggregate");
    if (!h.ok()) return h.status();
    up += kHeaderBytes + h->body_bytes;
  }
  const float* acc = acc_.data();
  const bool ctl = uses_control(cfg_.algorithm);
  const float inv_s = static_cast<float>(1.0 / static_cast<double>(S));
  const float step = static_cast<float>(server_gamma(cfg_));
  const float inv_n = static_cast<float>(1.0 / static_cast<double>(cfg_.num_clients));
  const float cn = static_cast<float>(alpha_ / static_cast<double>(cfg_.num_clients));
  const FeedbackKind fk = cfg_.feedback.kind;
  // x^{r+1}_i as one expression, so that the downlink (which needs it before anything is committed) and the commit
  // compute bitwise the same value.
  auto next_x = [&](std::size_t i) -> float {
    if (fb) {
      if (fk == FeedbackKind::kEF14) return x_[i] - inv_s * acc[i];
      return x_[i] - step * (gbar_[i] + inv_s * acc[i]);  // EF21, EControl
    }
    if (!ctl) return x_[i] + static_cast<float>(cfg_.lr_global / static_cast<double>(S)) * acc[i];
    return x_[i] - step * (c_[i] + inv_s * acc[i]);
  };
  std::size_t down_bytes = 0;
  Exec dex;
  if (down_) {
    // Compressed downlink: encode x^{r+1} - xhat before committing anything, so that a failure changes nothing.
    dex.rng.seed = cfg_.seed;
    dex.rng.step = static_cast<std::uint32_t>(round_);
    dex.rng.rank = kDownlinkRank;
    dex.rng.stream = kDownlinkStream ^ static_cast<std::uint32_t>(round_ >> 32);
    dex.workspace = as_bytes(ws_);
    for (std::size_t i = 0; i < n; ++i) diff_[i] = next_x(i) - xhat_[i];
    Status s =
        down_->encode(Span<const float>(diff_), MutableBytes(down_buf_.data(), down_buf_.size()), &down_bytes, dex);
    if (!s.ok())
      return Status(s.code(), std::string(alg) + ".aggregate: round " + std::to_string(round_) + ": downlink '" +
                                  down_->spec() + "': " + s.message());
  }
  for (std::size_t i = 0; i < n; ++i) {
    const float xi = next_x(i);
    if (fb) {
      if (fk != FeedbackKind::kEF14) gbar_[i] += inv_n * acc[i];
    } else if (ctl) {
      c_[i] += cn * acc[i];
    }
    x_[i] = xi;
  }
  if (fb)
    for (std::size_t c : clients) ++participations_[c];
  if (down_) {
    Status s =
        down_->decode(ConstBytes(down_buf_.data(), down_bytes), Span<float>(xhat_), DecodeMode::kAccumulate, dex);
    if (!s.ok()) return Status::Internal(alg, ".aggregate: decoding the server's own downlink failed: ", s.message());
  }
  if (stats) {
    stats->round = round_;
    stats->clients = clients;
    stats->uplink_bytes = up;
    const std::uint64_t vec = kHeaderBytes + 4 * static_cast<std::uint64_t>(n);
    stats->downlink_bytes = S * ((down_ ? down_bytes : vec) + (ctl ? vec : 0));
  }
  ++round_;
  return Status::Ok();
}

void FedServer::save(StateWriter& w) const {
  w.put_u64("fed.server.algorithm", static_cast<std::uint64_t>(cfg_.algorithm));
  w.put_u64("fed.server.num_clients", cfg_.num_clients);
  w.put_u64("fed.server.codec", spec_hash(*codec_));
  w.put_u64("fed.server.round", round_);
  w.put_floats("fed.server.x", Span<const float>(x_));
  w.put_floats("fed.server.c", Span<const float>(c_));
  if (!participations_.empty()) {
    std::vector<std::uint8_t> b(8 * participations_.size());
    for (std::size_t i = 0; i < participations_.size(); ++i)
      store_le<std::uint64_t>(b.data() + 8 * i, participations_[i]);
    w.put_bytes("fed.server.participations", ConstBytes(b.data(), b.size()));
  }
  if (!gbar_.empty()) w.put_floats("fed.server.gbar", Span<const float>(gbar_));
  if (down_) w.put_floats("fed.server.xhat", Span<const float>(xhat_));
}

Status FedServer::load(StateReader& r) {
  std::uint64_t round = 0;
  std::vector<float> x(x_.size()), c(c_.size()), gbar(gbar_.size()), xhat(xhat_.size());
  std::vector<std::uint64_t> part(participations_.size());
  GZ_RETURN_IF_ERROR(read_server(r, cfg_, *codec_, &round, &x, &c));
  if (!part.empty()) {
    ConstBytes b;
    GZ_RETURN_IF_ERROR(r.get_bytes("fed.server.participations", &b));
    if (b.size() != 8 * part.size())
      return Status::InvalidArgument("fed_server.load: participation counts for ", b.size() / 8, " clients, expected ",
                                     part.size());
    for (std::size_t i = 0; i < part.size(); ++i) part[i] = load_le<std::uint64_t>(b.data() + 8 * i);
  }
  if (!gbar.empty()) GZ_RETURN_IF_ERROR(r.get_floats("fed.server.gbar", Span<float>(gbar)));
  if (down_) GZ_RETURN_IF_ERROR(r.get_floats("fed.server.xhat", Span<float>(xhat)));
  round_ = round;
  x_.swap(x);
  c_.swap(c);
  gbar_.swap(gbar);
  xhat_.swap(xhat);
  participations_.swap(part);
  return Status::Ok();
}

// ------------------------------------------------------------------------------------------------------------------
// FedSimulation

StatusOr<std::unique_ptr<FedSimulation>> FedSimulation::create(const FedConfig& c,
                                                               std::shared_ptr<const Compressor> uplink,
                                                               Span<const float> x0,
                                                               std::shared_ptr<const Compressor> downlink) {
  uplink = or_identity(std::move(uplink));
  GZ_ASSIGN_OR_RETURN(std::unique_ptr<FedServer> server, FedServer::create(c, uplink, x0, std::move(downlink)));
  const std::size_t n = x0.size(), S = c.clients_per_round;
  std::unique_ptr<FedSimulation> sim(new FedSimulation());
  sim->server_ = std::move(server);
  sim->clients_.reserve(c.num_clients);
  for (std::size_t i = 0; i < c.num_clients; ++i) {
    sim->clients_.emplace_back(c, uplink, i, n);
    GZ_RETURN_IF_ERROR(sim->clients_.back().valid_);
  }
  sim->y_.assign(n, 0.0f);
  sim->g_.assign(n, 0.0f);
  sim->corr_.assign(n, 0.0f);
  sim->buf_.assign(S * fed_uplink_slot_bytes(c, *uplink, n), 0);
  sim->fb_snap_.assign(has_feedback(c) ? S : 0, {});
  sim->views_.assign(S, ConstBytes());
  const std::size_t per = c.algorithm == FedAlgorithm::kScafcom ? 2 : uses_control(c.algorithm) ? 1 : 0;
  sim->snap_.assign(S * per * n, 0.0f);
  sim->ws_.assign(workspace_words(*uplink, n), 0);
  return sim;
}

Status FedSimulation::run_round(const GradientFn& grad, RoundStats* stats) {
  FedServer& sv = *server_;
  const FedConfig& cfg = sv.config();
  const char* alg = fed_algorithm_name(cfg.algorithm);
  if (!grad) return Status::InvalidArgument(alg, ".run_round: gradient callback is empty");
  const std::size_t n = y_.size(), K = cfg.local_steps;
  const std::uint64_t round = sv.round();
  const std::vector<std::size_t> clients = sv.sample(round);
  const std::size_t slot = fed_uplink_slot_bytes(cfg, sv.uplink(), n);
  const std::size_t per = snap_.size() / (clients.size() * n);
  const float lr = static_cast<float>(cfg.lr_local);
  Span<const float> x = sv.client_model(), c = sv.control();

  // Snapshot the sampled clients' state so that a failure anywhere in the round leaves everything unchanged.
  for (std::size_t j = 0; j < clients.size(); ++j) {
    const FedClient& cl = clients_[clients[j]];
    float* s = snap_.data() + j * per * n;
    if (per >= 1) std::memcpy(s, cl.c_.data(), 4 * n);
    if (per >= 2) std::memcpy(s + n, cl.v_.data(), 4 * n);
    if (cl.fb_) {
      StateWriter w;
      cl.fb_->save(w);
      fb_snap_[j] = w.take();
    }
  }
  auto rollback = [&](std::size_t done) {
    for (std::size_t j = 0; j < done; ++j) {
      FedClient& cl = clients_[clients[j]];
      const float* s = snap_.data() + j * per * n;
      if (per >= 1) std::memcpy(cl.c_.data(), s, 4 * n);
      if (per >= 2) std::memcpy(cl.v_.data(), s + n, 4 * n);
      if (cl.fb_) {
        StateReader r(ConstBytes(fb_snap_[j].data(), fb_snap_[j].size()), "fed_sim.rollback");
        (void)cl.fb_->load(r);  // the worker's own state, saved above: cannot mismatch
      }
    }
  };

  for (std::size_t j = 0; j < clients.size(); ++j) {
    FedClient& cl = clients_[clients[j]];
    Status s = cl.correction(c, Span<float>(corr_));
    float* y = y_.data();
    const float* g = g_.data();
    const float* corr = corr_.data();
    std::memcpy(y, x.data(), 4 * n);
    for (std::size_t k = 0; k < K && s.ok(); ++k) {
      s = grad(clients[j], round, k, Span<const float>(y_), Span<float>(g_));
      if (!s.ok()) {
        s = Status(s.code(), std::string(alg) + ".run_round: gradient of client " + std::to_string(clients[j]) +
                                 ", round " + std::to_string(round) + ", step " + std::to_string(k) + ": " +
                                 s.message());
        break;
      }
      for (std::size_t i = 0; i < n; ++i) y[i] -= lr * (g[i] + corr[i]);
    }
    std::size_t w = 0;
    if (s.ok())
      s = cl.finish_impl(round, x, c, Span<const float>(y_), MutableBytes(buf_.data() + j * slot, slot), &w,
                         Span<float>(g_), as_bytes(ws_));
    if (!s.ok()) {
      rollback(j);
      return s;
    }
    views_[j] = ConstBytes(buf_.data() + j * slot, w);
  }
  RoundStats local;
  RoundStats* st = stats ? stats : &local;
  Status s = sv.aggregate(clients, Span<const ConstBytes>(views_), st);
  if (!s.ok()) {
    rollback(clients.size());
    return s;
  }
  up_ += st->uplink_bytes;
  down_ += st->downlink_bytes;
  return Status::Ok();
}

void FedSimulation::save(StateWriter& w) const {
  w.put_u64("fed.sim.num_clients", clients_.size());
  w.put_u64("fed.sim.uplink_bytes", up_);
  w.put_u64("fed.sim.downlink_bytes", down_);
  server_->save(w);
  for (const FedClient& c : clients_) c.save(w);
}

Status FedSimulation::load(StateReader& r) {
  // Dry run on a copy of the reader first, so that a mismatch anywhere leaves the simulation untouched.
  const FedConfig& cfg = server_->config();
  const Compressor& codec = server_->uplink();
  const char* op = "fed_sim.load";
  const std::size_t n = y_.size();
  {
    StateReader probe = r;
    GZ_RETURN_IF_ERROR(expect_u64(probe, "fed.sim.num_clients", clients_.size(), op, "num_clients"));
    std::uint64_t dummy = 0;
    GZ_RETURN_IF_ERROR(probe.get_u64("fed.sim.uplink_bytes", &dummy));
    GZ_RETURN_IF_ERROR(probe.get_u64("fed.sim.downlink_bytes", &dummy));
    std::vector<float> a(n), b(n);
    GZ_RETURN_IF_ERROR(read_server(probe, cfg, codec, &dummy, &a, &b));
    std::vector<float> v(cfg.algorithm == FedAlgorithm::kScafcom ? n : 0);
    if (has_feedback(cfg)) {
      ConstBytes blob;
      if (!server_->participations_.empty()) GZ_RETURN_IF_ERROR(probe.get_bytes("fed.server.participations", &blob));
      if (!server_->gbar_.empty()) GZ_RETURN_IF_ERROR(probe.get_floats("fed.server.gbar", Span<float>(a)));
    }
    if (server_->down_) GZ_RETURN_IF_ERROR(probe.get_floats("fed.server.xhat", Span<float>(a)));
    std::unique_ptr<FeedbackWorker> scratch_worker;
    if (has_feedback(cfg)) {
      auto w = FeedbackWorker::create(cfg.feedback, server_->codec_, n);
      if (!w.ok()) return w.status();
      scratch_worker = std::move(w).value();
    }
    for (std::size_t i = 0; i < clients_.size(); ++i) {
      GZ_RETURN_IF_ERROR(read_client(probe, cfg, codec, i, &a, &v));
      if (scratch_worker) {
        ConstBytes blob;
        GZ_RETURN_IF_ERROR(probe.get_bytes("fed.client.feedback", &blob));
        StateReader inner(blob, "fed_client.load(feedback)");
        GZ_RETURN_IF_ERROR(scratch_worker->load(inner));
      }
    }
  }
  std::uint64_t count = 0, up = 0, down = 0;
  GZ_RETURN_IF_ERROR(r.get_u64("fed.sim.num_clients", &count));
  GZ_RETURN_IF_ERROR(r.get_u64("fed.sim.uplink_bytes", &up));
  GZ_RETURN_IF_ERROR(r.get_u64("fed.sim.downlink_bytes", &down));
  GZ_RETURN_IF_ERROR(server_->load(r));
  for (FedClient& c : clients_) GZ_RETURN_IF_ERROR(c.load(r));
  up_ = up;
  down_ = down;
  return Status::Ok();
}

}  // namespace gradzip
