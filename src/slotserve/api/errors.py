"""llama-server's error shape, and the one place where a failure becomes an HTTP answer.

Every error leaves the server as `{"error": {"code", "message", "type"}}` with the status code
llama-server uses for that type (server-common.cpp, format_error_response).
"""
from __future__ import annotations

import logging
from enum import Enum

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..engine.tasks import EngineError

log = logging.getLogger("slotserve.api")

# an error kind's string value -> (llama-server's error type, HTTP status). Keyed by the value, so the
# engine's ErrorKind (a str enum) and a plain string find the same row.
ERROR_TYPES = {
    "invalid_request": ("invalid_request_error", 400),
    "authentication": ("authentication_error", 401),
    "permission": ("permission_error", 403),
    "not_found": ("not_found_error", 404),
    "server": ("server_error", 500),
    "not_supported": ("not_supported_error", 501),
    "unavailable": ("unavailable_error", 503),
    "exceed_context_size": ("exceed_context_size_error", 400),
    "insufficient_storage": ("insufficient_storage_error", 507),
}


def _kind_value(kind) -> str:
    return kind.value if isinstance(kind, Enum) else str(kind)


class ApiError(Exception):
    """A request we answer with an error. `extra` fields go inside the error object, as llama-server
    puts n_prompt_tokens and n_ctx there for exceed_context_size_error."""

    def __init__(self, kind: str, message: str, *, status: int | None = None, headers: dict | None = None, **extra):
        super().__init__(message)
        kind = _kind_value(kind)
        if kind not in ERROR_TYPES:  # a kind someone added without a row here: say so, loudly
            log.error("error kind %r has no HTTP mapping in api/errors.py; answering 500: %s", kind, message)
            message, kind, extra = f"{message} (unmapped error kind {kind!r})", "server", {}
        self.kind, self.message, self.extra, self.headers = kind, message, extra, headers
        self.status = status or ERROR_TYPES[kind][1]

    def body(self) -> dict:
        err_type, _ = ERROR_TYPES[self.kind]
        return {"error": {"code": self.status, "message": self.message, "type": err_type, **self.extra}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid(message: str) -> ApiError:
    return ApiError("invalid_request", message)


def from_engine(exc: EngineError) -> ApiError:
    return ApiError(exc.kind, exc.message, **exc.extra)


def from_slot_failure(exc: BaseException, filename: str) -> ApiError:
    """Map what a slot action's future raised: the engine says which rule failed, anything else is ours."""
    if isinstance(exc, EngineError):
        return from_engine(exc)
    log.error("slot action on '%s' failed", filename, exc_info=exc)
    return ApiError("server", f"slot action failed: {exc}")


def answer(method: str, path: str, err: ApiError) -> JSONResponse:
    """The error's response; a 4xx is logged as llama-server logs it (the request's fault, one line)."""
    if 400 <= err.status < 500:
        log.info("%s %s %d: %s", method, path, err.status, err.message)
    return err.response()


def install(app) -> None:
    """Route every failure through llama-server's error shape; none may take the server down."""

    def reply(request: Request, err: ApiError) -> JSONResponse:
        return answer(request.method, request.url.path, err)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return reply(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return reply(request, ApiError("not_found", f"no such endpoint: {request.method} {request.url.path}"))
        if exc.status_code == 405:
            return reply(request, ApiError("invalid_request", f"method {request.method} is not allowed on "
                                                              f"{request.url.path}", status=405))
        kind = "server" if exc.status_code >= 500 else "invalid_request"
        return reply(request, ApiError(kind, str(exc.detail), status=exc.status_code))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return reply(request, ApiError("server", f"internal error: {type(exc).__name__}: {exc}"))
