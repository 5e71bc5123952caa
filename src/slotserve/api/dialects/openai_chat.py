"""OpenAI chat completions: POST /v1/chat/completions (and /chat/completions), llama-server's
to_json_oaicompat_chat and its chunks. The messages become a prompt through the chat template."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ...engine.tasks import CompletionResult, PromptProgress, TokenOut
from ..chat import chat_prompt, tool_plan
from ..errors import invalid
from ..prompts import tokenize_prompts
from ..schema import ChatBody, Generation, validate
from ..state import ApiState
from .openai import OpenAIAnswer, finish_reason, usage
from ..toolcalls import Delta
from .shared import sse, with_progress

PATHS = ("/chat/completions", "/v1/chat/completions")
INPUT_TOKENS_PATHS = ("/chat/completions/input_tokens", "/v1/chat/completions/input_tokens")
Body = ChatBody


def parse_chat(body: dict, st: ApiState) -> Generation:
    """A chat-completions body (also what the Anthropic and Responses dialects translate theirs into)."""
    req = validate(ChatBody, body, st.defaults)
    tok = st.model.tokenizer
    tools = tool_plan(req, st.chat_template)
    gen = req.generation(tokenize_prompts(tok, chat_prompt(req, st.chat_template, tools)), st.defaults, tok)
    if tools is not None:
        calls = tools.constraint()
        if calls is not None:
            if gen.requests[0].constraint is not None:  # one grammar per generation: the calls' or the client's
                raise invalid("Cannot use a grammar, json_schema or response_format together with tools "
                              "(unless tool_choice is 'none')")
            gen.requests = [replace(r, constraint=calls) for r in gen.requests]
        gen.tool_calls = tools
    return gen


parse = parse_chat


def input_tokens_json(n_prompt: int) -> dict:
    return {"input_tokens": n_prompt, "object": "response.input_tokens"}


def delta_json(d: Delta) -> dict:
    """One streamed piece as OpenAI's chunk delta: text, a call's id and name first, then its arguments."""
    if d.index < 0:
        return {"content": d.content}
    if d.name is not None:
        call = {"index": d.index, "id": d.id, "type": "function", "function": {"name": d.name, "arguments": ""}}
    else:
        call = {"index": d.index, "function": {"arguments": d.arguments}}
    return {"tool_calls": [call]}


@dataclass
class Answer(OpenAIAnswer):
    def message(self, r: CompletionResult) -> tuple[dict, str]:
        """The choice's message and finish_reason: with tools, the calls read out of the text."""
        got = self.answered(r)
        msg = {"role": "assistant", "content": got.content}
        if got.calls:
            msg["tool_calls"] = [c.openai() for c in got.calls]
        return msg, "tool_calls" if got.calls else finish_reason(r)

    def body(self, results: list[CompletionResult]) -> dict:
        choices = []
        for i, r in enumerate(results):
            message, reason = self.message(r)
            choice = {"finish_reason": reason, "index": i, "message": message}
            logprobs = self.logprobs(i, r.probs)
            if logprobs is not None:
                choice["logprobs"] = logprobs
            choices.append(choice)
        return self.with_verbose({"choices": choices, **self.envelope("chat.completion"),
                                  "usage": usage(results[0]), "timings": results[0].timings.as_dict()},
                                 0, results[0])

    def _chunk(self, index: int, delta: dict, finish_reason: str | None = None) -> dict:
        return {"choices": [{"finish_reason": finish_reason, "index": index, "delta": delta}],
                **self.envelope("chat.completion.chunk")}

    def token_events(self, index: int, out: TokenOut, s) -> str:
        """OpenAI clients expect a first delta carrying only the role, then content deltas."""
        chunks = []
        if s.n_decoded == 1:
            chunks.append(self._chunk(index, {"role": "assistant", "content": None}))
        chunks += [self._chunk(index, delta_json(d)) for d in self.deltas(out.text, s)]
        logprobs = self.logprobs(index, [out])
        if chunks and logprobs is not None:
            chunks[-1]["choices"][0]["logprobs"] = logprobs
        if chunks and out.timings is not None:
            chunks[-1]["timings"] = out.timings.as_dict()
        return "".join(map(sse, chunks))

    def progress_events(self, index: int, p: PromptProgress, s) -> str:
        """As llama-server: a progress update is a role-only delta carrying prompt_progress."""
        return sse(with_progress(self._chunk(index, {"role": "assistant", "content": None}), p))

    def final_events(self, index: int, r: CompletionResult, s) -> str:
        chunks = [self._chunk(index, delta_json(d)) for d in self.deltas("", s, final=True)]
        reason = "tool_calls" if self.made_calls(s) else finish_reason(r)
        chunks.append(self.with_verbose(self._chunk(index, {}, reason), index, r))
        if self.gen.include_usage:
            chunks.append({"choices": [], **self.envelope("chat.completion.chunk"), "usage": usage(r)})
        chunks[-1]["timings"] = r.timings.as_dict()
        return "".join(map(sse, chunks))
