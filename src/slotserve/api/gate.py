"""What every request passes before its route, in llama-server's order: CORS headers (and preflight
answers), then "still loading" (503), then the API key (401); then the body limit (413), ours.

Written as a plain ASGI middleware: Starlette's BaseHTTPMiddleware would sit between a streaming
response and the client and hide disconnects, which must reach the route to cancel the engine task.
"""
from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import Response

from .errors import ApiError, answer

PUBLIC_PATHS = {"/health", "/v1/health"}  # llama-server checks no key here, so load balancers can probe
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def is_local_origin(origin: str) -> bool:
    try:
        return urlsplit(origin).hostname in LOCAL_HOSTS
    except ValueError:
        return False


def latin1(value: str) -> bytes:
    return value.encode("latin-1", "replace")


def too_large(limit: int) -> ApiError:
    return ApiError("invalid_request", f"request body is larger than this server accepts ({limit >> 20} MiB; "
                                       "--max-body-mb sets it)", status=413)


class Gate:
    def __init__(self, app, service):
        self.app, self.service = app, service
        self.keys = [k.encode("utf-8") for k in service.config.api_keys]
        self.cors = service.config.cors
        listed = [o.strip() for o in self.cors.origins.split(",") if o.strip()]
        # a list (ours): echo an Origin only when listed; "localhost" in it stands for every local origin
        self.origin_list = set(listed) if len(listed) > 1 else None
        self.max_body = int(service.config.max_body_mb * (1 << 20))

    @property
    def reflects(self) -> bool:
        """Whether Access-Control-Allow-Origin depends on the caller's Origin: caches must then key on it (Vary)."""
        cors = self.cors
        return (cors.origins == "*" and cors.credentials) or cors.origins == "localhost" or bool(self.origin_list)

    def allowed_origin(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin to send, as llama-server chooses it; None: send none."""
        cors = self.cors
        if cors.origins == "*" and cors.credentials:
            return origin or "*"  # credentials forbid a literal *: echo the caller
        if cors.origins == "localhost":
            return origin if origin and is_local_origin(origin) else None
        if self.origin_list is not None:
            listed = origin in self.origin_list or ("localhost" in self.origin_list and is_local_origin(origin))
            return origin if origin and listed else None
        return cors.origins

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        # raw header names as llama-server writes them: clients that look them up case-sensitively work
        cors_headers = []
        allow = self.allowed_origin(headers.get("origin"))
        if allow is not None:
            cors_headers.append((b"Access-Control-Allow-Origin", latin1(allow)))
        if self.reflects:
            cors_headers.append((b"Vary", b"Origin"))

        async def send_with_cors(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + cors_headers
            await send(message)

        if scope["method"] == "OPTIONS":  # browsers send preflights without credentials
            cors_headers += [
                (b"Access-Control-Allow-Credentials", b"true" if self.cors.credentials else b"false"),
                (b"Access-Control-Allow-Methods", latin1(self.cors.methods)),
                (b"Access-Control-Allow-Headers", latin1(self.cors.headers))]
            return await Response("", media_type="text/html")(scope, receive, send_with_cors)

        refusal = self._refusal(scope["path"], headers) or self._too_large(headers)
        if refusal is not None:
            return await answer(scope["method"], scope["path"], refusal)(scope, receive, send_with_cors)
        await self.app(scope, self._bounded(receive), send_with_cors)

    def _too_large(self, headers: Headers) -> ApiError | None:
        try:
            declared = int(headers.get("content-length", "0"))
        except ValueError:
            return None  # uvicorn refuses such a request before it gets here
        return too_large(self.max_body) if declared > self.max_body else None

    def _bounded(self, receive):
        """receive, stopped with a 413 once the body passes the limit: a chunked body declares no length."""
        seen = 0

        async def bounded_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise too_large(self.max_body)  # raised in the route's body read: errors.py answers it
            return message
        return bounded_receive

    def _refusal(self, path: str, headers: Headers) -> ApiError | None:
        status = self.service.status
        if status == "loading":
            return ApiError("unavailable", "Loading model")
        if status == "error":
            return ApiError("server", f"the model failed to load: {self.service.error}")
        if not self.keys or path in PUBLIC_PATHS:
            return None
        given = headers.get("authorization") or headers.get("x-api-key") or ""
        if given.startswith("Bearer "):
            given = given[len("Bearer "):]
        given_b = given.encode("utf-8")
        # compare_digest against every key: the time taken does not reveal how much of a key matched
        if any(hmac.compare_digest(given_b, key) for key in self.keys):
            return None
        return ApiError("authentication", "Invalid API Key")
