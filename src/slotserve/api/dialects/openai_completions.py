"""OpenAI's legacy completions: POST /v1/completions (llama-server's to_json_oaicompat)."""
from __future__ import annotations

from dataclasses import dataclass

from ...engine.tasks import CompletionResult, PromptProgress, TokenOut
from ..prompts import tokenize_prompts
from ..schema import Generation, OaiCompletionBody, validate
from ..state import ApiState
from .openai import OpenAIAnswer, finish_reason, usage
from .shared import sse, with_progress, with_timings

PATHS = ("/v1/completions",)
Body = OaiCompletionBody


def parse(body: dict, st: ApiState) -> Generation:
    req = validate(Body, body, st.defaults)
    tok = st.model.tokenizer
    return req.generation(tokenize_prompts(tok, req.prompt), st.defaults, tok)


@dataclass
class Answer(OpenAIAnswer):
    def _choice(self, index: int, text: str, logprobs, finish: str | None) -> dict:
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}

    def body(self, results: list[CompletionResult]) -> dict:
        stream = self.gen.stream
        choices = [self._choice(i, "" if stream else r.content, None if stream else self.logprobs(i, r.probs),
                                finish_reason(r)) for i, r in enumerate(results)]
        return self.with_verbose({"choices": choices, **self.envelope("text_completion"),
                                  "usage": usage(results[0]), "timings": results[0].timings.as_dict()},
                                 0, results[0])

    def token_events(self, index: int, out: TokenOut, s) -> str:
        res = {"choices": [self._choice(index, out.text, self.logprobs(index, [out]), None)],
               **self.envelope("text_completion")}
        return sse(with_timings(res, out))

    def progress_events(self, index: int, p: PromptProgress, s) -> str:
        return sse(with_progress({"choices": [self._choice(index, "", None, None)],
                                  **self.envelope("text_completion")}, p))

    def final_events(self, index: int, r: CompletionResult, s) -> str:
        return sse(self.with_verbose(
            {"choices": [self._choice(index, "", None, finish_reason(r))], **self.envelope("text_completion"),
             "usage": usage(r), "timings": r.timings.as_dict()}, index, r))
