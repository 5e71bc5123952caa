"""The FastAPI application: llama-server's HTTP API over a Service.

Routes are thin: they parse a request, hand tasks to the engine and write out what comes back.
The app holds no model state of its own; `service` may still be loading when this is called.
"""
from __future__ import annotations

from fastapi import FastAPI

from ..service import Service
from . import errors, routes_completion, routes_misc, routes_slots, routes_unsupported, vertex, webui
from .gate import Gate
from .state import ApiState
from .wake import Wake


def create_app(service: Service, vertex_ai: vertex.VertexConfig | None = None) -> FastAPI:
    """vertex_ai: serve Vertex AI's predict route too (AIP_MODE=PREDICTION; see api/vertex.py)."""
    # /openapi.json and /docs describe the request schema (api/schema.py); llama-server has no routes there
    app = FastAPI(title="slotserve", description="llama-server's HTTP API, served by a pure-Python engine",
                  docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")
    app.state.api = ApiState(service)
    errors.install(app)
    routers = [routes_misc.router, routes_completion.router, routes_slots.router, routes_unsupported.router]
    for router in routers:
        app.include_router(router)
    if vertex_ai is not None:  # its instances name the other routes
        vertex.install(app, vertex_ai, routers)
    app.add_middleware(Wake, service=service)  # inside the gate: a refused request wakes nothing
    app.add_middleware(Gate, service=service)
    if service.config.webui:  # outside the gate: the page loads without the key and while the model loads
        app.add_middleware(webui.WebUi, directory=service.config.webui_path or webui.PACKAGE_DIR,
                           routes=app.router.routes)
    return app
