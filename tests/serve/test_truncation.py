"""truncation="auto" on chat: the oldest turns (not the system messages) make room, max_tokens is
capped to what is left, and the response headers say what was done."""
import json
import urllib.request

from kr_mini_llm.data.chat import encode_chat

from .conftest import MODEL, http

CTX = 128  # the test model's context
SYSTEM = {"role": "system", "content": "당신은 친절한 도우미입니다."}


def conversation(turns):
    out = [SYSTEM]
    for i in range(turns):
        out += [{"role": "user", "content": f"{i}번째 질문입니다. 오늘 날씨는 어떤가요?"},
                {"role": "assistant", "content": f"{i}번째 대답입니다. 맑고 따뜻합니다."}]
    return out + [{"role": "user", "content": "마지막 질문입니다."}]


def post(url, body):
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.headers, r.read().decode()


def test_the_oldest_turns_make_room_and_the_answer_is_the_one_for_what_was_kept(server, generator):
    messages = conversation(8)
    body = {"model": MODEL, "messages": messages, "max_tokens": 24, "temperature": 0}
    status, reply = http(server.url + "/v1/chat/completions", body)
    assert status == 400 and reply["error"]["code"] == "context_length_exceeded"  # not without asking

    headers, raw = post(server.url, {**body, "truncation": "auto"})
    dropped, max_tokens = int(headers["X-Dropped-Messages"]), int(headers["X-Max-Tokens"])
    kept = [SYSTEM] + messages[1 + dropped:]
    ids, _ = encode_chat(kept, generator.tokenizer, add_generation_prompt=True)
    reply = json.loads(raw)
    assert 0 < dropped < len(messages) - 1 and max_tokens == 24
    assert reply["usage"]["prompt_tokens"] == len(ids) and len(ids) + 24 <= CTX
    one_more = [SYSTEM] + messages[dropped:]  # keeping one more message would not have fit
    assert len(encode_chat(one_more, generator.tokenizer, add_generation_prompt=True)[0]) + 24 > CTX
    assert reply["choices"][0]["message"]["content"] == generator.chat(kept, max_new_tokens=24, temperature=0.0)

    headers, raw = post(server.url, {**body, "truncation": "auto", "stream": True})
    assert (int(headers["X-Dropped-Messages"]), int(headers["X-Max-Tokens"])) == (dropped, 24)
    assert raw.rstrip().endswith("data: [DONE]")


def test_max_tokens_is_capped_when_the_newest_message_leaves_less_room(server, generator):
    messages = [SYSTEM, {"role": "user", "content": "가나다라마바사아자차카타파하 " * 2}]
    ids, _ = encode_chat(messages, generator.tokenizer, add_generation_prompt=True)
    assert len(ids) + 100 > CTX > len(ids) + 1
    headers, raw = post(server.url, {"model": MODEL, "messages": messages, "max_tokens": 100, "truncation": "auto"})
    assert (int(headers["X-Dropped-Messages"]), int(headers["X-Max-Tokens"])) == (0, CTX - len(ids))
    assert json.loads(raw)["usage"]["completion_tokens"] <= CTX - len(ids)


def test_a_newest_message_that_cannot_fit_is_still_an_error(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "가나다라 " * 200}], "truncation": "auto"}
    status, reply = http(server.url + "/v1/chat/completions", body)
    assert status == 400 and reply["error"]["code"] == "context_length_exceeded", reply
