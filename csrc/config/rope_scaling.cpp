#include "config/rope_scaling.h"

#include "config/transformer_config.h"  // format_double
#include "config/yaml_reader.h"

namespace kr {

namespace {

// Each type by this project's name and by HF transformers' name; a mapping may give either.
struct RopeType {
  const char* name;
  const char* hf_name;
};
constexpr RopeType kRopeTypes[] = {
    {"none", "default"}, {"linear", "linear"}, {"ntk", "dynamic"}, {"yarn", "yarn"}};

// Other names of keys: the YaRN paper's (the project's long-context config writes alpha and
// beta) and HF's dynamic NTK's, which reads the original context from max_position_embeddings.
struct KeyAlias {
  const char* alias;
  const char* key;
};
constexpr KeyAlias kKeyAliases[] = {{"beta", "beta_fast"},
                                    {"alpha", "beta_slow"},
                                    {"max_position_embeddings", "original_max_position_embeddings"}};

const std::vector<std::string> kRopeKeys = {
    "type", "rope_type", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
    "attention_factor", "mscale", "mscale_all_dim", "truncate", "beta", "alpha",
    "max_position_embeddings"};

std::string type_list() {
  std::string s;
  for (const auto& t : kRopeTypes) s += (s.empty() ? "" : ", ") + std::string(t.name);
  return s;
}

bool means_none(const YAML::Node& node) {
  if (node.IsNull()) return true;
  if (node.IsMap() && node.size() == 0) return true;
  return node.IsScalar() && (node.Scalar() == "none" || node.Scalar() == "None");
}

// The type under "type" or HF's "rope_type" (HF writes both, equal), as this project names it.
std::string read_type(const MappingReader& m) {
  if (m.has("type") && m.has("rope_type") && m.get_string("type") != m.get_string("rope_type"))
    m.fail("rope_type", "is '" + m.get_string("rope_type") + "' but type is '" +
                            m.get_string("type") + "': give one of them");
  const std::string key = m.has("rope_type") ? "rope_type" : "type";
  if (!m.has(key)) m.fail("type", "is required: one of " + type_list());
  const std::string given = m.get_string(key);
  for (const auto& t : kRopeTypes)
    if (given == t.name || given == t.hf_name) return t.name;
  m.fail(key, "must be one of " + type_list() + "; got '" + given +
                  "' (HF's 'default' and 'dynamic' are read as none and ntk)");
}

// The name `key` is given under in `m`, its own or its alias, or "" when absent.
std::string given_name(const MappingReader& m, const std::string& key) {
  for (const auto& a : kKeyAliases) {
    if (key != a.key || !m.has(a.alias)) continue;
    if (m.has(key)) m.fail(a.alias, "repeats '" + key + "': give one of them");
    return a.alias;
  }
  return m.has(key) ? key : "";
}

// Reads every key that is given, whichever type uses it, so a malformed value is always refused.
RopeScaling read_values(const MappingReader& m) {
  RopeScaling r;
  const auto number = [&](const std::string& key, double& out) {
    const std::string name = given_name(m, key);
    if (!name.empty()) out = m.get_double(name);
  };
  const auto optional_number = [&](const std::string& key, std::optional<double>& out) {
    if (m.has(key)) out = m.get_double(key);
  };
  number("factor", r.factor);
  number("beta_fast", r.beta_fast);
  number("beta_slow", r.beta_slow);
  optional_number("attention_factor", r.attention_factor);
  optional_number("mscale", r.mscale);
  optional_number("mscale_all_dim", r.mscale_all_dim);
  if (m.has("truncate")) r.truncate = m.get_bool("truncate");
  const std::string context = given_name(m, "original_max_position_embeddings");
  if (!context.empty()) {
    r.original_max_position_embeddings = m.get_int(context);
    if (r.original_max_position_embeddings <= 0)
      m.fail(context, "must be > 0 (the context length the model was trained at), got " +
                          std::to_string(r.original_max_position_embeddings));
  }
  return r;
}

void check_factor(const MappingReader& m, const RopeScaling& r) {
  const std::string name = given_name(m, "factor");
  if (name.empty())
    m.fail("factor", "is required for rope_scaling type '" + r.type +
                         "': how many times its original context the model reaches, e.g. 4.0");
  if (r.type == "linear" && !(r.factor > 0))
    m.fail(name, "must be > 0 for linear scaling, got " + format_double(r.factor));
  if (r.type != "linear" && !(r.factor >= 1))
    m.fail(name, "must be >= 1 for " + r.type + " scaling (1 is no scaling), got " +
                     format_double(r.factor));
}

void check_yarn(const MappingReader& m, const RopeScaling& r) {
  const std::string slow = given_name(m, "beta_slow");
  if (!(r.beta_slow > 0))
    m.fail(slow.empty() ? "beta_slow" : slow, "must be > 0, got " + format_double(r.beta_slow));
  if (!(r.beta_fast > r.beta_slow)) {
    const std::string fast = given_name(m, "beta_fast");
    m.fail(fast.empty() ? "beta_fast" : fast,
           "must be greater than beta_slow for yarn (" + format_double(r.beta_fast) + " <= " +
               format_double(r.beta_slow) + "); the defaults are 32 and 1");
  }
  if (r.attention_factor && !(*r.attention_factor > 0))
    m.fail("attention_factor", "must be > 0, got " + format_double(*r.attention_factor) +
                                   "; leave it out to derive it from factor");
}

// `r` with the fields its type does not use back at their defaults, so equal scalings compare
// equal and a config round-trips through its dict and its file.
RopeScaling keep_used(const RopeScaling& r) {
  RopeScaling out;
  out.type = r.type;
  if (r.type == "none") return out;
  out.factor = r.factor;
  if (!r.uses_original_context()) return out;
  out.original_max_position_embeddings = r.original_max_position_embeddings;
  if (r.type == "ntk") return out;
  out.beta_fast = r.beta_fast;
  out.beta_slow = r.beta_slow;
  out.attention_factor = r.attention_factor;
  out.mscale = r.mscale;
  out.mscale_all_dim = r.mscale_all_dim;
  out.truncate = r.truncate;
  return out;
}

}  // namespace

RopeScaling parse_rope_scaling(const YAML::Node& node, const std::string& where,
                               OriginalContext context) {
  if (means_none(node)) return RopeScaling{};
  MappingReader m(node, where, kRopeKeys, "rope_scaling.");
  RopeScaling r = read_values(m);
  r.type = read_type(m);
  if (r.type == "none") return RopeScaling{};
  check_factor(m, r);
  if (r.type == "yarn") check_yarn(m, r);
  if (context == OriginalContext::Required && r.uses_original_context() &&
      r.original_max_position_embeddings == 0)
    m.fail("original_max_position_embeddings",
           "is required for " + r.type + " scaling here (no model context to default to): "
           "give the context length the model was trained at");
  return keep_used(r);
}

RopeScaling RopeScaling::resolved(int64_t context) const {
  RopeScaling r = *this;
  if (r.uses_original_context() && r.original_max_position_embeddings == 0)
    r.original_max_position_embeddings = context;
  return r;
}

YAML::Node RopeScaling::to_node() const {
  if (type == "none") return YAML::Node(YAML::NodeType::Null);
  YAML::Node y;
  y["type"] = type;
  y["factor"] = format_double(factor);
  if (original_max_position_embeddings)
    y["original_max_position_embeddings"] = original_max_position_embeddings;
  if (type == "yarn") {
    y["beta_fast"] = format_double(beta_fast);
    y["beta_slow"] = format_double(beta_slow);
    if (attention_factor) y["attention_factor"] = format_double(*attention_factor);
    if (mscale) y["mscale"] = format_double(*mscale);
    if (mscale_all_dim) y["mscale_all_dim"] = format_double(*mscale_all_dim);
    if (!truncate) y["truncate"] = false;
  }
  return y;
}

bool RopeScaling::operator==(const RopeScaling& o) const {
  return type == o.type && factor == o.factor &&
         original_max_position_embeddings == o.original_max_position_embeddings &&
         beta_fast == o.beta_fast && beta_slow == o.beta_slow &&
         attention_factor == o.attention_factor && mscale == o.mscale &&
         mscale_all_dim == o.mscale_all_dim && truncate == o.truncate;
}

const std::vector<std::string>& rope_scaling_keys() { return kRopeKeys; }

std::vector<std::pair<std::string, std::string>> rope_scaling_hf_types() {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& t : kRopeTypes) out.emplace_back(t.name, t.hf_name);
  return out;
}

}  // namespace kr
