"""A tiny model served by a real uvicorn server on 127.0.0.1 (a free port), in a thread of the test process."""
import socket
import threading
import time

import pytest
import torch
import uvicorn

from kr_mini_llm import Transformer, TransformerConfig
from kr_mini_llm.inference import Generator
from kr_mini_llm.serve import Engine, create_app

MODEL = "tiny-serve"


class LiveServer:
    def __init__(self, app):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, token_data):
    """A random tiny model whose logits are spread out (final norm x 20), so greedy answers have no
    near-ties that float rounding differences between batch sizes could flip."""
    from kr_mini_llm.lora.fuse import save_model_dir

    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                               intermediate_size=128, max_seq_length=128)
    model = Transformer(config)
    with torch.no_grad():
        model.norm.weight.mul_(20.0)
    return save_model_dir(model, tmp_path_factory.mktemp("serve") / MODEL, token_data[1])


@pytest.fixture(scope="session")
def generator(model_dir):
    return Generator.from_pretrained(model_dir, device="cpu")


def serve(generator, max_batch=8, step_delay=0.0, model_name=MODEL, engine_kwargs=None, **app_kwargs):
    """A LiveServer for `generator`; with step_delay, every model call sleeps first (a slow model);
    engine_kwargs: more Engine settings (speculative decoding)."""
    engine = Engine(generator, max_batch=max_batch, **(engine_kwargs or {}))
    if step_delay:
        model = engine.model

        def slow(*args, **kwargs):
            time.sleep(step_delay)
            return model(*args, **kwargs)
        engine.model = slow
    return LiveServer(create_app(engine, model_name, **app_kwargs))


@pytest.fixture(scope="session")
def server(generator):
    with serve(generator) as s:
        yield s


@pytest.fixture(scope="session")
def slow_server(generator):
    """Answers at ~25 tokens/s, so a test can act while an answer is streaming."""
    with serve(generator, max_batch=4, step_delay=0.04) as s:
        yield s


@pytest.fixture()
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def http(url, body=None, method=None, headers=None, timeout=60):
    """(status, parsed JSON body) of one request; `body` a dict (sent as JSON), bytes or str."""
    import json
    import urllib.error
    import urllib.request

    data = body.encode() if isinstance(body, str) else body
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
