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

py::object rope_scaling_to_py(const RopeScaling& r) {
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
  }
  return std::move(d);
}

py::dict config_to_dict(const TransformerConfig& c) {
  py::dict d;
  d["vocab_size"] = c.vocab_size;
  d["hidden_size"] = c.hidden_size;
  d["num_layers"] = c.num_layers;
  d["num_heads"] = c.num_heads;
  d["num_kv_heads"] = c.num_kv_heads;
  d["intermediate_size"] = c.intermediate_size;
  d["max_seq_length"] = c.max_seq_length;
  d["head_dim"] = c.head_dim ? py::cast(*c.head_dim) : py::none();
  d["rope_theta"] = c.rope_theta;
  d["rope_scaling"] = rope_scaling_to_py(c.rope_scaling);
  d["dropout"] = c.dropout;
  d["rms_norm_eps"] = c.rms_norm_eps;
  d["initializer_range"] = c.initializer_range;
  d["qk_norm"] = c.qk_norm;
  d["tie_word_embeddings"] = c.tie_word_embeddings;
  d["pad_token_id"] = c.pad_token_id;
  d["unk_token_id"] = c.unk_token_id;
  d["bos_token_id"] = c.bos_token_id;
  d["eos_token_id"] = c.eos_token_id;
  return d;
}

}  // namespace

void bind_config(py::module_& m) {
  py::register_exception<ConfigError>(m, "ConfigError", PyExc_ValueError);

  using C = TransformerConfig;
  py::class_<C>(m, "TransformerConfig")
      .def(py::init<>())
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
      .def_readwrite("vocab_size", &C::vocab_size)
      .def_readwrite("hidden_size", &C::hidden_size)
      .def_readwrite("num_layers", &C::num_layers)
      .def_readwrite("num_heads", &C::num_heads)
      .def_readwrite("num_kv_heads", &C::num_kv_heads)
      .def_readwrite("intermediate_size", &C::intermediate_size)
      .def_readwrite("max_seq_length", &C::max_seq_length)
      .def_readwrite("head_dim", &C::head_dim)
      .def_readwrite("rope_theta", &C::rope_theta)
      .def_property("rope_scaling",
          [](const C& c) { return rope_scaling_to_py(c.rope_scaling); },
          [](C& c, const py::object& v) {
            c.rope_scaling = parse_rope_scaling(to_yaml_node(v), "rope_scaling");
          })
      .def_readwrite("dropout", &C::dropout)
      .def_readwrite("rms_norm_eps", &C::rms_norm_eps)
      .def_readwrite("initializer_range", &C::initializer_range)
      .def_readwrite("qk_norm", &C::qk_norm)
      .def_readwrite("tie_word_embeddings", &C::tie_word_embeddings)
      .def_readwrite("pad_token_id", &C::pad_token_id)
      .def_readwrite("unk_token_id", &C::unk_token_id)
      .def_readwrite("bos_token_id", &C::bos_token_id)
      .def_readwrite("eos_token_id", &C::eos_token_id)
      .def_property_readonly("resolved_head_dim", &C::resolved_head_dim)
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
