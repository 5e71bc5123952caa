"""A real slotserve process for HTTP tests: `python -m slotserve` on a free loopback port.

    with ServerProcess(stories_path, "-c", "512", "-np", "2") as srv:
        srv.post("/completion", {"prompt": "Hi"}).json()

Any test file can use it (`from server import ServerProcess` inside tests/api; elsewhere put this
directory on sys.path). The server's output goes to a log file whose tail is shown when it fails.
"""
from __future__ import annotations

import atexit
import functools
import json
import os
import socket
import subprocess
import sys
import shutil
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]

# llama.cpp's own server-test preset for stories260K (ServerPreset.tinyllama2), greedy
TINYLLAMA2 = ("-c", "512", "-np", "2", "-b", "32", "-n", "64", "--temp", "0", "--seed", "42")


@functools.cache
def _weight_cache_dir() -> str:
    """One weight-cache directory for the whole test run, removed when it ends."""
    path = tempfile.mkdtemp(prefix="slotserve-test-weights-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    pass


class ServerProcess:
    """A slotserve process on a free port; with `binary`, that llama-server binary instead (same flags)."""

    def __init__(self, model: Path | str | None, *args: str, env: dict | None = None, start_timeout: float = 60.0,
                 preexec_fn=None, binary: str | None = None):
        self.model, self.args = (Path(model) if model else None), [str(a) for a in args]
        self.binary, self.name = binary, Path(binary).name if binary else "slotserve"
        self.host, self.port = "127.0.0.1", free_port()
        self.env, self.start_timeout, self.preexec_fn = env, start_timeout, preexec_fn
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="slotserve-test-", suffix=".log", delete=False)
        self.client = httpx.Client(base_url=self.base_url, timeout=60.0)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "ServerProcess":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
        if not self.binary:  # the weight cache of a test run is its own, not the user's ~/.cache
            env.setdefault("SLOTSERVE_WEIGHT_CACHE_DIR", _weight_cache_dir())
        env.update(self.env or {})
        model = ["-m", str(self.model)] if self.model else []  # None: the CLI picks (or -hf fetches) it
        program = [self.binary] if self.binary else [sys.executable, "-m", "slotserve"]
        cmd = [*program, *model, "--host", self.host, "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=str(REPO), preexec_fn=self.preexec_fn)
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.client.get("/health", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise ServerError(f"{self.name} did not become healthy in {self.start_timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        self.client.close()
        self._log.close()
        os.unlink(self._log.name)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def log_tail(self, n: int = 40) -> str:
        self._log.flush()
        lines = Path(self._log.name).read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ---- requests --------------------------------------------------------------------------------
    def get(self, path: str, **kw) -> httpx.Response:
        return self.client.get(path, **kw)

    def post(self, path: str, body=None, **kw) -> httpx.Response:
        if body is not None:
            kw["json"] = body
        return self.client.post(path, **kw)

    def stream(self, path: str, body: dict, headers: dict | None = None) -> list:
        """POST with SSE: the decoded `data:` events ("[DONE]" kept as the string). Raises on non-200."""
        events = []
        with self.client.stream("POST", path, json=body, headers=headers) as res:
            if res.status_code != 200:
                res.read()
                raise ServerError(f"{res.status_code}: {res.text}")
            assert res.headers["content-type"].startswith("text/event-stream")
            for line in res.iter_lines():
                if line.startswith("data: "):
                    data = line[len("data: "):]
                    events.append(data if data == "[DONE]" else json.loads(data))
        return events


def assert_error(res: httpx.Response, status: int, err_type: str, *words: str) -> dict:
    """The answer is llama-server's error shape with this status and type, its message holding every word."""
    assert res.status_code == status, res.text
    err = res.json()["error"]
    assert err["code"] == status and err["type"] == err_type
    for w in words:
        assert w in err["message"], err["message"]
    return err
