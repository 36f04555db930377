#include "config/yaml_reader.h"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace kr {

namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string scalar_text(const YAML::Node& n) {
  if (n.IsScalar()) return "'" + n.Scalar() + "'";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  return "null";
}

}  // namespace

std::string closest_match(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::max<size_t>(2, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  return best;
}

MappingReader::MappingReader(const YAML::Node& node, std::string where,
                             std::vector<std::string> known, std::string section)
    : node_(node), where_(std::move(where)), section_(std::move(section)) {
  if (node.Mark().line >= 0) line_ = node.Mark().line + 1;
  if (!node.IsMap()) {
    std::ostringstream s;
    s << where_ << (line_ > 0 ? ":" + std::to_string(line_) : "") << ": "
      << (section_.empty() ? "the config" : section_.substr(0, section_.size() - 1))
      << " must be a mapping of key: value, got " << scalar_text(node);
    throw ConfigError(s.str());
  }
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    const int line = kv.first.Mark().line >= 0 ? kv.first.Mark().line + 1 : -1;
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      std::ostringstream s;
      s << where_ << (line > 0 ? ":" + std::to_string(line) : "") << ": unknown key '" << section_
        << key << "'";
      const std::string guess = closest_match(key, known);
      if (!guess.empty()) s << " (did you mean '" << section_ << guess << "'?)";
      s << ". Known keys: ";
      for (size_t i = 0; i < known.size(); ++i) s << (i ? ", " : "") << known[i];
      throw ConfigError(s.str());
    }
    if (values_.count(key)) {
      throw ConfigError(where_ + (line > 0 ? ":" + std::to_string(line) : "") + ": key '" +
                        section_ + key + "' is given twice");
    }
    values_[key] = kv.second;
    lines_[key] = line;
  }
}

bool MappingReader::has(const std::string& key) const {
  auto it = values_.find(key);
  return it != values_.end() && !it->second.IsNull();
}

YAML::Node MappingReader::get(const std::string& key) const { return values_.at(key); }

std::string MappingReader::at(const std::string& key) const {
  auto it = lines_.find(key);
  const int line = it != lines_.end() ? it->second : line_;
  return where_ + (line > 0 ? ":" + std::to_string(line) : "") + ": ";
}

void MappingReader::fail(const std::string& key, const std::string& message) const {
  throw ConfigError(at(key) + section_ + key + " " + message);
}

int64_t MappingReader::get_int(const std::string& key) const {
  const YAML::Node n = get(key);
  int64_t v = 0;
  if (n.IsScalar()) {
    // Accept 32000, 32_000-free plain ints, and whole floats such as 1e4.
    const std::string& s = n.Scalar();
    if (YAML::convert<int64_t>::decode(n, v)) return v;
    double d;
    if (YAML::convert<double>::decode(n, d) && std::isfinite(d) && d == std::floor(d) &&
        std::abs(d) < 9e15 && s.find_first_of("eE.") != std::string::npos)
      return static_cast<int64_t>(d);
  }
  fail(key, "must be an integer, got " + scalar_text(n));
}

double MappingReader::get_double(const std::string& key) const {
  const YAML::Node n = get(key);
  double v = 0;
  if (n.IsScalar() && YAML::convert<double>::decode(n, v)) {
    const std::string& s = n.Scalar();
    if (s != "true" && s != "false") return v;
  }
  fail(key, "must be a number, got " + scalar_text(n));
}

bool MappingReader::get_bool(const std::string& key) const {
  const YAML::Node n = get(key);
  if (n.IsScalar()) {
    const std::string& s = n.Scalar();
    if (s == "true" || s == "True" || s == "TRUE" || s == "yes") return true;
    if (s == "false" || s == "False" || s == "FALSE" || s == "no") return false;
  }
  fail(key, "must be true or false, got " + scalar_text(n));
}

std::string MappingReader::get_string(const std::string& key) const {
  const YAML::Node n = get(key);
  if (n.IsScalar()) return n.Scalar();
  fail(key, "must be a string, got " + scalar_text(n));
}

}  // namespace kr
