// 02_synthetic_feedback: error feedback on a synthetic heterogeneous least-squares problem (algorithms.md §3.2,
// §4.2, §4.3, §4.6, §8.6). Every feedback mode runs with every compressor and one table row says how close it got.
//
//   02_synthetic_feedback                                   # defaults below
//   02_synthetic_feedback --iters 5000 --seed 7 --gamma 0.05
//   02_synthetic_feedback --feedback ef21 --feedback econtrol:eta=0.05 --compressor topk:k=3
//
// Problem: n workers (--workers, 8), d unknowns (--dim, 100), f(x) = (1/n) sum_i f_i(x) with
// f_i(x) = 0.5 ||A_i x - b_i||^2, A_i a d x d Gaussian matrix (entries N(0, 1/d)) and b_i = A_i z_i where
// z_i = z + het * xi_i (--het, 1.0): worker i's own minimiser is z_i, so grad f_i(x*) != 0 (heterogeneity; het = 0
// makes every worker agree). Full gradients, constant step --gamma (0.1), x_0 = 0, --iters steps (2000).
// Each step: every worker hands its gradient (float32) to its FeedbackWorker, which writes the payload it would send;
// the FeedbackAggregator decodes all n payloads into the direction D_t; x_{t+1} = x_t - gamma D_t. The optimizer keeps
// x in float64 so the table shows the algorithms, not the optimizer's rounding; gradzip's own state is float32,
// which puts a floor of ~1e-7 under the relative error of EF21/EControl.
//
// Columns: rel_err = ||x_T - x*|| / ||x*||; subopt = (f(x_T) - f*) / (f(x_0) - f*); iters_to_1e-6 = first t with
// rel_err <= 1e-6 ("-" if never); bytes/worker = payload bytes one worker sent over the run (headers included) and
// per step; "refused" rows are pairings the theory forbids (check_pairing), "diverged" rows passed rel_err 1e6.
// What to expect (§3.2, §4): none and ef14 stall at a floor that grows with het (and, for ef14, with gamma);
// ef21 and econtrol converge linearly when gamma is small enough for the compressor (Rand-K needs gamma ~ 0.02 here)
// and, for econtrol, eta is of the order of the compressor's delta (k/d for Top-K): with Top-1/Top-2 of 100 the
// flat eta = 0.1 diverges while the library default eta=auto = min(0.1, delta) converges (theory: eta = delta / 400,
// econtrol:eta=theory, converges too but slowly).
//
// Exit status: 0 success, 1 a run failed unexpectedly, 2 usage error. Errors go to stderr.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "gradzip/compressors/registry.h"
#include "gradzip/error_feedback/feedback.h"
#include "least_squares.h"

namespace {

using gradzip::Compressor;
using gradzip::ConstBytes;
using gradzip::FeedbackAggregator;
using gradzip::FeedbackConfig;
using gradzip::FeedbackWorker;
using gradzip::MutableBytes;
using gradzip::Span;
using gradzip::Status;

constexpr const char* kProg = "02_synthetic_feedback";

struct Options {
  long iters = 2000;
  std::uint64_t seed = 42;
  double gamma = 0.1;
  int workers = 8;
  int dim = 100;
  double het = 1.0;
  std::vector<std::string> feedback;
  std::vector<std::string> compressors;
};

void print_help() {
  std::printf(
      "usage: %s [options]\n"
      "  --iters N          steps per run (default 2000)\n"
      "  --seed S           problem seed (default 42); also the codecs' RNG seed\n"
      "  --gamma G          constant step size (default 0.1)\n"
      "  --workers N        number of workers n (default 8)\n"
      "  --dim D            dimension d (default 100)\n"
      "  --het H            heterogeneity of the workers' minimisers (default 1.0; 0 = homogeneous)\n"
      "  --feedback SPEC    feedback mode, repeatable (default: none, ef14, ef21, econtrol (eta=auto),\n"
      "                     econtrol:eta=0.1)\n"
      "  --compressor SPEC  compressor spec, repeatable (default: topk:ratio=0.02, topk:k=1, sign,\n"
      "                     scaled(randk:ratio=0.1), identity)\n"
      "  --help             this text\n"
      "Exit status: 0 ok, 1 a run failed, 2 usage error.\n",
      kProg);
}

int usage_error(const std::string& msg) {
  std::fprintf(stderr, "%s: %s\n(run '%s --help' for usage)\n", kProg, msg.c_str(), kProg);
  return 2;
}

bool parse_long(const std::string& s, long lo, long hi, long* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (*end != '\0' || errno == ERANGE || v < lo || v > hi) return false;
  *out = static_cast<long>(v);
  return true;
}

bool parse_double(const std::string& s, double* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (*end != '\0' || errno == ERANGE || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

/// Returns "" or an error message. Sets *help when --help was given.
std::string parse_args(int argc, char** argv, Options* o, bool* help) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      *help = true;
      return "";
    }
    const bool takes_value = a == "--iters" || a == "--seed" || a == "--gamma" || a == "--workers" || a == "--dim" ||
                             a == "--het" || a == "--feedback" || a == "--compressor";
    if (!takes_value) return "unknown option '" + a + "'";
    if (i + 1 >= argc) return a + " needs a value";
    const std::string v = argv[++i];
    long n = 0;
    if (a == "--iters") {
      if (!parse_long(v, 1, 100000000, &n)) return "--iters '" + v + "' is not an integer in [1, 1e8]";
      o->iters = n;
    } else if (a == "--seed") {
      if (!parse_long(v, 0, 0x7fffffffffffffffL, &n)) return "--seed '" + v + "' is not a non-negative integer";
      o->seed = static_cast<std::uint64_t>(n);
    } else if (a == "--workers") {
      if (!parse_long(v, 1, 1024, &n)) return "--workers '" + v + "' is not an integer in [1, 1024]";
      o->workers = static_cast<int>(n);
    } else if (a == "--dim") {
      if (!parse_long(v, 1, 2000, &n)) return "--dim '" + v + "' is not an integer in [1, 2000]";
      o->dim = static_cast<int>(n);
    } else if (a == "--gamma") {
      if (!parse_double(v, &o->gamma) || !(o->gamma > 0)) return "--gamma '" + v + "' is not a number > 0";
    } else if (a == "--het") {
      if (!parse_double(v, &o->het) || o->het < 0) return "--het '" + v + "' is not a number >= 0";
    } else if (a == "--feedback") {
      o->feedback.push_back(v);
    } else {
      o->compressors.push_back(v);
    }
  }
  if (o->feedback.empty()) o->feedback = {"none", "ef14", "ef21", "econtrol", "econtrol:eta=0.1"};
  if (o->compressors.empty())
    o->compressors = {"topk:ratio=0.02", "topk:k=1", "sign", "scaled(randk:ratio=0.1)", "identity"};
  return "";
}

using Problem = gradzip::examples::LeastSquares;  // float64, known minimiser (least_squares.h)

struct Row {
  std::string status;  // "", "refused: ...", "diverged", "error: ..."
  double rel = 0, subopt = 0;
  long hit = -1;
  std::uint64_t bytes = 0;
};

Row run_one(const Problem& P, const FeedbackConfig& fb, const std::shared_ptr<const Compressor>& codec,
            const Options& o) {
  Row row;
  const std::size_t d = static_cast<std::size_t>(P.d());
  const Status pair = gradzip::check_pairing(fb, *codec, d);
  if (!pair.ok()) {
    row.status = "refused: " + pair.message();
    return row;
  }
  std::vector<std::unique_ptr<FeedbackWorker>> workers;
  for (int i = 0; i < P.n(); ++i) {
    auto w = FeedbackWorker::create(fb, codec, d);
    if (!w.ok()) {
      row.status = "error: " + w.status().message();
      return row;
    }
    workers.push_back(std::move(w).value());
  }
  auto agg_or = FeedbackAggregator::create(fb, codec, d);
  if (!agg_or.ok()) {
    row.status = "error: " + agg_or.status().message();
    return row;
  }
  std::unique_ptr<FeedbackAggregator> agg = std::move(agg_or).value();
  std::vector<std::vector<std::uint8_t>> bufs(P.n(), std::vector<std::uint8_t>(workers[0]->max_payload_bytes()));
  std::vector<ConstBytes> payloads(P.n());
  std::vector<float> g(d), dir(d);
  std::vector<double> x(d, 0.0);
  const float gamma = static_cast<float>(o.gamma);
  for (long t = 0; t < o.iters; ++t) {
    for (int i = 0; i < P.n(); ++i) {
      P.grad(i, x, g);
      gradzip::Exec ex;
      ex.rng.seed = o.seed;
      ex.rng.rank = static_cast<std::uint32_t>(i);
      std::size_t written = 0;
      const Status s = workers[i]->step(Span<const float>(g.data(), d), gamma,
                                        MutableBytes(bufs[i].data(), bufs[i].size()), &written, ex);
      if (!s.ok()) {
        row.status = "error: " + s.message();
        return row;
      }
      payloads[i] = ConstBytes(bufs[i].data(), written);
      if (i == 0) row.bytes += written;
    }
    gradzip::Exec ex;
    ex.rng.seed = o.seed;
    const Status s =
        agg->aggregate(Span<const ConstBytes>(payloads.data(), payloads.size()), gamma, Span<float>(dir.data(), d), ex);
    if (!s.ok()) {
      row.status = "error: " + s.message();
      return row;
    }
    for (std::size_t j = 0; j < d; ++j) x[j] -= o.gamma * static_cast<double>(dir[j]);
    row.rel = P.rel_error(x);
    if (!(row.rel < 1e6)) {
      row.status = "diverged";
      row.hit = -1;
      return row;
    }
    if (row.hit < 0 && row.rel <= 1e-6) row.hit = t + 1;
  }
  row.subopt = P.subopt(x);
  return row;
}

int run(int argc, char** argv) {
  Options o;
  bool help = false;
  const std::string err = parse_args(argc, argv, &o, &help);
  if (!err.empty()) return usage_error(err);
  if (help) {
    print_help();
    return 0;
  }
  std::vector<FeedbackConfig> fbs;
  for (const auto& s : o.feedback) {
    auto c = gradzip::parse_feedback(s);
    if (!c.ok()) return usage_error("--feedback '" + s + "': " + c.status().message());
    fbs.push_back(*c);
  }
  std::vector<std::shared_ptr<const Compressor>> codecs;
  for (const auto& s : o.compressors) {
    auto c = gradzip::parse_compressor(s);
    if (!c.ok()) return usage_error("--compressor '" + s + "': " + c.status().message());
    codecs.emplace_back(std::move(c).value());
    const Status chk = codecs.back()->check(gradzip::DType::kF32, static_cast<std::size_t>(o.dim));
    if (!chk.ok()) return usage_error("--compressor '" + s + "': " + chk.message());
  }

  const Problem P(o.workers, o.dim, o.dim, o.het, o.seed);
  std::printf(
      "# heterogeneous least squares: n=%d d=%d het=%g (mean_i ||grad f_i(x*)|| / ||x*|| = %.3f), gamma=%g, "
      "iters=%ld, seed=%llu\n",
      o.workers, o.dim, o.het, P.heterogeneity() / P.solution_norm(), o.gamma, o.iters,
      static_cast<unsigned long long>(o.seed));
  std::printf("%-20s %-26s %10s %10s %14s %14s %10s\n", "feedback", "compressor", "rel_err", "subopt", "iters_to_1e-6",
              "bytes/worker", "B/step");
  int failures = 0;
  for (std::size_t c = 0; c < codecs.size(); ++c) {
    for (std::size_t f = 0; f < fbs.size(); ++f) {
      const Row r = run_one(P, fbs[f], codecs[c], o);
      const std::string fb = gradzip::feedback_spec(fbs[f]);
      const std::string spec = codecs[c]->spec().size() <= 26 ? codecs[c]->spec() : o.compressors[c];
      if (!r.status.empty() && r.status != "diverged") {
        std::printf("%-20s %-26s %s\n", fb.c_str(), spec.c_str(), r.status.c_str());
        if (r.status.rfind("error", 0) == 0) ++failures;
        continue;
      }
      const std::string hit = r.hit > 0 ? std::to_string(r.hit) : "-";
      if (r.status == "diverged") {
        std::printf("%-20s %-26s %10s %10s %14s %14s %10s\n", fb.c_str(), spec.c_str(), "diverged", "-", "-", "-", "-");
        continue;
      }
      std::printf("%-20s %-26s %10.3e %10.3e %14s %14llu %10.1f\n", fb.c_str(), spec.c_str(), r.rel, r.subopt,
                  hit.c_str(), static_cast<unsigned long long>(r.bytes),
                  static_cast<double>(r.bytes) / static_cast<double>(o.iters));
    }
  }
  return failures ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", kProg, e.what());
    return 2;
  }
}
