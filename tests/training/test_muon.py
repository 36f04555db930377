"""train.optimizer: muon -- Muon on the hidden matrices, AdamW on the rest, one optimizer whose
state saves and resumes bit-exactly in one process and in two (DDP), and under FSDP2."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from kr_mini_llm import TransformerConfig
from kr_mini_llm.model import Transformer
from kr_mini_llm.training import CheckpointError, Trainer, TrainingConfig
from kr_mini_llm.training.optim import MuonAdamW, build_optimizer

from .test_distributed import ROOT, losses, torchrun

# Two ranks sum gradients in another order than one process; Newton-Schulz's five fp32 matrix
# products carry that rounding further than AdamW does (observed ~1e-5). A wrong reduction is >1e-3.
MUON_REL = 2e-4


def assert_close_losses(ref, other, steps):
    assert sorted(other) == list(steps)
    for s in steps:
        assert other[s] == pytest.approx(ref[s], rel=MUON_REL), s


def muon_config(train_config, out, **train):
    raw = train_config.to_dict()
    raw["output_dir"] = str(out)
    raw["threads"] = 1
    raw["train"].update({"optimizer": "muon", "muon_learning_rate": 0.02, "max_steps": 8, "save_steps": 4,
                         "eval_steps": 4, "sample_prompts": [], **train})
    return TrainingConfig.from_dict(raw)


def weights(run_dir, step):
    return load_file(str(run_dir / f"checkpoint-{step}" / "model.safetensors"))


def assert_bit_exact(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_hidden_matrices_go_to_muon_the_rest_to_adamw(model_config):
    untied = TransformerConfig(**{**model_config.to_dict(), "tie_word_embeddings": False})
    model = Transformer(untied)
    train = TrainingConfig.from_dict({"train": {"optimizer": "muon", "muon_learning_rate": 0.05}}).train
    opt = build_optimizer(model, train, torch.device("cpu"))
    assert isinstance(opt, MuonAdamW)
    kind = {id(p): g["optimizer"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        hidden = p.dim() == 2 and not name.startswith(("embed_tokens", "lm_head"))
        assert kind[id(p)] == ("muon" if hidden else "adamw"), name
    assert isinstance(opt._muon, torch.optim.Muon) and isinstance(opt._adamw, torch.optim.AdamW)
    # The default stays AdamW (LoRA's full fine-tune builds from a TrainSection without the key).
    assert type(build_optimizer(model, TrainingConfig().train, torch.device("cpu"))) is torch.optim.AdamW


@pytest.mark.parametrize("ns_steps", [5, 3])
def test_fp32_orthogonalization_follows_torch_muon(model_config, ns_steps):
    """Where bf16 is not native the Muon step runs in fp32: the same update as torch.optim.Muon's
    bf16 one up to bf16 rounding, with the same state and the same train.muon_ns_steps."""
    import copy

    train = TrainingConfig.from_dict({"train": {"optimizer": "muon", "weight_decay": 0.1,
                                                "muon_ns_steps": ns_steps}}).train
    torch.manual_seed(0)
    model = Transformer(model_config)
    ours = build_optimizer(model, train, torch.device("cpu"))
    ref_model = copy.deepcopy(model)
    ref = build_optimizer(ref_model, train, torch.device("cpu"))
    ours.fp32_orthogonalization, ref.fp32_orthogonalization = True, False
    assert {g["ns_steps"] for g in ours.param_groups if g["optimizer"] == "muon"} == {ns_steps}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(2):
        for p, q in zip(model.parameters(), ref_model.parameters()):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        ours.step()
        ref.step()
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        delta, ref_delta = p.detach() - before[name], q.detach() - before[name]
        assert (delta - ref_delta).norm() <= 0.02 * ref_delta.norm(), name
    assert ours.state_dict()["state"].keys() == ref.state_dict()["state"].keys()


def test_muon_resumes_bit_exactly_in_one_process(model_config, train_config, tmp_path):
    full = muon_config(train_config, tmp_path / "full")
    Trainer(model_config, full, show_progress=False).train()
    half = muon_config(train_config, tmp_path / "half")
    assert Trainer(model_config, half, show_progress=False).train(stop_after=3)["step"] == 3
    Trainer(model_config, half, resume_from=tmp_path / "half", show_progress=False).train()
    assert losses(tmp_path / "full") == losses(tmp_path / "half")
    assert_bit_exact(weights(tmp_path / "full", 8), weights(tmp_path / "half", 8))
    saved = torch.load(tmp_path / "full" / "checkpoint-8" / "optimizer.pt", weights_only=True)
    assert [g["optimizer"] for g in saved["param_groups"]] == ["muon", "adamw", "adamw"]
    assert any("momentum_buffer" in s for s in saved["state"].values())  # Muon's
    assert any("exp_avg" in s for s in saved["state"].values())  # AdamW's


def test_an_adamw_checkpoint_does_not_resume_as_muon(model_config, train_config, tmp_path):
    adamw = muon_config(train_config, tmp_path / "run", optimizer="adamw")
    Trainer(model_config, adamw, show_progress=False).train(stop_after=1)
    with pytest.raises(CheckpointError, match="another train.optimizer"):
        Trainer(model_config, muon_config(train_config, tmp_path / "run"), resume_from=tmp_path / "run",
                show_progress=False)


@pytest.fixture(scope="module")
def dist_setup(token_data, tmp_path_factory):
    tokens, tok = token_data
    root = tmp_path_factory.mktemp("muon_dist")
    TransformerConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=128, max_seq_length=64).save_yaml(root / "model.yaml")
    TrainingConfig.from_dict({
        "device": "cpu", "seed": 5, "threads": 1,
        "train": {"batch_size": 2, "gradient_accumulation_steps": 2, "max_seq_length": 32, "learning_rate": 3e-3,
                  "min_learning_rate": 3e-4, "warmup_steps": 2, "max_steps": 6, "log_steps": 1, "eval_steps": 3,
                  "eval_batches": 2, "save_steps": 3, "keep_checkpoints": 5, "sample_prompts": [],
                  "optimizer": "muon"},
        "data": {"tokens": str(tokens), "tokenizer": tok}}).save_yaml(root / "train.yaml")
    return root


def run_args(root, out, *extra):
    return ["--config", str(root / "train.yaml"), "--model_config", str(root / "model.yaml"), "--output_dir",
            str(out), "--no_progress", *extra]


def test_muon_resumes_bit_exactly_in_two_processes(dist_setup, tmp_path):
    root = dist_setup
    proc, _ = torchrun(ROOT / "scripts" / "train.py", run_args(root, tmp_path / "full"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.copytree(tmp_path / "full" / "checkpoint-3", tmp_path / "half" / "checkpoint-3")
    proc, _ = torchrun(ROOT / "scripts" / "train.py",
                       run_args(root, tmp_path / "half", "--resume_from", str(tmp_path / "half")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    full, half = losses(tmp_path / "full"), losses(tmp_path / "half")
    assert {s: full[s] for s in half} == half and sorted(half) == [4, 5, 6]
    assert_bit_exact(weights(tmp_path / "full", 6), weights(tmp_path / "half", 6))


def test_muon_under_fsdp_matches_one_process_and_resumes_there(dist_setup, tmp_path):
    root = dist_setup
    config = TrainingConfig.from_yaml(root / "train.yaml")
    model = TransformerConfig.from_yaml(root / "model.yaml")
    threads = torch.get_num_threads()
    try:  # one process, global batch 4 x 2 like the two ranks' 2 x 2 x 2
        one = config.with_overrides(["train.batch_size=4", f"output_dir={tmp_path / 'one'}"])
        Trainer(model, one, show_progress=False).train()
        proc, _ = torchrun(ROOT / "scripts" / "train.py",
                           run_args(root, tmp_path / "fsdp", "--set", "train.distributed=fsdp"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        ref = losses(tmp_path / "one")
        assert_close_losses(ref, losses(tmp_path / "fsdp"), range(1, 7))
        # Sharded Muon + AdamW state, resumed by one process (DCP re-shards it).
        shutil.copytree(tmp_path / "fsdp" / "checkpoint-3", tmp_path / "back" / "checkpoint-3")
        back = one.replace(output_dir=str(tmp_path / "back"))
        Trainer(model, back, resume_from=tmp_path / "back", show_progress=False).train()
    finally:
        torch.set_num_threads(threads)
    assert_close_losses(ref, losses(tmp_path / "back"), range(4, 7))
    state = json.loads((tmp_path / "back" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["step"] == 6
