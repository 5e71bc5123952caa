"""How slotserve serves the page (plain HTTP, no browser): at / from the package, from --path DIR, not at
all with --no-webui; public like llama-server's UI assets; never in the way of the API and its JSON 404."""
import os
import re
import subprocess
import sys

import pytest
from .browsing import FLAGS, ServerProcess
from server import REPO, free_port

from slotserve.api.webui import PACKAGE_DIR

KEY = "k-123"


def assert_json_404(res, method, path):
    assert res.status_code == 404
    assert res.json()["error"] == {"code": 404, "message": f"no such endpoint: {method} {path}",
                                   "type": "not_found_error"}


@pytest.fixture(scope="module")
def keyed(stories_path):
    with ServerProcess(stories_path, *FLAGS, "--api-key", KEY) as srv:
        yield srv


def test_the_page_and_every_module_it_imports_are_served_without_the_key(keyed):
    res = keyed.get("/")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/html")
    assert "<title>slotserve</title>" in res.text
    assert res.headers["cache-control"] == "no-cache"
    modules = {"app.js"}
    for name in sorted(PACKAGE_DIR.glob("*.js")):
        modules |= set(re.findall(r'from "\./([\w.]+)"', name.read_text()))
    for name in sorted(modules) + ["style.css"]:
        res = keyed.get(f"/{name}")
        assert res.status_code == 200, name
        assert res.text == (PACKAGE_DIR / name).read_text()
        kind = "javascript" if name.endswith(".js") else "css"
        assert kind in res.headers["content-type"]  # module scripts load only with a script MIME type
    assert keyed.get("/props").status_code == 401  # the API keeps its key
    props = keyed.get("/props", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert props["ui"] is True


def test_unknown_paths_keep_the_api_json_404(keyed):
    auth = {"Authorization": f"Bearer {KEY}"}
    assert_json_404(keyed.get("/no-such-page", headers=auth), "GET", "/no-such-page")
    assert_json_404(keyed.post("/no-such-page", headers=auth), "POST", "/no-such-page")
    assert_json_404(keyed.post("/", headers=auth), "POST", "/")
    assert keyed.get("/no-such-page").status_code == 401  # not a file: the gate still asks for the key
    assert keyed.post("/health").status_code == 405  # a route with another method is still the API's
    for path in ("/../pyproject.toml", "/%2e%2e/api/webui.py", "/..%2fapi%2fwebui.py"):
        assert keyed.get(path, headers=auth).status_code == 404, path


def test_path_serves_another_directory_and_never_shadows_an_endpoint(stories_path, tmp_path):
    site = tmp_path / "site"
    (site / "sub").mkdir(parents=True)
    (site / "index.html").write_text("<p>my page</p>")
    (site / "sub" / "page.txt").write_text("deep")
    (site / "props").write_text("not the props")
    (site / "404.html").write_text("custom not found")
    with ServerProcess(stories_path, *FLAGS, "--path", str(site)) as srv:
        assert srv.get("/").text == "<p>my page</p>"
        assert srv.get("/sub/page.txt").text == "deep"
        assert srv.get("/props").json()["ui"] is True
        assert_json_404(srv.get("/missing"), "GET", "/missing")
        assert srv.get("/app.js").status_code == 404  # the package's page is not mixed in


def test_no_webui_turns_the_page_off(stories_path):
    with ServerProcess(stories_path, *FLAGS, "--no-webui") as srv:
        assert_json_404(srv.get("/"), "GET", "/")
        assert_json_404(srv.get("/app.js"), "GET", "/app.js")
        assert srv.get("/props").json()["ui"] is False


def test_a_missing_path_directory_stops_the_server_with_its_reason(stories_path, tmp_path):
    # a free port: the server binds before it checks --path, and 8080 may be another server's
    run = subprocess.run([sys.executable, "-m", "slotserve", "-m", str(stories_path), "--port", str(free_port()),
                          "--path", str(tmp_path / "no")],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert run.returncode != 0
    assert f"--path {tmp_path / 'no'}: no such directory" in run.stderr
