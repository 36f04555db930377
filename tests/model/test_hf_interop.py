"""HF transformers is the outside oracle for the model's logits (a test dependency only)."""
import pytest
import torch

import transformers  # noqa: E402  (a test dependency, installed by make test)

from kr_mini_llm import Transformer  # noqa: E402

CASES = [
    dict(kind="llama", heads=4, kv=4, theta=10000.0, tied=False),
    dict(kind="llama", heads=8, kv=2, theta=500000.0, tied=True),
    dict(kind="llama", heads=6, kv=1, theta=10000.0, tied=False, rope={"rope_type": "linear", "factor": 2.0}),
    dict(kind="llama", heads=4, kv=2, theta=10000.0, tied=False,
         rope={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}),
    dict(kind="qwen3", heads=4, kv=2, theta=1000000.0, tied=True),
    dict(kind="qwen3", heads=8, kv=1, theta=10000.0, tied=False, head_dim=24),
]


def hf_model(case):
    common = dict(vocab_size=101, hidden_size=96 if case["heads"] != 8 else 128, intermediate_size=112,
                  num_hidden_layers=2, num_attention_heads=case["heads"], num_key_value_heads=case["kv"],
                  max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=case["tied"])
    if case["kind"] == "qwen3":
        common["hidden_size"] = 96 if case["heads"] == 4 else 128
    rope = {"rope_type": "default", "rope_theta": case["theta"], **case.get("rope", {})}
    rope["rope_theta"] = case["theta"]
    if "head_dim" in case:
        common["head_dim"] = case["head_dim"]
    if case["kind"] == "llama":
        config = transformers.LlamaConfig(**common, rope_parameters=rope)
        cls = transformers.LlamaForCausalLM
    else:
        config = transformers.Qwen3Config(**common, rope_parameters=rope)
        cls = transformers.Qwen3ForCausalLM
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():  # HF initialises norms to one: perturb them so they are tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['kind']}-{c['heads']}:{c['kv']}-{c.get('rope', {}).get('rope_type', 'default')}-tied{c['tied']}")
def test_hf_logits_match_both_ways(case, tmp_path):
    hf = hf_model(case)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ours = Transformer.from_hf(tmp_path / "hf").eval()
    ids = torch.randint(0, 101, (2, 50))
    with torch.no_grad():
        expected = hf(ids).logits
        torch.testing.assert_close(ours(ids), expected, atol=1e-4, rtol=1e-4)
        ours.save_hf(tmp_path / "ours")
        back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
        torch.testing.assert_close(back(ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_from_hf_rejects_unsupported(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        Transformer.from_hf(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Transformer.from_hf(tmp_path / "missing")
