"""What the engine tests share: a real engine on stories260K, and requests run through it without HTTP."""
import queue

import pytest

from slotserve.engine.scheduler import Engine, EngineConfig
from slotserve.engine.tasks import CompletionRequest, CompletionTask, TokenOut
from slotserve.model.forward import Llama
from slotserve.model.loader import load_model
from slotserve.model.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def loaded(stories_path):
    """stories260K, loaded once per test module (import this fixture where it is used)."""
    return load_model(stories_path)


def new_engine(loaded, store=None, **config) -> Engine:
    eng = Engine(Llama(loaded.hparams, loaded.weights), loaded.tokenizer, EngineConfig(**config), store)
    eng.start()
    return eng


def submit(engine, tokenizer, prompt, **kw):
    """Start a completion; returns (queue of outputs, task)."""
    out: queue.Queue = queue.Queue()
    req = CompletionRequest(tokenizer.tokenize(prompt, True, True), kw.pop("sampling", GREEDY), **kw)
    task = CompletionTask(req, out.put)
    engine.submit(task)
    return out, task


def result_of(out: queue.Queue, timeout=60):
    tokens = []
    while True:
        item = out.get(timeout=timeout)
        if isinstance(item, TokenOut):
            tokens.append(item)
        else:
            return item, tokens


def complete(engine, tokenizer, prompt, **kw):
    return result_of(submit(engine, tokenizer, prompt, **kw)[0])[0]
