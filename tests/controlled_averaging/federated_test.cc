// Federated layer (algorithms.md §5, §8 items 2 and 4): hand-computed traces, fp64 reference traces written
// independently of the implementation, identity reductions, the control-variate invariant under partial
// participation, convergence under heterogeneity, exact byte counts, bad input, save/load resume, rollback.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gradzip/compressors/rng.h"
#include "gradzip/controlled_averaging/federated.h"
#include "test_util.h"

namespace gradzip {
namespace {

using gradzip::testing::must_parse;
using Vec = std::vector<double>;

/// Parses a codec; skips the test while a codec is still a stub (kUnsupported), fails on any other error.
#define GZ_CODEC_OR_SKIP(var, spec)                                                 \
  std::shared_ptr<const Compressor> var;                                            \
  do {                                                                              \
    auto gz_r_ = parse_compressor(spec);                                            \
    if (!gz_r_.ok() && gz_r_.status().code() == StatusCode::kUnsupported)           \
      GTEST_SKIP() << spec << " not implemented yet: " << gz_r_.status().message(); \
    ASSERT_TRUE(gz_r_.ok()) << spec << ": " << gz_r_.status().to_string();          \
    var = std::shared_ptr<const Compressor>(std::move(gz_r_).value());              \
  } while (0)

FedConfig make_cfg(FedAlgorithm a, std::size_t n, std::size_t s, std::size_t k, double lr) {
  FedConfig c;
  c.algorithm = a;
  c.num_clients = n;
  c.clients_per_round = s;
  c.local_steps = k;
  c.lr_local = lr;
  c.lr_global = 1.0;
  c.seed = 7;
  return c;
}

std::unique_ptr<FedSimulation> make_sim(const FedConfig& c, std::shared_ptr<const Compressor> codec,
                                        const std::vector<float>& x0) {
  auto r = FedSimulation::create(c, std::move(codec), Span<const float>(x0));
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  if (!r.ok()) return nullptr;
  return std::move(r).value();
}

RngKey client_key(std::uint64_t seed, std::uint64_t round, std::size_t client) {
  RngKey k;
  k.seed = seed;
  k.step = static_cast<std::uint32_t>(round);
  k.rank = static_cast<std::uint32_t>(client);
  k.stream = static_cast<std::uint32_t>(round >> 32);
  return k;
}

// ---------------------------------------------------------------------------------------------------------------
// Small separable quadratics for traces: f_i(y) = 0.5 sum_j a_ij (y_j - m_ij)^2, gradient a_ij (y_j - m_ij).

const double kA[3][2] = {{1.0, 2.0}, {2.0, 1.0}, {0.5, 3.0}};
const double kM[3][2] = {{1.0, 0.0}, {-1.0, 2.0}, {3.0, -2.0}};

Vec quad_grad(std::size_t i, const Vec& y) {
  return {kA[i][0] * (y[0] - kM[i][0]), kA[i][1] * (y[1] - kM[i][1])};
}

GradientFn quad_grad_fn() {
  return [](std::size_t i, std::uint64_t, std::size_t, Span<const float> y, Span<float> g) {
    if (y.size() != 2 || g.size() != 2 || i > 2) return Status::InvalidArgument("test grad: bad sizes");
    const Vec gd = quad_grad(i, {y[0], y[1]});
    g[0] = static_cast<float>(gd[0]);
    g[1] = static_cast<float>(gd[1]);
    return Status::Ok();
  };
}

// ---------------------------------------------------------------------------------------------------------------
// fp64 reference of algorithms.md §5, written from the formulas (not from federated.cc).

using RefCompress = std::function<Vec(std::size_t client, std::uint64_t round, const Vec& v)>;  // D(C(v))
using RefGrad = std::function<Vec(std::size_t client, const Vec& y)>;

struct Ref {
  FedConfig cfg;
  double alpha = 1.0;  // SCALLION's a
  Vec x, c;
  std::vector<Vec> ci, vi;
  Ref(const FedConfig& f, double a, const Vec& x0)
      : cfg(f),
        alpha(a),
        x(x0),
        c(x0.size(), 0.0),
        ci(f.num_clients, Vec(x0.size(), 0.0)),
        vi(f.num_clients, Vec(x0.size(), 0.0)) {}

  Vec local(std::size_t i, const RefGrad& g) const {
    Vec y = x;
    const bool ctl = cfg.algorithm != FedAlgorithm::kFedAvg;
    for (std::size_t k = 0; k < cfg.local_steps; ++k) {
      const Vec gr = g(i, y);
      for (std::size_t j = 0; j < y.size(); ++j) y[j] -= cfg.lr_local * (gr[j] + (ctl ? c[j] - ci[i][j] : 0.0));
    }
    return y;
  }

  void round(std::uint64_t r, const std::vector<std::size_t>& clients, const RefGrad& g, const RefCompress& C) {
    const std::size_t d = x.size(), S = clients.size(), N = cfg.num_clients;
    const double E = static_cast<double>(cfg.local_steps) * cfg.lr_local;
    Vec sum(d, 0.0);
    for (std::size_t i : clients) {
      const Vec y = local(i, g);
      Vec msg(d);
      switch (cfg.algorithm) {
        case FedAlgorithm::kFedAvg:
          for (std::size_t j = 0; j < d; ++j) msg[j] = y[j] - x[j];
          break;
        case FedAlgorithm::kScaffold:
        case FedAlgorithm::kScallion:
          for (std::size_t j = 0; j < d; ++j) msg[j] = (x[j] - y[j]) / E - c[j];
          break;
        case FedAlgorithm::kScafcom:
          for (std::size_t j = 0; j < d; ++j) {
            const double gh = (x[j] - y[j]) / E + ci[i][j] - c[j];
            vi[i][j] = (1 - cfg.beta) * vi[i][j] + cfg.beta * gh;
            msg[j] = vi[i][j] - ci[i][j];
          }
          break;
      }
      const Vec dt = C(i, r, msg);
      const double a = cfg.algorithm == FedAlgorithm::kScallion ? alpha : 1.0;
      if (cfg.algorithm != FedAlgorithm::kFedAvg)
        for (std::size_t j = 0; j < d; ++j) ci[i][j] += a * dt[j];
      for (std::size_t j = 0; j < d; ++j) sum[j] += dt[j];
    }
    if (cfg.algorithm == FedAlgorithm::kFedAvg) {
      for (std::size_t j = 0; j < d; ++j) x[j] += cfg.lr_global * sum[j] / static_cast<double>(S);
    } else {
      const double a = cfg.algorithm == FedAlgorithm::kScallion ? alpha : 1.0;
      for (std::size_t j = 0; j < d; ++j) {
        x[j] -= cfg.lr_global * E * (c[j] + sum[j] / static_cast<double>(S));
        c[j] += a * sum[j] / static_cast<double>(N);
      }
    }
  }
};

/// SCAFFOLD option II in its original two-vector form (algorithms.md §5.2): upload dy and dc.
struct RefScaffold2 {
  FedConfig cfg;
  Vec x, c;
  std::vector<Vec> ci;
  RefScaffold2(const FedConfig& f, const Vec& x0)
      : cfg(f), x(x0), c(x0.size(), 0.0), ci(f.num_clients, Vec(x0.size(), 0.0)) {}
  void round(const std::vector<std::size_t>& clients, const RefGrad& g) {
    const std::size_t d = x.size();
    Vec sdy(d, 0.0), sdc(d, 0.0);
    for (std::size_t i : clients) {
      Vec y = x;
      for (std::size_t k = 0; k < cfg.local_steps; ++k) {
        const Vec gr = g(i, y);
        for (std::size_t j = 0; j < d; ++j) y[j] -= cfg.lr_local * (gr[j] - ci[i][j] + c[j]);
      }
      for (std::size_t j = 0; j < d; ++j) {
        const double cplus = ci[i][j] - c[j] + (x[j] - y[j]) / (static_cast<double>(cfg.local_steps) * cfg.lr_local);
        sdy[j] += y[j] - x[j];
        sdc[j] += cplus - ci[i][j];
        ci[i][j] = cplus;
      }
    }
    for (std::size_t j = 0; j < d; ++j) {
      x[j] += cfg.lr_global * sdy[j] / static_cast<double>(clients.size());
      c[j] += sdc[j] / static_cast<double>(cfg.num_clients);
    }
  }
};

Vec ref_identity(std::size_t, std::uint64_t, const Vec& v) {
  return v;
}
/// Top-1, ties to the lower index; asserts the trace never comes near a tie (so float vs fp64 cannot flip it).
Vec ref_top1(std::size_t, std::uint64_t, const Vec& v) {
  std::size_t best = 0;
  for (std::size_t j = 1; j < v.size(); ++j)
    if (std::fabs(v[j]) > std::fabs(v[best])) best = j;
  for (std::size_t j = 0; j < v.size(); ++j)
    if (j != best) {
      EXPECT_GT(std::fabs(v[best]) - std::fabs(v[j]), 1e-4 * (1 + std::fabs(v[best]))) << "near tie";
    }
  Vec out(v.size(), 0.0);
  out[best] = v[best];
  return out;
}
/// Scaled sign (algorithms.md §2.2): ||v||_1 / d * sign(v), sign(0) = +1.
Vec ref_sign(std::size_t, std::uint64_t, const Vec& v) {
  double l1 = 0;
  for (double t : v) l1 += std::fabs(t);
  Vec out(v.size());
  for (std::size_t j = 0; j < v.size(); ++j) out[j] = (v[j] < 0 ? -1.0 : 1.0) * l1 / static_cast<double>(v.size());
  return out;
}
/// A stochastic codec as an oracle, keyed exactly as federated.h documents (seed, round, client).
RefCompress ref_oracle(std::shared_ptr<const Compressor> codec, std::uint64_t seed) {
  return [codec, seed](std::size_t client, std::uint64_t round, const Vec& v) {
    std::vector<float> f(v.begin(), v.end());
    Exec ex;
    ex.rng = client_key(seed, round, client);
    const std::vector<float> y = gradzip::testing::roundtrip(*codec, f, ex);
    return Vec(y.begin(), y.end());
  };
}

void expect_close(Span<const float> got, const Vec& want, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (std::size_t j = 0; j < want.size(); ++j)
    EXPECT_NEAR(got[j], want[j], tol * (1.0 + std::fabs(want[j]))) << what << "[" << j << "]";
}

/// Runs `rounds` rounds of the implementation and of the fp64 reference side by side, comparing x, c, c_i, v_i
/// after every round.
void check_trace(const FedConfig& cfg, std::shared_ptr<const Compressor> codec, double ref_alpha, RefCompress C,
                 int rounds, double tol = 2e-5) {
  const std::vector<float> x0 = {0.5f, -0.25f};
  auto sim = make_sim(cfg, codec, x0);
  ASSERT_TRUE(sim);
  Ref ref(cfg, ref_alpha, Vec{0.5, -0.25});
  const GradientFn g = quad_grad_fn();
  for (int r = 0; r < rounds; ++r) {
    const std::vector<std::size_t> clients = sim->server().sample(r);
    ASSERT_EQ(clients.size(), cfg.clients_per_round);
    RoundStats st;
    GZ_ASSERT_OK(sim->run_round(g, &st));
    EXPECT_EQ(st.clients, clients);
    EXPECT_EQ(st.round, static_cast<std::uint64_t>(r));
    ref.round(r, clients, quad_grad, C);
    const std::string tag =
        std::string(fed_algorithm_name(cfg.algorithm)) + " " + codec->spec() + " round " + std::to_string(r) + " ";
    expect_close(sim->server().model(), ref.x, tol, tag + "x");
    if (cfg.algorithm == FedAlgorithm::kFedAvg) continue;
    expect_close(sim->server().control(), ref.c, tol, tag + "c");
    for (std::size_t i = 0; i < cfg.num_clients; ++i) {
      expect_close(sim->client(i).control(), ref.ci[i], tol, tag + "c_" + std::to_string(i));
      if (cfg.algorithm == FedAlgorithm::kScafcom)
        expect_close(sim->client(i).momentum(), ref.vi[i], tol, tag + "v_" + std::to_string(i));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------

TEST(FedAlgorithmName, RoundTripsAndRejectsUnknown) {
  for (FedAlgorithm a :
       {FedAlgorithm::kFedAvg, FedAlgorithm::kScaffold, FedAlgorithm::kScallion, FedAlgorithm::kScafcom}) {
    auto p = parse_fed_algorithm(fed_algorithm_name(a));
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(*p, a);
  }
  EXPECT_STREQ(fed_algorithm_name(FedAlgorithm::kScafcom), "scafcom");
  auto bad = parse_fed_algorithm("scafold");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("'scafold'"), std::string::npos);
  EXPECT_NE(bad.status().message().find("scallion"), std::string::npos);
  EXPECT_FALSE(parse_fed_algorithm("").ok());
  EXPECT_FALSE(parse_fed_algorithm("FedAvg").ok());
}

TEST(FedValidate, RejectsBadConfigsNamingTheField) {
  auto id = must_parse("identity");
  const FedConfig ok = make_cfg(FedAlgorithm::kScaffold, 4, 2, 3, 0.1);
  GZ_ASSERT_OK(validate(ok, *id, 10));
  struct Case {
    std::function<void(FedConfig&)> mutate;
    const char* needle;
  };
  const std::vector<Case> cases = {
      {[](FedConfig& c) { c.clients_per_round = 5; }, "clients_per_round=5"},
      {[](FedConfig& c) { c.clients_per_round = 0; }, "clients_per_round=0"},
      {[](FedConfig& c) { c.num_clients = 0; }, "num_clients=0"},
      {[](FedConfig& c) { c.local_steps = 0; }, "local_steps=0"},
      {[](FedConfig& c) { c.lr_local = 0; }, "lr_local=0"},
      {[](FedConfig& c) { c.lr_local = -0.1; }, "lr_local=-0.1"},
      {[](FedConfig& c) { c.lr_local = std::nan(""); }, "lr_local"},
      {[](FedConfig& c) { c.lr_global = 0; }, "lr_global=0"},
      {[](FedConfig& c) { c.lr_global = INFINITY; }, "lr_global"},
      {[](FedConfig& c) { c.alpha = 0; }, "alpha=0"},
      {[](FedConfig& c) { c.alpha = 1.5; }, "alpha=1.5"},
      {[](FedConfig& c) { c.alpha = std::nan(""); }, "alpha"},
      {[](FedConfig& c) { c.beta = 0; }, "beta=0"},
      {[](FedConfig& c) { c.beta = 1.5; }, "beta=1.5"},
  };
  for (const Case& k : cases) {
    FedConfig c = ok;
    k.mutate(c);
    const Status s = validate(c, *id, 10);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << k.needle;
    EXPECT_NE(s.message().find(k.needle), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("scaffold"), std::string::npos) << s.message();
  }
  GZ_EXPECT_CODE(validate(ok, *id, 0), StatusCode::kInvalidArgument);
  // alpha < 0 selects the default; alpha = 1 and beta = 1 are in range.
  FedConfig c = ok;
  c.alpha = -3;
  GZ_EXPECT_CODE(validate(c, *id, 10), StatusCode::kOk);
  c.alpha = 1;
  c.beta = 1;
  GZ_EXPECT_CODE(validate(c, *id, 10), StatusCode::kOk);
  // S = N is allowed.
  c.clients_per_round = 4;
  GZ_EXPECT_CODE(validate(c, *id, 10), StatusCode::kOk);
}

TEST(FedValidate, PairingsFollowTheTheory) {
  GZ_CODEC_OR_SKIP(topk, "topk:ratio=0.1");
  GZ_CODEC_OR_SKIP(sign, "sign");
  GZ_CODEC_OR_SKIP(randk, "randk:ratio=0.25");
  GZ_CODEC_OR_SKIP(qsgd, "qsgd:levels=4");
  GZ_CODEC_OR_SKIP(scaled, "scaled(randk:ratio=0.25)");
  auto id = must_parse("identity");
  const std::size_t d = 40;
  FedConfig sc = make_cfg(FedAlgorithm::kScallion, 4, 2, 2, 0.1);
  FedConfig sf = make_cfg(FedAlgorithm::kScafcom, 4, 2, 2, 0.1);
  for (const Compressor* c : {topk.get(), sign.get(), scaled.get()}) {
    const Status s = validate(sc, *c, d);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << c->spec();
    EXPECT_NE(s.message().find("scallion"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find(c->spec()), std::string::npos) << s.message();
    GZ_EXPECT_CODE(validate(sf, *c, d), StatusCode::kOk);
  }
  for (const Compressor* c : {randk.get(), qsgd.get()}) {
    const Status s = validate(sf, *c, d);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << c->spec();
    EXPECT_NE(s.message().find("scafcom"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find(c->spec()), std::string::npos) << s.message();
    GZ_EXPECT_CODE(validate(sc, *c, d), StatusCode::kOk);
  }
  GZ_EXPECT_CODE(validate(sc, *id, d), StatusCode::kOk);
  GZ_EXPECT_CODE(validate(sf, *id, d), StatusCode::kOk);
  for (FedAlgorithm a : {FedAlgorithm::kFedAvg, FedAlgorithm::kScaffold}) {
    const FedConfig c = make_cfg(a, 4, 2, 2, 0.1);
    for (const Compressor* k :
         std::initializer_list<const Compressor*>{topk.get(), sign.get(), randk.get(), qsgd.get(), id.get()})
      GZ_EXPECT_CODE(validate(c, *k, d), StatusCode::kOk);
  }
  // The codec's own size check is reported with the codec spec.
  auto k10 = must_parse("topk:k=10");
  const Status s = validate(make_cfg(FedAlgorithm::kFedAvg, 4, 2, 2, 0.1), *k10, 5);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("topk:k=10"), std::string::npos) << s.message();
}

TEST(FedSampling, UniformWithoutReplacementAndPure) {
  const std::vector<float> x0(3, 0.0f);
  FedConfig c = make_cfg(FedAlgorithm::kFedAvg, 10, 3, 1, 0.1);
  auto a = FedServer::create(c, nullptr, Span<const float>(x0));
  ASSERT_TRUE(a.ok());
  auto b = FedServer::create(c, nullptr, Span<const float>(x0));
  c.seed = 8;
  auto other = FedServer::create(c, nullptr, Span<const float>(x0));
  const std::uint64_t R = 6000;
  std::vector<double> count(10, 0.0);
  int differ = 0;
  for (std::uint64_t r = 0; r < R; ++r) {
    const std::vector<std::size_t> s = (*a)->sample(r);
    ASSERT_EQ(s.size(), 3u);
    for (std::size_t j = 0; j < s.size(); ++j) {
      ASSERT_LT(s[j], 10u);
      if (j) {
        ASSERT_LT(s[j - 1], s[j]);  // ascending and distinct
      }
      count[s[j]] += 1;
    }
    ASSERT_EQ(s, (*b)->sample(r));  // pure function of (seed, round)
    ASSERT_EQ(s, (*a)->sample(r));
    differ += s != (*other)->sample(r);
  }
  EXPECT_GT(differ, static_cast<int>(R / 2));  // another seed gives another schedule
  // Each client is sampled with probability p = S/N = 0.3 per round: count ~ Binomial(R, p), mean 1800,
  // sd = sqrt(R p (1 - p)) = 35.5. Allow 5 sd.
  const double mean = R * 0.3, sd = std::sqrt(R * 0.3 * 0.7);
  for (double k : count) EXPECT_NEAR(k, mean, 5 * sd);
  // Large rounds (beyond 2^32) still sample validly and differ from the low-32-bit round.
  EXPECT_EQ((*a)->sample((1ull << 32) + 5).size(), 3u);
  // S = N: everybody, every round.
  FedConfig all = make_cfg(FedAlgorithm::kFedAvg, 4, 4, 1, 0.1);
  auto full = FedServer::create(all, nullptr, Span<const float>(x0));
  EXPECT_EQ((*full)->sample(3), (std::vector<std::size_t>{0, 1, 2, 3}));
}

// Round 0 and 1 of FedAvg and SCAFFOLD worked by hand (N = S = 2, K = 2, lr_local = 0.1, lr_global = 1, x0 = 0,
// clients 0 and 1 of kA/kM):
//   client 0, round 0: g(0,0) = (-1, 0) -> y1 = (0.1, 0); g = (-0.9, 0) -> y2 = (0.19, 0)
//   client 1, round 0: g(0,0) = (2, -2) -> y1 = (-0.2, 0.2); g = (1.6, -1.8) -> y2 = (-0.36, 0.38)
//   FedAvg x1 = mean(y2) = (-0.085, 0.19). SCAFFOLD: delta_0 = -y2/0.2 = (-0.95, 0), delta_1 = (1.8, -1.9),
//   x1 = -0.2 * mean(delta) = (-0.085, 0.19), c1 = mean(delta) = (0.425, -0.95), c_0 = delta_0, c_1 = delta_1.
//   SCAFFOLD round 1 (corr_0 = (1.375, -0.95), corr_1 = (-1.375, 0.95)):
//     client 0: y1 = (-0.114, 0.247), y2 = (-0.1401, 0.2926), delta_0 = (-0.1495, 0.437)
//     client 1: y1 = (-0.1305, 0.276), y2 = (-0.1669, 0.3534), delta_1 = (-0.0155, 0.133)
//     x2 = x1 - 0.2 (c1 + mean delta) = (-0.1535, 0.323), c2 = (0.3425, -0.665),
//     c_0 = (-1.0995, 0.437), c_1 = (1.7845, -1.767).
//   FedAvg round 1: x2 = (-0.146625, 0.32775).
TEST(FedTrace, HandComputedFedAvgAndScaffold) {
  const std::vector<float> x0 = {0.0f, 0.0f};
  const GradientFn g = quad_grad_fn();
  const double tol = 2e-6;
  auto fa = make_sim(make_cfg(FedAlgorithm::kFedAvg, 2, 2, 2, 0.1), nullptr, x0);
  auto sf = make_sim(make_cfg(FedAlgorithm::kScaffold, 2, 2, 2, 0.1), nullptr, x0);
  ASSERT_TRUE(fa && sf);
  GZ_ASSERT_OK(fa->run_round(g, nullptr));
  GZ_ASSERT_OK(sf->run_round(g, nullptr));
  expect_close(fa->server().model(), {-0.085, 0.19}, tol, "fedavg x1");
  expect_close(sf->server().model(), {-0.085, 0.19}, tol, "scaffold x1");
  expect_close(sf->server().control(), {0.425, -0.95}, tol, "scaffold c1");
  expect_close(sf->client(0).control(), {-0.95, 0.0}, tol, "c_0");
  expect_close(sf->client(1).control(), {1.8, -1.9}, tol, "c_1");
  EXPECT_TRUE(fa->client(0).control().empty());  // FedAvg keeps no client state
  GZ_ASSERT_OK(fa->run_round(g, nullptr));
  GZ_ASSERT_OK(sf->run_round(g, nullptr));
  expect_close(fa->server().model(), {-0.146625, 0.32775}, tol, "fedavg x2");
  expect_close(sf->server().model(), {-0.1535, 0.323}, tol, "scaffold x2");
  expect_close(sf->server().control(), {0.3425, -0.665}, tol, "scaffold c2");
  expect_close(sf->client(0).control(), {-1.0995, 0.437}, tol, "c_0");
  expect_close(sf->client(1).control(), {1.7845, -1.767}, tol, "c_1");
  std::vector<float> corr(2);
  GZ_ASSERT_OK(sf->client(0).correction(sf->server().control(), Span<float>(corr)));
  expect_close(Span<const float>(corr), {0.3425 + 1.0995, -0.665 - 0.437}, tol, "corr_0");
}

struct TraceCase {
  FedAlgorithm alg;
  const char* spec;
  double alpha, beta;
};

TEST(FedTrace, MatchesFp64ReferenceFullAndPartialParticipation) {
  const std::vector<TraceCase> cases = {
      {FedAlgorithm::kFedAvg, "identity", -1, 0.2},    {FedAlgorithm::kFedAvg, "sign", -1, 0.2},
      {FedAlgorithm::kScaffold, "identity", -1, 0.2},  {FedAlgorithm::kScaffold, "sign", -1, 0.2},
      {FedAlgorithm::kScallion, "identity", 0.5, 0.2}, {FedAlgorithm::kScallion, "identity", -1, 0.2},
      {FedAlgorithm::kScafcom, "identity", -1, 0.5},   {FedAlgorithm::kScafcom, "topk:k=1", -1, 0.5},
      {FedAlgorithm::kScafcom, "sign", -1, 0.3},
  };
  for (const TraceCase& tc : cases) {
    GZ_CODEC_OR_SKIP(codec, tc.spec);
    const std::string spec = tc.spec;
    RefCompress C = spec == "identity" ? RefCompress(ref_identity)
                    : spec == "sign"   ? RefCompress(ref_sign)
                                       : RefCompress(ref_top1);
    for (std::size_t S : {3, 2}) {
      SCOPED_TRACE(std::string(fed_algorithm_name(tc.alg)) + " " + spec + " S=" + std::to_string(S));
      FedConfig cfg = make_cfg(tc.alg, 3, S, 2, 0.1);
      cfg.lr_global = 0.8;
      cfg.alpha = tc.alpha;
      cfg.beta = tc.beta;
      check_trace(cfg, codec, tc.alpha < 0 ? 1.0 : tc.alpha, C, 6);
    }
  }
}

TEST(FedTrace, ScallionWithStochasticCodecMatchesOracleReference) {
  // Rand-K as an oracle (the codec itself, keyed (seed, round, client) as documented): checks the SCALLION
  // plumbing around a stochastic codec — alpha on c_i and c only, the unscaled D_i in the x-update, the keys.
  for (const char* spec : {"randk:k=1", "randk:k=1,shared=0"}) {
    GZ_CODEC_OR_SKIP(codec, spec);
    const double omega = codec->traits(2).omega;  // d/k - 1 = 1
    EXPECT_DOUBLE_EQ(omega, 1.0);
    for (std::size_t S : {3, 2}) {
      SCOPED_TRACE(std::string(spec) + " S=" + std::to_string(S));
      FedConfig cfg = make_cfg(FedAlgorithm::kScallion, 3, S, 2, 0.1);
      cfg.alpha = -1;  // default 1/(1+omega) = 0.5
      check_trace(cfg, codec, 1.0 / (1.0 + omega), ref_oracle(codec, cfg.seed), 6);
    }
  }
}

// §8.2: SCALLION (alpha = 1) and SCAFCOM (beta = 1) with identity are SCAFFOLD; SCAFFOLD (identity) is option II
// in its two-vector form.
TEST(FedReduction, ScallionAndScafcomReduceToScaffoldOptionII) {
  const std::vector<float> x0 = {0.5f, -0.25f};
  const GradientFn g = quad_grad_fn();
  for (std::size_t S : {3, 2}) {
    FedConfig base = make_cfg(FedAlgorithm::kScaffold, 3, S, 3, 0.07);
    base.lr_global = 0.9;
    FedConfig sl = base, sc = base;
    sl.algorithm = FedAlgorithm::kScallion;
    sl.alpha = 1.0;
    sc.algorithm = FedAlgorithm::kScafcom;
    sc.beta = 1.0;
    auto a = make_sim(base, nullptr, x0), b = make_sim(sl, nullptr, x0), c = make_sim(sc, nullptr, x0);
    RefScaffold2 ref(base, Vec{0.5, -0.25});
    for (int r = 0; r < 8; ++r) {
      GZ_ASSERT_OK(a->run_round(g, nullptr));
      GZ_ASSERT_OK(b->run_round(g, nullptr));
      GZ_ASSERT_OK(c->run_round(g, nullptr));
      ref.round(a->server().sample(r), quad_grad);
      const std::string t = "S=" + std::to_string(S) + " round " + std::to_string(r);
      expect_close(a->server().model(), ref.x, 2e-5, t + " scaffold x vs two-vector");
      expect_close(a->server().control(), ref.c, 2e-5, t + " scaffold c vs two-vector");
      for (std::size_t i = 0; i < 3; ++i) expect_close(a->client(i).control(), ref.ci[i], 2e-5, t + " c_i");
      const Vec xa(a->server().model().begin(), a->server().model().end());
      const Vec ca(a->server().control().begin(), a->server().control().end());
      expect_close(b->server().model(), xa, 1e-5, t + " scallion(alpha=1) x");
      expect_close(b->server().control(), ca, 1e-5, t + " scallion(alpha=1) c");
      expect_close(c->server().model(), xa, 1e-5, t + " scafcom(beta=1) x");
      expect_close(c->server().control(), ca, 1e-5, t + " scafcom(beta=1) c");
    }
  }
}

// §8.2 "SCAFFOLD with c = 0 is FedAvg": the first SCAFFOLD round (all controls 0) is a FedAvg round, and FedAvg
// is local SGD with averaging (written out here).
TEST(FedReduction, FedAvgIsLocalSgdAveragingAndScaffoldRoundZero) {
  const std::vector<float> x0 = {0.5f, -0.25f};
  const GradientFn g = quad_grad_fn();
  FedConfig fc = make_cfg(FedAlgorithm::kFedAvg, 3, 2, 4, 0.05);
  fc.lr_global = 1.3;
  auto fa = make_sim(fc, nullptr, x0);
  FedConfig sc = fc;
  sc.algorithm = FedAlgorithm::kScaffold;
  auto sf = make_sim(sc, nullptr, x0);
  GZ_ASSERT_OK(sf->run_round(g, nullptr));
  Vec x = {0.5, -0.25};
  for (int r = 0; r < 10; ++r) {
    const std::vector<std::size_t> clients = fa->server().sample(r);
    GZ_ASSERT_OK(fa->run_round(g, nullptr));
    Vec sum(2, 0.0);
    for (std::size_t i : clients) {
      Vec y = x;
      for (int k = 0; k < 4; ++k) {
        const Vec gr = quad_grad(i, y);
        for (int j = 0; j < 2; ++j) y[j] -= 0.05 * gr[j];
      }
      for (int j = 0; j < 2; ++j) sum[j] += y[j] - x[j];
    }
    for (int j = 0; j < 2; ++j) x[j] += 1.3 * sum[j] / 2.0;
    expect_close(fa->server().model(), x, 2e-6, "fedavg round " + std::to_string(r));
    if (r == 0) expect_close(sf->server().model(), x, 2e-6, "scaffold round 0 = fedavg round 0");
  }
}

// §8.4: c^r = (1/N) sum_i c_i^r after every round, with partial participation and lossy codecs; non-sampled
// clients keep their state. The invariant is exact in real arithmetic (both sides add the same decoded D_i); in
// float each round adds O(eps) relative error per element, so after R rounds |c - mean c_i| <= ~R * S * eps * scale;
// we allow 1e-5 * (1 + max |c_i|) with R = 40 (R S eps ~ 6e-5 relative worst case; typical far smaller).
TEST(FedInvariant, ServerControlIsMeanOfClientControls) {
  struct Case {
    FedAlgorithm alg;
    const char* spec;
  };
  const std::vector<Case> cases = {{FedAlgorithm::kScaffold, "identity"},
                                   {FedAlgorithm::kScaffold, "topk:ratio=0.25"},
                                   {FedAlgorithm::kScallion, "qsgd:levels=4"},
                                   {FedAlgorithm::kScallion, "randk:ratio=0.25"},
                                   {FedAlgorithm::kScallion, "randk:ratio=0.25,shared=0"},
                                   {FedAlgorithm::kScafcom, "topk:ratio=0.1"},
                                   {FedAlgorithm::kScafcom, "sign"}};
  const std::size_t N = 10, S = 3, d = 16;
  // f_i(y) = 0.5 ||y - m_i||^2 * w_i with per-client centres and curvatures.
  std::vector<std::vector<float>> m(N);
  for (std::size_t i = 0; i < N; ++i) m[i] = gradzip::testing::gaussian(d, 100 + static_cast<unsigned>(i), 3.0f);
  GradientFn g = [&](std::size_t i, std::uint64_t, std::size_t, Span<const float> y, Span<float> out) {
    const float w = 0.5f + 0.1f * static_cast<float>(i);
    for (std::size_t j = 0; j < d; ++j) out[j] = w * (y[j] - m[i][j]);
    return Status::Ok();
  };
  for (const Case& k : cases) {
    GZ_CODEC_OR_SKIP(codec, k.spec);
    SCOPED_TRACE(std::string(fed_algorithm_name(k.alg)) + " " + k.spec);
    FedConfig cfg = make_cfg(k.alg, N, S, 3, 0.1);
    cfg.beta = 0.3;
    auto sim = make_sim(cfg, codec, std::vector<float>(d, 0.0f));
    ASSERT_TRUE(sim);
    for (int r = 0; r < 40; ++r) {
      std::vector<std::vector<float>> before(N);
      for (std::size_t i = 0; i < N; ++i)
        before[i].assign(sim->client(i).control().begin(), sim->client(i).control().end());
      const std::vector<std::size_t> sampled = sim->server().sample(r);
      GZ_ASSERT_OK(sim->run_round(g, nullptr));
      double scale = 0;
      Vec mean(d, 0.0);
      for (std::size_t i = 0; i < N; ++i) {
        Span<const float> ci = sim->client(i).control();
        for (std::size_t j = 0; j < d; ++j) {
          mean[j] += ci[j] / static_cast<double>(N);
          scale = std::max(scale, static_cast<double>(std::fabs(ci[j])));
        }
        const bool in = std::find(sampled.begin(), sampled.end(), i) != sampled.end();
        if (!in) {
          ASSERT_EQ(0, std::memcmp(before[i].data(), ci.data(), 4 * d)) << "client " << i << " changed";
        }
      }
      Span<const float> c = sim->server().control();
      for (std::size_t j = 0; j < d; ++j)
        ASSERT_NEAR(c[j], mean[j], 1e-5 * (1 + scale)) << "round " << r << " element " << j;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Heterogeneous synthetic least squares (algorithms.md §8.6 in its federated form): N = 20 clients,
// f_i(x) = 0.5 ||A_i x - b_i||^2 with A_i = diag(s_i) + 0.3 G_i / sqrt(d) (s_i ~ U[0.5, 1.5]) and b_i = A_i x_i*,
// x_i* ~ 10 N(0, I): very different minimisers and Hessians. x* = (sum H_i)^{-1} sum H_i x_i* in fp64.

struct Hetero {
  std::size_t n = 20, d = 30;
  Vec a, b, xstar;
};

Hetero make_hetero(unsigned seed) {
  Hetero p;
  const std::size_t n = p.n, d = p.d;
  p.a.assign(n * d * d, 0.0);
  p.b.assign(n * d, 0.0);
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> unif(0.5, 1.5);
  Vec h(d * d, 0.0), r(d, 0.0), xi(d);
  for (std::size_t c = 0; c < n; ++c) {
    double* a = &p.a[c * d * d];
    for (std::size_t i = 0; i < d; ++i) {
      for (std::size_t j = 0; j < d; ++j) a[i * d + j] = 0.3 * normal(gen) / std::sqrt(static_cast<double>(d));
      a[i * d + i] += unif(gen);
    }
    for (auto& v : xi) v = 10.0 * normal(gen);
    for (std::size_t i = 0; i < d; ++i)
      for (std::size_t j = 0; j < d; ++j) p.b[c * d + i] += a[i * d + j] * xi[j];
    for (std::size_t i = 0; i < d; ++i) {
      for (std::size_t j = 0; j < d; ++j)
        for (std::size_t k = 0; k < d; ++k) h[i * d + j] += a[k * d + i] * a[k * d + j];
      for (std::size_t k = 0; k < d; ++k) r[i] += a[k * d + i] * p.b[c * d + k];
    }
  }
  // Gaussian elimination with partial pivoting on [H | r].
  for (std::size_t col = 0; col < d; ++col) {
    std::size_t piv = col;
    for (std::size_t i = col + 1; i < d; ++i)
      if (std::fabs(h[i * d + col]) > std::fabs(h[piv * d + col])) piv = i;
    for (std::size_t j = 0; j < d; ++j) std::swap(h[col * d + j], h[piv * d + j]);
    std::swap(r[col], r[piv]);
    for (std::size_t i = col + 1; i < d; ++i) {
      const double f = h[i * d + col] / h[col * d + col];
      for (std::size_t j = col; j < d; ++j) h[i * d + j] -= f * h[col * d + j];
      r[i] -= f * r[col];
    }
  }
  p.xstar.assign(d, 0.0);
  for (std::size_t i = d; i-- > 0;) {
    double s = r[i];
    for (std::size_t j = i + 1; j < d; ++j) s -= h[i * d + j] * p.xstar[j];
    p.xstar[i] = s / h[i * d + i];
  }
  return p;
}

GradientFn hetero_grad(const Hetero& p) {
  return [&p](std::size_t c, std::uint64_t, std::size_t, Span<const float> y, Span<float> g) {
    const std::size_t d = p.d;
    const double* a = &p.a[c * d * d];
    double res[64];
    for (std::size_t i = 0; i < d; ++i) {
      double s = -p.b[c * d + i];
      for (std::size_t j = 0; j < d; ++j) s += a[i * d + j] * y[j];
      res[i] = s;
    }
    for (std::size_t j = 0; j < d; ++j) {
      double s = 0;
      for (std::size_t i = 0; i < d; ++i) s += a[i * d + j] * res[i];
      g[j] = static_cast<float>(s);
    }
    return Status::Ok();
  };
}

double rel_err(const Hetero& p, Span<const float> x) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < p.d; ++i) {
    num += (x[i] - p.xstar[i]) * (x[i] - p.xstar[i]);
    den += p.xstar[i] * p.xstar[i];
  }
  return std::sqrt(num / den);
}

struct ConvResult {
  double final_err = 0, min_tail_err = 1e300, last_move = 0;
  int rounds_to_1e4 = -1;
};

ConvResult run_hetero(const Hetero& p, FedAlgorithm alg, std::shared_ptr<const Compressor> codec, double beta,
                      std::size_t S, int rounds) {
  FedConfig cfg = make_cfg(alg, p.n, S, 5, 0.05);
  cfg.beta = beta;
  cfg.seed = 11;
  ConvResult out;
  auto sim = make_sim(cfg, std::move(codec), std::vector<float>(p.d, 0.0f));
  if (!sim) return out;
  const GradientFn g = hetero_grad(p);
  std::vector<float> prev(p.d);
  for (int r = 0; r < rounds; ++r) {
    std::copy(sim->server().model().begin(), sim->server().model().end(), prev.begin());
    const Status s = sim->run_round(g, nullptr);
    EXPECT_TRUE(s.ok()) << s.to_string();
    if (!s.ok()) return out;
    const double e = rel_err(p, sim->server().model());
    if (out.rounds_to_1e4 < 0 && e <= 1e-4) out.rounds_to_1e4 = r + 1;
    if (r >= rounds - 100) out.min_tail_err = std::min(out.min_tail_err, e);
    out.final_err = e;
  }
  double mv = 0;
  for (std::size_t j = 0; j < p.d; ++j)
    mv = std::max(mv, static_cast<double>(std::fabs(sim->server().model()[j] - prev[j])));
  out.last_move = mv;
  return out;
}

void print_result(const char* what, const ConvResult& r) {
  std::printf("[ measure  ] %-44s final_rel_err=%.3e  min_last100=%.3e  rounds_to_1e-4=%d  last_move=%.2e\n", what,
              r.final_err, r.min_tail_err, r.rounds_to_1e4, r.last_move);
}

TEST(FedConvergence, FedAvgDriftsToABiasedPoint) {
  const Hetero p = make_hetero(3);
  // Full participation: FedAvg settles (the last step moves x by ~nothing) at a point far from x*: client drift.
  const ConvResult full = run_hetero(p, FedAlgorithm::kFedAvg, nullptr, 0.2, 20, 600);
  print_result("fedavg identity S=20 (600 rounds)", full);
  // Partial participation: sampling noise on top of the drift.
  const ConvResult part = run_hetero(p, FedAlgorithm::kFedAvg, nullptr, 0.2, 5, 600);
  print_result("fedavg identity S=5 (600 rounds)", part);
  // Measured (seed 3): S = N settles at relative error 8.6e-2 (last move 9e-8: a fixed point, not noise);
  // S = 5 wanders with min over the last 100 rounds 0.52 and final 0.70. Control-variate methods reach 2e-7.
  EXPECT_LT(full.last_move, 1e-4);
  EXPECT_GT(full.final_err, 0.05);
  EXPECT_GT(part.min_tail_err, 0.2);
}

TEST(FedConvergence, ControlVariatesConvergeUnderHeterogeneityAndPartialParticipation) {
  const Hetero p = make_hetero(3);
  struct Case {
    FedAlgorithm alg;
    const char* spec;
    double beta;
    int rounds;
  };
  const std::vector<Case> cases = {
      {FedAlgorithm::kScaffold, "identity", 0.2, 400},
      {FedAlgorithm::kScallion, "randk:ratio=0.25,shared=0", 0.2, 800},
      {FedAlgorithm::kScallion, "randk:ratio=0.25", 0.2, 800},
      {FedAlgorithm::kScallion, "qsgd:levels=4", 0.2, 800},
      {FedAlgorithm::kScafcom, "topk:ratio=0.1", 0.5, 800},
      {FedAlgorithm::kScafcom, "sign", 0.5, 1000},
      {FedAlgorithm::kScafcom, "sign", 0.2, 1000},
  };
  for (const Case& k : cases) {
    GZ_CODEC_OR_SKIP(codec, k.spec);
    const ConvResult r = run_hetero(p, k.alg, codec, k.beta, 5, k.rounds);
    const std::string what =
        std::string(fed_algorithm_name(k.alg)) + " " + k.spec +
        (k.alg == FedAlgorithm::kScafcom ? " beta=" + std::to_string(k.beta).substr(0, 3) : std::string()) + " (" +
        std::to_string(k.rounds) + " rounds)";
    print_result(what.c_str(), r);
    // Measured (seed 3, this problem): final errors 1.6e-7 .. 1.1e-6, i.e. the float32 floor (~2e-7 relative)
    // or close to it; 1e-4 is reached after 49 (SCAFFOLD) to ~600 (SCAFCOM sign, beta 0.2) rounds. Linear
    // convergence to x* itself, not to a neighbourhood: SCALLION compresses delta_i -> 0, so the variance of an
    // unbiased codec vanishes at the solution and partial participation leaves no floor. The bound 1e-5 keeps a
    // margin of about 10x over the slowest case.
    EXPECT_LT(r.final_err, 1e-5) << what;
    EXPECT_GT(r.rounds_to_1e4, 0) << what;
  }
}

// ---------------------------------------------------------------------------------------------------------------

// Drives server and clients by hand (as a Python or multi-process caller would) and checks the byte counts, and
// that this path gives bitwise the FedSimulation result.
TEST(FedBytes, UplinkIsSumOfPayloadSizesDownlinkIsFormula) {
  struct Case {
    FedAlgorithm alg;
    const char* spec;
  };
  const std::size_t d = 40, N = 6, S = 4, K = 2;
  const std::vector<Case> cases = {{FedAlgorithm::kFedAvg, "identity"},
                                   {FedAlgorithm::kScaffold, "sign"},
                                   {FedAlgorithm::kScallion, "randk:k=10"},
                                   {FedAlgorithm::kScafcom, "topk:k=5"}};
  for (const Case& k : cases) {
    GZ_CODEC_OR_SKIP(codec, k.spec);
    SCOPED_TRACE(k.spec);
    const FedConfig cfg = make_cfg(k.alg, N, S, K, 0.05);
    const std::vector<float> x0 = gradzip::testing::gaussian(d, 5);
    auto server = FedServer::create(cfg, codec, Span<const float>(x0));
    ASSERT_TRUE(server.ok());
    std::vector<FedClient> clients;
    for (std::size_t i = 0; i < N; ++i) clients.emplace_back(cfg, codec, i, d);
    auto sim = make_sim(cfg, codec, x0);
    std::vector<std::vector<float>> m(N);
    for (std::size_t i = 0; i < N; ++i) m[i] = gradzip::testing::gaussian(d, 50 + static_cast<unsigned>(i), 2.0f);
    GradientFn g = [&](std::size_t i, std::uint64_t, std::size_t, Span<const float> y, Span<float> out) {
      for (std::size_t j = 0; j < d; ++j) out[j] = y[j] - m[i][j];
      return Status::Ok();
    };
    // Expected payload size per codec (codecs.h bit formulas, payload = 32 + ceil(body_bits / 8)).
    std::size_t expect_payload = 0;
    const std::string spec = k.spec;
    if (spec == "identity") expect_payload = 32 + 4 * d;
    if (spec == "sign") expect_payload = 32 + (d + 32 + 7) / 8;
    if (spec == "randk:k=10") expect_payload = 32 + 4 * 10;  // shared seed: values only
    if (spec == "topk:k=5") expect_payload = 32 + (std::min<std::size_t>(5 * (32 + 6), d + 32 * 5) + 7) / 8;
    const std::size_t vec = 32 + 4 * d;
    const std::uint64_t down_per_round = S * vec * (k.alg == FedAlgorithm::kFedAvg ? 1 : 2);
    std::uint64_t up_total = 0;
    std::vector<float> y(d), gr(d), corr(d);
    const std::size_t slot = codec->max_encoded_bytes(d) + 13;  // trailing bytes must not be counted
    std::vector<std::uint8_t> buf(S * slot, 0xAB);
    for (std::uint64_t r = 0; r < 5; ++r) {
      const std::vector<std::size_t> sampled = (*server)->sample(r);
      std::vector<ConstBytes> views;
      std::uint64_t sum = 0;
      for (std::size_t j = 0; j < S; ++j) {
        FedClient& cl = clients[sampled[j]];
        GZ_ASSERT_OK(cl.correction((*server)->control(), Span<float>(corr)));
        std::copy((*server)->model().begin(), (*server)->model().end(), y.begin());
        for (std::size_t s = 0; s < K; ++s) {
          GZ_ASSERT_OK(g(sampled[j], r, s, Span<const float>(y), Span<float>(gr)));
          for (std::size_t i = 0; i < d; ++i) y[i] -= static_cast<float>(cfg.lr_local) * (gr[i] + corr[i]);
        }
        std::size_t w = 0;
        GZ_ASSERT_OK(cl.finish(r, (*server)->model(), (*server)->control(), Span<const float>(y),
                               MutableBytes(buf.data() + j * slot, slot), &w));
        EXPECT_EQ(w, expect_payload);
        sum += w;
        views.emplace_back(buf.data() + j * slot, slot);
      }
      RoundStats st;
      GZ_ASSERT_OK((*server)->aggregate(sampled, Span<const ConstBytes>(views), &st));
      EXPECT_EQ(st.uplink_bytes, sum);
      EXPECT_EQ(st.uplink_bytes, S * expect_payload);
      EXPECT_EQ(st.downlink_bytes, down_per_round);
      EXPECT_EQ(st.clients, sampled);
      up_total += sum;
      RoundStats st2;
      GZ_ASSERT_OK(sim->run_round(g, &st2));
      EXPECT_EQ(st2.uplink_bytes, st.uplink_bytes);
    }
    EXPECT_EQ(sim->total_uplink_bytes(), up_total);
    EXPECT_EQ(sim->total_downlink_bytes(), 5 * down_per_round);
    EXPECT_EQ(0, std::memcmp(sim->server().model().data(), (*server)->model().data(), 4 * d))
        << "hand-driven and simulated federations differ";
    EXPECT_EQ(0, std::memcmp(sim->server().control().data(), (*server)->control().data(), 4 * d));
  }
}

// ---------------------------------------------------------------------------------------------------------------

TEST(FedErrors, BadInputIsRejectedAndLeavesStateUnchanged) {
  const std::size_t d = 8;
  const std::vector<float> x0(d, 1.0f);
  GZ_CODEC_OR_SKIP(topk, "topk:k=2");
  FedConfig cfg = make_cfg(FedAlgorithm::kScafcom, 4, 2, 1, 0.1);
  // create: empty / non-finite x0, bad config.
  GZ_EXPECT_CODE(FedServer::create(cfg, topk, Span<const float>()).status(), StatusCode::kInvalidArgument);
  std::vector<float> bad = x0;
  bad[3] = std::nanf("");
  GZ_EXPECT_CODE(FedServer::create(cfg, topk, Span<const float>(bad)).status(), StatusCode::kNonFinite);
  GZ_EXPECT_CODE(FedSimulation::create(cfg, topk, Span<const float>()).status(), StatusCode::kInvalidArgument);
  FedConfig k0 = cfg;
  k0.local_steps = 0;
  GZ_EXPECT_CODE(FedSimulation::create(k0, topk, Span<const float>(x0)).status(), StatusCode::kInvalidArgument);
  FedConfig big = cfg;
  big.clients_per_round = 5;
  GZ_EXPECT_CODE(FedSimulation::create(big, topk, Span<const float>(x0)).status(), StatusCode::kInvalidArgument);
  GZ_CODEC_OR_SKIP(qsgd, "qsgd:levels=4");
  GZ_EXPECT_CODE(FedSimulation::create(cfg, qsgd, Span<const float>(x0)).status(), StatusCode::kInvalidArgument);

  auto server = std::move(FedServer::create(cfg, topk, Span<const float>(x0))).value();
  // A client built with a bad config or id reports it on every call.
  FedClient ghost(cfg, topk, 9, d);
  std::vector<float> corr(d);
  GZ_EXPECT_CODE(ghost.correction(server->control(), Span<float>(corr)), StatusCode::kInvalidArgument);
  FedClient cl(cfg, topk, 1, d);
  GZ_EXPECT_CODE(cl.correction(server->control(), Span<float>(corr.data(), d - 1)), StatusCode::kInvalidArgument);
  GZ_EXPECT_CODE(cl.correction(Span<const float>(x0.data(), d - 1), Span<float>(corr)), StatusCode::kInvalidArgument);
  // finish: wrong lengths, null written, small buffer, NaN; none may change c_i / v_i.
  std::vector<std::uint8_t> out(topk->max_encoded_bytes(d));
  std::size_t w = 0;
  std::vector<float> y(d, 0.5f);
  Span<const float> short_x(x0.data(), d - 1);
  GZ_EXPECT_CODE(cl.finish(0, short_x, server->control(), Span<const float>(y), MutableBytes(out), &w),
                 StatusCode::kInvalidArgument);
  GZ_EXPECT_CODE(
      cl.finish(0, server->model(), server->control(), Span<const float>(y.data(), d + 0 - 2), MutableBytes(out), &w),
      StatusCode::kInvalidArgument);
  GZ_EXPECT_CODE(cl.finish(0, server->model(), short_x, Span<const float>(y), MutableBytes(out), &w),
                 StatusCode::kInvalidArgument);
  GZ_EXPECT_CODE(cl.finish(0, server->model(), server->control(), Span<const float>(y), MutableBytes(out), nullptr),
                 StatusCode::kInvalidArgument);
  GZ_EXPECT_CODE(cl.finish(0, server->model(), server->control(), Span<const float>(y),
                           MutableBytes(out.data(), out.size() - 1), &w),
                 StatusCode::kInvalidArgument);
  std::vector<float> ynan = y;
  ynan[2] = INFINITY;
  GZ_EXPECT_CODE(cl.finish(0, server->model(), server->control(), Span<const float>(ynan), MutableBytes(out), &w),
                 StatusCode::kNonFinite);
  for (float v : cl.control()) EXPECT_EQ(v, 0.0f);
  for (float v : cl.momentum()) EXPECT_EQ(v, 0.0f);

  // aggregate: wrong count, wrong clients, foreign codec, truncated payload, wrong numel.
  const std::vector<std::size_t> sampled = server->sample(0);
  std::vector<std::vector<std::uint8_t>> pay(2, std::vector<std::uint8_t>(out.size()));
  std::vector<ConstBytes> views;
  for (std::size_t j = 0; j < 2; ++j) {
    FedClient c2(cfg, topk, sampled[j], d);
    std::size_t wj = 0;
    GZ_ASSERT_OK(c2.finish(0, server->model(), server->control(), Span<const float>(y), MutableBytes(pay[j]), &wj));
    views.emplace_back(pay[j].data(), wj);
  }
  const std::vector<float> x_before(server->model().begin(), server->model().end());
  auto expect_unchanged = [&] {
    EXPECT_EQ(server->round(), 0u);
    EXPECT_EQ(0, std::memcmp(server->model().data(), x_before.data(), 4 * d));
    for (float v : server->control()) EXPECT_EQ(v, 0.0f);
  };
  Status s = server->aggregate(sampled, Span<const ConstBytes>(views.data(), 1), nullptr);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("1 payloads for 2 clients"), std::string::npos) << s.message();
  const std::vector<std::size_t> wrong =
      sampled == std::vector<std::size_t>{0, 1} ? std::vector<std::size_t>{2, 3} : std::vector<std::size_t>{0, 1};
  GZ_EXPECT_CODE(server->aggregate(wrong, Span<const ConstBytes>(views), nullptr), StatusCode::kInvalidArgument);
  std::vector<std::size_t> reversed = {sampled[1], sampled[0]};
  GZ_EXPECT_CODE(server->aggregate(reversed, Span<const ConstBytes>(views), nullptr), StatusCode::kInvalidArgument);
  auto id = must_parse("identity");
  auto foreign = id->encode(Span<const float>(y), Exec{});
  ASSERT_TRUE(foreign.ok());
  std::vector<ConstBytes> v2 = {views[0], ConstBytes(foreign->data(), foreign->size())};
  s = server->aggregate(sampled, Span<const ConstBytes>(v2), nullptr);
  EXPECT_EQ(s.code(), StatusCode::kInvalidPayload) << s.to_string();
  EXPECT_NE(s.message().find("topk:k=2"), std::string::npos) << s.message();
  v2 = {views[0], ConstBytes(views[1].data(), views[1].size() - 1)};
  GZ_EXPECT_CODE(server->aggregate(sampled, Span<const ConstBytes>(v2), nullptr), StatusCode::kInvalidPayload);
  auto other_len = topk->encode(Span<const float>(y.data(), d - 1), Exec{});
  ASSERT_TRUE(other_len.ok());
  v2 = {ConstBytes(other_len->data(), other_len->size()), views[1]};
  GZ_EXPECT_CODE(server->aggregate(sampled, Span<const ConstBytes>(v2), nullptr), StatusCode::kInvalidPayload);
  v2 = {views[0], ConstBytes()};
  GZ_EXPECT_CODE(server->aggregate(sampled, Span<const ConstBytes>(v2), nullptr), StatusCode::kInvalidPayload);
  expect_unchanged();
  GZ_EXPECT_CODE(server->aggregate(sampled, Span<const ConstBytes>(views), nullptr), StatusCode::kOk);
  EXPECT_EQ(server->round(), 1u);
}

std::vector<std::uint8_t> state_of(const FedSimulation& s) {
  StateWriter w;
  s.save(w);
  return w.take();
}

TEST(FedSimulationErrors, FailingRoundRollsBackEveryClient) {
  const std::size_t d = 6;
  for (FedAlgorithm a : {FedAlgorithm::kScaffold, FedAlgorithm::kScafcom, FedAlgorithm::kFedAvg}) {
    FedConfig cfg = make_cfg(a, 5, 3, 2, 0.1);
    auto sim = make_sim(cfg, nullptr, std::vector<float>(d, 0.3f));
    GradientFn good = [](std::size_t i, std::uint64_t, std::size_t, Span<const float> y, Span<float> g) {
      for (std::size_t j = 0; j < y.size(); ++j) g[j] = y[j] - static_cast<float>(i + j);
      return Status::Ok();
    };
    for (int r = 0; r < 3; ++r) GZ_ASSERT_OK(sim->run_round(good, nullptr));
    const std::vector<std::uint8_t> before = state_of(*sim);
    const std::size_t last = sim->server().sample(3).back();
    GradientFn fails_last = [&](std::size_t i, std::uint64_t r, std::size_t k, Span<const float> y, Span<float> g) {
      if (i == last && k == 1) return Status::OutOfRange("test: boom");
      return good(i, r, k, y, g);
    };
    Status s = sim->run_round(fails_last, nullptr);
    EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
    EXPECT_NE(s.message().find("boom"), std::string::npos);
    EXPECT_NE(s.message().find("client " + std::to_string(last)), std::string::npos) << s.message();
    EXPECT_EQ(before, state_of(*sim)) << fed_algorithm_name(a);
    GradientFn nan_last = [&](std::size_t i, std::uint64_t r, std::size_t k, Span<const float> y, Span<float> g) {
      Status st = good(i, r, k, y, g);
      if (i == last) g[0] = std::nanf("");
      return st;
    };
    GZ_EXPECT_CODE(sim->run_round(nan_last, nullptr), StatusCode::kNonFinite);
    EXPECT_EQ(before, state_of(*sim)) << fed_algorithm_name(a);
    GZ_EXPECT_CODE(sim->run_round(GradientFn(), nullptr), StatusCode::kInvalidArgument);
    GZ_ASSERT_OK(sim->run_round(good, nullptr));
    EXPECT_EQ(sim->server().round(), 4u);
  }
}

// ---------------------------------------------------------------------------------------------------------------

TEST(FedState, SaveLoadResumesBitIdentically) {
  struct Case {
    FedAlgorithm alg;
    const char* spec;
  };
  const std::vector<Case> cases = {{FedAlgorithm::kFedAvg, "qsgd:levels=4"},
                                   {FedAlgorithm::kScaffold, "identity"},
                                   {FedAlgorithm::kScallion, "randk:ratio=0.25"},
                                   {FedAlgorithm::kScafcom, "topk:ratio=0.2"}};
  const Hetero p = make_hetero(5);
  const GradientFn g = hetero_grad(p);
  for (const Case& k : cases) {
    GZ_CODEC_OR_SKIP(codec, k.spec);
    SCOPED_TRACE(k.spec);
    FedConfig cfg = make_cfg(k.alg, p.n, 5, 3, 0.05);
    const std::vector<float> x0(p.d, 0.0f);
    auto a = make_sim(cfg, codec, x0);
    for (int r = 0; r < 7; ++r) GZ_ASSERT_OK(a->run_round(g, nullptr));
    const std::vector<std::uint8_t> blob = state_of(*a);
    for (int r = 0; r < 6; ++r) GZ_ASSERT_OK(a->run_round(g, nullptr));
    auto b = make_sim(cfg, codec, x0);
    StateReader rd(ConstBytes(blob.data(), blob.size()), "test");
    GZ_ASSERT_OK(b->load(rd));
    GZ_ASSERT_OK(rd.finish());
    EXPECT_EQ(b->server().round(), 7u);
    for (int r = 0; r < 6; ++r) GZ_ASSERT_OK(b->run_round(g, nullptr));
    EXPECT_EQ(state_of(*a), state_of(*b));
    EXPECT_EQ(0, std::memcmp(a->server().model().data(), b->server().model().data(), 4 * p.d));
    EXPECT_EQ(a->total_uplink_bytes(), b->total_uplink_bytes());
    EXPECT_EQ(a->total_downlink_bytes(), b->total_downlink_bytes());
  }
}

TEST(FedState, MismatchesFailLoudlyAndLeaveStateUnchanged) {
  const std::size_t d = 5;
  auto run = [](FedSimulation& s) {
    GradientFn g = [](std::size_t i, std::uint64_t, std::size_t, Span<const float> y, Span<float> out) {
      for (std::size_t j = 0; j < y.size(); ++j) out[j] = y[j] - static_cast<float>(i);
      return Status::Ok();
    };
    for (int r = 0; r < 3; ++r) GZ_ASSERT_OK(s.run_round(g, nullptr));
  };
  const FedConfig cfg = make_cfg(FedAlgorithm::kScaffold, 4, 2, 2, 0.1);
  auto src = make_sim(cfg, nullptr, std::vector<float>(d, 0.0f));
  run(*src);
  const std::vector<std::uint8_t> blob = state_of(*src);
  auto try_load = [&](FedSimulation& dst) {
    const std::vector<std::uint8_t> before = state_of(dst);
    StateReader rd(ConstBytes(blob.data(), blob.size()), "test");
    const Status s = dst.load(rd);
    EXPECT_EQ(before, state_of(dst)) << "a failed load changed the simulation";
    return s;
  };
  {  // other numel
    auto dst = make_sim(cfg, nullptr, std::vector<float>(d + 1, 0.0f));
    run(*dst);
    const Status s = try_load(*dst);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("holds 5 floats, expected 6"), std::string::npos) << s.message();
  }
  {  // other algorithm
    FedConfig c = cfg;
    c.algorithm = FedAlgorithm::kScallion;
    auto dst = make_sim(c, nullptr, std::vector<float>(d, 0.0f));
    const Status s = try_load(*dst);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("'scaffold'"), std::string::npos) << s.message();
  }
  {  // other number of clients
    FedConfig c = cfg;
    c.num_clients = 5;
    auto dst = make_sim(c, nullptr, std::vector<float>(d, 0.0f));
    GZ_EXPECT_CODE(try_load(*dst), StatusCode::kInvalidArgument);
  }
  {  // other codec
    GZ_CODEC_OR_SKIP(sign, "sign");
    auto dst = make_sim(cfg, sign, std::vector<float>(d, 0.0f));
    const Status s = try_load(*dst);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("'sign'"), std::string::npos) << s.message();
  }
  {  // truncated and garbage blobs
    auto dst = make_sim(cfg, nullptr, std::vector<float>(d, 0.0f));
    run(*dst);
    const std::vector<std::uint8_t> before = state_of(*dst);
    for (std::size_t cut : {std::size_t{0}, std::size_t{7}, blob.size() / 2, blob.size() - 1}) {
      StateReader rd(ConstBytes(blob.data(), cut), "test");
      GZ_EXPECT_CODE(dst->load(rd), StatusCode::kInvalidPayload);
      EXPECT_EQ(before, state_of(*dst));
    }
  }
  {  // server and client standalone round trips; client id mismatch
    StateWriter w;
    src->server().save(w);
    src->client(2).save(w);
    const std::vector<std::uint8_t> b = w.take();
    const std::vector<float> zeros(d, 0.0f);
    auto srv = std::move(FedServer::create(cfg, nullptr, Span<const float>(zeros))).value();
    FedClient c2(cfg, nullptr, 2, d), c3(cfg, nullptr, 3, d);
    StateReader rd(ConstBytes(b.data(), b.size()), "test");
    GZ_ASSERT_OK(srv->load(rd));
    StateReader rd3 = rd;
    GZ_EXPECT_CODE(c3.load(rd3), StatusCode::kInvalidArgument);
    GZ_ASSERT_OK(c2.load(rd));
    GZ_ASSERT_OK(rd.finish());
    EXPECT_EQ(srv->round(), 3u);
    EXPECT_EQ(0, std::memcmp(srv->model().data(), src->server().model().data(), 4 * d));
    EXPECT_EQ(0, std::memcmp(c2.control().data(), src->client(2).control().data(), 4 * d));
  }
}

TEST(FedDeterminism, SameSeedSameBitsOtherSeedOtherRun) {
  GZ_CODEC_OR_SKIP(codec, "randk:ratio=0.25,shared=0");
  const Hetero p = make_hetero(9);
  const GradientFn g = hetero_grad(p);
  FedConfig cfg = make_cfg(FedAlgorithm::kScallion, p.n, 4, 2, 0.05);
  auto a = make_sim(cfg, codec, std::vector<float>(p.d, 0.0f));
  auto b = make_sim(cfg, codec, std::vector<float>(p.d, 0.0f));
  cfg.seed = 8;
  auto c = make_sim(cfg, codec, std::vector<float>(p.d, 0.0f));
  for (int r = 0; r < 10; ++r) {
    GZ_ASSERT_OK(a->run_round(g, nullptr));
    GZ_ASSERT_OK(b->run_round(g, nullptr));
    GZ_ASSERT_OK(c->run_round(g, nullptr));
  }
  EXPECT_EQ(state_of(*a), state_of(*b));
  EXPECT_NE(0, std::memcmp(a->server().model().data(), c->server().model().data(), 4 * p.d));
}

// ---------------------------------------------------------------------------------------------------------------
// FedAvg with uplink error feedback (EF14 = Fed-EF, EF21, EControl) and the compressed downlink (federated.h).
// fp64 reference written from the header's formulas and algorithms.md §4.2/§4.3/§4.6/§5.6.

struct RefFb {
  FedConfig cfg;
  Vec x, xhat, gbar;
  std::vector<Vec> e, h;  // EF14/EControl e_i; EF21 G_i / EControl h_i
  std::vector<int> seen;
  RefCompress down;  // null: uncompressed downlink
  RefFb(const FedConfig& f, const Vec& x0, RefCompress dn = nullptr)
      : cfg(f),
        x(x0),
        xhat(x0),
        gbar(x0.size(), 0.0),
        e(f.num_clients, Vec(x0.size(), 0.0)),
        h(f.num_clients, Vec(x0.size(), 0.0)),
        seen(f.num_clients, 0),
        down(std::move(dn)) {}

  void round(std::uint64_t r, const std::vector<std::size_t>& clients, const RefGrad& g, const RefCompress& C,
             double eta) {
    const std::size_t d = x.size(), S = clients.size(), N = cfg.num_clients;
    const double E = static_cast<double>(cfg.local_steps) * cfg.lr_local, gamma = cfg.lr_global * E;
    const FeedbackKind k = cfg.feedback.kind;
    Vec sum(d, 0.0);
    for (std::size_t i : clients) {
      Vec y = xhat;
      for (std::size_t s = 0; s < cfg.local_steps; ++s) {
        const Vec gr = g(i, y);
        for (std::size_t j = 0; j < d; ++j) y[j] -= cfg.lr_local * gr[j];
      }
      Vec gi(d), m(d);
      for (std::size_t j = 0; j < d; ++j) gi[j] = (xhat[j] - y[j]) / E;
      if (k == FeedbackKind::kEF14) {
        Vec pv(d);
        for (std::size_t j = 0; j < d; ++j) pv[j] = e[i][j] + gamma * gi[j];
        m = C(i, r, pv);
        for (std::size_t j = 0; j < d; ++j) e[i][j] = pv[j] - m[j];
      } else if (!seen[i]) {  // EF21 / EControl first message: uncompressed
        m = gi;
        h[i] = gi;
      } else if (k == FeedbackKind::kEF21) {
        Vec u(d);
        for (std::size_t j = 0; j < d; ++j) u[j] = gi[j] - h[i][j];
        m = C(i, r, u);
        for (std::size_t j = 0; j < d; ++j) h[i][j] += m[j];
      } else {  // EControl
        Vec u(d);
        for (std::size_t j = 0; j < d; ++j) u[j] = eta * e[i][j] + gi[j] - h[i][j];
        m = C(i, r, u);
        for (std::size_t j = 0; j < d; ++j) {
          e[i][j] += gi[j] - h[i][j] - m[j];
          h[i][j] += m[j];
        }
      }
      seen[i] = 1;
      for (std::size_t j = 0; j < d; ++j) sum[j] += m[j];
    }
    for (std::size_t j = 0; j < d; ++j) {
      if (k == FeedbackKind::kEF14) {
        x[j] -= sum[j] / static_cast<double>(S);
      } else {
        x[j] -= gamma * (gbar[j] + sum[j] / static_cast<double>(S));
        gbar[j] += sum[j] / static_cast<double>(N);
      }
    }
    if (down) {
      Vec diff(d);
      for (std::size_t j = 0; j < d; ++j) diff[j] = x[j] - xhat[j];
      const Vec m = down(0, r, diff);
      for (std::size_t j = 0; j < d; ++j) xhat[j] += m[j];
    } else {
      xhat = x;
    }
  }
};

FedConfig fb_cfg(FeedbackKind k, std::size_t n, std::size_t s, double eta) {
  FedConfig c = make_cfg(FedAlgorithm::kFedAvg, n, s, 3, 0.1);
  c.feedback.kind = k;
  c.feedback.eta = eta;
  return c;
}

std::unique_ptr<FedSimulation> make_sim_down(const FedConfig& c, std::shared_ptr<const Compressor> codec,
                                             const std::vector<float>& x0, std::shared_ptr<const Compressor> down) {
  auto r = FedSimulation::create(c, std::move(codec), Span<const float>(x0), std::move(down));
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  if (!r.ok()) return nullptr;
  return std::move(r).value();
}

TEST(FedFeedback, TracesMatchFp64ReferenceUnderPartialParticipation) {
  GZ_CODEC_OR_SKIP(top1, "topk:k=1");
  for (FeedbackKind k : {FeedbackKind::kEF14, FeedbackKind::kEF21, FeedbackKind::kEControl}) {
    SCOPED_TRACE(feedback_kind_name(k));
    const FedConfig cfg = fb_cfg(k, 3, 2, 0.5);
    const std::vector<float> x0 = {0.5f, -0.25f};
    auto sim = make_sim(cfg, top1, x0);
    ASSERT_TRUE(sim);
    RefFb ref(cfg, Vec{0.5, -0.25});
    for (int r = 0; r < 8; ++r) {
      const std::vector<std::size_t> clients = sim->server().sample(r);
      GZ_ASSERT_OK(sim->run_round(quad_grad_fn(), nullptr));
      ref.round(r, clients, quad_grad, ref_top1, 0.5);
      const std::string tag = "round " + std::to_string(r) + " ";
      expect_close(sim->server().model(), ref.x, 2e-5, tag + "x");
      if (k != FeedbackKind::kEF14) expect_close(sim->server().estimate(), ref.gbar, 2e-5, tag + "gbar");
      for (std::size_t i = 0; i < 3; ++i) {
        const FeedbackWorker* w = sim->client(i).feedback();
        ASSERT_NE(w, nullptr);
        if (k != FeedbackKind::kEF21) expect_close(w->error(), ref.e[i], 2e-5, tag + "e_" + std::to_string(i));
        if (k != FeedbackKind::kEF14) expect_close(w->estimate(), ref.h[i], 2e-5, tag + "h_" + std::to_string(i));
      }
    }
  }
}

TEST(FedFeedback, IdentityCodecReducesToFedAvg) {
  // With C = identity every feedback mode sends the exact pseudo-gradient; with S = N, EF21/EControl's
  // D = Gbar_old + mean(g_i - G_i) = mean g_i, so all three equal FedAvg (x += lr_g mean(y_K - x)); EF14 at any S.
  const Hetero p = make_hetero(4);
  const GradientFn g = hetero_grad(p);
  for (FeedbackKind k : {FeedbackKind::kEF14, FeedbackKind::kEF21, FeedbackKind::kEControl}) {
    const std::size_t S = k == FeedbackKind::kEF14 ? 5 : p.n;
    FedConfig base = make_cfg(FedAlgorithm::kFedAvg, p.n, S, 4, 0.02);
    FedConfig cfg = base;
    cfg.feedback.kind = k;
    auto a = make_sim(base, nullptr, std::vector<float>(p.d, 0.0f));
    auto b = make_sim(cfg, nullptr, std::vector<float>(p.d, 0.0f));
    for (int r = 0; r < 30; ++r) {
      GZ_ASSERT_OK(a->run_round(g, nullptr));
      GZ_ASSERT_OK(b->run_round(g, nullptr));
    }
    const Vec want(a->server().model().begin(), a->server().model().end());
    expect_close(b->server().model(), want, 1e-4, std::string(feedback_kind_name(k)) + " vs fedavg");
  }
}

TEST(FedFeedback, PairingAndAlgorithmRulesAreEnforced) {
  GZ_CODEC_OR_SKIP(qsgd, "qsgd:levels=4");
  GZ_CODEC_OR_SKIP(topk, "topk:ratio=0.5");
  GZ_CODEC_OR_SKIP(randk, "randk:ratio=0.5");
  const std::vector<float> x0(4, 0.0f);
  FedConfig c = fb_cfg(FeedbackKind::kEF14, 4, 2, -1);
  c.algorithm = FedAlgorithm::kScafcom;
  auto r1 = FedSimulation::create(c, topk, Span<const float>(x0));
  ASSERT_FALSE(r1.ok());
  EXPECT_EQ(r1.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r1.status().message().find("fedavg only"), std::string::npos) << r1.status().message();
  c.algorithm = FedAlgorithm::kFedAvg;
  auto r2 = FedSimulation::create(c, qsgd, Span<const float>(x0));
  ASSERT_FALSE(r2.ok());
  EXPECT_NE(r2.status().message().find("scaled("), std::string::npos) << r2.status().message();
  // Downlink: unbiased codecs are refused, identity means "uncompressed".
  FedConfig plain = make_cfg(FedAlgorithm::kScaffold, 4, 2, 2, 0.1);
  auto r3 = FedServer::create(plain, nullptr, Span<const float>(x0), randk);
  ASSERT_FALSE(r3.ok());
  EXPECT_NE(r3.status().message().find("downlink"), std::string::npos) << r3.status().message();
  GZ_CODEC_OR_SKIP(ident, "identity");
  auto r4 = FedServer::create(plain, nullptr, Span<const float>(x0), ident);
  ASSERT_TRUE(r4.ok());
  EXPECT_EQ((*r4)->downlink(), nullptr);
}

TEST(FedFeedback, BytesCountTheUncompressedFirstMessageAndTheDownlinkPayload) {
  GZ_CODEC_OR_SKIP(topk, "topk:k=1");
  GZ_CODEC_OR_SKIP(top2, "topk:k=2");
  const std::size_t d = 40;
  FedConfig cfg = fb_cfg(FeedbackKind::kEControl, 4, 2, -1);
  auto sim = make_sim_down(cfg, topk, std::vector<float>(d, 0.1f), top2);
  ASSERT_TRUE(sim);
  GradientFn g = [](std::size_t i, std::uint64_t, std::size_t, Span<const float> y, Span<float> out) {
    for (std::size_t j = 0; j < y.size(); ++j) out[j] = y[j] - 0.01f * static_cast<float>((i + 1) * (j + 1));
    return Status::Ok();
  };
  std::vector<int> seen(4, 0);
  const std::uint64_t ident = kHeaderBytes + 4 * d;
  const std::uint64_t small = topk->max_encoded_bytes(d), dn = top2->max_encoded_bytes(d);
  for (int r = 0; r < 6; ++r) {
    const auto clients = sim->server().sample(r);
    std::uint64_t want = 0;
    for (std::size_t i : clients) want += seen[i]++ ? small : ident;
    RoundStats st;
    GZ_ASSERT_OK(sim->run_round(g, &st));
    EXPECT_EQ(st.uplink_bytes, want) << "round " << r;
    EXPECT_EQ(st.downlink_bytes, 2 * dn) << "round " << r;
  }
}

TEST(FedDownlink, TracesMatchFp64Reference) {
  GZ_CODEC_OR_SKIP(top1, "topk:k=1");
  const FedConfig cfg = fb_cfg(FeedbackKind::kEF14, 3, 2, -1);
  const std::vector<float> x0 = {0.5f, -0.25f};
  auto sim = make_sim_down(cfg, top1, x0, top1);
  ASSERT_TRUE(sim);
  RefFb ref(cfg, Vec{0.5, -0.25}, ref_top1);
  for (int r = 0; r < 8; ++r) {
    const std::vector<std::size_t> clients = sim->server().sample(r);
    GZ_ASSERT_OK(sim->run_round(quad_grad_fn(), nullptr));
    ref.round(r, clients, quad_grad, ref_top1, 0.0);
    expect_close(sim->server().model(), ref.x, 2e-5, "x round " + std::to_string(r));
    expect_close(sim->server().client_model(), ref.xhat, 2e-5, "xhat round " + std::to_string(r));
  }
}

TEST(FedFeedback, ErrorFeedbackRescuesTopKUnderPartialParticipation) {
  // Heterogeneous least squares, N = 20, K = 5: FedAvg itself drifts (floor ~0.5 at S = 5, see above), so the
  // question is where a 10% Top-K uplink ends up relative to uncompressed FedAvg.
  const Hetero p = make_hetero(3);
  GZ_CODEC_OR_SKIP(topk, "topk:ratio=0.1");
  auto run = [&](std::shared_ptr<const Compressor> codec, FeedbackKind k, std::shared_ptr<const Compressor> down,
                 std::size_t S) {
    FedConfig cfg = make_cfg(FedAlgorithm::kFedAvg, p.n, S, 5, 0.05);
    cfg.seed = 11;
    cfg.feedback.kind = k;
    auto sim = make_sim_down(cfg, std::move(codec), std::vector<float>(p.d, 0.0f), std::move(down));
    double best = 1e300;
    for (int r = 0; r < 600 && sim; ++r) {
      const Status st = sim->run_round(hetero_grad(p), nullptr);
      EXPECT_TRUE(st.ok()) << st.to_string();
      if (!st.ok()) break;
      if (r >= 500) best = std::min(best, rel_err(p, sim->server().model()));
    }
    return best;
  };
  const double plain = run(nullptr, FeedbackKind::kNone, nullptr, 5);
  const double none = run(topk, FeedbackKind::kNone, nullptr, 5);
  const double ef14 = run(topk, FeedbackKind::kEF14, nullptr, 5);
  const double ef21 = run(topk, FeedbackKind::kEF21, nullptr, 5);
  const double ec = run(topk, FeedbackKind::kEControl, nullptr, 5);
  const double ec_down = run(topk, FeedbackKind::kEControl, topk, 5);
  const double plain_full = run(nullptr, FeedbackKind::kNone, nullptr, 20);
  const double ef14_full = run(topk, FeedbackKind::kEF14, nullptr, 20);
  const double none_full = run(topk, FeedbackKind::kNone, nullptr, 20);
  std::printf(
      "[ measure  ] min rel err, rounds 500-600, S=5: fedavg %.3f, topk10%% none %.3f, ef14 %.3f, ef21 %.3f, "
      "econtrol %.3f, econtrol+topk10%% downlink %.3f; S=20: fedavg %.3f, ef14 %.3f, none %.3f\n",
      plain, none, ef14, ef21, ec, ec_down, plain_full, ef14_full, none_full);
  // Measured (seed 3/11): S=5: fedavg 0.519, none 0.929, ef14 1.292, ef21 ~0.09, econtrol 0.086 (+downlink 0.086);
  // S=20: fedavg 0.086, ef14 0.399 (still moving down), none 0.934. Without feedback Top-K stalls far above FedAvg.
  // EF21/EControl end BELOW FedAvg at S=5, at FedAvg's full-participation point: their server estimate Gbar keeps
  // every client's last message (stale for the absent ones), an average over all N clients, whereas FedAvg averages
  // the S present ones. EF14 under partial participation is worse than no feedback: absent clients keep stale errors
  // (the known PP slowdown of Fed-EF, algorithms.md §5.6); with full participation it beats no feedback but is slow.
  EXPECT_GT(none, 1.5 * plain);
  EXPECT_LT(ec, plain);
  EXPECT_LT(ef21, plain);
  EXPECT_LT(ec_down, plain);
  EXPECT_LT(ef14_full, 0.75 * none_full);
  EXPECT_GT(ef14, plain);
}

TEST(FedFeedback, SaveLoadResumesBitIdenticallyWithFeedbackAndDownlink) {
  const Hetero p = make_hetero(5);
  const GradientFn g = hetero_grad(p);
  GZ_CODEC_OR_SKIP(topk, "topk:ratio=0.2");
  GZ_CODEC_OR_SKIP(sign, "sign");
  for (FeedbackKind k : {FeedbackKind::kEF14, FeedbackKind::kEF21, FeedbackKind::kEControl}) {
    SCOPED_TRACE(feedback_kind_name(k));
    FedConfig cfg = make_cfg(FedAlgorithm::kFedAvg, p.n, 5, 3, 0.05);
    cfg.feedback.kind = k;
    const std::vector<float> x0(p.d, 0.0f);
    auto a = make_sim_down(cfg, topk, x0, sign);
    for (int r = 0; r < 7; ++r) GZ_ASSERT_OK(a->run_round(g, nullptr));
    const std::vector<std::uint8_t> blob = state_of(*a);
    for (int r = 0; r < 6; ++r) GZ_ASSERT_OK(a->run_round(g, nullptr));
    auto b = make_sim_down(cfg, topk, x0, sign);
    StateReader rd(ConstBytes(blob.data(), blob.size()), "test");
    GZ_ASSERT_OK(b->load(rd));
    GZ_ASSERT_OK(rd.finish());
    for (int r = 0; r < 6; ++r) GZ_ASSERT_OK(b->run_round(g, nullptr));
    EXPECT_EQ(state_of(*a), state_of(*b));
    // A state of another feedback mode is refused and leaves the simulation unchanged.
    FedConfig other = cfg;
    other.feedback.kind = k == FeedbackKind::kEF14 ? FeedbackKind::kEF21 : FeedbackKind::kEF14;
    auto c = make_sim_down(other, topk, x0, sign);
    const std::vector<std::uint8_t> before = state_of(*c);
    StateReader bad(ConstBytes(blob.data(), blob.size()), "test");
    EXPECT_FALSE(c->load(bad).ok());
    EXPECT_EQ(before, state_of(*c));
  }
}

TEST(FedFeedback, FailingRoundRollsBackTheWorkers) {
  const std::size_t d = 6;
  GZ_CODEC_OR_SKIP(topk, "topk:ratio=0.5");
  FedConfig cfg = fb_cfg(FeedbackKind::kEControl, 5, 3, -1);
  auto sim = make_sim(cfg, topk, std::vector<float>(d, 0.3f));
  GradientFn good = [](std::size_t i, std::uint64_t, std::size_t, Span<const float> y, Span<float> g) {
    for (std::size_t j = 0; j < y.size(); ++j) g[j] = y[j] - static_cast<float>(i + j);
    return Status::Ok();
  };
  for (int r = 0; r < 4; ++r) GZ_ASSERT_OK(sim->run_round(good, nullptr));
  const std::vector<std::uint8_t> before = state_of(*sim);
  const std::size_t last = sim->server().sample(4).back();
  GradientFn nan_last = [&](std::size_t i, std::uint64_t r, std::size_t k, Span<const float> y, Span<float> g) {
    Status st = good(i, r, k, y, g);
    if (i == last) g[0] = std::nanf("");
    return st;
  };
  GZ_EXPECT_CODE(sim->run_round(nan_last, nullptr), StatusCode::kNonFinite);
  EXPECT_EQ(before, state_of(*sim));
}

}  // namespace
}  // namespace gradzip
