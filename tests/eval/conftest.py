"""A small trained checkpoint (vocab 512, two layers) on the shared tiny corpus, for the evaluation tests."""
import pytest

from kr_mini_llm import TransformerConfig
from kr_mini_llm.training import Trainer, TrainingConfig


@pytest.fixture(scope="session")
def eval_checkpoint(token_data, tmp_path_factory):
    tokens, tok = token_data
    out = tmp_path_factory.mktemp("eval_run")
    model_config = TransformerConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                     intermediate_size=128, max_seq_length=256)
    config = TrainingConfig.from_dict({
        "device": "cpu", "seed": 3, "output_dir": str(out),
        "train": {"batch_size": 4, "max_seq_length": 64, "learning_rate": 3e-3, "warmup_steps": 2, "max_steps": 12,
                  "log_steps": 100, "eval_steps": 12, "eval_batches": 1, "save_steps": 12, "sample_prompts": []},
        "data": {"tokens": str(tokens), "tokenizer": tok},
    })
    Trainer(model_config, config, show_progress=False).train()
    return out
