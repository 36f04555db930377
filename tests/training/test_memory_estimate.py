"""TransformerConfig.estimate_memory against the allocator's measured peak of real training steps,
the OOM advice built on it, and scripts/train.py --estimate_memory / --overfit_batch."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kr_mini_llm import TransformerConfig
from kr_mini_llm.training import TrainingConfig
from kr_mini_llm.training.memory import training_step_peak_bytes
from kr_mini_llm.training.memory_advice import memory_advice

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(vocab_size=512, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=344,
             max_seq_length=256)


@pytest.mark.parametrize("config, batch, seq, precision, checkpointing", [
    (TransformerConfig.from_yaml(ROOT / "configs/model_tiny.yaml"), 4, 64, "fp32", False),
    (TransformerConfig(**SMALL), 4, 128, "bf16", True),
    (TransformerConfig(**{**SMALL, "qk_norm": True, "tie_word_embeddings": True, "num_kv_heads": 1}), 4, 96,
     "bf16", False),
], ids=["tiny-fp32", "small-bf16-checkpointing", "qknorm-tied-bf16"])
def test_estimate_within_15_percent_of_measured_peak(config, batch, seq, precision, checkpointing):
    est = config.estimate_memory(batch, seq, precision, "adamw", checkpointing)
    measured = training_step_peak_bytes(config, batch, seq, precision, checkpointing)
    assert abs(est.total_bytes - measured) <= 0.15 * measured, (est.total_bytes / 2**20, measured / 2**20)
    # the parts: parameters, gradients and AdamW state are exact multiples of the parameter count
    P = config.num_parameters
    assert est.gradients == 4 * P and est.optimizer == 8 * P
    assert est.parameters == 4 * P if precision == "fp32" else est.parameters > 4 * P
    assert "activations" in str(est) and "peak of a step" in str(est)


def test_estimate_responds_to_each_knob():
    c = TransformerConfig(**SMALL)
    base = c.estimate_memory(8, 256, "fp32")
    assert c.estimate_memory(16, 256, "fp32").activations > 1.9 * base.activations
    assert c.estimate_memory(8, 256, "fp32", gradient_checkpointing=True).total_bytes < base.total_bytes
    assert c.estimate_memory(8, 256, "bf16").activations < base.activations
    assert c.estimate_memory(8, 256, "fp32", optimizer="sgd").optimizer == 0
    with pytest.raises(ValueError, match="precision must be one of"):
        c.estimate_memory(8, 256, "int4")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        c.estimate_memory(8, 256, optimizer="lion")
    with pytest.raises(ValueError, match="exceeds the model's max_seq_length"):
        c.estimate_memory(8, 4096)


def test_advice_applies_remedies_in_order_until_it_fits():
    c = TransformerConfig.medium()
    t = TrainingConfig.from_dict({"train": {"batch_size": 16, "gradient_accumulation_steps": 4,
                                            "max_seq_length": 1024}}).train
    need = c.estimate_memory(16, 1024, "fp32").total_bytes
    assert memory_advice(c, t, torch.device("cpu"), need) is None
    after_halving = c.estimate_memory(8, 1024, "fp32").total_bytes
    advice = memory_advice(c, t, torch.device("cpu"), after_halving)
    assert "batch_size: 16 → 8" in advice and "gradient_accumulation_steps: 4 → 8" in advice
    assert "--set train.batch_size=8 --set train.gradient_accumulation_steps=8" in advice
    assert "gradient_checkpointing" not in advice          # stops at the first remedy that fits
    advice = memory_advice(c, t, torch.device("cpu"), c.estimate_memory(8, 1024, "fp32", "adamw", True).total_bytes)
    assert "--set train.gradient_checkpointing=true" in advice
    advice = memory_advice(c, t, torch.device("cpu"), 1 << 20)
    assert "choose a smaller model config" in advice


def _train_script(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "scripts/train.py"), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def test_train_script_estimate_memory():
    r = _train_script("--config", "configs/training.yaml", "--model_config", "configs/model_small.yaml",
                      "--estimate_memory", "--set", "device=cpu")
    assert r.returncode == 0, r.stderr
    assert "optimizer state" in r.stdout and "activations" in r.stdout and "available on cpu" in r.stdout


def test_overfit_batch_drives_loss_near_zero(token_data, tmp_path):
    tokens, tok = token_data
    r = _train_script("--config", "configs/training_demo.yaml", "--model_config", "configs/model_tiny.yaml",
                      "--overfit_batch", "--overfit_steps", "60", "--no_progress", "--output_dir", str(tmp_path / "o"),
                      "--set", "train.batch_size=2", "--set", "train.max_seq_length=32", "--set", "threads=1",
                      "--set", "train.mixed_precision=false", "--set", f"data.tokens={tokens}",
                      "--set", f"data.tokenizer={tok}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    line = next(l for l in r.stdout.splitlines() if "overfit one batch" in l)
    first, last = (float(v) for v in line.split("loss ")[1].split(" in ")[0].split(" → "))
    assert first > 5 and last < 0.1, line
