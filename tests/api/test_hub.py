"""-hf through huggingface_hub, against a real local HTTP server standing in for the Hub (HF_ENDPOINT)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hf_server import HubServer
from server import REPO, ServerProcess

from slotserve.hub import pick_file

FILES = ["README.md", "mmproj-stories-Q4_K_M.gguf", "stories260K-F32.gguf", "stories260K-Q8_0.gguf",
         "stories260K-Q4_K_M.gguf", "big-Q4_K_M-00002-of-00002.gguf"]


def test_the_file_is_picked_as_llama_cpp_picks_it():
    assert pick_file(FILES, "") == "stories260K-Q4_K_M.gguf"  # default Q4_K_M, never the mmproj
    assert pick_file(FILES, "f32") == "stories260K-F32.gguf"  # case-insensitive
    assert pick_file(FILES, "Q8_0") == "stories260K-Q8_0.gguf"
    assert pick_file(FILES, "Q5_K_M") is None  # a named quant that is missing is not replaced by another
    assert pick_file(["a/x-F16.gguf", "b/y.gguf"], "") == "a/x-F16.gguf"  # no default quant: the first GGUF
    assert pick_file(["m-Q8_0-00002-of-00002.gguf", "m-Q8_0-00001-of-00002.gguf"], "") == "m-Q8_0-00001-of-00002.gguf"


def fetch(repo: str, *, env: dict, hf_file: str | None = None, offline: bool = False):
    """slotserve.hub.fetch_model in a fresh process (huggingface_hub reads HF_* at import)."""
    code = ("import sys; from slotserve.hub import fetch_model, HubError\n"
            "try: print(fetch_model(sys.argv[1], sys.argv[2] or None, offline=sys.argv[3] == '1'))\n"
            "except HubError as e: sys.exit(f'slotserve: {e}')")
    full_env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO / "src"), "HOME": env["HOME"], **env}
    return subprocess.run([sys.executable, "-c", code, repo, hf_file or "", "1" if offline else "0"],
                          capture_output=True, text=True, timeout=120, env=full_env)


@pytest.fixture
def model_bytes(stories_path) -> bytes:
    return stories_path.read_bytes()


def test_quant_selection_download_and_offline_reuse(model_bytes, tmp_path):
    repos = {"test/stories": {name: model_bytes for name in FILES[1:-1]} | {"README.md": b"hi"}}
    env = {"HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    with HubServer(repos) as hub:
        got = fetch("test/stories:F32", env={**env, "HF_ENDPOINT": hub.url})
        assert got.returncode == 0, got.stderr
        path = Path(got.stdout.strip())
        # the standard cache: HF_HOME/hub/models--<owner>--<repo>/snapshots/<commit>/<file>
        assert path.parts[-4:] == ("models--test--stories", "snapshots", path.parts[-2], "stories260K-F32.gguf")
        assert path.is_relative_to(tmp_path / "hf" / "hub") and path.read_bytes() == model_bytes
        assert "downloading stories260K-F32.gguf: 100%" in got.stderr  # a plain line per quarter: not a TTY
        default = fetch("test/stories", env={**env, "HF_ENDPOINT": hub.url})
        assert Path(default.stdout.strip()).name == "stories260K-Q4_K_M.gguf"
        n_requests = len(hub.requests)
    # the server is gone: offline, the cached files are found and the quant rule applies to them
    for offline_env, flag in (({"HF_HUB_OFFLINE": "1"}, False), ({}, True)):
        again = fetch("test/stories:f32", env={**env, **offline_env, "HF_ENDPOINT": hub.url}, offline=flag)
        assert again.returncode == 0 and Path(again.stdout.strip()) == path, again.stderr
    assert len(hub.requests) == n_requests


def test_hf_token_and_llama_cache(model_bytes, tmp_path):
    """HF_TOKEN goes with every request; $LLAMA_CACHE (llama.cpp's) is the cache directory when set."""
    with HubServer({"me/private": {"m-Q8_0.gguf": model_bytes}}, token="hf_secret") as hub:
        env = {"HOME": str(tmp_path), "HF_ENDPOINT": hub.url, "LLAMA_CACHE": str(tmp_path / "llama")}
        refused = fetch("me/private", env=env)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert refused.stderr.count("\n") == 1, refused.stderr
        got = fetch("me/private", env={**env, "HF_TOKEN": "hf_secret"})
        assert got.returncode == 0, got.stderr
        assert Path(got.stdout.strip()).is_relative_to(tmp_path / "llama" / "models--me--private")
        assert all(h.get("authorization") == "Bearer hf_secret" for _, _, h in hub.requests[-3:])


def test_failed_download_leaves_nothing_behind(model_bytes, tmp_path):
    env = {"HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    with HubServer({"test/stories": {"s-Q8_0.gguf": model_bytes}}) as hub:
        missing = fetch("test/stories", env={**env, "HF_ENDPOINT": hub.url}, hf_file="nope.gguf")
        no_quant = fetch("test/stories:Q2_K", env={**env, "HF_ENDPOINT": hub.url})
    assert missing.returncode == 1 and "cannot fetch nope.gguf" in missing.stderr
    assert no_quant.returncode == 1 and "no GGUF for Q2_K in the repository; there are: s-Q8_0.gguf" in no_quant.stderr
    assert not (tmp_path / "hf" / "hub" / "models--test--stories").exists()
    offline = fetch("test/other", env={**env, "HF_HUB_OFFLINE": "1"}, hf_file="x.gguf")
    assert offline.returncode == 1 and "--offline: x.gguf from test/other is not in the cache" in offline.stderr
    assert not (tmp_path / "hf" / "hub" / "models--test--other").exists()


def test_a_dropped_download_resumes_and_a_failed_one_leaves_nothing(tmp_path):
    """huggingface_hub writes in 10 MiB chunks: a connection dropped at 12 MiB is retried from 10 MiB
    (Range), and the file ends whole. A download that fails for good leaves no partial file behind (2.x
    keeps none across runs: each run downloads to a file of its own)."""
    data = bytes(range(256)) * (25 * 4096)  # 25 MiB, not a model: only the transfer is checked
    env = {"HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    with HubServer({"test/big": {"b-Q8_0.gguf": data}}, break_first_get=12 << 20) as hub:
        got = fetch("test/big", env={**env, "HF_ENDPOINT": hub.url})
    assert got.returncode == 0, got.stderr
    assert Path(got.stdout.strip()).read_bytes() == data
    gets = [h for method, path, h in hub.requests if method == "GET" and "/resolve/" in path]
    assert [h.get("range") for h in gets] == [None, f"bytes={10 << 20}-"]
    with HubServer({"test/gone": {"b-Q8_0.gguf": data}}, break_first_get=1 << 20, break_always=True) as hub:
        failed = fetch("test/gone", env={**env, "HF_ENDPOINT": hub.url})
    assert failed.returncode == 1 and "cannot fetch b-Q8_0.gguf" in failed.stderr
    assert not (tmp_path / "hf" / "hub" / "models--test--gone").exists()


def test_server_from_hf(model_bytes, tmp_path):
    """slotserve -hf repo:quant end to end: downloaded, loaded, named by its repository."""
    with HubServer({"ggml-org/stories": {"stories260K-Q8_0.gguf": model_bytes}}) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
        with ServerProcess(None, "-hf", "ggml-org/stories:q8_0", env=env) as srv:
            assert srv.get("/v1/models").json()["data"][0]["id"] == "ggml-org/stories:q8_0"
            assert srv.post("/completion", {"prompt": "Once", "n_predict": 2}).status_code == 200
