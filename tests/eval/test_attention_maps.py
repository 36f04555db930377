"""Attention maps: the recorded weights against a direct computation, the PNGs, and bad input."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kr_mini_llm.eval import attention_maps
from kr_mini_llm.eval.attention_maps import FontNotFoundError, attention_weights, find_korean_font, token_labels
from kr_mini_llm.data.tokenizer import Tokenizer
from kr_mini_llm.inference import Generator
from kr_mini_llm.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[2]


def _layer0_direct(model, ids):
    """softmax(q k^T / sqrt(d)) of layer 0 from its own weights, head by head, with a causal mask."""
    att = model.layers[0].self_attn
    x = model.layers[0].input_layernorm(model.embed_tokens(torch.tensor([ids])))
    T, H, Hkv, D = len(ids), att.num_heads, att.num_kv_heads, att.head_dim
    q = att.q_proj(x).view(1, T, H, D).double()
    k = att.k_proj(x).view(1, T, Hkv, D).double()
    cos, sin = model.rope_cos[:T].double(), model.rope_sin[:T].double()

    def rope(t):   # rotate-half, tables [T, D/2]
        c, s = cos[None, :, None, :], sin[None, :, None, :]
        t1, t2 = t[..., :D // 2], t[..., D // 2:]
        return torch.cat([t1 * c - t2 * s, t2 * c + t1 * s], -1)

    q, k = rope(q)[0], rope(k)[0]
    out = []
    for h in range(H):
        s = q[:, h] @ k[:, h // (H // Hkv)].T / D ** 0.5
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        out.append(torch.softmax(s, -1))
    return torch.stack(out)


def test_weights_match_direct_computation(eval_checkpoint):
    # The Transformer (fused ops), as a notebook user holds it; from_pretrained would pack it for decode.
    model, ckpt = load_model(eval_checkpoint)
    gen = Generator(model, Tokenizer(str(ckpt / "tokenizer.model")), "cpu")
    ids = [gen.tokenizer.bos_id] + gen.tokenizer.encode("대한민국의 수도는 서울입니다.")
    with torch.no_grad():
        before = gen.model(torch.tensor([ids]))
        maps = attention_weights(gen.model, ids)
        after = gen.model(torch.tensor([ids]))
    cfg = gen.model.config
    assert len(maps) == cfg.num_layers and maps[0].shape == (cfg.num_heads, len(ids), len(ids))
    for m in maps:
        assert torch.allclose(m.sum(-1), torch.ones(m.shape[:2]), atol=1e-5)
        assert float(m.triu(1).abs().max()) == 0.0                         # causal
    with torch.no_grad():
        assert torch.allclose(maps[0].double(), _layer0_direct(gen.model, ids), atol=1e-5)
    assert torch.equal(before, after) and gen.model.ops.impl == "fused"   # the model is left as it was


def test_labels_spell_byte_fallback_characters(eval_checkpoint):
    tok = Generator.from_pretrained(eval_checkpoint, device="cpu").tokenizer
    text = "서울 龍😀"
    ids = tok.encode(text)
    labels = token_labels(tok, ids)
    assert len(labels) == len(ids)
    assert "".join(l for l in labels if l != "·").replace("_", " ") == text


def test_korean_font_is_found_or_named(monkeypatch):
    assert Path(find_korean_font()).is_file()       # fonts-nanum: scripts/install_system_deps.sh --test
    from matplotlib import font_manager
    monkeypatch.setattr(attention_maps, "KOREAN_FONTS", ())
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *a, **k: [])
    with pytest.raises(FontNotFoundError, match="apt-get install fonts-nanum"):
        find_korean_font()


def _script():
    spec = importlib.util.spec_from_file_location("visualize_attention", ROOT / "scripts/visualize_attention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_pngs_and_errors(eval_checkpoint, tmp_path, capsys):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT / "scripts/visualize_attention.py"), "--model", str(eval_checkpoint),
                        "--prompt", "오늘 날씨가 맑다", "--output", str(tmp_path / "a")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    pngs = sorted((tmp_path / "a").glob("*.png"))
    assert [p.name for p in pngs] == ["layer_00.png", "layer_01.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    main = _script().main
    assert main(["--model", str(eval_checkpoint), "--prompt", "가", "--layer", "1", "--head", "3",
                 "--output", str(tmp_path / "b")]) == 0
    assert [p.name for p in (tmp_path / "b").glob("*.png")] == ["layer_01_head_03.png"]
    for flag, value, msg in (("--layer", "2", "--layer 2 does not exist: the model has 2 layers"),
                             ("--head", "-1", "--head -1 does not exist: the model has 4 heads")):
        capsys.readouterr()
        assert main(["--model", str(eval_checkpoint), "--prompt", "가", flag, value,
                     "--output", str(tmp_path / "c")]) == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
