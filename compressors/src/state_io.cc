#include "gradzip/compressors/state_io.h"

#include <cstring>

#include "gradzip/compressors/payload.h"

namespace gradzip {
namespace {
constexpr std::uint32_t kStateMagic = 0x31535A47u;  // "GZS1"
constexpr std::uint32_t kStateVersion = 1;
constexpr std::uint8_t kU64 = 0, kF64 = 1, kF32Array = 2, kBytes = 3;
const char* type_name(std::uint8_t t) {
  return t == kU64 ? "u64" : t == kF64 ? "f64" : t == kF32Array ? "f32[]" : t == kBytes ? "bytes" : "?";
}

template <class T>
void append(std::vector<std::uint8_t>& b, T v) {
  const std::size_t o = b.size();
  b.resize(o + sizeof(T));
  store_le<T>(b.data() + o, v);
}
}  // namespace

StateWriter::StateWriter() {
  append<std::uint32_t>(buf_, kStateMagic);
  append<std::uint32_t>(buf_, kStateVersion);
}

void StateWriter::put_name(std::string_view name, std::uint8_t type) {
  append<std::uint16_t>(buf_, static_cast<std::uint16_t>(name.size()));
  buf_.insert(buf_.end(), name.begin(), name.end());
  buf_.push_back(type);
}
void StateWriter::put_u64(std::string_view name, std::uint64_t v) {
  put_name(name, kU64);
  append<std::uint64_t>(buf_, v);
}
void StateWriter::put_f64(std::string_view name, double v) {
  put_name(name, kF64);
  append<double>(buf_, v);
}
void StateWriter::put_floats(std::string_view name, Span<const float> v) {
  put_name(name, kF32Array);
  append<std::uint64_t>(buf_, v.size());
  const std::size_t o = buf_.size();
  buf_.resize(o + 4 * v.size());
  for (std::size_t i = 0; i < v.size(); ++i) store_le<float>(buf_.data() + o + 4 * i, v[i]);
}

void StateWriter::put_bytes(std::string_view name, ConstBytes v) {
  put_name(name, kBytes);
  append<std::uint64_t>(buf_, v.size());
  if (v.size()) buf_.insert(buf_.end(), v.data(), v.data() + v.size());
}

StateReader::StateReader(ConstBytes bytes, std::string op) : in_(bytes), op_(std::move(op)) {}

Status StateReader::begin() {
  if (started_) return Status::Ok();
  if (in_.size() < 8 || in_.data() == nullptr)
    return Status::InvalidPayload(op_, ": state of ", in_.size(), " bytes is too short to be gradzip state");
  if (load_le<std::uint32_t>(in_.data()) != kStateMagic)
    return Status::InvalidPayload(op_, ": bad magic; not gradzip state");
  const std::uint32_t v = load_le<std::uint32_t>(in_.data() + 4);
  if (v != kStateVersion) return Status::InvalidPayload(op_, ": state version ", v, " is not supported");
  pos_ = 8;
  started_ = true;
  return Status::Ok();
}

Status StateReader::expect(std::string_view name, std::uint8_t type) {
  GZ_RETURN_IF_ERROR(begin());
  if (in_.size() - pos_ < 2) return Status::InvalidPayload(op_, ": state ends before record '", name, "'");
  const std::uint16_t len = load_le<std::uint16_t>(in_.data() + pos_);
  if (in_.size() - pos_ - 2 < static_cast<std::size_t>(len) + 1)
    return Status::InvalidPayload(op_, ": state truncated in the name of the record expected as '", name, "'");
  std::string_view got(reinterpret_cast<const char*>(in_.data() + pos_ + 2), len);
  const std::uint8_t t = in_[pos_ + 2 + len];
  if (got != name)
    return Status::InvalidArgument(op_, ": expected state record '", name, "' but found '", got,
                                   "' (state saved by a different algorithm or version?)");
  if (t != type)
    return Status::InvalidPayload(op_, ": state record '", name, "' has type ", type_name(t), ", expected ",
                                  type_name(type));
  pos_ += 3 + len;
  return Status::Ok();
}

Status StateReader::get_u64(std::string_view name, std::uint64_t* v) {
  GZ_RETURN_IF_ERROR(expect(name, kU64));
  if (in_.size() - pos_ < 8) return Status::InvalidPayload(op_, ": state truncated in '", name, "'");
  *v = load_le<std::uint64_t>(in_.data() + pos_);
  pos_ += 8;
  return Status::Ok();
}

Status StateReader::get_f64(std::string_view name, double* v) {
  GZ_RETURN_IF_ERROR(expect(name, kF64));
  if (in_.size() - pos_ < 8) return Status::InvalidPayload(op_, ": state truncated in '", name, "'");
  *v = load_le<double>(in_.data() + pos_);
  pos_ += 8;
  return Status::Ok();
}

Status StateReader::get_floats(std::string_view name, Span<float> out) {
  GZ_RETURN_IF_ERROR(expect(name, kF32Array));
  if (in_.size() - pos_ < 8) return Status::InvalidPayload(op_, ": state truncated in '", name, "'");
  const std::uint64_t n = load_le<std::uint64_t>(in_.data() + pos_);
  if (n != out.size())
    return Status::InvalidArgument(op_, ": state '", name, "' holds ", n, " floats, expected ", out.size(),
                                   " (buffer length changed?)");
  pos_ += 8;
  if ((in_.size() - pos_) / 4 < n) return Status::InvalidPayload(op_, ": state truncated in '", name, "'");
  for (std::size_t i = 0; i < n; ++i) out[i] = load_le<float>(in_.data() + pos_ + 4 * i);
  pos_ += 4 * n;
  return Status::Ok();
}

Status StateReader::get_floats_any(std::string_view name, std::vector<float>* out, std::size_t max_count) {
  GZ_RETURN_IF_ERROR(expect(name, kF32Array));
  if (in_.size() - pos_ < 8) return Status::InvalidPayload(op_, ": state truncated in '", name, "'");
  const std::uint64_t n = load_le<std::uint64_t>(in_.data() + pos_);
  if (n > max_count)
    return Status::InvalidPayload(op_, ": state '", name, "' holds ", n, " floats, more than ", max_count);
  pos_ += 8;
  if ((in_.size() - pos_) / 4 < n) return Status::InvalidPayload(op_, ": state truncated in '", name, "'");
  out->resize(n);
  for (std::size_t i = 0; i < n; ++i) (*out)[i] = load_le<float>(in_.data() + pos_ + 4 * i);
  pos_ += 4 * n;
  return Status::Ok();
}

Status StateReader::get_bytes(std::string_view name, ConstBytes* out) {
  GZ_RETURN_IF_ERROR(expect(name, kBytes));
  if (in_.size() - pos_ < 8) return Status::InvalidPayload(op_, ": state truncated in '", name, "'");
  const std::uint64_t n = load_le<std::uint64_t>(in_.data() + pos_);
  pos_ += 8;
  if (in_.size() - pos_ < n) return Status::InvalidPayload(op_, ": state truncated in '", name, "'");
  *out = ConstBytes(in_.data() + pos_, static_cast<std::size_t>(n));
  pos_ += static_cast<std::size_t>(n);
  return Status::Ok();
}

Status StateReader::finish() {
  GZ_RETURN_IF_ERROR(begin());
  if (pos_ != in_.size())
    return Status::InvalidPayload(op_, ": ", in_.size() - pos_, " unread bytes after the last state record");
  return Status::Ok();
}

}  // namespace gradzip
