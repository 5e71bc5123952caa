"""llama-server's own completion API: POST /completion (and /completions).

Answers follow server-task.cpp's to_json_non_oaicompat and its streamed partials: one `data:` line per
token, no [DONE].
"""
from __future__ import annotations

from dataclasses import dataclass

from ...engine.tasks import CompletionResult, PromptProgress, TokenOut
from ..prompts import tokenize_prompts
from ..schema import CompletionBody, Generation, validate
from ..state import ApiState
from .shared import Answer as BaseAnswer
from .shared import probs_json, request_params_json, sse, with_progress, with_timings

PATHS = ("/completion", "/completions")
Body = CompletionBody


def parse(body: dict, st: ApiState) -> Generation:
    req = validate(Body, body, st.defaults)
    tok = st.model.tokenizer
    return req.generation(tokenize_prompts(tok, req.prompt), st.defaults, tok)


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


def final_json(a: BaseAnswer, index: int, r: CompletionResult, *, has_new_line: bool) -> dict:
    """One finished answer in llama-server's own shape (also the OpenAI answers' "__verbose")."""
    req, gen = a.gen.requests[index], a.gen
    res = {
        "index": index,
        "content": "" if gen.stream else r.content,
        "tokens": [] if gen.stream or not gen.return_tokens else list(r.tokens),
        "id_slot": r.id_slot,
        "stop": True,
        "model": a.model,
        "tokens_predicted": len(r.tokens),
        "tokens_evaluated": r.tokens_evaluated,
        "generation_settings": request_params_json(req, eog_ids=a.tok.eog_ids),
        "prompt": a.tok.detokenize(req.prompt_tokens, unparse_special=True),
        "has_new_line": has_new_line,
        "truncated": r.truncated,
        "stop_type": r.stop_type,
        "stopping_word": r.stopping_word,
        "tokens_cached": r.tokens_cached,
        "timings": r.timings.as_dict(),
    }
    if not gen.stream and req.n_probs > 0 and r.probs:
        res["completion_probabilities"] = probs_json(r.probs, a.tok, req.sampling.post_sampling_probs)
    return nested_fields(gen.response_fields, res) if gen.response_fields else res


@dataclass
class Answer(BaseAnswer):
    @dataclass
    class State(BaseAnswer.State):
        has_new_line: bool = False

    def body(self, results: list[CompletionResult]):
        native = [final_json(self, i, r, has_new_line="\n" in r.content) for i, r in enumerate(results)]
        return native[0] if len(native) == 1 else native

    def token_events(self, index: int, out: TokenOut, s: State) -> str:
        s.has_new_line |= "\n" in out.text
        req = self.gen.requests[index]
        res = {"index": index, "content": out.text, "tokens": [out.token], "stop": False, "id_slot": -1,
               "tokens_predicted": s.n_decoded, "tokens_evaluated": len(req.prompt_tokens)}
        with_timings(res, out)
        if req.n_probs > 0 and out.probs is not None:
            res["completion_probabilities"] = probs_json([out], self.tok, req.sampling.post_sampling_probs)
        return sse(res)

    def progress_events(self, index: int, p: PromptProgress, s: State) -> str:
        res = {"index": index, "content": "", "tokens": [], "stop": False, "id_slot": -1,
               "tokens_predicted": s.n_decoded, "tokens_evaluated": p.total}
        return sse(with_progress(res, p))

    def final_events(self, index: int, r: CompletionResult, s: State) -> str:
        return sse(final_json(self, index, r, has_new_line=s.has_new_line))
