"""`slotserve`: llama-server's command line, mapped onto ServerConfig, then uvicorn.

numpy is imported only after the flags are read, so -t/--threads can still size BLAS's thread pool.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path

from .cli_options import UNSUPPORTED, build_parser, env_args, given, used
from .listen import address, listen
from .progress import load_progress

log = logging.getLogger("slotserve")


# options that choose the model or are checked here; the rest are ServerConfig fields
COMMAND_LINE_ONLY = {"model", "hf_repo", "hf_file", "offline", "chat_template_file", "kv_type_v",
                     "ray_replicas", "ray_address", "ray_routing", "ray_replica_cpus"}
UNSUPPORTED_FEATURE = {flag: feature for flags, (_, feature) in UNSUPPORTED.items() for flag in flags.split()}
NO_MODEL = ("slotserve: no model given: pass -m model.gguf, or fetch a small one to try:\n"
            "  slotserve -hf ggml-org/models --hf-file tinyllamas/stories260K.gguf")


def _resolve_model(values: dict) -> Path:
    if values.get("hf_repo"):
        from .hub import fetch_model
        return fetch_model(values["hf_repo"], values.get("hf_file"), offline=bool(values.get("offline")))
    if values.get("model"):
        return Path(values["model"])
    # a source checkout's models/ (`make model` puts stories260K there), from here or from the package's tree
    for candidate in (Path("models/stories260K.gguf"), Path(__file__).resolve().parents[2] / "models/stories260K.gguf"):
        if candidate.is_file():
            return candidate
    raise SystemExit(NO_MODEL)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(env_args(os.environ) + (sys.argv[1:] if argv is None else argv))
    values = given(args)
    logging.basicConfig(level=logging.DEBUG if values.get("verbose") else logging.INFO,
                        format="%(asctime)s %(levelname).1s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not values.get("verbose"):  # huggingface_hub's HTTP client logs each request at INFO
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if values.get("threads", 0) > 0:  # must happen before numpy starts its BLAS thread pool
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(values["threads"])
    for name in used(args, "unsupported"):
        raise SystemExit(f"slotserve: {name}: not supported by slotserve ({UNSUPPORTED_FEATURE[name]})")
    for name in used(args, "no_effect"):
        log.info("ignoring %s: it has no effect in slotserve (CPU numpy engine)", name)
    chat_template = _chat_template(values)

    import uvicorn

    from .api.app import create_app
    from .api.vertex import VertexConfig
    from .model.loader import ModelLoadError
    from .service import ServerConfig, Service

    port = values.get("port", ServerConfig.port)
    vertex_ai = VertexConfig.from_env()  # Vertex AI's container contract: its port wins, as in llama-server
    if vertex_ai is not None and vertex_ai.port != port:
        log.warning("Vertex AI (AIP_MODE=PREDICTION): listening on AIP_HTTP_PORT %d instead of port %d",
                    vertex_ai.port, port)
        port = vertex_ai.port
    # bound before anything is announced or downloaded: a busy port stops here, in one line
    listeners = listen(values.get("host", ServerConfig.host), port)
    try:
        model_path = _resolve_model(values)
        config = server_config(values, model_path, chat_template)
        if config.cache_disk is not None:  # here, so that a bad directory stops the start in one line
            try:
                config.cache_disk.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SystemExit(f"slotserve: --cache-disk {config.cache_disk}: {exc.strerror}") from None
        service = Service(config)
    except BaseException as exc:
        listeners.close()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            raise
        raise SystemExit(f"slotserve: {exc}") from None  # hub errors: one line, no traceback
    if values.get("ray_replicas") is not None:  # scale-out: the optional extra, imported only here
        from .cluster.server import serve_cluster
        return serve_cluster(config, values, listeners, _run)
    # h11, even when httptools is installed: httptools' protocol lowercases header names, and clients that look
    # llama-server's "Access-Control-Allow-Origin" up case-sensitively (llama.cpp's own tests) then miss it
    server = uvicorn.Server(uvicorn.Config(create_app(service, vertex_ai), http="h11",
                                           log_level="info" if config.verbose else "warning"))
    failure: list[ModelLoadError] = []

    def load() -> None:
        try:
            service.load(progress=load_progress(model_path.name))
        except ModelLoadError as exc:
            failure.append(exc)
            server.should_exit = True  # nothing to serve: stop, and say why below
            return
        log.info("model loaded: %s (%.1fM parameters, %d slots, n_ctx_slot %d)", service.model.name,
                 service.model.n_params / 1e6, service.n_parallel, service.n_ctx_slot)

    # clients see /health answer 503 "Loading model" until the model is ready
    for sock in listeners.sockets:
        log.info("listening on %s", address(sock))
    threading.Thread(target=load, name="slotserve-load", daemon=True).start()
    _run(server, listeners, service.close)
    if failure:
        raise SystemExit(f"slotserve: {failure[0]}")


def _run(server, listeners, close) -> None:
    """Serve until stopped, then `close` what serves behind the app (the engine, or the cluster)."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # uvicorn shuts down gracefully, then raises the signal
        signal.signal(sig, _stop)  # again: here that ends server.run(), so the clean-up below runs
    try:
        server.run(sockets=listeners.sockets)
    except _Stopped:
        pass
    finally:
        close()
        listeners.close()


class _Stopped(Exception):
    pass


def _stop(signum, frame) -> None:
    raise _Stopped


def _chat_template(values: dict) -> str | None:
    chat_template = values.get("chat_template")
    if values.get("chat_template_file"):
        if chat_template:
            raise SystemExit("slotserve: give --chat-template or --chat-template-file, not both")
        try:
            return Path(values["chat_template_file"]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SystemExit(f"slotserve: cannot read --chat-template-file: {exc}") from None
    if chat_template and re.fullmatch(r"[\w.-]+", chat_template):
        from .api.chat import template_names  # one bare word names a built-in format; an unknown one must not
        if chat_template not in template_names():  # reach the model as its prompt text (llama-server's would)
            raise SystemExit(f"slotserve: --chat-template {chat_template!r}: slotserve's built-in templates are "
                             f"{', '.join(template_names())}; for others pass the Jinja template itself, or a file "
                             "with --chat-template-file")
    return chat_template


def server_config(values: dict, model_path: Path, chat_template: str | None):
    """ServerConfig from the options given; the others keep the defaults their dataclasses declare."""
    from .model.sampling import SamplingParams
    from .service import CorsPolicy, ServerConfig

    flat, nested = {}, {"sampling": {}, "cors": {}}
    for field, value in values.items():
        head, _, tail = field.partition(".")
        if tail:
            nested[head][tail] = value
        elif field in ("alias", "tags", "api_keys"):
            flat[field] = tuple(v for v in value.split(",") if v)
        elif field not in COMMAND_LINE_ONLY:
            flat[field] = Path(value) if field in ("slot_save_path", "webui_path", "cache_disk", "draft_model_path") \
                else value
    kv_type_v = values.get("kv_type_v", ServerConfig.kv_type)
    if flat.get("kv_type", ServerConfig.kv_type) != kv_type_v:
        raise SystemExit("slotserve: -ctk and -ctv must be the same type (f16 or f32)")
    if flat.get("webui", True) and flat.get("webui_path") and not flat["webui_path"].is_dir():
        raise SystemExit(f"slotserve: --path {values['webui_path']}: no such directory")
    return ServerConfig(model_path=model_path, model_source=values.get("hf_repo") or values.get("model") or str(model_path),
                        chat_template=chat_template, sampling=SamplingParams(**nested["sampling"]),
                        cors=CorsPolicy(**nested["cors"]), **{k: v for k, v in flat.items() if k != "chat_template"})
