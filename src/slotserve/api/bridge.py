"""Between asyncio and the engine thread: submit tasks, receive what their sinks report.

The engine calls a task's sink on its own thread; the sink hops onto the event loop with
call_soon_threadsafe, so all HTTP-side state stays on the loop. When the client goes away the
tasks are cancelled, and the engine frees their slots at its next step.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import Future

from starlette.requests import Request

from ..engine.scheduler import Engine
from ..engine.tasks import CompletionRequest, CompletionResult, CompletionTask, EngineError, SlotActionTask
from .errors import from_engine

POLL_S = 0.25  # how often a waiting non-streaming request checks that its client is still there


class Run:
    """The engine tasks of one HTTP request. Items arrive as (index, TokenOut | CompletionResult | EngineError)."""

    def __init__(self, engine: Engine, requests: list[CompletionRequest]):
        self.engine = engine
        self.queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.tasks = [CompletionTask(req, sink=self._sink(i, loop)) for i, req in enumerate(requests)]
        self.pending = set(range(len(self.tasks)))  # indices not yet finished
        self._next_poll = 0.0  # loop time of the next client-disconnect check

    def _sink(self, index: int, loop: asyncio.AbstractEventLoop):
        def sink(item) -> None:
            try:
                loop.call_soon_threadsafe(self.queue.put_nowait, (index, item))
            except RuntimeError:
                pass  # the loop is closed (server shutting down): nobody is waiting for this any more
        return sink

    def start(self) -> None:
        """Submit every task. The engine refuses a task it can never run (a slot that does not exist, an
        empty prompt, one that cannot fit) by raising EngineError here; then the tasks already submitted
        are cancelled and the error goes on to the route."""
        for n, task in enumerate(self.tasks):
            try:
                self.engine.submit(task)
            except EngineError:
                for submitted in self.tasks[:n]:
                    submitted.cancelled.set()
                raise

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancelled.set()

    async def next(self, request: Request | None = None):
        """The next item; None if the client disconnected (only checked when `request` is given)."""
        loop = asyncio.get_running_loop()
        while True:
            # by the clock, not only on silence: a generation sends tokens far more often than POLL_S
            if request is not None and loop.time() >= self._next_poll:
                self._next_poll = loop.time() + POLL_S
                if await request.is_disconnected():
                    return None
            try:
                index, item = await asyncio.wait_for(self.queue.get(), POLL_S if request is not None else None)
            except asyncio.TimeoutError:
                continue
            if isinstance(item, (CompletionResult, EngineError)):
                self.pending.discard(index)
            return index, item

    async def next_within(self, seconds: float | None):
        """The next item, or None when none arrived within `seconds` (None: wait as long as it takes)."""
        if seconds is None:
            return await self.next()
        try:
            return await asyncio.wait_for(self.next(), seconds)  # a cancelled get() takes nothing off the queue
        except asyncio.TimeoutError:
            return None

    @property
    def done(self) -> bool:
        return not self.pending

    async def finals(self, request: Request) -> list[CompletionResult] | None:
        """Wait for every task's result, in index order. None if the client left; an engine error raises
        (and cancels the other tasks of this request)."""
        results: dict[int, CompletionResult] = {}
        try:
            while not self.done:
                got = await self.next(request)
                if got is None:
                    return None
                index, item = got
                if isinstance(item, EngineError):
                    raise from_engine(item)
                if isinstance(item, CompletionResult):
                    results[index] = item
        finally:
            if not self.done:
                self.cancel()
        return [results[i] for i in range(len(self.tasks))]


async def slot_action(engine: Engine, action: str, id_slot: int = -1, filename: str = "",
                      request: Request | None = None, timeout_s: float | None = None):
    """Run a slot action on the engine thread and await its result (exceptions come back raised).

    While it waits, the client is checked every POLL_S (when `request` is given): once it has gone the
    action is cancelled, and the engine drops it unless it already started. timeout_s: how long it may
    wait for a busy slot before the engine refuses it."""
    task = SlotActionTask(action=action, id_slot=id_slot, filename=filename, future=Future(), timeout_s=timeout_s)
    engine.submit(task)
    future = asyncio.wrap_future(task.future)
    while request is not None and not task.cancelled.is_set():
        done, _ = await asyncio.wait({future}, timeout=POLL_S)
        if done:
            break
        if await request.is_disconnected():
            task.cancelled.set()
    return await future
