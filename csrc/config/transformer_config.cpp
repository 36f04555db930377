#include "config/transformer_config.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <sstream>

namespace kr {

namespace {

const std::vector<std::string> kKeys = {
    "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
    "max_seq_length", "head_dim", "rope_theta", "rope_scaling", "dropout", "rms_norm_eps",
    "initializer_range", "qk_norm", "tie_word_embeddings", "pad_token_id", "unk_token_id",
    "bos_token_id", "eos_token_id"};

const std::vector<std::string> kRopeKeys = {
    "type", "rope_type", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
    "alpha", "beta", "attention_factor"};

}  // namespace

RopeScaling parse_rope_scaling(const YAML::Node& node, const std::string& where) {
  RopeScaling r;
  if (node.IsNull()) return r;
  if (node.IsScalar() && (node.Scalar() == "none" || node.Scalar() == "None")) return r;
  MappingReader m(node, where, kRopeKeys, "rope_scaling.");
  if (m.has("type") && m.has("rope_type"))
    m.fail("rope_type", "repeats 'type': give one of them");
  const std::string tkey = m.has("rope_type") ? "rope_type" : "type";
  if (!m.has(tkey)) m.fail("type", "is required: one of none, linear, ntk, yarn");
  r.type = m.get_string(tkey);
  if (r.type == "default") r.type = "none";
  if (r.type == "dynamic") r.type = "ntk";
  if (r.type != "none" && r.type != "linear" && r.type != "ntk" && r.type != "yarn")
    m.fail(tkey, "must be one of none, linear, ntk, yarn; got '" + r.type + "'");
  if (r.type != "none") {
    if (!m.has("factor")) m.fail("factor", "is required for rope_scaling type '" + r.type + "'");
    r.factor = m.get_double("factor");
    if (!(r.factor >= 1.0)) m.fail("factor", "must be >= 1, got " + std::to_string(r.factor));
  } else if (m.has("factor")) {
    r.factor = m.get_double("factor");
  }
  if (m.has("original_max_position_embeddings")) {
    r.original_max_position_embeddings = m.get_int("original_max_position_embeddings");
    if (r.original_max_position_embeddings <= 0)
      m.fail("original_max_position_embeddings", "must be > 0");
  }
  if (m.has("beta_fast") && m.has("beta")) m.fail("beta", "repeats 'beta_fast': give one of them");
  if (m.has("beta_slow") && m.has("alpha")) m.fail("alpha", "repeats 'beta_slow': give one of them");
  if (m.has("beta_fast")) r.beta_fast = m.get_double("beta_fast");
  if (m.has("beta")) r.beta_fast = m.get_double("beta");
  if (m.has("beta_slow")) r.beta_slow = m.get_double("beta_slow");
  if (m.has("alpha")) r.beta_slow = m.get_double("alpha");
  if (m.has("attention_factor")) r.attention_factor = m.get_double("attention_factor");
  if (r.type == "yarn" && !(r.beta_fast > r.beta_slow))
    m.fail("beta_fast", "must be greater than beta_slow for yarn");
  return r;
}

std::string format_double(double v) {
  if (!std::isfinite(v)) return std::isnan(v) ? ".nan" : (v > 0 ? ".inf" : "-.inf");
  std::string t;
  for (int prec = 6; prec <= 17; ++prec) {
    std::ostringstream s;
    s << std::setprecision(prec) << v;
    t = s.str();
    if (std::stod(t) == v) break;
  }
  // PyYAML reads "1e-06" as a string: give every float a '.' in its mantissa.
  const auto e = t.find_first_of("eE");
  const std::string mant = t.substr(0, e);
  if (mant.find('.') == std::string::npos) t = mant + ".0" + (e == std::string::npos ? "" : t.substr(e));
  return t;
}

bool RopeScaling::operator==(const RopeScaling& o) const {
  return type == o.type && factor == o.factor &&
         original_max_position_embeddings == o.original_max_position_embeddings &&
         beta_fast == o.beta_fast && beta_slow == o.beta_slow &&
         attention_factor == o.attention_factor;
}

bool TransformerConfig::operator==(const TransformerConfig& o) const {
  return vocab_size == o.vocab_size && hidden_size == o.hidden_size && num_layers == o.num_layers &&
         num_heads == o.num_heads && num_kv_heads == o.num_kv_heads &&
         intermediate_size == o.intermediate_size && max_seq_length == o.max_seq_length &&
         head_dim == o.head_dim && rope_theta == o.rope_theta && rope_scaling == o.rope_scaling &&
         dropout == o.dropout && rms_norm_eps == o.rms_norm_eps &&
         initializer_range == o.initializer_range && qk_norm == o.qk_norm &&
         tie_word_embeddings == o.tie_word_embeddings && pad_token_id == o.pad_token_id &&
         unk_token_id == o.unk_token_id && bos_token_id == o.bos_token_id &&
         eos_token_id == o.eos_token_id;
}

// Presets: small/medium/large are the documents' configs (seeds 000, 001); tiny is ours,
// a few million parameters for tests and the CPU demo.
TransformerConfig TransformerConfig::tiny() {
  TransformerConfig c;
  c.vocab_size = 8000;
  c.hidden_size = 256;
  c.num_layers = 4;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.intermediate_size = 688;
  c.max_seq_length = 256;
  return c;
}

TransformerConfig TransformerConfig::small() {
  TransformerConfig c;
  c.vocab_size = 32000;
  c.hidden_size = 768;
  c.num_layers = 12;
  c.num_heads = 12;
  c.num_kv_heads = 4;
  c.intermediate_size = 2048;
  c.max_seq_length = 1024;
  c.dropout = 0.1;
  return c;
}

TransformerConfig TransformerConfig::medium() {
  TransformerConfig c = small();
  c.hidden_size = 1024;
  c.num_layers = 24;
  c.num_heads = 16;
  c.num_kv_heads = 4;
  c.intermediate_size = 4096;
  c.max_seq_length = 2048;
  return c;
}

TransformerConfig TransformerConfig::large() {
  TransformerConfig c = small();
  c.hidden_size = 1536;
  c.num_layers = 24;
  c.num_heads = 24;
  c.num_kv_heads = 6;
  c.intermediate_size = 6144;
  c.max_seq_length = 2048;
  return c;
}

TransformerConfig TransformerConfig::from_node(const YAML::Node& node, const std::string& where) {
  MappingReader m(node, where, kKeys);
  TransformerConfig c;
  auto int_key = [&](const char* k, int64_t& dst) {
    if (m.has(k)) dst = m.get_int(k);
  };
  auto dbl_key = [&](const char* k, double& dst) {
    if (m.has(k)) dst = m.get_double(k);
  };
  auto bool_key = [&](const char* k, bool& dst) {
    if (m.has(k)) dst = m.get_bool(k);
  };
  int_key("vocab_size", c.vocab_size);
  int_key("hidden_size", c.hidden_size);
  int_key("num_layers", c.num_layers);
  int_key("num_heads", c.num_heads);
  // Without num_kv_heads the model is plain multi-head attention.
  c.num_kv_heads = m.has("num_kv_heads") ? m.get_int("num_kv_heads") : c.num_heads;
  int_key("intermediate_size", c.intermediate_size);
  int_key("max_seq_length", c.max_seq_length);
  if (m.has("head_dim")) c.head_dim = m.get_int("head_dim");
  dbl_key("rope_theta", c.rope_theta);
  if (m.has("rope_scaling")) c.rope_scaling = parse_rope_scaling(m.get("rope_scaling"), where);
  dbl_key("dropout", c.dropout);
  dbl_key("rms_norm_eps", c.rms_norm_eps);
  dbl_key("initializer_range", c.initializer_range);
  bool_key("qk_norm", c.qk_norm);
  bool_key("tie_word_embeddings", c.tie_word_embeddings);
  int_key("pad_token_id", c.pad_token_id);
  int_key("unk_token_id", c.unk_token_id);
  int_key("bos_token_id", c.bos_token_id);
  int_key("eos_token_id", c.eos_token_id);

  // Re-check with line numbers: validate() names the key, the reader adds file:line.
  try {
    c.validate("");
  } catch (const ConfigError& e) {
    std::string msg = e.what();
    // validate() messages start with "<key> ": point at that key's line.
    const std::string key = msg.substr(0, msg.find(' '));
    throw ConfigError(m.at(key) + msg);
  }
  return c;
}

TransformerConfig TransformerConfig::from_yaml_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot open the model config file (does it exist?)");
  std::stringstream buf;
  buf << in.rdbuf();
  return from_yaml_string(buf.str(), path);
}

TransformerConfig TransformerConfig::from_yaml_string(const std::string& text,
                                                      const std::string& where) {
  YAML::Node node;
  try {
    node = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw ConfigError(where + ":" + std::to_string(e.mark.line + 1) + ": not valid YAML: " + e.msg);
  }
  if (node.IsNull()) throw ConfigError(where + ": the model config is empty");
  return from_node(node, where);
}

int64_t TransformerConfig::resolved_head_dim() const {
  if (head_dim) return *head_dim;
  return num_heads > 0 ? hidden_size / num_heads : 0;
}

int64_t TransformerConfig::num_parameters() const {
  const int64_t C = hidden_size, D = resolved_head_dim();
  const int64_t attn = C * num_heads * D + 2 * C * num_kv_heads * D + num_heads * D * C;
  const int64_t mlp = 3 * C * intermediate_size;
  const int64_t norms = 2 * C + (qk_norm ? 2 * D : 0);
  const int64_t embed = vocab_size * C;
  return embed + num_layers * (attn + mlp + norms) + C + (tie_word_embeddings ? 0 : embed);
}

void TransformerConfig::validate(const std::string& where) const {
  const std::string pre = where.empty() ? "" : where + ": ";
  auto fail = [&](const std::string& msg) { throw ConfigError(pre + msg); };
  auto positive = [&](const char* k, int64_t v) {
    if (v <= 0) fail(std::string(k) + " must be > 0, got " + std::to_string(v));
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("num_layers", num_layers);
  positive("num_heads", num_heads);
  positive("num_kv_heads", num_kv_heads);
  positive("intermediate_size", intermediate_size);
  positive("max_seq_length", max_seq_length);
  if (head_dim) {
    positive("head_dim", *head_dim);
  } else if (hidden_size % num_heads != 0) {
    fail("num_heads (" + std::to_string(num_heads) + ") must divide hidden_size (" +
         std::to_string(hidden_size) + ") when head_dim is not set; set head_dim or change one");
  }
  if (resolved_head_dim() % 2 != 0)
    fail("head_dim must be even for rotary embeddings, got " + std::to_string(resolved_head_dim()));
  if (num_heads % num_kv_heads != 0)
    fail("num_kv_heads (" + std::to_string(num_kv_heads) + ") must divide num_heads (" +
         std::to_string(num_heads) + ")");
  if (!(rope_theta > 0)) fail("rope_theta must be > 0, got " + format_double(rope_theta));
  if (!(dropout >= 0 && dropout < 1)) fail("dropout must be in [0, 1), got " + format_double(dropout));
  if (!(rms_norm_eps > 0)) fail("rms_norm_eps must be > 0, got " + format_double(rms_norm_eps));
  if (!(initializer_range > 0))
    fail("initializer_range must be > 0, got " + format_double(initializer_range));
  const auto& r = rope_scaling;
  if (r.type != "none" && r.type != "linear" && r.type != "ntk" && r.type != "yarn")
    fail("rope_scaling type must be one of none, linear, ntk, yarn; got '" + r.type + "'");
  if (r.type != "none" && !(r.factor >= 1.0))
    fail("rope_scaling factor must be >= 1, got " + format_double(r.factor));
  auto token = [&](const char* k, int64_t v) {
    if (v < -1 || v >= vocab_size)
      fail(std::string(k) + " must be in [0, vocab_size=" + std::to_string(vocab_size) +
           ") or -1 for none, got " + std::to_string(v));
  };
  token("pad_token_id", pad_token_id);
  token("unk_token_id", unk_token_id);
  token("bos_token_id", bos_token_id);
  token("eos_token_id", eos_token_id);
}

YAML::Node TransformerConfig::to_node() const {
  YAML::Node n;
  n["vocab_size"] = vocab_size;
  n["hidden_size"] = hidden_size;
  n["num_layers"] = num_layers;
  n["num_heads"] = num_heads;
  n["num_kv_heads"] = num_kv_heads;
  n["intermediate_size"] = intermediate_size;
  n["max_seq_length"] = max_seq_length;
  if (head_dim) n["head_dim"] = *head_dim;
  n["rope_theta"] = format_double(rope_theta);
  if (rope_scaling.type != "none") {
    YAML::Node r;
    r["type"] = rope_scaling.type;
    r["factor"] = format_double(rope_scaling.factor);
    if (rope_scaling.original_max_position_embeddings)
      r["original_max_position_embeddings"] = rope_scaling.original_max_position_embeddings;
    if (rope_scaling.type == "yarn") {
      r["beta_fast"] = format_double(rope_scaling.beta_fast);
      r["beta_slow"] = format_double(rope_scaling.beta_slow);
      if (rope_scaling.attention_factor)
        r["attention_factor"] = format_double(*rope_scaling.attention_factor);
    }
    n["rope_scaling"] = r;
  }
  n["dropout"] = format_double(dropout);
  n["rms_norm_eps"] = format_double(rms_norm_eps);
  n["initializer_range"] = format_double(initializer_range);
  n["qk_norm"] = qk_norm;
  n["tie_word_embeddings"] = tie_word_embeddings;
  n["pad_token_id"] = pad_token_id;
  n["unk_token_id"] = unk_token_id;
  n["bos_token_id"] = bos_token_id;
  n["eos_token_id"] = eos_token_id;
  return n;
}

std::string TransformerConfig::to_yaml() const {
  YAML::Emitter out;
  out << to_node();
  return std::string(out.c_str()) + "\n";
}

void TransformerConfig::save_yaml(const std::string& path) const {
  validate("TransformerConfig");
  // Write beside the target and rename, so a failed write never leaves half a file.
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    if (!out) throw ConfigError(path + ": cannot write the model config (is the directory there?)");
    out << to_yaml();
    if (!out.good()) throw ConfigError(path + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw ConfigError(path + ": cannot rename the written config into place");
  }
}

std::string TransformerConfig::summary() const {
  std::ostringstream s;
  const double params = static_cast<double>(num_parameters());
  s << "TransformerConfig(" << std::fixed << std::setprecision(1) << params / 1e6 << "M parameters)\n";
  s << "  vocab_size:          " << vocab_size << "\n";
  s << "  hidden_size:         " << hidden_size << "\n";
  s << "  num_layers:          " << num_layers << "\n";
  s << "  num_heads:           " << num_heads << " (head_dim " << resolved_head_dim()
    << (head_dim ? "" : ", derived") << ")\n";
  s << "  num_kv_heads:        " << num_kv_heads << " (GQA " << num_heads / std::max<int64_t>(num_kv_heads, 1)
    << ":1)\n";
  s << "  intermediate_size:   " << intermediate_size << " (SwiGLU)\n";
  s << "  max_seq_length:      " << max_seq_length << "\n";
  s << "  rope_theta:          " << format_double(rope_theta) << "\n";
  s << "  rope_scaling:        " << rope_scaling.type;
  if (rope_scaling.type != "none") s << " x" << rope_scaling.factor;
  s << "\n";
  s << "  qk_norm:             " << (qk_norm ? "true" : "false") << "\n";
  s << "  tie_word_embeddings: " << (tie_word_embeddings ? "true" : "false") << "\n";
  s << "  dropout:             " << std::setprecision(3) << dropout << "\n";
  s << "  rms_norm_eps:        " << std::defaultfloat << rms_norm_eps << "\n";
  s << "  parameters:          " << num_parameters();
  return s.str();
}

}  // namespace kr
