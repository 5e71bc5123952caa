"""What every dialect's answers share: llama-server's settings JSON, token probabilities, timings with
prompt progress, SSE framing, and the Answer every dialect's answer class builds on.

Field names and their order follow server-task.cpp, so clients written against llama-server parse ours.
"""
from __future__ import annotations

import json
import math
import secrets
import string
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from ...constraint import ConstraintSpec
from ...engine.tasks import CompletionRequest, CompletionResult, PromptProgress, TokenOut
from ...engine.text import complete_utf8_len
from ...model.sampling import SamplingParams
from ...model.tokenizer import Tokenizer
from ..errors import ApiError
from ..schema import Generation
from ..toolcalls import Answered, Delta

FLOAT_LOWEST = -3.4028234663852886e38  # llama-server reports log(0) as this: JSON has no -inf
SAMPLERS = ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]


def seed_json(seed: int) -> int:
    return 0xFFFFFFFF if seed < 0 else seed  # llama.cpp's seed is a uint32; "random" is 0xFFFFFFFF


def params_json(s: SamplingParams, *, n_predict: int, stop: list[str], stream: bool,
                only_metrics: bool = False, timings_per_token: bool = False, eog_ids: Sequence[int] = (),
                constraint: ConstraintSpec | None = None) -> dict:
    """llama-server's task_params::to_json. Samplers slotserve lacks appear with their disabled values.

    eog_ids: with ignore_eos, llama-server lists a -inf bias (JSON null) for each of them in logit_bias.
    constraint: the request's grammar, json_schema or response_format (its text, laziness and triggers)."""
    out = {
        "seed": seed_json(s.seed), "temperature": s.temperature, "dynatemp_range": 0.0, "dynatemp_exponent": 1.0,
        "top_k": s.top_k, "top_p": s.top_p, "min_p": s.min_p, "top_n_sigma": -1.0, "xtc_probability": 0.0,
        "xtc_threshold": 0.1, "typical_p": s.typical_p, "repeat_last_n": s.repeat_last_n,
        "repeat_penalty": s.repeat_penalty, "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty, "dry_multiplier": 0.0, "dry_base": 1.75, "dry_allowed_length": 2,
        "dry_penalty_last_n": -1,
    }
    if not only_metrics:
        out["dry_sequence_breakers"] = ["\n", ":", "\"", "*"]
    out.update({"mirostat": 0, "mirostat_tau": 5.0, "mirostat_eta": 0.1, "adaptive_target": -1.0,
                "adaptive_decay": 0.9})
    if not only_metrics:
        out["stop"] = list(stop)
    out.update({"max_tokens": n_predict, "n_predict": n_predict, "n_keep": 0, "n_discard": 0,
                "ignore_eos": s.ignore_eos, "stream": stream})
    if not only_metrics:
        biases = list(s.logit_bias) + ([(t, -math.inf) for t in eog_ids] if s.ignore_eos else [])
        out["logit_bias"] = [{"bias": b if math.isfinite(b) else None, "token": t} for t, b in biases]
    out.update({"n_probs": s.n_probs, "min_keep": 0})
    if not only_metrics:
        c = constraint
        out.update({"grammar": c.text if c else "", "grammar_lazy": bool(c and c.lazy),
                    "grammar_triggers": [t.to_json() for t in c.triggers] if c else [], "preserved_tokens": []})
    out.update({"chat_format": "Content-only", "reasoning_format": "none", "reasoning_in_content": False,
                "generation_prompt": "", "samplers": list(SAMPLERS), "speculative.types": "none",
                "timings_per_token": timings_per_token, "post_sampling_probs": s.post_sampling_probs,
                "backend_sampling": False, "lora": []})
    return out


def request_params_json(req: CompletionRequest, only_metrics: bool = False, eog_ids: Sequence[int] = ()) -> dict:
    """The settings one request ran with; its n_predict is the resolved one (the schema applied -n)."""
    return params_json(req.sampling, n_predict=req.n_predict, stop=req.stop, stream=req.stream,
                       only_metrics=only_metrics, timings_per_token=req.timings_per_token, eog_ids=eog_ids,
                       constraint=req.constraint)


def utf8_text(piece: bytes) -> str:
    """A token's text as llama-server shows it: an unfinished trailing UTF-8 sequence is cut off."""
    return piece[:complete_utf8_len(piece)].decode("utf-8", errors="replace")


def _logprob(p: float) -> float:
    return FLOAT_LOWEST if p <= 0.0 else math.log(p)


def probs_json(outs: list[TokenOut], tok: Tokenizer, post_sampling: bool) -> list[dict]:
    """completion_probabilities: per generated token its (log)prob and the top-n alternatives."""
    key, top_key = ("prob", "top_probs") if post_sampling else ("logprob", "top_logprobs")
    value = (lambda p: p) if post_sampling else _logprob

    def entry(token: int, piece: bytes, p: float) -> dict:
        return {"id": token, "token": utf8_text(piece), "bytes": list(piece), key: value(p)}

    out = []
    for o in outs:
        e = entry(o.token, o.piece, o.prob or 0.0)
        e[top_key] = [entry(t, tok.token_to_piece(t, special=False), p) for t, p in (o.probs or [])]
        out.append(e)
    return out


def with_timings(res: dict, item: TokenOut | CompletionResult) -> dict:
    if item.timings is not None:
        res["timings"] = item.timings.as_dict()
    return res


def with_progress(res: dict, p: PromptProgress) -> dict:
    """A streamed chunk with llama-server's prompt_progress (and the timings so far, when asked for)."""
    if p.timings is not None:
        res["timings"] = p.timings.as_dict()
    res["prompt_progress"] = {"total": p.total, "cache": p.cache, "processed": p.processed, "time_ms": p.time_ms}
    return res


def random_id(prefix: str) -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(32))


# ---- SSE framing ---------------------------------------------------------------------------------------

def sse(obj) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n"


def event(kind: str, **data) -> dict:
    """One typed streamed event (Anthropic's, the Responses API's): written as `event: <type>` then `data:`."""
    return {"event": kind, "data": {"type": kind, **data}}


def sse_events(events: list[dict]) -> str:
    return "".join(f"event: {e['event']}\n" + sse(e["data"]) for e in events)


# ---- the answer ----------------------------------------------------------------------------------------

@dataclass
class Answer:
    """One request's answer in some dialect: the whole body, or its stream events item by item. Subclasses
    (one per dialect) write the shapes; `State` is what their stream remembers per answer index."""
    model: str
    tok: Tokenizer
    build_info: str
    gen: Generation
    cmpl_id: str = field(default_factory=lambda: random_id("chatcmpl-"))
    created: int = field(default_factory=lambda: int(time.time()))
    streams: dict = field(init=False)

    @dataclass
    class State:
        n_decoded: int = 0
        calls: object = None  # with tools: the api.toolcalls.CallStream reading the answer as it streams

    def __post_init__(self):
        self.streams = defaultdict(type(self).State)

    def body(self, results: list[CompletionResult]):
        """The whole answer of a request that does not stream."""
        raise NotImplementedError

    def events(self, index: int, item: TokenOut | PromptProgress | CompletionResult) -> str:
        """The server-sent events for one item the engine reported for answer `index`."""
        s = self.streams[index]
        if isinstance(item, TokenOut):
            s.n_decoded += 1
            return self.token_events(index, item, s)
        if isinstance(item, PromptProgress):
            return self.progress_events(index, item, s)
        return self.final_events(index, item, s)

    def token_events(self, index: int, out: TokenOut, s) -> str:
        raise NotImplementedError

    def answered(self, r: CompletionResult) -> Answered:
        """A finished answer as content and tool calls (without tools, all of it is content)."""
        if self.gen.tool_calls is None:
            return Answered(r.content, [])
        return self.gen.tool_calls.answer(r.content)

    def deltas(self, text: str, s, final: bool = False) -> list[Delta]:
        """What a streamed piece of text adds to the answer: content, and with tools the calls' starts and
        argument pieces (text that may still open a call waits; `final` lets it go)."""
        if self.gen.tool_calls is None:
            return [Delta(content=text)] if text else []
        if s.calls is None:
            s.calls = self.gen.tool_calls.stream()
        return s.calls.push(text, final=final)

    @staticmethod
    def made_calls(s) -> bool:
        return s.calls is not None and s.calls.n_done > 0

    def progress_events(self, index: int, p: PromptProgress, s) -> str:
        return ""  # a dialect whose events have no place for it sends nothing

    def final_events(self, index: int, r: CompletionResult, s) -> str:
        raise NotImplementedError

    def end(self) -> str:
        """What closes a stream after the last answer's events."""
        return ""

    def error(self, err: ApiError) -> str:
        """An error after the stream has started can only travel as an event (as llama-server sends it)."""
        return sse(err.body())
