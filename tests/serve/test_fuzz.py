"""Generated values in every field of both request schemas, against a live server: every answer
is a 4xx or a 200 (never a 5xx, never an error inside a 200 stream), and after the run the server
is healthy and a normal streaming answer that ran alongside the whole time arrived intact."""
import json
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from .conftest import MODEL, http, serve

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- values ---------------------------------------------------------------------------------
surrogate = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)
text = st.one_of(st.text(max_size=12), st.builds(lambda a, s, b: a + s + b, st.text(max_size=4), surrogate,
                                                 st.text(max_size=4)),
                 st.sampled_from(["", "nan", "NaN", "inf", "-Infinity", "1e-300", "\x00", "<|im_end|>", "가" * 40,
                                  "a\ud800b", "\udfff", "tiny-serve", MODEL]))
ints = st.one_of(st.integers(-3, 600), st.integers(), st.sampled_from(
    [0, -1, 2**31, 2**63 - 1, -(2**63), 2**63, 2**64 - 1, 2**64, -(2**64) - 1, 10**40]))
floats = st.one_of(st.floats(), st.floats(0, 2, allow_subnormal=True), st.sampled_from(
    [0.0, -0.0, 5e-324, 1e-300, 1e-40, 1e-39, 1e-6, 0.5, 1.0, 2.0, 10.0, 1e308, -1e308, float("inf"),
     float("nan")]))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, text)
junk = st.deferred(lambda: _junk)  # deferred: each field's repr names it instead of spelling it out
_junk = st.one_of(
    scalars,
    st.builds(lambda: [0] * 5000), st.builds(lambda: ["a"] * 3000), st.builds(lambda: [[1, 2]] * 500),
    st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                 max_leaves=10))


def field(plausible):
    """A nested value: mostly one it could take, sometimes anything."""
    return st.one_of(plausible, plausible, plausible, plausible, junk)


# Values a field could take, the numeric extremes the schema accepts included (1e-39, 5e-324, 1e-300, ...).
words = st.text(max_size=12)
SAMPLING = {
    "model": st.just(MODEL),
    "max_tokens": st.one_of(st.none(), st.integers(1, 6)),
    "temperature": st.one_of(st.none(), st.floats(0, 2, allow_subnormal=True), st.sampled_from([0, 1e-39, 5e-324])),
    "top_p": st.one_of(st.none(), st.floats(0, 1, exclude_min=True, allow_subnormal=True), st.just(1e-300)),
    "top_k": st.one_of(st.none(), st.integers(0, 600), st.just(2**63 - 1)),
    "repetition_penalty": st.one_of(st.none(), st.floats(0, 10, exclude_min=True, allow_subnormal=True),
                                    st.just(1e-40)),
    "frequency_penalty": st.one_of(st.none(), st.floats(-2, 2)),
    "presence_penalty": st.one_of(st.none(), st.floats(-2, 2)),
    "seed": st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1)),
    "stop": st.one_of(st.none(), words.filter(bool), st.lists(words.filter(bool), max_size=4)),
    "stream": st.one_of(st.none(), st.booleans(), st.just(True)),
    "stream_options": st.one_of(st.none(), st.fixed_dictionaries({}, optional={
        "include_usage": field(st.one_of(st.none(), st.booleans()))})),
    "n": st.one_of(st.none(), st.just(1)),
    "logprobs": st.one_of(st.none(), st.just(False), st.just(0)),
    "user": st.one_of(st.none(), words),
}
part = st.fixed_dictionaries({"type": field(st.just("text")), "text": field(words)})
message = st.fixed_dictionaries(
    {"role": field(st.sampled_from(["system", "developer", "user", "assistant"])),
     "content": field(st.one_of(words, st.lists(part, max_size=3)))},
    optional={"name": field(words)})
CHAT = {**SAMPLING,
        "messages": st.lists(message, min_size=1, max_size=4),
        "max_completion_tokens": st.one_of(st.none(), st.integers(1, 6)),
        "truncation": st.one_of(st.none(), st.sampled_from(["auto", "disabled"]))}
ids = st.lists(st.integers(0, 511), min_size=1, max_size=8)
COMPLETION = {**SAMPLING,
              "prompt": st.one_of(words, st.lists(words, min_size=1, max_size=1), ids, st.lists(ids, min_size=1,
                                                                                                 max_size=1)),
              "echo": st.one_of(st.none(), st.just(False)),
              "suffix": st.one_of(st.none(), st.just("")),
              "best_of": st.one_of(st.none(), st.just(1))}


@st.composite
def bodies(draw, fields, required):
    """A body of plausible values in which a few fields (maybe none, maybe required ones) hold anything."""
    body = draw(st.fixed_dictionaries({k: fields[k] for k in required},
                                      optional={k: v for k, v in fields.items() if k not in required}))
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True)):
        body[name] = draw(junk)
    return body


# -- requests -------------------------------------------------------------------------------
def send(url, path, payload: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(url + path, data=payload, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def check_answer(status: int, raw: bytes, what) -> None:
    assert status < 500, (status, raw[:500], what)
    if status != 200:
        err = json.loads(raw)["error"]
        assert isinstance(err["message"], str) and err["message"], (raw[:500], what)
    elif raw.startswith(b"data: "):
        assert raw.rstrip().endswith(b"data: [DONE]") and b'"error"' not in raw, (raw[-500:], what)
    else:
        assert json.loads(raw)["choices"], (raw[:500], what)


def post_json(url, path, body):
    payload = json.dumps(body).encode()  # NaN/Infinity as Python writes them; surrogates as \ud800 escapes
    check_answer(*send(url, path, payload), body)


class Alongside(threading.Thread):
    """Streams the same greedy answer again and again while the fuzzing runs; records any difference."""

    def __init__(self, url, prompt, expected):
        super().__init__(daemon=True)
        self.url, self.prompt, self.expected = url, prompt, expected
        self.done, self.completed, self.failures = threading.Event(), 0, []

    def run(self):
        body = json.dumps({"model": MODEL, "prompt": self.prompt, "max_tokens": 40, "temperature": 0,
                           "stream": True}).encode()
        while not self.done.is_set():
            status, raw = send(self.url, "/v1/completions", body)
            events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
            text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1] if json.loads(e)["choices"])
            if status != 200 or events[-1:] != ["[DONE]"] or text != self.expected:
                self.failures.append((status, raw[-300:]))
            self.completed += 1


# The server seeds unseeded requests from `random` in its own thread while hypothesis generates data.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@pytest.mark.filterwarnings("ignore:Generating overly large repr")  # of the strategies, in hypothesis' own report
def test_generated_requests_never_get_a_5xx_and_the_server_stays_healthy(generator):
    prompt = "오늘 날씨가"
    expected = generator.generate(prompt, max_new_tokens=40, temperature=0.0)
    with serve(generator, max_batch=4) as s:
        alongside = Alongside(s.url, prompt, expected)
        alongside.start()
        try:
            @FUZZ
            @given(bodies(CHAT, ("model", "messages")))
            def chat(body):
                post_json(s.url, "/v1/chat/completions", body)

            @FUZZ
            @given(bodies(COMPLETION, ("model", "prompt")))
            def completion(body):
                post_json(s.url, "/v1/completions", body)

            @settings(FUZZ, max_examples=40)
            @given(st.one_of(junk, st.binary(max_size=40).map(lambda b: b)),
                   st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
            def whole_body(body, path):  # not an object, or not JSON at all
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                check_answer(*send(s.url, path, payload), body)

            @settings(FUZZ, max_examples=30)
            @given(text)
            def model_path(name):
                quoted = urllib.parse.quote(name.encode("utf-8", "surrogatepass"), safe="")
                req = urllib.request.Request(f"{s.url}/v1/models/{quoted}")
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        status, raw = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, raw = e.code, e.read()
                assert status in (200, 404), (status, raw)

            chat()
            completion()
            whole_body()
            model_path()
        finally:
            alongside.done.set()
            alongside.join(60)
        assert not alongside.is_alive()
        assert alongside.failures == [] and alongside.completed >= 1, alongside.failures[:3]
        status, health = http(s.url + "/health")
        assert status == 200 and health["status"] == "ok" and health["queued"] == 0
        status, reply = http(s.url + "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 40,
                                                          "temperature": 0})
        assert status == 200 and reply["choices"][0]["text"] == expected
