"""Fault injection: a run is killed (kill -9 at seeded points of the save loop, SIGTERM), runs out of
room (RLIMIT_FSIZE), has its files flipped or replaced by malformed or malicious ones, or meets a
second run on its output directory. After each, the error is clear and the last complete
checkpoint still loads, resumes and generates.

One tiny run (checkpoints at steps 2 and 4) is made once; each test damages a copy of it.
"""
import json
import os
import pickle
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kr_mini_llm import ConfigError, Transformer, TransformerConfig
from kr_mini_llm.training import CheckpointError, Trainer, TrainingConfig, TrainingStopped, load_checkpoint
from kr_mini_llm.checkpoint import clean_leftovers, list_checkpoints
from kr_mini_llm.training.run_checkpoint import save_checkpoint
from kr_mini_llm.training.run_lock import RunLock, RunLockedError

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("fault_worker.py")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


class Payload:
    """Unpickling this runs a shell command that creates `marker`: the attack a checkpoint must not allow."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def setup(token_data, tmp_path_factory):
    tokens, tok = token_data
    root = tmp_path_factory.mktemp("faults")
    model = TransformerConfig(vocab_size=512, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                              intermediate_size=64, max_seq_length=32)
    config = TrainingConfig.from_dict({
        "device": "cpu", "seed": 3, "output_dir": str(root / "base"),
        "train": {"batch_size": 2, "max_seq_length": 16, "learning_rate": 1e-3, "warmup_steps": 1, "max_steps": 4,
                  "log_steps": 1, "eval_steps": 100, "eval_batches": 1, "save_steps": 2, "keep_checkpoints": 3,
                  "sample_prompts": []},
        "data": {"tokens": str(tokens), "tokenizer": tok}})
    model.save_yaml(root / "model.yaml")
    config.save_yaml(root / "train.yaml")
    Trainer(model, config, show_progress=False).train()
    return root, model, config


def copy_run(setup, tmp_path, name="run") -> Path:
    root, _, _ = setup
    out = tmp_path / name
    shutil.copytree(root / "base", out)
    return out


def assert_recovers(setup, run: Path) -> int:
    """The latest complete checkpoint in `run` loads, resumes one step (leaving no leftovers) and generates."""
    from kr_mini_llm.inference import Generator

    _, model, config = setup
    latest = list_checkpoints(run)[-1]
    step = load_checkpoint(latest, Transformer(model))["step"]
    cfg = config.replace(output_dir=str(run))
    cfg.train.max_steps = step + 1
    result = Trainer(model, cfg, resume_from=run, show_progress=False).train()
    assert result["step"] == step + 1
    assert list_checkpoints(run)[-1].name == f"checkpoint-{step + 1}"
    assert not list(run.glob(".checkpoint-*")) and not (run / ".lock").exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    loss_steps = [r["step"] for r in rows if "loss" in r]
    assert loss_steps == sorted(set(loss_steps))  # each step logged once
    text = Generator.from_pretrained(run, device="cpu").generate("오늘", max_new_tokens=3, seed=0)
    assert isinstance(text, str)
    return step


def run_worker(setup, out, *extra, env_extra=None, timeout=120):
    root, _, _ = setup
    args = [sys.executable, str(WORKER), "--config", str(root / "train.yaml"), "--model_config",
            str(root / "model.yaml"), "--output_dir", str(out), "--resume_from", str(out), "--no_progress", *extra]
    return subprocess.Popen(args, env={**ENV, **(env_extra or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def flip_byte(path: Path, offset: int, mask: int = 0x40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


# -- killed runs --------------------------------------------------------------------------------
def test_kill_9_at_seeded_points_of_the_save_loop_keeps_the_last_checkpoint(setup, tmp_path):
    """SIGKILL at the Nth call of a save step (weights, torch.save, checksums, renames, deletions),
    N and the step drawn from a seeded RNG; then the latest complete checkpoint loads and resumes."""
    rng = random.Random(14)
    targets = ["safetensors.torch.save_model", "torch.save", "kr_mini_llm.checkpoint.integrity.write_manifest",
               "os.replace", "shutil.rmtree"]
    for i in range(3):
        target, n = rng.choice(targets), rng.randint(1, 6)
        run = copy_run(setup, tmp_path, f"kill{i}")
        proc = run_worker(setup, run, "--set", "train.max_steps=12", "--set", "train.save_steps=1",
                          "--set", "train.keep_checkpoints=2", env_extra={"KR_FAULT_KILL_AT": f"{target}:{n}"})
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, (target, n, err)  # killed mid-run
        assert "Traceback" not in err
        assert assert_recovers(setup, run) >= 4, (target, n)


def test_kill_9_at_a_random_moment(setup, tmp_path):
    run = copy_run(setup, tmp_path)
    # Far more steps than can run before the kill, so the run is always alive when killed; its
    # checkpoints rotate (keep 3), so "some checkpoint at step >= 6 exists" is what is waited for.
    proc = run_worker(setup, run, "--set", "train.max_steps=1000000", "--set", "train.save_steps=1")
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not any(
            int(p.name.split("-")[1]) >= 6 for p in list_checkpoints(run)):
        time.sleep(0.05)
    time.sleep(random.Random(5).uniform(0.0, 0.3))
    assert proc.poll() is None, proc.communicate()[1]  # still running: the kill lands mid-run
    proc.kill()
    proc.communicate()
    assert (run / ".lock").exists()  # left behind by the killed run: stale, taken over below
    assert assert_recovers(setup, run) >= 6


def test_sigterm_saves_and_exits_and_a_second_run_is_refused_meanwhile(setup, tmp_path):
    _, model, config = setup
    run = copy_run(setup, tmp_path)
    proc = run_worker(setup, run, "--set", "train.max_steps=400", "--set", "train.save_steps=1000")
    deadline = time.time() + 60
    while time.time() < deadline and not ((run / "metrics.jsonl").exists()
                                          and '"step": 7' in (run / "metrics.jsonl").read_text()):
        time.sleep(0.05)
    with pytest.raises(RunLockedError, match=rf"in use by another run \(PID {proc.pid} on this machine"):
        Trainer(model, config.replace(output_dir=str(run)), resume_from=run, show_progress=False)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "terminated" in out and "Traceback" not in err
    saved = list_checkpoints(run)[-1]
    step = int(saved.name.split("-")[1])
    assert step >= 7 and step % 1000 != 0  # saved because of the signal, not the schedule
    assert assert_recovers(setup, run) == step


def test_write_limit_while_saving_is_named_and_keeps_earlier_checkpoints(setup, tmp_path):
    run = copy_run(setup, tmp_path)
    limit = (run / "checkpoint-4" / "model.safetensors").stat().st_size // 2
    proc = run_worker(setup, run, "--set", "train.max_steps=6", env_extra={"KR_FAULT_FSIZE": str(limit)})
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "file size limit" in err and "(ulimit -f) stopped writing checkpoint-6" in err
    assert "needs about" in err and "Traceback" not in err
    assert not list(run.glob(".checkpoint-*"))  # the partial directory is gone
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
    assert assert_recovers(setup, run) == 4


def test_disk_full_says_no_space_left_on_the_device(setup, tmp_path, monkeypatch):
    """ENOSPC from a writer, and torch.save's short write ('unexpected pos', no errno) on a full disk."""
    import errno

    _, model, config = setup
    run = copy_run(setup, tmp_path)
    m = Transformer(model)
    opt = torch.optim.AdamW(m.parameters())
    load_checkpoint(run, m)

    def no_space(obj, path, *a, **k):
        Path(path).write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(CheckpointError, match=r"no space left on /\S* while saving checkpoint-9 \(needs about "
                                              r"[0-9.]+ MB, [0-9,.]+ MB free\)"):
        save_checkpoint(run, 9, m, opt, {}, config, model)

    def short_write(obj, path, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", short_write)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(CheckpointError, match="no space left on .* while saving checkpoint-9"):
        save_checkpoint(run, 9, m, opt, {}, config, model)
    assert not list(run.glob(".checkpoint-*"))
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]


# -- NaN, locks, leftovers ----------------------------------------------------------------------
def test_non_finite_weights_are_never_saved_or_loaded(setup, tmp_path, monkeypatch):
    _, model, config = setup
    run = copy_run(setup, tmp_path)
    trainer = Trainer(model, config.replace(output_dir=str(run)), resume_from=run, show_progress=False)
    real = trainer._train_step

    def step():  # the loss is finite, but the update makes a weight inf (as learning_rate=1e3 does)
        loss = real()
        if trainer.step == 5:  # the step about to become 6, a save step
            with torch.no_grad():
                trainer.model.layers[0].mlp.up_proj.weight[0, 0] = float("inf")
        return loss

    monkeypatch.setattr(trainer, "_train_step", step)
    trainer.config.train.max_steps = 8
    with pytest.raises(TrainingStopped, match="weights hold NaN or inf after step 6 .*without saving"):
        trainer.train()
    assert list_checkpoints(run)[-1].name == "checkpoint-4"
    # A checkpoint written with non-finite weights elsewhere is refused at load.
    from safetensors.torch import load_file, save_file

    ck = run / "checkpoint-4"
    weights = load_file(ck / "model.safetensors")
    weights["norm.weight"][0] = float("nan")
    save_file(weights, ck / "model.safetensors")
    (ck / "checksums.json").unlink()
    with pytest.raises(CheckpointError, match="hold NaN or inf .*norm.weight.*Use an earlier checkpoint"):
        load_checkpoint(ck, Transformer(model))


def test_lock_stale_detection(setup, tmp_path):
    d = tmp_path / "out"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        d.mkdir()
        (d / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": "x"}))
        with pytest.raises(RunLockedError, match=f"PID {sleeper.pid} on this machine.*delete {d}/.lock"):
            RunLock(d).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    with RunLock(d):  # the holder is gone: the lock is stale and taken over
        assert json.loads((d / ".lock").read_text())["pid"] == os.getpid()
    assert not (d / ".lock").exists()
    (d / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x"}))
    with pytest.raises(RunLockedError, match="PID 1 on host elsewhere"):
        RunLock(d).acquire()
    (d / ".lock").write_text("")  # damaged (never written so: the lock is linked into place whole)
    RunLock(d).acquire().release()


def test_half_deleted_and_half_written_leftovers_are_ignored_then_cleaned(setup, tmp_path):
    run = copy_run(setup, tmp_path)
    half = run / "checkpoint-1"  # an old-style deletion killed midway: state kept, weights gone
    shutil.copytree(run / "checkpoint-2", half)
    (half / "model.safetensors").unlink()
    shutil.copytree(run / "checkpoint-2", run / ".checkpoint-2.deleting")
    shutil.copytree(run / "checkpoint-2", run / ".checkpoint-9.tmp")
    os.replace(run / "checkpoint-4", run / ".checkpoint-4.old")  # killed between replace_directory's renames
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2"]
    clean_leftovers(run)
    assert sorted(p.name for p in run.iterdir() if "checkpoint" in p.name) == ["checkpoint-2", "checkpoint-4"]
    # The metrics of an interrupted run after its last checkpoint (and a torn line) are dropped on resume.
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 1.0}\n{"step": 6, "loss": 1.0}\n{"step": 7, "lo')
    assert assert_recovers(setup, run) == 4


# -- damaged and malicious files ----------------------------------------------------------------
def test_bit_flips_are_named_and_the_previous_checkpoint_still_works(setup, tmp_path):
    _, model, _ = setup
    run = copy_run(setup, tmp_path)
    ck = run / "checkpoint-4"
    for name in ("model.safetensors", "optimizer.pt", "rng.pt"):
        backup = (ck / name).read_bytes()
        flip_byte(ck / name, len(backup) * 2 // 3)
        with pytest.raises(CheckpointError, match=f"{name} does not match the checksum recorded"):
            load_checkpoint(ck, Transformer(model), torch.optim.AdamW(Transformer(model).parameters()))
        (ck / name).write_bytes(backup)
    flip_byte(ck / "model.safetensors", (ck / "model.safetensors").stat().st_size - 2)  # a float's exponent
    with pytest.raises(CheckpointError, match="model.safetensors does not match the checksum recorded"):
        load_checkpoint(run, Transformer(model))  # the latest checkpoint of the run
    shutil.rmtree(ck)  # the user drops the damaged one; the earlier one carries on
    assert assert_recovers(setup, run) == 2


def test_malformed_files_get_clear_errors(setup, tmp_path):
    _, model, config = setup
    marker = tmp_path / "PWNED"

    def fresh(name):
        run = copy_run(setup, tmp_path, name)
        (run / "checkpoint-4" / "checksums.json").unlink()  # hand-made files: the readers' own checks
        return run, run / "checkpoint-4"

    def resume(run):
        return Trainer(model, config.replace(output_dir=str(run)), resume_from=run, show_progress=False)

    run, ck = fresh("empty_rng")
    (ck / "rng.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="rng.pt is empty"):
        resume(run)
    run, ck = fresh("no_data")
    state = json.loads((ck / "trainer_state.json").read_text())
    del state["data"]
    (ck / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="trainer_state.json has no 'data'"):
        resume(run)
    run, ck = fresh("not_json")
    (ck / "trainer_state.json").write_text("[1, 2")
    with pytest.raises(CheckpointError, match="trainer_state.json is unreadable"):
        resume(run)
    run, ck = fresh("payload")
    with open(ck / "optimizer.pt", "wb") as f:
        torch.save({"state": {}, "param_groups": [], "x": Payload(marker)}, f)
    with pytest.raises(CheckpointError, match=r"optimizer.pt holds objects other than tensors and numbers "
                                              r"\(it refers to posix.system\)"):
        resume(run)
    assert not marker.exists()
    run, ck = fresh("truncated_optimizer")
    (ck / "optimizer.pt").write_bytes((ck / "optimizer.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="optimizer.pt: the optimizer state is unreadable"):
        resume(run)


def dcp_checkpoint(setup, tmp_path, name) -> Path:
    """checkpoint-4 with its weights and optimizer as DCP shards (as an FSDP run writes it)."""
    from kr_mini_llm.training.optim import build_optimizer
    from kr_mini_llm.checkpoint.sharded import save_shards as _dcp_save

    _, model, config = setup
    run = copy_run(setup, tmp_path, name)
    ck = run / "checkpoint-4"
    m = Transformer(model)
    opt = build_optimizer(m, config.train, torch.device("cpu"))
    load_checkpoint(ck, m, opt)
    _dcp_save(m, opt, ck / "dcp")
    for f in ("model.safetensors", "optimizer.pt", "checksums.json"):
        (ck / f).unlink()
    return run


def test_dcp_metadata_cannot_run_code(setup, tmp_path, capsys):
    import importlib.util

    _, model, _ = setup
    run = dcp_checkpoint(setup, tmp_path, "dcp")
    ck = run / "checkpoint-4"
    m = Transformer(model)
    load_checkpoint(ck, m)  # the allow-listed reader loads what DCP writes
    ref = Transformer(model)
    load_checkpoint(setup[0] / "base" / "checkpoint-4", ref)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref.state_dict().values()))

    marker = tmp_path / "PWNED"
    (ck / "dcp" / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CheckpointError, match=r"dcp/.metadata: refusing to load: it refers to posix.system"):
        load_checkpoint(ck, Transformer(model))
    spec = importlib.util.spec_from_file_location("generate_script", ROOT / "scripts" / "generate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--model", str(run), "--prompt", "오늘", "--device", "cpu"]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()


def test_dcp_entries_are_read_without_running_code(tmp_path):
    """Non-tensor DCP entries (optimizer hyper-parameters) go through torch.load(weights_only=True)."""
    import torch.distributed.checkpoint as dcp

    from kr_mini_llm.checkpoint import safe_dcp

    marker = tmp_path / "PWNED"
    dcp.save({"lr": Payload(marker), "w": torch.ones(3)}, checkpoint_id=str(tmp_path / "d"), no_dist=True)
    state = {"lr": 0.1, "w": torch.zeros(3)}
    with pytest.raises(safe_dcp.UnsafeCheckpointError, match="entry lr holds objects other than tensors and "
                                                             "numbers .it refers to posix.system.; refusing"):
        safe_dcp.load(state, tmp_path / "d", no_dist=True)
    assert not marker.exists()
    dcp.save({"lr": 0.5, "betas": (0.9, 0.95), "w": torch.ones(3)}, checkpoint_id=str(tmp_path / "ok"), no_dist=True)
    state = {"lr": 0.1, "betas": None, "w": torch.zeros(3)}
    safe_dcp.load(state, tmp_path / "ok", no_dist=True)
    assert state["lr"] == 0.5 and state["betas"] == (0.9, 0.95) and torch.equal(state["w"], torch.ones(3))


def test_empty_or_directory_configs_are_refused(setup, tmp_path, capsys):
    import importlib.util

    root, _, _ = setup
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n\n")
    for bad in (empty, tmp_path):
        with pytest.raises(ConfigError, match="is a directory|is empty"):
            TrainingConfig.from_yaml(bad)
        with pytest.raises(ConfigError, match="is a directory|is empty"):
            TransformerConfig.from_yaml(bad)
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "scripts" / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--config", str(empty), "--model_config", str(root / "model.yaml")]) == 2
    assert "the training config is empty" in capsys.readouterr().err
    assert script.main(["--config", str(root / "train.yaml"), "--model_config", str(tmp_path)]) == 2
    assert "is a directory, not a model config file" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, message", [
    ("--temperature", "nan", "temperature must be a finite number"),
    ("--temperature", "inf", "temperature must be a finite number"),
    ("--top_k", "0", "top_k must be a whole number >= 1"),
    ("--top_k", "-1", "top_k must be a whole number >= 1"),
])
def test_generate_script_refuses_bad_sampling_settings(setup, flag, value, message, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_script", ROOT / "scripts" / "generate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--model", str(setup[0] / "base"), "--prompt", "오늘", flag, value]) == 2
    assert message in capsys.readouterr().err
