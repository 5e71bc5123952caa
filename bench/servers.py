"""Start, wait for and stop the servers under test; describe the machine they ran on.

Both servers are separate processes started from the same flags, so the comparison includes everything
a client sees: HTTP, JSON, scheduling. A server is always stopped (terminate, then kill) when its `with`
block ends, whatever happened inside it, so a failed benchmark never leaves a 500 MB process behind.
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HEALTH_TIMEOUT_S = 600  # slotserve dequantizes and hashes the whole file before /health says 200


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    """A loopback port nobody listens on now (the OS picks it; the tiny race until the server binds is fine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slotserve_command() -> list[str]:
    """The console script next to this interpreter (the venv's), else `python -m slotserve`."""
    script = Path(sys.executable).with_name("slotserve")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "slotserve"]


class Server:
    """One server process on a free loopback port. Use as a context manager."""

    def __init__(self, name: str, command: list[str], model: Path, flags: list[str]):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [*command, "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port), *flags]
        self.proc: subprocess.Popen | None = None
        self.ready_s: float | None = None  # from the start to the first GET /health 200
        self.log_path = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
        self.client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(900.0, connect=10.0))

    def __enter__(self) -> "Server":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            # a session of its own: ^C in the terminal reaches us, and we stop the server ourselves
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        t0 = time.monotonic()
        deadline = t0 + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited with code {self.proc.returncode} before it was ready:\n"
                                  f"  {' '.join(self.argv)}\n{self.log_tail()}")
            try:
                # 503 while loading; only 200 means the model is in memory and slots are idle
                if self.client.get("/health", timeout=5.0).status_code == 200:
                    self.ready_s = time.monotonic() - t0
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise ServerError(f"{self.name} did not answer GET /health with 200 within {HEALTH_TIMEOUT_S} s\n"
                          f"{self.log_tail()}")

    def stop(self) -> None:
        self.client.close()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("  | " + line for line in lines[-n:])

    def post(self, path: str, body: dict) -> tuple[dict, float]:
        """POST JSON; return (answer, wall ms). A non-200 answer raises with the request and the reply."""
        t0 = time.perf_counter()
        r = self.client.post(path, json=body)
        wall_ms = (time.perf_counter() - t0) * 1e3
        if r.status_code != 200:
            raise ServerError(f"{self.name}: POST {path} {_short(body)} -> HTTP {r.status_code}: {r.text[:500]}")
        try:
            return r.json(), wall_ms
        except ValueError:
            raise ServerError(f"{self.name}: POST {path} {_short(body)} -> not JSON: {r.text[:300]!r}") from None


def _short(body: dict) -> str:
    """The request as it was sent, with long token lists elided, for error messages people can replay."""
    shown = {k: (f"<{len(v)} tokens>" if isinstance(v, list) and len(v) > 16 else v) for k, v in body.items()}
    return str(shown)


def resident_mb(pid: int) -> float | None:
    """The process's resident set (VmRSS): its own pages and the mapped file pages it touched."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class ForeignCpu:
    """How much CPU processes other than the servers under test and this script used while a measurement
    ran, in cores (0.5 = half a core). On a 2-core machine shared with test suites, a number well above
    0 means the figures next to it are pessimistic; it goes into the report rather than being hidden."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.t0, self.busy0, self.ours0 = time.monotonic(), _busy_jiffies(), self._ours()

    def _ours(self) -> int:
        own = os.times()
        total = int((own.user + own.system) * _HZ)
        for pid in self.pids:
            try:  # utime and stime are fields 14 and 15; the command name may hold spaces, so split after ')'
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                pass
        return total

    def cores(self) -> float:
        elapsed = time.monotonic() - self.t0
        foreign = (_busy_jiffies() - self.busy0) - (self._ours() - self.ours0)
        return max(0.0, foreign / _HZ / elapsed) if elapsed > 0 else 0.0


def wait_until_quiet(pids: list[int], threshold: float = 0.15, timeout_s: float = 60.0) -> float:
    """Wait (in 1 s windows, at most timeout_s) until other processes use under `threshold` cores: the
    machine is shared with test suites that come and go. Returns the last window's foreign load."""
    deadline = time.monotonic() + timeout_s
    while True:
        probe = ForeignCpu(pids)
        time.sleep(1.0)
        load = probe.cores()
        if load < threshold or time.monotonic() > deadline:
            return load


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_jiffies() -> int:
    """CPU time spent by everything, from the first line of /proc/stat (all but idle and iowait)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return 0
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return user + nice + system + irq + softirq + steal


def llama_server_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
        return " ".join(line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip())
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _numpy_blas() -> str:
    """The BLAS numpy was built against, and (from threadpoolctl, when installed) the one loaded at run time."""
    import numpy as np
    parts = []
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        parts.append(f"{blas.get('name', '?')} {blas.get('version', '')}".strip())
    except Exception:  # older numpy: show_config only prints
        pass
    try:
        from threadpoolctl import threadpool_info
        for pool in threadpool_info():
            if pool.get("user_api") == "blas":
                parts.append(f"runtime {pool.get('internal_api')} {pool.get('version')} "
                             f"({pool.get('num_threads')} threads, {pool.get('architecture', '?')} kernels)")
    except ImportError:
        pass
    return "; ".join(parts) or "unknown"


def machine_info(llama_binary: str | None) -> dict:
    import numpy as np
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": _numpy_blas(),
        "llama_server": llama_server_version(llama_binary) if llama_binary else None,
    }
