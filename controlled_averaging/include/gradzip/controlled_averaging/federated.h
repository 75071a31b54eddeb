// Federated averaging with control variates (algorithms.md §5): FedAvg, SCAFFOLD (single-uplink form, §5.3),
// SCALLION (§5.4, unbiased compressors), SCAFCOM (§5.5, contractive compressors + local momentum).
//
// Round r (S of N clients sampled uniformly without replacement by FedServer::sample, seeded by (seed, r)):
//   downlink   x^r (all algorithms) and c^r (SCAFFOLD family), each counted as an identity payload (32 + 4d bytes)
//              per sampled client;
//   local      K steps from y_0 = x^r:  y_{k+1} = y_k - lr_local * (g_i(y_k) + corr_i), where corr_i = c^r - c_i^r
//              (0 for FedAvg). The gradients come from the caller (GradientFn or its own batched trainer);
//   uplink     one payload per sampled client (FedClient::finish):
//     FedAvg    C(y_K - x^r)                                     server: x += lr_global * mean_i D(payload_i)
//     SCAFFOLD  delta_i = (x^r - y_K)/(K lr_local) - c^r ; C(delta_i) (C = identity is exact SCAFFOLD; any other
//               codec gives the naive compressed baseline) ; c_i += D(C(delta_i))
//     SCALLION  delta_i as SCAFFOLD ; dt_i = C(delta_i) (unbiased, omega) ; c_i += alpha dt_i
//               (alpha default 1/(1+omega)); the x-update uses the unscaled dt_i (§5.4, §9.4)
//     SCAFCOM   ghat_i = (x^r - y_K)/(K lr_local) + c_i - c^r ; v_i = (1-beta) v_i + beta ghat_i ;
//               delta_i = v_i - c_i ; dt_i = C(delta_i) (contractive) ; c_i += dt_i   (v_i, c_i start at 0; §9.5)
//   server     SCAFFOLD family: x^{r+1} = x^r - lr_global K lr_local (c^r + (1/S) sum_i dt_i)
//                               c^{r+1} = c^r + (a/N) sum_i dt_i   with a = alpha (SCALLION) or 1
//              Invariant: c^r = (1/N) sum_i c_i^r over all N clients (tested).
// FedAvg with uplink error feedback (FedConfig::feedback; algorithms.md §5.6 Fed-EF and §4): each client owns a
// FeedbackWorker (error_feedback layer) fed with the pseudo-gradient g_i = (x^r - y_K)/(K lr_local) and the step
// gamma = lr_global K lr_local; the server keeps the shared estimate Gbar (EF21's G-bar, EControl's h-bar, over all N
// clients) and moves x^{r+1} = x^r - gamma D with
//     none  D = (1/S) sum_i D_i          (compressed FedAvg / FedPAQ; equal to feedback-less FedAvg up to rounding)
//     EF14  D = (1/S) sum_i D_i / gamma  (Fed-EF: D_i = C(e_i + gamma g_i), e_i keeps the rest; stale e_i persist)
//     EF21, EControl  D = Gbar + (1/S) sum_i D_i ,  then Gbar += (1/N) sum_i D_i
// For S = N the last rule is exactly EF21 / EControl (algorithms.md §4.3, §4.6) with n = N workers; under partial
// participation the non-sampled clients' estimates are stale (as EF21-PP) and (1/S) sum_i D_i estimates the mean
// innovation without bias over the sampling. A client's first participation with init=uncompressed sends g_i
// uncompressed (identity payload, counted as such). The worker's key is RngKey{seed, participations_i, i, 0}
// (its own step counter, which the server mirrors). Feedback is refused for SCAFFOLD/SCALLION/SCAFCOM (SCAFCOM has
// its own error feedback) and the worker's pairing rules apply (EF needs a contractive codec: scaled(<unbiased>)).
//
// Downlink compression (optional `downlink` codec, contractive or identity): the server keeps x (its model) and
// xhat (the model the clients hold); after every round it broadcasts C_down(x - xhat) and everyone sets
// xhat += D(...) (EF21-style bidirectional compression, as in EF21-BC); clients start their local steps from xhat,
// and every formula above reads x^r as xhat^r. Key RngKey{seed, lo32(r), 0xFFFFFFFF, 0xD0D0}. The server control c
// stays uncompressed. Downlink bytes: that payload per sampled client per round (plus c for the SCAFFOLD family);
// the initial model and catch-up of clients that missed rounds are not counted (the convention of the papers).
//
// Pairings: SCALLION needs an unbiased (or identity) codec, SCAFCOM a contractive one; FedAvg and SCAFFOLD take
// any codec. Errors name the algorithm and the codec spec.
// Bytes: uplink = the exact payload sizes; downlink as above. Thread-safety: one thread per object; FedClient
// objects are independent, so a caller may finish different clients on different threads.
// Randomness: client i's codec key in round r is RngKey{seed, lo32(r), i, hi32(r)} for encode and decode;
// sampling uses RngKey{seed, lo32(r), hi32(r), 0x5A4D}. Everything is bit-reproducible for a fixed seed.
// Failure atomicity: a call that returns an error leaves its object unchanged (run_round rolls back the clients it
// had already finished). State: save/load restore state (round, x, c, c_i, v_i, byte totals), not configuration;
// load checks the algorithm, num_clients, client id, numel and codec spec, and does not call StateReader::finish()
// (the caller does, after the last object), so several objects may share one state blob.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gradzip/compressors/compressor.h"
#include "gradzip/compressors/state_io.h"
#include "gradzip/error_feedback/feedback.h"

namespace gradzip {

enum class FedAlgorithm : std::uint8_t { kFedAvg = 0, kScaffold, kScallion, kScafcom };
const char* fed_algorithm_name(FedAlgorithm a);  // "fedavg", "scaffold", "scallion", "scafcom"
StatusOr<FedAlgorithm> parse_fed_algorithm(std::string_view name);

struct FedConfig {
  FedAlgorithm algorithm = FedAlgorithm::kFedAvg;
  std::size_t num_clients = 100;       // N
  std::size_t clients_per_round = 10;  // S, 1 <= S <= N
  std::size_t local_steps = 10;        // K >= 1
  double lr_local = 0.01;              // > 0
  double lr_global = 1.0;              // > 0
  double alpha = -1.0;                 // SCALLION, in (0, 1]; < 0 selects 1/(1 + omega)
  double beta = 0.2;                   // SCAFCOM momentum, in (0, 1]
  std::uint64_t seed = 0;              // client sampling and compressor randomness
  FeedbackConfig feedback;             // FedAvg only: uplink error feedback (none, ef14, ef21, econtrol)
};
/// kInvalidArgument naming the field (S > N, K = 0, lr <= 0, ...) or the forbidden algorithm/codec pairing.
Status validate(const FedConfig& c, const Compressor& uplink, std::size_t numel);
/// Bytes a client's uplink payload may take (covers the uncompressed first message of EF21/EControl).
std::size_t fed_uplink_slot_bytes(const FedConfig& c, const Compressor& uplink, std::size_t numel);

/// Byte counts of one round.
struct RoundStats {
  std::uint64_t round = 0;
  std::vector<std::size_t> clients;  // sampled, ascending
  std::uint64_t uplink_bytes = 0;    // sum of payload sizes
  std::uint64_t downlink_bytes = 0;  // identity payloads of x (and c) per sampled client
};

class FedClient {
 public:
  /// A null uplink codec means identity. A bad config, pairing or id (>= num_clients) is reported by every call.
  FedClient(const FedConfig& c, std::shared_ptr<const Compressor> uplink, std::size_t id, std::size_t numel);
  std::size_t id() const { return id_; }
  /// Ok, or the configuration error that every call of this client reports.
  const Status& status() const { return valid_; }
  /// corr_i = c - c_i for the local steps (zeros for FedAvg).
  [[nodiscard]] Status correction(Span<const float> server_c, Span<float> out) const;
  /// Client side of the uplink: from the round's x^r, server c^r and the final local iterate y_K, writes the
  /// payload into out (>= uplink codec's max_encoded_bytes(numel)) and updates c_i (and v_i).
  [[nodiscard]] Status finish(std::uint64_t round, Span<const float> x, Span<const float> server_c,
                              Span<const float> y_last, MutableBytes out, std::size_t* written);
  /// c_i (numel floats; empty for FedAvg, which keeps no client state) and v_i (SCAFCOM only; empty otherwise).
  Span<const float> control() const { return c_; }
  Span<const float> momentum() const { return v_; }
  /// The uplink feedback worker (FedAvg with feedback != none), else null.
  const FeedbackWorker* feedback() const { return fb_.get(); }
  void save(StateWriter& w) const;
  [[nodiscard]] Status load(StateReader& r);

 private:
  friend class FedSimulation;  // drives finish_impl with its own scratch and snapshots c_i, v_i for rollback
  [[nodiscard]] Status finish_impl(std::uint64_t round, Span<const float> x, Span<const float> server_c,
                                   Span<const float> y_last, MutableBytes out, std::size_t* written,
                                   Span<float> scratch, MutableBytes workspace);
  FedConfig cfg_;
  std::shared_ptr<const Compressor> codec_;
  std::size_t id_, numel_;
  double alpha_;
  Status valid_;                        // validate(cfg_, codec, numel) at construction; returned by every call
  std::vector<float> c_, v_, tmp_;      // tmp_: delta scratch of the public finish(), allocated on first use
  std::vector<std::uint64_t> ws_;       // codec workspace (8-byte aligned), allocated with tmp_
  std::unique_ptr<FeedbackWorker> fb_;  // FedAvg with uplink feedback
};

class FedServer {
 public:
  /// x0 is the initial model (numel floats). A null uplink (downlink) codec means identity.
  static StatusOr<std::unique_ptr<FedServer>> create(const FedConfig& c, std::shared_ptr<const Compressor> uplink,
                                                     Span<const float> x0,
                                                     std::shared_ptr<const Compressor> downlink = nullptr);
  /// The sampled clients of round r (ascending), a pure function of (seed, r).
  std::vector<std::size_t> sample(std::uint64_t round) const;
  Span<const float> model() const { return x_; }
  /// The model the clients hold and start from: xhat with a compressed downlink, else x.
  Span<const float> client_model() const { return down_ ? Span<const float>(xhat_) : Span<const float>(x_); }
  Span<const float> control() const { return c_; }  // c^r (zeros for FedAvg)
  /// Gbar (FedAvg with EF21/EControl feedback; empty otherwise).
  Span<const float> estimate() const { return gbar_; }
  std::uint64_t round() const { return round_; }
  /// Server side: consumes the sampled clients' payloads (same order as `clients`), updates x and c, advances
  /// the round and fills stats (uplink from the payload sizes, downlink as documented). `clients` must equal
  /// sample(round()) (kInvalidArgument otherwise); a payload of another codec or length gives kInvalidPayload.
  /// stats may be null.
  [[nodiscard]] Status aggregate(const std::vector<std::size_t>& clients, Span<const ConstBytes> payloads,
                                 RoundStats* stats);
  void save(StateWriter& w) const;
  [[nodiscard]] Status load(StateReader& r);
  const FedConfig& config() const { return cfg_; }
  const Compressor& uplink() const { return *codec_; }
  /// Null when the downlink is uncompressed.
  const Compressor* downlink() const { return down_.get(); }

 private:
  friend class FedSimulation;  // its load() dry-runs the server's records
  FedServer() = default;
  FedConfig cfg_;
  std::shared_ptr<const Compressor> codec_, identity_, down_;
  double alpha_ = 1.0;
  std::uint64_t round_ = 0;
  std::vector<float> x_, c_, acc_, gbar_, xhat_, diff_;
  std::vector<std::uint64_t> participations_;  // per client, with uplink feedback (the workers' step counters)
  std::vector<std::uint8_t> down_buf_;         // downlink payload
  std::vector<std::uint64_t> ws_;              // codec workspace (8-byte aligned)
};

/// Stochastic gradient of client `client`'s loss at y for local step k of round r, written into grad.
using GradientFn = std::function<Status(std::size_t client, std::uint64_t round, std::size_t local_step,
                                        Span<const float> y, Span<float> grad)>;

/// A whole federation in one process: the server and all N clients, driven by a C++ gradient callback.
class FedSimulation {
 public:
  static StatusOr<std::unique_ptr<FedSimulation>> create(const FedConfig& c, std::shared_ptr<const Compressor> uplink,
                                                         Span<const float> x0,
                                                         std::shared_ptr<const Compressor> downlink = nullptr);
  /// One round: sample, K local steps per sampled client (serially), uplink, aggregate.
  [[nodiscard]] Status run_round(const GradientFn& grad, RoundStats* stats);
  FedServer& server() { return *server_; }
  FedClient& client(std::size_t i) { return clients_[i]; }
  std::size_t num_clients() const { return clients_.size(); }
  void save(StateWriter& w) const;
  [[nodiscard]] Status load(StateReader& r);
  std::uint64_t total_uplink_bytes() const { return up_; }
  std::uint64_t total_downlink_bytes() const { return down_; }

 private:
  FedSimulation() = default;
  std::unique_ptr<FedServer> server_;
  std::vector<FedClient> clients_;
  std::vector<float> y_, g_, corr_;
  std::vector<std::uint8_t> buf_;                   // S payload slots of max_encoded_bytes(numel) each
  std::vector<ConstBytes> views_;                   // the S payloads of the round
  std::vector<float> snap_;                         // c_i (and v_i) of the sampled clients, restored if the round fails
  std::vector<std::vector<std::uint8_t>> fb_snap_;  // their feedback workers' state, likewise
  std::vector<std::uint64_t> ws_;                   // codec workspace
  std::uint64_t up_ = 0, down_ = 0;
};

}  // namespace gradzip
