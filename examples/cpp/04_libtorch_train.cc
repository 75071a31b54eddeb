// 04_libtorch_train: data-parallel training in C++ (LibTorch + MPI, no Python) with gradzip's gradient compression.
//
//   mpirun -np 4 build/examples/cpp/04_libtorch_train --compressor topk:ratio=0.01 --feedback econtrol --epochs 1
//
// Every MPI rank trains the same small CNN as examples/python/02_ddp_train.py (conv 1->16, pool, conv 16->32, pool,
// fc 1568->hidden, fc hidden->10; hidden = 1024: 1.62M parameters) on its own shard of Fashion-MNIST (the Debian
// package dataset-fashion-mnist, read by gradzip/torch_data.h), with batch --batch-size per rank and SGD with
// momentum. After each backward pass gradzip::libtorch::GradSync averages the gradients across ranks through
// gradzip::MpiCommunicator: the first --warmup-steps uncompressed, then --compressor with --feedback (the same C++
// engine as the Python DDP hook). Rank 0's initial parameters are broadcast, so all ranks start equal; they then stay
// bit-identical because every rank applies the same averaged gradient (--check-sync verifies it at the end).
//
// Printed by rank 0: a header, every --log-every steps the running loss, and per epoch: mean train loss over all
// ranks, test accuracy (all 10000 test images, split across ranks), wall time, median step time (forward + backward
// + gradient sync + optimizer; epoch 0 skips the warm-up steps), gradzip's bytes sent per step and rank (payloads and
// uncompressed parts; see GradSyncMetrics; the epoch's mean includes the uncompressed warm-up steps, "last step" is
// the steady state), the compression ratio against plain averaging, the relative compression error, and the share of
// the step spent in encode / communication / decode.
//
// Exit status: 0 ok, 1 runtime error (e.g. data set missing: every rank stops, rank 0 says why), 2 usage error (bad
// flag or value, invalid compressor/feedback), 3 --check-sync found ranks with different parameters.
#include <mpi.h>
#include <torch/torch.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gradzip/collectives/mpi_communicator.h"
#include "gradzip/torch.h"
#include "gradzip/torch_data.h"

namespace {

struct Args {
  std::string compressor = "topk:ratio=0.01";
  std::string feedback = "econtrol";
  std::int64_t warmup_steps = 10;
  std::int64_t min_compress_numel = 4096;
  std::string granularity = "bucket";
  std::string small_dtype = "fp32";
  double bucket_cap_mb = 25.0;
  std::int64_t epochs = 1;
  std::int64_t max_steps = 0;  // per epoch, 0 = the whole shard
  std::int64_t batch_size = 64;
  double lr = 0.05;
  double momentum = 0.9;
  std::int64_t hidden = 1024;
  std::int64_t subset = 0;
  std::int64_t test_subset = 0;
  std::int64_t seed = 0;
  std::string data_root;
  std::int64_t threads = 1;
  std::int64_t log_every = 100;
  bool track_error = true;
  bool check_sync = false;
};

void usage(std::FILE* f, const char* prog) {
  std::fprintf(
      f,
      "usage: mpirun -np N %s [options]\n"
      "  --compressor SPEC        gradzip compressor (default topk:ratio=0.01; identity = plain averaging)\n"
      "  --feedback SPEC          none | ef14 | ef21 | econtrol[:eta=...] (default econtrol)\n"
      "  --warmup-steps N         uncompressed steps first (default 10)\n"
      "  --min-compress-numel N   smaller units travel uncompressed (default 4096)\n"
      "  --granularity G          bucket | param: one compression unit per bucket or per tensor (default bucket)\n"
      "  --small-dtype D          fp32 | fp16: wire dtype of uncompressed small units (default fp32)\n"
      "  --bucket-cap-mb F        gradient bucket size (default 25)\n"
      "  --epochs N               (default 1)\n"
      "  --max-steps N            stop each epoch after N steps (default 0: the whole shard)\n"
      "  --batch-size N           per rank (default 64)\n"
      "  --lr F, --momentum F     SGD (default 0.05, 0.9)\n"
      "  --hidden N               width of the hidden fully connected layer (default 1024)\n"
      "  --subset N               train on the first N samples (default 0: all 60000)\n"
      "  --test-subset N          evaluate on the first N test samples (default 0: all 10000)\n"
      "  --seed N                 model init, data order and gradzip's RNG (default 0)\n"
      "  --data-root DIR          Fashion-MNIST .gz files (default $GRADZIP_FASHION_MNIST or\n"
      "                           /usr/share/datasets/fashion-mnist)\n"
      "  --threads N              torch threads per rank (default 1)\n"
      "  --log-every N            print the running loss every N steps (default 100, 0: never)\n"
      "  --no-track-error         skip the relative-error metric (one decode less per unit)\n"
      "  --check-sync             at the end, check that every rank holds bit-identical parameters (exit 3 if not)\n"
      "  --help                   this text\n"
      "Exit status: 0 ok, 1 runtime error (e.g. missing data set), 2 usage error, 3 ranks diverged.\n",
      prog);
}

/// This process's rank before MPI_Init (from the launcher's environment), so that usage errors print once.
bool launcher_rank0() {
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"}) {
    const char* r = std::getenv(v);
    if (r != nullptr) return std::strcmp(r, "0") == 0;
  }
  return true;
}

bool parse_int(const char* s, std::int64_t lo, std::int64_t* out) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < lo) return false;
  *out = v;
  return true;
}

bool parse_double(const char* s, double lo, double* out) {
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  if (end == s || *end != '\0' || !std::isfinite(v) || v < lo) return false;
  *out = v;
  return true;
}

/// 0 ok, 2 usage error (message printed), -1 --help.
int parse_args(int argc, char** argv, Args* a) {
  const bool loud = launcher_rank0();
  auto bad = [&](const std::string& msg) {
    if (loud) std::fprintf(stderr, "04_libtorch_train: %s (see --help)\n", msg.c_str());
    return 2;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "--help" || f == "-h") {
      if (loud) usage(stdout, argv[0]);
      return -1;
    }
    if (f == "--no-track-error") {
      a->track_error = false;
      continue;
    }
    if (f == "--check-sync") {
      a->check_sync = true;
      continue;
    }
    struct IntFlag {
      const char* name;
      std::int64_t* dst;
      std::int64_t lo;
    };
    const IntFlag ints[] = {{"--warmup-steps", &a->warmup_steps, 0},
                            {"--min-compress-numel", &a->min_compress_numel, 0},
                            {"--epochs", &a->epochs, 0},
                            {"--max-steps", &a->max_steps, 0},
                            {"--batch-size", &a->batch_size, 1},
                            {"--hidden", &a->hidden, 1},
                            {"--subset", &a->subset, 0},
                            {"--test-subset", &a->test_subset, 0},
                            {"--seed", &a->seed, 0},
                            {"--threads", &a->threads, 1},
                            {"--log-every", &a->log_every, 0}};
    struct DoubleFlag {
      const char* name;
      double* dst;
      double lo;
    };
    const DoubleFlag doubles[] = {
        {"--lr", &a->lr, 0.0}, {"--momentum", &a->momentum, 0.0}, {"--bucket-cap-mb", &a->bucket_cap_mb, 1e-6}};
    struct StrFlag {
      const char* name;
      std::string* dst;
    };
    const StrFlag strs[] = {{"--compressor", &a->compressor},
                            {"--feedback", &a->feedback},
                            {"--granularity", &a->granularity},
                            {"--small-dtype", &a->small_dtype},
                            {"--data-root", &a->data_root}};
    bool known = false;
    for (const auto& x : ints) {
      if (f != x.name) continue;
      known = true;
      if (i + 1 >= argc) return bad(f + " needs a value");
      if (!parse_int(argv[++i], x.lo, x.dst))
        return bad("invalid value '" + std::string(argv[i]) + "' for " + f + " (an integer >= " + std::to_string(x.lo) +
                   ")");
    }
    for (const auto& x : doubles) {
      if (f != x.name) continue;
      known = true;
      if (i + 1 >= argc) return bad(f + " needs a value");
      if (!parse_double(argv[++i], x.lo, x.dst))
        return bad("invalid value '" + std::string(argv[i]) + "' for " + f + " (a number >= " + std::to_string(x.lo) +
                   ")");
    }
    for (const auto& x : strs) {
      if (f != x.name) continue;
      known = true;
      if (i + 1 >= argc) return bad(f + " needs a value");
      *x.dst = argv[++i];
    }
    if (!known) return bad("unknown option '" + f + "'");
  }
  if (a->granularity != "bucket" && a->granularity != "param")
    return bad("--granularity must be 'bucket' or 'param', got '" + a->granularity + "'");
  if (a->small_dtype != "fp32" && a->small_dtype != "fp16")
    return bad("--small-dtype must be 'fp32' or 'fp16', got '" + a->small_dtype + "'");
  return 0;
}

struct SmallCNNImpl : torch::nn::Module {
  explicit SmallCNNImpl(std::int64_t hidden)
      : conv1(register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 16, 3).padding(1)))),
        conv2(register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(16, 32, 3).padding(1)))),
        fc1(register_module("fc1", torch::nn::Linear(32 * 7 * 7, hidden))),
        fc2(register_module("fc2", torch::nn::Linear(hidden, 10))) {}
  torch::Tensor forward(torch::Tensor x) {
    x = torch::max_pool2d(torch::relu(conv1->forward(x)), 2);
    x = torch::max_pool2d(torch::relu(conv2->forward(x)), 2);
    return fc2->forward(torch::relu(fc1->forward(x.flatten(1))));
  }
  torch::nn::Conv2d conv1;
  torch::nn::Conv2d conv2;
  torch::nn::Linear fc1;
  torch::nn::Linear fc2;
};
TORCH_MODULE(SmallCNN);

/// Sum over ranks of a few doubles (metrics), through MPI directly.
std::vector<double> sum_over_ranks(std::vector<double> v) {
  MPI_Allreduce(MPI_IN_PLACE, v.data(), static_cast<int>(v.size()), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return v;
}

double evaluate(SmallCNN& model, const torch::Tensor& x, const torch::Tensor& y, int rank, int world) {
  torch::NoGradGuard no_grad;
  model->eval();
  double correct = 0, total = 0;
  for (std::int64_t i = static_cast<std::int64_t>(rank) * 1000; i < x.size(0);
       i += static_cast<std::int64_t>(world) * 1000) {
    const std::int64_t n = std::min<std::int64_t>(1000, x.size(0) - i);
    const torch::Tensor pred = model->forward(x.narrow(0, i, n)).argmax(1);
    correct += pred.eq(y.narrow(0, i, n)).sum().item<double>();
    total += static_cast<double>(n);
  }
  model->train();
  const auto s = sum_over_ranks({correct, total});
  return s[1] > 0 ? s[0] / s[1] : 0.0;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

/// Ends the job: every rank returns the same code (rank 0 has printed why).
int finish(int code) {
  MPI_Finalize();
  return code;
}

int run(const Args& args, gradzip::Communicator& comm) {
  const int rank = comm.rank(), world = comm.size();
  at::set_num_threads(static_cast<int>(args.threads));

  torch::manual_seed(static_cast<std::uint64_t>(args.seed));
  SmallCNN model(args.hidden);
  std::vector<torch::Tensor> params = model->parameters();
  {
    // Everyone starts from rank 0's parameters (as DDP's constructor broadcasts them).
    torch::NoGradGuard no_grad;
    for (auto& p : params) {
      const gradzip::Status s = comm.broadcast(
          gradzip::MutableBytes(static_cast<std::uint8_t*>(p.data_ptr()), static_cast<std::size_t>(p.nbytes())), 0, {});
      if (!s.ok()) {
        std::fprintf(stderr, "04_libtorch_train: [rank %d] broadcast: %s\n", rank, s.to_string().c_str());
        return 1;
      }
    }
  }
  gradzip::libtorch::GradSyncOptions o;
  o.compressor = args.compressor;
  o.feedback = args.feedback;
  o.warmup_steps = args.warmup_steps;
  o.min_compress_numel = args.min_compress_numel;
  o.granularity = args.granularity;
  o.small_dtype = args.small_dtype;
  o.seed = static_cast<std::uint64_t>(args.seed);
  o.track_error = args.track_error;
  o.bucket_cap_bytes = std::max<std::int64_t>(1, static_cast<std::int64_t>(args.bucket_cap_mb * 1024 * 1024));
  auto sync = gradzip::libtorch::GradSync::create(params, o, comm);
  if (!sync.ok()) {  // the same on every rank (a configuration error)
    if (rank == 0) std::fprintf(stderr, "04_libtorch_train: %s\n", sync.status().message().c_str());
    return 2;
  }
  // Data (every rank checks; all stop together if any rank cannot read it).
  auto train = gradzip::libtorch::load_fashion_mnist("train", args.data_root);
  auto test = train.ok() ? gradzip::libtorch::load_fashion_mnist("test", args.data_root) : train;
  const int failed = train.ok() && test.ok() ? 0 : 1;
  int any = 0, rank0_failed = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  rank0_failed = failed;
  MPI_Bcast(&rank0_failed, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (any) {
    if (failed && (rank == 0 || !rank0_failed))
      std::fprintf(stderr, "04_libtorch_train: [rank %d] %s\n", rank,
                   (train.ok() ? test.status() : train.status()).message().c_str());
    return 1;
  }
  torch::Tensor xtr = train->images, ytr = train->labels, xte = test->images, yte = test->labels;
  if (args.subset > 0 && args.subset < xtr.size(0))
    xtr = xtr.narrow(0, 0, args.subset), ytr = ytr.narrow(0, 0, args.subset);
  if (args.test_subset > 0 && args.test_subset < xte.size(0))
    xte = xte.narrow(0, 0, args.test_subset), yte = yte.narrow(0, 0, args.test_subset);
  xtr = gradzip::libtorch::normalize(xtr);
  xte = gradzip::libtorch::normalize(xte);

  torch::optim::SGD opt(params, torch::optim::SGDOptions(args.lr).momentum(args.momentum));
  std::int64_t n_params = 0;
  for (const auto& p : params) n_params += p.numel();
  if (rank == 0)
    std::printf(
        "04_libtorch_train: %d ranks (mpi), %lld parameters in %zu bucket(s), gradzip %s + %s (warm-up %lld), "
        "%lld train samples, batch %lld/rank, %lld torch thread(s)/rank\n",
        world, static_cast<long long>(n_params), (*sync)->buckets().size(), (*sync)->options().compressor.c_str(),
        (*sync)->options().feedback.c_str(), static_cast<long long>(args.warmup_steps),
        static_cast<long long>(xtr.size(0)), static_cast<long long>(args.batch_size),
        static_cast<long long>(args.threads));
  std::fflush(stdout);

  std::int64_t steps_per_epoch = xtr.size(0) / (args.batch_size * world);
  if (args.max_steps > 0) steps_per_epoch = std::min(steps_per_epoch, args.max_steps);
  using Clock = std::chrono::steady_clock;
  for (std::int64_t epoch = 0; epoch < args.epochs; ++epoch) {
    auto gen = at::detail::createCPUGenerator(static_cast<std::uint64_t>(args.seed * 1000 + epoch));
    const torch::Tensor perm = torch::randperm(xtr.size(0), gen).slice(0, rank, xtr.size(0), world);
    const gradzip::libtorch::GradSyncMetrics before = (*sync)->totals();
    std::vector<double> step_s;
    double loss_sum = 0.0;
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t_epoch = Clock::now();
    for (std::int64_t s = 0; s < steps_per_epoch; ++s) {
      const torch::Tensor idx = perm.narrow(0, s * args.batch_size, args.batch_size);
      const torch::Tensor xb = xtr.index_select(0, idx), yb = ytr.index_select(0, idx);
      const auto t0 = Clock::now();
      opt.zero_grad();
      torch::Tensor loss = torch::nn::functional::cross_entropy(model->forward(xb), yb);
      loss.backward();
      const gradzip::Status st = (*sync)->step();
      if (!st.ok()) {
        std::fprintf(stderr, "04_libtorch_train: [rank %d] %s\n", rank, st.to_string().c_str());
        std::fflush(stderr);
        // A configuration mismatch reaches every rank before anything moved: stop cleanly. Anything else may
        // leave the ranks' states different (or a peer stuck): abort the job.
        if (st.code() == gradzip::StatusCode::kMismatch) return 1;
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
      opt.step();
      step_s.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      loss_sum += loss.item<double>();
      if (rank == 0 && args.log_every > 0 && (s + 1) % args.log_every == 0) {
        std::printf("  epoch %lld step %lld/%lld: loss %.4f (running mean %.4f)\n", static_cast<long long>(epoch),
                    static_cast<long long>(s + 1), static_cast<long long>(steps_per_epoch), loss.item<double>(),
                    loss_sum / static_cast<double>(s + 1));
        std::fflush(stdout);
      }
    }
    const double epoch_s = std::chrono::duration<double>(Clock::now() - t_epoch).count();
    const double acc = evaluate(model, xte, yte, rank, world);
    const auto& after = (*sync)->totals();
    const double steps = std::max<double>(1.0, static_cast<double>(after.steps - before.steps));
    const double sent = (after.bytes_sent - before.bytes_sent) / steps;
    const double raw = (after.raw_bytes - before.raw_bytes) / steps;
    const double err2 = after.err2 - before.err2, norm2 = after.norm2 - before.norm2;
    const double enc = after.encode_s - before.encode_s, comm_s = after.comm_s - before.comm_s,
                 dec = after.decode_s - before.decode_s;
    const auto loss_all = sum_over_ranks({loss_sum, static_cast<double>(steps_per_epoch)});
    // Epoch 0's first steps are the uncompressed warm-up: the median skips them.
    std::vector<double> steady(
        step_s.begin() +
            (epoch == 0 ? std::min<std::size_t>(step_s.size(), static_cast<std::size_t>(args.warmup_steps + 2)) : 0),
        step_s.end());
    if (steady.empty()) steady = step_s;
    double total_s = 0;
    for (double x : step_s) total_s += x;
    if (rank == 0) {
      std::printf(
          "epoch %lld: loss %.4f, test acc %.2f%%, %.1f s, median step %.1f ms, gradzip sent %.1f kB/step "
          "(last step %.1f kB; raw %.1f kB, ratio %.1fx",
          static_cast<long long>(epoch), loss_all[0] / std::max(1.0, loss_all[1]), 100.0 * acc, epoch_s,
          1e3 * median(steady), sent / 1e3, (*sync)->metrics().bytes_sent / 1e3, raw / 1e3,
          sent > 0 ? raw / sent : 0.0);
      if (norm2 > 0) std::printf(", rel. error %.3f", std::sqrt(err2 / norm2));
      std::printf("), encode/comm/decode %.0f/%.0f/%.0f%% of step time\n", 100.0 * enc / total_s,
                  100.0 * comm_s / total_s, 100.0 * dec / total_s);
      std::fflush(stdout);
    }
  }

  if (args.check_sync) {
    std::vector<torch::Tensor> flat;
    for (const auto& p : params) flat.push_back(p.detach().reshape({-1}));
    const torch::Tensor mine = torch::cat(flat).contiguous();
    const std::size_t nb = static_cast<std::size_t>(mine.nbytes());
    std::vector<std::uint8_t> all(nb * static_cast<std::size_t>(world));
    const gradzip::Status s = comm.allgather(gradzip::ConstBytes(static_cast<const std::uint8_t*>(mine.data_ptr()), nb),
                                             gradzip::MutableBytes(all.data(), all.size()), {});
    if (!s.ok()) {
      std::fprintf(stderr, "04_libtorch_train: [rank %d] check-sync: %s\n", rank, s.to_string().c_str());
      return 1;
    }
    int differ = 0;
    for (int r = 1; r < world; ++r)
      if (std::memcmp(all.data(), all.data() + static_cast<std::size_t>(r) * nb, nb) != 0) differ = r;
    if (rank == 0) {
      if (differ)
        std::printf("check-sync: FAILED, rank %d's parameters differ from rank 0's\n", differ);
      else
        std::printf("check-sync: the %lld parameters are bit-identical on all %d ranks after %lld steps\n",
                    static_cast<long long>(n_params), world, static_cast<long long>((*sync)->steps()));
    }
    if (differ) return 3;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  const int rc = parse_args(argc, argv, &args);
  if (rc != 0) return rc < 0 ? 0 : rc;  // before MPI_Init: a usage error needs no MPI
  MPI_Init(&argc, &argv);
  auto comm = gradzip::MpiCommunicator::create(MPI_COMM_WORLD);
  if (!comm.ok()) {
    std::fprintf(stderr, "04_libtorch_train: %s\n", comm.status().to_string().c_str());
    return finish(1);
  }
  int code = 1;
  try {
    code = run(args, **comm);
  } catch (const std::exception& e) {  // torch's own errors (e.g. out of memory)
    std::fprintf(stderr, "04_libtorch_train: [rank %d] %s\n", (*comm)->rank(), e.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  comm->reset();
  return finish(code);
}
