// rope_scaling: RoPE context extension, read and validated here once for every path that takes
// one (a model config file or dict, the RoPE table builder, an HF config.json), so the accepted
// types, their HF names, the key aliases, the defaults and the ranges are written only here.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kr {

// The normalised form: type is "none", "linear", "ntk" (HF's dynamic NTK) or "yarn", and only
// the fields that type uses differ from their defaults.
struct RopeScaling {
  std::string type = "none";
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;  // 0: the model's context (resolved())
  double beta_fast = 32.0;                       // YaRN ramp
  double beta_slow = 1.0;                        // YaRN ramp
  std::optional<double> attention_factor;        // YaRN; unset: from factor and mscale, as HF does
  std::optional<double> mscale;                  // YaRN attention factor's numerator scale
  std::optional<double> mscale_all_dim;          // YaRN attention factor's denominator scale
  bool truncate = true;                          // YaRN: ramp ends rounded to whole dimensions

  bool operator==(const RopeScaling& o) const;
  bool uses_original_context() const { return type == "ntk" || type == "yarn"; }
  // A copy whose original context is `context` (the model's max_seq_length) where none was given.
  RopeScaling resolved(int64_t context) const;
  // The mapping a config file holds (null for none): the fields given, and YaRN's ramp.
  YAML::Node to_node() const;
};

// Whether ntk and yarn may leave original_max_position_embeddings to the model's context.
enum class OriginalContext { FromModel, Required };

// Parses a rope_scaling mapping (or null, {}, 'none'); `where` names the source in errors.
// Accepts HF's type names and keys, and the YaRN paper's alpha/beta; a key that only another
// type uses is ignored, as HF ignores it.
RopeScaling parse_rope_scaling(const YAML::Node& node, const std::string& where,
                               OriginalContext context = OriginalContext::FromModel);

// Every key a rope_scaling mapping may hold, aliases included.
const std::vector<std::string>& rope_scaling_keys();
// (type, HF transformers' name of it) for every type.
std::vector<std::pair<std::string, std::string>> rope_scaling_hf_types();

}  // namespace kr
