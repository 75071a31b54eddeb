// Shared helpers for the error-feedback tests: an in-process "cluster" (n workers + one aggregator replica) and
// convergence runs on the synthetic least-squares problem of examples/cpp/least_squares.h.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gradzip/error_feedback/feedback.h"
#include "least_squares.h"
#include "test_util.h"

namespace gradzip::testing {

inline FeedbackConfig must_parse_feedback(const std::string& spec) {
  auto r = parse_feedback(spec);
  EXPECT_TRUE(r.ok()) << spec << ": " << r.status().to_string();
  return r.ok() ? r.value() : FeedbackConfig{};
}

/// n workers and one aggregator running the same feedback config and codec on buffers of d floats. Worker i runs
/// with Exec::rng = {seed, step (ignored: the worker uses its own counter), rank = i, stream}.
class Cluster {
 public:
  Cluster(const FeedbackConfig& cfg, std::shared_ptr<const Compressor> codec, std::size_t d, int n,
          std::uint64_t seed = 7)
      : cfg_(cfg), codec_(std::move(codec)), d_(d), n_(n), seed_(seed) {
    for (int i = 0; i < n; ++i) {
      auto w = FeedbackWorker::create(cfg, codec_, d);
      EXPECT_TRUE(w.ok()) << w.status().to_string();
      if (!w.ok()) return;
      workers_.push_back(std::move(w).value());
      bufs_.emplace_back(workers_.back()->max_payload_bytes());
    }
    auto a = FeedbackAggregator::create(cfg, codec_, d);
    EXPECT_TRUE(a.ok()) << a.status().to_string();
    if (a.ok()) agg_ = std::move(a).value();
    payloads_.resize(n);
    dir_.assign(d, 0.0f);
  }
  Cluster(const std::string& fb, const std::string& codec, std::size_t d, int n, std::uint64_t seed = 7)
      : Cluster(must_parse_feedback(fb), std::shared_ptr<const Compressor>(must_parse(codec)), d, n, seed) {}

  bool ok() const { return agg_ != nullptr && static_cast<int>(workers_.size()) == n_; }

  Exec exec(int rank) const {
    Exec ex;
    ex.rng.seed = seed_;
    ex.rng.rank = static_cast<std::uint32_t>(rank);
    ex.rng.step = 0xDEAD;  // must be ignored: the worker keys the codec with its own step counter
    return ex;
  }

  /// One step: every worker consumes grads[i]; the aggregator writes the direction (dir()).
  Status step(const std::vector<std::vector<float>>& grads, float gamma) {
    for (int i = 0; i < n_; ++i) {
      std::size_t written = 0;
      Status s = workers_[i]->step(Span<const float>(grads[i].data(), grads[i].size()), gamma,
                                   MutableBytes(bufs_[i].data(), bufs_[i].size()), &written, exec(i));
      if (!s.ok()) return s;
      payloads_[i] = ConstBytes(bufs_[i].data(), written);
    }
    Exec ex;
    ex.rng.seed = seed_;
    return agg_->aggregate(Span<const ConstBytes>(payloads_.data(), payloads_.size()), gamma,
                           Span<float>(dir_.data(), dir_.size()), ex);
  }

  /// The decoded message of worker i at the last step, in double (uses the aggregator's key for this step).
  std::vector<double> decoded(int i, std::uint64_t step) const {
    std::vector<float> y(d_);
    const ConstBytes p = payloads_[i];
    Exec ex;
    ex.rng.seed = seed_;
    ex.rng.step = static_cast<std::uint32_t>(step);
    auto h = read_header(p);
    EXPECT_TRUE(h.ok());
    Status s;
    if (h.ok() && h->codec_id == static_cast<std::uint16_t>(CodecId::kIdentity)) {  // uncompressed first step
      auto id = make_identity();
      s = (*id)->decode(p, Span<float>(y.data(), d_), DecodeMode::kOverwrite, ex);
    } else {
      s = codec_->decode(p, Span<float>(y.data(), d_), DecodeMode::kOverwrite, ex);
    }
    EXPECT_TRUE(s.ok()) << s.to_string();
    return std::vector<double>(y.begin(), y.end());
  }

  FeedbackWorker& worker(int i) { return *workers_[i]; }
  FeedbackAggregator& aggregator() { return *agg_; }
  const std::vector<float>& dir() const { return dir_; }
  ConstBytes payload(int i) const { return payloads_[i]; }
  const Compressor& codec() const { return *codec_; }
  std::shared_ptr<const Compressor> codec_ptr() const { return codec_; }
  int n() const { return n_; }
  std::size_t d() const { return d_; }

  /// Mean over workers of the error memories (double).
  std::vector<double> mean_error() const {
    std::vector<double> m(d_, 0.0);
    for (const auto& w : workers_) {
      Span<const float> e = w->error();
      for (std::size_t j = 0; j < e.size(); ++j) m[j] += e[j] / static_cast<double>(n_);
    }
    return m;
  }

 private:
  FeedbackConfig cfg_;
  std::shared_ptr<const Compressor> codec_;
  std::size_t d_;
  int n_;
  std::uint64_t seed_;
  std::vector<std::unique_ptr<FeedbackWorker>> workers_;
  std::unique_ptr<FeedbackAggregator> agg_;
  std::vector<std::vector<std::uint8_t>> bufs_;
  std::vector<ConstBytes> payloads_;
  std::vector<float> dir_;
};

/// The synthetic heterogeneous least-squares problem (examples/cpp/least_squares.h, shared with 02_synthetic_feedback).
using LeastSquares = examples::LeastSquares;

/// Result of running a feedback mode on a LeastSquares problem with full gradients and a constant step.
struct ConvergenceRun {
  double final_rel = 0;      // ||x_T - x*|| / ||x*||
  double tail_mean_rel = 0;  // mean of the relative error over the last quarter of the run
  double best_rel = 0;       // min over the run
  long hit = -1;             // first t with rel error <= 1e-6 (-1: never)
  bool diverged = false;     // the error passed 1e6 or became non-finite
  std::uint64_t bytes_per_worker = 0;
};

/// x_{t+1} = x_t - gamma * D_t with x in double (the optimizer is not gradzip's; double keeps its rounding out of
/// the measurement), x_0 = 0.
inline ConvergenceRun run_least_squares(const LeastSquares& P, const FeedbackConfig& fb,
                                        std::shared_ptr<const Compressor> codec, double gamma, long iters) {
  ConvergenceRun r;
  Cluster cl(fb, std::move(codec), static_cast<std::size_t>(P.d()), P.n());
  if (!cl.ok()) return r;
  std::vector<double> x(P.d(), 0.0);
  std::vector<std::vector<float>> g(P.n());
  r.best_rel = 1e300;
  double tail = 0;
  long tail_n = 0;
  for (long t = 0; t < iters; ++t) {
    for (int i = 0; i < P.n(); ++i) P.grad(i, x, g[i]);
    const Status s = cl.step(g, static_cast<float>(gamma));
    EXPECT_TRUE(s.ok()) << s.to_string();
    if (!s.ok()) return r;
    r.bytes_per_worker += cl.payload(0).size();
    for (int j = 0; j < P.d(); ++j) x[j] -= gamma * static_cast<double>(cl.dir()[j]);
    const double e = P.rel_error(x);
    if (!(e < 1e6)) {
      r.diverged = true;
      r.final_rel = e;
      return r;
    }
    r.best_rel = std::min(r.best_rel, e);
    if (r.hit < 0 && e <= 1e-6) r.hit = t + 1;
    if (t >= iters - iters / 4) {
      tail += e;
      ++tail_n;
    }
    r.final_rel = e;
  }
  r.tail_mean_rel = tail / static_cast<double>(tail_n);
  return r;
}

}  // namespace gradzip::testing
