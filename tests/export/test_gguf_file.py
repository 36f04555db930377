"""The GGUF file itself, read back with gguf's reader: metadata, tokenizer and every tensor."""
import gguf
import numpy as np
import pytest
import torch

from kr_mini_llm.data.tokenizer import Tokenizer
from kr_mini_llm.export import CHAT_TEMPLATE_JINJA, export_model, load_for_export


def fields(reader):
    return {name: f.contents() for name, f in reader.fields.items()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, llama_dir, qwen3_dir):
    out = tmp_path_factory.mktemp("gguf")
    files = {}
    for name, d in (("llama", llama_dir), ("qwen3", qwen3_dir)):
        for outtype in ("f32", "f16", "bf16", "q8_0", "q4_0"):
            files[name, outtype] = export_model(d, out / f"{name}-{outtype}.gguf", "gguf", outtype)
    return files


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_metadata(exported, name, llama_dir, qwen3_dir, tokenizer_file):
    model, tok = load_for_export(llama_dir if name == "llama" else qwen3_dir)
    cfg = model.config
    f = fields(gguf.GGUFReader(exported[name, "f32"].path))
    arch = f["general.architecture"]
    assert arch == name
    assert f[f"{arch}.context_length"] == cfg.max_seq_length
    assert f[f"{arch}.embedding_length"] == cfg.hidden_size
    assert f[f"{arch}.block_count"] == cfg.num_layers
    assert f[f"{arch}.feed_forward_length"] == cfg.intermediate_size
    assert (f[f"{arch}.attention.head_count"], f[f"{arch}.attention.head_count_kv"]) == (cfg.num_heads, cfg.num_kv_heads)
    assert f[f"{arch}.attention.key_length"] == f[f"{arch}.rope.dimension_count"] == cfg.resolved_head_dim
    assert f[f"{arch}.rope.freq_base"] == pytest.approx(cfg.rope_theta)
    assert f[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps)
    assert f["tokenizer.ggml.model"] == "llama"
    assert f["tokenizer.ggml.tokens"] == [tok.id_to_piece(i) for i in range(tok.vocab_size)]
    types = f["tokenizer.ggml.token_type"]
    assert types[:6] == [gguf.TokenType.CONTROL, gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * 4
    assert types[6:262] == [gguf.TokenType.BYTE] * 256
    assert set(types[262:]) == {gguf.TokenType.NORMAL}
    assert f["tokenizer.ggml.scores"] == pytest.approx([tok.sp.get_score(i) for i in range(tok.vocab_size)])
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"], f["tokenizer.ggml.unknown_token_id"],
            f["tokenizer.ggml.padding_token_id"], f["tokenizer.ggml.eot_token_id"]) == (2, 3, 1, 0, 5)
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.ggml.add_eos_token"] is False
    assert f["tokenizer.ggml.add_space_prefix"] is False
    assert f["tokenizer.chat_template"] == CHAT_TEMPLATE_JINJA


def _unpermute(w, n_head):
    # inverse of the rotate-half -> interleaved permutation of the "llama" architecture
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("name", ["llama", "qwen3"])
# q4_0: within one step of max|w| / 8 per block (+8 clamps to 7), so 1/8 of the tensor's max
@pytest.mark.parametrize("outtype,tol", [("f32", 0), ("f16", 1e-3), ("bf16", 1e-2), ("q8_0", 1e-2), ("q4_0", 0.13)])
def test_tensors_round_trip(exported, name, outtype, tol, llama_dir, qwen3_dir):
    model, _ = load_for_export(llama_dir if name == "llama" else qwen3_dir)
    cfg = model.config
    result = exported[name, outtype]
    reader = gguf.GGUFReader(result.path)
    got = {t.name: t for t in reader.tensors}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3 if name == "qwen3" else gguf.MODEL_ARCH.LLAMA, cfg.num_layers)
    state = model.state_dict()
    expected = {}
    for k, v in state.items():
        if k == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        expected[names.get_name(k if k.startswith("lm_head") else "model." + k, try_suffixes=(".weight",))] = v
    assert set(got) == set(expected)
    assert ("output.weight" in got) == (not cfg.tie_word_embeddings)
    assert any("attn_q_norm" in n for n in got) == cfg.qk_norm
    kept = []
    for n, t in got.items():
        w = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
        w = w.reshape(expected[n].shape)
        if name == "llama" and n.endswith("attn_q.weight"):
            w = _unpermute(w, cfg.num_heads)
        if name == "llama" and n.endswith("attn_k.weight"):
            w = _unpermute(w, cfg.num_kv_heads)
        ref = expected[n].float()
        err = (w - ref).abs().max().item() / ref.abs().max().item()
        assert err <= tol, (n, t.tensor_type.name, err)
        if ref.ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, n
        elif outtype in ("q8_0", "q4_0") and t.tensor_type != gguf.GGMLQuantizationType[outtype.upper()]:
            kept.append(n)
    rows_not_32 = sorted(n for n, v in expected.items() if v.ndim == 2 and v.shape[-1] % 32)
    if outtype in ("q8_0", "q4_0"):
        assert sorted(kept) == rows_not_32
        assert sorted(r.split(" ")[0] for r in result.kept_unquantized) == rows_not_32
        assert (name == "llama") == bool(rows_not_32)   # llama_dir's ffn rows are 100 long


def test_linear_rope_scaling(linear_rope_dir, tmp_path):
    f = fields(gguf.GGUFReader(export_model(linear_rope_dir, tmp_path / "m.gguf", "gguf", "f16").path))
    assert f["llama.rope.scaling.type"] == "linear" and f["llama.rope.scaling.factor"] == 4.0
    assert f["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16


def test_embedding_rows_beyond_the_tokenizer_get_unused_pieces(tokenizer_file, tmp_path):
    from .conftest import random_model, save_model, tiny_config

    d = save_model(random_model(tiny_config(vocab_size=520)), tmp_path / "model", tokenizer_file)
    f = fields(gguf.GGUFReader(export_model(d, tmp_path / "m.gguf", "gguf", "f32").path))
    assert len(f["tokenizer.ggml.tokens"]) == f["llama.vocab_size"] == 520
    assert f["tokenizer.ggml.tokens"][512:] == [f"[PAD{i}]" for i in range(512, 520)]
    assert f["tokenizer.ggml.token_type"][512:] == [gguf.TokenType.UNUSED] * 8


def test_q4_0_holds_our_int4_weights(exported, qwen3_dir):
    """The Q4_0 blocks are ops.quantize_int4's nibbles and f16 scales: our int4 and the GGUF
    llama.cpp runs are the same weights, bit for bit."""
    from kr_mini_llm import ops

    model, _ = load_for_export(qwen3_dir)
    got = {t.name: t for t in gguf.GGUFReader(exported["qwen3", "q4_0"].path).tensors}
    assert gguf.GGUFReader(exported["qwen3", "q4_0"].path).fields["general.file_type"].contents() == \
        gguf.LlamaFileType.MOSTLY_Q4_0
    w = model.state_dict()["layers.0.mlp.gate_proj.weight"].float()
    t = got["blk.0.ffn_gate.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.Q4_0
    packed, scales = ops.quantize_int4(w, 32)
    blocks = np.array(t.data).reshape(w.shape[0], w.shape[1] // 32, 18)
    assert np.array_equal(blocks[:, :, 2:].reshape(packed.shape), packed.numpy())
    assert scales.dtype == torch.float16
    assert np.array_equal(blocks[:, :, :2].copy().view(np.float16).reshape(scales.shape), scales.numpy())
