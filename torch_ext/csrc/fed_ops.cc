// torch.classes.gradzip.Federation: the controlled_averaging layer (FedServer + FedClient, federated.h) behind the
// federated simulator `gradzip.fedsim`. Python trains the sampled clients' models (batched over clients with
// torch.func); everything algorithmic runs here: client sampling, the control-variate corrections c - c_i, the
// corrected local step y -= lr (g + corr), the uplink (delta, feedback, compression, c_i/v_i updates), the server
// aggregation (decode, x and c updates, the compressed downlink) and the byte counts.
//
// Distributed simulation: every rank builds a Federation with the same configuration and (rank, world); client i
// lives on rank i % world (only those clients hold state here), the server is replicated. A round is
//   clients = sample(r); mine = the ones with i % world == rank; corr = corrections(mine);
//   K x [gradients of mine at Y (Python), local_step(Y, G, corr, lr)]; payloads, sizes = finish(mine, Y);
//   gather every rank's payload rows (any collective) into the order of `clients`; aggregate(clients, P, sizes)
// and every rank ends the round with the same server state, bit for bit: the server consumes the same payloads in
// the same order, and each client's computation does not depend on which rank runs it.
//
// Tensors: models are float32 CPU vectors [d]; Y, G, corr are float32 CPU [m, d] (contiguous); payloads uint8
// [m, slot_bytes()], sizes int64 [m]; state blobs uint8. Errors: ValueError for bad configurations, client lists and
// shapes; RuntimeError naming the C++ Status otherwise. A failing finish() or aggregate() leaves every object
// unchanged (the finished clients are rolled back from a snapshot).
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "common.h"
#include "gradzip/compressors/codecs.h"
#include "gradzip/compressors/registry.h"
#include "gradzip/controlled_averaging/federated.h"

namespace gradzip::torch_ext {
namespace {

std::shared_ptr<const Compressor> codec_or_throw(const std::string& spec, const char* what) {
  auto c = parse_compressor(spec);
  if (!c.ok()) TORCH_CHECK_VALUE(false, "gradzip.Federation: ", what, " compressor: ", c.status().message());
  return std::shared_ptr<const Compressor>(std::move(c).value());
}

/// A float32 CPU contiguous matrix [rows, d] (no conversion: the simulator owns these buffers).
void check_matrix(const at::Tensor& t, std::int64_t rows, std::int64_t d, const char* op, const char* arg) {
  check_cpu(t, op, arg);
  TORCH_CHECK_VALUE(
      t.scalar_type() == at::kFloat && t.is_contiguous() && t.dim() == 2 && t.size(0) == rows && t.size(1) == d,
      "gradzip.", op, ": ", arg, " must be a contiguous float32 tensor of shape [", rows, ", ", d, "], got ",
      t.scalar_type(), " ", t.sizes(), t.is_contiguous() ? "" : " (not contiguous)");
}

class Federation : public torch::CustomClassHolder {
 public:
  Federation(const std::string& algorithm, const std::string& uplink, const std::string& downlink,
             const std::string& feedback, std::int64_t num_clients, std::int64_t clients_per_round,
             std::int64_t local_steps, double lr_local, double lr_global, double alpha, double beta, std::int64_t seed,
             const at::Tensor& x0, std::int64_t rank, std::int64_t world) {
    TORCH_CHECK_VALUE(num_clients >= 1 && clients_per_round >= 1 && local_steps >= 1,
                      "gradzip.Federation: num_clients, clients_per_round and local_steps must be >= 1, got ",
                      num_clients, ", ", clients_per_round, ", ", local_steps);
    TORCH_CHECK_VALUE(world >= 1 && rank >= 0 && rank < world, "gradzip.Federation: rank=", rank,
                      " must be in [0, world=", world, ")");
    cfg_.algorithm = value_or_throw(parse_fed_algorithm(algorithm), "Federation");
    cfg_.feedback = value_or_throw(parse_feedback(feedback), "Federation");
    cfg_.num_clients = static_cast<std::size_t>(num_clients);
    cfg_.clients_per_round = static_cast<std::size_t>(clients_per_round);
    cfg_.local_steps = static_cast<std::size_t>(local_steps);
    cfg_.lr_local = lr_local;
    cfg_.lr_global = lr_global;
    cfg_.alpha = alpha;
    cfg_.beta = beta;
    cfg_.seed = static_cast<std::uint64_t>(seed);
    rank_ = static_cast<std::size_t>(rank);
    world_ = static_cast<std::size_t>(world);
    up_codec_ = codec_or_throw(uplink, "uplink");
    down_codec_ = codec_or_throw(downlink, "downlink");
    const at::Tensor x = to_f32(x0, "Federation", "x0").reshape({-1});
    TORCH_CHECK_VALUE(x.numel() >= 1, "gradzip.Federation: x0 is empty");
    d_ = static_cast<std::size_t>(x.numel());
    make_objects(as_span(x), &server_, &clients_);
    // A client reports a bad configuration (e.g. its feedback worker's pairing) from every call; surface it now.
    for (const auto& c : clients_)
      if (c) {
        throw_if_error(c->status(), "Federation");
        break;
      }
    slot_ = fed_uplink_slot_bytes(cfg_, *up_codec_, d_);
  }

  std::int64_t numel() const { return static_cast<std::int64_t>(d_); }
  std::int64_t slot_bytes() const { return static_cast<std::int64_t>(slot_); }
  std::int64_t round() const { return static_cast<std::int64_t>(server_->round()); }
  std::string uplink_spec() const { return up_codec_->spec(); }
  std::string downlink_spec() const { return server_->downlink() ? server_->downlink()->spec() : "identity"; }
  std::string feedback_spec_str() const { return feedback_spec(cfg_.feedback); }
  bool owns(std::int64_t client) const {
    return client >= 0 && static_cast<std::size_t>(client) < cfg_.num_clients &&
           static_cast<std::size_t>(client) % world_ == rank_;
  }
  std::vector<std::int64_t> sample(std::int64_t round) const {
    TORCH_CHECK_VALUE(round >= 0, "gradzip.Federation.sample: round=", round, " must be >= 0");
    const std::vector<std::size_t> s = server_->sample(static_cast<std::uint64_t>(round));
    return std::vector<std::int64_t>(s.begin(), s.end());
  }
  /// The server model x (copy).
  at::Tensor model() const { return floats_tensor(server_->model()); }
  /// The model the clients start from (xhat with a compressed downlink, else x; copy).
  at::Tensor client_model() const { return floats_tensor(server_->client_model()); }
  /// The server control c (copy; zeros for FedAvg).
  at::Tensor control() const { return floats_tensor(server_->control()); }
  std::tuple<std::int64_t, std::int64_t> totals() const {
    return {static_cast<std::int64_t>(up_total_), static_cast<std::int64_t>(down_total_)};
  }

  /// [m, d] corrections c - c_i of the given (owned) clients; zeros for FedAvg.
  at::Tensor corrections(const std::vector<std::int64_t>& clients) const {
    check_owned(clients, "Federation.corrections");
    at::Tensor out = at::empty({static_cast<std::int64_t>(clients.size()), static_cast<std::int64_t>(d_)}, at::kFloat);
    float* o = out.data_ptr<float>();
    for (std::size_t j = 0; j < clients.size(); ++j)
      throw_if_error(clients_[clients[j]]->correction(server_->control(), Span<float>(o + j * d_, d_)),
                     "Federation.corrections");
    return out;
  }

  /// Y -= lr (G + corr) in place; corr may be an empty tensor (FedAvg: no correction).
  void local_step(const at::Tensor& y, const at::Tensor& g, const at::Tensor& corr, double lr) const {
    const char* op = "Federation.local_step";
    TORCH_CHECK_VALUE(y.dim() == 2, "gradzip.", op, ": Y must be [m, d], got ", y.sizes());
    const std::int64_t m = y.size(0), d = static_cast<std::int64_t>(d_);
    check_matrix(y, m, d, op, "Y");
    check_matrix(g, m, d, op, "G");
    const bool has_corr = corr.defined() && corr.numel() > 0;
    if (has_corr) check_matrix(corr, m, d, op, "corr");
    TORCH_CHECK_VALUE(std::isfinite(lr) && lr > 0, "gradzip.", op, ": lr=", lr, " must be > 0");
    const float a = static_cast<float>(lr);
    float* yp = y.data_ptr<float>();
    const float* gp = g.data_ptr<float>();
    const std::size_t n = static_cast<std::size_t>(m) * d_;
    if (has_corr) {
      const float* cp = corr.data_ptr<float>();
      for (std::size_t i = 0; i < n; ++i) yp[i] -= a * (gp[i] + cp[i]);
    } else {
      for (std::size_t i = 0; i < n; ++i) yp[i] -= a * gp[i];
    }
  }

  /// Uplink of the given (owned) clients for the current round from their last local iterates Y [m, d]: returns
  /// (payloads uint8 [m, slot_bytes()], sizes int64 [m]) and updates the clients' state (all or nothing).
  std::tuple<at::Tensor, at::Tensor> finish(const std::vector<std::int64_t>& clients, const at::Tensor& y) {
    const char* op = "Federation.finish";
    check_owned(clients, op);
    const std::int64_t m = static_cast<std::int64_t>(clients.size());
    check_matrix(y, m, static_cast<std::int64_t>(d_), op, "Y");
    at::Tensor payloads = at::zeros({m, static_cast<std::int64_t>(slot_)}, at::kByte);
    at::Tensor sizes = at::empty({m}, at::kLong);
    std::vector<std::vector<std::uint8_t>> snaps(clients.size());
    for (std::size_t j = 0; j < clients.size(); ++j) {
      StateWriter w;
      clients_[clients[j]]->save(w);
      snaps[j] = w.take();
    }
    const float* yp = y.data_ptr<float>();
    std::uint8_t* pp = payloads.data_ptr<std::uint8_t>();
    for (std::size_t j = 0; j < clients.size(); ++j) {
      std::size_t written = 0;
      Status s = clients_[clients[j]]->finish(server_->round(), server_->client_model(), server_->control(),
                                              Span<const float>(yp + j * d_, d_), MutableBytes(pp + j * slot_, slot_),
                                              &written);
      if (!s.ok()) {
        for (std::size_t k = 0; k < j; ++k) {
          StateReader r(ConstBytes(snaps[k].data(), snaps[k].size()), "Federation.rollback");
          (void)clients_[clients[k]]->load(r);  // its own state, saved above
        }
        throw_if_error(s, op);
      }
      sizes[static_cast<std::int64_t>(j)] = static_cast<std::int64_t>(written);
    }
    return {payloads, sizes};
  }

  /// Server side of the round: payloads [S, >= max size] uint8 and sizes [S] in the order of `clients` (which must
  /// be sample(round())). Returns (uplink bytes, downlink bytes) of the round.
  std::tuple<std::int64_t, std::int64_t> aggregate(const std::vector<std::int64_t>& clients, const at::Tensor& payloads,
                                                   const at::Tensor& sizes) {
    const char* op = "Federation.aggregate";
    check_cpu(payloads, op, "payloads");
    check_cpu(sizes, op, "sizes");
    const std::int64_t s = static_cast<std::int64_t>(clients.size());
    TORCH_CHECK_VALUE(
        payloads.scalar_type() == at::kByte && payloads.dim() == 2 && payloads.size(0) == s && payloads.is_contiguous(),
        "gradzip.", op, ": payloads must be a contiguous uint8 tensor [", s, ", slot], got ", payloads.scalar_type(),
        " ", payloads.sizes());
    TORCH_CHECK_VALUE(sizes.scalar_type() == at::kLong && sizes.dim() == 1 && sizes.size(0) == s, "gradzip.", op,
                      ": sizes must be an int64 tensor [", s, "], got ", sizes.scalar_type(), " ", sizes.sizes());
    const std::int64_t slot = payloads.size(1);
    const std::uint8_t* pp = payloads.data_ptr<std::uint8_t>();
    const std::int64_t* sp = sizes.data_ptr<std::int64_t>();
    std::vector<std::size_t> ids(clients.size());
    std::vector<ConstBytes> views(clients.size());
    for (std::size_t j = 0; j < clients.size(); ++j) {
      TORCH_CHECK_VALUE(clients[j] >= 0, "gradzip.", op, ": client id ", clients[j], " is negative");
      TORCH_CHECK_VALUE(sp[j] >= 0 && sp[j] <= slot, "gradzip.", op, ": size ", sp[j], " of payload ", j,
                        " is outside [0, ", slot, "]");
      ids[j] = static_cast<std::size_t>(clients[j]);
      views[j] = ConstBytes(pp + j * slot, static_cast<std::size_t>(sp[j]));
    }
    RoundStats st;
    throw_if_error(server_->aggregate(ids, Span<const ConstBytes>(views), &st), op);
    up_total_ += st.uplink_bytes;
    down_total_ += st.downlink_bytes;
    return {static_cast<std::int64_t>(st.uplink_bytes), static_cast<std::int64_t>(st.downlink_bytes)};
  }

  /// This rank's state: byte totals, the server, then its own clients (ascending id).
  at::Tensor state() const {
    StateWriter w;
    w.put_u64("fedsim.world", world_);
    w.put_u64("fedsim.rank", rank_);
    w.put_u64("fedsim.uplink_bytes", up_total_);
    w.put_u64("fedsim.downlink_bytes", down_total_);
    server_->save(w);
    for (const auto& c : clients_)
      if (c) c->save(w);
    return bytes_tensor(w.bytes());
  }

  /// Restores state() of an identically configured Federation (same rank and world). All or nothing: the state is
  /// read into fresh objects, which replace the current ones only when everything matched.
  void load_state(const at::Tensor& blob) {
    const char* op = "Federation.load_state";
    StateReader r(as_bytes(blob, op, "state"), "gradzip.Federation.load_state");
    std::uint64_t world = 0, rank = 0, up = 0, down = 0;
    throw_if_error(r.get_u64("fedsim.world", &world), op);
    throw_if_error(r.get_u64("fedsim.rank", &rank), op);
    TORCH_CHECK_VALUE(world == world_ && rank == rank_, "gradzip.", op, ": state was saved by rank ", rank, " of ",
                      world, ", this is rank ", rank_, " of ", world_);
    throw_if_error(r.get_u64("fedsim.uplink_bytes", &up), op);
    throw_if_error(r.get_u64("fedsim.downlink_bytes", &down), op);
    std::unique_ptr<FedServer> server;
    std::vector<std::unique_ptr<FedClient>> clients;
    make_objects(server_->model(), &server, &clients);
    throw_if_error(server->load(r), op);
    for (auto& c : clients)
      if (c) throw_if_error(c->load(r), op);
    throw_if_error(r.finish(), op);
    server_ = std::move(server);
    clients_ = std::move(clients);
    up_total_ = up;
    down_total_ = down;
  }

 private:
  /// A server with model x0 and this rank's clients, all in their initial state.
  void make_objects(Span<const float> x0, std::unique_ptr<FedServer>* server,
                    std::vector<std::unique_ptr<FedClient>>* clients) const {
    *server = value_or_throw(FedServer::create(cfg_, up_codec_, x0, down_codec_), "Federation");
    clients->clear();
    clients->resize(cfg_.num_clients);
    for (std::size_t i = rank_; i < cfg_.num_clients; i += world_)
      (*clients)[i] = std::make_unique<FedClient>(cfg_, up_codec_, i, d_);
  }

  void check_owned(const std::vector<std::int64_t>& clients, const char* op) const {
    for (std::int64_t c : clients)
      TORCH_CHECK_VALUE(owns(c), "gradzip.", op, ": client ", c, " is not a client of rank ", rank_, " of ", world_,
                        " (clients i with i % world == rank, i < ", cfg_.num_clients, ")");
  }

  FedConfig cfg_;
  std::shared_ptr<const Compressor> up_codec_, down_codec_;
  std::unique_ptr<FedServer> server_;
  std::vector<std::unique_ptr<FedClient>> clients_;
  std::size_t d_ = 0, slot_ = 0, rank_ = 0, world_ = 1;
  std::uint64_t up_total_ = 0, down_total_ = 0;
};

}  // namespace

void register_fed_ops(torch::Library& m) {
  m.class_<Federation>("Federation")
      .def(torch::init<std::string, std::string, std::string, std::string, std::int64_t, std::int64_t, std::int64_t,
                       double, double, double, double, std::int64_t, at::Tensor, std::int64_t, std::int64_t>())
      .def("numel", &Federation::numel)
      .def("slot_bytes", &Federation::slot_bytes)
      .def("round", &Federation::round)
      .def("uplink_spec", &Federation::uplink_spec)
      .def("downlink_spec", &Federation::downlink_spec)
      .def("feedback_spec", &Federation::feedback_spec_str)
      .def("owns", &Federation::owns)
      .def("sample", &Federation::sample)
      .def("model", &Federation::model)
      .def("client_model", &Federation::client_model)
      .def("control", &Federation::control)
      .def("totals", &Federation::totals)
      .def("corrections", &Federation::corrections)
      .def("local_step", &Federation::local_step)
      .def("finish", &Federation::finish)
      .def("aggregate", &Federation::aggregate)
      .def("state", &Federation::state)
      .def("load_state", &Federation::load_state);
}

}  // namespace gradzip::torch_ext
