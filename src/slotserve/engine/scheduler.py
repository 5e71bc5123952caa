"""The engine: one thread that owns the model and every slot, and runs all work in batched steps.

Requests arrive as tasks on a queue. Each step, every generating slot decodes its next token and
prompt chunks fill the rest of the batch, all in one forward pass (continuous batching). Slot
save / restore / erase run on the same thread between steps, so they never race a generation.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from ..kvcache.persist import SlotStore
from ..model.forward import Llama, Segment
from ..model.sampling import Sampler
from ..model.tokenizer import Tokenizer
from .actions import SlotActions
from .slot import Generation, Slot, common_prefix_len
from .tasks import (CompletionRequest, CompletionResult, CompletionTask, EngineError, PromptProgress, SlotActionTask,
                    Timings, TokenOut, effective_n_predict, exceed_context)
from .speculative import find_draft
from .text import TextAssembler

log = logging.getLogger("slotserve.engine")


@dataclass(frozen=True)
class EngineConfig:
    n_parallel: int = 1
    n_ctx_slot: int = 2048
    n_batch: int = 2048
    n_ubatch: int = 512
    kv_type: str = "f16"
    n_predict: int = -1  # server-wide default (-n) for requests that do not set n_predict
    context_shift: bool = False
    slot_prompt_similarity: float = 0.1
    n_draft: int = 8  # most prompt-lookup draft tokens verified per step


@dataclass
class EngineStats:
    """Counters for /metrics, written by the engine thread only."""
    n_prompt_tokens: int = 0
    n_prompt_tokens_cached: int = 0
    t_prompt_ms: float = 0.0
    n_predicted_tokens: int = 0
    n_predicted_steps: int = 0  # decode steps: each request's first token needs none
    t_predicted_ms: float = 0.0
    n_decode_calls: int = 0
    n_busy_slots_total: int = 0
    n_tokens_max: int = 0
    n_draft_tokens: int = 0  # proposed by prompt lookup
    n_draft_accepted: int = 0
    n_draft_steps: int = 0  # forwards that verified a draft


class Engine(SlotActions):
    def __init__(self, model: Llama, tokenizer: Tokenizer, config: EngineConfig, store: SlotStore | None = None):
        self.model, self.tokenizer, self.config, self.store = model, tokenizer, config, store
        self.slots = [Slot(i, model.new_cache(config.n_ctx_slot, config.kv_type)) for i in range(config.n_parallel)]
        # a restore fills this, then swaps it with the slot's cache: a bad file never touches a slot,
        # and the file's checksum can run while its rows are already being copied
        self._scratch = None
        if store is not None:
            self._scratch = model.new_cache(config.n_ctx_slot, config.kv_type)
            store.reserve(self._scratch)
        self.stats = EngineStats()
        self._inbox: queue.Queue = queue.Queue()
        self._waiting: deque = deque()  # tasks whose slot is busy, in arrival order
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slotserve-engine", daemon=True)
        self._eog = [t for t in range(tokenizer.n_vocab) if tokenizer.is_eog(t)]

    # ---- called from other threads -------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(None)
        self._thread.join(timeout=10)
        # nobody will serve what is still queued: answer it rather than leave clients waiting
        self._collect(block=False)
        shutdown = EngineError("unavailable", "the server is shutting down")
        for task in self._waiting:
            if isinstance(task, SlotActionTask):
                task.future.set_exception(shutdown)
            else:
                task.sink(shutdown)
        for slot in self.slots:
            if slot.gen:
                slot.gen.task.sink(shutdown)
        self._waiting.clear()

    def submit(self, task: CompletionTask | SlotActionTask) -> None:
        self._inbox.put(task)

    @property
    def n_waiting(self) -> int:
        return len(self._waiting)

    # ---- the engine thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            busy = any(s.is_processing for s in self.slots)
            self._collect(block=not busy)
            self._dispatch()
            if any(s.is_processing for s in self.slots):
                try:
                    self._step()
                except Exception as exc:  # a bug must not kill the thread that serves every client
                    log.exception("engine step failed")
                    for slot in self.slots:
                        if slot.gen:
                            slot.gen.task.sink(EngineError("server", f"internal error: {exc}"))
                            slot.release()

    def _collect(self, block: bool) -> None:
        try:
            task = self._inbox.get(timeout=0.25) if block else self._inbox.get_nowait()
            while True:
                if task is not None:
                    self._waiting.append(task)
                task = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _dispatch(self) -> None:
        still_waiting: deque = deque()
        while self._waiting:
            task = self._waiting.popleft()
            if isinstance(task, SlotActionTask):
                if not self._try_slot_action(task):
                    still_waiting.append(task)
            elif not task.cancelled.is_set():
                if task.request.id_slot >= len(self.slots) or task.request.id_slot < -1:
                    task.sink(self._bad_slot(task.request.id_slot))
                    continue
                slot = self._pick_slot(task)
                if slot is None:
                    still_waiting.append(task)
                else:
                    self._launch(slot, task)
        self._waiting = still_waiting

    def _pick_slot(self, task: CompletionTask) -> Slot | None:
        """The requested slot; else the idle slot sharing the longest prefix; else the least recently used."""
        req = task.request
        if req.id_slot >= 0:
            slot = self.slots[req.id_slot]  # the range was checked when the task was dispatched
            return None if slot.is_processing else slot
        idle = [s for s in self.slots if not s.is_processing]
        if not idle:
            return None
        best = max(idle, key=lambda s: common_prefix_len(s.cache.tokens, req.prompt_tokens))
        shared = common_prefix_len(best.cache.tokens, req.prompt_tokens)
        if shared and shared / len(req.prompt_tokens) >= self.config.slot_prompt_similarity:
            return best
        return min(idle, key=lambda s: s.t_last_used)

    def _launch(self, slot: Slot, task: CompletionTask) -> None:
        req, cfg = task.request, self.config
        prompt = list(req.prompt_tokens)
        if not prompt:
            task.sink(EngineError("invalid_request", "the prompt is empty"))
            return
        truncated = False
        if len(prompt) >= cfg.n_ctx_slot:
            if not cfg.context_shift:
                task.sink(exceed_context(len(prompt), cfg.n_ctx_slot))
                return
            prompt, truncated = self._truncate_prompt(prompt, req), True
        n_cached = common_prefix_len(slot.cache.tokens, prompt) if req.cache_prompt else 0
        known = n_cached == len(prompt) == slot.cache.n_past and slot.cache.logits is not None
        if n_cached == len(prompt) and not known:
            n_cached -= 1  # the last prompt token is evaluated again: its logits give the first token
        slot.cache.truncate(n_cached)
        self.stats.n_prompt_tokens_cached += n_cached

        n_predict = effective_n_predict(req.n_predict, cfg.n_predict)
        sampler = Sampler(req.sampling, self.tokenizer.n_vocab, self._eog)
        sampler.accept_prompt(prompt)  # llama-server's penalties see the prompt too
        slot.gen = Generation(task=task, prompt=prompt, pending=prompt[n_cached:], sampler=sampler,
                              text=TextAssembler(req.stop), n_predict=n_predict,
                              timings=Timings(cache_n=n_cached, prompt_n=len(prompt) - n_cached),
                              truncated=truncated)
        self._report_progress(slot, slot.gen.t_start)
        if known and self._prompt_done(slot, time.perf_counter()):
            # the cache holds the whole prompt and the output after it: the first token needs no forward
            self._go_on(slot, *self._emit_token(slot, slot.cache.logits, n_cached))

    def _n_keep(self, req: CompletionRequest, n_prompt: int) -> int:
        """Prompt tokens a context shift keeps, as llama-server counts them (BOS on top of n_keep)."""
        n_keep = n_prompt if req.n_keep < 0 else req.n_keep
        if self.tokenizer.add_bos:
            n_keep += 1
        return min(self.config.n_ctx_slot - 4, n_keep)

    def _truncate_prompt(self, prompt: list[int], req: CompletionRequest) -> list[int]:
        """--context-shift with a prompt that does not fit: keep its first n_keep tokens and drop whole
        blocks of half the remaining room from after them until the rest fits (older llama-server)."""
        # "keep the whole prompt" cannot be honoured here: keep its first half instead
        n_keep = self.config.n_ctx_slot // 2 if req.n_keep < 0 else self._n_keep(req, len(prompt))
        block = max(1, (self.config.n_ctx_slot - n_keep) // 2)
        n_blocks = (len(prompt) - n_keep - block) // block
        return prompt[:n_keep] + prompt[n_keep + n_blocks * block:]

    def _shift_context(self, slot: Slot) -> None:
        """A generating slot whose cache is full drops part of it (--context-shift) to keep going."""
        gen = slot.gen
        n_keep = self._n_keep(gen.task.request, len(gen.prompt))
        n_left = slot.cache.n_past - n_keep
        n_discard = gen.task.request.n_discard or n_left // 2
        n_discard = max(0, min(n_discard, n_left - 1))
        log.info("slot %d: context shift, n_keep %d, n_discard %d", slot.id, n_keep, n_discard)
        self.model.shift_cache(slot.cache, n_keep, n_discard)
        gen.truncated = True

    def _step(self) -> None:
        for slot in self.slots:
            if slot.gen and slot.gen.task.cancelled.is_set():
                slot.release()  # the client went away: free the slot at once, keep what it computed

        budget = min(self.config.n_batch, self.config.n_ubatch)
        work: list[tuple[Slot, Segment, list[int]]] = []
        for slot in self.slots:
            if slot.gen and not slot.gen.pending:
                if slot.cache.n_past + 1 >= slot.cache.n_ctx:
                    self._shift_context(slot)  # only reached with --context-shift: else it stopped
                draft = self._draft(slot, budget - 1)
                if draft:
                    self.stats.n_draft_tokens += len(draft)
                    self.stats.n_draft_steps += 1
                work.append((slot, Segment(slot.cache, [slot.gen.last_token] + draft, all_logits=bool(draft)), draft))
                budget -= 1 + len(draft)
        for slot in sorted((s for s in self.slots if s.in_prompt), key=lambda s: s.gen.task.id):
            if budget <= 0:
                break
            chunk, slot.gen.pending = slot.gen.pending[:budget], slot.gen.pending[budget:]
            work.append((slot, Segment(slot.cache, chunk), []))
            budget -= len(chunk)
        if not work:
            return

        self.model.forward([seg for _, seg, _ in work])
        self.stats.n_decode_calls += 1
        self.stats.n_busy_slots_total += sum(s.is_processing for s in self.slots)
        now = time.perf_counter()
        for slot, seg, draft in work:
            gen = slot.gen
            self.stats.n_tokens_max = max(self.stats.n_tokens_max, slot.cache.n_past)
            if gen.t_prompt_done == 0.0:
                self._report_progress(slot, now)
                if gen.pending:
                    continue  # more prompt chunks to go
                if not self._prompt_done(slot, now):
                    continue
            self._accept(slot, seg, draft)

    def _report_progress(self, slot: Slot, now: float) -> None:
        """Tell a streaming client that asked (return_progress) how much of its prompt is evaluated."""
        gen = slot.gen
        req = gen.task.request
        if not (req.stream and req.return_progress):
            return
        n_cache = gen.timings.cache_n
        timings = None
        if req.timings_per_token:
            n_done = slot.cache.n_past - n_cache
            timings = Timings(cache_n=n_cache, prompt_n=n_done, prompt_ms=(now - gen.t_start) * 1e3 if n_done else 0.0)
        gen.task.sink(PromptProgress(total=len(gen.prompt), cache=n_cache, processed=slot.cache.n_past,
                                     time_ms=int((now - gen.t_start) * 1e3), timings=timings))

    def _prompt_done(self, slot: Slot, now: float) -> bool:
        """Book the slot's prompt as evaluated; False when that ends the request (n_predict 0)."""
        gen = slot.gen
        gen.t_prompt_done = now
        gen.timings.prompt_ms = (now - gen.t_start) * 1e3
        self.stats.n_prompt_tokens += gen.timings.prompt_n
        self.stats.t_prompt_ms += gen.timings.prompt_ms
        if gen.n_predict == 0:  # the prompt was all that was asked for
            self._finish(slot, "limit", False)
            return False
        return True

    def _draft(self, slot: Slot, room: int) -> list[int]:
        """Draft tokens to verify with this step's decode (greedy requests only: the text stays the same)."""
        gen, req = slot.gen, slot.gen.task.request
        if not req.speculative or req.sampling.temperature > 0 or room <= 0:
            return []
        if gen.draft_pause > 0:
            gen.draft_pause -= 1
            return []
        left = gen.n_predict - len(gen.generated) if gen.n_predict >= 0 else self.config.n_draft
        room = min(room, self.config.n_draft, left - 1, slot.cache.n_free - 2)
        return find_draft(slot.cache.tokens + [gen.last_token], room) if room > 0 else []

    def _accept(self, slot: Slot, seg: Segment, draft: list[int]) -> None:
        """Sample along the evaluated rows while they confirm the draft; drop what they refute."""
        gen = slot.gen
        n_before = slot.cache.n_past - len(seg.tokens)
        rows = seg.logits if seg.all_logits else seg.logits[None, :]
        for i, row in enumerate(rows):
            # what the cache really holds once this row's token is chosen: the rows before it
            n_kept = n_before + len(seg.tokens) if not draft else n_before + 1 + i
            token, stop_type, truncated = self._emit_token(slot, row, n_kept)
            if stop_type != "none" or i == len(draft) or token != draft[i]:
                slot.cache.truncate(n_kept)
                self.stats.n_draft_accepted += i
                if draft:
                    self._adapt_drafting(gen, accepted=i)
                self._go_on(slot, token, stop_type, truncated)
                return

    def _go_on(self, slot: Slot, token: int, stop_type: str, truncated: bool) -> None:
        """After a token is emitted: end the request, or make the token the next step's input."""
        if stop_type != "none":
            self._finish(slot, stop_type, truncated)
        else:
            slot.gen.last_token = token

    @staticmethod
    def _adapt_drafting(gen: Generation, accepted: int) -> None:
        """A refuted draft cost a wider forward for nothing: after each one in a row, wait twice as
        many steps (up to 64) before drafting again; an accepted token resets the wait."""
        if accepted:
            gen.draft_backoff = 1
        else:
            gen.draft_pause = gen.draft_backoff
            gen.draft_backoff = min(64, 2 * gen.draft_backoff)

    def _emit_token(self, slot: Slot, logits: np.ndarray, n_cached: int) -> tuple[int, str, bool]:
        """Choose the next token, send it to the client and say whether generation stops here."""
        gen, req, tok = slot.gen, slot.gen.task.request, self.tokenizer
        token = gen.sampler.sample(logits)
        gen.sampler.accept(token)
        gen.generated.append(token)
        piece = tok.token_to_piece(token, special=False)
        out = TokenOut(token=token, text="", piece=piece)
        if len(gen.generated) == 1:
            out.cache_n = gen.timings.cache_n
        if req.timings_per_token:
            out.timings = replace(gen.timings, predicted_n=len(gen.generated),
                                  predicted_ms=(time.perf_counter() - gen.t_prompt_done) * 1e3)
        if req.n_probs > 0:
            out.probs = gen.sampler.top_probs(logits, req.n_probs)
            out.prob = gen.sampler.token_prob(logits, token)
            gen.probs.append(out)

        stop_type, truncated = "none", False
        if tok.is_eog(token) and not req.sampling.ignore_eos:
            stop_type = "eos"
        else:
            out.text = gen.text.push(piece)
            if gen.text.stopping_word:
                stop_type = "word"
            elif n_cached + 1 >= slot.cache.n_ctx and not self.config.context_shift:
                stop_type, truncated = "limit", True  # no room to evaluate this token
            elif 0 <= gen.n_predict <= len(gen.generated):
                stop_type = "limit"
        if stop_type != "none":
            out.text += gen.text.finish()
        if req.stream:  # a non-streaming client reads only the result: spare it a wake-up per token
            gen.task.sink(out)
        return token, stop_type, truncated

    def _finish(self, slot: Slot, stop_type: str, truncated: bool) -> None:
        gen = slot.gen
        gen.timings.predicted_n = len(gen.generated)
        if gen.generated:  # as llama-server: no generation, no generation time
            gen.timings.predicted_ms = (time.perf_counter() - gen.t_prompt_done) * 1e3
        self.stats.n_predicted_tokens += gen.timings.predicted_n
        self.stats.n_predicted_steps += gen.timings.predicted_steps
        self.stats.t_predicted_ms += gen.timings.predicted_ms
        result = CompletionResult(
            id_slot=slot.id, content=gen.text.text, tokens=list(gen.generated), probs=gen.probs,
            stop_type=stop_type, stopping_word=gen.text.stopping_word, truncated=truncated or gen.truncated,
            tokens_evaluated=len(gen.prompt), tokens_cached=slot.cache.n_past, timings=gen.timings)
        slot.release()
        t = gen.timings
        log.info("slot %d, task %d: prompt %d tokens (%d cached) in %.1f ms, generated %d in %.1f ms (%.1f tok/s), "
                 "stop: %s", slot.id, gen.task.id, t.prompt_n, t.cache_n, t.prompt_ms, t.predicted_n, t.predicted_ms,
                 t.as_dict()["predicted_per_second"], stop_type)
        gen.task.sink(result)
