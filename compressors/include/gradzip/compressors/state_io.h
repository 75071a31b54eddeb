// Binary state save/load for stateful objects (error-feedback memories, control variates, codec state).
//
// Format (little-endian): "GZS1" magic, u32 version (1), then records. A record is
//   u16 name length, name bytes, u8 type (0 = u64, 1 = f64, 2 = f32 array, 3 = byte string), then
//   u64 value | f64 value | u64 count followed by count f32 values | u64 count followed by count bytes.
// Byte strings nest the complete state of another object (e.g. a FeedbackWorker inside a federated client).
// Readers ask for records in the order they were written, by name and (for arrays) exact length, so that loading
// state into an object of another size, another algorithm or another version fails loudly with
// kInvalidArgument/kInvalidPayload naming the record: "ef14.load: state 'e' holds 1000 floats, expected 999".
// Value types; not thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "gradzip/compressors/core.h"

namespace gradzip {

class StateWriter {
 public:
  StateWriter();
  void put_u64(std::string_view name, std::uint64_t v);
  void put_f64(std::string_view name, double v);
  void put_floats(std::string_view name, Span<const float> v);
  void put_bytes(std::string_view name, ConstBytes v);
  const std::vector<std::uint8_t>& bytes() const { return buf_; }
  std::vector<std::uint8_t> take() { return std::move(buf_); }

 private:
  void put_name(std::string_view name, std::uint8_t type);
  std::vector<std::uint8_t> buf_;
};

class StateReader {
 public:
  /// `op` prefixes every error ("ef14.load"). Validates the magic and version lazily on the first get.
  StateReader(ConstBytes bytes, std::string op);
  Status get_u64(std::string_view name, std::uint64_t* v);
  Status get_f64(std::string_view name, double* v);
  /// Reads an f32 array of exactly out.size() elements into out.
  Status get_floats(std::string_view name, Span<float> out);
  /// Reads an f32 array of any length (resizes out), at most max_count elements.
  Status get_floats_any(std::string_view name, std::vector<float>* out, std::size_t max_count);
  /// Reads a byte string as a view into the reader's input (valid while that input is).
  Status get_bytes(std::string_view name, ConstBytes* out);
  /// kInvalidPayload if unread bytes remain (state written by something else).
  Status finish();

 private:
  Status begin();
  Status expect(std::string_view name, std::uint8_t type);
  ConstBytes in_;
  std::string op_;
  std::size_t pos_ = 0;
  bool started_ = false;
};

}  // namespace gradzip
