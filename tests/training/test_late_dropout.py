"""train.dropout_after_epochs: the model's dropout only once a run has seen its data that many times."""
import pytest
import torch

from kr_mini_llm import ConfigError, Transformer, TransformerConfig
from kr_mini_llm.training import Trainer, TrainingConfig
from kr_mini_llm.training.optim import dropout_at


def section(**train):
    return TrainingConfig.from_dict({"train": train}).train


def test_dropout_starts_at_its_pass():
    t = section(dropout_after_epochs=2.5)
    assert [dropout_at(t, 0.2, e) for e in (0.0, 1.0, 2.49, 2.5, 7.0)] == [0.0, 0.0, 0.0, 0.2, 0.2]
    assert dropout_at(section(), 0.2, 0.0) == 0.2, "0 passes (the default): from the first step"


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan")])
def test_bad_values_are_named(bad):
    with pytest.raises(ConfigError, match="train.dropout_after_epochs must be a number of passes >= 0"):
        section(dropout_after_epochs=bad)


def test_set_dropout_changes_the_rate_not_the_config(model_config):
    model = Transformer(model_config.replace(dropout=0.0)).train()
    ids = torch.randint(0, model_config.vocab_size, (2, 16))
    assert torch.equal(model(ids), model(ids)), "no dropout: a deterministic forward"
    model.set_dropout(0.5)
    assert not torch.equal(model(ids), model(ids))
    assert model.config.dropout == 0.0 and all(layer.dropout == 0.5 for layer in model.layers)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        model.set_dropout(1.0)


def _rates(model_config, train_config, after, stop_after=None, resume=False):
    """(step, dropout rate of that step, passes seen before it) for each step of a pretraining run."""
    config = train_config.with_overrides([f"train.dropout_after_epochs={after}"])
    trainer = Trainer(model_config.replace(dropout=0.3), config, show_progress=False,
                      resume_from=config.output_dir if resume else None)
    rows = []
    after_step = trainer.task.after_step

    def record(run, loss):
        rows.append((run.step, run.model.dropout, run.state["tokens_seen"] / run._train_tokens))
        after_step(run, loss)

    trainer.task.after_step = record
    trainer.train(stop_after=stop_after)
    trainer.close()
    return rows


def test_a_run_turns_dropout_on_after_its_passes_and_resumes_so(model_config, train_config):
    from kr_mini_llm.data.datasets import TokenShards

    train_tokens = TokenShards(train_config.data.tokens, "train").num_tokens
    after = 7.5 * (4 * 2 * 32) / train_tokens  # dropout from the 9th of 20 steps (batch 4, accumulation 2, 32 tokens)
    rows = _rates(model_config, train_config, after)
    assert [rate for _, rate, _ in rows] == [0.0] * 8 + [0.3] * 12
    for step, rate, passes in rows:
        assert rate == (0.3 if passes >= after else 0.0), (step, passes)
    # Stopped after dropout started and resumed: the same rate at every step as the whole run.
    parts_config = train_config.with_overrides([f"output_dir={train_config.output_dir}_parts"])
    parts = _rates(model_config, parts_config, after, stop_after=11)
    parts += _rates(model_config, parts_config, after, resume=True)
    assert [r[:2] for r in parts] == [r[:2] for r in rows]


def test_before_its_pass_a_run_is_the_run_without_dropout(model_config, train_config):
    """Until dropout starts, a model configured with it trains to the same bits as one without: the
    switched-off rate draws no random numbers."""
    config = train_config.with_overrides(["train.max_steps=6", "train.eval_steps=1000", "train.save_steps=1000"])
    late = config.with_overrides(["train.dropout_after_epochs=1000", f"output_dir={config.output_dir}_late"])
    weights = []
    for cfg, dropout in ((config, 0.0), (late, 0.3)):
        trainer = Trainer(model_config.replace(dropout=dropout), cfg, show_progress=False)
        trainer.train()
        weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        trainer.close()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_train_dropout_is_the_runs_rate_over_the_model_configs():
    t = section(dropout=0.25, dropout_after_epochs=1.0)
    assert [dropout_at(t, 0.1, e) for e in (0.5, 1.0)] == [0.0, 0.25]
    assert dropout_at(section(dropout=0.0), 0.3, 5.0) == 0.0, "0 turns the model config's dropout off"
    with pytest.raises(ConfigError, match=r"train.dropout must be in \[0, 1\)"):
        section(dropout=1.0)


def test_a_run_with_train_dropout_drops_at_that_rate_and_saves_the_model_configs(model_config, train_config):
    from kr_mini_llm.data.datasets import TokenShards

    train_tokens = TokenShards(train_config.data.tokens, "train").num_tokens
    after = 7.5 * (4 * 2 * 32) / train_tokens
    config = train_config.with_overrides(["train.dropout=0.15"])
    rows = _rates(model_config.replace(dropout=0.3), config, after)
    assert [rate for _, rate, _ in rows] == [0.0] * 8 + [0.15] * 12
    saved = TransformerConfig.from_yaml(f"{config.output_dir}/model_config.yaml")
    assert saved.dropout == 0.3
