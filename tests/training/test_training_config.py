from pathlib import Path

import pytest

from kr_mini_llm import ConfigError
from kr_mini_llm.training import TrainingConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["training", "training_m4max", "training_m4max_large", "training_demo"])
def test_shipped_training_configs_load(name):
    c = TrainingConfig.from_yaml(CONFIGS / f"{name}.yaml")
    assert c.train.batch_size > 0


def test_nested_layout_of_seed_000():
    c = TrainingConfig.from_yaml(CONFIGS / "training_m4max.yaml")
    assert c.device == "mps"
    assert (c.train.batch_size, c.train.gradient_accumulation_steps, c.train.max_seq_length) == (16, 4, 2048)
    assert c.train.learning_rate == 2e-4 and c.train.mixed_precision and c.train.compile_model
    assert c.check_effective_batch(1) == 64


def test_flat_legacy_layout_of_seed_001():
    c = TrainingConfig.from_yaml(CONFIGS / "training.yaml")
    assert (c.train.batch_size, c.train.gradient_accumulation_steps) == (4, 8)
    assert c.train.learning_rate == 3e-4  # "3e-4": a float, though PyYAML would read a string
    assert c.train.mixed_precision and c.train.precision == "auto"  # fp16: true
    assert (c.train.warmup_steps, c.train.save_steps, c.train.eval_steps) == (2000, 5000, 1000)


def test_overrides_are_typed_and_checked():
    c = TrainingConfig.from_yaml(CONFIGS / "training_demo.yaml")
    d = c.with_overrides(["train.max_steps=20", "device=cpu", "train.learning_rate=1e-4", "seed=7"])
    assert (d.train.max_steps, d.train.learning_rate, d.seed) == (20, 1e-4, 7)
    assert c.train.max_steps != 20
    with pytest.raises(ConfigError, match="did you mean 'train.max_steps'"):
        c.with_overrides(["train.max_stpes=3"])
    with pytest.raises(ConfigError, match="train.max_steps must be an integer"):
        c.with_overrides(["train.max_steps=many"])
    with pytest.raises(ConfigError, match="is not key=value"):
        c.with_overrides(["train.max_steps"])


def test_save_and_reload(tmp_path):
    c = TrainingConfig.from_yaml(CONFIGS / "training_demo.yaml")
    c.save_yaml(tmp_path / "config.yaml")
    assert TrainingConfig.from_yaml(tmp_path / "config.yaml") == c


@pytest.mark.parametrize("text, match", [
    ("train:\n  batch_siz: 4\n", r"x.yaml:2: unknown key 'train.batch_siz' \(did you mean 'train.batch_size'\?\)"),
    ("devic: cpu\n", r"x.yaml:1: unknown key 'devic' \(did you mean 'device'\?\)"),
    ("train:\n  batch_size: four\n", r"x.yaml:2: train.batch_size must be an integer, got 'four'"),
    ("train:\n  mixed_precision: maybe\n", r"x.yaml:2: train.mixed_precision must be true or false"),
    ("train:\n  batch_size: 0\n", r"train.batch_size must be > 0"),
    ("train:\n  muon_ns_steps: 0\n", r"train.muon_ns_steps must be >= 1, got 0"),
    ("train:\n  lr_schedule: step\n", r"train.lr_schedule must be one of cosine, linear, wsd, constant"),
    ("device: tpu\n", r"device must be auto, cpu, cuda, cuda:N or mps"),
    ("batch_size: 4\ntrain:\n  batch_size: 8\n", r"'batch_size' is given both at the top level and under train"),
    ("train: [1, 2]\n", r"x.yaml:1: train must be a mapping"),
])
def test_bad_files_name_file_line_and_key(tmp_path, text, match):
    (tmp_path / "x.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        TrainingConfig.from_yaml(tmp_path / "x.yaml")


def test_effective_batch_mismatch():
    c = TrainingConfig.from_yaml(CONFIGS / "training_m4max.yaml")
    with pytest.raises(ConfigError, match=r"effective_batch_size is 64 but .* 16 x 4 x 2 = 128"):
        c.check_effective_batch(2)
