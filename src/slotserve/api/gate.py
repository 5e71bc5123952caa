"""What every request passes before its route, in llama-server's order: CORS headers (and preflight
answers), then "still loading" (503), then the API key (401).

Written as a plain ASGI middleware: Starlette's BaseHTTPMiddleware would sit between a streaming
response and the client and hide disconnects, which must reach the route to cancel the engine task.
"""
from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.responses import Response

from .errors import ApiError

PUBLIC_PATHS = {"/health", "/v1/health"}  # llama-server checks no key here, so load balancers can probe
CORS_METHODS = "GET, POST, DELETE, OPTIONS"


class Gate:
    def __init__(self, app, service):
        self.app, self.service = app, service
        self.keys = [k.encode("utf-8") for k in service.config.api_keys]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        # llama-server's default CORS: any origin, with credentials, so it echoes the caller's Origin
        origin = headers.get("origin", "*")

        async def send_with_cors(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (b"access-control-allow-origin", origin.encode("latin-1", "replace"))]
            await send(message)

        if scope["method"] == "OPTIONS":  # browsers send preflights without credentials
            response = Response("", media_type="text/html", headers={
                "Access-Control-Allow-Credentials": "true", "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": "*"})
            return await response(scope, receive, send_with_cors)

        refusal = self._refusal(scope["path"], headers)
        if refusal is not None:
            return await refusal.response()(scope, receive, send_with_cors)
        await self.app(scope, receive, send_with_cors)

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
