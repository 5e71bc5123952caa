"""The request schema: one pydantic model per request body, and the engine requests they become.

Field names, aliases and coercions are llama-server's (server-task.cpp, params_from_json_cmpl): null is
the field left out, 8.0 is 8, max_tokens / max_completion_tokens are n_predict, n is n_cmpl, logprobs is
n_probs. Every server default (-n, the sampling flags, --verbose, --sse-ping-interval) is applied here,
once: the engine gets a complete CompletionRequest and the dialects read the resolved values.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Callable, Sequence

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from ..constraint import ConstraintError, ConstraintSpec, from_chat, from_fields
from ..engine.tasks import CompletionRequest
from ..model.sampling import SamplingParams
from ..model.tokenizer import Tokenizer
from .errors import invalid
from .fields import (INT32_MAX, Bool, Int, Num, Object, Seconds, Stop, Strings, as_bool, as_int, as_num, field_error,
                     is_number)

_INT_KEY = re.compile(r"\s*[+-]?\d+")  # what strtol(key, &end, 10) consumes entirely


@dataclass(frozen=True)
class ServerDefaults:
    """What the command line decides for a request that does not say."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    n_predict: int = -1
    n_parallel: int = 1
    verbose: bool = False
    sse_ping_interval: float = 30.0


@dataclass
class Generation:
    """Everything a completion-style request asks for, checked and with the server's defaults applied."""
    requests: list[CompletionRequest]  # one per prompt x n_cmpl, in answer order
    stream: bool = False
    return_tokens: bool = False
    include_usage: bool = False
    response_fields: list[str] = field(default_factory=list)
    verbose: bool = False  # OpenAI-style answers carry the native one as "__verbose"
    tool_calls: Any = None  # a chat request's api.toolcalls.ToolCalls: how its answer's calls are read back
    sse_ping_s: float | None = None  # seconds of stream silence before a ping; None: never


def validate(model: type[BaseModel], body: dict, server: ServerDefaults | None = None):
    """`body` as `model`; a refusal is the 400 naming the field (our validators raise it themselves)."""
    try:
        return model.model_validate(body, context={"server": server or ServerDefaults()})
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"]) or "body"
        raise field_error(name, "is required" if err["type"] == "missing" else f"is not valid: {err['msg']}") from None


def documented(model: type[BaseModel]) -> dict:
    """openapi_extra for a route that reads its JSON itself (read_json): `model` as its documented body."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _unsupported_when(is_off: Callable[[float], bool], what: str):
    """A llama-server feature slotserve lacks: its disabled value (or a non-number, ignored) passes; anything
    else is refused, since the request would silently get different text."""
    def check(v, info: ValidationInfo):
        if not is_number(v):
            return None
        if not is_off(v):
            raise field_error(info.field_name, what)
        return v
    return Annotated[float | None, BeforeValidator(check)]


_SAMPLER_OFF = "is a sampler slotserve does not support; leave it unset (or at its disabled value)"
OffIfPositive = _unsupported_when(lambda v: v <= 0, _SAMPLER_OFF)


def _grammar_text(v, info: ValidationInfo):
    return v if isinstance(v, str) else ""  # llama-server reads a grammar that is not a string as none


def _constraint(read: Callable[[dict], ConstraintSpec | None], fields: dict) -> ConstraintSpec | None:
    """The constraint the request's fields ask for; one that does not compile is a 400 naming the problem."""
    try:
        return read(fields)
    except ConstraintError as exc:
        raise invalid(str(exc)) from None


def _no_lora(v, info: ValidationInfo):
    if v != []:
        raise field_error("lora", "asks for LoRA adapters, which slotserve does not support")
    return v


def _logit_bias_form(v, info: ValidationInfo):
    if not isinstance(v, (list, dict)):
        raise field_error("logit_bias", "must be an array of [token, bias] pairs or an object")
    return v


def _repeat_penalty(v, info: ValidationInfo):
    x = as_num("repeat_penalty", v)
    if x <= 0.0 or not math.isfinite(1.0 / x):
        raise field_error("repeat_penalty", "must be finite and greater than 0")
    return x


def _n_cmpl(v, info: ValidationInfo):
    return as_int(info.field_name, v, 1, info.context["server"].n_parallel)


def _any_int(v, info: ValidationInfo):
    return as_int(info.field_name, v, None, None)


class Body(BaseModel):
    """A request body: unknown fields are ignored and null means absent, as in llama-server."""
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data):
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class SamplingFields(Body):
    temperature: Num = None
    top_k: Int() = None
    top_p: Num = None
    min_p: Num = None
    typical_p: Num = None
    repeat_penalty: Annotated[float | None, BeforeValidator(_repeat_penalty)] = None
    repeat_last_n: Int(lo=0) = None
    presence_penalty: Num = None
    frequency_penalty: Num = None
    seed: Annotated[int | None, BeforeValidator(_any_int)] = None  # uint32 in llama.cpp: -1 is "random"
    n_probs: Annotated[int | None, BeforeValidator(_any_int)] = None
    ignore_eos: Bool = None
    post_sampling_probs: Bool = None
    logit_bias: Annotated[list | dict | None, BeforeValidator(_logit_bias_form)] = None
    # llama-server's samplers and constraints that slotserve lacks: refused unless off
    mirostat: _unsupported_when(lambda v: v == 0, _SAMPLER_OFF) = None
    dry_multiplier: OffIfPositive = None
    xtc_probability: OffIfPositive = None
    dynatemp_range: OffIfPositive = None
    top_n_sigma: OffIfPositive = None
    adaptive_target: _unsupported_when(lambda v: v < 0, _SAMPLER_OFF) = None
    # constrained output (compiled by constraint/): GBNF, or Lark after %llguidance; a JSON schema
    grammar: Annotated[str | None, BeforeValidator(_grammar_text)] = None
    json_schema: Any = None
    grammar_lazy: Bool = None
    grammar_triggers: Any = None  # [{"type": 0-3, "value": str[, "token": int]}], checked with the grammar
    lora: Annotated[list | None, BeforeValidator(_no_lora)] = None

    def requested_n_probs(self) -> int | None:
        return self.n_probs

    def constraint_fields(self) -> dict:
        return {"grammar": self.grammar, "json_schema": self.json_schema, "grammar_lazy": self.grammar_lazy,
                "grammar_triggers": self.grammar_triggers}

    def constraint(self) -> ConstraintSpec | None:
        """What the output must match (grammar, json_schema, lazy grammar triggers), as llama-server reads it."""
        return _constraint(from_fields, self.constraint_fields())

    def sampling(self, defaults: SamplingParams, tokenize: Callable[[str], Sequence[int]]) -> SamplingParams:
        """Over the server's settings; clamped where llama-server clamps (top_k, top_p, min_p, temperature).
        `tokenize(text)` gives ids without BOS, as llama-server's common_tokenize(vocab, text, false)."""
        clamp = lambda x, lo, hi: max(lo, min(hi, x))  # noqa: E731
        given = {
            "temperature": None if self.temperature is None else max(0.0, self.temperature),
            "top_k": None if self.top_k is None else clamp(self.top_k, 0, INT32_MAX),
            "top_p": None if self.top_p is None else clamp(self.top_p, 0.0, 1.0),
            "min_p": None if self.min_p is None else clamp(self.min_p, 0.0, 1.0),
            "typical_p": self.typical_p, "repeat_penalty": self.repeat_penalty, "repeat_last_n": self.repeat_last_n,
            "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
            "n_probs": self.requested_n_probs(), "ignore_eos": self.ignore_eos,
            "post_sampling_probs": self.post_sampling_probs,
            "logit_bias": None if self.logit_bias is None else logit_bias(self.logit_bias, tokenize),
        }
        if self.seed is not None:
            s = self.seed & 0xFFFFFFFF  # -1 wraps to llama.cpp's "random" seed
            given["seed"] = -1 if s == 0xFFFFFFFF else s
        return replace(defaults, **{k: v for k, v in given.items() if v is not None})


def logit_bias(v: list | dict, tokenize: Callable[[str], Sequence[int]]) -> tuple[tuple[int, float], ...]:
    """llama-server's two forms, [[token, bias], ...] and {"token": bias}; a token may be text (every piece
    of its tokenization gets the bias); bias false bans. Malformed entries are skipped, as llama-server does."""
    if isinstance(v, list):
        pairs = [(el[0], el[1]) for el in v if isinstance(el, list) and len(el) == 2]
    else:
        pairs = [(int(k) if _INT_KEY.fullmatch(k) else k, b) for k, b in v.items()]
    out: list[tuple[int, float]] = []
    for tok, b in pairs:
        if b is False:
            bias = -math.inf
        elif is_number(b):
            bias = float(b)
        else:
            continue
        if isinstance(tok, int) and not isinstance(tok, bool):
            if tok >= 0:
                out.append((tok, bias))
        elif isinstance(tok, str):
            out.extend((int(t), bias) for t in tokenize(tok))
    return tuple(out)


class GenerationFields(SamplingFields):
    """The fields every text-generating endpoint takes (the native names; OpenAI's are aliases)."""
    n_predict: Int(lo=-1) = None
    max_completion_tokens: Int(lo=-1) = None
    max_tokens: Int(lo=-1) = None
    n_cmpl: Annotated[int | None, BeforeValidator(_n_cmpl)] = None
    n: Annotated[int | None, BeforeValidator(_n_cmpl)] = None
    id_slot: Int(lo=-1) = None  # whether the slot exists is the engine's to say
    stop: Stop = None
    cache_prompt: Bool = None
    stream: Bool = None
    stream_options: Object = None
    n_keep: Int(lo=-1) = None
    n_discard: Int(lo=0) = None
    return_progress: Bool = None
    timings_per_token: Bool = None
    return_tokens: Bool = None
    response_fields: Strings = None
    verbose: Bool = None
    sse_ping_interval: Seconds = None

    def generation(self, prompts: list[list[int]], server: ServerDefaults, tok: Tokenizer) -> Generation:
        sampling = self.sampling(server.sampling, tokenize=lambda s: tok.tokenize(s, False, False))
        n_predict = next((v for v in (self.n_predict, self.max_completion_tokens, self.max_tokens)
                          if v is not None), -1)
        # the server's -n is a default, not a cap (llama-server 11434 generates 16 tokens for n_predict 16
        # under -n 8); after this, -1 means unlimited
        n_predict = server.n_predict if n_predict == -1 else n_predict
        n_cmpl = next((v for v in (self.n_cmpl, self.n) if v is not None), 1)
        include_usage = (self.stream_options or {}).get("include_usage")
        ping = server.sse_ping_interval if self.sse_ping_interval is None else self.sse_ping_interval
        base = CompletionRequest(
            prompt_tokens=[], sampling=sampling, n_predict=n_predict, stop=self.stop or [],
            id_slot=-1 if self.id_slot is None else self.id_slot,
            cache_prompt=self.cache_prompt is not False, n_probs=max(0, sampling.n_probs),
            stream=bool(self.stream), n_keep=self.n_keep or 0, n_discard=self.n_discard or 0,
            return_progress=bool(self.return_progress), timings_per_token=bool(self.timings_per_token),
            constraint=self.constraint())
        requests = [replace(base, prompt_tokens=list(p), stop=list(base.stop)) for p in prompts for _ in range(n_cmpl)]
        return Generation(
            requests=requests, stream=base.stream, return_tokens=bool(self.return_tokens),
            include_usage=include_usage is not None and as_bool("stream_options.include_usage", include_usage),
            response_fields=list(self.response_fields or []),
            verbose=server.verbose if self.verbose is None else self.verbose,
            sse_ping_s=ping if ping > 0 else None)


def _int_or_bool(v, info: ValidationInfo):
    # the alias of n_probs; a boolean counts as 0 / 1, as a chat request's logprobs may have left it
    return int(v) if isinstance(v, bool) else as_int(info.field_name, v, None, None)


class CompletionBody(GenerationFields):
    """POST /completion: llama-server's own completion request."""
    prompt: Any = Field(None, description="a string, token ids, a mix of both, {'prompt_string': ...}, "
                                          "or a list of those (several prompts)")
    logprobs: Annotated[int | None, BeforeValidator(_int_or_bool)] = None

    def requested_n_probs(self) -> int | None:
        return self.logprobs if self.n_probs is None else self.n_probs


def _no_echo(v, info: ValidationInfo):
    if v:
        raise field_error("echo", "is not supported: only no echo is")
    return v


def _unsupported_param(v, info: ValidationInfo):
    raise field_error(info.field_name, "is an unsupported param")


class OaiCompletionBody(CompletionBody):
    """POST /v1/completions: what the OpenAI API has and slotserve cannot do is refused rather than ignored
    (llama-server's oaicompat_completion_params_parse)."""
    echo: Annotated[Any, BeforeValidator(_no_echo)] = None
    best_of: Annotated[Any, BeforeValidator(_unsupported_param)] = None
    suffix: Annotated[Any, BeforeValidator(_unsupported_param)] = None


class ChatBody(GenerationFields):
    """POST /v1/chat/completions (and /apply-template): OpenAI chat messages through the chat template."""
    messages: Any = Field(description="an array of {role, content} messages")
    # checked by api/toolcalls against the template's call format (chat.tool_plan)
    tools: Any = Field(None, description="function tools the model may call")
    tool_choice: Any = Field(None, description="auto, none, required or {type: function, function: {name}}")
    parallel_tool_calls: Any = None
    response_format: Any = None  # text, json_object (its "schema", else any object) or json_schema
    add_generation_prompt: Bool = None
    continue_final_message: Any = Field(None, description="vLLM's: true (or \"content\") continues the last "
                                                             "assistant message instead of opening a new turn")
    chat_template_kwargs: Object = None
    logprobs: Bool = None
    top_logprobs: Annotated[int | None, BeforeValidator(_any_int)] = None

    def requested_n_probs(self) -> int | None:
        if self.logprobs:
            return 20 if self.top_logprobs is None else self.top_logprobs
        if self.top_logprobs is not None:
            raise field_error("top_logprobs", "requires logprobs to be set to true")
        if self.n_probs is not None:
            return self.n_probs
        return None if self.logprobs is None else 0

    def constraint(self) -> ConstraintSpec | None:
        """A chat request's: response_format over json_schema, and grammar (both with a json_schema is a 400)."""
        return _constraint(from_chat, {**self.constraint_fields(), "response_format": self.response_format})


class TokenizeBody(Body):
    """POST /tokenize."""
    content: Any = Field(None, description="a string, or a list mixing strings and token ids")
    add_special: Bool = None
    parse_special: Bool = None
    with_pieces: Bool = None


class DetokenizeBody(Body):
    """POST /detokenize."""
    tokens: Any = Field(None, description="an array of token ids")
