// pybind11 face of kr::TransformerConfig. Python dicts are turned into YAML nodes, so a
// dict, a keyword list and a file all go through the one parser and its validation.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "config/transformer_config.h"

namespace py = pybind11;

namespace kr {
namespace {

YAML::Node to_yaml_node(const py::handle& obj) {
  if (obj.is_none()) return YAML::Node(YAML::NodeType::Null);
  if (py::isinstance<py::bool_>(obj)) return YAML::Node(obj.cast<bool>() ? "true" : "false");
  if (py::isinstance<py::int_>(obj)) return YAML::Node(std::to_string(obj.cast<int64_t>()));
  if (py::isinstance<py::float_>(obj)) return YAML::Node(format_double(obj.cast<double>()));
  if (py::isinstance<py::str>(obj)) return YAML::Node(obj.cast<std::string>());
  if (py::isinstance<py::dict>(obj)) {
    YAML::Node n(YAML::NodeType::Map);
    for (auto kv : obj.cast<py::dict>()) n[py::str(kv.first).cast<std::string>()] = to_yaml_node(kv.second);
    return n;
  }
  if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj)) {
    YAML::Node n(YAML::NodeType::Sequence);
    for (auto item : obj) n.push_back(to_yaml_node(item));
    return n;
  }
  // numpy scalars and the like: go by their text, the parser checks the type.
  return YAML::Node(py::str(obj).cast<std::string>());
}

// One overload per field kind: the value as Python sees it.
py::object to_py(int64_t v) { return py::int_(v); }
py::object to_py(double v) { return py::float_(v); }
py::object to_py(bool v) { return py::bool_(v); }
py::object to_py(const std::optional<int64_t>& v) { return v ? py::object(py::int_(*v)) : py::none(); }
// rope_scaling as the config holds it (to_dict, the attribute), key for key what
// RopeScaling::to_node() writes to a file; None for plain RoPE.
py::object to_py(const RopeScaling& r) {
  if (r.type == "none") return py::none();
  py::dict d;
  d["type"] = r.type;
  d["factor"] = r.factor;
  if (r.original_max_position_embeddings)
    d["original_max_position_embeddings"] = r.original_max_position_embeddings;
  if (r.type == "yarn") {
    d["beta_fast"] = r.beta_fast;
    d["beta_slow"] = r.beta_slow;
    if (r.attention_factor) d["attention_factor"] = *r.attention_factor;
    if (r.mscale) d["mscale"] = *r.mscale;
    if (r.mscale_all_dim) d["mscale_all_dim"] = *r.mscale_all_dim;
    if (!r.truncate) d["truncate"] = false;
  }
  return std::move(d);
}

// The form the RoPE table builder reads: every key of the type, with its default where none was
// given (an optional left unset is None); None for plain RoPE.
py::object rope_for_tables(const RopeScaling& r) {
  if (r.type == "none") return py::none();
  py::dict d;
  d["type"] = r.type;
  d["factor"] = r.factor;
  if (r.uses_original_context())
    d["original_max_position_embeddings"] = r.original_max_position_embeddings;
  if (r.type == "yarn") {
    const auto optional = [](const std::optional<double>& v) {
      return v ? py::object(py::float_(*v)) : py::none();
    };
    d["beta_fast"] = r.beta_fast;
    d["beta_slow"] = r.beta_slow;
    d["attention_factor"] = optional(r.attention_factor);
    d["mscale"] = optional(r.mscale);
    d["mscale_all_dim"] = optional(r.mscale_all_dim);
    d["truncate"] = r.truncate;
  }
  return std::move(d);
}

py::dict config_to_dict(const TransformerConfig& c) {
  py::dict d;
#define KR_FIELD_TO_PY(name, kind, def, check, doc) d[#name] = to_py(c.name);
  KR_TRANSFORMER_CONFIG_FIELDS(KR_FIELD_TO_PY)
#undef KR_FIELD_TO_PY
  return d;
}

// A plain attribute for every kind but rope_scaling, which is set through its parser.
template <class T>
void bind_field(py::class_<TransformerConfig>& cls, const char* name, T TransformerConfig::*member) {
  cls.def_readwrite(name, member);
}
void bind_field(py::class_<TransformerConfig>& cls, const char* name,
                RopeScaling TransformerConfig::*member) {
  cls.def_property(name,
      [member](const TransformerConfig& c) { return to_py(c.*member); },
      [member, name](TransformerConfig& c, const py::object& v) {
        c.*member = parse_rope_scaling(to_yaml_node(v), name);
      });
}

// C++'s ConfigError is raised as kr_mini_llm.errors.ConfigError: a Python class, because it
// derives from both the project's error base and ValueError, and pybind11 gives its own
// exceptions one base. errors.py imports nothing of ours, so importing it here makes no cycle.
void bind_config_error(py::module_& m) {
  // Held for the life of the process, as the translator may run until the interpreter ends.
  static PyObject* const config_error =
      py::object(py::module_::import("kr_mini_llm.errors").attr("ConfigError")).release().ptr();
  m.attr("ConfigError") = py::handle(config_error);
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ConfigError& e) {
      py::set_error(config_error, e.what());
    }
  });
}

void bind_rope_scaling(py::module_& m) {
  m.def("normalize_rope_scaling", [](const py::object& scaling, const std::string& where) {
        return rope_for_tables(parse_rope_scaling(to_yaml_node(scaling), where,
                                                  OriginalContext::Required));
      }, py::arg("scaling"), py::arg("where") = "<dict>",
      "A rope_scaling mapping (this project's names or HF's) in the form the RoPE table builder "
      "reads, every key of its type present; None for plain RoPE. Raises ConfigError naming the "
      "key. ntk and yarn must give original_max_position_embeddings: there is no model here to "
      "default to (TransformerConfig.resolved_rope_scaling fills in max_seq_length).");
  m.attr("ROPE_SCALING_KEYS") = py::tuple(py::cast(rope_scaling_keys()));
  py::dict hf_types;
  for (const auto& [type, hf_name] : rope_scaling_hf_types()) hf_types[type.c_str()] = hf_name;
  m.attr("ROPE_SCALING_HF_TYPES") = hf_types;
}

}  // namespace

void bind_config(py::module_& m) {
  bind_config_error(m);
  bind_rope_scaling(m);

  using C = TransformerConfig;
  py::class_<C> cls(m, "TransformerConfig");
#define KR_BIND_FIELD(name, kind, def, check, doc) bind_field(cls, #name, &C::name);
  KR_TRANSFORMER_CONFIG_FIELDS(KR_BIND_FIELD)
#undef KR_BIND_FIELD
  cls.def(py::init<>())
      .def_static("fields", [] {
            py::list out;
            for (const auto& f : C::fields()) out.append(py::make_tuple(f.name, f.type, f.doc));
            return out;
          }, "(name, type, doc) of every field, in the order of the C++ field table")
      .def_static("from_dict", [](const py::dict& d, const std::string& where) {
            return C::from_node(to_yaml_node(d), where);
          }, py::arg("d"), py::arg("where") = "<dict>")
      .def_static("from_yaml", &C::from_yaml_file, py::arg("path"))
      .def_static("from_yaml_string", &C::from_yaml_string, py::arg("text"),
                  py::arg("where") = "<string>")
      .def_static("tiny", &C::tiny)
      .def_static("small", &C::small)
      .def_static("medium", &C::medium)
      .def_static("large", &C::large)
      .def_property_readonly("resolved_head_dim", &C::resolved_head_dim)
      .def_property_readonly("resolved_rope_scaling",
          [](const C& c) { return rope_for_tables(c.resolved_rope_scaling()); })
      .def_property_readonly("num_parameters", &C::num_parameters)
      .def("validate", &C::validate, py::arg("where") = "TransformerConfig")
      .def("to_dict", &config_to_dict)
      .def("to_yaml", &C::to_yaml)
      .def("save_yaml", &C::save_yaml, py::arg("path"))
      .def("summary", &C::summary)
      .def("__eq__", [](const C& a, const C& b) { return a == b; })
      .def("copy", [](const C& c) { return C(c); });
}

}  // namespace kr
