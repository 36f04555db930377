"""--fine-tune-type full and dora through scripts/lora.py: resume equals an uninterrupted run bit for
bit, a full fine-tune is an ordinary checkpoint every loader takes, DoRA adapters generate and fuse
like LoRA's, and a run never writes over its base model."""
import pytest
import torch
from safetensors.torch import load_file

from kr_mini_llm.inference import Generator
from kr_mini_llm.lora import read_adapter_config
from kr_mini_llm.lora.apply import LoRAError
from kr_mini_llm.lora.base import load_base_model
from kr_mini_llm.lora.fuse import fuse_to_dir
from kr_mini_llm.checkpoint import load_model

from .test_lora_train import rows, run


def weights_of(path, kind):
    if kind == "full":
        return load_file(str(path / "checkpoint-6" / "model.safetensors"))
    return load_file(str(path / "adapters.safetensors"))


@pytest.mark.parametrize("kind,extra", [("full", ["--optimizer", "adamw"]), ("dora", ["--lora-dropout", "0.1"])])
def test_resume_is_bit_exact(kind, extra, lora_args, tmp_path, capsys):
    args = lora_args + ["--fine-tune-type", kind, "--save-every", "3", "--steps-per-report", "1"] + extra
    straight, half = tmp_path / "straight", tmp_path / "half"
    assert run(args + ["--iters", "6", "--adapter-path", str(straight)], capsys)[0] == 0
    assert run(args + ["--iters", "3", "--adapter-path", str(half)], capsys)[0] == 0
    resume = half / "checkpoint-3" if kind == "full" else half / "adapters.safetensors"
    code, out, err = run(args + ["--iters", "6", "--adapter-path", str(half), "--resume-adapter-file", str(resume)],
                         capsys)
    assert code == 0, err
    assert "at iteration 3" in out
    a = [(r["step"], r["loss"]) for r in rows(straight) if "loss" in r]
    b = [(r["step"], r["loss"]) for r in rows(half) if "loss" in r]
    assert a == b and len(a) == 6
    wa, wb = weights_of(straight, kind), weights_of(half, kind)
    assert set(wa) == set(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    if kind == "dora":
        assert any(k.endswith("lora_magnitude") for k in wa)


def test_full_fine_tune_is_an_ordinary_checkpoint(lora_args, base_dir, chat_data, tmp_path, capsys):
    out = tmp_path / "full"
    code, stdout, err = run(lora_args + ["--fine-tune-type", "full", "--iters", "4", "--adapter-path", str(out),
                                         "--learning-rate", "1e-3"], capsys)
    assert code == 0, err
    assert "Trainable parameters: 100.0000%" in stdout and "Saved the fine-tuned model to" in stdout
    base = load_base_model(base_dir).model.state_dict()
    model, source = load_model(out)  # the output directory: its latest checkpoint
    assert source == out / "checkpoint-4"
    assert all(not torch.equal(v, base[k]) for k, v in model.state_dict().items())
    tuned = Generator.from_pretrained(out, device="cpu")
    assert tuned.chat("빨강 색을 말해 주세요.", max_new_tokens=4, temperature=0)
    with pytest.raises(LoRAError, match="full fine-tune, not adapters"):
        read_adapter_config(out)
    code, _, err = run(lora_args + ["--fine-tune-type", "full", "--iters", "4", "--adapter-path", str(out)], capsys)
    assert code == 2 and "already holds checkpoint-4" in err and "--overwrite-adapters" in err
    code, stdout, err = run(["--model", str(base_dir), "--data", str(chat_data), "--test", "--fine-tune-type", "full",
                             "--adapter-path", str(out), "--device", "cpu"], capsys)
    assert code == 0 and "fine-tuned model: " in stdout and "Test loss" in stdout, err


def test_a_run_never_writes_over_its_base(lora_args, base_dir, capsys):
    for kind in ("full", "lora"):
        code, out, err = run(lora_args + ["--fine-tune-type", kind, "--iters", "2", "--adapter-path", str(base_dir),
                                          "--overwrite-adapters"], capsys)
        assert code == 2 and "never writes over or into its own input" in err and "Iter 1:" not in out
    assert (base_dir / "model.safetensors").is_file()


def test_dora_adapters_generate_and_fuse_like_lora(lora_args, base_dir, tmp_path, capsys):
    ad = tmp_path / "dora"
    assert run(lora_args + ["--fine-tune-type", "dora", "--iters", "4", "--adapter-path", str(ad)], capsys)[0] == 0
    assert read_adapter_config(ad)["fine_tune_type"] == "dora"
    adapted = Generator.from_pretrained(base_dir, device="cpu", adapter_path=ad)
    fuse_to_dir(load_base_model(base_dir), ad, tmp_path / "fused")
    fused = Generator.from_pretrained(tmp_path / "fused", device="cpu")
    x = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(fused.model(x), adapted.model(x), rtol=1e-4, atol=1e-4)
