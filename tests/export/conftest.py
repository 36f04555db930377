"""Models for the export tests: random weights large enough that greedy decoding has clear winners
(the 0.02 initialisation gives near-uniform logits, where float noise would pick the token), on the
small Korean tokenizer of tests/conftest.py; and the Korean texts the tokenizers are compared on."""
import pytest
import torch

from kr_mini_llm import Transformer, TransformerConfig

# plain prose, rare syllables and Hanja (byte fallback), emoji, chat special tokens, spaces and digits
TEXTS = [
    "대한민국의 수도는 서울입니다.",
    "어제 우리 가족은 공원에서 사진을 찍었습니다. 오늘 아침 동생은 편지를 썼습니다.",
    "뷁 똠방각하 쀍 햏 꿿",
    "大韓民國의 漢字 표기",
    "이모지도 됩니다 😀🇰🇷👍🏽 끝",
    "<|im_start|>user\n안녕하세요?<|im_end|>\n<|im_start|>assistant\n",
    " 공백 하나로 시작",
    "   공백 셋으로 시작하고   끝도 공백   ",
    "줄\n\n바꿈과\t탭, 숫자 2024년 3월 15일, English words",
    "\n",
]

PROMPTS = ["대한민국의 수도는", "어제 우리 가족은", "할머니께서는 시장에서", "봄이 오면 아이들은 공원에서",
           "뷁 大韓 😀 이상한 입력"]


def tiny_config(**changes):
    base = dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96,
                max_seq_length=128, rope_theta=10000.0)
    return TransformerConfig(**{**base, **changes})


def random_model(config, seed=0, std=0.3):
    torch.manual_seed(seed)
    model = Transformer(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:   # norm weights around 1
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, std)
    return model.eval()


def save_model(model, path, tokenizer):
    from kr_mini_llm.lora.fuse import save_model_dir

    save_model_dir(model, path, tokenizer)
    return path


@pytest.fixture(scope="session")
def tokenizer_file(token_data):
    return token_data[1]


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, tokenizer_file):
    """Llama-style: no QK-norm, tied embeddings, GQA, ffn rows of 100 (not a multiple of 32)."""
    cfg = tiny_config(intermediate_size=100, tie_word_embeddings=True)
    return save_model(random_model(cfg, seed=1), tmp_path_factory.mktemp("export") / "llama", tokenizer_file)


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory, tokenizer_file):
    """Qwen3-style: QK-norm, untied output, head_dim (32) not hidden/heads (16), MQA."""
    cfg = tiny_config(qk_norm=True, tie_word_embeddings=False, head_dim=32, num_kv_heads=1, rope_theta=1e6)
    return save_model(random_model(cfg, seed=2), tmp_path_factory.mktemp("export") / "qwen3", tokenizer_file)


def make_adapters(base_dir, out, seed=3, rank=4):
    """LoRA adapters on every projection of every block of `base_dir`, with random A and B (B is
    zero after initialisation, which would make fusing a no-op), as scripts/lora.py writes them."""
    from kr_mini_llm.lora import LoRAParameters, apply_lora, lora_modules, model_fingerprint
    from kr_mini_llm.lora.adapters import WEIGHTS_NAME, save_adapter_weights, write_adapter_config
    from kr_mini_llm.lora.base import load_base_model

    model = load_base_model(base_dir).model
    fingerprint = model_fingerprint(model)
    params = LoRAParameters(rank=rank, scale=2.0, keys=["all"])
    apply_lora(model, -1, params)
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            for name, p in m.named_parameters():
                if "lora" in name:
                    p.normal_(0, 0.1)
    save_adapter_weights(out / WEIGHTS_NAME, model, fingerprint, step=1)
    write_adapter_config(out, {"model": str(base_dir), "base_model_fingerprint": fingerprint,
                               "fine_tune_type": "lora", "num_layers": -1, "lora_parameters": params.to_dict()})
    return out


@pytest.fixture(scope="session")
def adapters_dir(tmp_path_factory, llama_dir):
    return make_adapters(llama_dir, tmp_path_factory.mktemp("export") / "adapters")


@pytest.fixture(scope="session")
def linear_rope_dir(tmp_path_factory, tokenizer_file):
    """Llama-style with linear RoPE scaling (the one scaling llama.cpp shares with us), untied, MHA."""
    cfg = tiny_config(rope_scaling={"type": "linear", "factor": 4.0}, num_kv_heads=4, tie_word_embeddings=False)
    return save_model(random_model(cfg, seed=4), tmp_path_factory.mktemp("export") / "linear_rope", tokenizer_file)
