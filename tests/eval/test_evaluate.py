"""scripts/evaluate.py: the report's figures checked against independent computations, two models
with different tokenizers compared over the same bytes, and bad input."""
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kr_mini_llm.data.datasets import TokenShards
from kr_mini_llm.data.tokenizer import Tokenizer, train_tokenizer
from kr_mini_llm.eval import EvalError, PromptsError, TestSplit, read_prompts, tokenizer_stats
from kr_mini_llm.eval.report import evaluate_models
from kr_mini_llm.inference import Generator
from kr_mini_llm.checkpoint import integrity, load_model, resolve_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _evaluate(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "scripts/evaluate.py"), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def other_tokenizer_model(eval_checkpoint, token_data, tmp_path_factory):
    """The same weights with another tokenizer (same vocab size, other coverage): its test text must be re-encoded."""
    tokens, _ = token_data
    d = tmp_path_factory.mktemp("other") / "checkpoint-1"
    shutil.copytree(resolve_checkpoint(eval_checkpoint), d)
    tok = train_tokenizer([tokens.parent / "processed/train.txt"], 512, d.parent / "tok", num_threads=1,
                          character_coverage=0.98)
    shutil.copy(tok, d / "tokenizer.model")
    integrity.write_manifest(d)  # a deliberate edit: record the new tokenizer's checksum
    return d


def _independent_test_loss(ckpt, arrays, bos, T):
    """Sum of -log p over every target but <s>, with full logits and log_softmax (not the fused loss)."""
    gen = Generator.from_pretrained(ckpt, device="cpu", ops_impl="reference")
    nats, n = 0.0, 0
    with torch.no_grad():
        for a in arrays:
            a = torch.from_numpy(np.asarray(a, dtype=np.int64))
            for lo in range(0, len(a) - 1, T):
                w = a[lo:lo + T + 1]
                logp = F.log_softmax(gen.model(w[None, :-1]).double()[0], -1)
                lp = logp.gather(1, w[1:, None])[:, 0]
                keep = w[1:] != bos
                nats -= float(lp[keep].sum())
                n += int(keep.sum())
    return nats, n


def test_report_two_models(eval_checkpoint, other_tokenizer_model, token_data, tmp_path):
    tokens, tok_path = token_data
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\n대한민국의 수도는\n오늘 날씨가\n", encoding="utf-8")
    r = _evaluate("--model", eval_checkpoint, other_tokenizer_model, "--tokens", tokens, "--prompts", prompts,
                  "--output", tmp_path / "out/report", "--max_new_tokens", 6)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "out/report.json").read_text(encoding="utf-8"))
    md = (tmp_path / "out/report.md").read_text(encoding="utf-8")
    a, b = report["models"]
    meta_bytes = json.loads((tokens / "meta.json").read_text())["splits"]["test"]["bytes"]
    # the same bytes for both tokenizers: exactly the original text's UTF-8 bytes
    assert a["test"]["bytes"] == b["test"]["bytes"] == meta_bytes
    docs = TestSplit.find(tokens).documents()
    assert sum(len(d.encode()) for d in docs) == meta_bytes
    assert "token shards" in a["test"]["source"] and "re-encoded" in b["test"]["source"]
    # model A: its loss recomputed independently over the shards
    tok = Tokenizer(tok_path)
    shards = TokenShards(tokens, "test")
    nats, n = _independent_test_loss(a["checkpoint"], shards.arrays, tok.bos_id, a["test"]["seq_len"])
    assert a["test"]["tokens"] == n
    assert a["test"]["loss"] == pytest.approx(nats / n, rel=1e-4)
    assert a["test"]["bits_per_byte"] == pytest.approx(nats / math.log(2) / meta_bytes, rel=1e-4)
    assert a["test"]["perplexity"] == pytest.approx(math.exp(nats / n), rel=1e-3)
    # model B re-encodes the text with its own tokenizer: more tokens than docs' characters / 4, fewer than bytes
    tok_b = Tokenizer(Path(b["checkpoint"]) / "tokenizer.model")
    ids_b = tok_b.encode(docs)
    assert b["test"]["tokens"] == sum(len(x) + 1 for x in ids_b)      # content + </s>, never <s>
    # tokenizer figures on the test text
    s = a["tokenizer"]
    assert s == tokenizer_stats(tok, docs)
    assert s["chars"] == sum(map(len, docs)) and s["unknown_tokens"] == 0
    assert s["bytes_per_token"] == pytest.approx(meta_bytes / s["tokens"])
    byte_ids = {tok.piece_to_id(f"<0x{i:02X}>") for i in range(256)}
    assert s["byte_fallback_tokens"] == sum(i in byte_ids for x in tok.encode(docs) for i in x)
    # speed, size, samples
    for m in (a, b):
        g = m["generation"]
        assert g["prompt_tokens"] == 128 and g["ttft_s"] > 0 and g["decode_tokens_per_s"] > 0
        assert g["peak_memory_bytes"] > 0
        ck = Path(m["checkpoint"])
        assert m["bytes_on_disk"]["model_files"] == sum((ck / f).stat().st_size for f in
                                                         ("model.safetensors", "model_config.yaml", "tokenizer.model"))
        assert [x["prompt"] for x in m["samples"]] == ["대한민국의 수도는", "오늘 날씨가"]
    assert a["parameters"] == sum(p.numel() for p in load_model(a["checkpoint"])[0].parameters())
    # seeded: sample i is Generator.generate with seed i
    gen = Generator.from_pretrained(a["checkpoint"], device="cpu")
    assert a["samples"][1]["text"] == gen.generate("오늘 날씨가", max_new_tokens=6, temperature=0.8, top_k=50,
                                                   top_p=0.95, seed=1)
    assert "## Comparison" in md and md.count(str(eval_checkpoint)) >= 2 and str(other_tokenizer_model) in md


def test_bad_input(eval_checkpoint, token_data, tmp_path, capsys):
    tokens, _ = token_data
    no_tok = tmp_path / "no_tok" / "checkpoint-1"
    shutil.copytree(resolve_checkpoint(eval_checkpoint), no_tok)
    (no_tok / "tokenizer.model").unlink()
    with pytest.raises(EvalError, match="lacks tokenizer.model"):
        evaluate_models([no_tok], tokens=tokens, speed=False)
    with pytest.raises(EvalError, match="no checkpoint here"):
        evaluate_models([tmp_path], tokens=tokens, speed=False)
    no_test = tmp_path / "tokens"
    no_test.mkdir()
    meta = json.loads((tokens / "meta.json").read_text())
    del meta["splits"]["test"]
    (no_test / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(EvalError, match="has no test split"):
        TestSplit.find(no_test)
    with pytest.raises(EvalError, match="no meta.json"):
        TestSplit.find(tmp_path / "nowhere")
    bad = tmp_path / "prompts.txt"
    bad.write_bytes("첫 줄\n".encode() + "둘째 줄".encode("cp949"))
    with pytest.raises(PromptsError, match=r"not UTF-8 \(bad byte 0x[0-9a-f]{2} on line 2\)"):
        read_prompts(bad)
    # the script: a clear message, exit code 2, nothing written
    spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "scripts/evaluate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--model", str(eval_checkpoint), "--tokens", str(tokens), "--prompts", str(bad),
                        "--output", str(tmp_path / "r")]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    assert not list(tmp_path.glob("r.*"))
