"""Vertex AI's prediction protocol (AIP_MODE=PREDICTION), on a real server process: the predict route runs
each instance through the endpoint its @requestFormat names, AIP_HTTP_PORT wins over --port, and
AIP_HEALTH_ROUTE answers as /health. llama.cpp's unit/test_compat_gcp.py is the reference."""
import pytest

from server import TINYLLAMA2, ServerProcess, assert_error, free_port
from slotserve.api.vertex import request_format

CHAT = {"@requestFormat": "chatCompletions", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(scope="module")
def vertex(stories_path):
    # --port names another port: the server must listen on AIP_HTTP_PORT, where the fixture looks for it
    srv = ServerProcess(stories_path, *TINYLLAMA2, "--port", str(free_port()), "--api-key", "k1",
                        env={"AIP_MODE": "PREDICTION", "AIP_HEALTH_ROUTE": "/ping"})
    srv.env["AIP_HTTP_PORT"] = str(srv.port)
    srv.client.headers["Authorization"] = "Bearer k1"
    with srv:
        yield srv


def test_request_formats_are_llama_servers_aliases():
    assert request_format("/v1/chat/completions") == "chatCompletions"
    assert request_format("/apply-template") == "applyTemplate"
    assert request_format("/completion") == "completion"
    assert request_format("/slots/{id_slot}") == "slots"


def test_instances_run_through_their_endpoints_in_order(vertex):
    res = vertex.post("/predict", {"instances": [
        CHAT,
        {"@requestFormat": "completion", "prompt": "Once upon a time", "n_predict": 4, "stream": True},
        {"@requestFormat": "/tokenize", "content": "Hello world"},
    ]})
    assert res.status_code == 200, res.text
    chat, completion, tokens = res.json()["predictions"]
    assert chat["choices"][0]["message"]["role"] == "assistant" and chat["choices"][0]["message"]["content"]
    assert completion["content"] and completion["tokens_predicted"] == 4  # one answer: stream was turned off
    assert tokens == vertex.post("/tokenize", {"content": "Hello world"}).json()


def test_a_bad_instance_is_an_error_among_the_predictions(vertex):
    res = vertex.post("/predict", {"instances": [
        CHAT, "not an object", {"max_tokens": 8}, {"@requestFormat": "noSuchThing"},
        {"@requestFormat": "completion", "prompt": "Hi", "n_predict": -7},
    ]})
    assert res.status_code == 200, res.text
    good, *bad = res.json()["predictions"]
    assert good["choices"][0]["message"]["content"]
    messages = [p["error"]["message"] for p in bad]
    assert "must be a JSON object" in messages[0] and "@requestFormat" in messages[1]
    assert "noSuchThing" in messages[2] and all(p["error"]["code"] == 400 for p in bad)


def test_the_request_itself_must_hold_instances(vertex):
    assert_error(vertex.post("/predict", {"instance": []}), 400, "invalid_request_error", "instances")
    assert_error(vertex.post("/predict", {"instances": [CHAT] * 129}), 400, "invalid_request_error", "128")
    res = vertex.client.post("/predict", json={"instances": [CHAT]}, headers={"Authorization": "Bearer wrong"})
    assert res.status_code == 401  # the API key guards the route, as every other
    assert vertex.alive


def test_the_health_route_alias_answers_as_health(vertex):
    res = vertex.get("/ping")
    assert res.status_code == 200 and res.json() == vertex.get("/health").json()
