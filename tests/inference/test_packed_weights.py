"""Packed inference weights: the DecodeModel against the Transformer, bf16/int8 tolerances, saving
and loading an inference directory, and the errors for mismatched inputs."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kr_mini_llm import Transformer, TransformerConfig
from kr_mini_llm.data.tokenizer import Tokenizer
from kr_mini_llm.inference import Generator
from kr_mini_llm.inference.decode_model import DecodeModel
from kr_mini_llm.inference.saved import InferenceDirError, load_inference_model, save_inference_model
from kr_mini_llm.lora.fuse import save_model_dir
from kr_mini_llm.model import KVCache

ROOT = Path(__file__).resolve().parents[2]
# Relative L2 error of the logits against fp32 (teacher-forced prefill + decode steps, random model).
# bf16 keeps 8 bits of mantissa per weight, int8 per channel about 7: both land well under these.
REL_TOL = {"fp32": 1e-5, "bf16": 0.01, "int8": 0.02}


def config(qk_norm=False, tie=True):
    return TransformerConfig(vocab_size=512, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                             intermediate_size=352, max_seq_length=64, qk_norm=qk_norm, tie_word_embeddings=tie,
                             dropout=0.0)


def logits_with_cache(model, ids, steps, cache_dtype=torch.float32):
    """Prefill ids[:, :-steps], then one token at a time: all the logits, concatenated."""
    B, T = ids.shape
    cache = KVCache.for_model(model.config, B, T, dtype=cache_dtype)
    with torch.inference_mode():
        out = [model(ids[:, :T - steps], kv_cache=cache)]
        out += [model(ids[:, t:t + 1], kv_cache=cache) for t in range(T - steps, T)]
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("qk_norm,tie", [(False, True), (True, False)])
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8"])
def test_decode_model_matches_transformer(dtype, qk_norm, tie):
    torch.manual_seed(0)
    model = Transformer(config(qk_norm, tie)).eval()
    ids = torch.randint(0, 512, (3, 40))
    ref = logits_with_cache(model, ids, steps=6)
    packed = DecodeModel.from_transformer(model, dtype)
    got = logits_with_cache(packed, ids, steps=6, cache_dtype=packed.cache_dtype)
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel < REL_TOL[dtype], f"{dtype}: relative logit error {rel:.2e}"


def test_int8_group_scales_are_closer_than_per_channel():
    torch.manual_seed(1)
    model = Transformer(config()).eval()
    ids = torch.randint(0, 512, (2, 24))
    ref = logits_with_cache(model, ids, steps=4)
    err = {}
    for g in (None, 32):
        got = logits_with_cache(DecodeModel.from_transformer(model, "int8", g), ids, steps=4)
        err[g] = ((got - ref).norm() / ref.norm()).item()
    assert err[32] < err[None] < REL_TOL["int8"]


def test_full_sequence_call_without_a_cache():
    torch.manual_seed(2)
    model = Transformer(config()).eval()
    ids = torch.randint(0, 512, (2, 30))
    with torch.inference_mode():
        torch.testing.assert_close(DecodeModel.from_transformer(model)(ids), model(ids), atol=1e-4, rtol=1e-4)


@pytest.fixture()
def checkpoint(token_data, tmp_path):
    _, tok_path = token_data
    torch.manual_seed(3)
    model = Transformer(config())
    return save_model_dir(model, tmp_path / "ckpt", tok_path), model, tok_path


def test_generator_dtypes_and_saved_directory(checkpoint, tmp_path):
    ckpt, model, tok_path = checkpoint
    prompts = [[2, 10, 11, 12, 13], [2, 40, 41]]
    plain = Generator(model, Tokenizer(tok_path), "cpu")
    expected = list(plain.generate_ids(prompts, 10, stop_at_eos=False))
    fp32 = Generator.from_pretrained(ckpt, device="cpu")
    assert isinstance(fp32.model, DecodeModel) and fp32.model.dtype == "fp32"
    assert list(fp32.generate_ids(prompts, 10, stop_at_eos=False)) == expected

    in_memory = Generator.from_pretrained(ckpt, device="cpu", dtype="int8", group_size=32)
    out = save_inference_model(in_memory.model, tmp_path / "int8", Path(tok_path), group_size=32)
    info = json.loads((out / "inference.json").read_text())
    assert info["dtype"] == "int8" and info["quantization"]["group_size"] == 32
    loaded = Generator.from_pretrained(out, device="cpu")
    assert loaded.model.dtype == "int8"
    for name, t in in_memory.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], t), name
    assert (list(loaded.generate_ids(prompts, 10, stop_at_eos=False))
            == list(in_memory.generate_ids(prompts, 10, stop_at_eos=False)))
    assert (out / "model.safetensors").stat().st_size < 0.4 * (ckpt / "model.safetensors").stat().st_size

    with pytest.raises(InferenceDirError, match="holds int8 weights, not bf16"):
        Generator.from_pretrained(out, device="cpu", dtype="bf16")
    # the int8 weights with a config of other sizes: named, not a wrong answer
    config().replace(intermediate_size=384).save_yaml(out / "model_config.yaml")
    with pytest.raises(InferenceDirError, match=r"gate_proj.weight is \[352, 128\] but the config needs \[384, 128\]"):
        load_inference_model(out)


def test_quantize_script(checkpoint, tmp_path):
    ckpt, _, _ = checkpoint
    run = lambda *a: subprocess.run([sys.executable, str(ROOT / "scripts/quantize.py"), "--model", str(ckpt), *a],
                                    capture_output=True, text=True)
    bad = run("--dtype", "int8", "--group_size", "64", "--output", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "mlp.down_proj: quantize_int8: group_size 64 does not divide in_features 352" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
    ok = run("--dtype", "bf16", "--output", str(tmp_path / "bf16"))
    assert ok.returncode == 0, ok.stderr
    assert "0.50x" in ok.stdout
    gen = Generator.from_pretrained(tmp_path / "bf16", device="cpu")
    assert gen.model.dtype == "bf16" and gen.model.cache_dtype == torch.bfloat16


@pytest.mark.parametrize("cpu, says", [({"avx2", "fma"}, "no native bf16"),  # an AVX2-only CPU
                                       ({"avx2", "avx512f", "avx512_bf16"}, "bf16 matmuls measured at 200")])
def test_cpu_where_bf16_does_not_pay_logs_once_and_still_works(monkeypatch, caplog, cpu, says):
    """No bf16 hardware, or AVX512-BF16 measured slower than fp32 (as on a Xeon capped below AMX):
    prefill widens bf16/int8 weights to fp32, says so once, and gives the same numbers."""
    from kr_mini_llm.inference import packed

    from kr_mini_llm import device

    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset(cpu))
    monkeypatch.setattr(device, "matmul_gflops", lambda: (200.0, 400.0))
    monkeypatch.setattr(device, "bf16_pays_here", lambda: device.bf16_matmuls_pay())  # not this machine's cached answer
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    packed.bf16_prefill.cache_clear()
    try:
        torch.manual_seed(4)
        model = Transformer(config()).eval()
        ids = torch.randint(0, 512, (1, 40))
        with caplog.at_level("WARNING"):
            bf16 = DecodeModel.from_transformer(model, "bf16")
            DecodeModel.from_transformer(model, "int8")
        assert sum(says in r.message for r in caplog.records) == 1
        assert not packed.bf16_prefill()
        ref = logits_with_cache(model, ids, steps=2)
        got = logits_with_cache(bf16, ids, steps=2, cache_dtype=bf16.cache_dtype)
        assert ((got - ref).norm() / ref.norm()).item() < REL_TOL["bf16"]
    finally:
        packed.bf16_prefill.cache_clear()
