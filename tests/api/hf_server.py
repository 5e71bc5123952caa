"""A small Hugging Face Hub stand-in for -hf tests: a real HTTP server on loopback (HF_ENDPOINT points at it)
serving the routes huggingface_hub calls — the repository tree (GET /api/models/<repo>/tree/<rev>) and
file downloads (HEAD and GET /<repo>/resolve/<rev>/<path>, with Range for resumes).

    with HubServer({"org/repo": {"model-Q4_K_M.gguf": data}}) as hub:
        env = {"HF_ENDPOINT": hub.url}
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    def __init__(self, repos: dict[str, dict[str, bytes]], token: str | None = None, break_first_get: int = 0,
                 break_always: bool = False):
        """break_first_get: drop the first download's connection after that many bytes (every one's with
        break_always)."""
        self.repos, self.token = repos, token
        self.break_first_get, self.break_always = break_first_get, break_always
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers with lower-case names)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                self.body = body
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, path, {k.lower(): v for k, v in self.headers.items()}))
                if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._send(401, b'{"error": "Invalid credentials"}', {"X-Error-Code": "RepoNotFound"})
                for repo, files in hub.repos.items():
                    if path.startswith(f"/api/models/{repo}/tree/"):
                        tree = [{"type": "file", "path": p, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                                for p, d in files.items()]
                        return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
                    prefix = f"/{repo}/resolve/main/"
                    if path.startswith(prefix) and path[len(prefix):] in files:
                        return self._file(files[path[len(prefix):]], body)
                self._send(404, b'{"error": "Entry not found"}', {"X-Error-Code": "EntryNotFound"})

            def _file(self, data: bytes, body: bool):
                headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": COMMIT,
                           "Accept-Ranges": "bytes"}
                start = 0
                if self.headers.get("Range", "").startswith("bytes="):
                    start = int(self.headers["Range"][6:].split("-")[0])
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                if body and hub.break_first_get:  # send part of it, then drop the connection
                    cut = hub.break_first_get
                    hub.break_first_get = cut if hub.break_always else 0
                    self.send_response(206 if start else 200)
                    for k, v in {**headers, "Content-Length": str(len(data) - start)}.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data[start:start + cut])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self._send(206 if start else 200, data[start:], headers)

            def _send(self, status: int, data: bytes, headers: dict, length: int | None = None):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data) if length is None else length))
                self.end_headers()
                if data and self.body:
                    self.wfile.write(data)

        return Handler
