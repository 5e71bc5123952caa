"""A sleeping server (--sleep-idle-seconds) is woken by any request that may need the model, as llama-server's
route handlers wait for the wake before doing anything; the request keeps it awake until it is answered
(a stream, until its end). /health, /props, /models and /metrics answer while asleep without waking it.
"""
from __future__ import annotations

import asyncio

# llama-server's handlers built with create_response(bypass_sleep = true)
ANSWERED_ASLEEP = {("GET", p) for p in ("/health", "/v1/health", "/props", "/models", "/v1/models", "/metrics")}


class Wake:
    def __init__(self, app, service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        sleep = self.service.sleep
        if scope["type"] != "http" or sleep is None or (scope["method"], scope["path"]) in ANSWERED_ASLEEP:
            return await self.app(scope, receive, send)
        while (waking := sleep.hold()) is not None:
            await asyncio.wrap_future(waking)
        try:
            await self.app(scope, receive, send)
        finally:
            sleep.release()
