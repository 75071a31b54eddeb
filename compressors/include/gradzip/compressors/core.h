// gradzip vocabulary types: Status, StatusOr, Span, DType, Device, Exec.
//
// Everything in the library reports errors through `Status` (never exceptions, never printf-and-continue);
// the Python/torch boundary turns a non-ok Status into an exception. Every message names the operation, the
// codec and the offending values, e.g. "topk.encode: k=0 must be in [1, numel=10]".
//
// Thread-safety: all types here are plain values; a `Status` may be copied freely between threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

namespace gradzip {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument,  // bad configuration, bad sizes, k out of range, unknown spec names
  kInvalidPayload,   // truncated, foreign or corrupted payload
  kNonFinite,        // NaN or Inf in an input that must be finite
  kOutOfRange,       // a finite value the codec cannot represent (e.g. > 65504 for fp16)
  kUnsupported,      // valid request this build cannot serve (e.g. CUDA without GRADZIP_ENABLE_CUDA)
  kMismatch,         // ranks disagree (sizes, codecs) in a collective
  kCommunication,    // the transport failed or a peer is gone
  kTimeout,          // a collective did not complete in time
  kCuda,             // a CUDA runtime error (sticky error cleared)
  kInternal,         // a bug in gradzip
};

/// Name of a status code ("InvalidPayload", ...).
const char* status_code_name(StatusCode c);

class [[nodiscard]] Status {
 public:
  Status() = default;  // ok
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  template <class... A>
  static Status InvalidArgument(const A&... a) {
    return Make(StatusCode::kInvalidArgument, a...);
  }
  template <class... A>
  static Status InvalidPayload(const A&... a) {
    return Make(StatusCode::kInvalidPayload, a...);
  }
  template <class... A>
  static Status NonFinite(const A&... a) {
    return Make(StatusCode::kNonFinite, a...);
  }
  template <class... A>
  static Status OutOfRange(const A&... a) {
    return Make(StatusCode::kOutOfRange, a...);
  }
  template <class... A>
  static Status Unsupported(const A&... a) {
    return Make(StatusCode::kUnsupported, a...);
  }
  template <class... A>
  static Status Mismatch(const A&... a) {
    return Make(StatusCode::kMismatch, a...);
  }
  template <class... A>
  static Status Communication(const A&... a) {
    return Make(StatusCode::kCommunication, a...);
  }
  template <class... A>
  static Status Timeout(const A&... a) {
    return Make(StatusCode::kTimeout, a...);
  }
  template <class... A>
  static Status Cuda(const A&... a) {
    return Make(StatusCode::kCuda, a...);
  }
  template <class... A>
  static Status Internal(const A&... a) {
    return Make(StatusCode::kInternal, a...);
  }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  /// "InvalidArgument: topk: k=0 must be in [1, numel=10]" (or "OK").
  std::string to_string() const;

  template <class... A>
  static Status Make(StatusCode code, const A&... a) {
    std::ostringstream os;
    (os << ... << a);
    return Status(code, os.str());
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

/// A value or the Status explaining why there is none.
template <class T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(Status s) : status_(std::move(s)) {  // NOLINT(google-explicit-constructor)
    if (status_.ok()) status_ = Status::Internal("StatusOr constructed from an ok Status without a value");
  }
  StatusOr(T v) : status_(), value_(std::move(v)), has_(true) {}  // NOLINT(google-explicit-constructor)
  bool ok() const { return has_; }
  const Status& status() const { return status_; }
  T& value() & { return value_; }
  const T& value() const& { return value_; }
  T&& value() && { return std::move(value_); }
  T* operator->() { return &value_; }
  const T* operator->() const { return &value_; }
  T& operator*() { return value_; }

 private:
  Status status_;
  T value_{};
  bool has_ = false;
};

#define GZ_STATUS_CONCAT_INNER_(a, b) a##b
#define GZ_STATUS_CONCAT_(a, b) GZ_STATUS_CONCAT_INNER_(a, b)
/// Returns from the current function when `expr` is not ok.
#define GZ_RETURN_IF_ERROR(expr)      \
  do {                                \
    ::gradzip::Status gz_s_ = (expr); \
    if (!gz_s_.ok()) return gz_s_;    \
  } while (0)
/// `GZ_ASSIGN_OR_RETURN(auto x, make())`: unwraps a StatusOr or returns its Status.
#define GZ_ASSIGN_OR_RETURN(lhs, expr) GZ_ASSIGN_OR_RETURN_IMPL_(GZ_STATUS_CONCAT_(gz_sor_, __LINE__), lhs, expr)
#define GZ_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()

/// A non-owning view of `size` contiguous elements (std::span for C++17).
template <class T>
class Span {
 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  constexpr Span() = default;
  constexpr Span(T* data, std::size_t size) : data_(data), size_(size) {}
  template <class U, class = std::enable_if_t<std::is_convertible<U (*)[], T (*)[]>::value>>
  constexpr Span(const Span<U>& o) : data_(o.data()), size_(o.size()) {}  // NOLINT(google-explicit-constructor)
  template <class C, class = decltype(std::declval<C&>().data()),
            class = std::enable_if_t<
                std::is_convertible<std::remove_pointer_t<decltype(std::declval<C&>().data())> (*)[], T (*)[]>::value>>
  constexpr Span(C& c) : data_(c.data()), size_(c.size()) {}  // NOLINT(google-explicit-constructor)

  constexpr T* data() const { return data_; }
  constexpr std::size_t size() const { return size_; }
  constexpr std::size_t size_bytes() const { return size_ * sizeof(T); }
  constexpr bool empty() const { return size_ == 0; }
  constexpr T& operator[](std::size_t i) const { return data_[i]; }
  constexpr T* begin() const { return data_; }
  constexpr T* end() const { return data_ + size_; }
  /// Elements [offset, offset + count). The caller guarantees the range is inside the span.
  constexpr Span subspan(std::size_t offset, std::size_t count) const { return Span(data_ + offset, count); }
  constexpr Span first(std::size_t count) const { return Span(data_, count); }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

using ConstBytes = Span<const std::uint8_t>;
using MutableBytes = Span<std::uint8_t>;

enum class DType : std::uint8_t { kF32 = 0, kF16, kBF16, kF64, kI32, kI64, kU8 };
const char* dtype_name(DType d);

enum class Device : std::uint8_t { kCpu = 0, kCuda };
const char* device_name(Device d);

/// Key of the counter-based random generator: every random draw of a codec is a pure function of
/// (seed, step, rank, stream, element index), so results reproduce across runs, threads and devices.
struct RngKey {
  std::uint64_t seed = 0;    // run seed (a codec's own `seed=` parameter overrides it)
  std::uint32_t step = 0;    // training step or federated round
  std::uint32_t rank = 0;    // worker / client id
  std::uint32_t stream = 0;  // tensor, bucket or block id
};

/// Per-call state a stateful codec keeps between calls (e.g. PowerSGD's warm-started Q). Owned by the caller.
class CompressorState {
 public:
  virtual ~CompressorState() = default;
};

/// Everything about *where and how* a call runs, separate from *what* it computes.
struct Exec {
  Device device = Device::kCpu;
  void* stream = nullptr;            // cudaStream_t when device == kCuda; ignored on the CPU
  MutableBytes workspace{};          // optional scratch of workspace_bytes(); the CPU path allocates when empty
  RngKey rng{};                      // randomness key for stochastic codecs
  CompressorState* state = nullptr;  // codec state for stateful codecs (lowrank); may be null
  bool check_finite = true;          // encode rejects NaN/Inf with kNonFinite (set false to skip the scan)
  /// CUDA only: a device word (zeroed by the caller) into which the kernels OR error bits (see gradzip/compressors/
  /// cuda.h) instead of the call synchronising the stream to return them as a Status. Null (the default): every CUDA
  /// call that can find an error on the device (payload validation, fp16 range, NaN/Inf) synchronises its stream
  /// once and returns the exact Status. Non-null: nothing synchronises (no host round trip); the caller reads the
  /// word later with cuda_take_status(). One exception: QSGD coding=elias encode synchronises its stream once to learn
  /// the variable body length it must return in *written (so it cannot be captured into a CUDA graph).
  std::uint32_t* device_status = nullptr;
};

enum class DecodeMode : std::uint8_t {
  kOverwrite = 0,  // y = scale * C(x)
  kAccumulate,     // y += scale * C(x)
};

}  // namespace gradzip
