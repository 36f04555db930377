"""What OpenAI's API accepts and clients rely on: null for optional fields, token-id prompts, the
developer role, an assistant's null content, model ids with a '/'."""
import pytest

from .conftest import MODEL, http, serve

PROMPT = "오늘 날씨가"


def complete(url, **body):
    status, reply = http(url + "/v1/completions", {"model": MODEL, "prompt": PROMPT, "temperature": 0, **body})
    assert status == 200, reply
    return reply["choices"][0]["text"], reply["choices"][0]["finish_reason"], reply["usage"]["completion_tokens"]


def chat(url, messages, **body):
    status, reply = http(url + "/v1/chat/completions",
                         {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 8, **body})
    assert status == 200, reply
    return reply["choices"][0]["message"]["content"]


NULLS = {k: None for k in ("temperature", "top_p", "top_k", "stream", "stream_options", "n", "frequency_penalty",
                           "presence_penalty", "repetition_penalty", "stop", "seed", "logprobs", "user", "echo",
                           "suffix", "best_of")}


def test_null_optional_fields_mean_their_defaults(server):
    # temperature null is the default 1.0: sampled, so only the shape of the answer is compared
    status, reply = http(server.url + "/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 4, **NULLS})
    assert status == 200 and 1 <= reply["usage"]["completion_tokens"] <= 4, reply
    nulls = {k: v for k, v in NULLS.items() if k not in ("echo", "suffix", "best_of")}
    status, reply = http(server.url + "/v1/chat/completions",
                         {"model": MODEL, "messages": [{"role": "user", "content": "안녕"}], "max_tokens": 4,
                          "max_completion_tokens": None, "truncation": None, **nulls})
    assert status == 200 and reply["object"] == "chat.completion", reply


def test_null_max_tokens_on_completions_is_the_default_16(server):
    text, finish, n = complete(server.url, max_tokens=16)
    assert (finish, n) == ("length", 16), "pick a prompt whose greedy answer runs past 16 tokens"
    assert complete(server.url, max_tokens=None) == (text, finish, n)
    assert complete(server.url) == (text, finish, n)


def test_token_id_prompts_are_used_as_they_are(server, generator):
    tok = generator.tokenizer
    ids = [tok.bos_id] + tok.encode(PROMPT)  # what a text prompt becomes
    expected = complete(server.url, max_tokens=6)
    assert complete(server.url, prompt=ids, max_tokens=6) == expected
    assert complete(server.url, prompt=[ids], max_tokens=6) == expected
    status, reply = http(server.url + "/v1/completions", {"model": MODEL, "prompt": ids, "max_tokens": 6})
    assert reply["usage"]["prompt_tokens"] == len(ids)


def test_developer_is_system_and_an_assistants_null_content_is_empty(server):
    question = {"role": "user", "content": "안녕하세요"}
    system = [{"role": "system", "content": "당신은 도우미입니다."}, question]
    developer = [{"role": "developer", "content": "당신은 도우미입니다."}, question]
    assert chat(server.url, developer) == chat(server.url, system)
    history = [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": ""},
               {"role": "user", "content": "뭐해?"}]
    nulled = [history[0], {"role": "assistant", "content": None}, history[2]]
    assert chat(server.url, nulled) == chat(server.url, history)


@pytest.mark.parametrize("name", ["org/tiny-serve", "a/b/c"])
def test_model_ids_with_a_slash(generator, name):
    with serve(generator, model_name=name) as s:
        status, card = http(f"{s.url}/v1/models/{name}")
        assert status == 200 and card["id"] == name
        status, reply = http(f"{s.url}/v1/models/{name}x")
        assert status == 404 and "does not exist" in reply["error"]["message"]
        status, reply = http(s.url + "/v1/completions", {"model": name, "prompt": PROMPT, "max_tokens": 2})
        assert status == 200, reply
