"""Speculative decoding: greedy output identical to plain decoding, sampling with plain sampling's
distribution (chi-square against the exact distribution), and the limits of plain decoding kept."""
import itertools
import logging

import pytest
import torch
from scipy.stats import chi2

from kr_mini_llm import Transformer, TransformerConfig
from kr_mini_llm.inference import Generator
from kr_mini_llm.inference.decode_model import DecodeModel
from kr_mini_llm.inference.sampling import apply_repetition_penalty, next_token_probs
from kr_mini_llm.inference.speculative import PromptLookup, SpeculativeStats


class Tok:
    """What generate_ids needs of a tokenizer."""

    def __init__(self, vocab_size, eos_id=3, fingerprint="tok-a"):
        self.vocab_size, self.eos_id, self.fingerprint = vocab_size, eos_id, fingerprint


def tiny(vocab=512, seed=0, ctx=64, hidden=64, logit_scale=1.0):
    """A random model; untied, so that greedy decoding does not just repeat the last token."""
    torch.manual_seed(seed)
    config = TransformerConfig(vocab_size=vocab, hidden_size=hidden, num_layers=2, num_heads=4, num_kv_heads=2,
                               intermediate_size=2 * hidden, max_seq_length=ctx, tie_word_embeddings=False)
    model = Transformer(config).eval()
    with torch.no_grad():
        model.norm.weight.mul_(logit_scale)
    return model


def never_right(model):
    """A draft model whose logits are all zero: it always drafts id 0, which no test prompt's
    greedy continuation contains."""
    wrong = tiny(model.config.vocab_size, seed=1, ctx=model.config.max_seq_length)
    with torch.no_grad():
        wrong.norm.weight.zero_()
    return wrong


def noisy(model, scale=0.5):
    """A copy of `model` with noise on its weights: a draft model that is right part of the time."""
    other = tiny(model.config.vocab_size, ctx=model.config.max_seq_length)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std())
    return other


def prompts(n, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p = torch.randint(4, vocab, (int(torch.randint(1, 24, (1,), generator=g)),), generator=g).tolist()
        if i % 3 == 0:
            p = (p[:3] * 8)[:24]  # copy-heavy: prompt lookup finds its drafts
        out.append(p)
    return out


def ids(gen, prompt, n, **kw):
    return [s[0] for s in gen.generate_ids([prompt], n, **kw)]


@pytest.fixture(scope="module")
def models():
    target = tiny()
    return {"nn": target, "fp32": DecodeModel.from_transformer(target, "fp32"),
            "int8": DecodeModel.from_transformer(target, "int8")}


@pytest.mark.parametrize("kind, drafter", [("nn", "prompt_lookup"), ("fp32", "prompt_lookup"),
                                           ("int8", "prompt_lookup"), ("fp32", "self"), ("fp32", "never_right"),
                                           ("fp32", "other")])
def test_greedy_is_identical_to_plain_greedy(models, kind, drafter):
    model = models[kind]
    draft = {"self": model, "never_right": never_right(models["nn"]), "other": noisy(models["nn"])}.get(drafter)
    if draft is not None and draft is not model:
        draft = DecodeModel.from_transformer(draft, "fp32")
    gen = Generator(model, Tok(512), "cpu", draft=None if draft is None else Generator(draft, Tok(512), "cpu"))
    mode = "prompt_lookup" if drafter == "prompt_lookup" else "draft"
    total = SpeculativeStats()
    for i, p in enumerate(prompts(3 if kind == "nn" or drafter == "never_right" else 6, 512)):
        for penalty, k in ((1.0, 4), (1.3, 7)):
            plain = ids(gen, p, 20, temperature=0.0, repetition_penalty=penalty, stop_at_eos=False)
            stats = SpeculativeStats()
            spec = ids(gen, p, 20, temperature=0.0, repetition_penalty=penalty, stop_at_eos=False,
                       speculative=mode, num_draft_tokens=k, ngram=1 + i % 3, stats=stats)
            assert spec == plain, (i, penalty, k)
            assert stats.tokens == 20 and stats.accepted <= stats.proposed
            for f in ("proposed", "accepted", "rounds", "tokens"):
                setattr(total, f, getattr(total, f) + getattr(stats, f))
    if drafter == "self":  # its own drafts: every one accepted, k + 1 tokens per forward
        assert total.acceptance == 1.0 and total.tokens_per_round > 4
    elif drafter == "never_right":
        assert total.proposed > 0 and total.accepted == 0
    elif drafter == "other":
        assert 0 < total.accepted < total.proposed
    else:
        assert total.accepted > 0
    assert total.rounds == total.tokens - total.accepted  # one model forward per token not drafted right


@pytest.mark.parametrize("mode", ["prompt_lookup", "draft"])
def test_eos_max_new_tokens_stream_and_context_as_plain(models, mode, caplog):
    model = models["fp32"]
    probe = Generator(model, Tok(512), "cpu")
    for p in prompts(6, 512, seed=3):
        plain = ids(probe, p, 20, temperature=0.0, stop_at_eos=False)
        # eos = a token greedy emits midway (so it also comes as an accepted draft of a self-draft)
        tok = Tok(512, eos_id=plain[9])
        gen = Generator(model, tok, "cpu", draft=Generator(model, tok, "cpu"))
        want = ids(gen, p, 20, temperature=0.0)
        assert want[-1] is None and len(want) == plain.index(tok.eos_id) + 1
        assert ids(gen, p, 20, temperature=0.0, speculative=mode) == want
        for n in (0, 1, 2, 5):
            assert ids(gen, p, n, temperature=0.0, speculative=mode, stop_at_eos=False) == plain[:n]
    # A prompt past the context: cut on the left as in plain decoding, up to the last position.
    long = (prompts(1, 512, seed=5)[0] * 10)[:80]
    gen = Generator(model, Tok(512, eos_id=-1), "cpu", draft=Generator(model, Tok(512, eos_id=-1), "cpu"))
    with caplog.at_level(logging.WARNING):
        assert ids(gen, long, 63, temperature=0.0, speculative=mode) == ids(gen, long, 63, temperature=0.0)
    assert "keeping the last" in caplog.text


@pytest.mark.parametrize("drafter", ["prompt_lookup", "self", "never_right"])
def test_a_batch_is_each_prompt_decoded_alone(models, drafter):
    """Prompts of different lengths in one batch: each sequence's tokens are its batch-1 run's, with
    eos midway for some (None from there on, as plain decoding yields), penalties, and drafts that
    are all right, never right, or prompt lookup's; plain batched decoding gives the same steps."""
    model = models["fp32"]
    draft = {"self": model, "never_right": DecodeModel.from_transformer(never_right(models["nn"]), "fp32")}
    mode = "prompt_lookup" if drafter == "prompt_lookup" else "draft"
    batch = prompts(5, 512, seed=2)
    probe = Generator(model, Tok(512), "cpu")
    eos = ids(probe, batch[1], 12, temperature=0.0, stop_at_eos=False)[6]  # ends prompt 1 (at least) midway
    tok = Tok(512, eos_id=eos)
    draft_gen = Generator(draft[drafter], tok, "cpu") if drafter in draft else None
    gen = Generator(model, tok, "cpu", draft=draft_gen)
    total = SpeculativeStats()
    for penalty, k in ((1.0, 4), (1.3, 6)):
        kw = dict(temperature=0.0, repetition_penalty=penalty, speculative=mode, num_draft_tokens=k)
        alone = [ids(gen, p, 20, **kw) for p in batch]
        assert penalty != 1.0 or (alone[1][-1] is None and len(alone[1]) <= 7)
        steps = list(gen.generate_ids(batch, 20, stats=total, **kw))
        assert len(steps) == max(len(a) for a in alone)
        for b, a in enumerate(alone):
            assert [step[b] for step in steps] == a + [None] * (len(steps) - len(a)), (b, penalty)
        kw.pop("speculative")
        assert steps == list(gen.generate_ids(batch, 20, **kw))
    if drafter == "self":
        assert total.acceptance == 1.0
    elif drafter == "never_right":
        assert total.proposed > 0 and total.accepted == 0
    else:  # a repetition penalty of 1.3 keeps the text from repeating: prompt lookup's drafts pay without it
        assert total.accepted > 0


def test_text_api_stream_and_chat(token_data):
    from kr_mini_llm.data.tokenizer import Tokenizer

    tok = Tokenizer(token_data[1])
    gen = Generator(tiny(), tok, "cpu")
    prompt = "나는 공원에서 책을 읽었습니다. 나는 공원에서"
    plain = gen.generate(prompt, max_new_tokens=25, temperature=0.0)
    assert gen.generate(prompt, max_new_tokens=25, temperature=0.0, speculative="prompt_lookup") == plain
    assert "".join(gen.generate(prompt, max_new_tokens=25, temperature=0.0, stream=True,
                                speculative="prompt_lookup")) == plain
    assert gen.chat(prompt, max_new_tokens=20, temperature=0.0, speculative="prompt_lookup") == \
        gen.chat(prompt, max_new_tokens=20, temperature=0.0)


def test_prompt_lookup_drafts_from_the_latest_longest_match():
    look = PromptLookup([5, 6, 7, 8, 5, 6, 9, 1, 5, 6], ngram=2)
    assert look.draft(3) == [9, 1, 5]  # "5 6" last followed by 9 1 5
    look.extend([7])
    assert look.draft(2) == [8, 5]  # "6 7" occurs once
    assert PromptLookup([1, 2, 3], 3).draft(4) == []  # nothing recurs
    assert PromptLookup([4, 4], 1).draft(4) == [4]  # up to the end of the sequence


def test_bad_arguments(models, token_data):
    gen = Generator(models["fp32"], Tok(512), "cpu")
    for kw, match in ((dict(speculative="lookup"), "speculative must be one of"),
                      (dict(speculative="prompt_lookup", num_draft_tokens=0), "num_draft_tokens must be"),
                      (dict(speculative="prompt_lookup", ngram=0), "ngram must be"),
                      (dict(speculative="draft"), "needs a draft model")):
        with pytest.raises(ValueError, match=match):
            gen.generate_ids([[5, 6]], 4, **kw)
    with pytest.raises(ValueError, match="not this model's"):
        Generator(models["fp32"], Tok(512), "cpu", draft=Generator(tiny(), Tok(512, fingerprint="tok-b"), "cpu"))


def test_from_pretrained_draft_model_refuses_another_tokenizer(tmp_path, token_data):
    from kr_mini_llm.data.tokenizer import train_tokenizer
    from kr_mini_llm.lora.fuse import save_model_dir

    from tests.data.conftest import korean_docs

    def save(model, out, tokenizer):
        return save_model_dir(model, out, tokenizer)

    tok_a = token_data[1]
    target = save(tiny(), tmp_path / "target", tok_a)
    draft = save(tiny(hidden=32, seed=3), tmp_path / "draft", tok_a)
    gen = Generator.from_pretrained(target, device="cpu", draft_model=draft)
    text = "나는 공원에서 책을 읽었습니다. 나는 공원에서"
    assert gen.generate(text, max_new_tokens=12, temperature=0.0, speculative="draft") == \
        gen.generate(text, max_new_tokens=12, temperature=0.0)
    (tmp_path / "c.txt").write_text("\n".join(korean_docs(60, seed=99)), encoding="utf-8")
    tok_b = train_tokenizer([tmp_path / "c.txt"], vocab_size=500, output_prefix=tmp_path / "tok_b", num_threads=1)
    other = save(tiny(hidden=32, seed=3), tmp_path / "other", tok_b)
    with pytest.raises(ValueError, match="must be trained with the same tokenizer"):
        Generator.from_pretrained(target, device="cpu", draft_model=other)


# -- sampling: the output distribution is plain sampling's ----------------------------------------

V, N_NEW, RUNS = 5, 3, 1500


def exact_distribution(model, prompt, temperature, top_k, top_p, repetition_penalty):
    """{(t1, t2, t3): probability} of plain sampling, by enumerating every prefix."""
    def probs(seq):
        with torch.no_grad():
            logits = model(torch.tensor([seq]))[0, -1:].float()
        seen = torch.zeros(1, V, dtype=torch.bool)
        seen[0, seq] = True
        logits = apply_repetition_penalty(logits, seen, repetition_penalty)
        return next_token_probs(logits, temperature, top_k, top_p)[0]

    out = {}
    for seq in itertools.product(range(V), repeat=N_NEW):
        pr = 1.0
        for i in range(N_NEW):
            pr *= float(probs(prompt + list(seq[:i]))[seq[i]])
            if pr == 0.0:
                break
        out[seq] = pr
    return out


def chi_square_p(counts, exact, runs):
    """p-value of the counts under `exact`; categories expected fewer than 5 times pooled."""
    stat, pooled_obs, pooled_exp, dof = 0.0, 0, 0.0, -1
    for key, pr in exact.items():
        e, o = pr * runs, counts.get(key, 0)
        if e < 5:
            pooled_obs, pooled_exp = pooled_obs + o, pooled_exp + e
            continue
        stat, dof = stat + (o - e) ** 2 / e, dof + 1
    if pooled_exp > 0:
        stat, dof = stat + (pooled_obs - pooled_exp) ** 2 / pooled_exp, dof + 1
    assert sum(counts.values()) == runs and not set(counts) - set(exact)
    return chi2.sf(stat, dof)


@pytest.mark.parametrize("mode, settings", [
    ("prompt_lookup", dict(temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0)),
    ("draft", dict(temperature=0.7, top_k=4, top_p=0.9, repetition_penalty=1.5)),
])
def test_sampling_keeps_the_distribution(mode, settings):
    # Peaked logits, so that drafts are accepted as well as rejected.
    model = DecodeModel.from_transformer(tiny(vocab=V, hidden=16, logit_scale=6.0))
    draft = DecodeModel.from_transformer(tiny(vocab=V, hidden=16, seed=5, logit_scale=3.0))
    gen = Generator(model, Tok(V, eos_id=-1), "cpu", draft=Generator(draft, Tok(V, eos_id=-1), "cpu"))
    prompt = [1, 2, 4, 1, 2, 0, 1, 2]
    exact = exact_distribution(model, prompt, **settings)
    counts, stats = {}, SpeculativeStats()
    for seed in range(RUNS):
        seq = tuple(ids(gen, prompt, N_NEW, seed=seed, speculative=mode, num_draft_tokens=2, stats=stats,
                        **settings))
        counts[seq] = counts.get(seq, 0) + 1
    assert 0.1 < stats.acceptance < 0.9, stats  # both sides of the rejection rule were taken
    assert chi_square_p(counts, exact, RUNS) > 1e-4
    # The test can tell: the same counts against a hotter distribution are rejected.
    hotter = dict(settings, temperature=settings["temperature"] * 1.6)
    assert chi_square_p(counts, exact_distribution(model, prompt, **hotter), RUNS) < 1e-4


def test_rejection_rule_keeps_p_for_any_q():
    """verify's first token is distributed as p, whatever q proposed the draft."""
    from kr_mini_llm.inference.speculative import _Sampling, verify

    s = _Sampling(1.0, None, None, 1.0, V, [])
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    logits = torch.log(p).expand(2, V)
    gen = torch.Generator().manual_seed(0)
    for q in (torch.tensor([0.05, 0.05, 0.1, 0.2, 0.6]), None):
        counts = torch.zeros(V)
        for _ in range(2500):
            d = int(torch.multinomial(q, 1, generator=gen)) if q is not None else 0
            n, nxt = verify(s, logits, [d], None if q is None else q.unsqueeze(0), gen)
            counts[d if n == 1 else nxt] += 1
        assert chi2.sf(float(((counts - 2500 * p) ** 2 / (2500 * p)).sum()), V - 1) > 1e-3


def test_generate_command_runs_several_prompts_as_one_speculative_batch(token_data, monkeypatch, capsys):
    """`generate --prompt A --prompt B --no_stream --speculative ...` makes one batched call and
    prints what plain greedy decoding prints."""
    from kr_mini_llm.cli import generate as cli
    from kr_mini_llm.data.tokenizer import Tokenizer

    gen = Generator(tiny(), Tokenizer(token_data[1]), "cpu")
    calls = []
    real = gen.generate

    def spy(prompt, **kw):
        calls.append((prompt, kw.get("speculative")))
        return real(prompt, **kw)

    monkeypatch.setattr(gen, "generate", spy)
    monkeypatch.setattr(cli.Generator, "from_pretrained", staticmethod(lambda *a, **kw: gen))
    texts = ["나는 공원에서 책을 읽었습니다. 나는 공원에서", "오늘 날씨가 좋다. 오늘 날씨가"]
    argv = ["--model", "unused", "--no_stream", "--temperature", "0", "--max_new_tokens", "20"]
    for t in texts:
        argv += ["--prompt", t]
    assert cli.main(argv) == 0
    plain = capsys.readouterr().out
    assert cli.main(argv + ["--speculative", "prompt_lookup", "--num-draft-tokens", "4"]) == 0
    assert capsys.readouterr().out == plain and plain.count("\n") == 2
    assert calls == [(texts, None), (texts, "prompt_lookup")]
