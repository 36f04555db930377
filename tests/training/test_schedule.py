"""The learning-rate schedule keyed to steps or to time, whichever budget ends the run: every run
ends annealed, on a fast CPU (max_steps ends it) and on a slow one (max_time_minutes does)."""
import itertools
import json
import math
from pathlib import Path

import pytest

from kr_mini_llm.training import Trainer, TrainingConfig
from kr_mini_llm.training.optim import learning_rate, lr_factor, schedule_progress

ROOT = Path(__file__).resolve().parents[2]


def section(**train):
    base = {"learning_rate": 1e-3, "min_learning_rate": 1e-4, "warmup_steps": 10, "max_steps": 100}
    return TrainingConfig.from_dict({"train": {**base, **train}}).train


def test_step_keyed_cosine_is_the_usual_warmup_then_cosine():
    t = section()
    for step in range(t.warmup_steps, t.max_steps + 1):
        q = (step - t.warmup_steps) / (t.max_steps - t.warmup_steps)
        want = t.min_learning_rate + (t.learning_rate - t.min_learning_rate) * 0.5 * (1 + math.cos(math.pi * q))
        assert learning_rate(step, t) == pytest.approx(want, rel=1e-12), step
    assert learning_rate(0, t) == pytest.approx(t.learning_rate / t.warmup_steps)


def test_time_ends_the_schedule_when_it_runs_out_first():
    t = section(max_time_minutes=2.0)
    # Step 30 of 100 but 90 s of 120: the time fraction leads.
    assert schedule_progress(30, 90.0, t) == pytest.approx(0.75)
    assert schedule_progress(80, 30.0, t) == pytest.approx(0.8)
    assert learning_rate(30, t, elapsed_s=120.0) == pytest.approx(t.min_learning_rate)
    assert learning_rate(30, t, elapsed_s=500.0) == pytest.approx(t.min_learning_rate)
    assert learning_rate(30, t, elapsed_s=0.0) > 0.8 * t.learning_rate
    # Without a time limit, elapsed time is ignored.
    assert learning_rate(30, section(), elapsed_s=1e9) == learning_rate(30, section())


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd"])
def test_every_schedule_is_monotone_after_warmup_and_ends_at_the_floor(schedule):
    t = section(lr_schedule=schedule, max_time_minutes=1.0, decay_fraction=0.3)
    by_time = [learning_rate(20, t, elapsed_s=s) for s in range(0, 61)]
    assert all(a >= b for a, b in zip(by_time, by_time[1:]))
    assert by_time[-1] == pytest.approx(t.min_learning_rate)
    by_step = [learning_rate(s, t) for s in range(t.warmup_steps, t.max_steps + 1)]
    assert all(a >= b for a, b in zip(by_step, by_step[1:]))
    assert by_step[-1] == pytest.approx(t.min_learning_rate)


def test_wsd_holds_the_peak_then_decays_linearly_over_decay_fraction():
    t = section(lr_schedule="wsd", warmup_steps=0, decay_fraction=0.25)
    assert [lr_factor(s, t) for s in (0, 50, 75)] == [1.0, 1.0, 1.0]
    floor = t.min_learning_rate / t.learning_rate
    for s in (80, 90, 99):
        assert lr_factor(s, t) == pytest.approx(floor + (1 - floor) * (100 - s) / 25)


def test_bad_schedule_settings_are_named():
    from kr_mini_llm import ConfigError

    for bad, match in ((dict(decay_fraction=0.0), "decay_fraction"), (dict(lr_schedule="wsdd"), "lr_schedule"),
                       (dict(max_time_minutes=0.0), "max_time_minutes"), (dict(optimizer="sgd"), "optimizer"),
                       (dict(muon_learning_rate=-1.0), "muon_learning_rate")):
        with pytest.raises(ConfigError, match=match):
            section(**bad)


def test_warmup_ends_by_its_share_of_the_time_when_time_leads():
    t = section(max_time_minutes=10.0)  # warmup = 10 of 100 steps = the first 60 s
    assert lr_factor(0, t, elapsed_s=0.0) == pytest.approx(0.1)
    assert lr_factor(2, t, elapsed_s=30.0) == pytest.approx(0.5)       # half the time share leads 3 of 10 steps
    assert lr_factor(8, t, elapsed_s=6.0) == pytest.approx(0.9)        # the steps lead: as without a time limit
    assert lr_factor(3, t, elapsed_s=60.0) == pytest.approx(1.0)       # warmup over at step 3; decay starts at 0
    assert lr_factor(3, t, elapsed_s=600.0) == pytest.approx(t.min_learning_rate / t.learning_rate)
    rates = [lr_factor(3, t, elapsed_s=s) for s in range(0, 601, 5)]
    assert all(a <= b for a, b in zip(rates, rates[1:13])) and all(a >= b for a, b in zip(rates[12:], rates[13:]))
    # Without a time limit: exactly the step-keyed warmup, whatever the clock says.
    plain = section()
    assert [lr_factor(s, plain, elapsed_s=1e9) for s in range(10)] == [(s + 1) / 10 for s in range(10)]


# The CPU of the measurement the demo's time limit was set against: step 604 at 10 minutes at
# batch 16 with AdamW (the demo's batch 16 with Muon took 1.0-1.2 s a step on the 2-core AVX2
# EPYC of benchmarks/recipe_cpu_zen3.md, so this is a CPU of about that speed).
MEASURED_STEP_SECONDS = 600.0 / 604


def _demo_run(token_data, model_config, out, step_seconds, stop_after=None, resume=False):
    """training_demo.yaml's schedule on a simulated clock on which every step takes step_seconds;
    batch, length and evaluation are shrunk to the tiny model (which overfits the tiny corpus, so
    early stopping is put out of reach: the time limit is what must end the run)."""
    tokens, tok = token_data
    demo = TrainingConfig.from_yaml(ROOT / "configs" / "training_demo.yaml")
    config = demo.with_overrides([f"output_dir={out}", f"data.tokens={tokens}", f"data.tokenizer={tok}",
                                  "train.batch_size=2", "train.max_seq_length=16", "train.eval_batches=1",
                                  "train.log_steps=1", "train.early_stopping_patience=1000",
                                  "train.mixed_precision=false", "threads=1"])
    holder = {}
    trainer = Trainer(model_config, config, show_progress=False, resume_from=out if resume else None,
                      clock=lambda: holder["run"].step * step_seconds if "run" in holder else 0.0)
    holder["run"] = trainer
    result = trainer.train(stop_after=stop_after)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return demo.train, result, {r["step"]: r["lr"] for r in rows if "lr" in r}


@pytest.mark.parametrize("slowdown", [1, 4, 16])
def test_demo_ends_annealed_within_its_time_limit_on_slower_cpus(slowdown, token_data, model_config, tmp_path):
    """At the measured step time, 4x and 16x slower (where the run ends before warmup_steps): the
    time limit ends the run, and its last step trains at min_learning_rate."""
    step_seconds = slowdown * MEASURED_STEP_SECONDS
    t, result, lrs = _demo_run(token_data, model_config, tmp_path / "run", step_seconds)
    expected_steps = next(k for k in itertools.count(1) if k * step_seconds >= 60 * t.max_time_minutes)
    assert result["stop_reason"] == "max_time" and result["step"] == expected_steps
    if slowdown == 16:
        assert expected_steps < t.warmup_steps
    span = t.learning_rate - t.min_learning_rate
    # Annealed: the last step's rate within one step of the decay's end (the rate of a step is set
    # from the time before it, and a linear decay such as wsd's drops a step's share of the time
    # after warmup, over the decay's share of it, a step)...
    decay = (t.decay_fraction if t.lr_schedule == "wsd" else 1.0) * (1 - t.warmup_steps / t.max_steps)
    one_step = step_seconds / (60 * t.max_time_minutes) / decay
    assert lrs[expected_steps] <= t.min_learning_rate + span * max(0.01, 1.01 * one_step)
    assert lrs[expected_steps] < t.min_learning_rate + 0.15 * span
    # ...where a schedule keyed to steps alone would not be.
    assert learning_rate(expected_steps - 1, t) > t.min_learning_rate + 0.25 * span
    # The peak was reached on the way: warmup ended and the decay started from the top.
    assert max(lrs.values()) >= t.min_learning_rate + 0.95 * span


def test_time_keyed_warmup_resumes_exactly(token_data, model_config, tmp_path):
    """Stopped inside warmup on a slow clock and resumed: the same rates, step for step, as one run."""
    step_seconds = 16 * MEASURED_STEP_SECONDS
    _, whole, once = _demo_run(token_data, model_config, tmp_path / "whole", step_seconds)
    _demo_run(token_data, model_config, tmp_path / "parts", step_seconds, stop_after=5)
    _, parts, resumed = _demo_run(token_data, model_config, tmp_path / "parts", step_seconds, resume=True)
    assert parts["step"] == whole["step"] and resumed == once
