"""Server-level endpoints against a real slotserve process: health, props, models, slots, CORS, 404."""
import asyncio

import httpx
import pytest
from server import TINYLLAMA2, ServerProcess

from slotserve.api.app import create_app
from slotserve.service import ServerConfig, Service


@pytest.fixture(scope="module")
def srv(stories_path):
    with ServerProcess(stories_path, *TINYLLAMA2, "--alias", "tinyllama-2") as s:
        yield s


def test_health(srv):
    for path in ("/health", "/v1/health"):
        res = srv.get(path)
        assert res.status_code == 200
        assert res.json() == {"status": "ok"}


def test_health_is_503_while_loading(stories_path):
    # in-process: a Service whose load() has not run yet is exactly the "loading" state
    app = create_app(Service(ServerConfig(model_path=stories_path)))

    async def probe():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [await client.get(p) for p in ("/health", "/completion", "/props")]

    for res in asyncio.run(probe()):
        assert res.status_code == 503
        assert res.json() == {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}


def test_props(srv, stories_path):
    body = srv.get("/props").json()
    assert body["model_path"] == str(stories_path)
    assert body["total_slots"] == 2
    assert body["default_generation_settings"]["n_ctx"] == 512 / 2
    params = body["default_generation_settings"]["params"]
    assert params["seed"] == 42 and params["temperature"] == 0.0 and params["n_predict"] == 64
    assert body["build_info"].startswith("b")
    assert "<|im_start|>" in body["chat_template"]  # the model has none: ChatML, as llama-server
    assert body["bos_token"] == "<s>" and body["eos_token"] == "</s>"
    assert body["model_ftype"] == "F32"
    for key in ("media_marker", "ui_settings", "cors_proxy_enabled", "chat_template_caps", "modalities"):
        assert key in body  # llama-server's keys, which its web UI and clients read


@pytest.mark.parametrize("path", ["/models", "/v1/models"])
def test_models(srv, path):
    body = srv.get(path).json()
    assert body["object"] == "list"
    assert len(body["data"]) == 1
    model = body["data"][0]
    assert model["id"] == "tinyllama-2"
    assert model["owned_by"] == "llamacpp"
    assert model["meta"]["n_vocab"] == 512 and model["meta"]["n_ctx_train"] == 2048


def test_slots(srv):
    res = srv.get("/slots")
    assert res.status_code == 200
    slots = res.json()
    assert [s["id"] for s in slots] == [0, 1]
    for s in slots:
        assert s["n_ctx"] == 256
        assert s["is_processing"] is False
        assert "params" not in s  # as llama-server: no task, no params


def test_idle_slot_shows_its_previous_request(stories_path):
    with ServerProcess(stories_path, *TINYLLAMA2) as s:
        s.post("/completion", {"prompt": "What is the capital of France?", "id_slot": 1, "n_predict": 8})
        slot = s.get("/slots").json()[1]
    assert slot["is_processing"] is False and slot["n_past"] == 21 + 8 - 1
    assert slot["n_prompt_tokens"] == 28 and slot["params"]["n_predict"] == 8
    # llama-server 11434 resets a released slot's counts: its budget must not leak into the idle slot
    assert (slot["n_prompt_tokens_processed"], slot["n_prompt_tokens_cache"]) == (0, 0)
    assert slot["next_token"][0] == {"has_next_token": False, "has_new_line": False, "n_remain": -1, "n_decoded": 0}


def test_slots_disabled(stories_path):
    with ServerProcess(stories_path, *TINYLLAMA2, "--no-slots") as s:
        res = s.get("/slots")
        assert res.status_code == 501
        assert res.json()["error"]["type"] == "not_supported_error"


def test_unknown_endpoint_is_404_in_llama_shape(srv):
    res = srv.get("/no/such/thing")
    assert res.status_code == 404
    assert res.json()["error"]["type"] == "not_found_error"
    res = srv.get("/completion")  # exists, but only for POST
    assert res.status_code == 405
    assert "error" in res.json()


def test_cors_preflight(srv):
    res = srv.client.options("/completions", headers={
        "Origin": "web.mydomain.fr", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization"})
    assert res.status_code == 200
    assert res.headers["Access-Control-Allow-Origin"] == "web.mydomain.fr"
    assert res.headers["Access-Control-Allow-Credentials"] == "true"
    assert res.headers["Access-Control-Allow-Methods"] == "GET, POST, DELETE, OPTIONS"
    assert res.headers["Access-Control-Allow-Headers"] == "*"
    # the names as llama-server writes them, for clients that look headers up case-sensitively
    names = {name for name, _ in res.headers.raw}
    assert {b"Access-Control-Allow-Origin", b"Access-Control-Allow-Credentials"} <= names


LOCAL = ["http://localhost", "http://localhost:8080", "http://127.0.0.1", "http://127.0.0.1:3000", "http://[::1]",
         "http://[::1]:3000"]
FOREIGN = ["http://web.mydomain.fr", "http://evil.com", "http://notlocalhost", "http://localhost.evil.com"]


def test_cors_origins_localhost_reflects_only_local_origins(stories_path):
    with ServerProcess(stories_path, *TINYLLAMA2, "--cors-origins", "localhost") as s:
        for origin in LOCAL + FOREIGN:
            res = s.client.options("/completions", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
            assert res.status_code == 200
            assert res.headers.get("Access-Control-Allow-Origin") == (origin if origin in LOCAL else None), origin
        res = s.client.post("/tokenize", json={"content": "hi"}, headers={"Origin": "http://evil.com"})
        assert res.status_code == 200 and "Access-Control-Allow-Origin" not in res.headers


def test_cors_literal_origin_and_options(stories_path):
    with ServerProcess(stories_path, *TINYLLAMA2, "--cors-origins", "https://app.example", "--no-cors-credentials",
                       "--cors-methods", "GET, POST", "--cors-headers", "Authorization") as s:
        res = s.client.options("/completions", headers={"Origin": "http://evil.com"})
        assert res.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert res.headers["Access-Control-Allow-Credentials"] == "false"
        assert res.headers["Access-Control-Allow-Methods"] == "GET, POST"
        assert res.headers["Access-Control-Allow-Headers"] == "Authorization"


def test_aliases_and_tags(stories_path):
    """As llama-server, which keeps aliases in a std::set: the id is the first alias in sorted order."""
    with ServerProcess(stories_path, *TINYLLAMA2, "--alias", "tinyllama-2,fim,code", "--tags", "chat,fim,small") as s:
        (model,) = s.get("/models").json()["data"]
    assert model["id"] == "code"
    assert model["aliases"] == ["code", "fim", "tinyllama-2"] and model["tags"] == ["chat", "fim", "small"]
