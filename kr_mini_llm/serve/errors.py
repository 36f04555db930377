"""OpenAI-style error bodies, the handlers that produce them, the body size limit and the API key check.

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
          405: "invalid_request_error", 413: "invalid_request_error", 500: "server_error",
          503: "server_error"}


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


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None, str]:
    errors = exc.errors()
    for e in errors:
        if e.get("type") == "json_invalid":
            reason = e.get("ctx", {}).get("error", "invalid JSON")
            return (f"We could not parse the JSON body of your request ({reason}). "
                    "Send a valid JSON object with Content-Type: application/json.", None, "invalid_json")
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    if first.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    if first.get("type") == "model_attributes_type":
        return "The request body must be a JSON object.", None, "invalid_json"
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
