// Reads a YAML mapping against a known set of keys, so every config file gets the same
// errors: the file, the line and the key named, and "did you mean" for a misspelt key.
#pragma once

#include <yaml-cpp/yaml.h>

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace kr {

// Raised for any invalid config; Python sees it as kr_mini_llm.errors.ConfigError.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Closest candidate to `word` by edit distance, or "" if none is close enough.
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

class MappingReader {
 public:
  // `where` names the source ("configs/model_small.yaml" or "<dict>"); `section` prefixes keys
  // of a nested mapping ("rope_scaling.").
  MappingReader(const YAML::Node& node, std::string where, std::vector<std::string> known,
                std::string section = "");

  bool has(const std::string& key) const;
  YAML::Node get(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  double get_double(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  std::string get_string(const std::string& key) const;

  // "file:line: " for a key (or for the mapping itself when the key is absent).
  std::string at(const std::string& key) const;
  [[noreturn]] void fail(const std::string& key, const std::string& message) const;

 private:
  YAML::Node node_;
  std::string where_;
  std::string section_;
  std::map<std::string, YAML::Node> values_;
  std::map<std::string, int> lines_;
  int line_ = -1;
};

}  // namespace kr
