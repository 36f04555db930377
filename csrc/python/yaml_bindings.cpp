// check_yaml: reads a YAML file against a schema given from Python, with the same reader
// (and so the same file:line:key errors and "did you mean") as TransformerConfig. The
// training config and the LoRA config use it.
//
// schema: {key: type} where type is "int", "float", "bool", "str", "list[str]", "list[int]",
// "list[float]", a trailing "?" allowing null, or a nested schema dict.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <fstream>
#include <sstream>

#include "config/yaml_reader.h"

namespace py = pybind11;

namespace kr {
namespace {

py::object read_value(const MappingReader& m, const std::string& key, const std::string& type,
                      const std::string& where, const std::string& section);

py::dict read_mapping(const YAML::Node& node, const py::dict& schema, const std::string& where,
                      const std::string& section) {
  std::vector<std::string> known;
  for (auto kv : schema) known.push_back(py::str(kv.first));
  MappingReader m(node, where, known, section);
  py::dict out;
  for (auto kv : schema) {
    const std::string key = py::str(kv.first);
    const YAML::Node absent;
    if (!m.has(key)) {
      // Present but null: allowed only for optional types and sections.
      bool present_null = false;
      for (auto it : node) present_null |= it.first.as<std::string>() == key;
      if (present_null) {
        const bool optional = py::isinstance<py::dict>(kv.second) ||
                              py::str(kv.second).cast<std::string>().back() == '?';
        if (!optional) m.fail(key, "must not be empty (null)");
        out[py::str(key)] = py::none();
      }
      continue;
    }
    if (py::isinstance<py::dict>(kv.second)) {
      out[py::str(key)] = read_mapping(m.get(key), kv.second.cast<py::dict>(), where,
                                       section + key + ".");
    } else {
      out[py::str(key)] = read_value(m, key, py::str(kv.second), where, section);
    }
  }
  return out;
}

py::object read_value(const MappingReader& m, const std::string& key, const std::string& type_,
                      const std::string& where, const std::string& section) {
  std::string type = type_;
  if (!type.empty() && type.back() == '?') type.pop_back();
  if (type == "int") return py::int_(m.get_int(key));
  if (type == "float") return py::float_(m.get_double(key));
  if (type == "bool") return py::bool_(m.get_bool(key));
  if (type == "str") return py::str(m.get_string(key));
  if (type.rfind("list[", 0) == 0) {
    const std::string item = type.substr(5, type.size() - 6);
    YAML::Node n = m.get(key);
    if (n.IsScalar()) {  // a single value where a list is expected: a list of one
      YAML::Node seq(YAML::NodeType::Sequence);
      seq.push_back(n);
      n = seq;
    }
    if (!n.IsSequence()) m.fail(key, "must be a list of " + item);
    py::list out;
    for (size_t i = 0; i < n.size(); ++i) {
      YAML::Node wrapper(YAML::NodeType::Map);
      wrapper[key] = n[i];
      MappingReader one(wrapper, where, {key}, section);
      out.append(read_value(one, key, item, where, section));
    }
    return std::move(out);
  }
  throw std::invalid_argument("check_yaml: unknown schema type '" + type_ + "' for key " + key);
}

}  // namespace

void bind_yaml(py::module_& m) {
  m.def("check_yaml_string", [](const std::string& text, const py::dict& schema, const std::string& where) {
        YAML::Node node;
        try {
          node = YAML::Load(text);
        } catch (const YAML::ParserException& e) {
          throw ConfigError(where + ":" + std::to_string(e.mark.line + 1) + ": not valid YAML: " + e.msg);
        }
        if (node.IsNull()) return py::dict();
        return read_mapping(node, schema, where, "");
      }, py::arg("text"), py::arg("schema"), py::arg("where"),
      "Parse YAML text against a schema dict; raises ConfigError naming where:line and the key.");
  m.def("check_yaml", [](const std::string& path, const py::dict& schema) {
        std::ifstream in(path);
        if (!in) throw ConfigError(path + ": cannot open the config file (does it exist?)");
        std::stringstream buf;
        buf << in.rdbuf();
        YAML::Node node;
        try {
          node = YAML::Load(buf.str());
        } catch (const YAML::ParserException& e) {
          throw ConfigError(path + ":" + std::to_string(e.mark.line + 1) + ": not valid YAML: " + e.msg);
        }
        if (node.IsNull()) return py::dict();
        return read_mapping(node, schema, path, "");
      }, py::arg("path"), py::arg("schema"),
      "Read a YAML file against a schema dict; raises ConfigError naming file:line and the key.");
}

}  // namespace kr
