"""The HF export as transformers users get it: AutoTokenizer gives our ids, AutoModelForCausalLM our
greedy tokens, and the files are readable by others."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kr_mini_llm.data.chat import encode_chat
from kr_mini_llm.data.tokenizer import Tokenizer
from kr_mini_llm.export import CHAT_TEMPLATE_JINJA, export_model
from kr_mini_llm.inference import Generator

from .conftest import PROMPTS, TEXTS
from .test_tokenizer_meta import CONVERSATIONS

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, llama_dir, qwen3_dir, adapters_dir):
    out = tmp_path_factory.mktemp("hf")
    dirs = {"llama": export_model(llama_dir, out / "llama", "hf", "f32").path,
            "qwen3": export_model(qwen3_dir, out / "qwen3", "hf", "f32").path}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(ROOT / "scripts" / "export.py"), "--model", str(llama_dir), "--adapter-path",
                    str(adapters_dir), "--format", "hf", "--output", str(out / "lora")], check=True, env=env,
                   capture_output=True)
    dirs["lora"] = out / "lora"
    return dirs


def test_autotokenizer_gives_our_ids(hf_dirs, tokenizer_file):
    ours = Tokenizer(tokenizer_file)
    hf = transformers.AutoTokenizer.from_pretrained(hf_dirs["llama"])
    for text in TEXTS:
        ids = ours.encode(text)
        assert hf(text, add_special_tokens=False).input_ids == ids, text
        assert hf(text).input_ids == [ours.bos_id] + ids, text     # BOS as the Generator puts it
        assert hf.decode(ids) == text
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (2, 3, 0, 1)
    assert hf.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [ours.im_start_id, ours.im_end_id]


def test_chat_template_gives_encode_chat_ids(hf_dirs, tokenizer_file):
    ours = Tokenizer(tokenizer_file)
    hf = transformers.AutoTokenizer.from_pretrained(hf_dirs["llama"])
    assert json.loads((hf_dirs["llama"] / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE_JINJA
    for messages in CONVERSATIONS:
        ids = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        assert list(ids) == encode_chat(messages, ours, add_generation_prompt=True)[0]


def test_files_are_readable_by_everyone(hf_dirs):
    umask = os.umask(0)
    os.umask(umask)
    for f in hf_dirs["llama"].iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f
    names = sorted(p.name for p in hf_dirs["llama"].iterdir())
    assert names == ["config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
                     "tokenizer.json", "tokenizer.model", "tokenizer_config.json"]


def hf_greedy(model, ids, n):
    ids = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            nxt = model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return ids[0, -n:].tolist()


@pytest.mark.parametrize("name", ["llama", "qwen3", "lora"])
def test_transformers_greedy_equals_ours(hf_dirs, name, llama_dir, qwen3_dir, adapters_dir):
    src = qwen3_dir if name == "qwen3" else llama_dir
    ours = Generator.from_pretrained(src, device="cpu", adapter_path=adapters_dir if name == "lora" else None)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dirs[name], dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dirs[name])
    for prompt in PROMPTS[:2]:
        ids = [ours.tokenizer.bos_id] + ours.tokenizer.encode(prompt)
        assert hf_tok(prompt).input_ids == ids
        want = [s[0] for s in ours.generate_ids([ids], 32, temperature=0.0, stop_at_eos=False)]
        assert hf_greedy(hf_model, ids, 32) == want, prompt
