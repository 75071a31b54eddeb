// Compressed allreduce algorithms: see compressed_allreduce.h for the formulas, the byte accounting and the errors.
//
// Failure propagation: a rank whose own step fails between collectives (its encode rejects NaN/Inf, a
// re-quantization overflows) still joins the next collective with an empty argument, so that the other ranks get an
// error at once (kMismatch on the counts, or "rank r sent an empty payload") instead of waiting for the engine's
// timeout; the failing rank returns its own error.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <type_traits>

#include "gradzip/compressors/lowrank_math.h"
#include "gradzip/compressors/registry.h"
#include "gradzip/compressors/rng.h"
#include "pipeline.h"

namespace gradzip {
namespace detail {

namespace {

SyncStats& stats_or(SyncStats* st, SyncStats& dummy) {
  return st != nullptr ? *st : dummy;
}

}  // namespace

std::size_t allreduce_bytes(std::size_t numel, int n, int rank) {
  if (n <= 1) return 0;
  const std::size_t l = chunk_of(numel, n, rank).size;
  return 4 * (numel - l) + 4 * static_cast<std::size_t>(n - 1) * l;
}

Status verify_same(Communicator& comm, const std::string& what, const std::string& mine, const Exec& ex) {
  std::vector<std::uint8_t> all;
  std::vector<std::size_t> sizes;
  GZ_RETURN_IF_ERROR(
      comm.allgatherv(ConstBytes(reinterpret_cast<const std::uint8_t*>(mine.data()), mine.size()), all, sizes, ex));
  std::vector<std::string> descs;
  std::size_t off = 0;
  bool same = true;
  for (std::size_t s : sizes) {
    descs.emplace_back(reinterpret_cast<const char*>(all.data()) + off, s);
    off += s;
    same = same && descs.back() == descs.front();
  }
  if (same) return Status::Ok();
  std::ostringstream os;
  for (std::size_t r = 0; r < descs.size(); ++r) os << (r ? "; " : "") << "rank " << r << ": {" << descs[r] << "}";
  return Status::Mismatch(what, ": ranks disagree: ", os.str());
}

StatusOr<LowRankShape> lowrank_shape(const Compressor& codec, std::size_t numel) {
  if (codec.codec_id() != static_cast<std::uint16_t>(CodecId::kLowRank) || codec.name() != "lowrank")
    return Status::InvalidArgument("lowrank allreduce: codec '", codec.spec(), "' is not lowrank");
  GZ_RETURN_IF_ERROR(codec.check(DType::kF32, numel));
  const std::string spec = codec.spec();
  const std::size_t colon = spec.find(':');
  const std::string text = colon == std::string::npos ? std::string() : spec.substr(colon + 1);
  GZ_ASSIGN_OR_RETURN(Params p, Params::parse("lowrank", text));
  GZ_ASSIGN_OR_RETURN(std::uint64_t rank, p.get_uint("rank", 1));
  GZ_ASSIGN_OR_RETURN(std::uint64_t cols, p.get_uint("cols", 0));
  LowRankShape s;
  s.r = static_cast<std::size_t>(rank);
  s.n = detail::lowrank_view_cols(numel, static_cast<std::size_t>(cols));
  s.m = (numel + s.n - 1) / s.n;
  return s;
}

Status Pipeline::init(std::shared_ptr<const Compressor> codec, std::size_t numel, AllreduceAlgo algo,
                      Communicator& comm) {
  codec_ = std::move(codec);
  numel_ = numel;
  algo_ = algo;
  comm_ = &comm;
  n_ = comm.size();
  rank_ = comm.rank();
  if (algo == AllreduceAlgo::kQuantizedReduceScatter) {
    slot_ = chunked_slot_bytes(*codec_, numel, n_);
    recv_.resize(slot_ * static_cast<std::size_t>(n_));
    const Chunk c = chunk_of(numel, n_, rank_);
    tmp_.resize(c.size);
    acc_.resize(c.size);
    mine_.resize(codec_->max_encoded_bytes(std::max<std::size_t>(c.size, 1)));
  }
  if (algo == AllreduceAlgo::kLowRank) {
    GZ_ASSIGN_OR_RETURN(shape_, lowrank_shape(*codec_, numel));
    const std::size_t m = shape_.m, n = shape_.n, r = shape_.r;
    payload_buffer(kHeaderBytes + 4 * r * (m + n));
    q_.resize(n * r);
    pd_.resize(m * r);
    res_.resize(m);
    qd_.resize(n * r);
  }
  return Status::Ok();
}

MutableBytes Pipeline::payload_buffer(std::size_t bytes) {
  const std::size_t floats = (bytes + 3) / 4;
  if (pay_.size() < floats) pay_.resize(floats);
  return MutableBytes(reinterpret_cast<std::uint8_t*>(pay_.data()), bytes);
}

Status Pipeline::gather(ConstBytes payload, std::vector<ConstBytes>* views, const Exec& ex, SyncStats* st) {
  SyncStats dummy;
  SyncStats& s = stats_or(st, dummy);
  Timer t;
  GZ_RETURN_IF_ERROR(comm_->allgatherv(payload, gathered_, sizes_, ex));
  s.comm_s += t.lap();
  views->clear();
  std::size_t off = 0, others = 0;
  bool same = true;
  std::uint64_t numel0 = 0;
  for (int r = 0; r < n_; ++r) {
    const std::size_t b = sizes_[r];
    views->emplace_back(gathered_.data() + off, b);
    if (r != rank_) others += b;
    if (b == 0)
      return Status::Communication("allgather: rank ", r, " sent an empty payload (its compression failed; see its ",
                                   "error)");
    const std::uint64_t ne = b >= kHeaderBytes ? load_le<std::uint64_t>(gathered_.data() + off + 8) : 0;
    if (r == 0) numel0 = ne;
    same = same && ne == numel0;
    off += b;
  }
  s.bytes_sent += static_cast<std::size_t>(n_ - 1) * payload.size();
  s.bytes_received += others;
  if (!same) {
    std::ostringstream os;
    for (int r = 0; r < n_; ++r) {
      const ConstBytes v = (*views)[r];
      os << (r ? ", " : "") << "rank " << r << ": "
         << (v.size() >= kHeaderBytes ? load_le<std::uint64_t>(v.data() + 8) : 0);
    }
    return Status::Mismatch("allgather: the ranks' payloads describe different lengths (numel): ", os.str());
  }
  return Status::Ok();
}

Status Pipeline::decode_mean(const Compressor& dec, const std::vector<ConstBytes>& views, Span<float> out,
                             const Exec& dex, SyncStats* st) {
  SyncStats dummy;
  SyncStats& s = stats_or(st, dummy);
  Timer t;
  const float scale = static_cast<float>(1.0 / static_cast<double>(views.size()));
  for (std::size_t i = 0; i < views.size(); ++i) {
    const Status d = dec.decode(views[i], out, i == 0 ? DecodeMode::kOverwrite : DecodeMode::kAccumulate, dex, scale);
    if (!d.ok()) return Status(d.code(), "allgather: payload of rank " + std::to_string(i) + ": " + d.message());
  }
  s.decode_s += t.lap();
  return Status::Ok();
}

Status Pipeline::sum_and_decode(const Compressor& dec, std::size_t written, Span<float> out, const Exec& ex,
                                const Exec& dex, SyncStats* st) {
  SyncStats dummy;
  SyncStats& s = stats_or(st, dummy);
  if (written < kHeaderBytes || (written - kHeaderBytes) % 4 != 0 || written > 4 * pay_.size())
    return Status::Internal("sum_and_decode: payload of ", written, " bytes has no float body");
  const std::size_t count = (written - kHeaderBytes) / 4;
  float* body = pay_.data() + kHeaderBytes / 4;
  Timer t;
  GZ_RETURN_IF_ERROR(comm_->allreduce_sum(Span<float>(body, count), ex));
  s.comm_s += t.lap();
  const std::size_t b = allreduce_bytes(count, n_, rank_);
  s.bytes_sent += b;
  s.bytes_received += b;
  const ConstBytes payload(reinterpret_cast<const std::uint8_t*>(pay_.data()), written);
  GZ_RETURN_IF_ERROR(
      dec.decode(payload, out, DecodeMode::kOverwrite, dex, static_cast<float>(1.0 / static_cast<double>(n_))));
  s.decode_s += t.lap();
  return Status::Ok();
}

Status Pipeline::reduce_scatter(ConstBytes payload, Span<float> out, const RngKey& key2, Span<float> owner_mem,
                                const Exec& ex, SyncStats* st) {
  SyncStats dummy;
  SyncStats& s = stats_or(st, dummy);
  const std::size_t n = static_cast<std::size_t>(n_);
  if (payload.size() < kHeaderBytes + n * slot_)
    return Status::Internal("reduce_scatter: chunked payload of ", payload.size(), " bytes, expected ",
                            kHeaderBytes + n * slot_);
  Timer t;
  GZ_RETURN_IF_ERROR(comm_->alltoall(ConstBytes(payload.data() + kHeaderBytes, n * slot_),
                                     MutableBytes(recv_.data(), recv_.size()), slot_, ex));
  s.comm_s += t.lap();
  s.bytes_sent += (n - 1) * slot_;
  s.bytes_received += (n - 1) * slot_;

  // Owner of chunk `rank_`: s = float(sum_i D(Q1_i) / n) (double, rank order), then Q2(s [+ r]).
  const Chunk mine = chunk_of(numel_, n_, rank_);
  Exec dex = ex;
  std::size_t written = 0;
  Status local = Status::Ok();
  std::fill(acc_.begin(), acc_.end(), 0.0);
  for (std::size_t i = 0; i < n && local.ok(); ++i) {
    local = codec_->decode(ConstBytes(recv_.data() + i * slot_, slot_), Span<float>(tmp_.data(), tmp_.size()),
                           DecodeMode::kOverwrite, dex, 1.0f);
    if (!local.ok()) {
      local = Status(local.code(), "reduce_scatter: chunk " + std::to_string(rank_) + " from rank " +
                                       std::to_string(i) + ": " + local.message());
      break;
    }
    for (std::size_t k = 0; k < mine.size; ++k) acc_[k] += static_cast<double>(tmp_[k]);
  }
  if (local.ok()) {
    const double inv = static_cast<double>(n);
    for (std::size_t k = 0; k < mine.size; ++k) tmp_[k] = static_cast<float>(acc_[k] / inv);
    if (!owner_mem.empty()) {
      for (std::size_t k = 0; k < mine.size; ++k) tmp_[k] += owner_mem[k];
    }
    Exec qex = ex;
    qex.rng = key2;
    qex.rng.rank = static_cast<std::uint32_t>(rank_);
    qex.rng.stream = chunk_rng_key(key2, rank_, 2).stream;
    local = codec_->encode(Span<const float>(tmp_.data(), mine.size), MutableBytes(mine_.data(), mine_.size()),
                           &written, qex);
    if (local.ok() && !owner_mem.empty()) {
      std::memcpy(owner_mem.data(), tmp_.data(), mine.size * sizeof(float));
      local = codec_->decode(ConstBytes(mine_.data(), written), owner_mem, DecodeMode::kAccumulate, qex, -1.0f);
    }
    if (!local.ok())
      local =
          Status(local.code(), "reduce_scatter: re-quantizing chunk " + std::to_string(rank_) + ": " + local.message());
  }
  s.decode_s += t.lap();
  if (!local.ok()) written = 0;  // join the allgather with nothing: the others fail at once

  const Status g = comm_->allgatherv(ConstBytes(mine_.data(), written), gathered_, sizes_, ex);
  s.comm_s += t.lap();
  if (!local.ok()) return local;
  GZ_RETURN_IF_ERROR(g);
  std::size_t off = 0, others = 0;
  for (int j = 0; j < n_; ++j) {
    if (j != rank_) others += sizes_[j];
    if (sizes_[j] == 0)
      return Status::Communication("reduce_scatter: rank ", j, " could not re-quantize its chunk (see its error)");
  }
  s.bytes_sent += (n - 1) * written;
  s.bytes_received += others;
  for (int j = 0; j < n_; ++j) {
    const Chunk c = chunk_of(numel_, n_, j);
    const Status d = codec_->decode(ConstBytes(gathered_.data() + off, sizes_[j]), out.subspan(c.offset, c.size),
                                    DecodeMode::kOverwrite, dex, 1.0f);
    if (!d.ok())
      return Status(d.code(), "reduce_scatter: chunk payload of rank " + std::to_string(j) + ": " + d.message());
    off += sizes_[j];
  }
  s.decode_s += t.lap();
  return Status::Ok();
}

Status Pipeline::lowrank(Span<const float> p, Span<float> out, LowRankState* state, const RngKey& cold,
                         Span<float> local_err, const Exec& ex, SyncStats* st) {
  SyncStats dummy;
  SyncStats& s = stats_or(st, dummy);
  const std::size_t d = numel_, m = shape_.m, n = shape_.n, r = shape_.r;
  Timer t;
  // A state whose Q is on the device (its last encode ran there) is brought back first; a failure joins the first
  // allreduce with nothing, so the other ranks fail at once.
  const Status pre = state != nullptr ? state->sync_to_host() : Status::Ok();
  const bool warm = pre.ok() && state != nullptr && state->rows == m && state->cols == n && state->rank == r &&
                    state->q.size() == n * r;
  const float* Q = nullptr;
  if (warm) {
    Q = state->q.data();
  } else {
    RngKey k = cold;
    k.rank = 0;  // every rank draws the same Q
    detail::lowrank_draw_gaussian(k, q_.data(), n * r);
    Q = q_.data();
  }
  float* P = pay_.data() + kHeaderBytes / 4;
  float* Qo = P + m * r;
  const float* x = p.data();
  // P_i = M_i Q (lowrank_math.h: double accumulation, j ascending), rounded to float for the allreduce.
  detail::lowrank_mul_mq(x, d, m, n, Q, r, pd_.data());
  for (std::size_t k = 0; k < m * r; ++k) P[k] = static_cast<float>(pd_[k]);
  s.compress_s += t.lap();
  Status g = comm_->allreduce_sum(pre.ok() ? Span<float>(P, m * r) : Span<float>(), ex);
  s.comm_s += t.lap();
  GZ_RETURN_IF_ERROR(pre);
  GZ_RETURN_IF_ERROR(g);
  const std::size_t bp = allreduce_bytes(m * r, n_, rank_);
  s.bytes_sent += bp;
  s.bytes_received += bp;
  // Orthonormalise sum_i P_i (scale-free), round to float: the values every rank decodes with.
  for (std::size_t k = 0; k < m * r; ++k) pd_[k] = P[k];
  detail::orthonormalise_columns(pd_.data(), m, r, res_.data());
  for (std::size_t k = 0; k < m * r; ++k) {
    P[k] = static_cast<float>(pd_[k]);
    pd_[k] = P[k];
  }
  // Q_i = M_i^T P (double accumulation, i ascending), row-major floats into the payload; every entry must satisfy
  // |v| <= FLT_MAX (the codec's rule).
  double bad_value = 0.0;
  const bool finite = detail::lowrank_mul_mtp(x, d, m, n, pd_.data(), r, qd_.data(),
                                              reinterpret_cast<std::uint8_t*>(Qo), &bad_value) == n * r;
  PayloadHeader h;
  h.codec_id = static_cast<std::uint16_t>(CodecId::kLowRank);
  h.numel = d;
  h.body_bytes = static_cast<std::uint32_t>(4 * r * (m + n));
  h.param0 = static_cast<std::uint32_t>(r);
  h.param1 = static_cast<std::uint32_t>(n);
  write_header(h, reinterpret_cast<std::uint8_t*>(pay_.data()));
  const ConstBytes payload(reinterpret_cast<const std::uint8_t*>(pay_.data()), kHeaderBytes + 4 * r * (m + n));
  Status local = finite ? Status::Ok()
                        : Status::OutOfRange(
                              "lowrank allreduce: an entry of Q = M^T P does not fit in float32 "
                              "(input too large or not finite)");
  if (local.ok() && !local_err.empty()) {
    std::memcpy(local_err.data(), x, d * sizeof(float));
    local = codec_->decode(payload, local_err, DecodeMode::kAccumulate, ex, -1.0f);  // p - P Q_i^T
  }
  s.compress_s += t.lap();
  // A failed rank joins with an empty allreduce: the others get kMismatch at once.
  g = comm_->allreduce_sum(local.ok() ? Span<float>(Qo, n * r) : Span<float>(), ex);
  s.comm_s += t.lap();
  if (!local.ok()) return local;
  GZ_RETURN_IF_ERROR(g);
  const std::size_t bq = allreduce_bytes(n * r, n_, rank_);
  s.bytes_sent += bq;
  s.bytes_received += bq;
  GZ_RETURN_IF_ERROR(
      codec_->decode(payload, out, DecodeMode::kOverwrite, ex, static_cast<float>(1.0 / static_cast<double>(n_))));
  if (state != nullptr) {
    state->q.resize(n * r);
    for (std::size_t k = 0; k < n * r; ++k)
      state->q[k] = static_cast<float>(static_cast<double>(Qo[k]) / static_cast<double>(n_));
    state->rows = m;
    state->cols = n;
    state->rank = static_cast<std::uint32_t>(r);
  }
  s.decode_s += t.lap();
  return Status::Ok();
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------------------------

const char* allreduce_algo_name(AllreduceAlgo a) {
  switch (a) {
    case AllreduceAlgo::kAuto:
      return "auto";
    case AllreduceAlgo::kDense:
      return "dense";
    case AllreduceAlgo::kAllgather:
      return "allgather";
    case AllreduceAlgo::kSharedSupport:
      return "shared_support";
    case AllreduceAlgo::kQuantizedReduceScatter:
      return "reduce_scatter";
    case AllreduceAlgo::kLowRank:
      return "lowrank";
  }
  return "unknown";
}

StatusOr<AllreduceAlgo> parse_allreduce_algo(std::string_view name) {
  if (name == "auto") return AllreduceAlgo::kAuto;
  if (name == "dense") return AllreduceAlgo::kDense;
  if (name == "allgather") return AllreduceAlgo::kAllgather;
  if (name == "shared_support") return AllreduceAlgo::kSharedSupport;
  if (name == "reduce_scatter" || name == "qrs" || name == "quantized_reduce_scatter")
    return AllreduceAlgo::kQuantizedReduceScatter;
  if (name == "lowrank") return AllreduceAlgo::kLowRank;
  return Status::InvalidArgument("unknown allreduce algorithm '", name,
                                 "'; known: auto, dense, allgather, shared_support, reduce_scatter (qrs), lowrank");
}

namespace {

bool is_quantizer_id(std::uint16_t id) {
  switch (static_cast<CodecId>(id)) {
    case CodecId::kIdentity:
    case CodecId::kFp16:
    case CodecId::kBf16:
    case CodecId::kQsgd:
    case CodecId::kNatural:
    case CodecId::kSign:
      return true;
    default:
      return false;
  }
}

}  // namespace

StatusOr<AllreduceAlgo> resolve_allreduce_algo(const Compressor& codec, AllreduceAlgo requested, std::size_t numel,
                                               int world_size) {
  const std::uint16_t id = codec.codec_id();
  const CompressorTraits t = codec.traits(std::max<std::size_t>(numel, 1));
  const bool identity = id == static_cast<std::uint16_t>(CodecId::kIdentity) && codec.name() == "identity";
  const bool shared_randk = id == static_cast<std::uint16_t>(CodecId::kRandK) && t.linear;
  const bool lowrank = id == static_cast<std::uint16_t>(CodecId::kLowRank) && codec.name() == "lowrank";
  const bool quantizer = is_quantizer_id(id) && !t.stateful;
  auto refuse = [&](const char* why) {
    return Status::InvalidArgument("compressed_allreduce: algorithm '", allreduce_algo_name(requested),
                                   "' cannot run codec '", codec.spec(), "': ", why);
  };
  switch (requested) {
    case AllreduceAlgo::kAuto:
      if (identity) return AllreduceAlgo::kDense;
      if (shared_randk) return AllreduceAlgo::kSharedSupport;
      if (lowrank) return AllreduceAlgo::kLowRank;
      return AllreduceAlgo::kAllgather;
    case AllreduceAlgo::kDense:
      if (!identity) return refuse("dense is the uncompressed allreduce (codec identity)");
      return requested;
    case AllreduceAlgo::kAllgather:
      return requested;
    case AllreduceAlgo::kSharedSupport:
      if (!shared_randk) return refuse("shared_support needs a linear shared-seed randk (randk with shared=1)");
      return requested;
    case AllreduceAlgo::kQuantizedReduceScatter:
      if (!quantizer)
        return refuse(
            "reduce_scatter re-quantizes partial sums and needs a dense quantizer (identity, fp16, bf16, "
            "qsgd, natural, sign, or scaled() of one)");
      if (world_size < 1 || numel < static_cast<std::size_t>(world_size))
        return Status::InvalidArgument("compressed_allreduce: reduce_scatter needs numel >= world size (numel=", numel,
                                       ", world size=", world_size, ")");
      return requested;
    case AllreduceAlgo::kLowRank:
      if (!lowrank) return refuse("lowrank allreduce needs the lowrank codec");
      return requested;
  }
  return Status::InvalidArgument("compressed_allreduce: unknown algorithm ", static_cast<int>(requested));
}

Status compressed_allreduce(const Compressor& codec, Communicator& comm, Span<float> x, const AllreduceOptions& options,
                            const Exec& ex, SyncStats* stats) {
  if (ex.device != Device::kCpu)
    return Status::Unsupported("compressed_allreduce: only CPU buffers are supported (device=", device_name(ex.device),
                               ")");
  if (x.size() != 0 && x.data() == nullptr) return Status::InvalidArgument("compressed_allreduce: x is null");
  if (options.verify) {
    std::ostringstream d;
    d << "numel=" << x.size() << ";algo=" << allreduce_algo_name(options.algo) << ";codec=" << codec.spec();
    GZ_RETURN_IF_ERROR(detail::verify_same(comm, "compressed_allreduce", d.str(), ex));
  }
  GZ_ASSIGN_OR_RETURN(const AllreduceAlgo algo, resolve_allreduce_algo(codec, options.algo, x.size(), comm.size()));
  SyncStats dummy;
  SyncStats& st = stats != nullptr ? *stats : dummy;
  st.algo = algo;
  const std::shared_ptr<const Compressor> cp(&codec, [](const Compressor*) {});  // non-owning
  detail::Pipeline pl;
  GZ_RETURN_IF_ERROR(pl.init(cp, x.size(), algo, comm));
  Exec eex = ex;
  eex.rng.rank = static_cast<std::uint32_t>(comm.rank());
  detail::Timer t;

  switch (algo) {
    case AllreduceAlgo::kDense: {
      if (ex.check_finite) {
        const Status f = check_finite(Span<const float>(x.data(), x.size()), "compressed_allreduce(dense)");
        if (!f.ok()) {
          (void)comm.allreduce_sum(Span<float>(), ex);  // the others fail at once (count mismatch)
          return f;
        }
      }
      st.compress_s += t.lap();
      GZ_RETURN_IF_ERROR(comm.allreduce_sum(x, ex));
      st.comm_s += t.lap();
      const std::size_t b = detail::allreduce_bytes(x.size(), comm.size(), comm.rank());
      st.bytes_sent += b;
      st.bytes_received += b;
      const float scale = static_cast<float>(1.0 / static_cast<double>(comm.size()));
      for (float& v : x) v *= scale;
      st.decode_s += t.lap();
      return Status::Ok();
    }
    case AllreduceAlgo::kSharedSupport: {
      MutableBytes buf = pl.payload_buffer(codec.max_encoded_bytes(x.size()));
      std::size_t written = 0;
      const Status e = codec.encode(Span<const float>(x.data(), x.size()), buf, &written, eex);
      st.compress_s += t.lap();
      if (!e.ok()) {
        (void)comm.allreduce_sum(Span<float>(), ex);  // the others fail at once (count mismatch)
        return e;
      }
      return pl.sum_and_decode(codec, written, x, ex, eex, &st);
    }
    case AllreduceAlgo::kAllgather: {
      MutableBytes buf = pl.payload_buffer(codec.max_encoded_bytes(x.size()));
      std::size_t written = 0;
      const Status e = codec.encode(Span<const float>(x.data(), x.size()), buf, &written, eex);
      st.compress_s += t.lap();
      if (!e.ok()) written = 0;
      std::vector<ConstBytes> views;
      const Status g = pl.gather(ConstBytes(buf.data(), written), &views, ex, &st);
      if (!e.ok()) return e;
      GZ_RETURN_IF_ERROR(g);
      return pl.decode_mean(codec, views, x, eex, &st);
    }
    case AllreduceAlgo::kQuantizedReduceScatter: {
      GZ_ASSIGN_OR_RETURN(std::unique_ptr<Compressor> chunked, make_chunked(cp, comm.size()));
      MutableBytes buf = pl.payload_buffer(chunked->max_encoded_bytes(x.size()));
      std::size_t written = 0;
      const Status e = chunked->encode(Span<const float>(x.data(), x.size()), buf, &written, eex);
      st.compress_s += t.lap();
      if (!e.ok()) {
        std::uint8_t none = 0;
        (void)comm.alltoall(ConstBytes(&none, 0), MutableBytes(&none, 0), 0, ex);  // chunk-size mismatch for all
        return e;
      }
      return pl.reduce_scatter(ConstBytes(buf.data(), written), x, eex.rng, Span<float>(), ex, &st);
    }
    case AllreduceAlgo::kLowRank: {
      LowRankState* state = nullptr;
      if (ex.state != nullptr) {
        state = dynamic_cast<LowRankState*>(ex.state);
        if (state == nullptr)
          return Status::InvalidArgument("compressed_allreduce: Exec::state is not a LowRankState (codec ",
                                         codec.spec(), ")");
      }
      if (ex.check_finite) {
        const Status f = check_finite(Span<const float>(x.data(), x.size()), "compressed_allreduce(lowrank)");
        if (!f.ok()) {
          (void)comm.allreduce_sum(Span<float>(), ex);
          return f;
        }
      }
      return pl.lowrank(Span<const float>(x.data(), x.size()), x, state, eex.rng, Span<float>(), eex, &st);
    }
    case AllreduceAlgo::kAuto:
      break;
  }
  return Status::Internal("compressed_allreduce: unresolved algorithm");
}

}  // namespace gradzip
