"""PEFT as the outside oracle: our adapters in PEFT's format on the HF model that save_hf writes
give our logits, and PEFT's adapters imported into ours give PEFT's."""
import peft
import pytest
import torch
import transformers

from kr_mini_llm import Transformer
from kr_mini_llm.lora import LoRAParameters, apply_lora, lora_modules
from kr_mini_llm.lora.apply import LoRAError
from kr_mini_llm.lora.peft import export_peft, import_peft

from .conftest import tiny_config


def base_and_hf(tmp_path, qk_norm):
    torch.manual_seed(3)
    ours = Transformer(tiny_config(qk_norm=qk_norm, tie_word_embeddings=False)).eval()
    ours.save_hf(tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32).eval()
    return ours, hf


@pytest.mark.parametrize("qk_norm", [False, True], ids=["llama", "qwen3"])
def test_our_adapters_exported_load_in_peft_with_the_same_logits(tmp_path, qk_norm):
    ours, hf = base_and_hf(tmp_path, qk_norm)
    apply_lora(ours, 2, LoRAParameters(rank=4, scale=6.0, keys=["q", "v", "o", "up", "down"]))
    with torch.no_grad():
        for m in lora_modules(ours).values():
            m.lora_B.normal_(0, 0.05)
    export_peft(ours, tmp_path / "peft", str(tmp_path / "hf"))
    model = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    x = torch.randint(0, 512, (2, 21))
    with torch.no_grad():
        theirs = model(input_ids=x).logits
        mine = ours(x)
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)
    n_peft = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert n_peft == sum(p.numel() for n, p in ours.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("qk_norm,rslora", [(False, False), (True, True)], ids=["llama", "qwen3-rslora"])
def test_peft_adapters_imported_give_peft_logits(tmp_path, qk_norm, rslora):
    ours, hf = base_and_hf(tmp_path, qk_norm)
    cfg = peft.LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "k_proj", "gate_proj"],
                          layers_to_transform=[1, 2], lora_dropout=0.0, use_rslora=rslora, task_type="CAUSAL_LM")
    torch.manual_seed(4)
    model = peft.get_peft_model(hf, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.save_pretrained(tmp_path / "peft")
    num_layers, params, dora = import_peft(ours, tmp_path / "peft")
    assert num_layers == 2 and params.rank == 4 and not dora
    assert params.scale == pytest.approx(12 / 2 if rslora else 12 / 4)
    x = torch.randint(0, 512, (2, 15))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), model(input_ids=x).logits, rtol=1e-4, atol=1e-4)


def test_unsupported_peft_adapters_are_refused(tmp_path):
    ours, hf = base_and_hf(tmp_path, False)
    model = peft.get_peft_model(hf, peft.LoraConfig(r=2, target_modules=["q_proj"], layers_to_transform=[0],
                                                    task_type="CAUSAL_LM"))
    model.save_pretrained(tmp_path / "first_layer")
    with pytest.raises(LoRAError, match="not the last blocks"):
        import_peft(ours, tmp_path / "first_layer")
    with pytest.raises(LoRAError, match="no adapter_config.json"):
        import_peft(ours, tmp_path)
