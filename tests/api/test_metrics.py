"""GET /metrics: off by default (501); with --metrics, llama-server's Prometheus names and counts."""
import pytest
from server import TINYLLAMA2, ServerProcess

COUNTERS = ["prompt_tokens_total", "prompt_tokens_cached_total", "prompt_seconds_total", "tokens_predicted_total",
            "tokens_predicted_seconds_total", "n_decode_total", "n_tokens_max",
            "spec_decode_num_draft_tokens_total", "spec_decode_num_accepted_tokens_total",
            "spec_decode_num_drafts_total"]
GAUGES = ["prompt_tokens_seconds", "predicted_tokens_seconds", "requests_processing", "requests_deferred",
          "n_busy_slots_per_decode"]


def parse(text: str) -> dict:
    """{name: (type, value)}; every sample must follow its # TYPE line."""
    types, out = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line.startswith("llamacpp:"):
            name, value = line.split(" ", 1)
            assert name in types, f"{name} has no # TYPE line"
            out[name] = (types[name], float(value))
    return out


def test_metrics_disabled(stories_path):
    with ServerProcess(stories_path, *TINYLLAMA2) as srv:
        res = srv.get("/metrics")
        assert res.status_code == 501
        assert res.json()["error"]["type"] == "not_supported_error"


@pytest.fixture(scope="module")
def srv(stories_path):
    with ServerProcess(stories_path, *TINYLLAMA2, "-np", "1", "--metrics") as s:
        yield s


def test_metrics_format_and_counts(srv):
    prompt = "the quick brown fox jumps over the lazy dog"
    processed = cached = predicted = 0
    for n_predict in (4, 8):
        t = srv.post("/completion", {"prompt": prompt, "n_predict": n_predict}).json()["timings"]
        processed, cached, predicted = processed + t["prompt_n"], cached + t["cache_n"], predicted + t["predicted_n"]
    assert cached > 0  # one slot: the second request reuses the first one's prompt

    res = srv.get("/metrics")
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/plain")
    assert b"Process-Start-Time-Unix" in {name for name, _ in res.headers.raw}  # llama-server's spelling
    metrics = parse(res.text)
    for name in COUNTERS:
        assert metrics[f"llamacpp:{name}"][0] == "counter"
        assert f"# HELP llamacpp:{name} " in res.text
    for name in GAUGES:
        assert metrics[f"llamacpp:{name}"][0] == "gauge"
        assert f"# HELP llamacpp:{name} " in res.text
    assert metrics["llamacpp:prompt_tokens_total"][1] == processed
    assert metrics["llamacpp:prompt_tokens_cached_total"][1] == cached
    assert metrics["llamacpp:tokens_predicted_total"][1] == predicted
    assert metrics["llamacpp:n_decode_total"][1] > 0
    assert metrics["llamacpp:requests_processing"][1] == 0
    assert metrics["llamacpp:prompt_tokens_seconds"][1] > 0
    # the throughput gauges cover the window since the previous scrape, as llama-server's buckets
    again = parse(srv.get("/metrics").text)
    assert again["llamacpp:prompt_tokens_seconds"][1] == 0
    assert again["llamacpp:tokens_predicted_total"][1] == predicted


def test_generation_rates_count_decode_steps_not_tokens(srv):
    """As llama-server 11434: the first token comes from the prompt's logits, so a request's
    predicted_per_second, and the predicted_tokens_seconds gauge, divide n - 1 steps by the time."""
    one = srv.post("/completion", {"prompt": "I believe", "n_predict": 1}).json()["timings"]
    assert one["predicted_n"] == 1
    assert one["predicted_per_second"] == 0.0 and one["predicted_per_token_ms"] == 0.0
    for key, value in one.items():
        assert value is not None and value >= 0, (key, value)

    parse(srv.get("/metrics").text)  # the gauges cover the window from here
    t = srv.post("/completion", {"prompt": "Once upon a time", "n_predict": 16, "ignore_eos": True,
                                 "cache_prompt": False}).json()["timings"]
    assert t["predicted_n"] == 16
    assert t["predicted_per_second"] == pytest.approx(1e3 / t["predicted_ms"] * 15, rel=1e-12)
    assert t["predicted_per_token_ms"] == pytest.approx(t["predicted_ms"] / 15, rel=1e-12)
    gauge = parse(srv.get("/metrics").text)["llamacpp:predicted_tokens_seconds"][1]
    assert gauge == pytest.approx(t["predicted_per_second"], rel=1e-6)


def test_no_generation_means_no_generation_time(srv):
    t = srv.post("/completion", {"prompt": "I believe", "n_predict": 0, "cache_prompt": False}).json()["timings"]
    assert (t["predicted_n"], t["predicted_ms"], t["predicted_per_second"]) == (0, 0.0, 0.0)
