// TransformerConfig: the model's hyper-parameters, parsed from YAML (yaml-cpp), validated,
// summarised and written back. The Python class kr_mini_llm.TransformerConfig wraps it.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <optional>
#include <string>

#include "config/yaml_reader.h"

namespace kr {

// RoPE context extension. type: "none", "linear", "ntk" (NTK-aware base scaling) or "yarn".
struct RopeScaling {
  std::string type = "none";
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;  // 0: the config's max_seq_length
  double beta_fast = 32.0;                       // YaRN ramp (seed 003 calls it "beta")
  double beta_slow = 1.0;                        // YaRN ramp (seed 003 calls it "alpha")
  std::optional<double> attention_factor;        // YaRN: default 0.1 * ln(factor) + 1

  bool operator==(const RopeScaling& o) const;
};

// Parses a rope_scaling mapping (or null / 'none'); `where` names the source in errors.
RopeScaling parse_rope_scaling(const YAML::Node& node, const std::string& where);

// Shortest text that reads back as the same double, always with a '.' or exponent.
std::string format_double(double v);

struct TransformerConfig {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 768;
  int64_t num_layers = 12;
  int64_t num_heads = 12;
  int64_t num_kv_heads = 12;  // absent from a file: num_heads (plain multi-head attention)
  int64_t intermediate_size = 2048;
  int64_t max_seq_length = 1024;
  std::optional<int64_t> head_dim;  // unset: hidden_size / num_heads
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  double dropout = 0.0;
  double rms_norm_eps = 1e-6;
  double initializer_range = 0.02;
  bool qk_norm = false;
  bool tie_word_embeddings = true;
  int64_t pad_token_id = 0;
  int64_t unk_token_id = 1;
  int64_t bos_token_id = 2;
  int64_t eos_token_id = 3;

  static TransformerConfig tiny();
  static TransformerConfig small();
  static TransformerConfig medium();
  static TransformerConfig large();

  // Parse a mapping; `where` names the source in error messages. Validates.
  static TransformerConfig from_node(const YAML::Node& node, const std::string& where);
  static TransformerConfig from_yaml_file(const std::string& path);
  static TransformerConfig from_yaml_string(const std::string& text, const std::string& where);

  int64_t resolved_head_dim() const;
  // Exact parameter count of kr_mini_llm.model.Transformer built from this config.
  int64_t num_parameters() const;
  // Throws ConfigError naming `where` when the combination of values is impossible.
  void validate(const std::string& where = "TransformerConfig") const;
  YAML::Node to_node() const;
  std::string to_yaml() const;
  void save_yaml(const std::string& path) const;
  std::string summary() const;

  bool operator==(const TransformerConfig& o) const;
};

}  // namespace kr
