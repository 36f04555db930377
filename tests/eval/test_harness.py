"""The lm-evaluation-harness adapter: scores against direct computations, and the project's
offline Korean task run through the real lm_eval command line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance

from kr_mini_llm.eval.harness import KrMiniLLM
from kr_mini_llm.inference import Generator

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def _req(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


@pytest.fixture(scope="module")
def lm(eval_checkpoint):
    return KrMiniLLM(pretrained=str(eval_checkpoint), batch_size=3, device="cpu")


def _direct_logprob(model, ids, n_cont):
    """log p of the last n_cont tokens of ids given the rest, from full logits in float64."""
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([ids[:-1]])).double()[0], -1)
    tgt = torch.tensor(ids[1:])
    return float(logp.gather(1, tgt[:, None])[-n_cont:].sum())


def test_loglikelihood_matches_direct_scores_in_any_batch(lm):
    tok = lm.tokenizer_
    pairs = [("오늘 아침 나는", " 공원에서 책을 읽었습니다."), ("할머니께서는 시장에서", " 꽃을 샀습니다."),
             ("", "작은 고양이가 강가에서 연을 날렸습니다."), ("짧은 문맥 ", "끝."), ("비 오는 날", " 우리는")]
    got = lm.loglikelihood([_req("loglikelihood", c, x) for c, x in pairs])
    for (ctx, cont), (score, greedy) in zip(pairs, got):
        ctx, cont = ctx.rstrip(), ctx[len(ctx.rstrip()):] + cont
        cont_ids = tok.encode(ctx + cont)[len(tok.encode(ctx)):] if ctx else tok.encode(cont)
        ids = [tok.bos_id] + tok.encode(ctx) + cont_ids
        assert score == pytest.approx(_direct_logprob(lm.model, ids, len(cont_ids)), abs=1e-3)
        assert isinstance(greedy, bool)
    assert lm.loglikelihood([_req("loglikelihood", "오늘", "")]) == [(0.0, True)]   # log 1
    one = KrMiniLLM.__new__(KrMiniLLM)
    one.__dict__.update(lm.__dict__, _batch_size=1)
    assert [s for s, _ in one.loglikelihood([_req("loglikelihood", c, x) for c, x in pairs])] == \
        pytest.approx([s for s, _ in got], abs=1e-4)


def test_continuation_boundary_is_the_text_boundary(lm):
    ctx_ids, cont_ids = lm._encode_pair("어제 우리 가족은", " 바닷가에서")
    tok = lm.tokenizer_
    assert ctx_ids[0] == tok.bos_id and tok.decode(ctx_ids[1:]) == "어제 우리 가족은"
    assert tok.decode(cont_ids) == " 바닷가에서"


def test_loglikelihood_rolling(lm):
    text = "봄이 오면 아이들은 도서관에서 책을 읽었습니다. 새벽에 동생은 부엌에서 김치찌개를 만들었습니다."
    (whole,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", text)])
    ids = [lm.tokenizer_.bos_id] + lm.tokenizer_.encode(text)
    assert whole == pytest.approx(_direct_logprob(lm.model, ids, len(ids) - 1), abs=1e-3)
    short = KrMiniLLM.__new__(KrMiniLLM)
    short.__dict__.update(lm.__dict__, _max_length=8)     # several disjoint windows
    (windowed,) = short.loglikelihood_rolling([_req("loglikelihood_rolling", text)])
    assert windowed < 0 and windowed != pytest.approx(whole, abs=1e-3)


def test_generate_until(lm, eval_checkpoint):
    gen = Generator.from_pretrained(eval_checkpoint, device="cpu")
    prompts = ["오늘 아침 나는", "그 학생은"]
    out = lm.generate_until([_req("generate_until", p, {"until": ["다."], "max_gen_toks": 20}) for p in prompts])
    for p, o in zip(prompts, out):
        full = gen.generate(p, max_new_tokens=20, temperature=0)
        assert "다." not in o and o == full.split("다.")[0]


def _run_lm_eval(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **OFFLINE}
    return subprocess.run([sys.executable, str(ROOT / "scripts/run_lm_eval.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)


def test_ko_next_sentence_through_lm_eval(eval_checkpoint, tmp_path):
    r = _run_lm_eval("--model", "kr-mini-llm", "--model_args", f"pretrained={eval_checkpoint}", "--tasks",
                     "ko_next_sentence", "--batch_size", "8", "--output_path", tmp_path / "res", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(next((tmp_path / "res").rglob("results_*.json")).read_text(encoding="utf-8"))
    acc = results["results"]["ko_next_sentence"]
    assert 0 <= acc["acc,none"] <= 1 and results["n-samples"]["ko_next_sentence"]["effective"] == 32


def test_hub_task_without_the_hub_is_a_clear_error(eval_checkpoint):
    r = _run_lm_eval("--model", "kr-mini-llm", "--model_args", f"pretrained={eval_checkpoint}", "--tasks",
                     "kobest_copa", "--device", "cpu")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "need data from the Hugging Face Hub" in r.stderr and "--tasks ko_next_sentence" in r.stderr
