"""What the routes share: the Service, the metrics window, the chat template. Read-only toward the engine."""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata

from starlette.requests import Request

from ..engine.scheduler import Engine
from ..model.loader import LoadedModel
from ..service import Service
from .chat import ChatTemplate
from .errors import ApiError
from .metrics import Metrics
from .schema import ServerDefaults


def _build_info() -> str:
    # llama-server's system_fingerprint is "b<build>-<commit>"; clients check only the leading "b"
    try:
        version = metadata.version("slotserve")
    except metadata.PackageNotFoundError:
        version = "dev"
    return f"b0-slotserve-{version}"


BUILD_INFO = _build_info()


@dataclass
class ApiState:
    service: Service
    metrics: Metrics = field(default_factory=Metrics)
    _template: ChatTemplate | None = None
    _defaults: ServerDefaults | None = None

    @property
    def model(self) -> LoadedModel:
        if self.service.model is None:
            raise ApiError("unavailable", "Loading model")
        return self.service.model

    @property
    def engine(self) -> Engine:
        if self.service.engine is None:
            raise ApiError("unavailable", "Loading model")
        return self.service.engine

    @property
    def model_name(self) -> str:
        return self.service.config.model_alias

    @property
    def defaults(self) -> ServerDefaults:
        """What the command line decides for requests that do not say: the schema applies it, once."""
        if self._defaults is None:  # n_parallel is known once the service exists; it never changes after
            cfg = self.service.config
            self._defaults = ServerDefaults(sampling=cfg.sampling, n_predict=cfg.n_predict,
                                            n_parallel=self.service.n_parallel, verbose=cfg.verbose,
                                            sse_ping_interval=cfg.sse_ping_interval)
        return self._defaults

    @property
    def chat_template(self) -> ChatTemplate:
        if self._template is None:  # built on first use: the model is loaded by then
            model = self.model
            self._template = ChatTemplate.for_model(model.chat_template, self.service.config.chat_template,
                                                    model.tokenizer)
        return self._template


def get_state(request: Request) -> ApiState:
    return request.app.state.api
