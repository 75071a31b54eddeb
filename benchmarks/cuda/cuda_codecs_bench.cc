// CUDA codec bandwidth against a device-to-device copy measured in the same run (CONVENTIONS C12).
//
//   gradzip_cuda_codecs_bench [--sizes 25000000,100000000] [--iters 20] [--json out.json] [--codecs a;b]
//
// For each size: the D2D copy (cudaMemcpyAsync, bytes read + written), then for each codec the median time of encode
// and of decode-accumulate (CUDA events around each call, after warm-up), the bytes each must move (encode: the
// passes over x its algorithm needs + the payload written; decode-accumulate: payload read + y read and written, or
// only the touched entries for sparse codecs), and the ratio of that bandwidth to the copy's. lowrank:rank=4 runs
// warm-started (a LowRankState, Q on the device) and reads x twice (M Q, then M^T P). Top-K reports time
// only (its work is a selection; compare with torch.topk in bench_torch.py). Exec::device_status is set and
// check_finite is off, so no call synchronises (as in the DDP hook).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "gradzip/compressors/codecs.h"
#include "gradzip/compressors/cuda.h"
#include "gradzip/compressors/registry.h"

using namespace gradzip;

#define CK(x)                                                                                 \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

template <class F>
double median_ms(int iters, F&& f) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) f();
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    CK(cudaEventRecord(a));
    f();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int main(int argc, char** argv) {
  std::vector<std::size_t> sizes = {25'000'000, 100'000'000};
  int iters = 20;
  std::string json, only;  // --codecs "topk:ratio=0.01;sign": only these (';'-separated)
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--sizes") {
      sizes.clear();
      std::size_t p = 0;
      while (p < v.size()) {
        const std::size_t q = v.find(',', p);
        sizes.push_back(std::stoull(v.substr(p, q == std::string::npos ? std::string::npos : q - p)));
        p = q == std::string::npos ? v.size() : q + 1;
      }
    } else if (k == "--iters") {
      iters = std::stoi(v);
    } else if (k == "--json") {
      json = v;
    } else if (k == "--codecs") {
      only = ";" + v + ";";
    }
  }
  if (!cuda_available()) {
    std::printf("no CUDA device\n");
    return 0;
  }
  const char* specs[] = {"identity",         "fp16",          "bf16",        "sign",
                         "natural",          "qsgd:bits=4",   "qsgd:bits=8", "topk:ratio=0.01",
                         "randk:ratio=0.01", "lowrank:rank=4"};
  std::string out = "[";
  std::printf("%-18s %12s %10s %10s %8s %10s %10s %8s\n", "codec", "numel", "enc ms", "enc GB/s", "xcopy", "dec ms",
              "dec GB/s", "xcopy");
  for (std::size_t n : sizes) {
    std::vector<float> hx(n);
    std::mt19937 rng(1);
    std::normal_distribution<float> nd;
    for (auto& v : hx) v = nd(rng);
    float *x = nullptr, *y = nullptr, *c = nullptr;
    std::uint8_t *pay = nullptr, *ws = nullptr;
    std::uint32_t* word = nullptr;
    CK(cudaMalloc(&x, 4 * n));
    CK(cudaMalloc(&y, 4 * n));
    CK(cudaMalloc(&c, 4 * n));
    CK(cudaMalloc(&pay, 4 * n + 4096));
    CK(cudaMalloc(&word, 4));
    CK(cudaMemset(word, 0, 4));
    CK(cudaMemcpy(x, hx.data(), 4 * n, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(y, hx.data(), 4 * n, cudaMemcpyHostToDevice));
    const double copy_ms = median_ms(iters, [&] { CK(cudaMemcpyAsync(c, x, 4 * n, cudaMemcpyDeviceToDevice)); });
    const double copy_gbs = 8.0 * n / copy_ms / 1e6;
    std::printf("%-18s %12zu %10.4f %10.1f %8.3f\n", "d2d copy", n, copy_ms, copy_gbs, 1.0);
    char buf[512];
    std::snprintf(buf, sizeof buf, "%s{\"codec\":\"d2d_copy\",\"numel\":%zu,\"ms\":%.5f,\"gbs\":%.2f}",
                  out.size() > 1 ? "," : "", n, copy_ms, copy_gbs);
    out += buf;
    for (const char* spec : specs) {
      if (!only.empty() && only.find(";" + std::string(spec) + ";") == std::string::npos) continue;
      auto codec = parse_compressor(spec);
      const Compressor& cd = **codec;
      const std::size_t ws_bytes = cd.workspace_bytes(n, Device::kCuda);
      CK(cudaMalloc(&ws, ws_bytes + 256));
      Exec ex;
      ex.device = Device::kCuda;
      ex.check_finite = false;
      ex.device_status = word;
      ex.workspace = MutableBytes(ws, ws_bytes);
      LowRankState lr_state;  // lowrank: warm-started after the first call, Q kept on the device (as in training)
      if (cd.traits(n).stateful) ex.state = &lr_state;
      const std::size_t cap = cd.max_encoded_bytes(n);
      std::size_t w = 0;
      const double enc = median_ms(iters, [&] {
        Status s = cd.encode(Span<const float>(x, n), MutableBytes(pay, cap), &w, ex);
        if (!s.ok()) {
          std::fprintf(stderr, "%s: %s\n", spec, s.to_string().c_str());
          std::exit(1);
        }
      });
      const double dec = median_ms(iters, [&] {
        Status s = cd.decode(ConstBytes(pay, w), Span<float>(y, n), DecodeMode::kAccumulate, ex, 1e-9f);
        if (!s.ok()) {
          std::fprintf(stderr, "%s: %s\n", spec, s.to_string().c_str());
          std::exit(1);
        }
      });
      Status st = cuda_take_status(word, nullptr, spec);
      if (!st.ok()) std::fprintf(stderr, "%s: device status %s\n", spec, st.to_string().c_str());
      const std::string sp = spec;
      const bool sparse = sp.rfind("topk", 0) == 0 || sp.rfind("randk", 0) == 0;
      // Bytes each must move. Encode: reads of x (QSGD and its norm pass: 2; the others 1) + payload written.
      // Decode-accumulate: payload read + y read and written (dense), or the kept entries' y read and written.
      const double x_reads =
          sp.rfind("qsgd", 0) == 0 || sp.rfind("lowrank", 0) == 0 ? 2.0 : 1.0;  // lowrank: M Q, M^T P
      const double enc_bytes = sparse ? 4.0 * n + w : x_reads * 4.0 * n + w;
      const double kept = sparse ? static_cast<double>(cd.traits(n).delta > 0 ? cd.traits(n).delta * n : 0.01 * n) : 0;
      const double dec_bytes = sparse ? w + 8.0 * kept : w + 8.0 * n;
      const double eg = enc_bytes / enc / 1e6, dg = dec_bytes / dec / 1e6;
      std::printf("%-18s %12zu %10.4f %10.1f %8.3f %10.4f %10.1f %8.3f\n", spec, n, enc, eg, eg / copy_gbs, dec, dg,
                  dg / copy_gbs);
      std::snprintf(buf, sizeof buf,
                    ",{\"codec\":\"%s\",\"numel\":%zu,\"encode_ms\":%.5f,\"encode_gbs\":%.2f,\"encode_x_copy\":%.4f,"
                    "\"decode_acc_ms\":%.5f,\"decode_gbs\":%.2f,\"decode_x_copy\":%.4f,\"payload_bytes\":%zu}",
                    spec, n, enc, eg, eg / copy_gbs, dec, dg, dg / copy_gbs, w);
      out += buf;
      CK(cudaFree(ws));
    }
    CK(cudaFree(x));
    CK(cudaFree(y));
    CK(cudaFree(c));
    CK(cudaFree(pay));
    CK(cudaFree(word));
  }
  out += "]\n";
  if (!json.empty()) {
    FILE* f = std::fopen(json.c_str(), "w");
    if (f) {
      std::fputs(out.c_str(), f);
      std::fclose(f);
    }
  }
  return 0;
}
