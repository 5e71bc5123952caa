"""The FastAPI application: llama-server's HTTP API over a Service.

Routes are thin: they parse a request, hand tasks to the engine and write out what comes back.
The app holds no model state of its own; `service` may still be loading when this is called.
"""
from __future__ import annotations

from fastapi import FastAPI

from ..service import Service
from . import errors, routes_completion, routes_misc, routes_slots, routes_unsupported
from .gate import Gate
from .state import ApiState


def create_app(service: Service) -> FastAPI:
    # no generated docs: /docs and /openapi.json would be endpoints llama-server does not have
    app = FastAPI(title="slotserve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.api = ApiState(service)
    errors.install(app)
    app.include_router(routes_misc.router)
    app.include_router(routes_completion.router)
    app.include_router(routes_slots.router)
    app.include_router(routes_unsupported.router)
    app.add_middleware(Gate, service=service)
    return app
