"""torchrun with 2 CPU processes (gloo) against one process: DDP and FSDP2 give the same losses,
FSDP checkpoints resume at another world size, a broken rank ends the job naming itself.

Each torchrun start costs a few seconds; the runs are tiny (2 layers, 20 steps, 1 thread each).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kr_mini_llm import ConfigError, TransformerConfig
from kr_mini_llm.training import Trainer, TrainingConfig
from kr_mini_llm.training.distributed import DistributedContext, check_global_batch
from kr_mini_llm.io.layout import is_sharded_checkpoint
from kr_mini_llm.training.run_checkpoint import consolidate_checkpoint

ROOT = Path(__file__).resolve().parents[2]
REL = 1e-5  # float32 rounding over 20 steps (observed ~1e-7); a wrong reduction or clip is >1e-3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script, args, env_extra=None, timeout=180):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(script), *args]
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.time() - start


def losses(run_dir, key="loss"):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


def assert_same(ref, other, steps):
    assert sorted(other) == list(steps)
    for s in steps:
        assert other[s] == pytest.approx(ref[s], rel=REL), s


@pytest.fixture(scope="module")
def setup(token_data, tmp_path_factory):
    """Configs on disk and a one-process reference run (global batch 4 x 2 = 8, checkpoints at 10, 20)."""
    tokens, tok = token_data
    root = tmp_path_factory.mktemp("dist")
    model = TransformerConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                              intermediate_size=128, max_seq_length=64)
    config = TrainingConfig.from_dict({
        "device": "cpu", "seed": 5, "threads": 1, "output_dir": str(root / "ref"),
        "train": {"batch_size": 4, "gradient_accumulation_steps": 2, "max_seq_length": 32, "learning_rate": 3e-3,
                  "min_learning_rate": 3e-4, "warmup_steps": 5, "max_steps": 20, "log_steps": 1, "eval_steps": 10,
                  "eval_batches": 4, "save_steps": 10, "keep_checkpoints": 5, "sample_max_new_tokens": 4,
                  "max_grad_norm": 0.3},  # low enough to clip: a per-rank norm would show
        "data": {"tokens": str(tokens), "tokenizer": tok}})
    model.save_yaml(root / "model.yaml")
    config.save_yaml(root / "train.yaml")
    threads = torch.get_num_threads()
    try:
        Trainer(model, config, show_progress=False).train()
    finally:
        torch.set_num_threads(threads)
    return root, model, config


def train_args(root, out, *extra):
    # 2 ranks x batch 2 x accumulation 2 = the reference's global batch of 8.
    return ["--config", str(root / "train.yaml"), "--model_config", str(root / "model.yaml"), "--output_dir",
            str(out), "--no_progress", "--set", "train.batch_size=2", *extra]


def test_ddp_two_processes_match_one(setup):
    root, _, _ = setup
    proc, _ = torchrun(ROOT / "scripts" / "train.py", train_args(root, root / "ddp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref, ddp = losses(root / "ref"), losses(root / "ddp")
    assert_same(ref, ddp, range(1, 21))
    assert_same(losses(root / "ref", "val_loss"), losses(root / "ddp", "val_loss"), [10, 20])
    assert "2 x 2 x 2 processes = 8" in proc.stdout and "Distributed: ddp" in proc.stdout
    assert proc.stdout.count("step 10: val_loss") == 1  # rank 0 alone prints
    ck = root / "ddp" / "checkpoint-20"
    assert (ck / "model.safetensors").exists() and not is_sharded_checkpoint(ck)
    assert json.loads((ck / "trainer_state.json").read_text())["world_size"] == 2


def test_fsdp_matches_one_process_and_resumes_at_other_world_sizes(setup, tmp_path):
    root, model, config = setup
    ref = losses(root / "ref")
    proc, _ = torchrun(ROOT / "scripts" / "train.py", train_args(root, root / "fsdp", "--set", "train.distributed=fsdp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(ref, losses(root / "fsdp"), range(1, 21))
    assert_same(losses(root / "ref", "val_loss"), losses(root / "fsdp", "val_loss"), [10, 20])
    ck10 = root / "fsdp" / "checkpoint-10"
    assert is_sharded_checkpoint(ck10) and not (ck10 / "model.safetensors").exists()
    assert len(list((ck10 / "dcp").glob("*.distcp"))) == 2

    # Saved by 2 ranks, resumed by 1 process: steps 11-20 as in the uninterrupted run.
    shutil.copytree(ck10, tmp_path / "one" / "checkpoint-10")
    threads = torch.get_num_threads()
    try:
        Trainer(model, config.replace(output_dir=str(tmp_path / "one")), resume_from=tmp_path / "one",
                show_progress=False).train()
    finally:
        torch.set_num_threads(threads)
    assert_same(ref, losses(tmp_path / "one"), range(11, 21))

    # Saved by 1 process (ordinary checkpoint), resumed by 2 FSDP ranks.
    shutil.copytree(root / "ref" / "checkpoint-10", tmp_path / "two" / "checkpoint-10")
    proc, _ = torchrun(ROOT / "scripts" / "train.py", train_args(root, tmp_path / "two", "--set", "train.distributed=fsdp",
                                                                "--resume_from", str(tmp_path / "two")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(ref, losses(tmp_path / "two"), range(11, 21))

    # Consolidation gives the ordinary checkpoint, with the one-process run's weights.
    from safetensors.torch import load_file

    out = consolidate_checkpoint(root / "fsdp" / "checkpoint-20", tmp_path / "final")
    a, b = load_file(str(root / "ref" / "checkpoint-20" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    assert torch.load(out / "optimizer.pt", weights_only=True)["state"][0]["step"] == 20


def test_rank_with_missing_shard_ends_the_job_naming_the_rank(setup, tmp_path):
    root, _, config = setup
    broken = tmp_path / "tokens"
    shutil.copytree(config.data.tokens, broken)
    next(broken.glob("train_*.bin")).unlink()
    env = {"KR_FAULT_RANK": "1", "KR_FAULT_ARGS": f"--set data.tokens={broken}"}
    proc, seconds = torchrun(Path(__file__).with_name("rank_fault.py"), train_args(root, tmp_path / "out"), env)
    assert proc.returncode != 0
    assert seconds < 60  # the ranks agree on the failure: no collective timeout is waited out
    assert "[rank 1/2] error: token shard not found" in proc.stderr
    assert "[rank 0/2] error: rank 1 failed while reading the tokenizer and token shards" in proc.stderr


def test_hung_rank_ends_the_job_after_the_collective_timeout(setup, tmp_path):
    root, _, _ = setup
    env = {"KR_FAULT_RANK": "1", "KR_FAULT_HANG_AT_STEP": "3"}
    args = train_args(root, tmp_path / "out", "--set", "train.collective_timeout_minutes=0.05")  # 3 s
    proc, seconds = torchrun(Path(__file__).with_name("rank_fault.py"), args, env)
    assert proc.returncode != 0
    assert seconds < 60
    assert "[rank 0/2] error: a collective operation waited longer than train.collective_timeout_minutes" in proc.stderr


# -- no processes spawned ---------------------------------------------------------------------
def test_one_process_fsdp_with_mixed_precision_trains_through_the_fused_ops(setup, tmp_path):
    """FSDP2 on a one-rank group: bf16 compute via the mixed-precision policy, fp32 sharded weights,
    rms_norm's weight a DTensor between steps and updated by the fused op's gradient."""
    from torch.distributed.tensor import DTensor

    _, model, config = setup
    cfg = config.with_overrides(["train.distributed=fsdp", "train.mixed_precision=true", "train.max_steps=3",
                                 "train.eval_steps=3", "train.save_steps=3"])
    threads = torch.get_num_threads()
    trainer = Trainer(model, cfg.replace(output_dir=str(tmp_path / "run")), show_progress=False)
    try:
        norm = trainer.model.layers[0].input_layernorm.weight
        assert isinstance(norm, DTensor) and norm.dtype == torch.float32
        before = norm.full_tensor().clone()
        result = trainer.train()
    finally:
        trainer.dist.close()
        torch.set_num_threads(threads)
    assert result["step"] == 3 and torch.isfinite(torch.tensor(result["val_loss"]))
    assert not torch.equal(trainer.model.layers[0].input_layernorm.weight.full_tensor(), before)
    assert is_sharded_checkpoint(tmp_path / "run" / "checkpoint-3")


def test_setting_errors(setup, monkeypatch):
    _, _, config = setup
    with pytest.raises(ConfigError, match="fsdp_cpu_offload offloads GPU parameters"):
        DistributedContext(config.with_overrides(["train.distributed=fsdp", "train.fsdp_cpu_offload=true"]))
    with pytest.raises(ConfigError, match="fsdp_cpu_offload needs train.distributed: fsdp"):
        DistributedContext(config.with_overrides(["train.fsdp_cpu_offload=true"]))
    with pytest.raises(ConfigError, match="collective_timeout_minutes must be > 0"):
        config.with_overrides(["train.collective_timeout_minutes=0"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="train.distributed is 'none' but WORLD_SIZE=2"):
        DistributedContext(config.with_overrides(["train.distributed=none"]))
    with pytest.raises(ConfigError, match="MASTER_ADDR/MASTER_PORT are not set"):
        DistributedContext(config)


def test_resume_needs_the_same_global_batch():
    check_global_batch({"global_batch": 8}, 8, 2)
    check_global_batch({}, 4, 1)  # checkpoints from before the check
    with pytest.raises(ConfigError, match="global batch of 8 .* this run has 16 with 2 process.*= 4 for 2"):
        check_global_batch({"global_batch": 8}, 16, 2)


def test_one_process_context_answers_for_itself():
    ctx = DistributedContext()
    assert not ctx.enabled and ctx.any(True) and not ctx.any(False)
    assert ctx.sum(1.5, 2.0) == (1.5, 2.0) and ctx.mean(3.0) == 3.0
