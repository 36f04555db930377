"""A tiny tokenized corpus and configs for trainer tests (made by the tests, a few seconds)."""
import pytest

from kr_mini_llm import TransformerConfig
from kr_mini_llm.training import TrainingConfig


@pytest.fixture()
def model_config():
    return TransformerConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                             intermediate_size=128, max_seq_length=64)


@pytest.fixture()
def train_config(token_data, tmp_path):
    tokens, tok = token_data
    return TrainingConfig.from_dict({
        "device": "cpu", "seed": 5, "output_dir": str(tmp_path / "run"),
        "train": {"batch_size": 4, "gradient_accumulation_steps": 2, "max_seq_length": 32, "learning_rate": 3e-3,
                  "min_learning_rate": 3e-4, "warmup_steps": 5, "max_steps": 20, "log_steps": 1, "eval_steps": 10,
                  "eval_batches": 4, "save_steps": 10, "keep_checkpoints": 5, "sample_max_new_tokens": 8},
        "data": {"tokens": str(tokens), "tokenizer": tok},
    })
