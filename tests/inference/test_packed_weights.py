"""Packed inference weights: the DecodeModel against the Transformer, bf16/int8/int4 tolerances,
saving and loading an inference directory, and the errors for mismatched inputs."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kr_mini_llm import Transformer, TransformerConfig, ops
from kr_mini_llm.data.tokenizer import Tokenizer
from kr_mini_llm.inference import Generator
from kr_mini_llm.inference.decode_model import DecodeModel
from kr_mini_llm.inference.saved import InferenceDirError, load_inference_model, save_inference_model
from kr_mini_llm.lora.fuse import save_model_dir
from kr_mini_llm.model import KVCache

ROOT = Path(__file__).resolve().parents[2]
# Relative L2 error of the logits against fp32 (teacher-forced prefill + decode steps, random model).
# bf16 keeps 8 bits of mantissa per weight, int8 per channel about 7: both land well under these.
# int4 (16 levels per group of 32) measured 0.14-0.18 here; its wiring is checked tighter against
# the Transformer holding the same dequantised weights (test_int4_is_the_dequantised_model).
REL_TOL = {"fp32": 1e-5, "bf16": 0.01, "int8": 0.02, "int4": 0.25}


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
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8", "int4"])
def test_decode_model_matches_transformer(dtype, qk_norm, tie):
    torch.manual_seed(0)
    model = Transformer(config(qk_norm, tie)).eval()
    ids = torch.randint(0, 512, (3, 40))
    ref = logits_with_cache(model, ids, steps=6)
    packed = DecodeModel.from_transformer(model, dtype)
    got = logits_with_cache(packed, ids, steps=6, cache_dtype=packed.cache_dtype)
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel < REL_TOL[dtype], f"{dtype}: relative logit error {rel:.2e}"


@pytest.mark.parametrize("dtype", ["fp32", "int8", "int4"])
def test_decode_steps_run_as_one_op(dtype):
    """Decode steps (B * T rows within the decode kernels' reach) call decode_forward once (embedding,
    every block, norm and head), a prefill the seven ops per block; both give the logits of the ops one
    by one to the bit."""
    torch.manual_seed(1)
    packed = DecodeModel.from_transformer(Transformer(config(qk_norm=True)).eval(), dtype)
    ids = torch.randint(0, 512, (3, 30))
    assert packed.block_max_rows >= 3
    calls = []
    real = ops.decode_forward
    ops.decode_forward = lambda *a: calls.append((tuple(a[0].shape), len(a[5]))) or real(*a)
    try:
        fused = logits_with_cache(packed, ids, steps=5, cache_dtype=packed.cache_dtype)
    finally:
        ops.decode_forward = real
    assert calls == [((3, 1), 2)] * 5, "one call of both blocks for each of the 5 decode steps, none for the prefill"
    packed.block_max_rows = packed.step_max_rows = 0  # every block op by op
    assert torch.equal(logits_with_cache(packed, ids, steps=5, cache_dtype=packed.cache_dtype), fused)


def test_a_full_cache_or_model_is_named_and_nothing_written():
    """The one-op step refuses a token past the cache or the model's positions in their own words, before it
    writes a cache row or moves the lengths."""
    torch.manual_seed(2)
    packed = DecodeModel.from_transformer(Transformer(config()).eval(), "int8")
    with torch.inference_mode():
        for max_length, length, words in [(8, 8, "KV cache is full"), (80, 64, "exceeds max_seq_length 64")]:
            cache = KVCache.for_model(packed.config, 1, max_length, dtype=packed.cache_dtype)
            cache.lens.fill_(length)
            k, v = [t.clone() for t in cache.k], [t.clone() for t in cache.v]
            with pytest.raises(ValueError, match=words):
                packed(torch.tensor([[3]]), kv_cache=cache, last_logits_only=True)
            assert int(cache.lens[0]) == length
            assert all(torch.equal(a, b) for a, b in zip(cache.k + cache.v, k + v))
        cache = KVCache.for_model(packed.config, 1, 8, dtype=packed.cache_dtype)
        with pytest.raises(ValueError, match=r"ids\[0, 0\] = 512 is not a token of the vocabulary"):
            packed(torch.tensor([[512]]), kv_cache=cache)
        assert int(cache.lens[0]) == 0


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


@pytest.mark.parametrize("qk_norm,tie,intermediate", [(False, True, 352), (True, False, 344)])
def test_int4_is_the_dequantised_model(qk_norm, tie, intermediate, caplog):
    """The int4 DecodeModel computes the Transformer whose weights are its dequantised ones, up to
    x's int8 rounding and the bf16 cache; a 344-wide MLP (not a multiple of 32) keeps down_proj in
    int8 per output channel, and says so once."""
    torch.manual_seed(5)
    model = Transformer(config(qk_norm, tie).replace(intermediate_size=intermediate)).eval()
    with caplog.at_level("WARNING"):
        packed = DecodeModel.from_transformer(model, "int4")
    stays_int8 = intermediate % 32 != 0
    assert packed.int8_layers == (["layers.0.mlp.down_proj", "layers.1.mlp.down_proj"] if stays_int8 else [])
    assert sum("stay int8" in r.message for r in caplog.records) == int(stays_int8)
    assert packed.layers[0].down.dtype == ("int8" if stays_int8 else "int4")
    assert packed.layers[0].qkv.dtype == packed.layers[0].gate_up.dtype == packed.embed.dtype == "int4"
    assert packed.layers[0].qkv.group_size == 32
    dequantised = Transformer(model.config).eval()
    dense = {}
    for name, t in packed.state_dict().items():
        if name.endswith(".scales"):
            continue
        base = name[:-len(".weight")]
        s = packed.state_dict().get(base + ".scales")
        if t.dtype == torch.uint8:
            t = ops.dequantize_int4(t, s)
        elif t.dtype == torch.int8:
            t = ops.dequantize_int8(t, s)
        dense[name] = t
    dequantised.load_state_dict(dense, strict=False)
    ids = torch.randint(0, 512, (3, 40))
    ref = logits_with_cache(dequantised, ids, steps=6)
    got = logits_with_cache(packed, ids, steps=6, cache_dtype=packed.cache_dtype)
    assert ((got - ref).norm() / ref.norm()).item() < REL_TOL["int8"]
    assert ((got - logits_with_cache(model, ids, steps=6)).norm() / ref.norm()).item() < REL_TOL["int4"]


def test_int4_group_sizes():
    torch.manual_seed(6)
    model = Transformer(config()).eval()
    ids = torch.randint(0, 512, (2, 24))
    ref = logits_with_cache(model, ids, steps=4)
    err = {}
    for g in (32, 128):
        got = logits_with_cache(DecodeModel.from_transformer(model, "int4", g), ids, steps=4)
        err[g] = ((got - ref).norm() / ref.norm()).item()
    assert err[32] < err[128] < REL_TOL["int4"]
    with pytest.raises(ValueError, match="int4 group_size must be a multiple of 32, the packed block, got 48"):
        DecodeModel.from_transformer(model, "int4", 48)


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


def test_int4_saved_directory(checkpoint, tmp_path):
    ckpt, model, tok_path = checkpoint
    prompts = [[2, 10, 11, 12, 13], [2, 40, 41]]
    in_memory = Generator.from_pretrained(ckpt, device="cpu", dtype="int4")
    assert in_memory.model.dtype == "int4" and in_memory.model.cache_dtype == torch.bfloat16
    out = save_inference_model(in_memory.model, tmp_path / "int4", Path(tok_path))
    info = json.loads((out / "inference.json").read_text())
    assert info["dtype"] == "int4"
    assert info["quantization"] == {"scheme": "symmetric", "bits": 4, "packing": "q4_0", "scale_dtype": "float16",
                                    "group_size": 32, "int8_layers": []}
    loaded = Generator.from_pretrained(out, device="cpu")
    assert loaded.model.dtype == "int4"
    for name, t in in_memory.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], t), name
    assert (list(loaded.generate_ids(prompts, 10, stop_at_eos=False))
            == list(in_memory.generate_ids(prompts, 10, stop_at_eos=False)))
    # 4 bits + a float16 scale per 32 weights: 4.5 bits of fp32's 32, and fp32 norms
    assert (out / "model.safetensors").stat().st_size < 0.155 * (ckpt / "model.safetensors").stat().st_size
    with pytest.raises(InferenceDirError, match="holds int4 weights, not int8"):
        Generator.from_pretrained(out, device="cpu", dtype="int8")
    # an int4 tensor under an int8 inference.json: refused by name
    info["dtype"] = "int8"
    (out / "inference.json").write_text(json.dumps(info))
    with pytest.raises(InferenceDirError, match="holds int4 weights; load them with dtype='int4'"):
        load_inference_model(out)


def test_int4_directory_with_float32_scales(checkpoint, tmp_path):
    """A directory written when int4 scales were float32 loads, its scales rounded to float16: Q4_0's
    d in float32 rounds to the very scale quantize_int4 now stores, so it is today's model exactly."""
    from safetensors.torch import load_file, save_file

    ckpt, _, tok_path = checkpoint
    model = Generator.from_pretrained(ckpt, device="cpu", dtype="int4").model
    out = save_inference_model(model, tmp_path / "int4", Path(tok_path))
    tensors = load_file(out / "model.safetensors")
    scales = [n for n, t in tensors.items() if n.endswith(".scales") and t.dtype == torch.float16]
    assert scales
    old = {n: (t.float() if n in scales else t) for n, t in tensors.items()}
    save_file(old, out / "model.safetensors")
    loaded = load_inference_model(out)
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    # a float32 scale past float16's range: refused by name, not run as inf
    old[scales[0]] = old[scales[0]].clone().fill_(1e6)
    save_file(old, out / "model.safetensors")
    with pytest.raises(InferenceDirError, match="past float16's range"):
        load_inference_model(out)


def test_quantize_script(checkpoint, tmp_path):
    ckpt, _, _ = checkpoint
    run = lambda *a: subprocess.run([sys.executable, str(ROOT / "scripts/quantize.py"), "--model", str(ckpt), *a],
                                    capture_output=True, text=True)
    bad = run("--dtype", "int8", "--group_size", "64", "--output", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "mlp.down_proj: quantize_int8: group_size 64 does not divide in_features 352" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
    bad4 = run("--dtype", "int4", "--group_size", "48", "--output", str(tmp_path / "bad4"))
    assert bad4.returncode == 2 and "int4 group_size must be a multiple of 32, the packed block, got 48" in bad4.stderr
    assert "Traceback" not in bad4.stderr and not (tmp_path / "bad4").exists()
    ok4 = run("--dtype", "int4", "--group_size", "64", "--output", str(tmp_path / "int4"))
    assert ok4.returncode == 0, ok4.stderr
    assert "int4 per group of 64 inputs" in ok4.stdout
    assert json.loads((tmp_path / "int4" / "inference.json").read_text())["quantization"]["group_size"] == 64
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
