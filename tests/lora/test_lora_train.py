"""scripts/lora.py end to end: a real short fine-tune, files, log lines, resume, generation with
adapters, fuse, the config file, and every bad input failing before training starts."""
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kr_mini_llm.inference import Generator
from kr_mini_llm.lora import read_adapter_config
from kr_mini_llm.cli.lora import main
from kr_mini_llm.export.exporter import write_hf_copy
from kr_mini_llm.lora.fuse import fuse_to_dir
from kr_mini_llm.lora.base import load_base_model

from .conftest import make_base, write_jsonl

TRAIN_LINE = re.compile(r"^Iter (\d+): Train loss [\d.]+, Learning Rate [\d.e+-]+, It/sec [\d.]+, Tokens/sec [\d.]+, "
                        r"Trained Tokens \d+, Peak mem [\d.]+ GB$", re.M)
VAL_LINE = re.compile(r"^Iter (\d+): Val loss ([\d.]+), Val took [\d.]+s$", re.M)


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def rows(adapter_dir):
    return [json.loads(line) for line in (Path(adapter_dir) / "metrics.jsonl").read_text().splitlines()]


def test_fine_tune_lowers_val_loss_and_writes_mlx_style_outputs(lora_args, base_dir, tmp_path, capsys):
    code, out, err = run(lora_args + ["--iters", "20", "--test"], capsys)
    assert code == 0, err
    vals = [(int(i), float(v)) for i, v in VAL_LINE.findall(out)]
    assert [i for i, _ in vals] == [0, 5, 10, 15, 20]
    assert vals[-1][1] < vals[0][1] - 0.3, vals  # it learns the chat set
    assert [int(i) for i in TRAIN_LINE.findall(out)] == [1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert re.search(r"^Trainable parameters: [\d.]+% \([\d,]+/[\d,]+;", out, re.M)
    assert re.search(r"^Test loss [\d.]+, Test ppl [\d.]+\.$", out, re.M)
    ad = tmp_path / "adapters"
    names = {p.name for p in ad.iterdir()}
    assert {"adapters.safetensors", "adapter_config.json", "metrics.jsonl", "0000005_adapters.safetensors",
            "0000020_adapters.safetensors"} <= names
    cfg = read_adapter_config(ad)
    assert cfg["lora_parameters"] == {"rank": 8, "scale": 20.0, "dropout": 0.0,
                                      "keys": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                               "self_attn.o_proj"]}
    assert cfg["num_layers"] == 2 and cfg["model"] == str(base_dir) and cfg["iters"] == 20 and cfg["mask_prompt"]
    assert len(cfg["base_model_fingerprint"]) == 16
    m = rows(ad)
    assert {"step", "loss", "lr", "tokens_per_sec", "tokens_seen", "elapsed_s", "peak_mem_gb"} <= set(m[0])
    assert any("val_loss" in r for r in m)
    tensors = load_file(str(ad / "adapters.safetensors"))
    assert set(tensors) == {f"layers.{i}.self_attn.{p}_proj.lora_{ab}" for i in (1, 2) for p in "qkvo" for ab in "AB"}


def test_only_adapters_change_and_the_base_is_bit_identical(lora_args, base_dir, chat_data, tmp_path):
    from kr_mini_llm.data.sft import load_split
    from kr_mini_llm.data.tokenizer import Tokenizer
    from kr_mini_llm.cli.lora import build_parser, load_config
    from kr_mini_llm.lora.trainer import LoRATrainer

    cfg = load_config(build_parser().parse_args(lora_args + ["--iters", "4"]))
    base = load_base_model(base_dir)
    before = {n: p.detach().clone() for n, p in base.model.named_parameters()}
    tok = Tokenizer(base.tokenizer_path)
    trainer = LoRATrainer(cfg, base, load_split(chat_data, "train", tok, 64, True),
                          load_split(chat_data, "valid", tok, 64, True), show_progress=False, log=lambda *a: None)
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if ".lora_" in n}
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == set(lora_before)
    grads = set()
    for n, p in trainer.model.named_parameters():
        if p.requires_grad:
            p.register_hook(lambda g, n=n: grads.add(n) if bool(g.abs().sum() > 0) else None)
    trainer.train()
    assert grads == set(lora_before)  # every adapter tensor gets a nonzero gradient
    assert all(p.grad is None for n, p in trainer.model.named_parameters() if ".lora_" not in n)
    after = dict(trainer.model.named_parameters())
    for n, p in before.items():
        assert torch.equal(after[n], p), n
    assert all(not torch.equal(after[n], p) for n, p in lora_before.items() if n.endswith("lora_B"))


def test_resume_equals_an_uninterrupted_run(lora_args, tmp_path, capsys):
    full = lora_args + ["--iters", "10", "--lora-dropout", "0.1", "--adapter-path", str(tmp_path / "full")]
    assert run(full, capsys)[0] == 0
    half = lora_args + ["--iters", "5", "--lora-dropout", "0.1", "--adapter-path", str(tmp_path / "half")]
    assert run(half, capsys)[0] == 0
    rest = lora_args + ["--iters", "10", "--lora-dropout", "0.1", "--adapter-path", str(tmp_path / "half"),
                        "--resume-adapter-file", str(tmp_path / "half" / "adapters.safetensors")]
    code, out, err = run(rest, capsys)
    assert code == 0, err
    assert "Resuming from" in out and "at iteration 5" in out
    a = {r["step"]: r["loss"] for r in rows(tmp_path / "full") if "loss" in r}
    b = {r["step"]: r["loss"] for r in rows(tmp_path / "half") if "loss" in r}
    assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    ta, tb = load_file(str(tmp_path / "full" / "adapters.safetensors")), load_file(str(tmp_path / "half" / "adapters.safetensors"))
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=1e-6, atol=1e-7)


def test_generator_with_adapters_and_fuse_agree(lora_args, base_dir, tmp_path, capsys):
    assert run(lora_args + ["--iters", "6", "--lora-keys", "q", "v", "down"], capsys)[0] == 0
    ad = tmp_path / "adapters"
    plain = Generator.from_pretrained(base_dir, device="cpu")
    adapted = Generator.from_pretrained(base_dir, device="cpu", adapter_path=ad)
    fuse_to_dir(load_base_model(base_dir), ad, tmp_path / "fused", write_hf=write_hf_copy)
    assert (tmp_path / "fused" / "hf" / "config.json").is_file()
    fused = Generator.from_pretrained(tmp_path / "fused", device="cpu")
    x = torch.randint(0, 512, (2, 30))
    with torch.no_grad():
        a, f, p = adapted.model(x), fused.model(x), plain.model(x)
    assert not torch.allclose(a, p, atol=1e-3)
    torch.testing.assert_close(f, a, rtol=1e-4, atol=1e-4)
    assert adapted.chat("빨강 색을 말해 주세요.", max_new_tokens=8, temperature=0) == \
        fused.chat("빨강 색을 말해 주세요.", max_new_tokens=8, temperature=0)
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "fused" / "hf", torch_dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=x).logits, a, rtol=1e-4, atol=1e-4)


def test_config_file_is_read_like_the_other_configs(lora_args, tmp_path, capsys):
    cfg = tmp_path / "lora.yaml"
    cfg.write_text("iters: 3\nlora_parameters:\n  rank: 2\n  scale: 4.0\nnum_layers: 1\n", encoding="utf-8")
    code, out, err = run(lora_args + ["-c", str(cfg), "--num-layers", "2"], capsys)  # the flag wins
    assert code == 0, err
    saved = read_adapter_config(tmp_path / "adapters")
    assert (saved["iters"], saved["lora_parameters"]["rank"], saved["lora_parameters"]["scale"],
            saved["num_layers"]) == (3, 2, 4.0, 2)
    cfg.write_text("iters: 3\nlearning_rat: 1e-4\n", encoding="utf-8")
    code, _, err = run(lora_args + ["-c", str(cfg)], capsys)
    assert code == 2 and f"{cfg}:2" in err and "learning_rat" in err and "learning_rate" in err
    cfg.write_text("iters: many\n", encoding="utf-8")
    code, _, err = run(lora_args + ["-c", str(cfg)], capsys)
    assert code == 2 and f"{cfg}:1" in err and "iters" in err


def _bad_adapter(tmp_path, lora_args, capsys, rank):
    other = lora_args + ["--iters", "2", "--lora-rank", str(rank), "--adapter-path", str(tmp_path / "other")]
    assert run(other, capsys)[0] == 0
    return str(tmp_path / "other" / "adapters.safetensors")


@pytest.mark.parametrize("case", ["malformed", "missing_field", "empty_dir", "rank", "num_layers", "shape",
                                  "fingerprint", "seq_len"])
def test_bad_input_fails_before_training_and_writes_nothing(case, lora_args, base_dir, chat_data, tokenizer_path,
                                                           tmp_path, capsys):
    args = lora_args + ["--iters", "2"]
    data = tmp_path / "data"
    data.mkdir()
    (data / "valid.jsonl").write_text((chat_data / "valid.jsonl").read_text())
    if case == "malformed":
        (data / "train.jsonl").write_text((chat_data / "train.jsonl").read_text() + '{"messages": [\n')
        args += ["--data", str(data)]
        expect = rf"{data / 'train.jsonl'}:49: malformed JSON"
    elif case == "missing_field":
        write_jsonl(data / "train.jsonl", [{"prompt": "질문"}])
        args += ["--data", str(data)]
        expect = "'completion' is missing"
    elif case == "empty_dir":
        args += ["--data", str(tmp_path / "empty")]
        (tmp_path / "empty").mkdir()
        expect = "no train.jsonl"
    elif case == "rank":
        args += ["--lora-rank", "0"]
        expect = "rank must be a positive integer"
    elif case == "num_layers":
        args += ["--num-layers", "5"]
        expect = "more than the model's 3 blocks"
    elif case == "shape":
        args += ["--resume-adapter-file", _bad_adapter(tmp_path, lora_args, capsys, rank=4)]
        expect = r"has shape \(4, 64\) but this model needs \(8, 64\)"
    elif case == "fingerprint":
        good = _bad_adapter(tmp_path, lora_args, capsys, rank=8)
        other_base = make_base(tmp_path / "other_base", tokenizer_path, seed=1)
        args = [a if a != str(base_dir) else str(other_base) for a in args] + ["--resume-adapter-file", good]
        expect = "trained on a base model with fingerprint"
    else:
        args += ["--max-seq-length", "65"]
        expect = "longer than the model's context"
    code, out, err = run(args, capsys)
    assert code == 2
    assert re.search(expect, err), err
    assert "Iter 1:" not in out
    assert not (tmp_path / "adapters" / "adapters.safetensors").exists()


def test_adapters_onto_a_different_base_are_refused(lora_args, tokenizer_path, tmp_path, capsys):
    assert run(lora_args + ["--iters", "2"], capsys)[0] == 0
    other = make_base(tmp_path / "other_base", tokenizer_path, seed=1)
    with pytest.raises(ValueError, match="trained on base model"):
        Generator.from_pretrained(other, device="cpu", adapter_path=tmp_path / "adapters")
    code, _, err = run(lora_args + ["--iters", "2"], capsys)  # the adapters there are not overwritten
    assert code == 2 and "already holds adapters.safetensors" in err
