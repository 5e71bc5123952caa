"""Start-up as llama-server's users meet it: --help, --version, flags, the context rule, listening, 501s."""
import fcntl
import os
import pty
import shutil
import socket
import struct
import subprocess
import sys
import termios

import httpx
import pytest
from server import REPO, ServerProcess, free_port

from slotserve.cli_options import OPTIONS, build_parser
from slotserve.context_size import FIT_MARGIN, plan_context


def run(*args, env=None, cwd=None, timeout=60):
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "slotserve", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)


def test_help_describes_every_option_with_default_and_variable():
    out = run("--help").stdout
    for title in ("common params", "sampling params", "server params", "no effect in slotserve",
                  "not supported by slotserve"):
        assert title in out, title
    for option in OPTIONS:
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(", ".join(option.flags))), None)
        assert line is not None, option.flags
    assert "-b, --batch-size N" in out and "(default: 2048; env: LLAMA_ARG_BATCH)" in out
    assert "(default: 0.8; env: LLAMA_ARG_TEMPERATURE)" in out  # SamplingParams' default
    assert "(default: 127.0.0.1; env: LLAMA_ARG_HOST)" in out
    assert "llama3" in out and "mistral-v7" in out  # the built-in chat template names
    assert "-md, --model-draft, --spec-draft-model FNAME" in out and "-ngl, --gpu-layers, --n-gpu-layers N" in out


def test_version():
    res = run("--version")
    assert res.returncode == 0 and res.stdout.startswith("slotserve ")


def test_multi_letter_short_flags_are_whole_words():
    args = build_parser().parse_args(["-np", "3", "-ctk", "f32", "-ctv", "f32", "-sps", "0.5", "-kvu", "-ub", "64",
                                      "-ngl", "99", "-md", "draft.gguf", "-hff", "x.gguf"])
    assert (args.n_parallel, args.kv_type, args.kv_type_v, args.slot_prompt_similarity) == (3, "f32", "f32", 0.5)
    assert args.kv_unified and args.n_ubatch == 64 and args.model is None and args.hf_file == "x.gguf"


@pytest.mark.parametrize("flags", [["-hfd", "user/draft"], ["--embeddings"], ["--lora", "a.gguf"],
                                   ["--mmproj", "p.gguf"], ["--reranking"]])
def test_features_slotserve_lacks_stop_the_start(flags):
    res = run(*flags)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(f"slotserve: {flags[0]}: not supported by slotserve (")


def test_without_a_model_the_message_needs_no_make(tmp_path):
    """As pip installs it (the package without the source tree's models/), from another directory, the
    message gives a command that works without make: fetching stories260K with -hf."""
    shutil.copytree(REPO / "src" / "slotserve", tmp_path / "site" / "slotserve")
    (tmp_path / "elsewhere").mkdir()
    res = run(cwd=tmp_path / "elsewhere", env={"PYTHONPATH": str(tmp_path / "site")})
    assert res.returncode == 1 and "make" not in res.stderr
    assert "slotserve -hf ggml-org/models --hf-file tinyllamas/stories260K.gguf" in res.stderr


def test_plan_context_is_llama_servers_rule():
    mib = 1 << 20
    # -c unset: every slot gets the training context, split or unified alike
    assert plan_context(None, 2, False, 2048, 1000, 2, 64 << 30).n_ctx_slot == 2048
    assert plan_context(None, 2, False, 2048, 1000, 2, 64 << 30).n_ctx_total == 4096
    assert plan_context(None, 4, True, 2048, 1000, 4, 64 << 30).n_ctx_total == 2048
    # -c N: split between the slots (or shared by all with a unified cache), never past the training context
    assert plan_context(256, 4, False, 2048, 1000, 4, None).n_ctx_slot == 64
    assert plan_context(256, 4, True, 2048, 1000, 4, None).n_ctx_slot == 256
    assert plan_context(8192, 2, False, 2048, 1000, 2, None).n_ctx_slot == 2048
    # not enough memory for 4 x 32768 tokens at 1 MiB each: fitted, in steps of 256, never below 4096
    plan = plan_context(None, 4, False, 32768, mib, 4, FIT_MARGIN + 4 * 10000 * mib)
    assert (plan.n_ctx_slot, plan.reduced_from) == (9984, 32768)
    assert plan_context(None, 4, False, 32768, mib, 4, FIT_MARGIN).n_ctx_slot == 4096
    # -c 0 asks for the training context as it is: not fitted
    assert plan_context(0, 4, False, 32768, mib, 4, FIT_MARGIN).n_ctx_slot == 32768


def test_unset_context_gives_each_slot_the_training_context(stories_path):
    """llama-server -np 2 on stories260K: two slots of 2048 tokens each, so a 1,500-token prompt fits."""
    with ServerProcess(stories_path, "-np", "2") as srv:
        assert srv.get("/props").json()["default_generation_settings"]["n_ctx"] == 2048
        assert [s["n_ctx"] for s in srv.get("/slots").json()] == [2048, 2048]
        prompt = list(range(100, 300)) * 7 + list(range(100, 200))
        res = srv.post("/completion", {"prompt": prompt, "n_predict": 1})
        assert res.status_code == 200 and res.json()["tokens_evaluated"] == 1500
        log = srv.log_tail(200)
    assert "KV cache: 2 x 2048 tokens" in log and "MiB" in log


def test_busy_port_is_one_line_and_exit_code_1(stories_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = run("-m", str(stories_path), "--port", str(port))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [f"slotserve: cannot listen on 127.0.0.1:{port}: the port is in use"]


def test_listening_is_announced_after_the_bind(stories_path):
    with ServerProcess(stories_path) as srv:
        log = srv.log_tail(200)
    assert log.index(f"listening on http://127.0.0.1:{srv.port}") < log.index("loading ")


def test_unix_socket(stories_path, tmp_path):
    path = tmp_path / "slotserve.sock"
    srv = ServerProcess(stories_path, "--host", str(path))
    srv.client = httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://localhost", timeout=60)
    with srv:
        assert srv.post("/completion", {"prompt": "Once", "n_predict": 2}).json()["tokens_predicted"] == 2
        assert f"listening on unix:{path}" in srv.log_tail(100)
        second = run("-m", str(stories_path), "--host", str(path), "--port", str(free_port()))
        assert second.returncode == 1 and "another server is listening there" in second.stderr
    assert not path.exists()  # the socket file goes with the server


@pytest.fixture(scope="module")
def srv(stories_path):
    with ServerProcess(stories_path, "-c", "256", "-np", "1") as s:
        yield s


@pytest.mark.parametrize("method,path", [("POST", "/v1/embeddings"), ("POST", "/embedding"), ("POST", "/embeddings"),
                                         ("POST", "/rerank"), ("POST", "/v1/rerank"), ("POST", "/reranking"),
                                         ("POST", "/infill"), ("POST", "/props"), ("GET", "/lora-adapters"),
                                         ("POST", "/lora-adapters"), ("POST", "/v1/audio/transcriptions")])
def test_endpoints_slotserve_lacks_are_501_with_a_hint(srv, method, path):
    res = srv.client.request(method, path, json={"input": "hi"})
    assert res.status_code == 501
    error = res.json()["error"]
    assert error["type"] == "not_supported_error" and error["code"] == 501
    assert error["message"].startswith("slotserve does not support ")


@pytest.mark.skipif(not os.environ.get("LLAMA_SERVER"), reason="set LLAMA_SERVER to a llama-server binary to run")
@pytest.mark.parametrize("flags", [[], ["-np", "2"], ["-np", "4", "-kvu"], ["-c", "0", "-np", "3"],
                                   ["-c", "512", "-np", "2"], ["-c", "256", "-np", "4", "-kvu"]])
def test_slot_contexts_match_llama_server(stories_path, flags):
    """Optional cross-check with the reference binary: the same flags give the same slots and contexts.
    (-c N that is not a multiple of 256 x np differs: llama.cpp rounds each slot up to 256 tokens.)"""
    seen = []
    for binary in (None, os.environ["LLAMA_SERVER"]):
        with ServerProcess(stories_path, *flags, binary=binary) as srv:
            seen.append((srv.get("/props").json()["default_generation_settings"]["n_ctx"],
                         [s["n_ctx"] for s in srv.get("/slots").json()]))
    assert seen[0] == seen[1]


def test_progress_is_a_bar_on_a_terminal_and_a_line_per_quarter_elsewhere():
    code = "from slotserve.progress import load_progress\nshow = load_progress('m.gguf')\nfor i in range(101): show(i / 100)"
    argv = [sys.executable, "-c", code]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    plain = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60).stderr
    assert plain.splitlines() == [f"loading m.gguf: {p:3d}%" for p in (0, 25, 50, 75, 100)]
    pid, fd = pty.fork()
    if pid == 0:  # the child: stderr is the terminal, 120 columns wide (a new pty has 0)
        fcntl.ioctl(2, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        os.execve(argv[0], argv, env)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child is gone
            break
        if not chunk:
            break
        out += chunk
    os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert "\r" in text and "100/100" in text and "█" in text  # tqdm's bar, redrawn in place
