"""Speculative decoding in the server's engine: greedy answers (text, chunks, finish, usage) are the
plain engine's for concurrent requests whose drafts are all right, all wrong or prompt lookup's;
stop strings, eos and max_tokens inside an accepted run end the answer where plain decoding does;
sampled answers keep plain sampling's distribution, penalties included; a failing drafter ends
its request alone."""
import asyncio
import itertools

import pytest
import torch

from kr_mini_llm import Transformer, TransformerConfig
from kr_mini_llm.inference import Generator
from kr_mini_llm.inference.decode_model import DecodeModel
from kr_mini_llm.inference.sampling import (apply_frequency_presence_penalty, apply_repetition_penalty,
                                            next_token_probs)
from kr_mini_llm.inference.speculative import Drafter
from kr_mini_llm.serve import Engine, engine as engine_module
from kr_mini_llm.serve.engine import SamplingParams

from ..inference.test_speculative import chi_square_p
from .conftest import http, serve

TEXTS = ("오늘 날씨가", "서울의 봄은 따뜻하고 서울의 봄은", "바다가 보이는 언덕 위에 작은 집이 있었습니다. 바다가",
         "나는", "공원에서 책을 읽었습니다. 공원에서 책을", "아침에 일어나서")


async def _collect(stream) -> dict:
    chunks, finish, usage = [], None, None
    async for ev in stream:
        if ev.error:
            return dict(error=ev.error)
        chunks.append(ev.text)
        finish = ev.finish_reason or finish
        usage = (ev.prompt_tokens, ev.completion_tokens)
    return dict(chunks=chunks, text="".join(chunks), finish=finish, usage=usage)


def run(generator, requests, max_batch=4, **speculative) -> tuple[list[dict], Engine]:
    """Every (prompt ids, SamplingParams) submitted at once to a fresh engine: their answers."""
    engine = Engine(generator, max_batch=max_batch, **speculative).start()
    try:
        async def main():
            streams = [engine.submit(p, params) for p, params in requests]
            return await asyncio.gather(*(_collect(s) for s in streams))

        return asyncio.run(main()), engine
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def prompts(generator):
    tok = generator.tokenizer
    return [[tok.bos_id] + tok.encode(t) for t in TEXTS]


@pytest.fixture(scope="module")
def varied(generator):
    """A model whose greedy answers do not settle on one repeated token (the served test model's
    do), so that a stop string or an end token can fall midway; its top two logits stay >= 0.01 apart."""
    torch.manual_seed(0)
    config = generator.model.config.replace(tie_word_embeddings=False)
    model = Transformer(config).eval()
    with torch.no_grad():
        model.norm.weight.mul_(6.0)
    return Generator(DecodeModel.from_transformer(model), generator.tokenizer, "cpu")


def plain_greedy(generator, prompt, n):
    return [s[0] for s in generator.generate_ids([prompt], n, temperature=0.0, stop_at_eos=False)]


@pytest.fixture()
def scripted(monkeypatch):
    """script(generator, prompts): drafts by role of the request's prompt from then on: 'right'
    drafts the plain greedy continuation (every draft accepted), 'wrong' a token that is never the
    next one (none accepted), 'lookup' prompt lookup's own. Returns the roles, the greedy answers and
    the log of verifications, (prompt index, drafts, accepted)."""
    def script(generator, prompts):
        roles = ("right", "wrong", "lookup")
        truth = {tuple(p): plain_greedy(generator, p, 64) for p in prompts}
        index = {tuple(p): i for i, p in enumerate(prompts)}
        install(roles, truth, index)
        return roles, truth, log

    propose, verify = Drafter.propose, engine_module.verify
    log = []

    def install(roles, truth, index):
        def scripted_propose(self, seq, k, s, gen):
            i = index[tuple(s.prompt)]
            made = len(seq) - len(s.prompt)
            future = truth[tuple(s.prompt)][made:made + k]
            if roles[i % 3] == "right":
                return future, None
            if roles[i % 3] == "wrong":
                return [(t + 1) % s.pieces for t in future], None
            return propose(self, seq, k, s, gen)

        def logged_verify(s, logits, drafts, q, gen):
            n, nxt = verify(s, logits, drafts, q, gen)
            log.append((index[tuple(s.prompt)], len(drafts), n))
            return n, nxt

        monkeypatch.setattr(Drafter, "propose", scripted_propose)
        monkeypatch.setattr(engine_module, "verify", logged_verify)

    return script


@pytest.mark.parametrize("k", [1, 4, 8])
def test_greedy_answers_and_chunks_are_the_plain_engines(generator, prompts, scripted, k):
    roles, _, log = scripted(generator, prompts)
    eos = generator.tokenizer.eos_id
    # Different lengths of prompt and answer; 6 requests on 4 rows, so some join a running speculative batch.
    requests = [(p, SamplingParams(max_tokens=m, temperature=0.0, stop_token_ids=(eos,)))
                for p, m in zip(prompts, (5, 30, 17, 40, 23, 11))]
    plain, _ = run(generator, requests)
    spec, engine = run(generator, requests, speculative="prompt_lookup", num_draft_tokens=k)
    assert spec == plain
    assert all(a["finish"] in ("stop", "length") for a in plain)
    for i, role in enumerate(roles * 2):
        rounds = [(d, n) for j, d, n in log if j == i]
        proposed, accepted = sum(d for d, _ in rounds), sum(n for _, n in rounds)
        if role == "right" and plain[i]["usage"][1] > 2:
            assert proposed > 0 and accepted == proposed, (i, rounds)
        if role == "wrong" and plain[i]["usage"][1] > 2:
            assert proposed > 0 and accepted == 0, (i, rounds)
    assert engine.stats.accepted > 0 and engine.stats.proposed > engine.stats.accepted


def stop_inside(tok, answer) -> tuple[str | None, str | None]:
    """(a stop string whose first occurrence in the answer's text begins at one of its new tokens
    4..9, the text before it), or (None, None)."""
    text = tok.decode(answer[:12])
    for j in range(3, 9):
        start = len(tok.decode(answer[:j]))
        for end in range(start + 1, len(text) + 1):
            if text[start:end].strip() and text.find(text[start:end]) == start:
                return text[start:end], text[:start]
    return None, None


def test_max_tokens_and_stop_strings_inside_an_accepted_run(varied, prompts, scripted):
    generator = varied
    _, truth, log = scripted(generator, prompts)
    tok = generator.tokenizer
    # A prompt of role 'right' (every draft accepted) and a stop string that first occurs at its
    # 4th to 9th new token: the first step after the prefill accepts 8 drafts past it.
    found = [(p, *stop_inside(tok, truth[tuple(p)])) for p in (prompts[3], prompts[0])]
    right, stop, before = next((f for f in found if f[1] is not None), (None, None, None))
    assert stop is not None, "no stop string occurs first within new tokens 4..9 of either answer"
    answer = truth[tuple(right)]
    assert answer.index(answer[7]) > 2, answer  # the end token below comes inside the first run
    requests = [(right, SamplingParams(max_tokens=m, temperature=0.0)) for m in range(1, 14)]
    requests += [(right, SamplingParams(max_tokens=40, temperature=0.0, stop=(stop,))),
                 # eos = a token the answer makes midway: it ends the answer inside a run of accepted drafts
                 (right, SamplingParams(max_tokens=40, temperature=0.0, stop_token_ids=(answer[7],)))]
    plain, _ = run(generator, requests, max_batch=16)
    spec, _ = run(generator, requests, max_batch=16, speculative="prompt_lookup", num_draft_tokens=8)
    assert spec == plain
    assert [a["usage"][1] for a in spec[:13]] == list(range(1, 14))
    assert all(a["finish"] == "length" for a in spec[:13])
    assert spec[13]["finish"] == "stop" and spec[13]["text"] == before and spec[13]["usage"][1] <= 12
    assert spec[14]["finish"] == "stop" and spec[14]["usage"][1] == answer.index(answer[7]) + 1
    assert max(n for _, _, n in log) == 8  # runs of 8 accepted drafts were taken


def test_streaming_over_http_sends_the_plain_servers_chunks(generator):
    import openai

    def chunks(server, prompt, max_tokens):
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        out = client.completions.create(model="tiny-serve", prompt=prompt, max_tokens=max_tokens, temperature=0,
                                        stream=True)
        return [(c.choices[0].text, c.choices[0].finish_reason) for c in out]

    texts = [(t, m) for t, m in zip(TEXTS, (12, 30, 25))]
    with serve(generator) as plain_server:
        plain = [chunks(plain_server, t, m) for t, m in texts]
        assert http(plain_server.url + "/health")[1]["speculative"] is None
    with serve(generator, engine_kwargs=dict(speculative="prompt_lookup", num_draft_tokens=6)) as spec_server:
        spec = [chunks(spec_server, t, m) for t, m in texts]
        health = http(spec_server.url + "/health")[1]["speculative"]
    assert spec == plain and all(c[-1][1] in ("stop", "length") for c in spec)
    # /health reports what the drafts did: every generated token came from some verification round
    assert health["mode"] == "prompt_lookup" and health["num_draft_tokens"] == 6
    assert 0 <= health["accepted"] <= health["proposed"] and health["tokens"] >= health["rounds"] > 0


def test_a_request_whose_drafter_fails_ends_alone(generator, prompts, monkeypatch):
    propose = Drafter.propose

    def failing(self, seq, k, s, gen):
        if s.params.seed == 666 and len(seq) - len(s.prompt) == 3:
            raise RuntimeError("drafter broke")
        return propose(self, seq, k, s, gen)

    monkeypatch.setattr(Drafter, "propose", failing)
    greedy = SamplingParams(max_tokens=12, temperature=0.0)
    requests = [(p, greedy) for p in prompts[:3]] + [(prompts[0], SamplingParams(max_tokens=12, seed=666))]
    plain, _ = run(generator, requests[:3])
    spec, _ = run(generator, requests, speculative="prompt_lookup")
    assert spec[:3] == plain
    assert "generation failed for this request" in spec[3]["error"] and "drafter broke" in spec[3]["error"]


def test_bad_speculative_settings_are_refused(generator):
    for kw, match in ((dict(speculative="lookup"), "speculative must be one of"),
                      (dict(speculative="prompt_lookup", num_draft_tokens=0), "num_draft_tokens must be"),
                      (dict(speculative="draft"), "needs a draft model")):
        with pytest.raises(ValueError, match=match):
            Engine(generator, **kw)


def test_a_draft_model_drafts_per_request(generator, prompts):
    """The generator's draft model (here the model itself: every draft right), one cache per request."""
    with_draft = Generator(generator.model, generator.tokenizer, "cpu", draft=generator)
    requests = [(p, SamplingParams(max_tokens=m, temperature=0.0)) for p, m in zip(prompts, (9, 20, 14, 3))]
    plain, _ = run(generator, requests)
    spec, engine = run(with_draft, requests, speculative="draft", num_draft_tokens=4)
    assert spec == plain
    assert engine.stats.proposed > 0 and engine.stats.accepted == engine.stats.proposed


# -- sampling: the output distribution is plain sampling's, penalties included ---------------------

V, N_NEW, RUNS = 5, 3, 1500
PROMPT = [1, 2, 4, 1, 2, 0, 1, 2]  # ends with a bigram that recurs: prompt lookup drafts


class CharTok:
    """Token i is the letter 'abcde'[i], so an answer's text gives back its tokens."""
    vocab_size, eos_id = V, -1

    def decode(self, ids):
        return "".join("abcde"[i] for i in ids)


def exact_distribution(model, temperature, repetition_penalty, frequency_penalty, presence_penalty):
    """{answer text: probability} of plain sampling with the engine's penalties, by enumeration."""
    def probs(new):
        with torch.no_grad():
            logits = model(torch.tensor([PROMPT + new]))[0, -1:].float()
        seen = torch.zeros(1, V, dtype=torch.bool)
        seen[0, PROMPT + new] = True
        counts = torch.zeros(1, V)
        for t in new:
            counts[0, t] += 1
        logits = apply_repetition_penalty(logits, seen, repetition_penalty)
        logits = apply_frequency_presence_penalty(logits, counts, frequency_penalty, presence_penalty)
        return next_token_probs(logits, temperature, None, None)[0]

    out = {}
    for seq in itertools.product(range(V), repeat=N_NEW):
        pr = 1.0
        for i in range(N_NEW):
            pr *= float(probs(list(seq[:i]))[seq[i]])
        out[CharTok().decode(seq)] = pr
    return out


def test_sampling_keeps_the_distribution_with_penalties():
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=V, hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2,
                               intermediate_size=32, max_seq_length=64, tie_word_embeddings=False)
    nn_model = Transformer(config).eval()
    with torch.no_grad():
        nn_model.norm.weight.mul_(6.0)  # peaked logits: drafts are accepted as well as rejected
    gen = Generator(DecodeModel.from_transformer(nn_model), CharTok(), "cpu")
    settings = dict(temperature=0.9, repetition_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.3)
    requests = [(PROMPT, SamplingParams(max_tokens=N_NEW, seed=seed, **settings)) for seed in range(RUNS)]
    answers, engine = run(gen, requests, max_batch=8, speculative="prompt_lookup", num_draft_tokens=2)
    counts = {}
    for a in answers:
        counts[a["text"]] = counts.get(a["text"], 0) + 1
    assert 0.1 < engine.stats.acceptance < 0.9, engine.stats  # both sides of the rejection rule were taken
    assert chi_square_p(counts, exact_distribution(nn_model, **settings), RUNS) > 1e-4
    # The test can tell: the same counts against the distribution without the penalties are rejected.
    unpenalised = dict(settings, repetition_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0)
    assert chi_square_p(counts, exact_distribution(nn_model, **unpenalised), RUNS) < 1e-4
