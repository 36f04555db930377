import pytest
import torch

from kr_mini_llm import Transformer, TransformerConfig
from kr_mini_llm.data.tokenizer import Tokenizer
from kr_mini_llm.inference import Generator


@pytest.fixture()
def generator(token_data):
    _, tok_path = token_data
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                               intermediate_size=128, max_seq_length=48)
    return Generator(Transformer(config), Tokenizer(tok_path), "cpu")


def test_greedy_equals_argmax_of_full_sequence_logits(generator):
    prompts = [[2, 10, 11, 12, 13], [2, 40, 41]]  # different lengths in one batch
    steps = list(generator.generate_ids(prompts, max_new_tokens=12, temperature=0.0, stop_at_eos=False))
    model = generator.model
    for b, prompt in enumerate(prompts):
        seq = list(prompt)
        for step in steps:
            with torch.no_grad():
                expected = int(model(torch.tensor([seq]))[0, -1].argmax())
            assert step[b] == expected
            seq.append(expected)


def test_text_api_batch_and_stream_agree(generator):
    one = generator.generate("오늘 날씨가", max_new_tokens=10, temperature=0.0)
    batch = generator.generate(["오늘 날씨가", "나는 도서관에서"], max_new_tokens=10, temperature=0.0)
    streamed = "".join(generator.generate("오늘 날씨가", max_new_tokens=10, temperature=0.0, stream=True))
    assert isinstance(one, str) and batch[0] == one == streamed
    assert generator.generate("오늘", max_length=5, temperature=0.0) == generator.generate(
        "오늘", max_new_tokens=5, temperature=0.0)


def test_sampling_is_seeded(generator):
    a = generator.generate("오늘", max_new_tokens=15, temperature=1.0, top_k=20, top_p=0.9, seed=3)
    b = generator.generate("오늘", max_new_tokens=15, temperature=1.0, top_k=20, top_p=0.9, seed=3)
    assert a == b


def test_long_prompt_is_truncated_on_the_left_not_a_crash(generator, caplog):
    prompt = "나는 공원에서 책을 읽었습니다. " * 40
    with caplog.at_level("WARNING"):
        out = generator.generate(prompt, max_new_tokens=8, temperature=0.0)
    assert isinstance(out, str) and "keeping the last" in caplog.text


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_new_tokens=48), "must be smaller than the model's context length"),
    (dict(temperature=-1.0), "temperature must be a finite number >= 0"),
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0 .* got nan"),
    (dict(temperature=float("inf")), "temperature must be a finite number >= 0 .* got inf"),
    (dict(top_k=0), "top_k must be a whole number >= 1"),
    (dict(top_k=-5), "top_k must be a whole number >= 1"),
    (dict(top_p=0.0), "top_p must be in"),
    (dict(top_p=float("nan")), "top_p must be in"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be a finite number > 0"),
    (dict(repetition_penalty=float("nan")), "repetition_penalty must be a finite number > 0"),
])
def test_bad_arguments(generator, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generator.generate("오늘", **kwargs)
    with pytest.raises(ValueError, match=match):  # the chat path checks them too
        generator.chat("오늘", **kwargs)


def test_bad_prompt_type(generator):
    with pytest.raises(TypeError, match="prompt must be a string"):
        generator.generate(123)
