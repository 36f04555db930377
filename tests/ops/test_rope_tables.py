"""rope_tables against HF transformers (a test dependency only) for every scaling type."""
import math
import subprocess
import sys

import pytest
import torch

from kr_mini_llm.ops import rope_inv_freq, rope_tables

llama = pytest.importorskip("transformers.models.llama.modeling_llama")
from transformers import LlamaConfig  # noqa: E402

HEAD_DIMS = [32, 64, 80, 96, 128, 256]
THETAS = [10000.0, 500000.0, 1e6]


def hf(head_dim, theta, max_pos, position_ids, **rope):
    """HF Llama's inv_freq, attention factor and half-width cos/sin at position_ids [B, T]."""
    params = {"rope_type": "default", "rope_theta": theta, **rope}
    cfg = LlamaConfig(hidden_size=2 * head_dim, num_attention_heads=2, head_dim=head_dim,
                      max_position_embeddings=max_pos, rope_parameters=params)
    emb = llama.LlamaRotaryEmbedding(cfg)
    cos, sin = emb(torch.zeros(1), position_ids)
    half = head_dim // 2
    # HF's tables are cat(freqs, freqs): the two halves are the same numbers
    assert torch.equal(cos[..., :half], cos[..., half:]) and torch.equal(sin[..., :half], sin[..., half:])
    return emb.inv_freq, emb.attention_scaling, cos[..., :half], sin[..., :half]


def check(head_dim, theta, scaling, hf_rope, max_pos=4096, T=300, offset=0, exact=True):
    pos = torch.arange(offset, offset + T)
    inv_hf, attn_hf, cos_hf, sin_hf = hf(head_dim, theta, max_pos, pos[None], **hf_rope)
    inv, attn = rope_inv_freq(head_dim, theta, scaling, seq_len=offset + T)
    cos, sin = rope_tables(head_dim, pos, theta, scaling)
    assert cos.shape == sin.shape == (T, head_dim // 2) and cos.dtype == torch.float32
    assert attn == pytest.approx(attn_hf, rel=1e-12)
    if exact:
        assert torch.equal(inv, inv_hf)
        assert torch.equal(cos, cos_hf[0]) and torch.equal(sin, sin_hf[0])
    else:
        torch.testing.assert_close(inv, inv_hf, rtol=2e-6, atol=0)
        torch.testing.assert_close(cos, cos_hf[0], rtol=0, atol=2e-4)
        torch.testing.assert_close(sin, sin_hf[0], rtol=0, atol=2e-4)
    return cos, sin


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("theta", THETAS)
def test_default(head_dim, theta):
    check(head_dim, theta, None, {}, offset=3000)
    check(head_dim, theta, {"type": "default"}, {}, T=5)


@pytest.mark.parametrize("head_dim", [64, 80, 128])
@pytest.mark.parametrize("theta", THETAS)
@pytest.mark.parametrize("factor", [2.0, 4.0, 8])
def test_linear(head_dim, theta, factor):
    check(head_dim, theta, {"type": "linear", "factor": factor}, {"rope_type": "linear", "factor": factor})


@pytest.mark.parametrize("head_dim", [64, 96, 128])
@pytest.mark.parametrize("theta", [10000.0, 1e6])
@pytest.mark.parametrize("factor", [2.0, 4.0])
@pytest.mark.parametrize("length", [100, 2048, 2049, 5000])
def test_ntk_is_hf_dynamic_at_the_tables_length(head_dim, theta, factor, length):
    m = 2048
    ours = {"type": "ntk", "factor": factor, "original_max_position_embeddings": m}
    hf_rope = {"rope_type": "dynamic", "factor": factor}
    # HF evaluates the dynamic base in float32 at run time; we keep it in float64.
    check(head_dim, theta, ours, hf_rope, max_pos=m, T=64, offset=length - 64, exact=length <= m)
    if length <= m:  # no scaling up to the original length
        assert torch.equal(rope_inv_freq(head_dim, theta, ours, seq_len=length)[0],
                           rope_inv_freq(head_dim, theta)[0])
    else:
        assert (rope_inv_freq(head_dim, theta, ours, seq_len=length)[0][1:]
                < rope_inv_freq(head_dim, theta)[0][1:]).all()


def test_ntk_aliases_and_explicit_seq_len():
    a = rope_tables(64, 10, 1e4, {"type": "ntk", "factor": 2.0, "original_max_position_embeddings": 100,
                                  "seq_len": 400})
    b = rope_tables(64, 10, 1e4, {"rope_type": "dynamic", "factor": 2.0, "max_position_embeddings": 100,
                                  "seq_len": 400})
    base = 1e4 * (2.0 * 400 / 100 - 1.0) ** (64 / 62)
    c = rope_tables(64, 10, base)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.testing.assert_close(a[0], c[0], rtol=0, atol=1e-6)


YARN = [
    # the project's long-context config (seed 003): 32K -> 128K, YaRN paper's alpha/beta names
    (128, 1e6, {"factor": 4.0, "original_max_position_embeddings": 32768, "alpha": 1.0, "beta": 32.0},
     {"factor": 4.0, "original_max_position_embeddings": 32768, "beta_slow": 1.0, "beta_fast": 32.0}),
    (64, 1e4, {"factor": 8.0, "original_max_position_embeddings": 4096},
     {"factor": 8.0, "original_max_position_embeddings": 4096}),
    (80, 5e5, {"factor": 2.0, "original_max_position_embeddings": 2048, "beta_fast": 16, "beta_slow": 2,
               "truncate": False},
     {"factor": 2.0, "original_max_position_embeddings": 2048, "beta_fast": 16, "beta_slow": 2,
      "truncate": False}),
    (96, 1e4, {"factor": 4.0, "original_max_position_embeddings": 4096, "attention_factor": 1.3},
     {"factor": 4.0, "original_max_position_embeddings": 4096, "attention_factor": 1.3}),
    (256, 1e6, {"factor": 40.0, "original_max_position_embeddings": 4096, "mscale": 1.0, "mscale_all_dim": 0.707},
     {"factor": 40.0, "original_max_position_embeddings": 4096, "mscale": 1.0, "mscale_all_dim": 0.707}),
    (32, 1e4, {"factor": 1.0, "original_max_position_embeddings": 4096},
     {"factor": 1.0, "original_max_position_embeddings": 4096}),
]


@pytest.mark.parametrize("head_dim, theta, ours, theirs", YARN)
def test_yarn(head_dim, theta, ours, theirs):
    cos, sin = check(head_dim, theta, {"type": "yarn", **ours}, {"rope_type": "yarn", **theirs}, offset=100000)
    _, attn = rope_inv_freq(head_dim, theta, {"type": "yarn", **ours})
    if "attention_factor" not in ours and "mscale" not in ours:
        assert attn == pytest.approx(0.1 * math.log(ours["factor"]) + 1.0 if ours["factor"] > 1 else 1.0)
    # the attention factor is applied to cos and sin
    torch.testing.assert_close(cos.square() + sin.square(), torch.full_like(cos, attn ** 2))


def test_layouts_dtype_and_device():
    pos = torch.tensor([[0, 1, 2, 3], [7, 8, 9, 10]])
    cos2, sin2 = rope_tables(64, pos)
    assert cos2.shape == (2, 4, 32)
    cos1, sin1 = rope_tables(64, 11)
    assert torch.equal(cos2[1], cos1[7:]) and torch.equal(sin2[0], sin1[:4])
    c64, s64 = rope_tables(64, 11, dtype=torch.float64)
    assert c64.dtype == torch.float64
    torch.testing.assert_close(c64, cos1.double(), rtol=0, atol=1e-6)
    cb, _ = rope_tables(64, 11, dtype=torch.bfloat16, device="cpu")
    assert cb.dtype == torch.bfloat16 and torch.equal(cb, cos1.bfloat16())
    assert rope_tables(64, 0)[0].shape == (0, 32)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(head_dim=63, positions=4), ValueError, "head_dim must be an even int >= 2, got 63"),
    (dict(head_dim=64, positions=4, theta=0.0), ValueError, "theta must be a positive number"),
    (dict(head_dim=64, positions=torch.zeros(2, 2, 2, dtype=torch.long)), ValueError,
     r"positions must be an int or an integer tensor \[T\] or \[B, T\]"),
    (dict(head_dim=64, positions=torch.zeros(4)), ValueError, "positions must be an int or an integer tensor"),
    (dict(head_dim=64, positions=-1), ValueError, "positions must be an int >= 0"),
    # the scaling is read by the config's parser, which names the key and the fix
    (dict(head_dim=64, positions=4, scaling={"type": "ntk-by-parts"}), ValueError,
     r"rope_scaling.type must be one of none, linear, ntk, yarn; got 'ntk-by-parts'"),
    (dict(head_dim=64, positions=4, scaling={"type": "linear"}), ValueError,
     r"rope_scaling.factor is required for rope_scaling type 'linear': how many times"),
    (dict(head_dim=64, positions=4, scaling={"type": "linear", "factor": 0}), ValueError,
     r"rope_scaling.factor must be > 0 for linear scaling, got 0.0"),
    (dict(head_dim=64, positions=4, scaling={"type": "yarn", "factor": 4.0}), ValueError,
     r"rope_scaling.original_max_position_embeddings is required for yarn scaling here .*give the context"),
    (dict(head_dim=64, positions=4, scaling={"rope_type": "dynamic", "factor": 2.0}), ValueError,
     r"rope_scaling.original_max_position_embeddings is required for ntk scaling"),
    (dict(head_dim=64, positions=4, scaling={"type": "yarn", "factor": 4.0,
                                             "original_max_position_embeddings": 8, "beta_fsat": 32}),
     ValueError, r"unknown key 'rope_scaling.beta_fsat' \(did you mean 'rope_scaling.beta_fast'\?\)"),
    (dict(head_dim=64, positions=4, scaling={"type": "yarn", "factor": 0.5, "original_max_position_embeddings": 8}),
     ValueError, r"rope_scaling.factor must be >= 1 for yarn scaling \(1 is no scaling\), got 0.5"),
    (dict(head_dim=64, positions=4, scaling={"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 8,
                                             "beta": 1.0, "alpha": 2.0}),
     ValueError, r"rope_scaling.beta must be greater than beta_slow for yarn \(1.0 <= 2.0\)"),
    (dict(head_dim=64, positions=4, scaling={"type": "linear", "rope_type": "yarn", "factor": 2}), ValueError,
     r"rope_scaling.rope_type is 'yarn' but type is 'linear': give one of them"),
    (dict(head_dim=64, positions=4, scaling={"type": "linear", "factor": 2.0, "seq_len": 8}), ValueError,
     "scaling's seq_len fixes the length ntk scaling is evaluated at; linear scaling takes none"),
    (dict(head_dim=64, positions=4, scaling=[("type", "linear")]), TypeError, "scaling must be None or a dict"),
    (dict(head_dim=64, positions=4, dtype=torch.int32), TypeError, "dtype must be a floating dtype"),
])
def test_bad_arguments_are_clear_errors(kwargs, exc, match):
    with pytest.raises(exc, match="rope_tables: " + match):
        rope_tables(**kwargs)


def test_scaling_errors_are_config_errors():
    from kr_mini_llm.errors import ConfigError, KrMiniLlmError

    with pytest.raises(ConfigError) as e:
        rope_tables(64, 4, scaling={"type": "linear", "factor": "x"})
    assert isinstance(e.value, KrMiniLlmError) and "rope_scaling.factor must be a number, got 'x'" in str(e.value)


def test_hf_writes_type_and_rope_type_both():
    a = rope_tables(64, 10, 1e4, {"type": "linear", "rope_type": "linear", "factor": 2.0})
    b = rope_tables(64, 10, 1e4, {"type": "linear", "factor": 2.0})
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_package_does_not_import_transformers():
    code = "import sys, kr_mini_llm; assert 'transformers' not in sys.modules, 'transformers was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
