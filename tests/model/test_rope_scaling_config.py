"""rope_scaling is normalised once, by the config's parser; the tables and HF mapping take that form."""
import pytest
import torch

from kr_mini_llm import TransformerConfig
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
                                     {"type": "ntk", "factor": 2.0}, {"type": "linear", "factor": 3.0}])
def test_tables_from_the_config_form_equal_tables_from_hf_names(scaling):
    c = TransformerConfig.tiny().replace(rope_scaling=scaling)
    hf = {**c.resolved_rope_scaling, "rope_type": {"ntk": "dynamic"}.get(scaling["type"], scaling["type"])}
    hf.pop("type")
    a = rope_tables(c.resolved_head_dim, 300, c.rope_theta, c.resolved_rope_scaling)
    b = rope_tables(c.resolved_head_dim, 300, c.rope_theta, hf)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
