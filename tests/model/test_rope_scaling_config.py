"""rope_scaling is read once, by the config's C++ parser; the tables and HF mapping take its form."""
import pytest
import torch

from kr_mini_llm import ConfigError, TransformerConfig, _C
from kr_mini_llm.model.hf import config_from_hf, config_to_hf
from kr_mini_llm.ops import rope_tables


@pytest.mark.parametrize("hf_type,ours", [("default", None), ("linear", "linear"), ("dynamic", "ntk"),
                                          ("yarn", "yarn")])
def test_hf_rope_types_map_to_the_config_vocabulary(hf_type, ours):
    base = config_to_hf(TransformerConfig.tiny())
    base["rope_parameters"] = {"rope_type": hf_type, "rope_theta": 5e5, "factor": 4.0,
                               "original_max_position_embeddings": 64}
    config = config_from_hf(base)
    assert config.rope_theta == 5e5
    assert (config.rope_scaling or {}).get("type") == ours
    if ours:  # and back out under HF's name
        assert config_to_hf(config)["rope_parameters"]["rope_type"] == hf_type


def test_unknown_hf_rope_type_is_a_clear_error():
    cfg = config_to_hf(TransformerConfig.tiny())
    cfg["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 1e4, "factor": 2.0}
    with pytest.raises(ValueError, match=r"config.json.*must be one of none, linear, ntk, yarn; got 'longrope'"):
        config_from_hf(cfg)


def test_resolved_scaling_defaults_the_original_context():
    c = TransformerConfig.tiny()
    assert c.resolved_rope_scaling is None
    c.rope_scaling = {"type": "yarn", "factor": 4.0}
    assert c.resolved_rope_scaling["original_max_position_embeddings"] == c.max_seq_length
    c.rope_scaling = {"type": "linear", "factor": 2.0}
    assert "original_max_position_embeddings" not in c.resolved_rope_scaling


@pytest.mark.parametrize("scaling", [{"type": "yarn", "factor": 4.0, "beta_fast": 16.0},
                                     {"type": "yarn", "factor": 8.0, "mscale": 1.0, "mscale_all_dim": 0.5,
                                      "truncate": False},
                                     {"type": "ntk", "factor": 2.0}, {"type": "linear", "factor": 3.0}])
def test_tables_from_the_config_form_equal_tables_from_hf_names(scaling):
    c = TransformerConfig.tiny().replace(rope_scaling=scaling)
    hf = {**c.resolved_rope_scaling, "rope_type": {"ntk": "dynamic"}.get(scaling["type"], scaling["type"])}
    hf.pop("type")
    a = rope_tables(c.resolved_head_dim, 300, c.rope_theta, c.resolved_rope_scaling)
    b = rope_tables(c.resolved_head_dim, 300, c.rope_theta, hf)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("given, normalised", [
    (None, None),
    ({}, None),
    ({"rope_type": "default", "factor": 2.0}, None),
    ({"type": "linear", "factor": 2, "original_max_position_embeddings": 64, "beta_fast": 8.0},
     {"type": "linear", "factor": 2.0}),
    ({"rope_type": "dynamic", "factor": 2.0, "max_position_embeddings": 100},
     {"type": "ntk", "factor": 2.0, "original_max_position_embeddings": 100}),
    ({"type": "yarn", "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "alpha": 2.0,
      "beta": 16.0},
     {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 16.0, "beta_slow": 2.0,
      "attention_factor": None, "mscale": None, "mscale_all_dim": None, "truncate": True}),
])
def test_every_spelling_normalises_to_one_form(given, normalised):
    assert _C.normalize_rope_scaling(given) == normalised
    # the config reads it the same way, and its resolved form is what the tables take
    assert TransformerConfig.tiny().replace(rope_scaling=given).resolved_rope_scaling == normalised


def test_keys_another_type_uses_are_dropped_so_the_config_round_trips(tmp_path):
    c = TransformerConfig.tiny().replace(rope_scaling={"type": "linear", "factor": 2.0, "beta_fast": 16.0,
                                                       "original_max_position_embeddings": 64})
    assert c.rope_scaling == {"type": "linear", "factor": 2.0}
    assert TransformerConfig.from_dict(c.to_dict()) == c
    c.save_yaml(tmp_path / "c.yaml")
    assert TransformerConfig.from_yaml(tmp_path / "c.yaml") == c


def test_yarn_keys_of_hf_survive_the_config_and_its_file(tmp_path):
    scaling = {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64, "beta_fast": 32.0,
               "beta_slow": 1.0, "attention_factor": 1.2, "mscale": 1.0, "mscale_all_dim": 0.5, "truncate": False}
    c = TransformerConfig.tiny().replace(rope_scaling=scaling)
    assert c.rope_scaling == scaling
    c.save_yaml(tmp_path / "c.yaml")
    assert TransformerConfig.from_yaml(tmp_path / "c.yaml") == c


def test_hf_import_keeps_yarn_mscale_and_drops_keys_hf_ignores():
    base = config_to_hf(TransformerConfig.tiny())
    base["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "mscale": 0.7,
                               "mscale_all_dim": 0.7, "finetuned": True}
    c = config_from_hf(base)
    assert c.rope_scaling["mscale"] == 0.7 and c.rope_scaling["mscale_all_dim"] == 0.7
    assert config_to_hf(c)["rope_parameters"]["mscale"] == 0.7


@pytest.mark.parametrize("scaling, match", [
    ({"type": "yarn", "factor": 4.0, "attention_factor": 0}, r"rope_scaling.attention_factor must be > 0, got 0.0"),
    ({"type": "yarn", "factor": 4.0, "beta_slow": -1}, r"rope_scaling.beta_slow must be > 0, got -1.0"),
    ({"type": "ntk", "factor": 2.0, "original_max_position_embeddings": 0},
     r"rope_scaling.original_max_position_embeddings must be > 0 \(the context length the model was trained at\)"),
    ({"type": "ntk", "factor": 2.0, "max_position_embeddings": 8, "original_max_position_embeddings": 8},
     r"rope_scaling.max_position_embeddings repeats 'original_max_position_embeddings': give one of them"),
    ({"type": "yarn", "factor": 2.0, "truncate": "maybe"}, r"rope_scaling.truncate must be true or false"),
    ({"type": "yarn", "factor": 2.0, "seq_len": 8}, r"unknown key 'rope_scaling.seq_len'"),
])
def test_the_config_refuses_bad_scalings_naming_the_key(scaling, match):
    with pytest.raises(ConfigError, match=match):
        TransformerConfig.tiny().replace(rope_scaling=scaling)
