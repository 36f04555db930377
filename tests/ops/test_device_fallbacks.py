"""The kernels the devices without a native one run (MPS, CUDA, XPU today), proved on the CPU:
ops.device_fallbacks() sends the CPU through them. Every op against its float64 reference
(values and gradients), a few Transformer training steps, and their memory: attention stays O(T)
(within 2x of PyTorch's own SDPA), linear_cross_entropy never holds the [N, V] logits, and a
training step needs no more than HF's LlamaForCausalLM with SDPA."""
import importlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kr_mini_llm import TransformerConfig, ops
from kr_mini_llm.model.transformer import Transformer
from kr_mini_llm.ops import _device_attention
from kr_mini_llm.ops.linear_cross_entropy import default_chunk_size
from kr_mini_llm.device import allocated_peak_bytes

from .test_attention import check_against_reference, make
from .utils import assert_close, grads, randn

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fallbacks():
    with ops.device_fallbacks():
        yield


def test_switch_routes_the_cpu_and_puts_it_back():
    with ops.device_fallbacks(False):  # from the native kernels, also where KR_MINI_LLM_OPS=fallback
        assert set(ops.backend_report("cpu").values()) == {"native"}
        with ops.device_fallbacks():
            report = ops.backend_report("cpu")
            assert report == ops.backend_report("mps") == ops.backend_report("cuda")
            assert report["attention"] == report["decode_attention"] == "sdpa"
            assert report["linear_cross_entropy"] == "chunked" and report["rms_norm"] == "fused_rms_norm"
            x = randn(3, 8, dtype=torch.float64)
            with ops.device_fallbacks(False):  # nests: off inside, on again after
                assert ops.backend_report("cpu")["swiglu"] == "native"
            assert ops.backend_report("cpu")["swiglu"] == "elementwise"
            torch.testing.assert_close(ops.swiglu(x, x), ops.swiglu_reference(x, x))
        assert set(ops.backend_report("cpu").values()) == {"native"}


def test_environment_switch():
    code = "from kr_mini_llm import ops; print(ops.backend_report('cpu')['attention'])"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KR_MINI_LLM_OPS": "fallback"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "sdpa", out.stderr
    env["KR_MINI_LLM_OPS"] = "mps"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "KR_MINI_LLM_OPS='mps': use 'fallback'" in out.stderr


def attention_case(B, Tq, Tk, Hq, Hkv, D, dtype, causal, scale):
    q, k, v = make(B, Tq, Tk, Hq, Hkv, D, dtype)
    check_against_reference(q, k, v, causal, scale=scale, dtype=dtype)


@pytest.mark.parametrize("B, Tq, Tk, Hq, Hkv, D, causal, scale", [
    (2, 45, 45, 4, 2, 48, True, None), (1, 70, 33, 6, 2, 64, False, None), (2, 5, 1, 2, 1, 16, False, 0.3),
    (1, 40, 40, 3, 3, 32, True, -0.3), (1, 33, 33, 8, 1, 16, True, 1.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention(fallbacks, monkeypatch, B, Tq, Tk, Hq, Hkv, D, causal, scale, dtype):
    monkeypatch.setattr(_device_attention, "_MIN_ROWS", 4)  # several blocks of rows, ragged last
    monkeypatch.setattr(_device_attention, "BLOCK_ELEMENTS", 1)
    attention_case(B, Tq, Tk, Hq, Hkv, D, dtype, causal, scale)


def test_attention_without_enable_gqa(fallbacks, monkeypatch):
    """A torch without SDPA's enable_gqa: one SDPA call per query head of a kv head."""
    monkeypatch.setattr(_device_attention, "SDPA_HAS_GQA", False)
    attention_case(2, 21, 21, 6, 2, 16, torch.float32, True, None)


def test_attention_lse_and_no_keys(fallbacks):
    q, k, v = randn(2, 9, 4, 8, dtype=torch.float64), randn(2, 9, 2, 8, dtype=torch.float64), randn(2, 9, 2, 8)
    _, lse = torch.ops.kr_mini_llm.attention(q, k, v.double(), True, None)
    s = torch.einsum("bqhgd,bkhd->bhgqk", q.reshape(2, 9, 2, 2, 8), k) / 8 ** 0.5
    s = s.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(s, -1).reshape(2, 4, 9))
    out, lse = torch.ops.kr_mini_llm.attention(q, k[:, :0], v[:, :0].double(), False, None)
    assert torch.equal(out, torch.zeros_like(q)) and torch.isneginf(lse).all()


@pytest.mark.parametrize("dtype, wdtype", [(torch.float64, torch.float64), (torch.bfloat16, torch.bfloat16),
                                           (torch.bfloat16, torch.float32)])
def test_rms_norm(fallbacks, dtype, wdtype):
    x, w, g = randn(3, 5, 64, dtype=dtype), randn(64, dtype=wdtype), randn(3, 5, 64, dtype=dtype)
    y, (gx, gw) = grads(lambda a, b: ops.rms_norm(a, b, 1e-5), (x, w), g)
    ry, (rgx, rgw) = grads(lambda a, b: ops.rms_norm_reference(a, b, 1e-5), (x.double(), w.double()), g.double())
    assert_close(y, ry, dtype)
    assert_close(gx, rgx, dtype, scale=2)
    assert_close(gw, rgw, dtype, scale=8)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_rotary_and_swiglu(fallbacks, dtype):
    x, g = randn(2, 7, 3, 16, dtype=dtype), randn(2, 7, 3, 16, dtype=dtype)
    cos, sin = ops.rope_tables(16, 7, 10000.0)
    y, (gx,) = grads(lambda a: ops.rotary(a, cos, sin), (x,), g)
    ry, (rgx,) = grads(lambda a: ops.rotary_reference(a, cos.double(), sin.double()), (x.double(),), g.double())
    assert_close(y, ry, dtype)
    assert_close(gx, rgx, dtype)
    a, b = randn(4, 33, dtype=dtype), randn(4, 33, dtype=dtype)
    y, gs = grads(ops.swiglu, (a, b), g.reshape(4, -1)[:, :33].contiguous())
    ry, rgs = grads(ops.swiglu_reference, (a.double(), b.double()), g.reshape(4, -1)[:, :33].double())
    assert_close(y, ry, dtype)
    for got, want in zip(gs, rgs):
        assert_close(got, want, dtype, scale=2)


def test_linear_cross_entropy(fallbacks):
    h, w = randn(37, 24, dtype=torch.float64), randn(50, 24, dtype=torch.float64)
    t = torch.randint(0, 50, (37,))
    t[3] = -100
    for mean in (True, False):
        fn = (lambda a, b: ops.linear_cross_entropy(a, b, t, chunk_size=8)) if mean else \
            (lambda a, b: ops.linear_cross_entropy(a, b, t, reduction="sum", chunk_size=8))
        ref = (lambda a, b: ops.linear_cross_entropy_reference(a, b, t, reduction="mean" if mean else "sum"))
        y, gs = grads(fn, (h, w), torch.tensor(1.0, dtype=torch.float64))
        ry, rgs = grads(ref, (h, w), torch.tensor(1.0, dtype=torch.float64))
        assert_close(y, ry, torch.float64)
        for got, want in zip(gs, rgs):
            assert_close(got, want, torch.float64)


@pytest.mark.parametrize("S, lens, Hq, Hkv", [(1, [5, 9, 9], 4, 2), (3, [3, 8, 6], 6, 3), (2, [4, 4], 2, 2)])
def test_decode_attention_and_step(fallbacks, S, lens, Hq, Hkv):
    B, D, Tmax = len(lens), 16, 12
    q = randn(B, S, Hq, D, dtype=torch.float64)
    kc, vc = randn(B, Tmax, Hkv, D, dtype=torch.float64), randn(B, Tmax, Hkv, D, dtype=torch.float64)
    L = torch.tensor(lens)
    torch.testing.assert_close(ops.decode_attention(q, kc, vc, L), ops.decode_attention_reference(q, kc, vc, L))
    qkv = randn(B, S, (Hq + 2 * Hkv) * D, dtype=torch.float64)
    qn, kn = randn(D, dtype=torch.float64), randn(D, dtype=torch.float64)
    cos, sin = (t.double()[:S].expand(B, S, D // 2) for t in ops.rope_tables(D, S, 10000.0))
    start = L - S
    caches = [(kc.clone(), vc.clone()) for _ in range(2)]
    got = ops.decode_attention_step(qkv, qn, kn, 1e-6, cos, sin, *caches[0], start, Hq)
    want = ops.decode_attention_step_reference(qkv, qn, kn, 1e-6, cos, sin, *caches[1], start, Hq)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(caches[0], caches[1])


def tiny_config():
    return TransformerConfig(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                             intermediate_size=96, max_seq_length=32, qk_norm=True)


def test_transformer_training_steps_match_the_references():
    """Three AdamW steps of a float64 Transformer through the fallbacks and through the references."""
    torch.manual_seed(0)
    ids = torch.randint(0, 97, (2, 32))
    labels = torch.roll(ids, -1, 1)
    models = []
    for impl in ("fused", "reference"):
        torch.manual_seed(1)
        models.append(Transformer(tiny_config(), ops_impl=impl).double())
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in models]
    for _ in range(3):
        losses = []
        for i, (m, opt) in enumerate(zip(models, opts)):
            with ops.device_fallbacks(i == 0):
                loss = m(ids, labels)
                loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-10, atol=1e-10)
        for (name, p), q in zip(models[0].named_parameters(), models[1].parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-10, msg=name)
        for opt in opts:
            opt.step()
            opt.zero_grad()


def test_attention_memory_stays_o_t(fallbacks):
    """Forward + backward at T = 8192: within 2x of SDPA's own peak (the [T, T] scores in fp32 would
    be 512 MiB; SDPA's peak is a few MiB)."""
    T, Hq, Hkv, D = 8192, 1, 1, 32
    q = randn(1, T, Hq, D, requires_grad=True)
    k, v = randn(1, T, Hkv, D, requires_grad=True), randn(1, T, Hkv, D, requires_grad=True)
    go = randn(1, T, Hq, D)

    def sdpa():
        F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                       enable_gqa=True).transpose(1, 2).backward(go)

    ours = allocated_peak_bytes(lambda: ops.attention(q, k, v).backward(go))
    theirs = allocated_peak_bytes(sdpa)
    assert ours <= 2 * theirs, f"attention f+b peak {ours / 2**20:.1f} MiB vs SDPA's {theirs / 2**20:.1f} MiB"


def step_peak_and_loss(loss_fn):
    """Peak bytes a forward + backward allocates, and its loss."""
    losses = []

    def step():
        loss = loss_fn()
        loss.backward()
        losses.append(loss.item())

    return allocated_peak_bytes(step), losses[0]


def test_a_training_step_needs_no_more_memory_than_hf_sdpa(fallbacks, tmp_path):
    """A small model's forward + backward through the fallbacks peaks no higher than HF's
    LlamaForCausalLM with SDPA on the same weights and tokens (about 0.77x here; attention saving
    its [T, T] scores, as the reference does, would be about 1.6x)."""
    transformers = pytest.importorskip("transformers")
    B, T, V = 2, 512, 1024
    torch.manual_seed(0)
    ours = Transformer(TransformerConfig.tiny().replace(vocab_size=V, max_seq_length=T))
    ours.save_hf(tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa",
                                                       dtype=torch.float32)
    ids = torch.randint(0, V, (B, T + 1))
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].clone()
    y[:, -1] = -100  # HF shifts labels=x itself: both average the same B * (T - 1) targets
    peak, loss = step_peak_and_loss(lambda: ours(x, y))
    hf_peak, hf_loss = step_peak_and_loss(lambda: hf(input_ids=x, labels=x, use_cache=False).loss)
    assert loss == pytest.approx(hf_loss, rel=1e-5)
    assert peak <= hf_peak, f"training step peak {peak / 2**20:.1f} MiB vs HF SDPA's {hf_peak / 2**20:.1f} MiB"


def test_linear_cross_entropy_never_holds_the_logits(fallbacks):
    N, C, V = 2048, 32, 32000
    h, w = randn(N, C, requires_grad=True), randn(V, C, requires_grad=True)
    t = torch.randint(0, V, (N,))
    chunk_logits = default_chunk_size(N, V) * V * 4
    for run in (lambda: ops.linear_cross_entropy(h, w, t).backward(),            # the fused loss-and-grad pass
                lambda: ops.linear_cross_entropy(h, w, t, reduction="none").sum().backward()):
        peak = allocated_peak_bytes(run)
        # one chunk of fp32 logits at a time, beside grad_weight [V, C] and the [N]-sized rows
        assert peak < 1.25 * chunk_logits + 2 * V * C * 4 + 4 * N * C * 4, \
            f"peak {peak / 2**20:.1f} MiB; a chunk of logits {chunk_logits / 2**20:.1f} MiB, all {N * V * 4 / 2**20:.0f} MiB"


# What PyTorch raises on a Mac for an op without an MPS kernel (aten/src/ATen/mps/MPSFallback.mm).
MPS_MISSING = ("The operator 'aten::_fused_rms_norm' is not currently implemented for the MPS device. If you want "
               "this op to be added in priority during the prototype phase of this feature, please comment on "
               "https://github.com/pytorch/pytorch/issues/77764. As a temporary fix, you can set the environment "
               "variable `PYTORCH_ENABLE_MPS_FALLBACK=1` to use the CPU as a fallback for this op. WARNING: this "
               "will be slower than running natively on MPS.")


def test_an_op_mps_lacks_is_one_line_naming_it(fallbacks, monkeypatch):
    """A fallback that meets a PyTorch op MPS has no kernel for (simulated) stops with one line that
    names our op, PyTorch's, and PYTORCH_ENABLE_MPS_FALLBACK=1; a command prints it as a user error."""
    from kr_mini_llm.errors import KrMiniLlmError
    rms_norm_module = importlib.import_module("kr_mini_llm.ops.rms_norm")  # ops.rms_norm is the function

    def missing_on_mps(*args):
        raise NotImplementedError(MPS_MISSING)

    monkeypatch.setattr(rms_norm_module, "_FUSED", missing_on_mps)
    x, w = randn(3, 16), randn(16)
    with pytest.raises(NotImplementedError) as info:
        ops.rms_norm(x, w)
    message = str(info.value)
    assert isinstance(info.value, KrMiniLlmError) and "\n" not in message
    assert message.startswith("rms_norm: ") and "aten::_fused_rms_norm" in message
    assert "PYTORCH_ENABLE_MPS_FALLBACK=1" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_other_not_implemented_errors_pass_unchanged(fallbacks, monkeypatch):
    from kr_mini_llm.errors import KrMiniLlmError
    rms_norm_module = importlib.import_module("kr_mini_llm.ops.rms_norm")  # ops.rms_norm is the function

    def other(*args):
        raise NotImplementedError("some other gap")

    monkeypatch.setattr(rms_norm_module, "_FUSED", other)
    with pytest.raises(NotImplementedError, match="^some other gap$") as info:
        ops.rms_norm(randn(3, 16), randn(16))
    assert not isinstance(info.value, KrMiniLlmError)


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
def test_a_non_finite_query_gives_nan_as_the_reference(fallbacks, bad):
    """SDPA's fused kernels give 0 for a query row without a finite score; the op gives NaN there."""
    q, k, v = randn(1, 3, 2, 8), randn(1, 3, 1, 8), randn(1, 3, 1, 8)
    q[0, 1, 0, 2] = bad
    out = ops.attention(q, k, v, causal=True)
    want = ops.attention_reference(q.double(), k.double(), v.double(), causal=True)
    assert torch.equal(out.isnan(), want.isnan()) and bool(out[0, 1, 0].isnan().all())
    lens = torch.tensor([1])
    out = ops.decode_attention(q[:, 1:2], k.contiguous(), v.contiguous(), lens)
    want = ops.decode_attention_reference(q[:, 1:2].double(), k.double(), v.double(), lens)
    assert torch.equal(out.isnan(), want.isnan()) and bool(out[0, 0, 0].isnan().all())


def test_autocast_leaves_the_fallbacks_math_alone(fallbacks):
    """In a bf16 autocast region the fallbacks compute as the native kernels do: in their arguments'
    dtypes (autocast would recast their matmuls and SDPA to bf16)."""
    q, k, v = randn(2, 9, 4, 16), randn(2, 9, 2, 16), randn(2, 9, 2, 16)
    hidden, weight, targets = randn(12, 16), randn(50, 16), torch.randint(0, 50, (12,))
    want = ops.attention(q, k, v), ops.linear_cross_entropy(hidden, weight, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ops.attention(q, k, v), ops.linear_cross_entropy(hidden, weight, targets)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=0, atol=0)
