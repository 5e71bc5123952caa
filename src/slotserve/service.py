"""The running server's parts: its configuration, the loaded model, the engine and the slot store.

The HTTP layer reads these; it never computes with the model or mutates slots itself.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from .constraint import GrammarVocab
from .context_size import available_memory, plan_context
from .engine.draft_model import DraftModel, DraftParams, vocab_mismatch
from .engine.prompt_tiers import idle_slots_enabled
from .engine.scheduler import Engine, EngineConfig
from .engine.sleep import IdleSleep, ModelHooks
from .kvcache.disk_tier import DiskTier
from .kvcache.persist import ModelIdentity, SlotStore
from .kvcache.prompt_cache import PromptCache
from .kvcache.ram_tier import RamTier
from .kvcache.savedir import SaveDir
from .model.forward import Llama
from .model.loader import LoadedModel, ModelLoadError, load_model
from .model.sampling import SamplingParams
from .model.weight_cache import WeightCache

log = logging.getLogger("slotserve")
T = TypeVar("T")


@dataclass(frozen=True)
class CorsPolicy:
    """llama-server's --cors-* flags. origins: "*" echoes the caller's Origin (with credentials on),
    "localhost" echoes only local origins, anything else is sent as it is."""
    origins: str = "*"
    methods: str = "GET, POST, DELETE, OPTIONS"
    headers: str = "*"
    credentials: bool = True


@dataclass(frozen=True)
class ServerConfig:
    model_path: Path
    host: str = "127.0.0.1"
    port: int = 8080
    n_ctx: int | None = None  # None: per slot the training context, fitted to memory; 0: that, unfitted
    n_parallel: int = -1  # -1: auto (4 slots, each with the whole context, as llama-server's unified KV)
    n_batch: int = EngineConfig.n_batch  # the engine's settings keep the defaults EngineConfig declares
    n_ubatch: int = EngineConfig.n_ubatch
    n_predict: int = -1  # -n: the default of requests that do not say (the API applies it); -1: unlimited
    sampling: SamplingParams = field(default_factory=SamplingParams)
    threads: int = -1
    alias: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = ()
    metrics: bool = False
    slots_endpoint: bool = True
    slot_save_path: Path | None = None
    slot_save_sync: bool = True  # fsync a saved file and its directory before answering (llama-server does not)
    slot_action_timeout: float = 300.0  # seconds a slot action may wait for its busy slot (<= 0: no limit)
    kv_type: str = EngineConfig.kv_type
    context_shift: bool = EngineConfig.context_shift
    slot_prompt_similarity: float = EngineConfig.slot_prompt_similarity
    chat_template: str | None = None
    verbose: bool = False
    model_source: str = ""  # the model as the command line named it: the -hf repo or the -m path
    kv_unified: bool = False  # -kvu
    sse_ping_interval: float = 30.0  # seconds of stream silence before a ping comment; <= 0: never
    tags: tuple[str, ...] = ()
    cors: CorsPolicy = field(default_factory=CorsPolicy)
    webui: bool = True  # --no-webui turns the page at / off
    webui_path: Path | None = None  # --path: serve this directory instead of the package's page
    weight_cache: bool = True  # --no-weight-cache: widen the weights in memory on every start
    weight_cache_limit_gb: float = 32.0
    cache_ram: int = 8192  # MiB of prompt states in RAM (-1: no byte limit, 0: off), as llama-server
    cache_idle_slots: bool = EngineConfig.cache_idle_slots
    cache_disk: Path | None = None  # the disk tier's directory (None: no disk tier)
    cache_disk_size: float = 16384  # MiB
    sleep_idle_seconds: int = -1  # free the model and the caches after this long idle (-1: never), as llama-server
    warmup: bool = True  # one throwaway forward at load, as llama-server's --warmup
    draft_model_path: Path | None = None  # -md: a draft model of the same vocabulary (None: prompt lookup)
    draft_max: int = EngineConfig.n_draft
    draft_min: int = DraftParams.n_min
    draft_p_min: float = DraftParams.p_min
    max_body_mb: float = 100.0  # --max-body-mb: larger request bodies get a 413 (llama-server's HTTP library: 100 MB)
    max_queued: int = 1024  # --max-queued: completions waiting for a slot past this get a 503 (-1: no bound)

    @property
    def model_alias(self) -> str:
        """llama-server's model name: the first --alias in sorted order (it keeps them in a std::set), else
        the -hf repo or the -m path as typed."""
        return min(self.alias) if self.alias else (self.model_source or str(self.model_path))


class Service:
    """Holds what the API needs; `load` runs once, in the background, while /health says 503."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.status = "loading"
        self.error: str | None = None
        self.model: LoadedModel | None = None
        self.llama: Llama | None = None
        self.engine: Engine | None = None
        self.store: SlotStore | None = None
        self.prompt_cache: PromptCache | None = None
        self.sleep: IdleSleep | None = None  # with --sleep-idle-seconds; the HTTP side holds it awake
        self.n_ctx_slot = 0
        self.n_ctx_total = 0
        self.load_progress = 0.0
        self.ready = threading.Event()  # set when loading ended, either way

    @property
    def n_parallel(self) -> int:
        return 4 if self.config.n_parallel <= 0 else self.config.n_parallel

    def load(self, progress: Callable[[float], None] | None = None) -> None:
        cfg = self.config
        try:
            self.model = self._read_model(progress)
            draft = self._load_draft()
        except ModelLoadError as exc:
            self.status, self.error = "error", str(exc)
            self.ready.set()
            raise
        hp = self.model.hparams
        # explicit -np splits -c between slots; a unified KV cache (-kvu, implied by -np auto) lets every
        # slot use all of it: here each slot gets arrays of the whole context
        unified = cfg.n_parallel <= 0 or cfg.kv_unified
        n_caches = self.n_parallel + (cfg.slot_save_path is not None)  # a restore decodes into a scratch cache
        row_bytes = 2 * hp.n_layer * hp.n_embd_kv * 4  # K and V of one token, float32 (see KVCache)
        plan = plan_context(cfg.n_ctx, self.n_parallel, unified, hp.n_ctx_train, row_bytes, n_caches,
                            available_memory())
        if plan.reduced_from:
            log.warning("context reduced to fit in memory: %d tokens per slot instead of the model's %d "
                        "(-c sets it)", plan.n_ctx_slot, plan.reduced_from)
        self.n_ctx_slot, self.n_ctx_total = plan.n_ctx_slot, plan.n_ctx_total
        log.info("KV cache: %d x %d tokens (%s stored as float32): %.1f MiB", n_caches, self.n_ctx_slot,
                 cfg.kv_type, n_caches * self.n_ctx_slot * row_bytes / (1 << 20))
        self.llama = Llama(hp, self.model.weights)
        if cfg.warmup:
            self.llama.warm_up()
        identity = ModelIdentity(name=self.model.name, fingerprint=self.model.fingerprint,
                                 n_layer=hp.n_layer, n_embd_kv=hp.n_embd_kv, n_vocab=hp.n_vocab)
        if cfg.slot_save_path is not None:
            self.store = SlotStore(SaveDir(cfg.slot_save_path, sync=cfg.slot_save_sync), identity,
                                   n_stream=1 if unified else cfg.n_parallel)
        # llama-server bounds an unlimited RAM tier by its whole context in tokens
        ram = RamTier(cfg.cache_ram, limit_tokens=self.n_ctx_total)
        disk = None
        if cfg.cache_disk is not None:
            disk = DiskTier(cfg.cache_disk, identity, cfg.kv_type, cfg.cache_disk_size)
        if ram.enabled or disk is not None:
            self.prompt_cache = PromptCache(ram, disk)
        if cfg.sleep_idle_seconds > 0:
            self.sleep = IdleSleep(cfg.sleep_idle_seconds, ModelHooks(drop=self._drop_weights, load=self._reload,
                                                                      load_draft=self._reload_draft))
        self.engine = Engine(self.llama, self.model.tokenizer, EngineConfig(
            n_parallel=self.n_parallel, n_ctx_slot=self.n_ctx_slot, n_batch=cfg.n_batch, n_ubatch=cfg.n_ubatch,
            kv_type=cfg.kv_type, context_shift=cfg.context_shift, slot_prompt_similarity=cfg.slot_prompt_similarity,
            cache_idle_slots=idle_slots_enabled(cfg.cache_idle_slots, ram.enabled), kv_unified=unified,
            n_draft=cfg.draft_max),
            self.store, self.prompt_cache,
            vocab=GrammarVocab.from_tokenizer(self.model.tokenizer, n_vocab=hp.n_vocab),  # for grammars: once per model
            sleep=self.sleep,
            draft=None if draft is None else DraftModel(
                self._draft_llama(draft), self.n_parallel, self.n_ctx_slot, cfg.kv_type,
                DraftParams(n_max=cfg.draft_max, n_min=cfg.draft_min, p_min=cfg.draft_p_min), cfg.n_ubatch))
        self.engine.start()
        self.status = "ready"
        self.ready.set()

    def _read_model(self, progress: Callable[[float], None] | None = None) -> LoadedModel:
        cfg = self.config

        def on_tensor(done: int, total: int) -> None:
            self.load_progress = done / total
            if progress:
                progress(self.load_progress)

        return load_model(cfg.model_path, on_tensor, self._weight_cache())

    def _weight_cache(self) -> WeightCache | None:
        limit = int(self.config.weight_cache_limit_gb * 1e9)
        return WeightCache(limit_bytes=limit) if self.config.weight_cache and limit > 0 else None

    # the engine thread calls these two when it falls asleep and wakes (engine/sleep.py)
    def _drop_weights(self) -> None:
        """Keep what the API reads while asleep (name, tokenizer, metadata), not the weights."""
        self.llama = None
        self.model = dataclasses.replace(self.model, weights=None)

    def _reload(self) -> Llama:
        model = _reloaded("the model", self._read_model)
        self.model, self.llama = model, Llama(model.hparams, model.weights)
        if self.config.warmup:
            self.llama.warm_up()
        return self.llama

    def _reload_draft(self) -> Llama:
        return _reloaded("the draft model", lambda: self._draft_llama(self._load_draft()))

    def _load_draft(self) -> LoadedModel | None:
        """The -md model, through the same loader and weight cache; refused unless its token ids mean the
        model's (drafts are compared with the model's choices by id)."""
        path = self.config.draft_model_path
        if path is None:
            return None
        draft = load_model(path, None, self._weight_cache())
        problem = vocab_mismatch(self.model.tokenizer, draft.tokenizer)
        if problem:
            raise ModelLoadError(path, f"as a draft (-md) for '{self.config.model_path}': its vocabulary differs "
                                       f"from the model's ({problem}); a draft model must share the model's vocabulary")
        log.info("draft model loaded: %s (%.1fM parameters)", draft.name, draft.n_params / 1e6)
        return draft

    def _draft_llama(self, draft: LoadedModel) -> Llama:
        model = Llama(draft.hparams, draft.weights)
        if self.config.warmup:
            model.warm_up()
        return model

    def close(self) -> None:
        if self.engine is not None:
            self.engine.stop()


def _reloaded(what: str, load: Callable[[], T]) -> T:
    """load() when the server wakes from sleep; requests are waiting for a model that cannot come if it
    fails, so the server stops, as llama-server does."""
    try:
        return load()
    except ModelLoadError as exc:
        log.critical("failed to reload %s after sleeping: %s", what, exc)
        os._exit(1)
