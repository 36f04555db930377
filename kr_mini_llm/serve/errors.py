"""OpenAI-style error bodies, the handlers that produce them, and the guards in front of the app:
the Host check, the body size limit and the API key check.

Every error leaves the server as {"error": {"message", "type", "param", "code"}} with its HTTP
status, whatever raised it: a validation failure, an unknown route, the size limit, a bug.
"""
from __future__ import annotations

import hmac
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 421: "invalid_request_error",
          500: "server_error", 503: "server_error"}


class APIError(HTTPException):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(status, message)
        self.message, self.param, self.code = message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def _field(loc) -> str | None:
    """'messages.2.content.0.text' from pydantic's location, without 'body' and the tags of union members."""
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and "[" in p)]
    return ".".join(parts) or None


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None, str]:
    errors = exc.errors()
    for e in errors:
        if e.get("type") == "json_invalid":
            reason = e.get("ctx", {}).get("error", "invalid JSON")
            return (f"We could not parse the JSON body of your request ({reason}). "
                    "Send a valid JSON object with Content-Type: application/json.", None, "invalid_json")
    if not errors:
        return "Invalid request.", None, "invalid_value"
    missing = [e for e in errors if e.get("type") == "missing"]
    if missing:
        names = [_field(e.get("loc", ())) for e in missing]
        if names == [None]:  # the body itself is missing
            return ("The request body is empty; send a JSON object with Content-Type: application/json.",
                    None, "invalid_json")
        if len(names) == 1:
            return f"Missing required parameter: '{names[0]}'.", names[0], "missing_required_parameter"
        listed = ", ".join(f"'{n}'" for n in names)
        return f"Missing required parameters: {listed}.", names[0], "missing_required_parameter"
    if errors[0].get("type") == "model_attributes_type" and _field(errors[0].get("loc", ())) is None:
        return "The request body must be a JSON object.", None, "invalid_json"
    # Of a union's failed members, our own rule (a "Value error") says more than "should be a valid list".
    first = next((e for e in errors if e.get("msg", "").startswith("Value error, ")), errors[0])
    param = _field(first.get("loc", ()))
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    return f"Invalid value for '{param}': {msg}." if param else f"Invalid request: {msg}.", param, "invalid_value"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param, code = _validation_message(exc)
        return error_response(400, message, param, code)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        if isinstance(exc, APIError):
            return error_response(exc.status_code, exc.message, exc.param, exc.code, exc.headers)
        message = {404: f"Unknown path {request.url.path}.",
                   405: f"Method {request.method} is not allowed on {request.url.path}."}.get(exc.status_code,
                                                                                               str(exc.detail))
        return error_response(exc.status_code, message, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"Internal server error: {type(exc).__name__}: {exc}")


class BodySizeLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413, whether it declares its length or not."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self) -> APIError:
        return APIError(413, f"The request body is larger than the limit of {self.max_bytes} bytes.",
                        code="request_too_large")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", ())).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            err = self._too_large()
            return await error_response(413, err.message, code=err.code)(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()  # FastAPI re-raises HTTPExceptions met while reading the body
            return message

        await self.app(scope, limited_receive, send)


class ApiKeyAuth:
    """ASGI middleware: paths under /v1 need `Authorization: Bearer <key>`; the page and /health stay open."""

    def __init__(self, app, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (scope["path"] == "/v1" or scope["path"].startswith("/v1/")):
            header = dict(scope.get("headers", ())).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if not token:
                message = ("You didn't provide an API key. Send it in the Authorization header: "
                           "'Authorization: Bearer YOUR_KEY'.")
            elif scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                message = "Incorrect API key provided."
            else:
                return await self.app(scope, receive, send)
            response = error_response(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def host_name(header: str) -> str:
    """'example.com' of 'example.com:8000', '::1' of '[::1]:8000' (lower case)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class HostCheck:
    """ASGI middleware: answers only requests whose Host header names a host in `allowed` ('*' = any,
    '*.example.com' = its subdomains). A page on another site that rebinds its own DNS name to this
    machine's address still sends its own name as Host, so it is refused (DNS rebinding)."""

    def __init__(self, app, allowed):
        self.app = app
        self.allowed = {host_name(h) if h.startswith("[") else h.strip().lower() for h in allowed}

    def allows(self, host: str) -> bool:
        return "*" in self.allowed or host in self.allowed or any(
            a.startswith("*.") and host.endswith(a[1:]) for a in self.allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers", ())).get(b"host", b"").decode("latin-1")
        if self.allows(host_name(header)):
            return await self.app(scope, receive, send)
        shown = ", ".join(sorted(self.allowed))
        message = (f"This server does not answer to the host {header!r} (it answers to: {shown}). If you reach it "
                   "under that name on purpose, start it with --allowed-hosts NAME." if header else
                   "The request has no Host header; send one (e.g. Host: localhost).")
        response = error_response(421, message, code="invalid_host")
        return await response(scope, receive, send)
