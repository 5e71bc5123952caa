"""llama-server's options as one table: flags, help, environment variable, group, and where the default lives.

The table drives the argument parser, the LLAMA_ARG_* environment variables and --help. Defaults are not
written here: an option names the config field it sets ("n_batch", "sampling.top_k", "cors.origins") and
the default is read from that dataclass (ServerConfig, EngineConfig, SamplingParams, CorsPolicy) only when
--help shows it, so parsing the command line imports no numpy (-t must size BLAS's pool before that).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from importlib import metadata

GROUPS = {
    "common": "common params",
    "sampling": "sampling params (a request's own fields override them)",
    "server": "server params",
    "speculative": "speculative decoding (drafts are verified by the model: outputs are unchanged)",
    "slotserve": "slotserve-only params",
    "no-effect": "accepted for llama-server compatibility, no effect in slotserve (CPU numpy engine)",
    "unsupported": "not supported by slotserve: refused at start",
}
CLI_ONLY = object()  # the option's default is the config field's


@dataclass(frozen=True)
class Like:
    """The default is another config field's (-ctv defaults to whatever -ctk does)."""
    field: str


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    help: str
    field: str  # ServerConfig field (dotted for a nested one), or a command-line-only name
    group: str
    metavar: str | None = None  # None: a switch
    type: type = str
    env: str | None = None
    off: tuple[str, ...] = ()  # the switch's negative flags
    default: object = CLI_ONLY  # for command-line-only options: shown in --help
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.field


def sleep_seconds(value: str) -> int:
    """--sleep-idle-seconds as llama-server takes it: a whole number of seconds, or -1."""
    seconds = int(value)
    if seconds == 0 or seconds < -1:
        raise argparse.ArgumentTypeError("invalid value: cannot be 0 or less than -1")
    return seconds


def _opt(flags, help, field, group, metavar=None, **kw) -> Option:
    return Option(tuple(flags.split()), help, field, group, metavar, **kw)


OPTIONS = [
    # ---- common -------------------------------------------------------------------------------------
    _opt("-t --threads", "BLAS threads for the forward pass (-1 = all cores)", "threads", "common", "N", type=int,
         env="LLAMA_ARG_THREADS"),
    _opt("-c --ctx-size", "context size; unset: each slot gets the model's training context, reduced to what "
         "memory holds; 0: the training context, as asked", "n_ctx", "common", "N", type=int,
         env="LLAMA_ARG_CTX_SIZE"),
    _opt("-n --predict --n-predict", "tokens to predict for a request that does not say (-1 = until end of "
         "text or context)", "n_predict", "common", "N", type=int, env="LLAMA_ARG_N_PREDICT"),
    _opt("-b --batch-size", "most prompt tokens evaluated in one step", "n_batch", "common", "N", type=int,
         env="LLAMA_ARG_BATCH"),
    _opt("-ub --ubatch-size", "most tokens in one forward pass inside a step", "n_ubatch", "common", "N", type=int,
         env="LLAMA_ARG_UBATCH"),
    _opt("-ctk --cache-type-k", "KV cache type for K (f16 or f32; must equal -ctv)", "kv_type", "common", "TYPE",
         env="LLAMA_ARG_CACHE_TYPE_K", choices=("f16", "f32")),
    _opt("-ctv --cache-type-v", "KV cache type for V (f16 or f32; must equal -ctk)", "kv_type_v", "common", "TYPE",
         env="LLAMA_ARG_CACHE_TYPE_V", choices=("f16", "f32"), default=Like("kv_type")),
    _opt("-m --model", "GGUF model file (default: models/stories260K.gguf when present)", "model", "common", "FNAME",
         env="LLAMA_ARG_MODEL", default=None),
    _opt("-hf -hfr --hf-repo", "Hugging Face repository <user>/<model>[:quant]; the quant picks the file (default "
         "Q4_K_M, then Q8_0, then the first GGUF); kept in the Hugging Face cache", "hf_repo", "common",
         "REPO", env="LLAMA_ARG_HF_REPO", default=None),
    _opt("-hff --hf-file", "file in the -hf repository (overrides the quant)", "hf_file", "common", "FILE",
         env="LLAMA_ARG_HF_FILE", default=None),
    _opt("--offline", "never touch the network: use the Hugging Face cache only (also HF_HUB_OFFLINE=1)", "offline",
         "common", env="LLAMA_ARG_OFFLINE", default=False),
    _opt("-v --verbose --log-verbose", "log everything, HTTP access included", "verbose", "common"),
    _opt("--version", "show slotserve's version and exit", "version", "common", default=None),
    # ---- sampling -----------------------------------------------------------------------------------
    _opt("-s --seed", "RNG seed (-1 = a random one)", "sampling.seed", "sampling", "SEED", type=int),
    _opt("--temp --temperature", "temperature", "sampling.temperature", "sampling", "N", type=float,
         env="LLAMA_ARG_TEMPERATURE"),
    _opt("--top-k", "top-k sampling (0 = off)", "sampling.top_k", "sampling", "N", type=int, env="LLAMA_ARG_TOP_K"),
    _opt("--top-p", "top-p sampling (1.0 = off)", "sampling.top_p", "sampling", "N", type=float,
         env="LLAMA_ARG_TOP_P"),
    _opt("--min-p", "min-p sampling (0.0 = off)", "sampling.min_p", "sampling", "N", type=float,
         env="LLAMA_ARG_MIN_P"),
    _opt("--repeat-penalty", "penalty for repeating the last --repeat-last-n tokens (1.0 = off)",
         "sampling.repeat_penalty", "sampling", "N", type=float, env="LLAMA_ARG_REPEAT_PENALTY"),
    _opt("--repeat-last-n", "tokens the repeat penalty looks back over (0 = off)", "sampling.repeat_last_n",
         "sampling", "N", type=int),
    # ---- server -------------------------------------------------------------------------------------
    _opt("--host", "addresses to listen on, comma-separated, or a UNIX socket path ending in .sock", "host",
         "server", "HOST", env="LLAMA_ARG_HOST"),
    _opt("--port", "port to listen on", "port", "server", "PORT", type=int, env="LLAMA_ARG_PORT"),
    _opt("-np --parallel", "number of slots (-1 = auto: 4 slots sharing the context, as -kvu)", "n_parallel",
         "server", "N", type=int, env="LLAMA_ARG_N_PARALLEL"),
    _opt("-kvu --kv-unified", "every slot may use the whole context (here: each gets arrays of all of it)",
         "kv_unified", "server", env="LLAMA_ARG_KV_UNIFIED", off=("-no-kvu", "--no-kv-unified")),
    _opt("--context-shift", "when a generation fills the context, drop the oldest half and go on",
         "context_shift", "server", env="LLAMA_ARG_CONTEXT_SHIFT", off=("--no-context-shift",)),
    _opt("-sps --slot-prompt-similarity", "how much of a prompt must match an idle slot's cache to pick that "
         "slot (0.0 = off)", "slot_prompt_similarity", "server", "SIMILARITY", type=float),
    _opt("-a --alias", "model names shown by the API, comma-separated", "alias", "server", "STRING",
         env="LLAMA_ARG_ALIAS"),
    _opt("--tags", "model tags shown by /v1/models, comma-separated", "tags", "server", "STRING",
         env="LLAMA_ARG_TAGS"),
    _opt("--api-key", "API keys, comma-separated", "api_keys", "server", "KEY", env="LLAMA_API_KEY"),
    _opt("--metrics", "serve Prometheus metrics at /metrics", "metrics", "server", env="LLAMA_ARG_ENDPOINT_METRICS"),
    _opt("--slots", "serve GET /slots", "slots_endpoint", "server", env="LLAMA_ARG_ENDPOINT_SLOTS",
         off=("--no-slots",)),
    _opt("--slot-save-path", "directory of slot save/restore files (unset: slot actions are off)",
         "slot_save_path", "server", "PATH"),
    _opt("--chat-template", "chat template: Jinja text, or one of the built-in names {templates}",
         "chat_template", "server", "JINJA_TEMPLATE", env="LLAMA_ARG_CHAT_TEMPLATE"),
    _opt("--chat-template-file", "a file holding the chat template", "chat_template_file", "server",
         "JINJA_TEMPLATE_FILE", env="LLAMA_ARG_CHAT_TEMPLATE_FILE", default=None),
    _opt("--cors-origins", "allowed CORS origins: * (echo any), localhost (echo only local ones), a comma-separated "
         "list (echo a listed one; localhost in it stands for every local origin) or one literal value",
         "cors.origins", "server", "ORIGINS", env="LLAMA_ARG_CORS_ORIGINS"),
    _opt("--cors-methods", "allowed CORS methods", "cors.methods", "server", "METHODS", env="LLAMA_ARG_CORS_METHODS"),
    _opt("--cors-headers", "allowed CORS headers", "cors.headers", "server", "HEADERS", env="LLAMA_ARG_CORS_HEADERS"),
    _opt("--cors-credentials", "allow credentials in CORS requests", "cors.credentials", "server",
         env="LLAMA_ARG_CORS_CREDENTIALS", off=("--no-cors-credentials",)),
    _opt("-cram --cache-ram", "most MiB of idle prompt states kept in host RAM, reused by later prompts that "
         "share their prefix (-1 = no limit, 0 = off)", "cache_ram", "server", "N", type=int,
         env="LLAMA_ARG_CACHE_RAM"),
    _opt("--cache-idle-slots", "store idle slots in the prompt cache when a task starts, and clear them with a "
         "unified KV cache (requires --cache-ram)", "cache_idle_slots", "server", env="LLAMA_ARG_CACHE_IDLE_SLOTS",
         off=("--no-cache-idle-slots",)),
    _opt("--sleep-idle-seconds", "seconds of idleness after which the model and the KV caches are freed, until the "
         "next request loads them again (-1 = never)", "sleep_idle_seconds", "server", "SECONDS",
         type=sleep_seconds),
    _opt("--sse-ping-interval", "seconds of stream silence before an SSE ping comment (-1 = never)",
         "sse_ping_interval", "server", "N", type=float, env="LLAMA_ARG_SSE_PING_INTERVAL"),
    _opt("--path", "serve the static files of this directory at / instead of the built-in page", "webui_path",
         "server", "PATH", env="LLAMA_ARG_STATIC_PATH"),
    _opt("--ui --webui", "serve the web page at /", "webui", "server", env="LLAMA_ARG_UI",
         off=("--no-ui", "--no-webui")),
    _opt("--warmup", "one throwaway forward pass at load, so the first request runs as fast as later ones",
         "warmup", "server", off=("--no-warmup",)),
    # ---- speculative ---------------------------------------------------------------------------------
    _opt("-md --model-draft --spec-draft-model", "draft model (GGUF) of the same vocabulary; unset: drafts come "
         "from prompt lookup", "draft_model_path", "speculative", "FNAME", env="LLAMA_ARG_SPEC_DRAFT_MODEL"),
    _opt("--spec-draft-n-max --draft --draft-n --draft-max", "most tokens drafted per step (prompt lookup or -md)",
         "draft_max", "speculative", "N", type=int, env="LLAMA_ARG_SPEC_DRAFT_N_MAX"),
    _opt("--spec-draft-n-min --draft-min --draft-n-min", "-md drafts shorter than this are not verified",
         "draft_min", "speculative", "N", type=int, env="LLAMA_ARG_SPEC_DRAFT_N_MIN"),
    _opt("--spec-draft-p-min --draft-p-min", "-md drafting stops when the draft model's top-10 probability of its "
         "next token is under P", "draft_p_min", "speculative", "P", type=float, env="LLAMA_ARG_SPEC_DRAFT_P_MIN"),
    # ---- slotserve-only -----------------------------------------------------------------------------
    _opt("--weight-cache", "map a cached float32 copy of the widened weights (in ~/.cache/slotserve/weights, "
         "written on the first start) instead of widening the GGUF on every start", "weight_cache", "slotserve",
         off=("--no-weight-cache",)),
    _opt("--weight-cache-limit", "total size of the weight cache in GB; least recently used entries go first",
         "weight_cache_limit_gb", "slotserve", "GB", type=float),
    _opt("--cache-disk", "directory of a prompt cache on disk: states leaving RAM, and the slots' at shutdown, "
         "are written there and found again after a restart (unset: off)", "cache_disk", "slotserve", "DIR",
         env="SLOTSERVE_CACHE_DISK"),
    _opt("--cache-disk-size", "most MiB the --cache-disk directory holds", "cache_disk_size", "slotserve", "N",
         type=float, env="SLOTSERVE_CACHE_DISK_SIZE"),
    # ---- scale-out on Ray Serve (optional extra: pip install 'slotserve[ray]') ----------------------------
    _opt("--ray-replicas", "serve with N replicas (each a process with the model and its slots) as a Ray Serve "
         "deployment behind this one address; slot ids become cluster-wide (replica r, slot s: r * -np + s)",
         "ray_replicas", "slotserve", "N", type=int, env="SLOTSERVE_RAY_REPLICAS", default=None),
    _opt("--ray-address", "join this Ray cluster (`ray start --head` on one machine, `ray start --address` on the "
         "others) instead of starting a local Ray instance", "ray_address", "slotserve", "ADDR",
         env="SLOTSERVE_RAY_ADDRESS", default=None),
    _opt("--ray-routing", "how requests pick a replica: prefix (the one holding the longest prefix of the prompt, "
         "unless it is clearly busier) or round-robin", "ray_routing", "slotserve", "POLICY",
         choices=("prefix", "round-robin"), default="prefix"),
    _opt("--ray-replica-cpus", "CPUs Ray reserves for each replica (its BLAS threads follow)", "ray_replica_cpus",
         "slotserve", "N", type=float, default=1.0),
    _opt("--slot-save-sync", "a slot save is answered once its file and directory are fsynced (survives a power "
         "loss); --no-slot-save-sync answers once written, as llama-server", "slot_save_sync", "slotserve",
         off=("--no-slot-save-sync",), env="SLOTSERVE_SLOT_SAVE_SYNC"),
    _opt("--slot-action-timeout", "seconds a slot save/restore/erase waits for its busy slot before it is refused "
         "(<= 0: no limit)", "slot_action_timeout", "slotserve", "N", type=float),
    _opt("--max-body-mb", "largest request body in MiB; a larger one gets a 413 before it is read",
         "max_body_mb", "slotserve", "N", type=float, env="SLOTSERVE_MAX_BODY_MB"),
    _opt("--max-queued", "most completion requests waiting for a free slot; more get a 503 with Retry-After "
         "(-1 = no bound)", "max_queued", "slotserve", "N", type=int, env="SLOTSERVE_MAX_QUEUED"),
]

# llama-server flags that mean nothing to a CPU numpy engine: accepted (one log line) so command lines work.
NO_EFFECT = {  # flags -> metavar (None: a switch)
    "-ngl --gpu-layers --n-gpu-layers": "N", "-sm --split-mode": "MODE", "-ts --tensor-split": "SPLIT",
    "-mg --main-gpu": "INDEX", "--numa": "TYPE", "-dev --device": "DEVICES", "--rope-scaling": "TYPE",
    "--cache-reuse": "N", "-tb --threads-batch": "N", "--poll": "N", "--prio": "N", "-C --cpu-mask": "M",
    "--timeout -to": "N", "--threads-http": "N", "--reasoning-format": "FORMAT", "--reasoning-budget": "N",
    "--chat-template-kwargs": "STRING", "-dt --defrag-thold": "N", "--keep --n-keep": "N",
    "--reasoning": "MODE", "-fa --flash-attn": "[on|off|auto]",
    "-fit --fit": "[on|off]", "-fitc --fit-ctx": "N", "-lv --verbosity --log-verbosity": "N",
    "--jinja": None, "--no-jinja": None, "-cb --cont-batching": None, "-nocb --no-cont-batching": None,
    "--mlock": None, "--mmap": None, "--no-mmap": None,
    "--log-disable": None, "--perf": None, "--no-perf": None, "--check-tensors": None,
    "-nkvo --no-kv-offload": None, "-e --escape": None, "--no-escape": None, "--log-colors": "[on|off|auto]",
    "-bs --backend-sampling --backend_sampling": None,
    "--cont-batching-off": None,
    "--spec-type": "TYPE", "-ngld --gpu-layers-draft --n-gpu-layers-draft --spec-draft-ngl": "N",
}
# Features slotserve lacks: a server started for them would answer differently than asked, so it stops.
UNSUPPORTED = {
    "--embedding --embeddings": (None, "embeddings"), "--rerank --reranking": (None, "reranking"),
    "--lora": ("FNAME", "LoRA adapters"), "--lora-scaled": ("FNAME:SCALE", "LoRA adapters"),
    "--control-vector": ("FNAME", "control vectors"), "-mm --mmproj": ("FILE", "multimodal projectors"),
    "-mmu --mmproj-url": ("URL", "multimodal projectors"),
    "-hfd -hfrd --hf-repo-draft --spec-draft-hf": ("REPO", "draft models from Hugging Face (give the file with -md)"),
    "--spec-synth-rates": ("P0,P1,...", "synthetic draft acceptance (a benchmarking aid)"),
    "--spec-synth-len": ("L", "synthetic draft acceptance (a benchmarking aid)"),
    "--props": (None, "changing global properties via POST /props"),
}


TRUTHY, FALSEY = ("on", "enabled", "true", "1"), ("off", "disabled", "false", "0")


def config_default(field: str):
    """The default of a config field, read from the dataclass that declares it (imports numpy: --help only)."""
    from .model.sampling import SamplingParams
    from .service import CorsPolicy, ServerConfig
    head, _, tail = field.partition(".")
    owner = {"sampling": SamplingParams, "cors": CorsPolicy}.get(head)
    return getattr(owner, tail) if owner else getattr(ServerConfig, field)


def shown_default(option: Option) -> str | None:
    default = option.default
    if isinstance(default, Like):
        default = config_default(default.field)
    elif default is CLI_ONLY:
        default = config_default(option.field)
    if default in (None, (), "") or option.field == "verbose":
        return None
    if isinstance(default, bool):
        return "enabled" if default else "disabled"
    return str(default)


def version() -> str:
    try:
        return metadata.version("slotserve")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _template_names() -> str:
    from .api.chat import template_names
    return ", ".join(template_names())


class _Formatter(argparse.HelpFormatter):
    """llama-server's layout: "-c, --ctx-size N" on one line, the help beside it."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=40, width=120)

    def _format_action_invocation(self, action):
        if not action.option_strings:
            return super()._format_action_invocation(action)
        flags = ", ".join(action.option_strings)
        return f"{flags} {action.metavar}" if action.nargs != 0 and action.metavar else flags


class Parser(argparse.ArgumentParser):
    def format_help(self) -> str:
        for action, option in self._described:  # defaults are looked up only now: see the module docstring
            extra = [f"default: {d}" for d in [shown_default(option)] if d is not None]
            extra += [f"env: {option.env}"] if option.env else []
            text = option.help.replace("{templates}", _template_names()) if "{templates}" in option.help else option.help
            action.help = text + (f" ({'; '.join(extra)})" if extra else "")
        return super().format_help()


class _AsTyped(argparse.Action):
    """Keeps the flag as it was typed (-fa or --flash-attn), so the log line names what the user wrote."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, option_string)


def build_parser() -> Parser:
    p = Parser(prog="slotserve", formatter_class=_Formatter, allow_abbrev=False, add_help=False,
               usage="slotserve [-m FNAME | -hf REPO[:QUANT]] [options]",
               description="A pure-Python LLaMA server that speaks llama-server's HTTP API and command line.",
               epilog="Flags not listed are refused. llama-server's multi-letter short flags (-np, -ctk, -md, ...) "
                      "are whole words.")
    groups = {name: p.add_argument_group(f"----- {title} -----") for name, title in GROUPS.items()}
    groups["common"].add_argument("-h", "--help", action="help", help="show this help and exit")
    p._described = []
    for option in OPTIONS:
        group = groups[option.group]
        if option.field == "version":
            group.add_argument(*option.flags, action="version", version=f"slotserve {version()}", help=option.help)
            continue
        if option.metavar is None:
            action = group.add_argument(*option.flags, dest=option.dest, action="store_const", const=True)
            for off in option.off:
                group.add_argument(off, dest=option.dest, action="store_const", const=False, help=argparse.SUPPRESS)
            if option.off:
                action.option_strings = [*option.flags, *option.off]  # listed together, as llama-server does
        else:
            action = group.add_argument(*option.flags, dest=option.dest, metavar=option.metavar, type=option.type,
                                        choices=option.choices)
        p._described.append((action, option))
    for flags, metavar in NO_EFFECT.items():
        names = flags.split()
        nargs = 0 if metavar is None else "?" if metavar.startswith("[") else None
        groups["no-effect"].add_argument(*names, dest=f"no_effect:{names[0]}", action=_AsTyped, nargs=nargs,
                                         metavar=metavar, help="")
    for flags, (metavar, feature) in UNSUPPORTED.items():
        names = flags.split()
        groups["unsupported"].add_argument(*names, dest=f"unsupported:{names[0]}", action=_AsTyped,
                                           nargs=0 if metavar is None else None, metavar=metavar, help=feature)
    return p


def env_args(environ) -> list[str]:
    """The command-line arguments llama-server's environment variables stand for. They go first, so the
    command line wins. Switches: on/enabled/true/1 or off/disabled/false/0; LLAMA_ARG_NO_<NAME> turns off
    one that has a negative flag."""
    out = []
    for option in OPTIONS:
        if not option.env:
            continue
        negated = option.off and environ.get(option.env.replace("LLAMA_ARG_", "LLAMA_ARG_NO_")) is not None
        value = "0" if negated else environ.get(option.env)
        if value is None:
            continue
        if option.metavar is not None:
            out += [option.flags[0], value]
            continue
        if value not in TRUTHY + FALSEY:
            raise SystemExit(f"slotserve: {option.env}={value!r}: expected one of {', '.join(TRUTHY + FALSEY)}")
        if value in TRUTHY:
            out.append(option.flags[0])
        elif option.off:
            out.append(option.off[0])
    return out


def given(args: argparse.Namespace) -> dict:
    """The table's options the command line (or environment) set: field -> value. The rest keep their
    config dataclass's defaults."""
    return {o.field: getattr(args, o.dest) for o in OPTIONS
            if o.field != "version" and getattr(args, o.dest, None) is not None}


def used(args: argparse.Namespace, kind: str) -> list[str]:
    """The no-effect or unsupported flags given, as typed."""
    return [v for k, v in vars(args).items() if k.startswith(kind + ":") and v is not None]
