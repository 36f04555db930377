"""The LoRA layer and its application: identity at B = 0, fuse, counts, frozen base."""
import pytest
import torch

from kr_mini_llm import Transformer
from kr_mini_llm.model.layers import Linear
from kr_mini_llm.lora import LoRALinear, LoRAParameters, apply_lora, fuse_lora, lora_modules, parameter_counts
from kr_mini_llm.lora.apply import LoRAError, adapted_layers, normalize_keys

from .conftest import tiny_config


def model_pair(**cfg):
    torch.manual_seed(0)
    base = Transformer(tiny_config(**cfg)).eval()
    adapted = Transformer(tiny_config(**cfg)).eval()
    adapted.load_state_dict(base.state_dict())
    return base, adapted


@pytest.mark.parametrize("keys", [["q", "k", "v", "o"], ["all"]])
def test_zero_B_gives_the_base_logits_exactly(keys):
    base, adapted = model_pair()
    apply_lora(adapted, 2, LoRAParameters(rank=4, scale=20.0, keys=keys))
    x = torch.randint(0, 512, (2, 17))
    assert torch.equal(base(x), adapted(x))
    assert all(torch.count_nonzero(m.lora_A) > 0 for m in lora_modules(adapted).values())


def test_untouched_layers_and_names_are_unchanged():
    base, adapted = model_pair()
    apply_lora(adapted, 1, LoRAParameters(rank=2))
    assert type(adapted.layers[0].self_attn.q_proj) is Linear  # the model's own layer, untouched
    assert isinstance(adapted.layers[2].self_attn.q_proj, LoRALinear)
    assert type(adapted.layers[2].mlp.up_proj) is Linear
    names = set(adapted.state_dict())
    assert set(base.state_dict()) <= names
    assert names - set(base.state_dict()) == {f"layers.2.self_attn.{p}.lora_{ab}" for p in "qkvo" for p in
                                              [p + "_proj"] for ab in "AB"}


def test_trainable_count_is_exact():
    base, adapted = model_pair()
    apply_lora(adapted, 2, LoRAParameters(rank=4, keys=["q", "v", "down"]))
    c = adapted.config
    d = c.resolved_head_dim
    per_block = 4 * (c.hidden_size + c.num_heads * d) + 4 * (c.hidden_size + c.num_kv_heads * d) \
        + 4 * (c.intermediate_size + c.hidden_size)
    trainable, total = parameter_counts(adapted)
    assert trainable == 2 * per_block
    assert total == base.num_parameters + trainable


def test_fuse_matches_the_unfused_adapters_and_scale():
    base, adapted = model_pair()
    apply_lora(adapted, 3, LoRAParameters(rank=4, scale=3.0, keys=["all"]))
    with torch.no_grad():
        for m in lora_modules(adapted).values():
            m.lora_B.normal_(0, 0.05)
    x = torch.randint(0, 512, (2, 19))
    unfused = adapted(x)
    assert not torch.allclose(unfused, base(x), atol=1e-3)  # the adapters do something
    q = adapted.layers[1].self_attn.q_proj
    h = torch.randn(3, 64)
    expected = h @ q.weight.T + 3.0 * (h @ q.lora_A.T @ q.lora_B.T)
    torch.testing.assert_close(q(h), expected, rtol=1e-5, atol=1e-6)
    fuse_lora(adapted)
    assert not lora_modules(adapted)
    fused = adapted.layers[1].self_attn.q_proj
    assert type(fused) is Linear and fused.ops is adapted.layers[0].self_attn.q_proj.ops  # the model's layer back
    torch.testing.assert_close(adapted(x), unfused, rtol=1e-4, atol=1e-4)


def test_dropout_acts_on_the_adapter_input_only():
    torch.manual_seed(1)
    lin = torch.nn.Linear(8, 6, bias=False)
    layer = LoRALinear(lin, rank=2, scale=1.0, dropout=0.5)
    x = torch.randn(4, 8)
    torch.testing.assert_close(layer(x), lin(x))  # B = 0: dropout cannot show through
    with torch.no_grad():
        layer.lora_B.normal_()
    layer.train()
    a, b = layer(x), layer(x)
    assert not torch.allclose(a, b)  # dropout active in training
    layer.eval()
    torch.testing.assert_close(layer(x), lin(x) + (x @ layer.lora_A.T @ layer.lora_B.T))


def test_bad_settings_are_refused():
    with pytest.raises(LoRAError, match="rank must be a positive integer"):
        LoRAParameters(rank=0)
    with pytest.raises(LoRAError, match="unknown LoRA key 'qq'"):
        normalize_keys(["qq"])
    with pytest.raises(LoRAError, match="more than the model's 3 blocks"):
        adapted_layers(4, 3)
    assert adapted_layers(-1, 3) == [0, 1, 2] and adapted_layers(2, 3) == [1, 2]
    _, adapted = model_pair()
    apply_lora(adapted, 1, LoRAParameters(rank=2))
    with pytest.raises(LoRAError, match="already carries LoRA adapters"):
        apply_lora(adapted, 1, LoRAParameters(rank=2))
