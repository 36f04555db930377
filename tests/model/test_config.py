import copy
import pickle
from pathlib import Path

import pytest
import torch

from kr_mini_llm import ConfigError, Transformer, TransformerConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PRESETS = ["tiny", "small", "medium", "large"]


def write(tmp_path, text, name="model.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", PRESETS)
def test_config_files_match_presets(name):
    assert TransformerConfig.from_yaml(CONFIGS / f"model_{name}.yaml") == getattr(TransformerConfig, name)()


def test_documents_yaml_loads_unchanged(tmp_path):
    # configs/model_medium.yaml in the flat form a user copies from a tutorial.
    text = ("vocab_size: 32000\nhidden_size: 1024\nnum_layers: 24\nnum_heads: 16\nnum_kv_heads: 4\n"
            "intermediate_size: 4096\nmax_seq_length: 2048\nrope_theta: 10000.0\ndropout: 0.1\n")
    c = TransformerConfig.from_yaml(write(tmp_path, text))
    assert (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads) == (1024, 24, 16, 4)
    assert c.rope_theta == 10000.0 and c.dropout == 0.1 and c.resolved_head_dim == 64


def test_seed_003_yarn_block_loads(tmp_path):
    text = ("hidden_size: 256\nnum_heads: 4\nrope_theta: 1000000.0\nrope_scaling:\n  type: yarn\n"
            "  factor: 4.0\n  original_max_position_embeddings: 32768\n  alpha: 1.0\n  beta: 32.0\n")
    c = TransformerConfig.from_yaml(write(tmp_path, text))
    assert c.rope_scaling == {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768,
                              "beta_fast": 32.0, "beta_slow": 1.0}


def test_round_trips(tmp_path):
    c = TransformerConfig.small().replace(qk_norm=True, head_dim=48, rms_norm_eps=1e-5,
                                          rope_scaling={"type": "linear", "factor": 2.0})
    assert TransformerConfig.from_dict(c.to_dict()) == c
    c.save_yaml(tmp_path / "c.yaml")
    assert TransformerConfig.from_yaml(tmp_path / "c.yaml") == c
    assert not (tmp_path / "c.yaml.tmp").exists()
    assert pickle.loads(pickle.dumps(c)) == c
    d = copy.deepcopy(c)
    d.num_layers = 3
    assert c.num_layers == 12 and d != c


def test_saved_yaml_reads_with_pyyaml(tmp_path):
    import yaml

    c = TransformerConfig.tiny()
    c.save_yaml(tmp_path / "c.yaml")
    assert yaml.safe_load((tmp_path / "c.yaml").read_text()) == {k: v for k, v in c.to_dict().items()
                                                                   if v is not None}


def test_keyword_construction_and_defaults():
    c = TransformerConfig(hidden_size=128, num_heads=4, num_layers=2)
    assert c.num_kv_heads == 4  # absent: plain multi-head attention
    assert c.vocab_size == 32000 and c.tie_word_embeddings and not c.qk_norm


def test_print_shows_the_summary():
    text = str(TransformerConfig.small())
    assert "hidden_size:         768" in text and "num_layers:          12" in text
    assert f"parameters:          {TransformerConfig.small().num_parameters}" in text


@pytest.mark.parametrize("text, match", [
    ("hidden_size: 768\nnum_layer: 12\n", r"model.yaml:2: unknown key 'num_layer' \(did you mean 'num_layers'\?\)"),
    ("hidden_size: 768\nnum_heads: twelve\n", r"model.yaml:2: num_heads must be an integer, got 'twelve'"),
    ("hidden_size: 768\nqk_norm: 3\n", r"model.yaml:2: qk_norm must be true or false"),
    ("dropout: high\n", r"model.yaml:1: dropout must be a number"),
    ("hidden_size: 768\nnum_layers: 0\n", r"model.yaml:2: num_layers must be > 0, got 0"),
    ("hidden_size: -5\n", r"model.yaml:1: hidden_size must be > 0"),
    ("hidden_size: 1000\nnum_heads: 12\n", r"model.yaml:2: num_heads \(12\) must divide hidden_size \(1000\)"),
    ("num_heads: 12\nnum_kv_heads: 5\n", r"model.yaml:2: num_kv_heads \(5\) must divide num_heads \(12\)"),
    ("rope_scaling:\n  type: yarn\n", r"rope_scaling.factor is required for rope_scaling type 'yarn'"),
    ("rope_scaling:\n  type: cubic\n  factor: 2\n", r"model.yaml:2: rope_scaling.type must be one of"),
    ("rope_scaling:\n  typ: linear\n", r"model.yaml:2: unknown key 'rope_scaling.typ' \(did you mean 'rope_scaling.type'\?\)"),
    ("hidden_size: [768]\n", r"model.yaml:1: hidden_size must be an integer, got a list"),
    ("hidden_size: 768\nhidden_size: 512\n", r"model.yaml:2: key 'hidden_size' is given twice"),
    ("hidden_size: 768\n  num_layers: 3\n", r"model.yaml:\d+: not valid YAML"),
    ("", r"model.yaml: the model config is empty"),
    ("- 1\n- 2\n", r"the config must be a mapping"),
    ("vocab_size: 100\neos_token_id: 100\n", r"eos_token_id must be in \[0, vocab_size=100\)"),
])
def test_bad_files_name_file_line_and_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        TransformerConfig.from_yaml(write(tmp_path, text))


def test_config_error_is_a_value_error_and_a_user_error():
    from kr_mini_llm.cli.command import is_user_error
    from kr_mini_llm.errors import ConfigError as ProjectConfigError, KrMiniLlmError

    assert ConfigError is ProjectConfigError
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, KrMiniLlmError)
    with pytest.raises(ConfigError) as e:  # raised by the C++ reader
        TransformerConfig.from_dict({"num_layer": 2})
    assert type(e.value) is ConfigError and "did you mean 'num_layers'" in str(e.value)
    assert is_user_error(e.value)  # by every command, also those that name no builtin (evaluate, export)


def test_missing_file():
    with pytest.raises(ConfigError, match="cannot open the model config file"):
        TransformerConfig.from_yaml("no/such/model.yaml")


def test_attribute_errors():
    c = TransformerConfig.tiny()
    with pytest.raises(AttributeError, match="did you mean 'num_layers'"):
        c.num_layer = 3
    with pytest.raises(TypeError, match="num_layers must be int, got 2.5"):
        c.num_layers = 2.5
    with pytest.raises(TypeError, match="qk_norm must be bool"):
        c.qk_norm = 1
    with pytest.raises(TypeError, match="did you mean 'hidden_size'"):
        TransformerConfig(hiden_size=3)
    c.num_heads = 7
    with pytest.raises(ConfigError, match="num_heads \\(7\\) must divide hidden_size"):
        c.validate()
    with pytest.raises(ConfigError, match="num_heads \\(7\\) must divide hidden_size"):
        Transformer(c)


def test_save_refuses_invalid_and_keeps_old_file(tmp_path):
    good = TransformerConfig.tiny()
    good.save_yaml(tmp_path / "c.yaml")
    before = (tmp_path / "c.yaml").read_text()
    bad = TransformerConfig.tiny()
    bad.num_kv_heads = 3
    with pytest.raises(ConfigError):
        bad.save_yaml(tmp_path / "c.yaml")
    assert (tmp_path / "c.yaml").read_text() == before
