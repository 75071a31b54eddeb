// Fashion-MNIST reader for LibTorch programs (gradzip/torch_data.h).
#include "gradzip/torch_data.h"

#include <zlib.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <vector>

namespace gradzip::libtorch {
namespace {

constexpr const char* kDefaultRoot = "/usr/share/datasets/fashion-mnist";
constexpr const char* kFiles[4] = {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                   "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"};

/// The whole (decompressed) file; gzread reads plain files as they are.
StatusOr<std::vector<std::uint8_t>> slurp(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) return Status::InvalidArgument("gradzip.data: cannot open ", path);
  std::vector<std::uint8_t> out;
  std::vector<std::uint8_t> chunk(1 << 20);
  for (;;) {
    const int n = gzread(f, chunk.data(), static_cast<unsigned>(chunk.size()));
    if (n < 0) {
      int err = 0;
      const std::string msg = gzerror(f, &err);
      gzclose(f);
      return Status::InvalidArgument("gradzip.data: cannot read ", path, ": ", msg);
    }
    if (n == 0) break;
    out.insert(out.end(), chunk.begin(), chunk.begin() + n);
  }
  // gzread stops quietly at a truncated gzip stream; gzclose_r reports it (Z_BUF_ERROR).
  const int rc = gzclose(f);
  if (rc != Z_OK)
    return Status::InvalidArgument("gradzip.data: cannot read ", path, ": truncated or corrupt gzip data");
  return out;
}

}  // namespace

StatusOr<std::string> find_fashion_mnist(const std::string& root) {
  std::string dir = root;
  if (dir.empty()) {
    const char* env = std::getenv("GRADZIP_FASHION_MNIST");
    dir = (env != nullptr && *env != '\0') ? env : kDefaultRoot;
  }
  std::string missing;
  for (const char* f : kFiles) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(std::filesystem::path(dir) / f, ec))
      missing += (missing.empty() ? "" : ", ") + std::string(f);
  }
  if (!missing.empty())
    return Status::InvalidArgument("gradzip.data: Fashion-MNIST not found in ", dir, " (missing ", missing,
                                   "); install it with `apt-get install dataset-fashion-mnist` (Debian) or pass "
                                   "--data-root <directory>");
  return dir;
}

StatusOr<at::Tensor> read_idx(const std::string& path) {
  GZ_ASSIGN_OR_RETURN(std::vector<std::uint8_t> data, slurp(path));
  if (data.size() < 4)
    return Status::InvalidArgument("gradzip.data: ", path, " is too short for an IDX header (", data.size(), " bytes)");
  const unsigned ndim = data[3];
  if (data[0] != 0 || data[1] != 0 || data[2] != 0x08 || ndim < 1 || ndim > 4)
    return Status::InvalidArgument("gradzip.data: ", path, " is not an unsigned-byte IDX file (magic bytes ",
                                   static_cast<int>(data[0]), " ", static_cast<int>(data[1]), " ",
                                   static_cast<int>(data[2]), " ", static_cast<int>(data[3]), ")");
  if (data.size() < 4 + 4 * ndim)
    return Status::InvalidArgument("gradzip.data: ", path, " is truncated inside its header");
  std::vector<std::int64_t> dims;
  std::uint64_t count = 1;
  for (unsigned i = 0; i < ndim; ++i) {
    const std::uint8_t* p = data.data() + 4 + 4 * i;
    const std::uint32_t d =
        (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
    dims.push_back(d);
    count *= d;
  }
  const std::uint64_t body = data.size() - 4 - 4 * ndim;
  if (body != count)
    return Status::InvalidArgument("gradzip.data: ", path, " declares shape ", c10::IntArrayRef(dims), " (", count,
                                   " bytes) but holds ", body, " bytes");
  try {
    at::Tensor t = at::empty(dims, at::kByte);
    if (count > 0) std::memcpy(t.data_ptr<std::uint8_t>(), data.data() + 4 + 4 * ndim, count);
    return t;
  } catch (const std::exception& e) {
    return Status::Internal("gradzip.data: ", path, ": torch raised: ", e.what());
  }
}

StatusOr<Dataset> load_fashion_mnist(const std::string& split, const std::string& root) {
  if (split != "train" && split != "test")
    return Status::InvalidArgument("gradzip.data: split='", split, "' must be 'train' or 'test'");
  GZ_ASSIGN_OR_RETURN(const std::string dir, find_fashion_mnist(root));
  const int i = split == "train" ? 0 : 2;
  Dataset d;
  GZ_ASSIGN_OR_RETURN(d.images, read_idx((std::filesystem::path(dir) / kFiles[i]).string()));
  GZ_ASSIGN_OR_RETURN(at::Tensor labels, read_idx((std::filesystem::path(dir) / kFiles[i + 1]).string()));
  if (d.images.dim() != 3 || labels.dim() != 1 || d.images.size(0) != labels.size(0))
    return Status::InvalidArgument("gradzip.data: ", split, " images ", d.images.sizes(), " and labels ",
                                   labels.sizes(), " do not match");
  if (labels.numel() > 0 && labels.max().item<std::int64_t>() >= 10)
    return Status::InvalidArgument("gradzip.data: ", split, " labels go up to ", labels.max().item<std::int64_t>(),
                                   ", expected < 10");
  d.labels = labels.to(at::kLong);
  return d;
}

at::Tensor normalize(const at::Tensor& images) {
  return ((images.to(at::kFloat) / 255.0) - 0.2860).div_(0.3530).unsqueeze(1);
}

}  // namespace gradzip::libtorch
