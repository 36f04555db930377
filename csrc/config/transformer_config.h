// TransformerConfig: the model's hyper-parameters, parsed from YAML (yaml-cpp), validated,
// summarised and written back. The Python class kr_mini_llm.TransformerConfig wraps it.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "config/rope_scaling.h"
#include "config/yaml_reader.h"

namespace kr {

// Shortest text that reads back as the same double, always with a '.' or exponent.
std::string format_double(double v);

// The one list of the model's fields: X(name, kind, default, check, doc). Everything that
// walks the fields (the struct, parse, emit, equality, validation of ranges, to_dict, the
// pybind11 properties, Python's field list) expands this table, so a new field is one line.
// kind: Int (int64_t), Float (double), Bool, OptInt (std::optional<int64_t>, unset = derived),
// Rope (RopeScaling). check: Positive (> 0), Token (-1 or an id < vocab_size), Any (checked
// by hand in validate(), if at all).
#define KR_TRANSFORMER_CONFIG_FIELDS(X)                                                      \
  X(vocab_size, Int, 32000, Positive, "tokens in the vocabulary")                            \
  X(hidden_size, Int, 768, Positive, "width of the residual stream")                         \
  X(num_layers, Int, 12, Positive, "decoder blocks")                                         \
  X(num_heads, Int, 12, Positive, "query heads")                                             \
  X(num_kv_heads, Int, 12, Positive, "key/value heads; absent from a file: num_heads")       \
  X(intermediate_size, Int, 2048, Positive, "SwiGLU hidden width")                           \
  X(max_seq_length, Int, 1024, Positive, "context length")                                   \
  X(head_dim, OptInt, std::nullopt, Positive, "per-head width; unset: hidden_size/num_heads") \
  X(rope_theta, Float, 10000.0, Any, "RoPE base")                                            \
  X(rope_scaling, Rope, RopeScaling{}, Any, "RoPE context extension (none/linear/ntk/yarn)") \
  X(dropout, Float, 0.0, Any, "dropout probability in [0, 1)")                               \
  X(rms_norm_eps, Float, 1e-6, Any, "RMSNorm epsilon")                                       \
  X(initializer_range, Float, 0.02, Any, "std of the normal initialisation")                 \
  X(qk_norm, Bool, false, Any, "RMSNorm on q and k per head (Qwen3)")                        \
  X(tie_word_embeddings, Bool, true, Any, "LM head shares the embedding matrix")            \
  X(pad_token_id, Int, 0, Token, "padding id, -1 for none")                                  \
  X(unk_token_id, Int, 1, Token, "unknown-piece id, -1 for none")                            \
  X(bos_token_id, Int, 2, Token, "beginning-of-sequence id, -1 for none")                    \
  X(eos_token_id, Int, 3, Token, "end-of-sequence id, -1 for none")

// The C++ type of each kind, and a tag for each check, named as the table names them.
namespace field_kind {
using Int = int64_t;
using Float = double;
using Bool = bool;
using OptInt = std::optional<int64_t>;
using Rope = RopeScaling;
}  // namespace field_kind
namespace field_check {
struct Positive {};
struct Token {};
struct Any {};
}  // namespace field_check

struct TransformerConfig {
#define KR_DECLARE_FIELD(name, kind, def, check, doc) field_kind::kind name = def;
  KR_TRANSFORMER_CONFIG_FIELDS(KR_DECLARE_FIELD)
#undef KR_DECLARE_FIELD

  // Every field in the table's order: its name, its type as Python spells it, its doc.
  struct FieldInfo {
    const char* name;
    const char* type;
    const char* doc;
  };
  static const std::vector<FieldInfo>& fields();

  static TransformerConfig tiny();
  static TransformerConfig small();
  static TransformerConfig medium();
  static TransformerConfig large();

  // Parse a mapping; `where` names the source in error messages. Validates.
  static TransformerConfig from_node(const YAML::Node& node, const std::string& where);
  static TransformerConfig from_yaml_file(const std::string& path);
  static TransformerConfig from_yaml_string(const std::string& text, const std::string& where);

  int64_t resolved_head_dim() const;
  // rope_scaling with its original context defaulting to max_seq_length, as HF's does.
  RopeScaling resolved_rope_scaling() const { return rope_scaling.resolved(max_seq_length); }
  // Exact parameter count of kr_mini_llm.model.Transformer built from this config.
  int64_t num_parameters() const;
  // Throws ConfigError naming `where` when the combination of values is impossible.
  void validate(const std::string& where = "TransformerConfig") const;
  void check_rules(const std::function<void(const std::string&)>& fail) const;
  YAML::Node to_node() const;
  std::string to_yaml() const;
  void save_yaml(const std::string& path) const;
  std::string summary() const;

  bool operator==(const TransformerConfig& o) const;
};

}  // namespace kr
