import pytest
import torch
import torch.nn.functional as F

from kr_mini_llm import KVCache, Transformer, TransformerConfig

from .test_config import PRESETS


def tiny(**changes):
    base = dict(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                intermediate_size=80, max_seq_length=64)
    return TransformerConfig(**{**base, **changes})


def _count_on_meta(config):
    with torch.device("meta"):
        return Transformer(config).num_parameters


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_num_parameters_is_exact(name, tied, qk_norm):
    config = getattr(TransformerConfig, name)().replace(tie_word_embeddings=tied, qk_norm=qk_norm)
    assert config.num_parameters == _count_on_meta(config)


def test_num_parameters_with_explicit_head_dim():
    config = tiny(hidden_size=96, num_heads=4, num_kv_heads=2, head_dim=40, qk_norm=True)
    assert config.resolved_head_dim == 40
    assert config.num_parameters == _count_on_meta(config)


def test_attribute_assignment_changes_count():
    c = TransformerConfig.medium()
    c.num_layers = 20
    assert c.num_parameters == _count_on_meta(c)


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=500, hidden_size=256, num_layers=8, num_heads=4,
                               intermediate_size=512)
    m = Transformer(config)
    std = config.initializer_range
    assert abs(m.layers[0].self_attn.q_proj.weight.std().item() - std) < 0.1 * std
    assert abs(m.layers[0].mlp.down_proj.weight.std().item() - std / 4) < 0.1 * std / 4  # 1/sqrt(2*8)
    assert torch.equal(m.norm.weight, torch.ones(256))


@pytest.mark.parametrize("changes", [
    {}, {"qk_norm": True}, {"tie_word_embeddings": False}, {"num_kv_heads": 1}, {"num_kv_heads": 4},
    {"head_dim": 24, "qk_norm": True}, {"rope_scaling": {"type": "yarn", "factor": 2.0}},
])
def test_fused_and_reference_paths_agree(changes):
    torch.manual_seed(0)
    config = tiny(**changes)
    fused = Transformer(config)
    ref = Transformer(config, ops_impl="reference")
    ref.load_state_dict(fused.state_dict())
    ids = torch.randint(0, config.vocab_size, (3, 19))
    labels = torch.randint(0, config.vocab_size, (3, 19))
    labels[0, :5] = -100
    torch.testing.assert_close(fused(ids), ref(ids), atol=2e-5, rtol=1e-4)
    lf, lr = fused(ids, labels), ref(ids, labels)
    torch.testing.assert_close(lf, lr, atol=2e-5, rtol=1e-5)
    lf.backward()
    lr.backward()
    for (name, pf), pr in zip(fused.named_parameters(), ref.parameters()):
        torch.testing.assert_close(pf.grad, pr.grad, atol=2e-5, rtol=1e-3, msg=name)


def test_loss_is_cross_entropy_of_the_logits():
    torch.manual_seed(0)
    m = Transformer(tiny())
    ids = torch.randint(0, 97, (2, 17))
    labels = torch.randint(0, 97, (2, 17))
    labels[1, 3:9] = -100
    expected = F.cross_entropy(m(ids).reshape(-1, 97), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(m(ids, labels), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("changes", [{}, {"qk_norm": True, "num_kv_heads": 1}])
def test_kv_cache_decoding_matches_full_forward(changes):
    torch.manual_seed(0)
    m = Transformer(tiny(**changes)).eval()
    ids = torch.randint(0, 97, (2, 23))
    with torch.no_grad():
        full = m(ids)
        cache = KVCache.for_model(m.config, batch_size=2, max_length=32)
        steps = [m(ids[:, :9], kv_cache=cache)]  # prefill
        steps += [m(ids[:, t:t + 1], kv_cache=cache) for t in range(9, 20)]
        steps.append(m(ids[:, 20:], kv_cache=cache))  # a chunk of 3
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)
    assert cache.lens.tolist() == [23, 23]


def test_kv_cache_is_head_major():
    """Each KV head's rows side by side ([B, Hkv, Tmax, D] storage seen as [B, Tmax, Hkv, D]): the
    decode kernels read one head as one stream. Batch views keep the layout."""
    cache = KVCache(num_layers=2, batch_size=3, max_length=7, num_kv_heads=2, head_dim=4)
    for c in cache.k + cache.v + cache.rows(1, 3).k:
        assert c.shape[1:] == (7, 2, 4) and c.stride() == (2 * 7 * 4, 4, 7 * 4, 1)


def test_right_padded_prefill_into_cache_rows_then_decode_matches_full_forward():
    """What the server does: prompts of different lengths prefilled together (right-padded) into rows
    2..4 of a cache, logits taken at each prompt's last token, lengths set back, rows moved, decoded."""
    torch.manual_seed(0)
    m = Transformer(tiny()).eval()
    prompts = [torch.randint(0, 97, (n,)) for n in (5, 11, 8)]
    nxt = torch.randint(0, 97, (3, 1))
    with torch.no_grad():
        cache = KVCache.for_model(m.config, batch_size=5, max_length=32)
        view = cache.rows(2, 5)
        ids = torch.zeros(3, 11, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, :len(p)] = p
        lengths = torch.tensor([5, 11, 8])
        first = m(ids, kv_cache=view, logits_at=lengths - 1)[:, -1]
        view.lens.copy_(lengths)
        for src, dst in ((2, 0), (3, 1), (4, 2)):  # keep the busy rows first, as the server does
            cache.move_row(src, dst)
        step = m(nxt, kv_cache=cache.rows(0, 3), last_logits_only=True)[:, -1]
        for i, p in enumerate(prompts):
            full = m(torch.cat([p, nxt[i]]).unsqueeze(0))[0]
            torch.testing.assert_close(first[i], full[len(p) - 1], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(step[i], full[-1], atol=1e-4, rtol=1e-4)
    assert cache.lens[:3].tolist() == [6, 12, 9]


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = Transformer(tiny())
    b = Transformer(tiny()).set_gradient_checkpointing(True)
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 97, (2, 16))
    a(ids, ids).backward()
    b(ids, ids).backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)


def test_block_compiles_fullgraph_with_backward():
    torch.manual_seed(0)
    m = Transformer(tiny(qk_norm=True))
    block = m.layers[0]
    x = torch.randn(2, 16, 64, requires_grad=True)
    cos, sin = m.rope_cos[:16], m.rope_sin[:16]
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    compiled(x, cos, sin).sum().backward()
    g = x.grad.clone()
    x.grad = None
    block(x, cos, sin).sum().backward()
    torch.testing.assert_close(g, x.grad, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_training_step_runs_and_is_close():
    torch.manual_seed(0)
    m = Transformer(tiny())
    ids = torch.randint(0, 97, (2, 16))
    ref = m(ids, ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(ids, ids)
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - ref.item()) < 0.05
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_bad_inputs():
    m = Transformer(tiny())
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, seq_len\]"):
        m(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds max_seq_length 64"):
        m(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must have the shape of input_ids"):
        m(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long))
    cache = KVCache.for_model(m.config, batch_size=1, max_length=8)
    m(torch.zeros(1, 6, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="KV cache is full"):
        m(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="ops impl must be one of"):
        Transformer(tiny(), ops_impl="fast")


def test_dropout_in_training_is_the_same_on_both_paths_and_off_in_eval():
    """model dropout draws one seed per dropout from torch's generator on both paths, so with the
    same torch seed the fused and reference models drop the same elements (loss and gradients
    agree); in eval mode it is off."""
    torch.manual_seed(0)
    config = tiny(dropout=0.3)
    fused = Transformer(config).train()
    ref = Transformer(config, ops_impl="reference").train()
    ref.load_state_dict(fused.state_dict())
    ids = torch.randint(0, config.vocab_size, (3, 19))
    labels = torch.randint(0, config.vocab_size, (3, 19))
    torch.manual_seed(5)
    lf = fused(ids, labels)
    torch.manual_seed(5)
    lr = ref(ids, labels)
    torch.testing.assert_close(lf, lr, atol=2e-5, rtol=1e-5)
    lf.backward()
    lr.backward()
    for (name, pf), pr in zip(fused.named_parameters(), ref.parameters()):
        torch.testing.assert_close(pf.grad, pr.grad, atol=2e-5, rtol=1e-3, msg=name)
    torch.manual_seed(6)
    assert not torch.equal(fused(ids, labels), lf), "another draw, another mask"
    fused.eval()
    assert torch.equal(fused(ids, labels), fused(ids, labels))
