import json
import math

import pytest
import torch

from kr_mini_llm.training import CheckpointError, Trainer, TrainingStopped, load_checkpoint
from kr_mini_llm.checkpoint import list_checkpoints
from kr_mini_llm.training.optim import learning_rate


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_short_run_learns_and_writes_everything(model_config, train_config):
    from kr_mini_llm.inference import Generator

    out = train_config.output_dir
    result = Trainer(model_config, train_config, show_progress=False,
                     sampler=Generator.sample_during_training).train()
    run = __import__("pathlib").Path(out)
    curve = losses(run)
    assert result["step"] == 20 and result["stop_reason"] == "max_steps"
    assert sum(list(curve.values())[-5:]) / 5 < sum(list(curve.values())[:5]) / 5 - 0.3  # it learns
    assert math.isfinite(result["val_loss"]) and result["val_bpb"] > 0
    assert abs(result["val_ppl"] - math.exp(result["val_loss"])) < 1e-6 * result["val_ppl"]
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-10", "checkpoint-20"]
    ck = run / "checkpoint-20"
    for name in ("model.safetensors", "optimizer.pt", "rng.pt", "trainer_state.json", "config.yaml",
                 "model_config.yaml", "tokenizer.model"):
        assert (ck / name).exists(), name
    assert (run / "loss_curve.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "tokens_per_sec"} <= set(rows[0])
    assert any("val_loss" in r and "val_bpb" in r for r in rows)
    assert result["sample"].startswith(train_config.train.sample_prompts[0])


def test_the_trainer_applies_the_host_memory_rule(model_config, train_config, monkeypatch):
    """Before the first step, with the run's device and precision (host_memory.for_training)."""
    from kr_mini_llm import host_memory

    calls = []
    monkeypatch.setattr(host_memory, "for_training", lambda device, amp: calls.append((device.type, amp)))
    trainer = Trainer(model_config, train_config, show_progress=False)
    assert calls == [("cpu", trainer.amp_dtype)]


def test_resume_gives_the_same_losses(model_config, train_config, tmp_path):
    full = train_config.replace(output_dir=str(tmp_path / "full"))
    Trainer(model_config, full, show_progress=False).train()
    half = train_config.replace(output_dir=str(tmp_path / "half"))
    assert Trainer(model_config, half, show_progress=False).train(stop_after=7)["step"] == 7
    rest = train_config.replace(output_dir=str(tmp_path / "half"))
    Trainer(model_config, rest, resume_from=tmp_path / "half", show_progress=False).train()
    a, b = losses(tmp_path / "full"), losses(tmp_path / "half")
    assert sorted(a) == sorted(b)
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-6, abs=1e-6), step


def test_lr_schedule_warmup_then_cosine(train_config):
    t = train_config.train
    lrs = [learning_rate(s, t) for s in range(t.max_steps)]
    assert lrs[0] == pytest.approx(t.learning_rate / t.warmup_steps)
    assert lrs[t.warmup_steps - 1] == pytest.approx(t.learning_rate)
    assert all(a >= b for a, b in zip(lrs[t.warmup_steps:], lrs[t.warmup_steps + 1:]))
    assert learning_rate(t.max_steps, t) == pytest.approx(t.min_learning_rate)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(model_config, train_config, monkeypatch):
    trainer = Trainer(model_config, train_config, show_progress=False)
    real = trainer._train_step
    calls = {"n": 0}

    def step():
        calls["n"] += 1
        return float("nan") if calls["n"] == 13 else real()

    monkeypatch.setattr(trainer, "_train_step", step)
    with pytest.raises(TrainingStopped, match="loss is nan at step 13"):
        trainer.train()
    run = __import__("pathlib").Path(train_config.output_dir)
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-10"]


def test_interrupted_save_leaves_previous_checkpoint(model_config, train_config, monkeypatch):
    trainer = Trainer(model_config, train_config, show_progress=False)
    train_config.train.max_steps = 10
    trainer.train()
    run = __import__("pathlib").Path(train_config.output_dir)
    import kr_mini_llm.training.run_checkpoint as ckpt

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    trainer.step = 15
    with pytest.raises(CheckpointError, match="writing checkpoint-15 to .* failed .*disk full.* earlier checkpoints are kept"):
        trainer.save()
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-10"]
    assert not list(run.glob(".checkpoint-*"))  # the partial directory is gone
    model = type(trainer.model)(model_config)
    assert load_checkpoint(run, model)["step"] == 10


def test_corrupted_checkpoint_is_a_clear_error(model_config, train_config):
    train_config.train.max_steps = 10
    trainer = Trainer(model_config, train_config, show_progress=False)
    trainer.train()
    ck = __import__("pathlib").Path(train_config.output_dir) / "checkpoint-10"
    (ck / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors does not match the checksum recorded"):
        load_checkpoint(ck, type(trainer.model)(model_config))
    (ck / "checksums.json").unlink()  # without checksums, the file's own reader says what is wrong
    with pytest.raises(CheckpointError, match="model.safetensors cannot be loaded"):
        load_checkpoint(ck, type(trainer.model)(model_config))
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_checkpoint(ck.parent / "nothing", type(trainer.model)(model_config))


def test_config_mismatches_are_clear(model_config, train_config):
    bad = train_config.replace()
    bad.train.max_seq_length = 128
    with pytest.raises(ValueError, match="exceeds the model's max_seq_length"):
        Trainer(model_config, bad, show_progress=False)
    small = model_config.replace(vocab_size=100)
    with pytest.raises(ValueError, match="the tokenizer has 512 tokens but the model's vocab_size is 100"):
        Trainer(small, train_config, show_progress=False)
    missing = train_config.replace(data=type(train_config.data)(tokens="/no/such/dir", tokenizer=train_config.data.tokenizer))
    with pytest.raises((FileNotFoundError, ValueError), match="/no/such/dir"):
        Trainer(model_config, missing, show_progress=False)


def test_existing_checkpoints_are_not_silently_mixed(model_config, train_config):
    Trainer(model_config, train_config, show_progress=False).train(stop_after=10)
    with pytest.raises(ValueError, match="already holds checkpoints .* --overwrite_output_dir"):
        Trainer(model_config, train_config, show_progress=False)
    fresh = Trainer(model_config, train_config, show_progress=False, overwrite=True)
    assert fresh.step == 0 and list_checkpoints(train_config.output_dir) == []
