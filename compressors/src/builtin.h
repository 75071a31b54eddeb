// Internal: spec-parameter factories of the built-in codecs, registered by register_builtin_compressors().
#pragma once

#include "gradzip/compressors/codecs.h"
#include "gradzip/compressors/registry.h"

namespace gradzip::detail {

StatusOr<CompressorPtr> identity_from_params(const Params& p);
StatusOr<CompressorPtr> fp16_from_params(const Params& p);
StatusOr<CompressorPtr> bf16_from_params(const Params& p);
StatusOr<CompressorPtr> topk_from_params(const Params& p);
StatusOr<CompressorPtr> randk_from_params(const Params& p);
StatusOr<CompressorPtr> qsgd_from_params(const Params& p);
StatusOr<CompressorPtr> natural_from_params(const Params& p);
StatusOr<CompressorPtr> sign_from_params(const Params& p);
StatusOr<CompressorPtr> lowrank_from_params(const Params& p);

/// Parameter names each codec accepts (for error messages and the registry's describe()).
inline const std::vector<std::string> kTopKParams = {"ratio", "k"};
inline const std::vector<std::string> kRandKParams = {"ratio", "k", "mode", "shared", "seed"};
inline const std::vector<std::string> kQsgdParams = {"levels", "bits", "norm", "coding"};
inline const std::vector<std::string> kLowRankParams = {"rank", "cols"};

/// Reads ratio= or k= (exactly one) for sparsifiers; `codec` names the codec in errors.
Status read_ratio_or_k(const Params& p, const char* codec, double* ratio, std::size_t* k);
/// Validates a sparsifier config: exactly one of ratio in (0, 1] or k in [1, 2^32-1] (factories of topk, randk).
Status check_ratio_or_k(const char* codec, double ratio, std::size_t k);
/// "ratio=0.01" or "k=100".
std::string ratio_or_k_spec(double ratio, std::size_t k);

/// Rand-K's subset key (randk.cc; algorithms.md §2.2): Exec::rng with the seed replaced by cfg.seed when set and the
/// rank replaced by 0 when cfg.shared (every rank draws the same subset); step and stream are kept. The one rule by
/// which randk's encode, decode and select, and compose's device path (compose.cc), key Floyd's subset.
inline RngKey randk_subset_key(const RandKConfig& cfg, const RngKey& rng) {
  RngKey key = rng;
  if (cfg.seed) key.seed = *cfg.seed;
  if (cfg.shared) key.rank = 0;
  return key;
}
/// The factor Rand-K's kept values carry: d/k (rounded to float once) for mode=unbiased, else 1.
inline float randk_value_scale(const RandKConfig& cfg, std::size_t d, std::size_t k) {
  return cfg.unbiased ? static_cast<float>(static_cast<double>(d) / static_cast<double>(k)) : 1.0f;
}
/// The configuration of a randk codec, or nullptr when `c` is another codec (randk.cc).
const RandKConfig* randk_config(const Compressor& c);

}  // namespace gradzip::detail
