"""The command line as llama-server's users type it: flags, defaults, the -hf cache, start-up output."""
import os
import shutil
import socket
import subprocess
import sys

import httpx
import pytest
from server import ServerProcess, free_port


def slotserve(*args: str) -> list[str]:
    """The command line of a server expected to fail at start-up: on a free port, since it binds before some
    checks and 8080 may be another server's."""
    return [sys.executable, "-m", "slotserve", "--port", str(free_port()), *args]


def test_default_model_and_ignored_gpu_flags(stories_path):
    # no -m: models/stories260K.gguf (what `make model` puts there) is served
    with ServerProcess(None, "-ngl", "99", "-fa", "on", "--jinja", "-cb", "--no-mmap", "-ctk", "f32", "-ctv", "f32",
                       "-t", "1") as srv:
        props = srv.get("/props").json()
        assert props["model_path"].endswith("stories260K.gguf")
        assert srv.post("/completion", {"prompt": "Once", "n_predict": 2}).status_code == 200
        log = srv.log_tail(200)
    for flag in ("-ngl", "-fa", "--jinja", "-cb", "--no-mmap"):
        assert f"ignoring {flag}:" in log, log


def test_startup_reports_progress_and_url(stories_path):
    with ServerProcess(stories_path) as srv:
        log = srv.log_tail(200)
    assert "loading " in log and "100%" in log
    assert f"http://127.0.0.1:{srv.port}" in log


def test_hf_model_from_the_offline_cache(stories_path, tmp_path):
    """A model llama-server or `hf download` put in the Hugging Face cache ($LLAMA_CACHE here) is served
    with --offline, named by its repository."""
    snapshot = tmp_path / "cache" / "models--ggml-org--models" / "snapshots" / ("c0" * 20)
    (snapshot / "tinyllamas").mkdir(parents=True)
    shutil.copy(stories_path, snapshot / "tinyllamas" / "stories260K.gguf")
    (tmp_path / "cache" / "models--ggml-org--models" / "refs").mkdir()
    (tmp_path / "cache" / "models--ggml-org--models" / "refs" / "main").write_text("c0" * 20)
    with ServerProcess(None, "-hf", "ggml-org/models", "--hf-file", "tinyllamas/stories260K.gguf", "--offline",
                       env={"LLAMA_CACHE": str(tmp_path / "cache")}) as srv:
        assert srv.get("/props").json()["model_path"] == str(snapshot / "tinyllamas" / "stories260K.gguf")
        assert srv.get("/v1/models").json()["data"][0]["id"] == "ggml-org/models"  # llama-server names it by repo


def test_model_is_named_by_its_path_as_typed(stories_path):
    """Without --alias llama-server calls the model what -m said, e.g. models/stories260K.gguf."""
    with ServerProcess(None, "-m", str(stories_path)) as srv:
        assert srv.get("/v1/models").json()["data"][0]["id"] == str(stories_path)
        assert srv.get("/props").json()["model_alias"] == str(stories_path)
        assert srv.post("/completion", {"prompt": "Once", "n_predict": 1}).json()["model"] == str(stories_path)


def test_offline_without_the_file_fails_in_one_line(tmp_path):
    proc = subprocess.run(slotserve("-hf", "ggml-org/models", "--hf-file", "x.gguf", "--offline"),
                          capture_output=True, text=True, timeout=60,
                          env={"LLAMA_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--offline: x.gguf from ggml-org/models is not in the cache" in proc.stderr


def test_mismatched_cache_types_are_refused(stories_path):
    proc = subprocess.run(slotserve("-m", str(stories_path), "-ctk", "f16", "-ctv", "f32"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "-ctk and -ctv must be the same type" in proc.stderr


def test_chat_template_file_and_newer_llama_server_flags(stories_path, tmp_path):
    """--chat-template-file is read at start; flags of newer llama-servers that change nothing here
    (backend sampling, reasoning) are accepted and logged; the prompt cache's and idle sleep's are real."""
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}")
    with ServerProcess(stories_path, "--chat-template-file", str(template), "--cache-ram", "0", "--no-cache-idle-slots",
                       "--sleep-idle-seconds", "60", "-bs", "--reasoning", "off") as srv:
        res = srv.post("/apply-template", {"messages": [{"role": "user", "content": "hi"}]})
        assert res.status_code == 200 and res.json()["prompt"] == "[user] hi\n"
        log = srv.log_tail(200)
    for flag in ("-bs", "--reasoning"):
        assert f"ignoring {flag}:" in log, log
    for flag in ("--cache-ram", "--no-cache-idle-slots", "--sleep-idle-seconds"):
        assert f"ignoring {flag}:" not in log, log


def test_unreadable_chat_template_file_fails_in_one_line(tmp_path):
    proc = subprocess.run(slotserve("--chat-template-file", str(tmp_path / "missing.jinja")),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "cannot read --chat-template-file" in proc.stderr and "Traceback" not in proc.stderr


def test_kv_unified_gives_every_slot_the_whole_context(stories_path):
    """-kvu: as llama-server's unified cache, any slot may use all of -c (here: its own arrays of it)."""
    with ServerProcess(stories_path, "-c", "256", "-np", "4", "-kvu") as srv:
        assert srv.get("/props").json()["default_generation_settings"]["n_ctx"] == 256
        body = srv.post("/completion", {"prompt": "A", "n_predict": 90, "ignore_eos": True}).json()
        assert body["timings"]["predicted_n"] == 90
    with ServerProcess(stories_path, "-c", "256", "-np", "4") as srv:
        assert srv.get("/props").json()["default_generation_settings"]["n_ctx"] == 64


def test_llama_server_environment_variables(stories_path):
    """LLAMA_ARG_* stand for their flags; the command line wins over them, as in llama-server."""
    env = {"LLAMA_ARG_CTX_SIZE": "128", "LLAMA_ARG_N_PARALLEL": "1", "LLAMA_ARG_ALIAS": "from-env",
           "LLAMA_ARG_NO_ENDPOINT_SLOTS": "1", "LLAMA_ARG_ENDPOINT_METRICS": "on"}
    with ServerProcess(stories_path, env=env) as srv:
        assert srv.get("/props").json()["default_generation_settings"]["n_ctx"] == 128
        assert srv.get("/v1/models").json()["data"][0]["id"] == "from-env"
        assert srv.get("/slots").status_code == 501 and srv.get("/metrics").status_code == 200
    with ServerProcess(stories_path, "-a", "from-cli", "--slots", env=env) as srv:
        assert srv.get("/v1/models").json()["data"][0]["id"] == "from-cli"
        assert srv.get("/slots").status_code == 200


def test_bad_switch_value_in_the_environment_fails_in_one_line():
    proc = subprocess.run(slotserve(), capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LLAMA_ARG_CONTEXT_SHIFT": "maybe"})
    assert proc.returncode != 0 and "LLAMA_ARG_CONTEXT_SHIFT='maybe'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_several_listen_addresses(stories_path):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    with ServerProcess(stories_path, "--host", "127.0.0.1,::1") as srv:
        for base in (f"http://127.0.0.1:{srv.port}", f"http://[::1]:{srv.port}"):
            assert httpx.get(base + "/health", timeout=10).status_code == 200
            res = httpx.post(base + "/completion", json={"prompt": "Once", "n_predict": 2}, timeout=60)
            assert res.status_code == 200 and res.json()["tokens_predicted"] == 2


def test_a_built_in_template_name_slotserve_lacks_stops_the_start(tmp_path):
    """llama-server knows more formats by name ("granite", "kimi-k2", ...); rendering such a name as a
    template would send the model the bare word, so it is refused up front with the names that exist."""
    proc = subprocess.run(slotserve("--chat-template", "granite"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "built-in templates are chatml, command-r" in proc.stderr


def test_a_template_of_plain_words_is_used_as_it_is(stories_path):
    """As in llama-server, text that is not a single name is a (constant) template; llama.cpp's own
    test_chat_completion sends the model "This is not a chat template, it is" this way."""
    with ServerProcess(stories_path, "--chat-template", "This is not a chat template, it is") as srv:
        res = srv.post("/apply-template", {"messages": [{"role": "user", "content": "hi"}]})
    assert res.json()["prompt"] == "This is not a chat template, it is"
