"""What the two OpenAI dialects (completions, chat) share: the envelope, usage, finish_reason, logprobs,
--verbose's "__verbose", and the [DONE] that ends their streams (server-task.cpp's to_json_oaicompat*)."""
from __future__ import annotations

from dataclasses import dataclass

from ...engine.tasks import CompletionResult, TokenOut
from .native import final_json
from .shared import Answer, probs_json


def finish_reason(r: CompletionResult) -> str:
    return "stop" if r.stop_type in ("word", "eos") else "length"


def usage(r: CompletionResult) -> dict:
    n_gen, n_prompt = len(r.tokens), r.tokens_evaluated
    return {"completion_tokens": n_gen, "prompt_tokens": n_prompt, "total_tokens": n_gen + n_prompt,
            "prompt_tokens_details": {"cached_tokens": r.timings.cache_n}}


@dataclass
class OpenAIAnswer(Answer):
    def envelope(self, obj: str) -> dict:
        return {"created": self.created, "model": self.model, "system_fingerprint": self.build_info,
                "object": obj, "id": self.cmpl_id}

    def logprobs(self, index: int, outs: list[TokenOut]) -> dict | None:
        req = self.gen.requests[index]
        if req.n_probs <= 0 or not outs or outs[0].probs is None:
            return None
        return {"content": probs_json(outs, self.tok, req.sampling.post_sampling_probs)}

    def with_verbose(self, res: dict, index: int, r: CompletionResult) -> dict:
        if self.gen.verbose:
            res["__verbose"] = final_json(self, index, r, has_new_line="\n" in r.content)
        return res

    def end(self) -> str:
        return "data: [DONE]\n\n"
