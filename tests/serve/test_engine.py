"""The engine's batch: a request that fails ends alone; what it reports counts only live clients."""
import asyncio

from kr_mini_llm.serve import Engine
from kr_mini_llm.serve.engine import SamplingParams, _Sequence

POISON_SEED = 666


async def _answer(stream) -> tuple[str, str | None]:
    text, finish = [], None
    async for ev in stream:
        if ev.error:
            return ev.error, None
        text.append(ev.text)
        finish = ev.finish_reason or finish
    return "".join(text), finish


def test_a_request_whose_sampling_fails_ends_alone_and_the_batch_goes_on(generator, monkeypatch):
    sample = _Sequence.sample

    def failing(self, logits):
        if self.params.seed == POISON_SEED and self.generated == 3:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return sample(self, logits)

    monkeypatch.setattr(_Sequence, "sample", failing)
    tok = generator.tokenizer
    texts = ("오늘 날씨가", "서울의 봄은", "바다가 보이는")
    prompts = [[tok.bos_id] + tok.encode(p) for p in texts]
    expected = [generator.generate(p, max_new_tokens=12, temperature=0.0) for p in texts]
    engine = Engine(generator, max_batch=4).start()
    try:
        async def main():
            greedy = SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=(tok.eos_id,))
            poisoned = SamplingParams(max_tokens=12, temperature=0.7, seed=POISON_SEED,
                                      stop_token_ids=(tok.eos_id,))
            streams = [engine.submit(p, greedy) for p in prompts] + [engine.submit(prompts[0], poisoned)]
            return await asyncio.gather(*(_answer(s) for s in streams))

        answers = asyncio.run(main())
    finally:
        engine.stop()
    assert [a for a, _ in answers[:3]] == expected and all(f in ("stop", "length") for _, f in answers[:3])
    error, finish = answers[3]
    assert finish is None and "generation failed for this request" in error and "inf, nan" in error


def test_queued_counts_only_clients_still_waiting(generator):
    engine = Engine(generator, max_batch=1)  # not started: everything stays queued

    async def main():
        params = SamplingParams(max_tokens=4)
        streams = [engine.submit([generator.tokenizer.bos_id], params) for _ in range(3)]
        assert engine.queued == 3
        streams[1].cancel()
        return engine.queued

    assert asyncio.run(main()) == 2


def test_a_model_with_more_rows_than_its_tokenizer_never_sends_an_id_it_cannot_decode(generator):
    import torch

    from kr_mini_llm import Transformer
    from kr_mini_llm.inference import Generator

    tok = generator.tokenizer
    model = Transformer(generator.model.config.replace(vocab_size=tok.vocab_size + 64, tie_word_embeddings=True))
    with torch.no_grad():
        model.embed_tokens.weight[tok.vocab_size:] = 5.0   # the extra rows would win every argmax
    engine = Engine(Generator(model.eval(), tok, "cpu"), max_batch=2).start()
    try:
        async def main():
            params = [SamplingParams(max_tokens=8, temperature=t, seed=1, repetition_penalty=r)
                      for t, r in ((0.0, 1.0), (1.0, 1.0), (0.7, 1.3))]
            return await asyncio.gather(*(_answer(engine.submit([tok.bos_id, 10, 11], p)) for p in params))

        answers = asyncio.run(main())
    finally:
        engine.stop()
    assert all(finish in ("stop", "length") for _, finish in answers), answers
