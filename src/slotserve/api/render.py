"""The JSON llama-server answers with: native /completion results and the OpenAI shapes.

Field names and their order follow server-task.cpp (to_json_non_oaicompat, to_json_oaicompat,
to_json_oaicompat_chat and their streaming chunks), so clients written against llama-server parse ours.
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

from ..engine.tasks import CompletionRequest, CompletionResult, PromptProgress, TokenOut, effective_n_predict
from ..engine.text import complete_utf8_len
from ..model.sampling import SamplingParams
from ..model.tokenizer import Tokenizer
from . import anthropic, responses
from .errors import ApiError, sse_error
from .parsing import Generation

FLOAT_LOWEST = -3.4028234663852886e38  # llama-server reports log(0) as this: JSON has no -inf
SAMPLERS = ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]


def seed_json(seed: int) -> int:
    return 0xFFFFFFFF if seed < 0 else seed  # llama.cpp's seed is a uint32; "random" is 0xFFFFFFFF


def params_json(s: SamplingParams, *, n_predict: int, stop: list[str], stream: bool,
                only_metrics: bool = False, timings_per_token: bool = False, eog_ids: Sequence[int] = ()) -> dict:
    """llama-server's task_params::to_json. Samplers slotserve lacks appear with their disabled values.

    eog_ids: with ignore_eos, llama-server lists a -inf bias (JSON null) for each of them in logit_bias."""
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
        out.update({"grammar": "", "grammar_lazy": False, "grammar_triggers": [], "preserved_tokens": []})
    out.update({"chat_format": "Content-only", "reasoning_format": "none", "reasoning_in_content": False,
                "generation_prompt": "", "samplers": list(SAMPLERS), "speculative.types": "none",
                "timings_per_token": timings_per_token, "post_sampling_probs": s.post_sampling_probs,
                "backend_sampling": False, "lora": []})
    return out


def request_params_json(req: CompletionRequest, server_n_predict: int, only_metrics: bool = False,
                        eog_ids: Sequence[int] = ()) -> dict:
    return params_json(req.sampling, n_predict=effective_n_predict(req.n_predict, server_n_predict),
                       stop=req.stop, stream=req.stream, only_metrics=only_metrics,
                       timings_per_token=req.timings_per_token, eog_ids=eog_ids)


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


def nested_fields(paths: list[str], res: dict) -> dict:
    """llama-server's response_fields: keep only these; "a/b" lifts res["a"]["b"] to the key "a/b"."""
    out = {}
    for path in paths:
        cur, ok = res, True
        for part in path.split("/"):
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            else:
                ok = False
                break
        if ok:
            out[path] = cur
    return out


def with_progress(res: dict, p: PromptProgress) -> dict:
    """A streamed chunk with llama-server's prompt_progress (and the timings so far, when asked for)."""
    if p.timings is not None:
        res["timings"] = p.timings.as_dict()
    res["prompt_progress"] = {"total": p.total, "cache": p.cache, "processed": p.processed, "time_ms": p.time_ms}
    return res


def event(kind: str, **data) -> dict:
    """One typed streamed event (Anthropic's, the Responses API's): written as `event: <type>` then `data:`."""
    return {"event": kind, "data": {"type": kind, **data}}


def random_id(prefix: str) -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(32))


# the API shapes one engine request can be answered in
NATIVE, OAI, CHAT, ANTHROPIC, RESPONSES = "native", "oai", "chat", "anthropic", "responses"


def sse(obj) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n"


def sse_events(events: list[dict]) -> str:
    """Typed events (Anthropic's, the Responses API's): `event: <type>` before each data line."""
    return "".join(f"event: {e['event']}\n" + sse(e["data"]) for e in events)


@dataclass
class StreamState:
    """What a stream has sent so far for one of a request's answers."""
    n_decoded: int = 0
    has_new_line: bool = False
    has_text: bool = False
    started: bool = False  # the Responses API's response.created is out


@dataclass
class Answer:
    """What every rendering of one request's results needs."""
    model: str
    tok: Tokenizer
    build_info: str
    gen: Generation
    server_n_predict: int
    mode: str = NATIVE
    verbose: bool = False  # --verbose: OpenAI-style answers carry the native one as "__verbose", as llama-server's
    cmpl_id: str = field(default_factory=lambda: random_id("chatcmpl-"))
    resp_id: str = field(default_factory=lambda: random_id("resp_"))  # the Responses API's ids
    msg_id: str = field(default_factory=lambda: random_id("msg_"))
    created: int = field(default_factory=lambda: int(time.time()))
    streams: dict[int, StreamState] = field(default_factory=lambda: defaultdict(StreamState))

    # ---- by mode -----------------------------------------------------------------------------

    def body(self, results: list[CompletionResult]):
        """The whole answer of a request that does not stream."""
        if self.mode == OAI:
            return self.oai_completion(results)
        if self.mode == CHAT:
            return self.chat(results)
        if self.mode == ANTHROPIC:
            return self.anthropic(results[0])
        if self.mode == RESPONSES:
            return self.oai_response(results[0])
        native = [self.native_final(i, r, has_new_line="\n" in r.content) for i, r in enumerate(results)]
        return native[0] if len(native) == 1 else native

    def stream_text(self, index: int, item: TokenOut | PromptProgress | CompletionResult) -> str:
        """The server-sent events for one item the engine reported for answer `index`."""
        s, mode = self.streams[index], self.mode
        if isinstance(item, TokenOut):
            s.n_decoded += 1
            s.has_new_line |= "\n" in item.text
            if mode == NATIVE:
                text = sse(self.native_partial(index, item, s.n_decoded))
            elif mode == OAI:
                text = sse(self.oai_completion_chunk(index, item))
            elif mode == CHAT:
                text = "".join(map(sse, self.chat_chunks(index, item, first=s.n_decoded == 1)))
            elif mode == ANTHROPIC:
                text = sse_events(self.anthropic_events(index, item, s.n_decoded, s.has_text))
            else:
                text = sse_events(self.response_events(item, s.started, s.has_text))
            s.has_text |= bool(item.text)
        elif isinstance(item, PromptProgress):
            if mode == NATIVE:
                text = sse(self.native_progress(index, item, s.n_decoded))
            elif mode == OAI:
                text = sse(self.oai_completion_progress(index, item))
            elif mode == CHAT:
                text = sse(self.chat_progress(index, item))
            elif mode == RESPONSES:
                text = sse_events(self.response_events(item, s.started, s.has_text))
            else:
                text = ""  # Anthropic's events have no place for it
        elif mode == NATIVE:
            text = sse(self.native_final(index, item, has_new_line=s.has_new_line))
        elif mode == OAI:
            text = sse(self.oai_completion_final_chunk(index, item))
        elif mode == CHAT:
            text = "".join(map(sse, self.chat_final_chunks(index, item)))
        elif mode == ANTHROPIC:
            text = sse_events(self.anthropic_final_events(item, s.has_text))
        else:
            text = sse_events(self.response_final_events(item))
        s.started = True
        return text

    def stream_end(self) -> str:
        """The OpenAI streams end with [DONE]; llama-server's own, Anthropic's and the Responses API's don't."""
        return "data: [DONE]\n\n" if self.mode in (OAI, CHAT) else ""

    def stream_error(self, err: ApiError) -> str:
        if self.mode == ANTHROPIC:  # llama-server: an `error` event carrying the error object itself
            return "event: error\n" + sse(err.body()["error"])
        return sse_error(err)

    # ---- native /completion ------------------------------------------------------------------

    def native_final(self, index: int, r: CompletionResult, *, has_new_line: bool) -> dict:
        req = self.gen.requests[index]
        stream = self.gen.stream
        res = {
            "index": index,
            "content": "" if stream else r.content,
            "tokens": [] if stream or not self.gen.return_tokens else list(r.tokens),
            "id_slot": r.id_slot,
            "stop": True,
            "model": self.model,
            "tokens_predicted": len(r.tokens),
            "tokens_evaluated": r.tokens_evaluated,
            "generation_settings": request_params_json(req, self.server_n_predict, eog_ids=self.tok.eog_ids),
            "prompt": self.tok.detokenize(req.prompt_tokens, unparse_special=True),
            "has_new_line": has_new_line,
            "truncated": r.truncated,
            "stop_type": r.stop_type,
            "stopping_word": r.stopping_word,
            "tokens_cached": r.tokens_cached,
            "timings": r.timings.as_dict(),
        }
        if not stream and req.n_probs > 0 and r.probs:
            res["completion_probabilities"] = probs_json(r.probs, self.tok, req.sampling.post_sampling_probs)
        return nested_fields(self.gen.response_fields, res) if self.gen.response_fields else res

    def native_partial(self, index: int, out: TokenOut, n_decoded: int) -> dict:
        req = self.gen.requests[index]
        res = {"index": index, "content": out.text, "tokens": [out.token], "stop": False, "id_slot": -1,
               "tokens_predicted": n_decoded, "tokens_evaluated": len(req.prompt_tokens)}
        if out.timings is not None:
            res["timings"] = out.timings.as_dict()
        if req.n_probs > 0 and out.probs is not None:
            res["completion_probabilities"] = probs_json([out], self.tok, req.sampling.post_sampling_probs)
        return res

    def native_progress(self, index: int, p: PromptProgress, n_decoded: int) -> dict:
        res = {"index": index, "content": "", "tokens": [], "stop": False, "id_slot": -1,
               "tokens_predicted": n_decoded, "tokens_evaluated": p.total}
        return with_progress(res, p)

    # ---- OpenAI ------------------------------------------------------------------------------

    @staticmethod
    def finish_reason(r: CompletionResult) -> str:
        return "stop" if r.stop_type in ("word", "eos") else "length"

    @staticmethod
    def usage(r: CompletionResult) -> dict:
        n_gen, n_prompt = len(r.tokens), r.tokens_evaluated
        return {"completion_tokens": n_gen, "prompt_tokens": n_prompt, "total_tokens": n_gen + n_prompt,
                "prompt_tokens_details": {"cached_tokens": r.timings.cache_n}}

    def _envelope(self, obj: str) -> dict:
        return {"created": self.created, "model": self.model, "system_fingerprint": self.build_info,
                "object": obj, "id": self.cmpl_id}

    def _logprobs(self, index: int, outs: list[TokenOut]) -> dict | None:
        req = self.gen.requests[index]
        if req.n_probs <= 0 or not outs or outs[0].probs is None:
            return None
        return {"content": probs_json(outs, self.tok, req.sampling.post_sampling_probs)}

    def _with_verbose(self, res: dict, index: int, r: CompletionResult) -> dict:
        if self.verbose:
            res["__verbose"] = self.native_final(index, r, has_new_line="\n" in r.content)
        return res

    def oai_completion(self, results: list[CompletionResult]) -> dict:
        stream = self.gen.stream
        choices = [{"text": "" if stream else r.content, "index": i,
                    "logprobs": None if stream else self._logprobs(i, r.probs),
                    "finish_reason": self.finish_reason(r)} for i, r in enumerate(results)]
        return self._with_verbose({"choices": choices, **self._envelope("text_completion"),
                                   "usage": self.usage(results[0]), "timings": results[0].timings.as_dict()},
                                  0, results[0])

    def oai_completion_final_chunk(self, index: int, r: CompletionResult) -> dict:
        return self._with_verbose(
            {"choices": [{"text": "", "index": index, "logprobs": None, "finish_reason": self.finish_reason(r)}],
             **self._envelope("text_completion"), "usage": self.usage(r), "timings": r.timings.as_dict()}, index, r)

    def oai_completion_chunk(self, index: int, out: TokenOut) -> dict:
        res = {"choices": [{"text": out.text, "index": index, "logprobs": self._logprobs(index, [out]),
                            "finish_reason": None}], **self._envelope("text_completion")}
        if out.timings is not None:
            res["timings"] = out.timings.as_dict()
        return res

    def oai_completion_progress(self, index: int, p: PromptProgress) -> dict:
        return with_progress({"choices": [{"text": "", "index": index, "logprobs": None, "finish_reason": None}],
                              **self._envelope("text_completion")}, p)

    def chat(self, results: list[CompletionResult]) -> dict:
        choices = []
        for i, r in enumerate(results):
            choice = {"finish_reason": self.finish_reason(r), "index": i,
                      "message": {"role": "assistant", "content": r.content}}
            logprobs = self._logprobs(i, r.probs)
            if logprobs is not None:
                choice["logprobs"] = logprobs
            choices.append(choice)
        return self._with_verbose({"choices": choices, **self._envelope("chat.completion"),
                                   "usage": self.usage(results[0]), "timings": results[0].timings.as_dict()},
                                  0, results[0])

    def _chat_chunk(self, index: int, delta: dict, finish_reason: str | None = None) -> dict:
        return {"choices": [{"finish_reason": finish_reason, "index": index, "delta": delta}],
                **self._envelope("chat.completion.chunk")}

    def chat_chunks(self, index: int, out: TokenOut, first: bool) -> list[dict]:
        """OpenAI clients expect a first delta carrying only the role, then content deltas."""
        chunks = []
        if first:
            chunks.append(self._chat_chunk(index, {"role": "assistant", "content": None}))
        if out.text:
            chunks.append(self._chat_chunk(index, {"content": out.text}))
        logprobs = self._logprobs(index, [out])
        if chunks and logprobs is not None:
            chunks[-1]["choices"][0]["logprobs"] = logprobs
        if chunks and out.timings is not None:
            chunks[-1]["timings"] = out.timings.as_dict()
        return chunks

    def chat_progress(self, index: int, p: PromptProgress) -> dict:
        """As llama-server: a progress update is a role-only delta carrying prompt_progress."""
        return with_progress(self._chat_chunk(index, {"role": "assistant", "content": None}), p)

    def chat_final_chunks(self, index: int, r: CompletionResult) -> list[dict]:
        chunks = [self._with_verbose(self._chat_chunk(index, {}, self.finish_reason(r)), index, r)]
        if self.gen.include_usage:
            chunks.append({"choices": [], **self._envelope("chat.completion.chunk"), "usage": self.usage(r)})
        chunks[-1]["timings"] = r.timings.as_dict()
        return chunks

    # ---- Anthropic Messages --------------------------------------------------------------------

    def anthropic(self, r: CompletionResult) -> dict:
        return {"id": self.cmpl_id, "type": "message", "role": "assistant",
                "content": [{"type": "text", "text": r.content}] if r.content else [], "model": self.model,
                "stop_reason": anthropic.stop_reason(r.stop_type), "stop_sequence": r.stopping_word or None,
                "usage": anthropic.usage(r.tokens_evaluated, r.timings.cache_n, len(r.tokens))}

    def anthropic_events(self, index: int, out: TokenOut, n_decoded: int, text_started: bool) -> list[dict]:
        """message_start with the first token, then the text block: opened at the first text, one delta a token."""
        events = []
        if n_decoded == 1:
            n_prompt = len(self.gen.requests[index].prompt_tokens)
            events.append(event("message_start", message={
                "id": self.cmpl_id, "type": "message", "role": "assistant", "content": [], "model": self.model,
                "stop_reason": None, "stop_sequence": None, "usage": anthropic.usage(n_prompt, out.cache_n or 0, 0)}))
        if out.text:
            if not text_started:
                events.append(event("content_block_start", index=0, content_block={"type": "text", "text": ""}))
            events.append(event("content_block_delta", index=0, delta={"type": "text_delta", "text": out.text}))
        return events

    def anthropic_final_events(self, r: CompletionResult, text_started: bool) -> list[dict]:
        events = [event("content_block_stop", index=0)] if text_started else []
        return events + [
            event("message_delta", delta={"stop_reason": anthropic.stop_reason(r.stop_type),
                                          "stop_sequence": r.stopping_word or None},
                  usage={"output_tokens": len(r.tokens)}),
            event("message_stop")]

    # ---- OpenAI Responses ----------------------------------------------------------------------

    def _response(self, status: str, **more) -> dict:
        return {"id": self.resp_id, "object": "response", "status": status, **more}

    def _message_item(self, text: str, status: str) -> dict:
        return {"type": "message", "status": status, "id": self.msg_id, "role": "assistant",
                "content": [responses.text_part(text)] if status == "completed" else []}

    def oai_response(self, r: CompletionResult) -> dict:
        t = int(time.time())
        return {"completed_at": t, "created_at": t, **self._response("completed"), "model": self.model,
                "output": [self._message_item(r.content, "completed")] if r.content else [],
                "usage": responses.usage(r.tokens_evaluated, r.timings.cache_n, len(r.tokens))}

    def response_events(self, out: TokenOut | PromptProgress, started: bool, text_started: bool) -> list[dict]:
        """The events for a streamed token or progress update: response.created and .in_progress first,
        the message item and its text part at the first text, then a text delta a token."""
        events = []
        if not started:
            events.append(event("response.created", response=self._response("in_progress")))
        if not started or isinstance(out, PromptProgress):
            events.append(event("response.in_progress", response=self._response("in_progress")))
        if isinstance(out, TokenOut) and out.text:
            if not text_started:
                events.append(event("response.output_item.added", item=self._message_item("", "in_progress")))
                events.append(event("response.content_part.added", item_id=self.msg_id,
                                    part={"type": "output_text", "text": ""}))
            events.append(event("response.output_text.delta", item_id=self.msg_id, delta=out.text))
        if events and isinstance(out, PromptProgress):
            with_progress(events[-1]["data"], out)
        elif events and out.timings is not None:
            events[-1]["data"]["timings"] = out.timings.as_dict()
        return events

    def response_final_events(self, r: CompletionResult) -> list[dict]:
        events, output = [], []
        if r.content:
            item = self._message_item(r.content, "completed")
            events += [event("response.output_text.done", item_id=self.msg_id, text=r.content),
                       event("response.content_part.done", item_id=self.msg_id, part=item["content"][0]),
                       event("response.output_item.done", item=item)]
            output.append(item)
        done = event("response.completed", response=self._response(
            "completed", created_at=int(time.time()), model=self.model, output=output,
            usage=responses.usage(r.tokens_evaluated, r.timings.cache_n, len(r.tokens))))
        done["data"]["timings"] = r.timings.as_dict()
        return events + [done]
