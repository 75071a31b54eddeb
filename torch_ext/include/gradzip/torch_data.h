// Fashion-MNIST for LibTorch programs, from the Debian package dataset-fashion-mnist (gzipped IDX files; no
// downloads). The C++ twin of gradzip.data (torch_ext/python/gradzip/data.py): same files, same checks, same
// normalisation.
//
//   auto train = gradzip::libtorch::load_fashion_mnist("train");   // StatusOr<Dataset>
//   at::Tensor x = gradzip::libtorch::normalize((*train).images);  // float32 [60000, 1, 28, 28]
//
// IDX format (LeCun's MNIST layout, big-endian): magic = 0x00 0x00 <type> <ndim>, then ndim u32 sizes, then the
// data; type 0x08 = unsigned byte. The directory is `root`, else the debug environment variable
// GRADZIP_FASHION_MNIST, else /usr/share/datasets/fashion-mnist.
// Errors: kInvalidArgument naming the directory and the missing files ("...; install it with `apt-get install
// dataset-fashion-mnist` (Debian) or pass --data-root") or the file and what is wrong with it (not gzip/IDX,
// truncated, shape and length disagree, labels >= 10). Thread-safe (no shared state).
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "gradzip/compressors/core.h"

namespace gradzip::libtorch {

struct Dataset {
  at::Tensor images;  // uint8 [N, 28, 28]
  at::Tensor labels;  // int64 [N]
};

/// The directory to read: root if not empty, else $GRADZIP_FASHION_MNIST, else /usr/share/datasets/fashion-mnist;
/// kInvalidArgument listing the missing files when any of the four is absent.
StatusOr<std::string> find_fashion_mnist(const std::string& root = "");
/// Reads a gzipped (or plain) IDX file of unsigned bytes into a uint8 tensor of its shape.
StatusOr<at::Tensor> read_idx(const std::string& path);
/// split "train" (60000) or "test" (10000).
StatusOr<Dataset> load_fashion_mnist(const std::string& split, const std::string& root = "");
/// float32 [N, 1, 28, 28]: images / 255, standardised with Fashion-MNIST's mean 0.2860 and std 0.3530.
at::Tensor normalize(const at::Tensor& images);

}  // namespace gradzip::libtorch
