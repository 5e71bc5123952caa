"""The engine: one thread that owns the model and every slot, and runs all work in batched steps.

Requests arrive as tasks on a queue. Each step, every slot in its decode phase evaluates its last token
(with a draft to verify, when it speculates) and slots in their prefill phase fill the rest of the batch
with prompt chunks, all in one forward pass (continuous batching). Slot save / restore / erase run on
the same thread between steps, so they never race a generation. After every launch, step and slot action
the engine publishes a snapshot for /metrics and /slots; a request hears nothing before the snapshot
that shows it running, and its result is sent only after the snapshot that shows it finished. With prompt-cache tiers (prompt_tiers.py), a task whose prompt's prefix
is on disk waits in its LOAD phase, off the step, while the other slots go on.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..constraint import ConstraintError, GrammarVocab
from ..kvcache.persist import SlotStore
from ..kvcache.prompt_cache import PromptCache
from ..model.forward import Llama, Segment
from ..model.sampling import Sampler
from ..model.tokenizer import Tokenizer
from .actions import SlotActions
from .context import shift_context, truncate_prompt
from .emit import choose, deliver
from .grammar import Grammars
from .prompt_tiers import Pick, PromptTiers, pick_slot
from .slot import Generation, Phase, Slot, common_prefix_len
from .snapshot import EngineSnapshot, EngineStats
from .speculative import PromptLookup, verify
from .tasks import (CompletionResult, CompletionTask, EngineError, ErrorKind, PromptProgress,
                    SlotActionKind, SlotActionTask, StopReason, Timings, bad_slot, exceed_context)
from .text import TextAssembler

log = logging.getLogger("slotserve.engine")


@dataclass(frozen=True)
class EngineConfig:
    n_parallel: int = 1
    n_ctx_slot: int = 2048
    n_batch: int = 2048
    n_ubatch: int = 512
    kv_type: str = "f16"
    context_shift: bool = False
    slot_prompt_similarity: float = 0.1
    n_draft: int = 8  # most prompt-lookup draft tokens verified per step
    cache_idle_slots: bool = True  # with a RAM tier: store idle slots as a task starts elsewhere
    kv_unified: bool = False  # ... and then clear them, as llama-server does with a unified KV cache


class Engine:
    def __init__(self, model: Llama, tokenizer: Tokenizer, config: EngineConfig, store: SlotStore | None = None,
                 prompt_cache: PromptCache | None = None, vocab: GrammarVocab | None = None):
        """vocab: the model's vocabulary for grammars, built at load; None builds it at the first constrained
        request."""
        self.model, self.tokenizer, self.config, self.store = model, tokenizer, config, store
        self.grammars = Grammars(vocab or (lambda: GrammarVocab.from_tokenizer(tokenizer, n_vocab=model.hp.n_vocab)))
        self.slots = [Slot(i, model.new_cache(config.n_ctx_slot, config.kv_type)) for i in range(config.n_parallel)]
        scratch = None
        if store is not None:
            scratch = model.new_cache(config.n_ctx_slot, config.kv_type)
            store.reserve(scratch)
        self.actions = SlotActions(self.slots, store, scratch)
        self._stats = EngineStats()  # live, engine thread only: other threads read `snapshot`
        self._inbox: queue.Queue = queue.Queue()
        self.tiers = None if prompt_cache is None or not prompt_cache.enabled else PromptTiers(
            prompt_cache, config.cache_idle_slots and prompt_cache.ram.enabled, config.kv_unified,
            wake=lambda: self._inbox.put(None))
        self._waiting: deque = deque()  # tasks whose slot is busy, in arrival order
        self._finals: list[tuple[CompletionTask, CompletionResult | EngineError]] = []  # sent after publishing
        self._published = EngineSnapshot.of(self.slots, self._stats, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slotserve-engine", daemon=True)
        self._eog = [t for t in range(tokenizer.n_vocab) if tokenizer.is_eog(t)]

    # ---- called from other threads -------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(None)
        # with a disk tier the engine thread writes the cached states out before it ends
        self._thread.join(timeout=10 if self.tiers is None or self.tiers.cache.disk is None else 120)
        self._send_finals()
        # nobody will serve what is still queued: answer it rather than leave clients waiting
        self._collect(block=False)
        shutdown = EngineError(ErrorKind.UNAVAILABLE, "the server is shutting down")
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
        """Queue a task. A task the engine can never serve raises EngineError here, on the caller's thread,
        before anything is queued or streamed; a constrained completion gets its Constraint here."""
        self.check(task)
        if isinstance(task, CompletionTask) and task.request.constraint is not None:
            task.constraint = self.grammars.new(task.request.constraint)
        self._inbox.put(task)

    def check(self, task: CompletionTask | SlotActionTask) -> None:
        """The engine's rules for a task, which hold whatever the slots are doing; raises EngineError."""
        n_slots, cfg = len(self.slots), self.config
        if isinstance(task, SlotActionTask):
            if task.action is not SlotActionKind.DELETE and not 0 <= task.id_slot < n_slots:
                raise bad_slot(task.id_slot, n_slots)
            return
        req = task.request
        if not -1 <= req.id_slot < n_slots:
            raise bad_slot(req.id_slot, n_slots)
        if not req.prompt_tokens:
            raise EngineError(ErrorKind.INVALID_REQUEST, "the prompt is empty")
        if len(req.prompt_tokens) >= cfg.n_ctx_slot and not cfg.context_shift:
            raise exceed_context(len(req.prompt_tokens), cfg.n_ctx_slot)

    @property
    def n_queued(self) -> int:
        """Tasks submitted and not started: those waiting for a busy slot at the last snapshot, and those the
        engine thread has not collected yet (read from any thread; a moment's estimate, for admission)."""
        return self._published.n_waiting + self._inbox.qsize()

    @property
    def snapshot(self) -> EngineSnapshot:
        """The state after the latest step or slot action (an immutable object: read it from any thread)."""
        return self._published

    # ---- the engine thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._collect(block=not self._steppable())  # a finished disk read wakes it (PromptTiers)
            self._resume_loads()
            self._dispatch()
            if self._steppable():
                try:
                    self._step()
                except Exception as exc:  # a bug must not kill the thread that serves every client
                    log.exception("engine step failed")
                    for slot in self.slots:
                        if slot.gen and slot.gen.phase is not Phase.LOAD:  # a parked read still owns its slot
                            self._finals.append((slot.gen.task, EngineError(ErrorKind.SERVER,
                                                                            f"internal error: {exc}")))
                            slot.release()
            if self.tiers is not None:
                self.tiers.poll()
            self._send_finals()
        if self.tiers is not None:
            self.tiers.close(self.slots)

    def _steppable(self) -> bool:
        return any(s.in_phase(Phase.PREFILL) or s.in_phase(Phase.DECODE) for s in self.slots)

    def _publish(self) -> None:
        self._published = EngineSnapshot.of(self.slots, self._stats, len(self._waiting),
                                            None if self.tiers is None else self.tiers.stats())

    def _send_finals(self) -> None:
        """Publish, then answer the requests that ended: a client that reads /slots or /metrics after its
        answer sees its request finished."""
        self._publish()
        finals, self._finals = self._finals, []
        for task, item in finals:
            task.sink(item)

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
        """Start what can start, in arrival order; the rest goes back in line (one pass over the line, so
        that len(_waiting), published by a slot action meanwhile, counts every task still waiting)."""
        for _ in range(len(self._waiting)):
            task = self._waiting.popleft()
            if isinstance(task, SlotActionTask):
                if not self._slot_action(task):
                    self._waiting.append(task)
            elif not task.cancelled.is_set():
                picked = pick_slot(self.slots, task.request, self.config.slot_prompt_similarity)
                if picked is None:
                    self._waiting.append(task)
                else:
                    self._launch(picked, task)

    def _slot_action(self, task: SlotActionTask) -> bool:
        """Run the action if its slot is idle (False: it waits); publish before answering."""
        if not self.actions.ready(task):
            return False
        try:
            outcome = self.actions.run(task)
        except EngineError as exc:
            self._publish()
            task.future.set_exception(exc)
        else:
            self._publish()
            task.future.set_result(outcome)
        return True

    def _launch(self, pick: Pick, task: CompletionTask) -> None:
        req, cfg, slot = task.request, self.config, pick.slot
        prompt, truncated, n_shared = list(req.prompt_tokens), False, pick.n_shared
        if len(prompt) >= cfg.n_ctx_slot:  # only with --context-shift: check() refused it otherwise
            prompt, truncated = truncate_prompt(prompt, req, cfg.n_ctx_slot, self.tokenizer.add_bos), True
            n_shared = common_prefix_len(slot.cache.tokens, prompt)  # another prompt than the one picked for
        sampler = Sampler(req.sampling, self.tokenizer.n_vocab, self._eog)
        sampler.accept_prompt(prompt)  # llama-server's penalties see the prompt too
        # drafts are verified greedily: only a greedy request keeps its text unchanged by them
        speculates = req.speculative and req.sampling.temperature <= 0
        slot.gen = Generation(task=task, prompt=prompt, pending=prompt, sampler=sampler,
                              text=TextAssembler(req.stop), n_predict=req.n_predict, timings=Timings(),
                              drafter=PromptLookup(cfg.n_draft) if speculates else None, truncated=truncated,
                              constraint=task.constraint)
        # publish before the client hears anything (progress, a first token after a whole prefill step):
        # a client with any chunk of its stream finds its slot busy in /slots
        self._publish()
        if self.tiers is not None:
            n_shared = self.tiers.take(pick, prompt, req.cache_prompt)
            self.tiers.started(self.slots)
            if n_shared is None:
                slot.gen.phase = Phase.LOAD  # _resume_loads goes on once the disk read is in
                return
        self._start_prompt(slot, n_shared)

    def _resume_loads(self) -> None:
        for slot in self.slots:
            if slot.in_phase(Phase.LOAD) and self.tiers.read_done(slot):
                slot.gen.phase = Phase.PREFILL
                self._start_prompt(slot, self.tiers.finish(slot))

    def _start_prompt(self, slot: Slot, n_shared: int) -> None:
        """The slot's cache shares n_shared prompt tokens: keep what the request may reuse, and evaluate the rest."""
        gen = slot.gen
        prompt = gen.prompt
        n_cached = n_shared if gen.task.request.cache_prompt else 0
        known = n_cached == len(prompt) == slot.cache.n_past and slot.cache.logits is not None
        if n_cached == len(prompt) and not known:
            n_cached -= 1  # the last prompt token is evaluated again: its logits give the first token
        slot.cache.truncate(n_cached)
        self._stats.n_prompt_tokens_cached += n_cached
        gen.pending, gen.timings = prompt[n_cached:], Timings(cache_n=n_cached, prompt_n=len(prompt) - n_cached)
        self._report_progress(slot, slot.gen.t_start)
        if known and self._end_prefill(slot, time.perf_counter()):
            # the cache holds the whole prompt and the output after it: the first token needs no forward
            self._advance(slot, slot.cache.logits[None, :], [])

    def _step(self) -> None:
        for slot in self.slots:
            if slot.gen and slot.gen.phase is not Phase.LOAD and slot.gen.task.cancelled.is_set():
                slot.release()  # the client went away: free the slot at once, keep what it computed

        budget = min(self.config.n_batch, self.config.n_ubatch)
        work: list[tuple[Slot, Segment, list[int]]] = []
        for slot in self.slots:
            if slot.in_phase(Phase.DECODE):
                if slot.cache.n_past + 1 >= slot.cache.n_ctx:
                    shift_context(self.model, slot, self.tokenizer.add_bos)  # only with --context-shift
                draft = self._draft(slot, budget - 1)
                if draft:
                    self._stats.n_draft_tokens += len(draft)
                    self._stats.n_draft_steps += 1
                work.append((slot, Segment(slot.cache, [slot.gen.last_token] + draft, all_logits=bool(draft)), draft))
                budget -= 1 + len(draft)
        for slot in sorted((s for s in self.slots if s.in_phase(Phase.PREFILL)), key=lambda s: s.gen.task.id):
            if budget <= 0:
                break
            chunk, slot.gen.pending = slot.gen.pending[:budget], slot.gen.pending[budget:]
            work.append((slot, Segment(slot.cache, chunk), []))
            budget -= len(chunk)
        if not work:
            return

        self.model.forward([seg for _, seg, _ in work])
        self._stats.n_decode_calls += 1
        self._stats.n_busy_slots_total += sum(s.is_processing for s in self.slots)
        now = time.perf_counter()
        for slot, seg, draft in work:
            gen = slot.gen
            self._stats.n_tokens_max = max(self._stats.n_tokens_max, slot.cache.n_past)
            if gen.phase is Phase.PREFILL:
                self._report_progress(slot, now)
                if gen.pending or not self._end_prefill(slot, now):
                    continue  # more prompt chunks to go, or the prompt was all that was asked for
            self._advance(slot, seg.logits, draft)

    def _draft(self, slot: Slot, room: int) -> list[int]:
        """Tokens to verify with this step's decode of the slot (room: what is left of the batch)."""
        gen = slot.gen
        if gen.drafter is None:
            return []
        left = self.config.n_draft if gen.n_remain is None else gen.n_remain
        draft = gen.drafter.draft(slot.cache.tokens, gen.last_token, room, min(left - 1, slot.cache.n_free - 2))
        if draft and gen.constraint is not None:
            draft = draft[:gen.constraint.draft_prefix(draft)]  # tokens the grammar refuses cannot be confirmed
        return draft

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

    def _end_prefill(self, slot: Slot, now: float) -> bool:
        """Book the slot's prompt as evaluated and enter the decode phase; False when that ends the request
        (n_predict 0)."""
        gen = slot.gen
        gen.t_prompt_done = now
        gen.timings.prompt_ms = (now - gen.t_start) * 1e3
        self._stats.n_prompt_tokens += gen.timings.prompt_n
        self._stats.t_prompt_ms += gen.timings.prompt_ms
        if gen.n_predict == 0:  # the prompt was all that was asked for
            self._finish(slot, StopReason.LIMIT)
            return False
        gen.phase = Phase.DECODE
        return True

    def _advance(self, slot: Slot, rows: np.ndarray, draft: list[int]) -> None:
        """Choose and deliver the slot's next tokens from the rows of logits its segment produced (one row,
        or one per draft token plus one when verifying a draft), then end the request or go on decoding."""
        gen = slot.gen
        try:
            # each choice moves the constraint past its token, so row i is chosen under the grammar's state
            # after draft[:i]: a refuted draft leaves nothing to roll back
            chosen = verify(draft, rows, lambda row: choose(gen, row))
        except ConstraintError as exc:
            # this request cannot go on; the others in the batch do. The first line names the problem, the
            # rest is llguidance's parser state
            slot.cache.truncate(slot.cache.n_past - len(draft))
            message = str(exc).split("\n", 1)[0]
            self._finals.append((gen.task, EngineError(ErrorKind.INVALID_REQUEST, f"generation stopped: {message}")))
            slot.release()
            return
        n_first = slot.cache.n_past - len(rows) + 1  # tokens the cache holds once row 0's token is chosen
        for n_accepted, choice in enumerate(chosen):
            n_cached = n_first + n_accepted
            stop = deliver(gen, choice, self.tokenizer,
                           context_full=n_cached + 1 >= slot.cache.n_ctx and not self.config.context_shift)
            if stop is not StopReason.NONE:
                break
        slot.cache.truncate(n_cached)  # draft tokens after the last accepted one were evaluated for nothing
        self._stats.n_draft_accepted += n_accepted
        if draft:
            gen.drafter.feedback(n_accepted)
        if stop is StopReason.NONE:
            gen.last_token = choice.token
        else:
            self._finish(slot, stop)

    def _finish(self, slot: Slot, stop: StopReason) -> None:
        gen = slot.gen
        gen.timings.predicted_n = len(gen.generated)
        if gen.generated:  # as llama-server: no generation, no generation time
            gen.timings.predicted_ms = (time.perf_counter() - gen.t_prompt_done) * 1e3
        self._stats.n_predicted_tokens += gen.timings.predicted_n
        self._stats.n_predicted_steps += gen.timings.predicted_steps
        self._stats.t_predicted_ms += gen.timings.predicted_ms
        result = CompletionResult(
            id_slot=slot.id, content=gen.text.text, tokens=list(gen.generated), probs=gen.probs,
            stop_type=stop, stopping_word=gen.text.stopping_word, truncated=gen.truncated,
            tokens_evaluated=len(gen.prompt), tokens_cached=slot.cache.n_past, timings=gen.timings)
        slot.release()
        t = gen.timings
        log.info("slot %d, task %d: prompt %d tokens (%d cached) in %.1f ms, generated %d in %.1f ms (%.1f tok/s), "
                 "stop: %s", slot.id, gen.task.id, t.prompt_n, t.cache_n, t.prompt_ms, t.predicted_n, t.predicted_ms,
                 t.as_dict()["predicted_per_second"], stop)
        self._finals.append((gen.task, result))
