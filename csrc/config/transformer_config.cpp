#include "config/transformer_config.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iomanip>
#include <sstream>

namespace kr {

namespace {

#define KR_FIELD_NAME(name, kind, def, check, doc) #name,
const std::vector<std::string> kKeys = {KR_TRANSFORMER_CONFIG_FIELDS(KR_FIELD_NAME)};
#undef KR_FIELD_NAME

// Python's spelling of each kind (TransformerConfig.fields()).
constexpr const char* kind_type(const char* kind) {
  return kind[0] == 'I' ? "int" : kind[0] == 'F' ? "float" : kind[0] == 'B' ? "bool"
       : kind[0] == 'O' ? "int or None" : "dict or None";
}

// One overload per kind: read a present key, write a value to YAML.
void read_field(const MappingReader& m, const char* k, int64_t& v, const std::string&) { v = m.get_int(k); }
void read_field(const MappingReader& m, const char* k, double& v, const std::string&) { v = m.get_double(k); }
void read_field(const MappingReader& m, const char* k, bool& v, const std::string&) { v = m.get_bool(k); }
void read_field(const MappingReader& m, const char* k, std::optional<int64_t>& v, const std::string&) {
  v = m.get_int(k);
}
void read_field(const MappingReader& m, const char* k, RopeScaling& v, const std::string& where) {
  v = parse_rope_scaling(m.get(k), where);
}

void emit_field(YAML::Node& n, const char* k, int64_t v) { n[k] = v; }
void emit_field(YAML::Node& n, const char* k, double v) { n[k] = format_double(v); }
void emit_field(YAML::Node& n, const char* k, bool v) { n[k] = v; }
void emit_field(YAML::Node& n, const char* k, const std::optional<int64_t>& v) {
  if (v) n[k] = *v;  // unset means derived: leave it out
}
void emit_field(YAML::Node& n, const char* k, const RopeScaling& r) {
  if (r.type != "none") n[k] = r.to_node();
}

// Range checks named by the table's check column. Positive runs in phase 0 (before the
// hand-written rules, which divide by these), Token in phase 1 (after them).
struct RangeCheck {
  int phase;
  int64_t vocab_size;
  const std::function<void(const std::string&)>& fail;
};
template <class T>
void check_range(field_check::Any, const char*, const T&, const RangeCheck&) {}
void check_range(field_check::Positive, const char* k, int64_t v, const RangeCheck& c) {
  if (c.phase == 0 && v <= 0) c.fail(std::string(k) + " must be > 0, got " + std::to_string(v));
}
void check_range(field_check::Positive, const char* k, const std::optional<int64_t>& v,
                 const RangeCheck& c) {
  if (v) check_range(field_check::Positive{}, k, *v, c);
}
void check_range(field_check::Token, const char* k, int64_t v, const RangeCheck& c) {
  if (c.phase == 1 && (v < -1 || v >= c.vocab_size))
    c.fail(std::string(k) + " must be in [0, vocab_size=" + std::to_string(c.vocab_size) +
           ") or -1 for none, got " + std::to_string(v));
}

}  // namespace

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

bool TransformerConfig::operator==(const TransformerConfig& o) const {
#define KR_FIELD_EQ(name, kind, def, check, doc) name == o.name&&
  return KR_TRANSFORMER_CONFIG_FIELDS(KR_FIELD_EQ) true;
#undef KR_FIELD_EQ
}

const std::vector<TransformerConfig::FieldInfo>& TransformerConfig::fields() {
#define KR_FIELD_INFO(name, kind, def, check, doc) {#name, kind_type(#kind), doc},
  static const std::vector<FieldInfo> f = {KR_TRANSFORMER_CONFIG_FIELDS(KR_FIELD_INFO)};
#undef KR_FIELD_INFO
  return f;
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
#define KR_READ_FIELD(name, kind, def, check, doc) \
  if (m.has(#name)) read_field(m, #name, c.name, where);
  KR_TRANSFORMER_CONFIG_FIELDS(KR_READ_FIELD)
#undef KR_READ_FIELD
  // Without num_kv_heads the model is plain multi-head attention.
  if (!m.has("num_kv_heads")) c.num_kv_heads = c.num_heads;

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
  const std::function<void(const std::string&)> fail = [&](const std::string& msg) {
    throw ConfigError(pre + msg);
  };
#define KR_CHECK_FIELD(name, kind, def, check, doc) \
  check_range(field_check::check{}, #name, name, RangeCheck{phase, vocab_size, fail});
  for (int phase = 0; phase < 2; ++phase) {
    KR_TRANSFORMER_CONFIG_FIELDS(KR_CHECK_FIELD)
    if (phase == 0) check_rules(fail);
  }
#undef KR_CHECK_FIELD
}

// The rules that tie fields together (or bound floats), after every size is known positive.
void TransformerConfig::check_rules(const std::function<void(const std::string&)>& fail) const {
  if (!head_dim && hidden_size % num_heads != 0)
    fail("num_heads (" + std::to_string(num_heads) + ") must divide hidden_size (" +
         std::to_string(hidden_size) + ") when head_dim is not set; set head_dim or change one");
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
  // rope_scaling is not re-checked: its parser, the only way to set it, validated it.
}

YAML::Node TransformerConfig::to_node() const {
  YAML::Node n;
#define KR_EMIT_FIELD(name, kind, def, check, doc) emit_field(n, #name, name);
  KR_TRANSFORMER_CONFIG_FIELDS(KR_EMIT_FIELD)
#undef KR_EMIT_FIELD
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
