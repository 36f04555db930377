"""A tiny base model (saved as a checkpoint directory) and a small Korean chat set, made by the tests."""
import json
import random

import pytest
import torch

from kr_mini_llm import Transformer, TransformerConfig

COLORS = ["빨강", "파랑", "노랑", "초록", "보라", "하양"]


def tiny_config(**changes):
    base = dict(vocab_size=512, hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=128,
                max_seq_length=64)
    return TransformerConfig(**{**base, **changes})


def make_base(path, tokenizer, seed=0, **changes):
    from kr_mini_llm.lora.fuse import save_model_dir

    torch.manual_seed(seed)
    save_model_dir(Transformer(tiny_config(**changes)), path, tokenizer)
    return path


def chat_rows(n, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        c = rng.choice(COLORS)
        rows.append({"messages": [{"role": "user", "content": f"{c} 색을 말해 주세요."},
                                  {"role": "assistant", "content": f"네, {c}입니다."}]})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="session")
def tokenizer_path(token_data):
    return token_data[1]


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory, tokenizer_path):
    return make_base(tmp_path_factory.mktemp("lora_base") / "base", tokenizer_path)


@pytest.fixture(scope="session")
def chat_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat_data")
    for split, (n, seed) in {"train": (48, 1), "valid": (12, 2), "test": (12, 3)}.items():
        write_jsonl(d / f"{split}.jsonl", chat_rows(n, seed))
    return d


@pytest.fixture()
def lora_args(base_dir, chat_data, tmp_path):
    """Command-line arguments of a short fine-tune (add --iters etc.)."""
    return ["--model", str(base_dir), "--train", "--data", str(chat_data), "--batch-size", "4", "--num-layers", "2",
            "--learning-rate", "2e-3", "--steps-per-report", "2", "--steps-per-eval", "5", "--save-every", "5",
            "--adapter-path", str(tmp_path / "adapters"), "--no-progress", "--device", "cpu", "--mask-prompt"]
