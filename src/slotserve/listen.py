"""--host / --port: the listening sockets, bound before the server says it listens.

llama-server takes several addresses comma-separated, and a host ending in ".sock" is a UNIX socket path.
A socket that cannot be bound stops the start with one line (exit code 1), before anything is announced.
"""
from __future__ import annotations

import errno
import os
import socket
import stat


class Listeners:
    """The bound sockets, and the UNIX socket files to remove when the server stops (the server closes
    the sockets themselves; their names cannot be asked for after that)."""

    def __init__(self):
        self.sockets: list[socket.socket] = []
        self.paths: list[str] = []

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        for path in self.paths:
            if _is_socket(path):
                os.unlink(path)


def listen(host: str, port: int) -> Listeners:
    listeners = Listeners()
    try:
        for h in (h.strip() for h in host.split(",") if h.strip()):
            if h.endswith(".sock"):
                listeners.sockets.append(_unix(h))
                listeners.paths.append(h)
            else:
                listeners.sockets.append(_tcp(h, port))
    except SystemExit:
        listeners.close()
        raise
    return listeners


def _tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # ::1 next to 127.0.0.1 must not clash
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise SystemExit(f"slotserve: cannot listen on {host}:{port}: {reason}") from None
    return sock


def _unix(path: str) -> socket.socket:
    if _is_socket(path):
        with socket.socket(socket.AF_UNIX) as probe:  # a socket file nobody answers on is left from a crash
            if probe.connect_ex(path) == 0:
                raise SystemExit(f"slotserve: cannot listen on {path}: another server is listening there")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise SystemExit(f"slotserve: cannot listen on {path}: {exc.strerror or exc}") from None
    return sock


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def address(sock: socket.socket) -> str:
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"
