"""Shared fixtures: paths into ../shared, which CI always has beside the clone; the API app in-process.

Test modules take what they share from here as fixtures (`shared`, `inproc`), never from each other.
"""
import asyncio
import json
import os
from pathlib import Path

import httpx
import pytest

from slotserve.api.app import create_app
from slotserve.model.sampling import SamplingParams
from slotserve.service import ServerConfig, Service

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_file(*parts: str) -> Path:
    """A file under ../shared; skip when it is absent, except under CI where that is a failure."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing: CI must run with ../shared beside the clone")
        pytest.skip(f"{path} not present (../shared is not beside this checkout)")
    return path


@pytest.fixture(scope="session")
def stories_path() -> Path:
    """stories260K.gguf: models/ (from `make model`) first, else ../shared/models."""
    local = REPO / "models" / "stories260K.gguf"
    return local if local.exists() else shared_file("models", "stories260K.gguf")


@pytest.fixture(scope="session")
def bpe_model():
    """synth-bpe-8M-f16.gguf loaded once a session: the Llama 3 vocabulary's tests and goldens share it."""
    from slotserve.model.loader import load_model
    return load_model(shared_file("models", "synth-bpe-8M-f16.gguf"))


@pytest.fixture(scope="session")
def shared():
    """shared_file as a fixture: shared("golden", "x.json") is ../shared/golden/x.json, or a skip."""
    return shared_file


# ---- the API in-process -------------------------------------------------------------------------------------

class InProcess:
    """A loaded Service behind the real FastAPI app, called through httpx.ASGITransport. Each call runs on a
    fresh event loop; the engine thread is the service's own."""

    def __init__(self, service: Service):
        self.service, self.app = service, create_app(service)

    async def _call(self, method: str, path: str, **kw) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://slotserve.test", timeout=60) as client:
            return await client.request(method, path, **kw)

    def get(self, path: str, **kw) -> httpx.Response:
        return asyncio.run(self._call("GET", path, **kw))

    def post(self, path: str, body=None, **kw) -> httpx.Response:
        if body is not None:
            kw["json"] = body
        return asyncio.run(self._call("POST", path, **kw))

    def events(self, path: str, body: dict) -> list:
        """A streamed answer as (event type or None, data) pairs; "[DONE]" kept as the string."""
        res = self.post(path, body)
        assert res.status_code == 200 and res.headers["content-type"].startswith("text/event-stream"), res.text
        out = []
        for block in res.text.strip().split("\n\n"):
            kind, data = None, None
            for line in block.split("\n"):
                if line.startswith("event: "):
                    kind = line[len("event: "):]
                elif line.startswith("data: "):
                    data = line[len("data: "):]
            if data is not None:
                out.append((kind, data if data == "[DONE]" else json.loads(data)))
        return out


def tinyllama2_config(model_path, **kw) -> ServerConfig:
    """tests/api/server.py's TINYLLAMA2 flags (-c 512 -np 2 -b 32 -n 64 --temp 0 --seed 42) as a ServerConfig."""
    return ServerConfig(model_path=model_path, n_ctx=512, n_parallel=2, n_batch=32, n_predict=64,
                        sampling=SamplingParams(temperature=0.0, seed=42), **kw)


@pytest.fixture(scope="session")
def inproc(stories_path):
    """The app over stories260K with llama.cpp's tinyllama2 preset, in this process."""
    service = Service(tinyllama2_config(stories_path))
    service.load()
    try:
        yield InProcess(service)
    finally:
        service.close()
