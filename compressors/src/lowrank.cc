// lowrank: PowerSGD rank-r compression, single-worker form (Vogels, Karimireddy, Jaggi 2019, arXiv 1905.13727;
// algorithms.md §2.2 "PowerSGD, rank r"). Spec: lowrank:rank=r[,cols=n]; rank defaults to 1, and the canonical spec
// always names rank and names cols only when it is set (make_lowrank / LowRankConfig).
//
// View: the flat x (length d) is read as a row-major m x n matrix M, M[i][j] = x[i n + j], zero-padded past d.
// cols = n when given (then m = ceil(d / n)); cols = 0 picks the near-square n = ceil(sqrt(d)), m = ceil(d / n).
// Requires 1 <= r <= min(m, n) and cols <= d (check(): kInvalidArgument naming rank, m, n and numel).
//
// One call (one warm-started power-iteration step):
//   Q  (n x r) = LowRankState::q when Exec::state is a LowRankState of the same (rows = m, cols = n, rank = r);
//                otherwise standard normals from CounterRng(Exec::rng): element k = j r + l of Q (row-major) is
//                sqrt(-2 ln u1) cos(2 pi u2) (Box-Muller in double, rounded to float) with
//                u1 = ((u32(2k) >> 8) + 1) 2^-24 in (0, 1] and u2 = (u32(2k+1) >> 8) 2^-24.
//   P  (m x r) = M Q (double accumulation, j ascending)
//   P <- orthonormal columns: modified Gram-Schmidt in double, each column orthogonalised twice against the
//        previous ones ("twice is enough"); column dot products in lowrank_math.h's fixed order (1024 lanes of
//        i ascending, combined by a pairwise tree), so that one CUDA block reproduces them. A degenerate column (norm 0
//        or NaN before, or its residual <= 1e-10 times its norm after, i.e. linearly dependent in double precision) is
//        replaced by the unit basis vector e_i maximising 1 - sum_{l<k} P[i][l]^2 (lowest i on ties) orthogonalised
//        against the previous columns. Such an e_i has residual >= (m - k)/m > 0 since k < r <= m. Replacing instead of
//        zeroing keeps the warm start alive: with zeroed columns a single all-zero gradient would make Q' = 0 and every
//        later call would be stuck at P = M 0 = 0. P is then rounded to float (the values the decoder sees).
//   Q' (n x r) = M^T P (double accumulation, i ascending), rounded to float.
//   C(x) = P Q'^T (m x n) read back as a flat vector, the padding dropped. Because P has orthonormal columns,
//   C = P P^T M is the orthogonal projection of M's columns onto span(P), so ||C(x) - x||^2 = ||x||^2 -
//   ||P^T M||^2 <= ||x||^2 up to float rounding; one step has no worst-case delta > 0 (algorithms.md §2.2).
//   When a state was given, it receives Q' (its rows/cols/rank set to m, n, r): the warm start of the next call.
//
// Body (little-endian fp32), body bits = 32 r (m + n):
//   P row-major (m x r: P[i][l] at float index i r + l), then Q' row-major (n x r: Q'[j][l] at m r + j r + l).
// Header: param0 = r, param1 = n (the cols actually used), flags = 0.
// Decode: y[i n + j] = scale * sum_{l ascending} P[i][l] Q'[j][l] (float accumulation) for i n + j < d, or
// y += that. Validation (kInvalidPayload): flags = 0, param0 == this codec's rank, param1 == the n this codec
// uses for d (so m n >= d > (m - 1) n with m = ceil(d / n)), r <= min(m, n), body_bytes == 4 r (m + n). Floats
// in the body are not checked (a corrupted value decodes to garbage, never out of bounds).
//
// Errors: kInvalidArgument (rank 0, rank > min(m, n), cols > d, payload over 4 GiB, Exec::state not a
// LowRankState); kOutOfRange when an entry of Q' = M^T P does not fit in fp32 (|M| near FLT_MAX, or NaN/Inf input
// with check_finite = false); kInvalidPayload from decode.
// Traits: kBiased, delta 0 (no worst-case contraction for one step), stateful, deterministic = false: the output
// depends on the state and, on a cold start, on Exec::rng. For a fixed (x, state contents, RngKey) the result is
// bit-reproducible on one host (Box-Muller uses the C library's log/cos).
// Workspace: workspace_bytes(d, device) bytes of scratch through Exec::workspace; without one the call allocates.
// Thread-safety: the codec is immutable; the state is the caller's and must not be shared by concurrent calls.
//
// CUDA (has_cuda(); kernels in cuda/lowrank.cu, math shared through lowrank_math.h): the same formulas and
// summation orders, so the payload and the decoded floats are bit-identical to the CPU's for the same Q (warm start)
// and, on a cold start, identical except where the device's double log/cos (1-2 ulp) moves a Q entry across a float
// rounding boundary (about 1e-8 per entry; the factors then differ by float rounding only). The warm-start state
// stays on the device (LowRankState, codecs.h): a device encode reads Q from and writes Q' to device memory owned by
// the state, and decides warm or cold on the device (a validity word), so no call copies between host and device;
// Q' is committed only when no entry overflowed (an asynchronous failure keeps the previous Q, as on the CPU; a
// failed call that changed the state's shape leaves it cold). Decode validates the payload header (flags = the
// wrapper bits the caller requires, param0 = rank, param1 = n, exact body_bytes) on the device before touching y.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "builtin.h"
#include "gradzip/compressors/config.h"
#include "gradzip/compressors/lowrank_math.h"
#include "gradzip/compressors/rng.h"
#if GRADZIP_HAS_CUDA
#include "cuda/lowrank_cuda.h"
#endif

namespace gradzip {

namespace detail {
// LowRankState's device copy (codecs.h), for the codec below.
struct LowRankStateAccess {
#if GRADZIP_HAS_CUDA
  static cuda::LowRankDeviceQ* device_q(LowRankState& s) {
    if (s.device_ == nullptr) s.device_ = new cuda::LowRankDeviceQ();
    return static_cast<cuda::LowRankDeviceQ*>(s.device_);
  }
  static const cuda::LowRankDeviceQ* device_q(const LowRankState& s) {
    return static_cast<const cuda::LowRankDeviceQ*>(s.device_);
  }
#endif
  static void set_on_device(LowRankState& s, bool v) {
    s.device_current_ = v;
  }
};

// The current Q of `s` as a host vector (a device copy is downloaded, synchronously).
Status current_q(const LowRankState& s, std::vector<float>* q) {
#if GRADZIP_HAS_CUDA
  if (s.on_device()) {
    const cuda::LowRankDeviceQ* dq = LowRankStateAccess::device_q(s);
    if (dq == nullptr) {
      q->clear();
      return Status::Ok();
    }
    return cuda::lowrank_device_q_download(*dq, q);
  }
#endif
  *q = s.q;
  return Status::Ok();
}
}  // namespace detail

LowRankState::LowRankState(const LowRankState& other)
    : CompressorState(other), rows(other.rows), cols(other.cols), rank(other.rank) {
  if (!detail::current_q(other, &q).ok()) q.clear();
}

LowRankState& LowRankState::operator=(const LowRankState& other) {
  if (this == &other) return *this;
  std::vector<float> nq;
  if (!detail::current_q(other, &nq).ok()) nq.clear();
  q = std::move(nq);
  rows = other.rows;
  cols = other.cols;
  rank = other.rank;
  device_current_ = false;  // a device copy of our own stays allocated and is re-uploaded by the next device encode
  return *this;
}

LowRankState::~LowRankState() {
#if GRADZIP_HAS_CUDA
  if (device_ != nullptr) {
    auto* dq = static_cast<detail::cuda::LowRankDeviceQ*>(device_);
    detail::cuda::lowrank_device_q_free(dq);
    delete dq;
  }
#endif
}

Status LowRankState::sync_to_host() {
  if (!device_current_) return Status::Ok();
  GZ_RETURN_IF_ERROR(detail::current_q(*this, &q));
  device_current_ = false;
  return Status::Ok();
}

namespace {

struct View {
  std::size_t m = 0, n = 0;
};

View view_of(std::size_t d, std::size_t cols) {
  View v;
  v.n = detail::lowrank_view_cols(d, cols);
  v.m = (d + v.n - 1) / v.n;
  return v;
}

constexpr std::size_t kAlign = 64;
inline std::size_t round_up(std::size_t b) {
  return (b + kAlign - 1) / kAlign * kAlign;
}

// Carves aligned arrays out of the caller's workspace, or out of an owned buffer when that is too small.
class Scratch {
 public:
  Scratch(MutableBytes ws, std::size_t need) {
    if (ws.data() != nullptr && ws.size() >= need) {
      base_ = ws.data();
      size_ = ws.size();
    } else {
      owned_.resize(need);
      base_ = owned_.data();
      size_ = owned_.size();
    }
    const std::uintptr_t p = reinterpret_cast<std::uintptr_t>(base_);
    off_ = static_cast<std::size_t>((kAlign - p % kAlign) % kAlign);
  }
  template <class T>
  T* take(std::size_t count) {
    T* r = reinterpret_cast<T*>(base_ + off_);
    off_ += round_up(count * sizeof(T));
    return off_ <= size_ ? r : nullptr;
  }

 private:
  std::vector<std::uint8_t> owned_;
  std::uint8_t* base_ = nullptr;
  std::size_t size_ = 0;
  std::size_t off_ = 0;
};

class LowRank final : public Compressor {
 public:
  explicit LowRank(const LowRankConfig& c) : cfg_(c) {}

  std::string_view name() const override { return "lowrank"; }
  std::string spec() const override {
    std::string s = "lowrank:rank=" + std::to_string(cfg_.rank);
    if (cfg_.cols != 0) s += ",cols=" + std::to_string(cfg_.cols);
    return s;
  }
  std::uint16_t codec_id() const override { return static_cast<std::uint16_t>(CodecId::kLowRank); }
  CompressorTraits traits(std::size_t) const override {
    CompressorTraits t;
    t.kind = GuaranteeKind::kBiased;
    t.delta = 0.0;
    t.omega = 0.0;
    t.deterministic = false;
    t.linear = false;
    t.stateful = true;
    return t;
  }
  std::size_t max_encoded_bytes(std::size_t numel) const override {
    const View v = view_of(numel, cfg_.cols);
    const std::size_t r = std::min<std::size_t>(cfg_.rank, std::min(v.m, v.n));  // valid configs: r = rank
    return kHeaderBytes + 4 * r * (v.m + v.n);
  }
  std::size_t workspace_bytes(std::size_t numel, Device dev) const override {
    const View v = view_of(numel, cfg_.cols);
    const std::size_t r = std::min<std::size_t>(cfg_.rank, std::min(v.m, v.n));
#if GRADZIP_HAS_CUDA
    if (dev == Device::kCuda) return detail::cuda::lowrank_workspace(v.m, v.n, r);
#else
    (void)dev;
#endif
    return std::max(encode_scratch(v, r), decode_scratch(v, r));
  }

#if GRADZIP_HAS_CUDA
  bool has_cuda() const override {
    return true;
  }

 protected:
  Status encode_cuda(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader& h,
                     const Exec& ex) const override {
    const View v = view_of(x.size(), cfg_.cols);
    const std::size_t m = v.m, n = v.n, r = cfg_.rank;
    detail::cuda::LowRankDeviceQ* dq = nullptr;
    if (ex.state != nullptr) {
      LowRankState* st = dynamic_cast<LowRankState*>(ex.state);
      if (st == nullptr) return Status::InvalidArgument("lowrank.encode: Exec::state is not a LowRankState");
      const bool same = st->rows == m && st->cols == n && st->rank == r;
      const bool host_warm = !st->on_device() && same && st->q.size() == n * r;
      dq = detail::LowRankStateAccess::device_q(*st);
      const Status p = detail::cuda::lowrank_device_q_prepare(dq, m, n, r, host_warm ? st->q.data() : nullptr,
                                                              st->on_device() && same, ex);
      if (!p.ok()) {  // the device copy may be gone: the next call starts cold
        detail::LowRankStateAccess::set_on_device(*st, false);
        st->q.clear();
        return p;
      }
      st->q.clear();  // the current Q is on the device from now on (sync_to_host brings it back)
      st->rows = m;
      st->cols = n;
      st->rank = static_cast<std::uint32_t>(r);
      detail::LowRankStateAccess::set_on_device(*st, true);
    }
    h.param0 = static_cast<std::uint32_t>(r);
    h.param1 = static_cast<std::uint32_t>(n);
    return detail::cuda::lowrank_encode(m, n, r, x, body, body_bytes, dq, ex);
  }
  Status decode_cuda(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                     const Exec& ex) const override {
    const View v = view_of(y.size(), cfg_.cols);
    const std::size_t r = cfg_.rank;
    PayloadHeader e = h;     // codec id, numel and, in flags, the wrapper bits the payload must carry
    e.flags = h.flags | 0u;  // lowrank's own flags: none
    e.param0 = static_cast<std::uint32_t>(r);
    e.param1 = static_cast<std::uint32_t>(v.n);
    e.body_bytes = static_cast<std::uint32_t>(4 * r * (v.m + v.n));
    return detail::cuda::lowrank_decode(v.m, v.n, r, e, body, y, mode, scale, ex);
  }
#endif

 protected:
  Status check_numel(std::size_t numel) const override {
    if (cfg_.cols > numel) return Status::InvalidArgument("lowrank: cols=", cfg_.cols, " exceeds numel=", numel);
    const View v = view_of(numel, cfg_.cols);
    const std::size_t lim = std::min(v.m, v.n);
    if (cfg_.rank < 1 || cfg_.rank > lim)
      return Status::InvalidArgument("lowrank: rank=", cfg_.rank, " must be in [1, min(m, n) = ", lim,
                                     "] for numel=", numel, " viewed as ", v.m, " x ", v.n);
    const std::uint64_t body = 4ull * cfg_.rank * (v.m + v.n);
    if (body > std::numeric_limits<std::uint32_t>::max())
      return Status::InvalidArgument("lowrank: payload body of 4 r (m + n) = ", body, " bytes for rank=", cfg_.rank,
                                     ", numel=", numel, " exceeds 4 GiB");
    return Status::Ok();
  }

  Status encode_cpu(Span<const float> x, MutableBytes body, std::size_t* body_bytes, PayloadHeader& h,
                    const Exec& ex) const override {
    const std::size_t d = x.size();
    const View v = view_of(d, cfg_.cols);
    const std::size_t m = v.m, n = v.n, r = cfg_.rank;

    LowRankState* st = nullptr;
    if (ex.state != nullptr) {
      st = dynamic_cast<LowRankState*>(ex.state);
      if (st == nullptr) return Status::InvalidArgument("lowrank.encode: Exec::state is not a LowRankState");
      GZ_RETURN_IF_ERROR(st->sync_to_host());  // the last encode of this state ran on the device
    }
    const bool warm = st != nullptr && st->rows == m && st->cols == n && st->rank == r && st->q.size() == n * r;

    Scratch sc(ex.workspace, encode_scratch(v, r));
    double* P = sc.take<double>(m * r);
    double* Qn = sc.take<double>(n * r);
    double* res = sc.take<double>(m);
    float* qinit = sc.take<float>(n * r);
    if (P == nullptr || Qn == nullptr || res == nullptr || qinit == nullptr)
      return Status::Internal("lowrank.encode: scratch layout exceeds workspace_bytes()");

    const float* Q = nullptr;
    if (warm) {
      Q = st->q.data();
    } else {
      detail::lowrank_draw_gaussian(ex.rng, qinit, n * r);
      Q = qinit;
    }

    const float* xp = x.data();
    detail::lowrank_mul_mq(xp, d, m, n, Q, r, P);  // P = M Q
    detail::orthonormalise_columns(P, m, r, res);

    // Round P to the float values the decoder sees, write them, and use them for Q'.
    std::uint8_t* out = body.data();
    for (std::size_t k = 0; k < m * r; ++k) {
      const float f = static_cast<float>(P[k]);
      P[k] = f;
      store_le<float>(out + 4 * k, f);
    }

    // Q' = M^T P, row-major floats after P.
    std::uint8_t* qout = out + 4 * m * r;
    double bad_value = 0.0;
    const std::size_t bad = detail::lowrank_mul_mtp(xp, d, m, n, P, r, Qn, qout, &bad_value);
    if (bad < n * r)
      return Status::OutOfRange("lowrank.encode: Q'[", bad / r, "][", bad % r, "] = (M^T P) = ", bad_value,
                                " does not fit in float32 (input too large or not finite)");
    if (st != nullptr) {
      st->q.resize(n * r);
      for (std::size_t k = 0; k < n * r; ++k) st->q[k] = load_le<float>(qout + 4 * k);
      st->rows = m;
      st->cols = n;
      st->rank = static_cast<std::uint32_t>(r);
    }
    h.param0 = static_cast<std::uint32_t>(r);
    h.param1 = static_cast<std::uint32_t>(n);
    *body_bytes = 4 * r * (m + n);
    return Status::Ok();
  }

  Status decode_cpu(const PayloadHeader& h, ConstBytes body, Span<float> y, DecodeMode mode, float scale,
                    const Exec& ex) const override {
    const std::size_t d = y.size();
    const View v = view_of(d, cfg_.cols);
    if (h.flags != 0) return Status::InvalidPayload("lowrank.decode: unexpected flags=", h.flags, " (must be 0)");
    if (h.param0 != cfg_.rank)
      return Status::InvalidPayload("lowrank.decode: payload rank=", h.param0, " but this codec has rank=", cfg_.rank);
    if (h.param1 != v.n)
      return Status::InvalidPayload("lowrank.decode: payload cols=", h.param1, " but this codec views numel=", d,
                                    " as ", v.m, " x ", v.n);
    const std::size_t m = v.m, n = v.n, r = h.param0;
    if (!(m * n >= d && (m - 1) * n < d) || r < 1 || r > std::min(m, n))
      return Status::InvalidPayload("lowrank.decode: rank=", r, " and cols=", n, " do not describe numel=", d);
    if (body.size() != 4 * r * (m + n))
      return Status::InvalidPayload("lowrank.decode: body of ", body.size(),
                                    " bytes, expected 4 r (m + n) = ", 4 * r * (m + n), " (r=", r, ", m=", m, ", n=", n,
                                    ")");

    Scratch sc(ex.workspace, decode_scratch(v, r));
    float* P = sc.take<float>(m * r);
    float* Qt = sc.take<float>(r * n);
    float* tmp = sc.take<float>(n);
    if (P == nullptr || Qt == nullptr || tmp == nullptr)
      return Status::Internal("lowrank.decode: scratch layout exceeds workspace_bytes()");
    const std::uint8_t* in = body.data();
    for (std::size_t k = 0; k < m * r; ++k) P[k] = load_le<float>(in + 4 * k);
    const std::uint8_t* qin = in + 4 * m * r;
    for (std::size_t j = 0; j < n; ++j) {
      for (std::size_t l = 0; l < r; ++l) Qt[l * n + j] = load_le<float>(qin + 4 * (j * r + l));
    }
    float* yp = y.data();
    for (std::size_t i = 0; i < m; ++i) {
      const std::size_t len = std::min(n, d - i * n);
      row_product(P + i * r, Qt, r, n, len, tmp);
      float* yr = yp + i * n;
      if (mode == DecodeMode::kOverwrite) {
        for (std::size_t j = 0; j < len; ++j) yr[j] = scale * tmp[j];
      } else {
        for (std::size_t j = 0; j < len; ++j) yr[j] += scale * tmp[j];
      }
    }
    return Status::Ok();
  }

 private:
  static std::size_t encode_scratch(const View& v, std::size_t r) {
    return kAlign + round_up(8 * v.m * r) + round_up(8 * v.n * r) + round_up(8 * v.m) + round_up(4 * v.n * r);
  }
  static std::size_t decode_scratch(const View& v, std::size_t r) {
    return kAlign + round_up(4 * v.m * r) + round_up(4 * r * v.n) + round_up(4 * v.n);
  }

  // tmp[j] = sum_{l ascending} p[l] * Qt[l][j], j < len (vectorises over j).
  static void row_product(const float* p, const float* __restrict Qt, std::size_t r, std::size_t n, std::size_t len,
                          float* __restrict tmp) {
    for (std::size_t j = 0; j < len; ++j) tmp[j] = 0.0f;
    for (std::size_t l = 0; l < r; ++l) {
      const float pl = p[l];
      const float* q = Qt + l * n;
      for (std::size_t j = 0; j < len; ++j) tmp[j] += pl * q[j];
    }
  }

  LowRankConfig cfg_;
};

}  // namespace

StatusOr<std::unique_ptr<Compressor>> make_lowrank(const LowRankConfig& c) {
  if (c.rank < 1) return Status::InvalidArgument("lowrank: rank=", c.rank, " must be >= 1");
  if (c.cols > std::numeric_limits<std::uint32_t>::max())
    return Status::InvalidArgument("lowrank: cols=", c.cols, " exceeds 2^32-1");
  return std::unique_ptr<Compressor>(new LowRank(c));
}

namespace detail {
StatusOr<CompressorPtr> lowrank_from_params(const Params& p) {
  GZ_ASSIGN_OR_RETURN(std::uint64_t rank, p.get_uint("rank", 1));
  GZ_ASSIGN_OR_RETURN(std::uint64_t cols, p.get_uint("cols", 0));
  GZ_RETURN_IF_ERROR(p.finish("lowrank", kLowRankParams));
  if (rank < 1 || rank > std::numeric_limits<std::uint32_t>::max())
    return Status::InvalidArgument("lowrank: rank=", rank, " must be in [1, 2^32-1]");
  LowRankConfig c;
  c.rank = static_cast<std::uint32_t>(rank);
  c.cols = static_cast<std::size_t>(cols);
  return make_lowrank(c);
}
}  // namespace detail
}  // namespace gradzip
