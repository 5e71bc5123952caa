"""The web page: static files served at `/` in front of the API, as llama-server serves its UI.

A request reaches these files only when it is a GET or HEAD that no API route matches, so an unknown path
still gets the API's JSON 404 and a file in a --path directory can never shadow an endpoint. The files are
public and served while the model loads (llama-server exempts its UI assets from the API key too): the
page asks for the key itself and shows the loading state. The page talks only to the public endpoints.
"""
from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.staticfiles import StaticFiles

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "webui"


class WebUi:
    """ASGI middleware: a static file when the path names one and no route claims it, else the app."""

    def __init__(self, app, directory: Path, routes):
        self.app, self.routes = app, routes
        self.files = StaticFiles(directory=directory, html=True)

    def is_api(self, scope) -> bool:
        return any(route.matches(scope)[0] != Match.NONE for route in self.routes)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and not self.is_api(scope):
            try:
                response = await self.files.get_response(self.files.get_path(scope), scope)
            except HTTPException:
                response = None  # no such file: the API answers with its JSON 404
            # a 404.html of a --path directory would answer every unknown path: the API's 404 stays JSON
            if response is not None and response.status_code != 404:
                # revalidate every time (ETag makes that a 304): an upgraded server never runs a stale page
                response.headers["Cache-Control"] = "no-cache"
                return await response(scope, receive, send)
        await self.app(scope, receive, send)
