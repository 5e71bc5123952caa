"""The measured workloads: one function per row group, one repetition per call, talking only HTTP.

Every function returns {metric key: value} and appends to `notes` anything in the answers that looks
wrong (a field missing, fewer tokens than asked, a cache that was not reused): a fast wrong answer is
not a result, and these notes are what the table cannot show.
"""
from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

from servers import Server, ServerError

N_PP = 512  # row 1: prompt length
N_GEN = 128  # rows 2 and 3: tokens generated per client
N_LONG = 1500  # rows 4 and 5: the prompt that fills a slot
N_CLIENTS = 4  # row 3
N_CLIENTS_MORE = 8  # row 3 again, with more clients than llama-server's default slots
SAMPLE_SEED = 42
# Issue 14's rows: generation under this schema. It cannot be complete before 8 objects (more than N_GEN tokens
# hold), so every step is constrained on both servers: a schema that may close would end one run early.
# Not more: llama.cpp's GBNF spells minItems out as that many copies of the item rule, and at 64 its grammar
# alone costs it 3x (stories260K: 6.8 tok/s against 21.9 at 8), which would be measuring that, not the mask
RECORDS_SCHEMA = {"type": "array", "minItems": 8, "items": {
    "type": "object", "required": ["name", "age", "tags"],
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
                   "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3}}}}

# Word salad from a fixed list, seeded: long prompts with no repeated passages, because a repeated
# passage would let prompt-lookup speculation (slotserve's, not llama-server's) draft from the prompt.
_WORDS = ("the a river mountain quiet lantern harbor winter orchard copper violin meadow thunder pocket "
          "careful whisper garden ancient bicycle silver morning library candle forest distant ocean "
          "village market yellow clever blanket window journey kitchen pebble sparrow marble evening "
          "shadow painter engine ribbon castle island velvet crystal meadowlark brave gentle stubborn "
          "hollow basket puzzle tower narrow bright hidden wooden feather cloud dragon mirror ladder "
          "teacher letter tiny enormous sudden patient curious ordinary strange golden paper stone").split()

# A natural sentence for the generation rows (the continuation is what is timed, not the prompt).
GEN_PROMPT = ("The old lighthouse keeper climbed the spiral stairs each evening, counting the steps and "
              "listening to the sea against the rocks below. ")


def word_salad(seed: int, n_words: int) -> str:
    rng = random.Random(seed)
    sentences, words = [], 0
    while words < n_words:
        k = rng.randint(6, 14)
        sentences.append(" ".join(rng.choice(_WORDS) for _ in range(k)).capitalize() + ".")
        words += k
    return " ".join(sentences)


def tokenize(server: Server, text: str) -> list[int]:
    answer, _ = server.post("/tokenize", {"content": text, "add_special": True})
    tokens = answer.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise ServerError(f"{server.name}: POST /tokenize answered without a list of token ids: {str(answer)[:200]}")
    return tokens


def prompt_of(server: Server, n_tokens: int, seed: int) -> list[int]:
    """Exactly n_tokens ids (BOS first), sent as ids so both servers evaluate the very same prompt."""
    tokens = tokenize(server, word_salad(seed, n_tokens))  # >= 1 token per word: always long enough
    if len(tokens) < n_tokens:
        raise ServerError(f"{server.name}: tokenizing {n_tokens} words gave only {len(tokens)} tokens")
    return tokens[:n_tokens]


def _timings(server: Server, answer: dict, what: str) -> dict:
    t = answer.get("timings")
    if not isinstance(t, dict):
        raise ServerError(f"{server.name}: {what}: the answer has no 'timings' object (keys: {sorted(answer)})")
    return t


def completion(server: Server, body: dict) -> tuple[dict, float]:
    return server.post("/completion", body)


def warm_up(server: Server) -> None:
    """One short request first: llama-server's first batch repacks weights, pages come in from disk."""
    completion(server, {"prompt": GEN_PROMPT, "n_predict": 8, "temperature": 0, "cache_prompt": False})


def prompt_processing(server: Server, tokens: list[int], notes: list[str]) -> dict:
    answer, wall_ms = completion(server, {"prompt": tokens, "n_predict": 1, "cache_prompt": False,
                                          "temperature": 0})
    t = _timings(server, answer, "prompt processing")
    if t.get("prompt_n") != len(tokens):
        notes.append(f"{server.name}: 512-token prompt with cache_prompt false: timings.prompt_n = "
                     f"{t.get('prompt_n')} (cache_n {t.get('cache_n')}), expected {len(tokens)}")
    return {"pp_tps": float(t["prompt_per_second"]), "pp_wall_tps": len(tokens) / (wall_ms / 1e3)}


def lookup_hit_rate(context: list[int], generated: list[int], n: int = 2) -> float:
    """Share of generated tokens a 2-gram prompt-lookup draft would have guessed: how much speculation
    can help on this text (0 = none, 1 = fully repetitive). Reported so the greedy row is read honestly."""
    seq, hits = list(context), 0
    for tok in generated:
        key, guess = seq[-n:], None
        for i in range(len(seq) - n - 1, -1, -1):
            if seq[i:i + n] == key:
                guess = seq[i + n]
                break
        hits += guess == tok
        seq.append(tok)
    return hits / len(generated) if generated else 0.0


def generation(server: Server, prompt_tokens: list[int], label: str, temperature: float,
               notes: list[str], n_gen: int = N_GEN) -> dict:
    body = {"prompt": prompt_tokens, "n_predict": n_gen, "temperature": temperature, "seed": SAMPLE_SEED,
            "ignore_eos": True, "cache_prompt": False, "return_tokens": True}
    answer, _ = completion(server, body)
    t = _timings(server, answer, "generation")
    out = {f"tg_{label}_tps": float(t["predicted_per_second"])}
    if t.get("predicted_n") != n_gen:
        notes.append(f"{server.name}: n_predict {n_gen} with ignore_eos at temperature {temperature}: "
                     f"timings.predicted_n = {t.get('predicted_n')}")
    tokens = answer.get("tokens")
    if isinstance(tokens, list) and tokens:
        out[f"tg_{label}_distinct_tokens"] = len(set(tokens))
        out[f"tg_{label}_lookup_hit_rate"] = lookup_hit_rate(prompt_tokens, tokens)
        out["_tokens"] = tokens  # the greedy texts of the two servers are compared in run.py
    else:
        notes.append(f"{server.name}: POST /completion with return_tokens true answered tokens = {tokens!r}")
    return out


def schema_generation(server: Server, prompt_tokens: list[int], notes: list[str]) -> dict:
    """Greedy generation of N_GEN tokens under RECORDS_SCHEMA, right after the same request unconstrained:
    the ratio is the server's own cost of the constraint, taken back to back so both halves see the same load."""
    free = generation(server, prompt_tokens, "schema_free", 0.0, notes)
    body = {"prompt": prompt_tokens, "n_predict": N_GEN, "temperature": 0, "ignore_eos": True, "cache_prompt": False,
            "json_schema": RECORDS_SCHEMA}
    answer, _ = completion(server, body)
    t = _timings(server, answer, "generation under a JSON schema")
    if t.get("predicted_n") != N_GEN:
        notes.append(f"{server.name}: n_predict {N_GEN} under the records schema: timings.predicted_n = "
                     f"{t.get('predicted_n')}")
    text = answer.get("content", "")
    if not text.lstrip().startswith("["):
        notes.append(f"{server.name}: generation under the records schema does not start a JSON array: {text[:60]!r}")
    tps = float(t["predicted_per_second"])
    return {"tg_schema_free_tps": free["tg_schema_free_tps"], "tg_schema_tps": tps,
            "schema_ratio": tps / free["tg_schema_free_tps"]}


def aggregate(server: Server, prompts: list[list[int]], notes: list[str], n_gen: int = N_GEN,
              key: str = "agg_tps") -> dict:
    """One request per prompt, all at once: total generated tokens / wall time until the last."""
    def one(tokens: list[int]) -> int:
        answer, _ = completion(server, {"prompt": tokens, "n_predict": n_gen, "temperature": 0,
                                        "ignore_eos": True, "cache_prompt": False})
        n = answer.get("tokens_predicted", _timings(server, answer, "aggregate").get("predicted_n"))
        return int(n or 0)

    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        t0 = time.perf_counter()
        counts = list(pool.map(one, prompts))
        wall_s = time.perf_counter() - t0
    if sum(counts) != n_gen * len(prompts):
        notes.append(f"{server.name}: {len(prompts)} parallel clients x n_predict {n_gen} generated {counts}")
    return {key: sum(counts) / wall_s}


def _slot_action(server: Server, action: str, filename: str | None = None) -> tuple[dict, float]:
    return server.post(f"/slots/0?action={action}", {"filename": filename} if filename else {})


def _checked_action(server: Server, action: str, filename: str, n_tokens: int, notes: list[str]):
    """A save or restore of slot 0: (answer, server-side ms, bytes moved, wall ms); odd answers are noted."""
    answer, wall_ms = _slot_action(server, action, filename)
    count, size = {"save": ("n_saved", "n_written"), "restore": ("n_restored", "n_read")}[action]
    ms = float(answer.get("timings", {}).get(f"{action}_ms", float("nan")))
    if not isinstance(answer.get(size), int) or answer.get(count, 0) < n_tokens:
        notes.append(f"{server.name}: POST /slots/0?action={action} of {n_tokens} tokens answered "
                     f"{ {k: v for k, v in answer.items() if k != 'timings'} }")
    return answer, ms, answer.get(size), wall_ms


def save_restore(server: Server, tokens: list[int], rep: int, notes: list[str]) -> dict:
    """Rows 4 and 5 on slot 0 of a -np 1 server: save and restore a full slot, then time to first token
    of the same prompt from the restored cache versus computed from nothing; and of a prompt one token
    longer after another restore."""
    filename = f"bench-{rep}.bin"
    _slot_action(server, "erase")
    fill = {"prompt": tokens, "n_predict": 1, "temperature": 0, "cache_prompt": True, "id_slot": 0}
    completion(server, fill)

    _, save_ms, n_written, _ = _checked_action(server, "save", filename, len(tokens), notes)
    _, save_again_ms, _, _ = _checked_action(server, "save", filename, len(tokens), notes)  # a conversation's
    # slot saved after each turn replaces its file: llama-server truncates and rewrites it; slotserve writes
    # a temporary file (into the spare inode an earlier save replaced, if any) and renames it over the old
    _slot_action(server, "erase")  # a restore into an empty slot: nothing left to reuse by accident
    _, restore_ms, n_read, restore_wall_ms = _checked_action(server, "restore", filename, len(tokens), notes)
    first, first_wall_ms = completion(server, fill)
    cached = _timings(server, first, "completion after restore").get("cache_n", 0)
    if cached < len(tokens) - 1:
        notes.append(f"{server.name}: after restoring {len(tokens)} tokens, the same prompt reused only "
                     f"cache_n = {cached} tokens (prompt_n {first['timings'].get('prompt_n')})")

    # the same restore, then a prompt one token longer (a conversation that goes on): the first token needs
    # one forward over the restored cache on both servers, whatever either keeps beside the K/V rows
    _slot_action(server, "erase")
    _, _, _, again_wall_ms = _checked_action(server, "restore", filename, len(tokens), notes)
    longer, longer_wall_ms = completion(server, {**fill, "prompt": tokens + [tokens[-1]]})
    if _timings(server, longer, "completion after restore").get("prompt_n") != 1:
        notes.append(f"{server.name}: after restoring {len(tokens)} tokens, a prompt one token longer evaluated "
                     f"prompt_n = {longer['timings'].get('prompt_n')} tokens, expected 1")

    _, recompute_ms = completion(server, {**fill, "cache_prompt": False})
    ttft_restore = restore_wall_ms + first_wall_ms
    ttft_continue = again_wall_ms + longer_wall_ms
    out = {"save_ms": save_ms, "save_again_ms": save_again_ms, "restore_ms": restore_ms, "ttft_restore_ms": ttft_restore,
           "ttft_recompute_ms": recompute_ms, "restore_speedup": recompute_ms / ttft_restore,
           "ttft_continue_ms": ttft_continue, "continue_speedup": recompute_ms / ttft_continue}
    if isinstance(n_written, int) and save_ms > 0:
        out["save_mbps"] = n_written / 1e3 / save_ms
        out["slot_mb"] = n_written / 1e6
    if isinstance(n_read, int) and restore_ms > 0:
        out["restore_mbps"] = n_read / 1e3 / restore_ms
    return out
