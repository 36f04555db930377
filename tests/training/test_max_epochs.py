"""train.max_epochs: a budget in passes over the training tokens, which ends the run annealed like
max_steps (the schedule is keyed to the steps those passes take)."""
import dataclasses
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kr_mini_llm import ConfigError
from kr_mini_llm.data.datasets import TokenShards
from kr_mini_llm.training import Trainer, TrainingConfig
from kr_mini_llm.training.optim import run_max_steps


def section(**train):
    return TrainingConfig.from_dict({"train": train}).train


@settings(max_examples=200, deadline=None)
@given(epochs=st.floats(1e-3, 50.0), train_tokens=st.integers(1, 10**7), step_tokens=st.integers(1, 10**5),
       max_steps=st.integers(1, 10**6))
def test_the_step_budget_is_the_first_step_that_completes_the_passes(epochs, train_tokens, step_tokens, max_steps):
    t = section(max_epochs=epochs, max_steps=max_steps)
    steps = run_max_steps(t, train_tokens, step_tokens)
    assert 1 <= steps <= max_steps
    if steps < max_steps and steps > 1:
        # the steps before the last one have not yet seen the passes; the last one has (up to float rounding)
        assert (steps - 1) * step_tokens < epochs * train_tokens * (1 + 1e-9)
        assert steps * step_tokens >= epochs * train_tokens * (1 - 1e-9)


def test_without_max_epochs_the_budget_is_max_steps():
    assert run_max_steps(section(max_steps=37), None, 64) == 37
    assert run_max_steps(section(max_steps=37, max_epochs=1.5), 640, 64) == 15  # 960 tokens in 64-token steps
    assert run_max_steps(section(max_steps=10, max_epochs=1.5), 640, 64) == 10  # max_steps comes first


def test_a_run_that_does_not_count_its_tokens_refuses_max_epochs():
    with pytest.raises(ConfigError, match="train.max_epochs counts passes over the training tokens"):
        run_max_steps(section(max_epochs=2.0), None, 64)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_values_are_named(bad):
    with pytest.raises(ConfigError, match="train.max_epochs must be a number of passes > 0"):
        section(max_epochs=bad)


def _train(model_config, config, stop_after=None, resume=False):
    trainer = Trainer(model_config, config, show_progress=False, resume_from=config.output_dir if resume else None)
    result = trainer.train(stop_after=stop_after)
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.close()
    rows = [json.loads(line) for line in open(f"{config.output_dir}/metrics.jsonl", encoding="utf-8")]
    return result, weights, {r["step"]: r["lr"] for r in rows if "lr" in r}


def test_a_pass_budget_is_the_step_budget_of_its_passes(model_config, train_config):
    """max_epochs = 1.3 passes ends the run where max_steps = the steps of 1.3 passes would, with the
    same rates and the same weights to the bit: annealed as it ends, however long max_steps is."""
    train_tokens = TokenShards(train_config.data.tokens, "train").num_tokens
    step_tokens = 4 * 2 * 32  # batch 4, accumulation 2, 32 tokens
    epochs = 1.3
    steps = math.ceil(epochs * train_tokens / step_tokens)
    assert 5 < steps < 200, "the fixture's corpus should take a handful of steps a pass"
    config = train_config.with_overrides(["train.max_steps=1000", f"train.max_epochs={epochs}",
                                          "train.eval_steps=1000", "train.save_steps=1000"])
    by_steps = train_config.with_overrides([f"train.max_steps={steps}", "train.eval_steps=1000", "train.save_steps=1000",
                                            f"output_dir={train_config.output_dir}_steps"])
    result, weights, lrs = _train(model_config, config)
    want, want_weights, want_lrs = _train(model_config, by_steps)
    assert result["stop_reason"] == "max_epochs" and result["step"] == steps
    assert result["tokens_seen"] >= epochs * train_tokens > result["tokens_seen"] - step_tokens
    assert lrs == want_lrs and all(torch.equal(weights[k], want_weights[k]) for k in weights)
    t = dataclasses.replace(config.train, max_steps=steps)
    assert lrs[steps] < t.min_learning_rate + 0.1 * (t.learning_rate - t.min_learning_rate), "annealed at the end"


def test_a_pass_budget_resumes_to_the_same_end(model_config, train_config):
    config = train_config.with_overrides(["train.max_steps=1000", "train.max_epochs=1.3", "train.eval_steps=1000",
                                          "train.save_steps=1000"])
    whole, weights, lrs = _train(model_config, config)
    parts = config.with_overrides([f"output_dir={train_config.output_dir}_parts"])
    _train(model_config, parts, stop_after=4)
    resumed, parts_weights, parts_lrs = _train(model_config, parts, resume=True)
    assert resumed["step"] == whole["step"] and resumed["stop_reason"] == "max_epochs"
    assert parts_lrs == lrs and all(torch.equal(weights[k], parts_weights[k]) for k in weights)


def test_a_pass_budget_inside_warmup_is_refused_before_anything_is_written(model_config, train_config):
    from pathlib import Path

    config = train_config.with_overrides(["train.max_epochs=0.01", "train.warmup_steps=5"])
    with pytest.raises(ConfigError, match=r"train.max_epochs=0.01 passes end the run at step \d+, within its "
                                          r"train.warmup_steps=5; raise max_epochs or lower warmup_steps"):
        Trainer(model_config, config, show_progress=False)
    assert not Path(config.output_dir).exists() or not any(Path(config.output_dir).iterdir())


def test_the_overfit_check_ignores_pass_budgets_and_dropout(train_config):
    from kr_mini_llm.training.overfit import overfit_config

    config = train_config.with_overrides(["train.max_epochs=2", "train.dropout=0.3", "train.dropout_after_epochs=1"])
    t = overfit_config(config).train
    assert t.max_epochs is None and t.dropout == 0.0 and t.dropout_after_epochs == 0.0
