"""One HTTP request run through an in-process ASGI app, its answer given back as parts: a ResponseHead,
then body chunks as the app sends them (a stream's events one by one).

A cluster replica runs slotserve's own FastAPI app this way, so every endpoint, dialect and error of the
single-process server is the cluster's too; the Vertex AI predict route runs each instance so. Closing
the stream early is a client disconnect for the app: its routes then cancel their engine tasks, as they
do when a socket closes.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator

_WIND_DOWN_S = 2.0  # how long a disconnected app may take to finish before it is cancelled


@dataclass(frozen=True)
class HttpCall:
    method: str
    path: str
    query: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""


@dataclass(frozen=True)
class ResponseHead:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


async def run_call(app, call: HttpCall) -> AsyncIterator[ResponseHead | bytes]:
    sent: asyncio.Queue = asyncio.Queue()
    disconnected = asyncio.Event()
    body_given = False

    async def receive():
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": call.body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.put_nowait(message)

    async def run():
        try:
            await app(_scope(call), receive, send)
        except BaseException as exc:  # handed to the reader: the app's failure is the call's
            sent.put_nowait(exc)
            raise
        finally:
            sent.put_nowait(None)

    task = asyncio.create_task(run())
    try:
        while True:
            message = await sent.get()
            if message is None:
                return
            if isinstance(message, BaseException):
                raise message
            if message["type"] == "http.response.start":
                headers = tuple((bytes(k), bytes(v)) for k, v in message.get("headers", ()))
                yield ResponseHead(message["status"], headers)
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield bytes(message["body"])
                if not message.get("more_body", False):
                    return
    finally:
        disconnected.set()
        if not task.done():
            done, _ = await asyncio.wait({task}, timeout=_WIND_DOWN_S)
            if not done:
                task.cancel()


def _scope(call: HttpCall) -> dict:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": call.method, "scheme": "http", "path": call.path, "raw_path": call.path.encode(),
            "query_string": call.query, "root_path": "", "headers": list(call.headers),
            "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0)}
