"""--host / --port: the listening sockets, bound before the server says it listens.

llama-server takes several addresses comma-separated, and a host ending in ".sock" is a UNIX socket path.
A socket that cannot be bound stops the start with one line (exit code 1), before anything is announced.
"""
from __future__ import annotations

import errno
import os
import socket
import stat


def listen(host: str, port: int) -> list[socket.socket]:
    hosts = [h.strip() for h in host.split(",") if h.strip()]
    sockets: list[socket.socket] = []
    try:
        for h in hosts:
            sockets.append(_unix(h) if h.endswith(".sock") else _tcp(h, port))
    except SystemExit:
        close(sockets)
        raise
    return sockets


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


def close(sockets: list[socket.socket]) -> None:
    """Close them; a UNIX socket's file goes too, so the next start finds the path free."""
    for sock in sockets:
        path = sock.getsockname() if sock.family == socket.AF_UNIX else None
        sock.close()
        if path and _is_socket(path):
            os.unlink(path)
