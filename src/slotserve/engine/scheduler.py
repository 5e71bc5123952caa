"""The engine: one thread that owns the model and every slot, and runs all work in batched steps.

Requests arrive as tasks on a queue. Each step, every slot in its decode phase evaluates its last token
(with a draft to verify, when it speculates) and slots in their prefill phase fill the rest of the batch
with prompt chunks, all in one forward pass (continuous batching). Slot save / restore / erase start on
the same thread between steps, so they never race a generation (their file work runs on a writer thread:
actions.py). After every launch, step and slot action the engine publishes a snapshot for /metrics and
/slots; a request hears nothing before the snapshot that shows it running, and its result is sent only
after the snapshot that shows it finished. With prompt-cache tiers (prompt_tiers.py), a task whose
prompt's prefix is on disk waits in its LOAD phase, off the step, while the other slots go on.
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
from ..kvcache.background import GATE
from ..kvcache.persist import SlotStore
from ..kvcache.prompt_cache import PromptCache
from ..model.forward import Llama, Segment
from ..model.sampling import Sampler
from ..model.tokenizer import Tokenizer
from .actions import SlotActions
from .context import shift_context, truncate_prompt
from .draft_model import DraftModel
from .emit import choose, completion_result, deliver, report_progress
from .grammar import Grammars
from .prompt_tiers import Pick, PromptTiers, pick_slot
from .sleep import IdleSleep
from .slot import Generation, Phase, Slot, common_prefix_len
from .snapshot import EngineSnapshot, EngineStats
from .speculative import PromptLookup, next_draft, verify
from .tasks import (CompletionResult, CompletionTask, EngineError, ErrorKind,
                    SlotActionTask, StopReason, Timings, check_task)
from .text import TextAssembler

log = logging.getLogger("slotserve.engine")
# of each step's time, given between steps to slot actions' copies and background file work: a slot that
# generates while others are saved or restored steps about 1.1x slower (kvcache/background.py)
BACKGROUND_SHARE = 0.1


@dataclass(frozen=True)
class EngineConfig:
    n_parallel: int = 1
    n_ctx_slot: int = 2048
    n_batch: int = 2048
    n_ubatch: int = 512
    kv_type: str = "f16"
    context_shift: bool = False
    slot_prompt_similarity: float = 0.1
    n_draft: int = 8  # most prompt-lookup draft tokens verified per step (--spec-draft-n-max)
    cache_idle_slots: bool = True  # with a RAM tier: store idle slots as a task starts elsewhere
    kv_unified: bool = False  # ... and then clear them, as llama-server does with a unified KV cache


class Engine:
    def __init__(self, model: Llama, tokenizer: Tokenizer, config: EngineConfig, store: SlotStore | None = None,
                 prompt_cache: PromptCache | None = None, vocab: GrammarVocab | None = None,
                 sleep: IdleSleep | None = None, draft: DraftModel | None = None):
        """vocab: the model's vocabulary for grammars, built at load; None builds it at the first constrained
        request. sleep: --sleep-idle-seconds (None: never sleep). draft: a draft model (-md), which then drafts
        for every request instead of prompt lookup."""
        self.model, self.tokenizer, self.config, self.store = model, tokenizer, config, store
        self.draft = draft
        self.grammars = Grammars(vocab or (lambda: GrammarVocab.from_tokenizer(tokenizer, n_vocab=model.hp.n_vocab)))
        self.slots = [Slot(i, None) for i in range(config.n_parallel)]
        self._inbox: queue.Queue = queue.Queue()
        self._allocate()
        self._stats = EngineStats()  # live, engine thread only: other threads read `snapshot`
        self.tiers = None if prompt_cache is None or not prompt_cache.enabled else PromptTiers(
            prompt_cache, config.cache_idle_slots and prompt_cache.ram.enabled, config.kv_unified,
            wake=lambda: self._inbox.put(None))
        self._waiting: deque = deque()  # tasks whose slot is busy, in arrival order
        self._step_s = 0.01  # the last step's time: background work gets a share of it between steps
        self._finals: list[tuple[CompletionTask, CompletionResult | EngineError]] = []  # sent after publishing
        self._publish()  # with the tiers' sizes and limits: /props shows them before the first request
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slotserve-engine", daemon=True)
        self._eog = [t for t in range(tokenizer.n_vocab) if tokenizer.is_eog(t)]
        self.sleep = sleep
        if sleep is not None:
            sleep.attach(lambda: self._inbox.put(None))

    def _allocate(self) -> None:
        """Every slot's KV cache and the restore scratch: at the start, and again after sleeping."""
        n_caches = len(self.slots) + (self.store is not None)  # a restore decodes into a scratch cache
        caches = [self.model.new_cache(self.config.n_ctx_slot, self.config.kv_type) for _ in range(n_caches)]
        for slot, cache in zip(self.slots, caches):
            slot.cache = cache
        scratch = caches[-1] if self.store is not None else None
        if scratch is not None:
            self.store.reserve(scratch)
        self.actions = SlotActions(self.slots, self.store, scratch, wake=lambda: self._inbox.put(None))

    # ---- called from other threads -------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        """The engine thread runs (a cluster replica's health check asks)."""
        return self._thread.is_alive()

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
        check_task(task, len(self.slots), self.config.n_ctx_slot, self.config.context_shift)
        if isinstance(task, CompletionTask) and task.request.constraint is not None:
            task.constraint = self.grammars.new(task.request.constraint)
        self._inbox.put(task)

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
            if self.sleep is not None and self.sleep.due(busy=bool(self._waiting) or not self._inbox.empty()
                                                         or any(s.is_processing for s in self.slots)):
                self._sleep()
                continue
            # a finished disk read or slot-file job wakes it; a save's rows still to copy must not wait for that
            self._collect(block=not self._steppable() and not self.actions.copying)
            self._resume_loads()
            self._dispatch()
            t_copy = time.perf_counter()
            # rows to copy: a share of a step's time while slots generate, else all at once
            self.actions.copy_rows(t_copy + BACKGROUND_SHARE * self._step_s if self._steppable() else float("inf"))
            if self._steppable():
                t_step = time.perf_counter()
                try:
                    with GATE.shut():  # background threads' file work waits for the step's end
                        self._step()
                    self._step_s = time.perf_counter() - t_step
                    GATE.lend(BACKGROUND_SHARE * self._step_s - (t_step - t_copy))
                except Exception as exc:  # a bug must not kill the thread that serves every client
                    log.exception("engine step failed")
                    for slot in self.slots:
                        if slot.gen and slot.gen.phase is not Phase.LOAD:  # a parked read still owns its slot
                            self._finals.append((slot.gen.task, EngineError(ErrorKind.SERVER,
                                                                            f"internal error: {exc}")))
                            slot.release()
            if self.tiers is not None:
                self.tiers.poll()
            self._answer_actions(self.actions.poll())
            self._send_finals()
        if self.actions is not None:  # None: stopped while asleep
            self._answer_actions(self.actions.close())
        if self.tiers is not None:
            self.tiers.close(self.slots)

    def _sleep(self) -> None:
        """Idle for --sleep-idle-seconds: give back the model and the caches, and load them again when work
        comes. Nothing is published meanwhile: /metrics shows the state from before sleeping."""
        self._answer_actions(self.actions.close())  # its writer thread and snapshot buffers go too
        self.model = self.actions = None  # first: the engine's references must not keep the memory
        if self.draft is not None:
            self.draft.release()
        self.sleep.fall_asleep(self.slots, self.tiers)
        tasks = self.sleep.wait_for_work(self._inbox, self._stop)
        if tasks is not None:  # None: the server is stopping
            self._waiting.extend(tasks)
            self.model = self.sleep.load()
            if self.draft is not None:
                self.draft.attach(self.sleep.hooks.load_draft())
            self._allocate()
            self._publish()  # before the waiting requests go on: /slots must not show the slots from before
            self.sleep.awake()

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
        """Start the action if its slot is idle (False: it waits), or refuse it (its client left, or it
        waited too long); what ends here is published before it is answered."""
        outcome = self.actions.refusal(task, time.monotonic())
        if outcome is None:
            if not self.actions.ready(task):
                return False
            try:
                outcome = self.actions.start(task)
            except EngineError as exc:
                outcome = exc
        if outcome is not None:  # None: it runs on the writer thread, actions.poll() ends it
            self._answer_actions([(task, outcome)])
        return True

    def _answer_actions(self, done: list) -> None:
        if not done:
            return
        self._publish()
        for task, outcome in done:
            if task.future.cancelled():  # the coroutine awaiting it was cancelled: nobody to answer
                continue
            if isinstance(outcome, EngineError):
                task.future.set_exception(outcome)
            else:
                task.future.set_result(outcome)

    def _launch(self, pick: Pick, task: CompletionTask) -> None:
        req, cfg, slot = task.request, self.config, pick.slot
        prompt, truncated, n_shared = list(req.prompt_tokens), False, pick.n_shared
        if len(prompt) >= cfg.n_ctx_slot:  # only with --context-shift: check() refused it otherwise
            prompt, truncated = truncate_prompt(prompt, req, cfg.n_ctx_slot, self.tokenizer.add_bos), True
            n_shared = common_prefix_len(slot.cache.tokens, prompt)  # another prompt than the one picked for
        sampler = Sampler(req.sampling, self.tokenizer.n_vocab, self._eog)
        sampler.accept_prompt(prompt)  # llama-server's penalties see the prompt too
        # greedy or sampled: verify() keeps the output distribution (and a seed's output) unchanged
        speculates = req.speculative
        slot.gen = Generation(task=task, prompt=prompt, pending=prompt, sampler=sampler,
                              text=TextAssembler(req.stop), n_predict=req.n_predict, timings=Timings(),
                              drafter=self._drafter(slot) if speculates else None, truncated=truncated,
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
        report_progress(slot.gen, slot.cache.n_past, slot.gen.t_start)
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
                draft = next_draft(slot.gen, slot.cache, budget - 1, self.config.n_draft)
                if draft:
                    self._stats.n_draft_tokens += len(draft)
                    self._stats.n_draft_steps += 1
                    slot.gen.timings.draft_n += len(draft)
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
                report_progress(gen, slot.cache.n_past, now)
                if gen.pending or not self._end_prefill(slot, now):
                    continue  # more prompt chunks to go, or the prompt was all that was asked for
            self._advance(slot, seg.logits, draft)

    def _drafter(self, slot: Slot):
        return PromptLookup(self.config.n_draft) if self.draft is None else self.draft.drafter(slot.id)

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
            gen.timings.draft_n_accepted += n_accepted
        if stop is StopReason.NONE:
            gen.last_token = choice.token
        else:
            self._finish(slot, stop)

    def _finish(self, slot: Slot, stop: StopReason) -> None:
        gen = slot.gen
        result = completion_result(slot, stop)
        self._stats.n_predicted_tokens += gen.timings.predicted_n
        self._stats.n_predicted_steps += gen.timings.predicted_steps
        self._stats.t_predicted_ms += gen.timings.predicted_ms
        slot.release()
        self._finals.append((gen.task, result))
