"""Every bad request gets an OpenAI-style error with its status, and the server keeps answering."""
from http.client import HTTPConnection
import json
import time
from urllib.parse import urlparse

import pytest

from .conftest import MODEL, http, serve

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "안녕"}], "max_tokens": 4}
COMP = {"model": MODEL, "prompt": "오늘", "max_tokens": 4}


def still_answers(url):
    status, body = http(url + "/v1/completions", COMP)
    assert status == 200 and body["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("path, body, status, code, words", [
    ("/v1/chat/completions", '{"model": "x", "messages": [', 400, "invalid_json", "could not parse the JSON"),
    ("/v1/chat/completions", "[1, 2]", 400, "invalid_json", "must be a JSON object"),
    ("/v1/chat/completions", {"model": MODEL}, 400, "missing_required_parameter", "'messages'"),
    ("/v1/chat/completions", {"messages": CHAT["messages"]}, 400, "missing_required_parameter", "'model'"),
    ("/v1/completions", {"model": MODEL}, 400, "missing_required_parameter", "'prompt'"),
    ("/v1/chat/completions", {**CHAT, "messages": []}, 400, "invalid_value", "'messages'"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "pirate", "content": "x"}]}, 400, "invalid_value",
     "role must be one of system, user, assistant"),
    ("/v1/chat/completions", {**CHAT, "model": "gpt-4"}, 404, "model_not_found", "'gpt-4' does not exist"),
    ("/v1/completions", {**COMP, "model": "nope"}, 404, "model_not_found", "'nope' does not exist"),
    ("/v1/completions", {**COMP, "max_tokens": 200}, 400, "context_length_exceeded", "maximum context length is 128"),
    ("/v1/completions", {**COMP, "prompt": "가 " * 300}, 400, "context_length_exceeded", "maximum context length"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": None, "messages": [{"role": "user", "content": "가 " * 300}]},
     400, "context_length_exceeded", "maximum context length"),
    ("/v1/completions", {**COMP, "temperature": 2.5}, 400, "invalid_value", "'temperature'"),
    ("/v1/completions", {**COMP, "temperature": -0.1}, 400, "invalid_value", "'temperature'"),
    ("/v1/completions", {**COMP, "top_p": 0}, 400, "invalid_value", "'top_p'"),
    ("/v1/completions", {**COMP, "top_p": 1.5}, 400, "invalid_value", "'top_p'"),
    ("/v1/completions", {**COMP, "top_k": -3}, 400, "invalid_value", "'top_k'"),
    ("/v1/completions", {**COMP, "frequency_penalty": 3}, 400, "invalid_value", "'frequency_penalty'"),
    ("/v1/completions", {**COMP, "repetition_penalty": 0}, 400, "invalid_value", "'repetition_penalty'"),
    ("/v1/completions", {**COMP, "max_tokens": 0}, 400, "invalid_value", "'max_tokens'"),
    ("/v1/completions", {**COMP, "max_tokens": "many"}, 400, "invalid_value", "'max_tokens'"),
    ("/v1/completions", {**COMP, "stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_value", "at most 4 stop"),
    ("/v1/completions", {**COMP, "n": 2}, 400, "invalid_value", "only n=1"),
    ("/v1/completions", {**COMP, "logprobs": 3}, 400, "invalid_value", "logprobs are not supported"),
    ("/v1/completions", {**COMP, "echo": True}, 400, "invalid_value", "echo is not supported"),
    ("/v1/completions", {**COMP, "prompt": ["a", "b"]}, 400, "invalid_value", "one prompt per request"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": 5}]}, 400, "invalid_value",
     "'messages.0.content"),
    ("/v1/nothing", {}, 404, None, "Unknown path /v1/nothing"),
    # an empty body, and all of the missing parameters named
    ("/v1/chat/completions", b"", 400, "invalid_json", "request body is empty; send a JSON object"),
    ("/v1/chat/completions", {}, 400, "missing_required_parameter", "parameters: 'model', 'messages'"),
    ("/v1/chat/completions", {**CHAT, "messages": ["hi"]}, 400, "invalid_value", "'messages.0'"),
    # text with a lone UTF-16 surrogate (valid JSON) is a 400 naming the field, not a codec error
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "a\ud800b"}]}, 400, "invalid_value",
     "'messages.0.content': the text holds a lone UTF-16 surrogate"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
     400, "invalid_value", "'messages.0.content.0.text': the text holds a lone UTF-16 surrogate"),
    ("/v1/completions", {**COMP, "prompt": "a\ud800b"}, 400, "invalid_value", "'prompt': the text holds a lone"),
    ("/v1/completions", {**COMP, "prompt": ["a\ud800b"]}, 400, "invalid_value", "'prompt.0': the text holds a lone"),
    ("/v1/completions", {**COMP, "model": "a\ud800b"}, 400, "invalid_value", "'model': the text holds a lone"),
    ("/v1/completions", {**COMP, "stop": ["\ud800"]}, 400, "invalid_value", "'stop.0': the text holds a lone"),
    # token-id prompts the model cannot read
    ("/v1/completions", {**COMP, "prompt": [1, 512]}, 400, "invalid_value", "token id 512 is outside"),
    ("/v1/completions", {**COMP, "prompt": [[-1]]}, 400, "invalid_value", "token id -1 is outside"),
    ("/v1/completions", {**COMP, "prompt": []}, 400, "invalid_value", "the prompt is an empty list"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": None}]}, 400, "invalid_value",
     "a user message needs a 'content'"),
    # bounded before tokenizing: too many messages, too many characters
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "a"}] * 2049}, 400, "invalid_value",
     "at most 2048 items"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "a"}] * 60}, 400,
     "context_length_exceeded", "60 messages take at least"),
    ("/v1/completions", {**COMP, "prompt": "가" * 100_000}, 400, "context_length_exceeded", "100000 characters"),
])
def test_bad_request(server, path, body, status, code, words):
    got, reply = http(server.url + path, body)
    assert got == status, reply
    err = reply["error"]
    assert err["code"] == code and words in err["message"], err
    assert err["type"] == ("invalid_request_error" if status < 500 else "server_error")
    still_answers(server.url)


def test_wrong_method(server):
    status, reply = http(server.url + "/v1/completions", method="GET")
    assert status == 405 and "GET is not allowed" in reply["error"]["message"]


def test_body_over_the_limit_gets_413_with_or_without_content_length(generator):
    with serve(generator, max_body_bytes=4096) as s:
        big = {**COMP, "prompt": "가" * 5000}
        status, reply = http(s.url + "/v1/completions", big)
        assert status == 413 and "larger than the limit of 4096 bytes" in reply["error"]["message"]
        # Chunked transfer: no Content-Length, so the limit is counted while the body arrives.
        u = urlparse(s.url)
        conn = HTTPConnection(u.hostname, u.port, timeout=30)
        payload = json.dumps(big).encode()
        conn.request("POST", "/v1/completions", body=iter([payload[i:i + 1000] for i in range(0, len(payload), 1000)]),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        r = conn.getresponse()
        assert r.status == 413 and "larger than the limit" in json.loads(r.read())["error"]["message"]
        conn.close()
        still_answers(s.url)


def test_api_key(generator):
    import openai

    with serve(generator, api_key="s3cret") as s:
        status, reply = http(s.url + "/v1/completions", COMP)
        assert status == 401 and "didn't provide an API key" in reply["error"]["message"]
        assert reply["error"]["type"] == "authentication_error"
        status, reply = http(s.url + "/v1/models", headers={"Authorization": "Bearer wrong"})
        assert status == 401 and "Incorrect API key" in reply["error"]["message"]
        status, reply = http(s.url + "/v1/models", headers={"Authorization": "Basic s3cret"})
        assert status == 401
        assert http(s.url + "/health")[0] == 200  # liveness checks stay open
        bad = openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(**COMP)
        good = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        assert good.completions.create(**COMP).usage.completion_tokens >= 1


def test_openai_client_sees_the_errors(client):
    import openai

    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(**{**COMP, "model": "other"})
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.chat.completions.create(**{**CHAT, "max_tokens": 500})


def _busy(url):
    return http(url + "/health")[1]["busy_rows"]


def test_a_client_that_leaves_mid_stream_frees_its_row(slow_server):
    """The slow server makes ~25 tokens/s: the full answer would hold its row for seconds."""
    u = urlparse(slow_server.url)
    conn = HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("POST", "/v1/completions", body=json.dumps({**COMP, "max_tokens": 100, "stream": True}),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    assert r.read(6) == b"data: "  # the answer is streaming
    assert _busy(slow_server.url) == 1
    conn.close()
    left = time.monotonic()
    while _busy(slow_server.url):
        assert time.monotonic() - left < 2.0, "the row of a disconnected client was not freed"
        time.sleep(0.05)
    still_answers(slow_server.url)


def test_a_client_that_leaves_a_plain_request_frees_its_row(slow_server):
    status = None
    try:
        status, _ = http(slow_server.url + "/v1/completions", {**COMP, "max_tokens": 100}, timeout=0.5)
    except OSError:  # the client gave up (timeout) and closed the connection
        pass
    assert status is None
    left = time.monotonic()
    while _busy(slow_server.url):
        assert time.monotonic() - left < 2.0, "the row of a disconnected client was not freed"
        time.sleep(0.05)
