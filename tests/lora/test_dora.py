"""DoRA against PEFT's use_dora=True: the same logits and the same gradients of A, B and the
magnitude, both ways through PEFT's file format; fusing keeps the outputs."""
import peft
import pytest
import torch

from kr_mini_llm import Transformer
from kr_mini_llm.lora import LoRAParameters, apply_lora, fuse_lora, lora_modules, lora_state_dict
from kr_mini_llm.lora.dora import DoRALinear
from kr_mini_llm.lora.peft import export_peft, import_peft

from .test_peft import base_and_hf

KEYS = ["q", "v", "o", "up", "down"]


def perturb_adapters(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)
            m.lora_magnitude.mul_(1 + 0.1 * torch.randn(m.lora_magnitude.shape, generator=g))


def weighted_loss(logits, seed):
    w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed))
    return (logits * w).sum() / logits.numel()


def test_a_fresh_dora_adapter_leaves_the_model_unchanged():
    torch.manual_seed(0)
    from .conftest import tiny_config

    model = Transformer(tiny_config()).eval()
    x = torch.randint(0, 512, (2, 9))
    with torch.no_grad():
        before = model(x)
        apply_lora(model, -1, LoRAParameters(rank=4, keys=KEYS), dora=True)
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert all(isinstance(m, DoRALinear) for m in lora_modules(model).values())
    names = set(lora_state_dict(model))
    assert "layers.0.self_attn.q_proj.lora_magnitude" in names and len(names) == 3 * 3 * len(KEYS)


@pytest.mark.parametrize("qk_norm", [False, True], ids=["llama", "qwen3"])
def test_our_dora_in_peft_gives_the_same_logits_and_gradients(tmp_path, qk_norm):
    ours, hf = base_and_hf(tmp_path, qk_norm)
    apply_lora(ours, 2, LoRAParameters(rank=4, scale=6.0, keys=KEYS), dora=True)
    perturb_adapters(ours, 1)
    export_peft(ours, tmp_path / "peft", str(tmp_path / "hf"))
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "peft", is_trainable=True)
    ours.train(), theirs.train()
    x = torch.randint(0, 512, (2, 17))
    mine, their_logits = ours(x), theirs(input_ids=x).logits
    torch.testing.assert_close(mine, their_logits, rtol=1e-4, atol=1e-4)
    weighted_loss(mine, 2).backward()
    weighted_loss(their_logits, 2).backward()
    their_grads = {n: p.grad for n, p in theirs.named_parameters() if p.requires_grad}
    checked = 0
    for name, m in lora_modules(ours).items():
        peft_name = f"base_model.model.model.{name}"
        for ours_attr, theirs_attr in (("lora_A", "lora_A.default.weight"), ("lora_B", "lora_B.default.weight"),
                                       ("lora_magnitude", "lora_magnitude_vector.default.weight")):
            g = their_grads[f"{peft_name}.{theirs_attr}"]
            assert g.abs().sum() > 0
            torch.testing.assert_close(getattr(m, ours_attr).grad, g, rtol=1e-4, atol=1e-6)
            checked += 1
    assert checked == len(their_grads) == 2 * len(KEYS) * 3


def test_peft_dora_imported_gives_peft_logits(tmp_path):
    ours, hf = base_and_hf(tmp_path, False)
    cfg = peft.LoraConfig(r=4, lora_alpha=12, target_modules=["k_proj", "gate_proj"], layers_to_transform=[1, 2],
                          use_dora=True, task_type="CAUSAL_LM")
    model = peft.get_peft_model(hf, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "magnitude" in n:
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "peft")
    num_layers, params, dora = import_peft(ours, tmp_path / "peft")
    assert dora and num_layers == 2 and params.scale == pytest.approx(3.0)
    x = torch.randint(0, 512, (2, 13))
    model.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), model(input_ids=x).logits, rtol=1e-4, atol=1e-4)


def test_fused_dora_gives_the_unfused_outputs():
    from .conftest import tiny_config

    torch.manual_seed(5)
    model = Transformer(tiny_config()).eval()
    apply_lora(model, 2, LoRAParameters(rank=4, keys=["all"]), dora=True)
    perturb_adapters(model, 6)
    x = torch.randint(0, 512, (3, 11))
    with torch.no_grad():
        unfused = model(x)
        fuse_lora(model)
        assert not lora_modules(model)
        torch.testing.assert_close(model(x), unfused, rtol=1e-4, atol=1e-4)
