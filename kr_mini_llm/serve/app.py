"""The OpenAI-compatible HTTP face of the Engine, and the chat page.

    POST /v1/chat/completions   messages through the chat template of data/chat.py
    POST /v1/completions        a raw prompt, continued as Generator.generate continues it
    GET  /v1/models, /health, / (the chat page) and /static/*

Both completion routes stream as server-sent events in OpenAI's chunk format (ending with
`data: [DONE]`) when asked, and otherwise answer with one JSON body.
"""
from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from . import schemas as S
from .engine import ContextLengthError, Engine, Event, SamplingParams, Stream
from .errors import (LOOPBACK_HOSTS, ApiKeyAuth, APIError, BodySizeLimit, HostCheck, error_body,
                     install_error_handlers)
from .prompts import InvalidPrompt, Prompt, Prompts

STATIC = Path(__file__).parent / "static"


def create_app(engine: Engine, model_name: str, api_key: str | None = None, max_body_bytes: int = 1 << 20,
               allowed_hosts=LOOPBACK_HOSTS) -> FastAPI:
    """The app; its lifespan starts and stops the engine's model thread. It answers only requests
    whose Host header is one of `allowed_hosts` ('*' for any)."""
    created = int(time.time())
    tok = engine.tokenizer
    prompts = Prompts(engine)

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="kr-mini-llm", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    if api_key:
        app.add_middleware(ApiKeyAuth, api_key=api_key)
    app.add_middleware(HostCheck, allowed=allowed_hosts)  # the last added runs first
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(404, f"The model '{name}' does not exist. This server serves '{model_name}'.",
                           "model", "model_not_found")

    async def build(make, *args, param: str) -> Prompt:
        """prompts.<make>(*args) in a worker thread: a large request's tokenizing never stalls the event loop."""
        try:
            return await anyio.to_thread.run_sync(functools.partial(make, *args))
        except ContextLengthError as e:
            raise APIError(400, str(e), param, "context_length_exceeded") from None
        except InvalidPrompt as e:
            raise APIError(400, f"Invalid value for '{param}': {e}.", param, "invalid_value") from None

    def submit(prompt: Prompt, req: S.GenerationRequest, stop_ids: tuple[int, ...], param: str) -> Stream:
        params = SamplingParams(
            max_tokens=prompt.max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k or None,
            repetition_penalty=req.repetition_penalty, frequency_penalty=req.frequency_penalty,
            presence_penalty=req.presence_penalty, seed=req.seed, stop=tuple(req.stop or ()), stop_token_ids=stop_ids)
        try:
            return engine.submit(prompt.ids, params)
        except ContextLengthError as e:
            raise APIError(400, str(e), param, "context_length_exceeded") from None
        except RuntimeError as e:
            raise APIError(503, str(e)) from None

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "busy_rows": engine.busy_rows, "queued": engine.queued,
                "max_batch": engine.max_batch, "context_length": engine.context_length,
                "speculative": _speculative_health(engine)}

    @app.get("/v1/models", response_model=S.ModelList)
    async def models():
        return S.ModelList(data=[S.ModelCard(id=model_name, created=created)])

    @app.get("/v1/models/{name:path}", response_model=S.ModelCard)
    async def model(name: str):
        check_model(name)
        return S.ModelCard(id=model_name, created=created)

    @app.post("/v1/chat/completions", response_model=S.ChatCompletion,
              openapi_extra=_body_schema(S.ChatCompletionRequest))
    async def chat_completions(request: Request, response: Response,
                               req: S.ChatCompletionRequest = _parsed(S.ChatCompletionRequest)):
        check_model(req.model)
        messages = [{"role": m.role, "content": m.text} for m in req.messages]
        auto = req.truncation == "auto"
        prompt = await build(prompts.chat, messages, req.max_tokens, auto, param="messages")
        stream = submit(prompt, req, (tok.eos_id, tok.im_end_id), "messages")
        # What truncation did, for the client to show (and to drop from its own history).
        headers = {"X-Dropped-Messages": str(prompt.dropped), "X-Max-Tokens": str(prompt.max_tokens)} if auto else {}
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(_chat_chunks(stream, rid, model_name, include_usage), headers)
        text, finish, done = await _collect(stream, request)
        response.headers.update(headers)
        return S.ChatCompletion(id=rid, model=model_name, usage=S.usage(len(prompt.ids), done),
                                choices=[S.ChatChoice(message=S.AssistantMessage(content=text), finish_reason=finish)])

    @app.post("/v1/completions", response_model=S.Completion, openapi_extra=_body_schema(S.CompletionRequest))
    async def completions(request: Request, req: S.CompletionRequest = _parsed(S.CompletionRequest)):
        check_model(req.model)
        prompt = await build(prompts.completion, req.prompt, req.max_tokens, param="prompt")
        stream = submit(prompt, req, (tok.eos_id,), "prompt")
        rid = f"cmpl-{uuid.uuid4().hex}"
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(_completion_chunks(stream, rid, model_name, include_usage))
        text, finish, done = await _collect(stream, request)
        return S.Completion(id=rid, model=model_name, usage=S.usage(len(prompt.ids), done),
                            choices=[S.CompletionChoice(text=text, finish_reason=finish)])

    return app


# -- request bodies ---------------------------------------------------------------------------
def _parsed(model):
    """The request body as `model`, parsed and validated in a worker thread: a 1 MiB body costs tens
    of milliseconds of CPU, which on the event loop would stall every running stream. Errors are
    FastAPI's own (the same locations and types), so errors.py words them as for any route."""
    async def body(request: Request):
        return await run_in_threadpool(_validate, model, await request.body())

    return Depends(body)


def _validate(model, raw: bytes):
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        obj = json.loads(raw)
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", getattr(e, "pos", 0)),
                                       "msg": "JSON decode error", "input": {},
                                       "ctx": {"error": getattr(e, "msg", str(e))}}]) from None
    if not isinstance(obj, dict):
        raise RequestValidationError([{"type": "model_attributes_type", "loc": ("body",),
                                       "msg": "Input should be a valid dictionary or object", "input": obj}])
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])}
                                      for err in e.errors(include_url=False)]) from None


def _body_schema(model) -> dict:
    """The body `model` in the OpenAPI page (a Depends body is not described there by itself)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


# -- answers ----------------------------------------------------------------------------------
async def _collect(stream: Stream, request: Request) -> tuple[str, str, int]:
    """The whole answer: (text, finish_reason, completion tokens). Frees the row if the client leaves."""
    async def watch():
        while (await request.receive())["type"] != "http.disconnect":
            pass
        stream.cancel()
        stream.put(Event(error="client disconnected"))

    watcher = asyncio.create_task(watch())
    pieces = []
    try:
        async for ev in stream:
            if ev.error:
                raise APIError(500, ev.error)
            pieces.append(ev.text)
            if ev.finish_reason:
                return "".join(pieces), ev.finish_reason, ev.completion_tokens
        raise APIError(500, "the answer ended without a finish reason")
    finally:
        watcher.cancel()
        stream.cancel()


def _sse(chunks, headers: dict | None = None) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})


def _data(obj) -> str:
    body = obj.model_dump_json() if hasattr(obj, "model_dump_json") else json.dumps(obj, ensure_ascii=False)
    return f"data: {body}\n\n"


async def _chat_chunks(stream: Stream, rid: str, model: str, include_usage: bool):
    # The chunk's shape comes from the schema once; per token only the delta changes (cheap json.dumps).
    chunk = S.ChatCompletionChunk(id=rid, model=model, choices=[S.ChatChunkChoice(delta=S.Delta())]).model_dump()
    choice = chunk["choices"][0]

    def piece(delta: dict, finish=None) -> str:
        choice["delta"], choice["finish_reason"] = delta, finish
        return _data(chunk)

    yield piece({"role": "assistant", "content": ""})
    async for text in _sse_body(stream, chunk, piece, lambda text: {"content": text}, {}, include_usage):
        yield text


async def _completion_chunks(stream: Stream, rid: str, model: str, include_usage: bool):
    chunk = S.Completion(id=rid, model=model, choices=[S.CompletionChoice(text="")]).model_dump()
    choice = chunk["choices"][0]

    def piece(text: str, finish=None) -> str:
        choice["text"], choice["finish_reason"] = text, finish
        return _data(chunk)

    async for text in _sse_body(stream, chunk, piece, lambda text: text, "", include_usage):
        yield text


async def _sse_body(stream: Stream, chunk: dict, piece, content, empty, include_usage: bool):
    """The events of one answer as SSE text: content chunks, a finish chunk, the usage chunk when
    asked, `data: [DONE]`. Events that queued up while the client was slow go out in one write."""
    try:
        async for first in stream:
            out = []
            for ev in [first, *stream.ready()]:
                if ev.error:
                    out.append(_data(error_body(500, ev.error)))
                    break
                if ev.text:
                    out.append(piece(content(ev.text)))
                if ev.finish_reason:
                    out.append(piece(empty, ev.finish_reason))
                    if include_usage:
                        out.append(_data({**chunk, "choices": [],
                                          "usage": S.usage(ev.prompt_tokens, ev.completion_tokens).model_dump()}))
            yield "".join(out)
        yield "data: [DONE]\n\n"
    finally:
        stream.cancel()  # the client went away mid-answer (or it is over): free the row


def _speculative_health(engine) -> dict | None:
    """What speculative decoding has done since the server started (None when it is off): the
    counts of engine.stats and the two rates an operator tunes num_draft_tokens by."""
    if engine.speculative is None:
        return None
    st = engine.stats
    return {"mode": engine.speculative, "num_draft_tokens": engine.num_draft_tokens, "proposed": st.proposed,
            "accepted": st.accepted, "acceptance": round(st.acceptance, 4), "rounds": st.rounds,
            "tokens": st.tokens, "tokens_per_round": round(st.tokens_per_round, 4)}
