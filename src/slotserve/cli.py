"""`slotserve`: llama-server's command line, mapped onto ServerConfig, then uvicorn.

numpy is imported only after the flags are read, so -t/--threads can still size BLAS's thread pool.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
import threading
from pathlib import Path

log = logging.getLogger("slotserve")

# llama-server flags with no meaning for a CPU numpy engine: accepted so existing command lines work.
IGNORED_WITH_VALUE = ["-ngl", "--gpu-layers", "--n-gpu-layers", "-sm", "--split-mode", "-ts", "--tensor-split",
                      "-mg", "--main-gpu", "--numa", "-dev", "--device", "--rope-scaling", "--cache-reuse",
                      "-tb", "--threads-batch", "--poll", "--prio", "-C", "--cpu-mask", "--timeout", "--threads-http",
                      "-to", "--reasoning-format", "--reasoning-budget", "--chat-template-kwargs", "-dt",
                      "--defrag-thold", "--keep", "--n-keep", "-cram", "--cache-ram", "--sleep-idle-seconds",
                      "--reasoning"]
IGNORED_SWITCHES = ["--jinja", "--no-jinja", "-cb", "--cont-batching", "-nocb", "--no-cont-batching", "--mlock",
                    "--no-mmap", "--mmap", "--no-warmup", "--warmup", "--no-webui", "--webui", "--embedding",
                    "--embeddings", "--log-disable", "--no-perf", "--perf", "--check-tensors", "-nkvo",
                    "--no-kv-offload", "--cont-batching-off", "--props", "-e", "--escape", "--no-escape",
                    "--log-colors", "--cache-idle-slots", "--no-cache-idle-slots", "-bs", "--backend-sampling",
                    "--backend_sampling"]


# llama-server's environment variables (common/arg.cpp set_env), read as if their flag came first on the
# command line, so the command line still wins. Switches: on/enabled/true/1 turn them on, off/disabled/
# false/0 off, and LLAMA_ARG_NO_<NAME> turns off one that has a negative flag.
ENV_FLAGS = {"LLAMA_ARG_MODEL": "-m", "LLAMA_ARG_HF_REPO": "-hf", "LLAMA_ARG_HF_FILE": "-hff",
             "LLAMA_ARG_HOST": "--host", "LLAMA_ARG_PORT": "--port", "LLAMA_ARG_CTX_SIZE": "-c",
             "LLAMA_ARG_N_PARALLEL": "-np", "LLAMA_ARG_BATCH": "-b", "LLAMA_ARG_UBATCH": "-ub",
             "LLAMA_ARG_N_PREDICT": "-n", "LLAMA_ARG_THREADS": "-t", "LLAMA_ARG_TEMPERATURE": "--temp",
             "LLAMA_ARG_TOP_K": "--top-k", "LLAMA_ARG_TOP_P": "--top-p", "LLAMA_ARG_MIN_P": "--min-p",
             "LLAMA_ARG_REPEAT_PENALTY": "--repeat-penalty", "LLAMA_ARG_CACHE_TYPE_K": "-ctk",
             "LLAMA_ARG_CACHE_TYPE_V": "-ctv", "LLAMA_ARG_ALIAS": "-a", "LLAMA_ARG_TAGS": "--tags",
             "LLAMA_ARG_CHAT_TEMPLATE": "--chat-template", "LLAMA_ARG_CHAT_TEMPLATE_FILE": "--chat-template-file",
             "LLAMA_ARG_CORS_ORIGINS": "--cors-origins", "LLAMA_ARG_CORS_METHODS": "--cors-methods",
             "LLAMA_ARG_CORS_HEADERS": "--cors-headers", "LLAMA_ARG_SSE_PING_INTERVAL": "--sse-ping-interval"}
ENV_SWITCHES = {"LLAMA_ARG_KV_UNIFIED": ("--kv-unified", "--no-kv-unified"),
                "LLAMA_ARG_CONTEXT_SHIFT": ("--context-shift", "--no-context-shift"),
                "LLAMA_ARG_CORS_CREDENTIALS": ("--cors-credentials", "--no-cors-credentials"),
                "LLAMA_ARG_ENDPOINT_SLOTS": ("--slots", "--no-slots"),
                "LLAMA_ARG_ENDPOINT_METRICS": ("--metrics", None), "LLAMA_ARG_OFFLINE": ("--offline", None)}
TRUTHY, FALSEY = ("on", "enabled", "true", "1"), ("off", "disabled", "false", "0")


def env_args(environ) -> list[str]:
    """The command-line arguments llama-server's environment variables stand for."""
    out = []
    for name, flag in ENV_FLAGS.items():
        if environ.get(name) is not None:
            out += [flag, environ[name]]
    for name, (on, off) in ENV_SWITCHES.items():
        negated = off and environ.get(name.replace("LLAMA_ARG_", "LLAMA_ARG_NO_")) is not None
        value = "0" if negated else environ.get(name)
        if value is None:
            continue
        if value not in TRUTHY + FALSEY:
            raise SystemExit(f"slotserve: {name}={value!r}: expected one of {', '.join(TRUTHY + FALSEY)}")
        flag = on if value in TRUTHY else off
        if flag:
            out.append(flag)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slotserve", description="A pure-Python LLaMA server that speaks llama-server's HTTP API.",
        allow_abbrev=False)
    a = p.add_argument
    a("-m", "--model", help="path to a GGUF model (default: models/stories260K.gguf when present)")
    a("-hf", "-hfr", "--hf-repo", dest="hf_repo", help="Hugging Face repository <user>/<model> to fetch the model from")
    a("-hff", "--hf-file", dest="hf_file", help="file in the --hf-repo repository")
    a("--offline", action="store_true", help="never touch the network: use only the download cache")
    a("--host", default="127.0.0.1")
    a("--port", type=int, default=8080)
    a("-c", "--ctx-size", dest="ctx_size", type=int, default=0, help="context size (0 = from the model)")
    a("-np", "--parallel", type=int, default=-1,
      help="number of slots (-1 = auto: 4 slots, each the whole context long; N: each gets ctx-size / N)")
    a("-b", "--batch-size", dest="batch_size", type=int, default=2048)
    a("-ub", "--ubatch-size", dest="ubatch_size", type=int, default=512)
    a("-n", "--n-predict", "--predict", dest="n_predict", type=int, default=-1)
    a("--temp", type=float, default=0.8)
    a("-s", "--seed", type=int, default=-1)
    a("--top-k", dest="top_k", type=int, default=40)
    a("--top-p", dest="top_p", type=float, default=0.95)
    a("--min-p", dest="min_p", type=float, default=0.05)
    a("--repeat-penalty", dest="repeat_penalty", type=float, default=1.0)
    a("--repeat-last-n", dest="repeat_last_n", type=int, default=64)
    a("-t", "--threads", type=int, default=-1, help="BLAS threads (-1 = all cores)")
    a("-a", "--alias", help="model name(s) shown by the API, comma-separated")
    a("--api-key", dest="api_key", help="API key(s), comma-separated; also $LLAMA_API_KEY")
    a("--metrics", action="store_true", help="enable the Prometheus /metrics endpoint")
    a("--slots", dest="slots", action="store_true", default=True, help="expose GET /slots (default)")
    a("--no-slots", dest="slots", action="store_false")
    a("--slot-save-path", dest="slot_save_path", help="directory for slot save/restore files")
    a("-ctk", "--cache-type-k", dest="cache_type_k", default="f16", choices=["f16", "f32"])
    a("-ctv", "--cache-type-v", dest="cache_type_v", default="f16", choices=["f16", "f32"])
    a("--context-shift", dest="context_shift", action="store_true")
    a("--no-context-shift", dest="context_shift", action="store_false")
    a("--sse-ping-interval", dest="sse_ping_interval", type=float, default=30.0,
      help="seconds of silence in a stream before an SSE ping comment (-1 = never)")
    a("-kvu", "--kv-unified", dest="kv_unified", action="store_true",
      help="every slot may use the whole context (each gets arrays of all of it)")
    a("-no-kvu", "--no-kv-unified", dest="kv_unified", action="store_false")
    a("-sps", "--slot-prompt-similarity", dest="slot_prompt_similarity", type=float, default=0.1)
    a("--chat-template", dest="chat_template", help="Jinja chat template overriding the model's")
    a("--chat-template-file", dest="chat_template_file", help="a file holding such a template")
    a("--tags", help="model tags shown by /v1/models, comma-separated")
    a("--cors-origins", dest="cors_origins", default="*",
      help="allowed CORS origins: * (echo any Origin), localhost (echo only local origins) or a literal value")
    a("--cors-methods", dest="cors_methods", default="GET, POST, DELETE, OPTIONS")
    a("--cors-headers", dest="cors_headers", default="*")
    a("--cors-credentials", dest="cors_credentials", action="store_true", default=True)
    a("--no-cors-credentials", dest="cors_credentials", action="store_false")
    a("-v", "--verbose", "--log-verbose", dest="verbose", action="store_true")
    a("-fa", "--flash-attn", dest="flash_attn", nargs="?", const="on", help=argparse.SUPPRESS)
    for flag in IGNORED_WITH_VALUE:
        a(flag, dest=f"ignored_{flag.strip('-')}", help=argparse.SUPPRESS)
    for flag in IGNORED_SWITCHES:
        a(flag, dest=f"ignored_{flag.strip('-')}", action="store_true", help=argparse.SUPPRESS)
    # slotserve's own: the disk cache of widened weights (model/weight_cache.py)
    a("--no-weight-cache", dest="weight_cache", action="store_false",
      help="widen the GGUF's weights in memory on every start instead of mapping a cached float32 copy")
    a("--weight-cache-limit", dest="weight_cache_limit", type=float, default=32.0, metavar="GB",
      help="total size of the weight cache directory; least recently used entries go first (default: 32)")
    return p


def _ignored_flags(args: argparse.Namespace) -> list[str]:
    """The ignored flags given, spelled as on the command line."""
    given = {k for k, v in vars(args).items() if k.startswith("ignored_") and v not in (None, False)}
    flags = [f for f in IGNORED_WITH_VALUE + IGNORED_SWITCHES if f"ignored_{f.strip('-')}" in given]
    return flags + (["--flash-attn"] if args.flash_attn is not None else [])


def _resolve_model(args: argparse.Namespace) -> Path:
    if args.hf_repo:
        from .hub import fetch_model
        return fetch_model(args.hf_repo, args.hf_file, offline=args.offline)
    if args.model:
        return Path(args.model)
    for candidate in (Path("models/stories260K.gguf"), Path(__file__).resolve().parents[2] / "models/stories260K.gguf"):
        if candidate.is_file():
            return candidate
    raise SystemExit("slotserve: no model given: pass -m model.gguf (or run `make model` for models/stories260K.gguf)")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(env_args(os.environ) + (sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname).1s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads > 0:  # must happen before numpy starts its BLAS thread pool
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    for name in _ignored_flags(args):
        log.info("ignoring %s: it has no effect in slotserve (CPU numpy engine)", name)
    if args.cache_type_k != args.cache_type_v:
        raise SystemExit("slotserve: -ctk and -ctv must be the same type (f16 or f32)")
    chat_template = args.chat_template
    if args.chat_template_file:
        if chat_template:
            raise SystemExit("slotserve: give --chat-template or --chat-template-file, not both")
        try:
            chat_template = Path(args.chat_template_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SystemExit(f"slotserve: cannot read --chat-template-file: {exc}") from None
    elif chat_template and re.fullmatch(r"[\w.-]+", chat_template):
        from .api.chat import template_names  # one bare word names a built-in format; an unknown one must not
        if chat_template not in template_names():  # reach the model as its prompt text (llama-server's would)
            raise SystemExit(f"slotserve: --chat-template {chat_template!r}: slotserve's built-in templates are "
                             f"{', '.join(template_names())}; for others pass the Jinja template itself, or a file "
                             "with --chat-template-file")

    try:
        model_path = _resolve_model(args)
    except Exception as exc:  # hub errors: one line, no traceback
        raise SystemExit(f"slotserve: {exc}") from None

    import uvicorn

    from .api.app import create_app
    from .model.loader import ModelLoadError
    from .model.sampling import SamplingParams
    from .service import CorsPolicy, ServerConfig, Service

    keys = args.api_key or os.environ.get("LLAMA_API_KEY", "")
    config = ServerConfig(
        model_path=model_path, host=args.host, port=args.port, n_ctx=args.ctx_size, n_parallel=args.parallel,
        n_batch=args.batch_size, n_ubatch=args.ubatch_size, n_predict=args.n_predict,
        sampling=SamplingParams(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                                repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n, seed=args.seed),
        threads=args.threads, alias=tuple(a for a in (args.alias or "").split(",") if a),
        api_keys=tuple(k for k in keys.split(",") if k), metrics=args.metrics, slots_endpoint=args.slots,
        slot_save_path=Path(args.slot_save_path) if args.slot_save_path else None, kv_type=args.cache_type_k,
        context_shift=args.context_shift, slot_prompt_similarity=args.slot_prompt_similarity,
        model_source=args.hf_repo or args.model or str(model_path), kv_unified=args.kv_unified,
        sse_ping_interval=args.sse_ping_interval,
        weight_cache_limit_gb=args.weight_cache_limit if args.weight_cache else 0.0,
        chat_template=chat_template, verbose=args.verbose,
        tags=tuple(t for t in (args.tags or "").split(",") if t),
        cors=CorsPolicy(args.cors_origins, args.cors_methods, args.cors_headers, args.cors_credentials))
    service = Service(config)
    hosts = [h.strip() for h in args.host.split(",") if h.strip()]
    sockets = _listen(hosts, args.port) if len(hosts) > 1 else None  # several addresses, as llama-server takes
    server = uvicorn.Server(uvicorn.Config(create_app(service), host=hosts[0], port=args.port,
                                           log_level="info" if args.verbose else "warning"))
    failure: list[ModelLoadError] = []

    def load() -> None:
        try:
            service.load(progress=_progress_printer(str(model_path)))
        except ModelLoadError as exc:
            failure.append(exc)
            server.should_exit = True  # nothing to serve: stop, and say why below
            return
        log.info("model loaded: %s (%.1fM parameters, %d slots, n_ctx_slot %d)", service.model.name,
                 service.model.n_params / 1e6, service.n_parallel, service.n_ctx_slot)

    # the port opens at once so clients see /health answer 503 "Loading model" until the model is ready
    threading.Thread(target=load, name="slotserve-load", daemon=True).start()
    for host in hosts:
        log.info("listening on http://%s:%d", f"[{host}]" if ":" in host else host, args.port)
    try:
        server.run(sockets=sockets)
    finally:
        service.close()
    if failure:
        raise SystemExit(f"slotserve: {failure[0]}")


def _listen(hosts: list[str], port: int) -> list[socket.socket]:
    """A listening socket on each address; one that cannot be bound stops the server with its reason."""
    sockets = []
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # ::1 next to 127.0.0.1 must not clash
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise SystemExit(f"slotserve: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        sock.listen(2048)
        sockets.append(sock)
    return sockets


def _progress_printer(label: str):
    """A load-progress callback drawing one line on stderr (a line per 25% when not a terminal)."""
    interactive = sys.stderr.isatty()
    shown = [-1]

    def show(fraction: float) -> None:
        step = int(fraction * 100) if interactive else int(fraction * 4) * 25
        if step != shown[0]:
            shown[0] = step
            end = "" if interactive and fraction < 1 else "\n"
            start = "\r" if interactive else ""
            print(f"{start}loading {label}: {step:3d}%", end=end, file=sys.stderr, flush=True)

    return show
