"""Guards in front of the model: the Host check (DNS rebinding), and a large request's CPU work
bounded before it starts and kept off the event loop."""
import json
import threading
from http.client import HTTPConnection
from urllib.parse import urlparse

import pytest

from kr_mini_llm.cli import serve as cli

from .conftest import MODEL, http, serve

COMP = {"model": MODEL, "prompt": "오늘", "max_tokens": 2}


def post_with_host(url, host, body=COMP):
    u = urlparse(url)
    conn = HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest("POST", "/v1/completions", skip_host=True)
    payload = json.dumps(body).encode()
    if host is not None:
        conn.putheader("Host", host)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(payload)))
    conn.endheaders(payload)
    r = conn.getresponse()
    reply = json.loads(r.read())
    conn.close()
    return r.status, reply


def test_only_the_hosts_the_server_was_bound_for_are_answered(server):
    port = urlparse(server.url).port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
        assert post_with_host(server.url, host)[0] == 200, host
    for host in ("attacker.example", f"attacker.example:{port}", f"127.0.0.1.attacker.example:{port}", None):
        status, reply = post_with_host(server.url, host)
        assert status == 421 and reply["error"]["code"] == "invalid_host", (host, reply)
    assert "--allowed-hosts" in post_with_host(server.url, "attacker.example")[1]["error"]["message"]
    status, _ = http(server.url.replace("127.0.0.1", "localhost") + "/health")
    assert status == 200


@pytest.mark.parametrize("allowed, host, ok", [
    (["llm.example"], "llm.example:8000", True),
    (["llm.example"], "other.example", False),
    (["*.example"], "a.b.example", True),
    (["*"], "anything.at.all", True),
])
def test_allowed_hosts(generator, allowed, host, ok):
    with serve(generator, allowed_hosts=allowed) as s:
        assert (post_with_host(s.url, host)[0] == 200) == ok


def test_cli_allowed_hosts():
    assert cli.allowed_hosts("127.0.0.1", []) == ["localhost", "127.0.0.1", "::1"]
    hosts = cli.allowed_hosts("192.0.2.7", ["a.example,B.example", " c.example "])
    assert hosts == ["localhost", "127.0.0.1", "::1", "192.0.2.7", "a.example", "b.example", "c.example"]
    assert cli.parse_args(["--model", "m", "--allowed-hosts", "x", "--allowed-hosts", "*"]).allowed_hosts == ["x", "*"]


def test_tokenizing_runs_off_the_event_loop_and_refused_text_is_never_tokenized(server, generator, monkeypatch):
    tok = generator.tokenizer
    threads = []
    encode = tok.encode

    def spy(*args, **kwargs):
        threads.append(threading.current_thread())
        return encode(*args, **kwargs)

    monkeypatch.setattr(tok, "encode", spy)
    assert http(server.url + "/v1/completions", COMP)[0] == 200
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "안녕"}], "max_tokens": 2}
    assert http(server.url + "/v1/chat/completions", chat)[0] == 200
    assert threads and server.thread not in threads  # the server's event loop runs in server.thread
    threads.clear()
    # 30,000 one-character messages (~0.9 MB): refused by their count, before any tokenizing
    many = {**chat, "messages": [{"role": "user", "content": "a"}] * 30_000}
    status, reply = http(server.url + "/v1/chat/completions", many)
    assert status == 400 and "at most 2048" in reply["error"]["message"]
    few_long = {**chat, "messages": [{"role": "user", "content": "가" * 3000}] * 20}
    status, reply = http(server.url + "/v1/chat/completions", few_long)
    assert status == 400 and reply["error"]["code"] == "context_length_exceeded"
    status, reply = http(server.url + "/v1/completions", {**COMP, "prompt": "가" * 100_000})
    assert status == 400 and reply["error"]["code"] == "context_length_exceeded"
    assert threads == []


def test_request_bodies_are_parsed_and_validated_off_the_event_loop(server, monkeypatch):
    from kr_mini_llm.serve import schemas as S

    threads = []
    for model in (S.ChatCompletionRequest, S.CompletionRequest):
        validate = model.model_validate

        def spy(obj, *args, _validate=validate, **kwargs):
            threads.append(threading.current_thread())
            return _validate(obj, *args, **kwargs)

        monkeypatch.setattr(model, "model_validate", spy)
    assert http(server.url + "/v1/completions", COMP)[0] == 200
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "안녕"}], "max_tokens": 2}
    assert http(server.url + "/v1/chat/completions", chat)[0] == 200
    assert len(threads) == 2 and server.thread not in threads
