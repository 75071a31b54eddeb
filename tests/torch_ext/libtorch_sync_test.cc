// gradzip::libtorch (gradzip/torch.h, torch_data.h) under MPI: `mpirun -np 2 gradzip_libtorch_test [FIXTURE]`
// (CTest: torch_ext.libtorch_np2, LABELS mpi).
//
// FIXTURE is written by tests/torch_ext/libtorch_fixture.py: what the Python DDP hook (gradzip.ddp.hook over gloo)
// did with 2 ranks — each rank's per-parameter gradients before and after the hook, for several compressor /
// feedback / granularity cases, and the hook's state_dict() after SAVE_AT steps. GradSync, fed the same inputs with
// the same options and DDP's bucket layout, must give the same gradients bit for bit (it runs the same C++ units and
// plans; with 2 ranks every sum is a + b, whatever the engine), resume from the Python state and continue bit for
// bit, and round-trip its own state through a file (left in FIXTURE.cpp_state/ for the Python hook to resume from:
// torch_ext.libtorch_state_to_python). Without a fixture (or with FIXTURE.skip, written when the Python side could not
// run) those tests skip and the others still run.
//
// Rank 0 prints GoogleTest's output; other ranks print their failures prefixed "[rank r]"; every rank exits non-zero
// when any rank failed.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <unistd.h>
#include <zlib.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "gradzip/collectives/mpi_communicator.h"
#include "gradzip/torch.h"
#include "gradzip/torch_data.h"
#include "mpi_gtest_main.h"

namespace gradzip::libtorch {
namespace {

Communicator* g_comm = nullptr;
std::string g_fixture_path;

// ------------------------------------------------------------------------------------------------ the fixture
struct Case {
  std::string name;
  GradSyncOptions options;
  std::vector<std::vector<at::Tensor>> inputs, outputs;  // [step][param] of this rank
  c10::IValue state;                                     // this rank's hook state after save_at steps
  c10::IValue other_state;                               // the other rank's
  double python_bytes_sent = 0;                          // the hook's totals()["bytes_sent"] over all steps
};

struct Fixture {
  bool loaded = false;
  std::string skip;  // why there is none
  std::int64_t steps = 0, save_at = 0, world = 0;
  std::vector<std::vector<std::int64_t>> shapes;
  std::vector<Case> cases;
};

const c10::IValue& at_key(const c10::IValue& d, const std::string& k) {
  static const c10::IValue none;
  const auto dict = d.toGenericDict();
  auto it = dict.find(c10::IValue(k));
  if (it == dict.end()) throw std::runtime_error("fixture: missing key '" + k + "'");
  return it->value();
}

std::vector<c10::IValue> items(const c10::IValue& v) {
  const auto ref = v.toListRef();
  return std::vector<c10::IValue>(ref.begin(), ref.end());
}

std::vector<std::int64_t> ints(const c10::IValue& v) {
  std::vector<std::int64_t> out;
  for (const auto& x : items(v)) out.push_back(x.toInt());
  return out;
}

Fixture load_fixture(const std::string& path, int rank) {
  Fixture f;
  if (path.empty()) {
    f.skip = "no fixture given (the LibTorch test was built without GRADZIP_PYTHON)";
    return f;
  }
  if (std::filesystem::exists(path + ".skip")) {
    std::ifstream s(path + ".skip");
    std::getline(s, f.skip);
    f.skip = "the Python side did not run: " + f.skip;
    return f;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open fixture " + path + " (run tests/torch_ext/libtorch_fixture.py)");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const c10::IValue root = torch::jit::pickle_load(bytes);
  f.steps = at_key(root, "steps").toInt();
  f.save_at = at_key(root, "save_at").toInt();
  f.world = at_key(root, "world").toInt();
  for (const auto& s : items(at_key(root, "shapes"))) f.shapes.push_back(ints(s));
  for (const auto& kv : at_key(root, "cases").toGenericDict()) {
    const c10::IValue& c = kv.value();
    Case k;
    k.name = kv.key().toStringRef();
    GradSyncOptions& o = k.options;
    o.compressor = at_key(c, "compressor").toStringRef();
    o.feedback = at_key(c, "feedback").toStringRef();
    o.granularity = at_key(c, "granularity").toStringRef();
    o.warmup_steps = at_key(c, "warmup_steps").toInt();
    o.min_compress_numel = at_key(c, "min_compress_numel").toInt();
    o.small_dtype = at_key(c, "small_dtype").toStringRef();
    o.seed = static_cast<std::uint64_t>(at_key(c, "seed").toInt());
    for (const auto& b : items(at_key(c, "buckets"))) o.buckets.push_back(ints(b));
    for (const char* which : {"inputs", "outputs"}) {
      auto& dst = std::string(which) == "inputs" ? k.inputs : k.outputs;
      for (const auto& step : items(items(at_key(c, which))[static_cast<std::size_t>(rank)])) {
        std::vector<at::Tensor> ps;
        for (const auto& t : items(step)) ps.push_back(t.toTensor());
        dst.push_back(ps);
      }
    }
    const auto states = items(at_key(c, "states"));
    k.state = states[static_cast<std::size_t>(rank)];
    k.other_state = states[static_cast<std::size_t>(1 - rank)];
    k.python_bytes_sent = items(at_key(c, "bytes_sent"))[static_cast<std::size_t>(rank)].toDouble();
    f.cases.push_back(std::move(k));
  }
  f.loaded = true;
  return f;
}

const Fixture& fixture() {
  static const Fixture f = load_fixture(g_fixture_path, g_comm->rank());
  return f;
}

#define REQUIRE_FIXTURE()                                                  \
  do {                                                                     \
    if (!fixture().loaded) GTEST_SKIP() << fixture().skip;                 \
    ASSERT_EQ(fixture().world, g_comm->size()) << "run with mpirun -np 2"; \
  } while (0)

std::vector<at::Tensor> make_params(const std::vector<std::vector<std::int64_t>>& shapes) {
  std::vector<at::Tensor> ps;
  for (const auto& s : shapes) ps.push_back(at::zeros(s, at::kFloat));
  return ps;
}

/// Feeds step t's inputs as gradients, runs GradSync::step, and checks every gradient against the hook's output.
void replay_step(GradSync& sync, std::vector<at::Tensor>& params, const Case& c, std::size_t t) {
  for (std::size_t i = 0; i < params.size(); ++i) params[i].mutable_grad() = c.inputs[t][i].clone();
  const Status s = sync.step();
  ASSERT_TRUE(s.ok()) << c.name << " step " << t << ": " << s.to_string();
  for (std::size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& got = params[i].grad();
    const at::Tensor& want = c.outputs[t][i];
    EXPECT_TRUE(at::equal(got, want)) << c.name << ": step " << t << ", parameter " << i << " differs from the Python "
                                      << "hook's result, max |diff| = " << (got - want).abs().max().item<float>();
  }
}

/// Every rank holds bit-identical `t`.
bool same_on_all_ranks(const at::Tensor& t) {
  const at::Tensor c = t.contiguous().to(at::kFloat);
  const std::size_t nb = static_cast<std::size_t>(c.numel()) * 4;
  std::vector<std::uint8_t> all(nb * static_cast<std::size_t>(g_comm->size()));
  const Status s = g_comm->allgather(ConstBytes(reinterpret_cast<const std::uint8_t*>(c.data_ptr<float>()), nb),
                                     MutableBytes(all.data(), all.size()), {});
  if (!s.ok()) return false;
  for (int r = 1; r < g_comm->size(); ++r)
    if (std::memcmp(all.data(), all.data() + r * nb, nb) != 0) return false;
  return true;
}

at::Tensor flat_grads(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> v;
  for (const auto& p : params) v.push_back(p.grad().reshape({-1}));
  return at::cat(v);
}

// ------------------------------------------------------------------------------------- against the Python hook
TEST(LibTorchFixture, GradientsEqualThePythonHook) {
  REQUIRE_FIXTURE();
  for (const Case& c : fixture().cases) {
    SCOPED_TRACE(c.name);
    auto params = make_params(fixture().shapes);
    auto sync = GradSync::create(params, c.options, *g_comm);
    ASSERT_TRUE(sync.ok()) << sync.status().to_string();
    for (std::size_t t = 0; t < c.inputs.size(); ++t) {
      replay_step(**sync, params, c, t);
      EXPECT_TRUE(same_on_all_ranks(flat_grads(params))) << c.name << " step " << t;
    }
    EXPECT_EQ((*sync)->steps(), fixture().steps);
    // Same slots and all-reduces as the hook: the same bytes, except where the hook gathers max-size slots for
    // variable-size payloads and GradSync gathers the exact sizes.
    const double sent = (*sync)->totals().bytes_sent;
    if (c.options.compressor.find("coding=elias") != std::string::npos) {
      EXPECT_LE(sent, c.python_bytes_sent);
      EXPECT_GT(sent, 0.0);
    } else {
      EXPECT_EQ(sent, c.python_bytes_sent);
    }
  }
}

TEST(LibTorchFixture, ResumesFromThePythonHooksState) {
  REQUIRE_FIXTURE();
  for (const Case& c : fixture().cases) {
    SCOPED_TRACE(c.name);
    auto params = make_params(fixture().shapes);
    auto sync = GradSync::create(params, c.options, *g_comm);
    ASSERT_TRUE(sync.ok()) << sync.status().to_string();
    const Status s = (*sync)->load_state_dict(c.state);
    ASSERT_TRUE(s.ok()) << s.to_string();
    EXPECT_EQ((*sync)->steps(), fixture().save_at);
    for (std::size_t t = static_cast<std::size_t>(fixture().save_at); t < c.inputs.size(); ++t)
      replay_step(**sync, params, c, t);
  }
}

// The file stays in FIXTURE.cpp_state/<case>.rank<r>.pt: the next ctest (libtorch_fixture.py --check-cpp-state)
// loads it into the Python hook mid-training and requires the hook's remaining outputs to equal the fixture's bit
// for bit, so C++ checkpoints resume in Python too.
TEST(LibTorchFixture, OwnStateRoundTripsThroughAFile) {
  REQUIRE_FIXTURE();
  const std::filesystem::path dir = g_fixture_path + ".cpp_state";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  ASSERT_FALSE(ec) << "cannot create " << dir << ": " << ec.message();
  for (const Case& c : fixture().cases) {
    SCOPED_TRACE(c.name);
    auto pa = make_params(fixture().shapes);
    auto a = GradSync::create(pa, c.options, *g_comm);
    ASSERT_TRUE(a.ok()) << a.status().to_string();
    const std::size_t k = static_cast<std::size_t>(fixture().save_at);
    for (std::size_t t = 0; t < k; ++t) replay_step(**a, pa, c, t);
    const std::string path = (dir / (c.name + ".rank" + std::to_string(g_comm->rank()) + ".pt")).string();
    ASSERT_TRUE((*a)->save(path).ok());
    auto pb = make_params(fixture().shapes);
    auto b = GradSync::create(pb, c.options, *g_comm);
    ASSERT_TRUE(b.ok());
    const Status s = (*b)->load(path);
    ASSERT_TRUE(s.ok()) << s.to_string();
    EXPECT_EQ((*b)->steps(), static_cast<std::int64_t>(k));
    EXPECT_EQ((*b)->num_units(), (*a)->num_units());
    for (std::size_t t = k; t < c.inputs.size(); ++t) replay_step(**b, pb, c, t);
  }
}

TEST(LibTorchFixture, DefaultBucketsFollowDdpsRule) {
  REQUIRE_FIXTURE();
  // The fixture's DDP ran with bucket_cap_mb=0.04; its rebuilt layout is the reverse-order rule with that cap.
  auto params = make_params(fixture().shapes);
  GradSyncOptions o;
  o.bucket_cap_bytes = static_cast<std::int64_t>(0.04 * 1024 * 1024);
  auto sync = GradSync::create(params, o, *g_comm);
  ASSERT_TRUE(sync.ok());
  EXPECT_EQ((*sync)->buckets(), fixture().cases.front().options.buckets);
}

TEST(LibTorchFixture, ForeignStateIsRefused) {
  REQUIRE_FIXTURE();
  const Case& c = fixture().cases.front();
  auto params = make_params(fixture().shapes);
  auto sync = GradSync::create(params, c.options, *g_comm);
  ASSERT_TRUE(sync.ok());
  Status s = (*sync)->load_state_dict(c.other_state);  // the other rank's memories
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("belongs to rank"), std::string::npos) << s.message();
  GradSyncOptions other = c.options;
  other.compressor = "topk:ratio=0.5";
  auto sync2 = GradSync::create(params, other, *g_comm);
  ASSERT_TRUE(sync2.ok());
  s = (*sync2)->load_state_dict(c.state);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("compressor"), std::string::npos) << s.message();
  GradSyncOptions param = c.options;  // another unit layout
  param.granularity = c.options.granularity == "param" ? "bucket" : "param";
  param.min_compress_numel = 1000;
  auto sync3 = GradSync::create(params, param, *g_comm);
  ASSERT_TRUE(sync3.ok());
  s = (*sync3)->load_state_dict(c.state);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("unit(s) with numel"), std::string::npos) << s.message();
  EXPECT_EQ((*sync3)->steps(), 0);  // nothing changed
  EXPECT_EQ((*sync3)->load("/nonexistent/gradzip_state.pt").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*sync3)->load_state_dict(c10::IValue(std::int64_t{3})).code(), StatusCode::kInvalidArgument);
}

// ------------------------------------------------------------------------------------------- GradSync alone
/// Distributed least squares: rank r holds (A_r, b_r); every step each rank computes its gradient A_r^T (A_r x - b_r)
/// of the shared x, GradSync averages it, and SGD updates x. The ranks' x must stay bit-identical.
TEST(GradSync, RanksStayIdenticalAfterManySteps) {
  const int rank = g_comm->rank();
  for (const char* spec : {"topk:ratio=0.05", "qsgd:bits=4", "sign"}) {
    SCOPED_TRACE(spec);
    auto gen = at::detail::createCPUGenerator(100 + static_cast<std::uint64_t>(rank));
    const at::Tensor a = at::randn({64, 300}, gen), b = at::randn({64}, gen);
    std::vector<at::Tensor> params{at::zeros({300}), at::zeros({20, 30})};  // two parameters, one bucket
    GradSyncOptions o;
    o.compressor = spec;
    o.feedback = std::string(spec) == "qsgd:bits=4" ? "none" : "ef14";
    o.warmup_steps = 2;
    o.min_compress_numel = 100;
    auto sync = GradSync::create(params, o, *g_comm);
    ASSERT_TRUE(sync.ok()) << sync.status().to_string();
    const at::Tensor loss0 = (at::matmul(a, params[0]) - b).pow(2).sum();
    for (int t = 0; t < 40; ++t) {
      params[0].mutable_grad() = at::matmul(a.t(), at::matmul(a, params[0]) - b) / 64.0;
      params[1].mutable_grad() = at::randn({20, 30}, gen);  // rank-specific noise
      ASSERT_TRUE((*sync)->step().ok());
      for (auto& p : params) p.sub_(p.grad() * 0.01);
    }
    EXPECT_TRUE(same_on_all_ranks(params[0]));
    EXPECT_TRUE(same_on_all_ranks(params[1]));
    EXPECT_LT((at::matmul(a, params[0]) - b).pow(2).sum().item<float>(), loss0.item<float>());
    EXPECT_EQ((*sync)->totals().compressed_buckets, 38);
    EXPECT_GT((*sync)->totals().compression_ratio(), 1.0);
  }
}

TEST(GradSync, MixedDtypesAndUndefinedGradients) {
  // A float64 and a bfloat16 parameter (two buckets), one without a gradient (it contributes zeros).
  std::vector<at::Tensor> params{at::zeros({5000}, at::kDouble), at::zeros({6000}, at::kBFloat16), at::zeros({7})};
  GradSyncOptions o;
  o.compressor = "identity";
  o.feedback = "none";
  o.min_compress_numel = 100;
  auto sync = GradSync::create(params, o, *g_comm);
  ASSERT_TRUE(sync.ok()) << sync.status().to_string();
  EXPECT_EQ((*sync)->buckets().size(), 3u);
  const double r = g_comm->rank();
  params[0].mutable_grad() = at::full({5000}, 1.0 + r, at::kDouble);
  params[1].mutable_grad() = at::full({6000}, 2.0 * (r + 1), at::kBFloat16);
  ASSERT_TRUE((*sync)->step().ok());
  const double n = g_comm->size();
  EXPECT_TRUE(at::allclose(params[0].grad(), at::full({5000}, 1.0 + (n - 1) / 2, at::kDouble)));
  EXPECT_TRUE(at::equal(params[1].grad(), at::full({6000}, n + 1, at::kBFloat16)));
  ASSERT_TRUE(params[2].grad().defined());
  EXPECT_TRUE(at::equal(params[2].grad(), at::zeros({7})));
  EXPECT_EQ(params[0].grad().scalar_type(), at::kDouble);
}

TEST(GradSync, BadOptionsAreRefusedWithAMessage) {
  std::vector<at::Tensor> params{at::zeros({10}), at::zeros({20})};
  auto expect_bad = [&](GradSyncOptions o, const std::string& needle) {
    auto s = GradSync::create(params, o, *g_comm);
    ASSERT_FALSE(s.ok()) << needle;
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find(needle), std::string::npos) << s.status().message();
  };
  GradSyncOptions o;
  o.compressor = "topk2";
  expect_bad(o, "unknown compressor 'topk2'");
  o = {};
  o.compressor = "qsgd:bits=4";
  o.feedback = "ef21";
  expect_bad(o, "scaled(");
  o = {};
  o.granularity = "layer";
  expect_bad(o, "granularity");
  o = {};
  o.small_dtype = "int8";
  expect_bad(o, "small_dtype");
  o = {};
  o.buckets = {{0}};
  expect_bad(o, "parameter 1 is in no bucket");
  o.buckets = {{0, 1, 1}};
  expect_bad(o, "more than one bucket");
  o.buckets = {{0, 2}};
  expect_bad(o, "outside");
  o = {};
  o.warmup_steps = -1;
  expect_bad(o, "warmup_steps");
  EXPECT_EQ(GradSync::create({}, GradSyncOptions{}, *g_comm).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(GradSync::create({at::zeros({3}, at::kLong)}, GradSyncOptions{}, *g_comm).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(GradSync, RanksThatDisagreeGetTheSameMismatch) {
  std::vector<at::Tensor> params{at::zeros({5000})};
  GradSyncOptions o;
  o.min_compress_numel = 10;
  o.compressor = "randk:ratio=0.1";  // a different seed per rank would pick different coordinates
  o.feedback = "none";
  o.seed = static_cast<std::uint64_t>(g_comm->rank());
  auto sync = GradSync::create(params, o, *g_comm);
  ASSERT_TRUE(sync.ok());
  params[0].mutable_grad() = at::ones({5000});
  const Status s = (*sync)->step();
  EXPECT_EQ(s.code(), StatusCode::kMismatch) << s.to_string();
  EXPECT_NE(s.message().find("rank 1 disagrees with rank 0"), std::string::npos) << s.message();
  EXPECT_EQ((*sync)->steps(), 0);
  EXPECT_TRUE(at::equal(params[0].grad(), at::ones({5000})));  // untouched
  o.seed = 4;                                                  // agreeing ranks go ahead
  auto ok = GradSync::create(params, o, *g_comm);
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE((*ok)->step().ok());
  EXPECT_TRUE(same_on_all_ranks(params[0].grad()));
}

TEST(GradSync, NonFiniteGradientIsAnError) {
  std::vector<at::Tensor> params{at::zeros({5000})};
  GradSyncOptions o;
  o.min_compress_numel = 10;
  auto sync = GradSync::create(params, o, *g_comm);
  ASSERT_TRUE(sync.ok());
  params[0].mutable_grad() = at::ones({5000});
  params[0].mutable_grad()[17] = std::nanf("");
  const Status s = (*sync)->step();  // every rank has the NaN, so every rank stops before communicating
  EXPECT_EQ(s.code(), StatusCode::kNonFinite) << s.to_string();
  EXPECT_NE(s.message().find("bucket 0"), std::string::npos) << s.message();
}

// ------------------------------------------------------------------------------------------------- adapters
TEST(Adapters, SpansOnlyOfContiguousFloat32) {
  at::Tensor t = at::arange(12, at::kFloat).view({3, 4});
  auto s = float_span(t);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->size(), 12u);
  EXPECT_EQ((*s)[5], 5.0f);
  EXPECT_EQ(float_span(t.t()).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(float_span(t.to(at::kDouble)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(const_float_span(at::Tensor()).status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(byte_span(at::zeros({4}, at::kByte)).ok());
  EXPECT_FALSE(byte_span(at::zeros({4})).ok());
  auto ex = exec_for(t);
  ASSERT_TRUE(ex.ok());
  EXPECT_EQ(ex->device, Device::kCpu);
}

// ----------------------------------------------------------------------------------------------------- data
void write_gz(const std::string& path, const std::vector<std::uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  gzclose(f);
}

TEST(TorchData, ReadsIdxAndNamesWhatIsWrong) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("gradzip_idx_" + std::to_string(::getpid()) + "_" + std::to_string(g_comm->rank()));
  std::filesystem::create_directories(dir);
  const std::vector<std::uint8_t> good = {0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6};
  write_gz((dir / "good.gz").string(), good);
  auto t = read_idx((dir / "good.gz").string());
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t->sizes(), (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ((*t)[1][2].item<int>(), 6);
  std::vector<std::uint8_t> short_body(good.begin(), good.end() - 1);
  write_gz((dir / "short.gz").string(), short_body);
  auto s = read_idx((dir / "short.gz").string());
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("declares shape"), std::string::npos) << s.status().message();
  std::vector<std::uint8_t> bad_magic = good;
  bad_magic[2] = 0x0D;  // float IDX
  write_gz((dir / "float.gz").string(), bad_magic);
  EXPECT_NE(read_idx((dir / "float.gz").string()).status().message().find("unsigned-byte"), std::string::npos);
  {
    std::ofstream raw(dir / "truncated.gz", std::ios::binary);
    const unsigned char gz_header[] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0x63};
    raw.write(reinterpret_cast<const char*>(gz_header), sizeof(gz_header));
  }
  EXPECT_FALSE(read_idx((dir / "truncated.gz").string()).ok());
  auto missing = load_fashion_mnist("train", dir.string());
  EXPECT_EQ(missing.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("apt-get install dataset-fashion-mnist"), std::string::npos);
  EXPECT_NE(missing.status().message().find("train-images-idx3-ubyte.gz"), std::string::npos);
  EXPECT_EQ(load_fashion_mnist("valid").status().code(), StatusCode::kInvalidArgument);
  std::filesystem::remove_all(dir);
}

TEST(TorchData, FashionMnistFromTheDebianPackage) {
  auto root = find_fashion_mnist();
  if (!root.ok()) GTEST_SKIP() << root.status().message();
  auto test = load_fashion_mnist("test");
  ASSERT_TRUE(test.ok()) << test.status().to_string();
  EXPECT_EQ(test->images.sizes(), (std::vector<std::int64_t>{10000, 28, 28}));
  EXPECT_EQ(test->labels.scalar_type(), at::kLong);
  EXPECT_EQ(at::bincount(test->labels).min().item<std::int64_t>(), 1000);  // balanced: 1000 per class
  const at::Tensor x = normalize(test->images);
  EXPECT_EQ(x.sizes(), (std::vector<std::int64_t>{10000, 1, 28, 28}));
  EXPECT_NEAR(x.mean().item<double>(), 0.0, 0.05);
}

}  // namespace
}  // namespace gradzip::libtorch

int main(int argc, char** argv) {
  return gradzip::testing::mpi_gtest_main(argc, argv, std::chrono::milliseconds(60000),
                                          [](int ac, char** av, gradzip::Communicator& c) {
                                            at::set_num_threads(1);
                                            if (ac > 1) gradzip::libtorch::g_fixture_path = av[1];
                                            gradzip::libtorch::g_comm = &c;
                                          });
}
