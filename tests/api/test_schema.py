"""The request schema in-process: llama-server's coercions, aliases and defaults, and its field-named refusals.
(The sampling-field tests moved here from tests/model/test_sampling.py with request parsing.)"""
import math

import pytest

from slotserve.api.errors import ApiError
from slotserve.api.schema import (ChatBody, CompletionBody, OaiCompletionBody, ServerDefaults, TokenizeBody,
                                  validate)
from slotserve.model.sampling import SamplingParams


def _no_text(text):
    raise AssertionError(f"no text logit_bias expected here, got {text!r}")


def params_from_request(body: dict, defaults: SamplingParams, *, tokenize=_no_text) -> SamplingParams:
    return validate(CompletionBody, body).sampling(defaults, tokenize)


# -- sampling fields ----------------------------------------------------------------------------------------------

def test_params_from_request_reads_fields_and_keeps_defaults():
    d = SamplingParams()
    assert params_from_request({}, d) == d
    assert params_from_request({"top_k": None, "temperature": None}, d) == d  # null means "use the default"
    p = params_from_request({
        "temperature": 0.2, "top_k": 5, "top_p": 0.5, "min_p": 0.1, "typical_p": 0.9, "repeat_penalty": 1.1,
        "repeat_last_n": 32, "presence_penalty": 0.3, "frequency_penalty": 0.2, "seed": 7, "n_probs": 3,
        "ignore_eos": True, "post_sampling_probs": True, "logit_bias": [[5, 1.5]]}, d)
    assert p == SamplingParams(0.2, 5, 0.5, 0.1, 0.9, 1.1, 32, 0.3, 0.2, 7, 3, True, ((5, 1.5),), True)
    assert params_from_request({"top_k": 40.0}, d).top_k == 40


def test_params_from_request_clamps_like_llama_server():
    p = params_from_request({"top_k": -1, "temperature": -2, "top_p": 1.5, "min_p": -0.1}, SamplingParams())
    assert (p.top_k, p.temperature, p.top_p, p.min_p) == (0, 0.0, 1.0, 0.0)
    assert params_from_request({"seed": -1}, SamplingParams(seed=5)).seed == -1
    assert params_from_request({"seed": 2**32 + 9}, SamplingParams()).seed == 9  # uint32 in llama.cpp


def test_params_from_request_n_probs_and_its_logprobs_alias():
    d = SamplingParams()
    assert params_from_request({"logprobs": 4}, d).n_probs == 4
    assert params_from_request({"logprobs": False}, d).n_probs == 0  # left over by the OpenAI chat path
    assert params_from_request({"n_probs": 2, "logprobs": 9}, d).n_probs == 2


@pytest.mark.parametrize("body, field", [
    ({"top_k": "40"}, "top_k"), ({"top_k": 4.5}, "top_k"), ({"top_k": True}, "top_k"),
    ({"top_p": "0.9"}, "top_p"), ({"temperature": [1]}, "temperature"), ({"min_p": float("nan")}, "min_p"),
    ({"seed": "abc"}, "seed"), ({"n_probs": 1.5}, "n_probs"), ({"ignore_eos": 1}, "ignore_eos"),
    ({"post_sampling_probs": "yes"}, "post_sampling_probs"), ({"repeat_last_n": -1}, "repeat_last_n"),
    ({"repeat_penalty": 0}, "repeat_penalty"), ({"logit_bias": "x"}, "logit_bias"),
    ({"presence_penalty": None, "frequency_penalty": "1"}, "frequency_penalty"),
])
def test_params_from_request_errors_name_the_field(body, field):
    # a refusal is now the 400 itself (it was a ValueError the route turned into one)
    with pytest.raises(ApiError, match=f"'{field}'") as err:
        params_from_request(body, SamplingParams())
    assert err.value.status == 400 and err.value.kind == "invalid_request"


def test_logit_bias_forms():
    d = SamplingParams()

    def tokenize(text):
        return {"Hello": [15, 16]}[text]

    lb = lambda v: params_from_request({"logit_bias": v}, d, tokenize=tokenize).logit_bias
    assert lb([[3, 1.0], [4, -2], [5, False]]) == ((3, 1.0), (4, -2.0), (5, -math.inf))
    assert lb({"3": 1.0, "5": False}) == ((3, 1.0), (5, -math.inf))
    assert lb([["Hello", -0.5]]) == ((15, -0.5), (16, -0.5))
    assert lb({"Hello": 2}) == ((15, 2.0), (16, 2.0))
    # malformed entries and negative ids are skipped, as llama-server does; true is not a bias
    assert lb([[3], [4, True], [5, "x"], [-1, 1.0], [2.0, 1.0], 7, [6, 0.5]]) == ((6, 0.5),)
    assert lb([]) == ()
    assert params_from_request({}, SamplingParams(logit_bias=((1, 1.0),))).logit_bias == ((1, 1.0),)


def test_params_from_request_rejects_numbers_a_float_cannot_hold():
    with pytest.raises(ApiError, match="'top_p'"):
        params_from_request({"top_p": 10**400}, SamplingParams())


# -- generation fields: aliases and the server's defaults, applied once ---------------------------------------------

class _Tok:
    """Only what generation() asks of a tokenizer (text logit_bias); the prompts are given as ids."""

    def tokenize(self, text, add_special, parse_special):
        raise AssertionError("not needed")


def generation(body: dict, server: ServerDefaults, model=CompletionBody, prompts=((1, 2, 3),)):
    return validate(model, body, server).generation([list(p) for p in prompts], server, _Tok())


@pytest.mark.parametrize("body, n_predict", [
    ({}, 8), ({"n_predict": None}, 8), ({"n_predict": -1}, 8),  # absent, null and -1: the server's -n
    ({"n_predict": 16}, 16), ({"n_predict": 16.0}, 16), ({"n_predict": 0}, 0),  # -n is a default, not a cap
    ({"max_tokens": 5}, 5), ({"max_completion_tokens": 6, "max_tokens": 5}, 6),
    ({"n_predict": 3, "max_completion_tokens": 6, "max_tokens": 5}, 3), ({"n_predict": None, "max_tokens": 5}, 5),
])
def test_n_predict_is_resolved_once_from_the_request_else_the_server(body, n_predict):
    req = generation(body, ServerDefaults(n_predict=8)).requests[0]
    assert req.n_predict == n_predict


def test_unlimited_stays_minus_one_without_a_server_default():
    assert generation({}, ServerDefaults(n_predict=-1)).requests[0].n_predict == -1
    assert generation({"n_predict": -1}, ServerDefaults(n_predict=-1)).requests[0].n_predict == -1


def test_server_defaults_fill_every_other_field():
    server = ServerDefaults(sampling=SamplingParams(temperature=0.0, seed=42), n_predict=64, n_parallel=2,
                            verbose=True, sse_ping_interval=0)
    gen = generation({}, server)
    req = gen.requests[0]
    assert req.sampling == server.sampling and req.id_slot == -1 and req.cache_prompt and not req.stream
    assert (gen.verbose, gen.sse_ping_s, gen.include_usage, gen.response_fields) == (True, None, False, [])
    gen = generation({"verbose": False, "sse_ping_interval": 2.5, "stream_options": {"include_usage": True}}, server)
    assert (gen.verbose, gen.sse_ping_s, gen.include_usage) == (False, 2.5, True)


def test_n_cmpl_and_its_alias_n_make_one_request_per_prompt_and_completion():
    server = ServerDefaults(n_parallel=2)
    gen = generation({"n": 2}, server, prompts=((1,), (2,)))
    assert [r.prompt_tokens for r in gen.requests] == [[1], [1], [2], [2]]
    assert len(generation({"n_cmpl": 2, "n": 1}, server).requests) == 2
    for name in ("n", "n_cmpl"):
        with pytest.raises(ApiError, match=f"field '{name}' must be between 1 and 2, got 3"):
            generation({name: 3}, server)


def test_id_slot_range_is_the_engines_to_check():
    # a slot number the server does not have is the engine's refusal (it knows its slots); -5 is no slot anywhere
    assert generation({"id_slot": 7}, ServerDefaults(n_parallel=2)).requests[0].id_slot == 7
    with pytest.raises(ApiError, match="field 'id_slot' must be between -1 and"):
        generation({"id_slot": -5}, ServerDefaults())


@pytest.mark.parametrize("body, words", [
    ({"n_predict": "x"}, "field 'n_predict' must be an integer, not a string"),
    ({"max_tokens": -2}, "field 'max_tokens' must be between -1 and 2147483647, got -2"),
    ({"stop": ["a", 1]}, "field 'stop' must be a string or an array of strings"),
    ({"stream_options": {"include_usage": "yes"}}, "field 'stream_options.include_usage' must be a boolean"),
    ({"mirostat": 2}, "field 'mirostat' is a sampler slotserve does not support"),
    ({"json_schema": {"type": "hiccup"}}, "json_schema: the schema does not compile: Invalid type: hiccup"),
    ({"grammar": "root ::= (", "json_schema": {}}, "grammar: failed to parse GBNF"),
    ({"lora": [{"id": 0}]}, "field 'lora' asks for LoRA adapters"),
])
def test_generation_refusals_name_the_field(body, words):
    with pytest.raises(ApiError, match=words.replace("(", r"\(")):
        generation(body, ServerDefaults())


def test_disabled_values_of_missing_samplers_pass():
    body = {"mirostat": 0, "dry_multiplier": 0.0, "xtc_probability": 0, "top_n_sigma": -1.0, "adaptive_target": -1,
            "grammar": "", "json_schema": {}, "lora": [], "dynatemp_range": "ignored"}
    assert generation(body, ServerDefaults()).requests[0].sampling == SamplingParams()
    # as llama-server: a grammar field, even empty (or not a string), turns json_schema off
    for body in (body, {"grammar": {}, "json_schema": ""}):
        req = generation(body, ServerDefaults()).requests[0]
        assert req.sampling == SamplingParams() and req.constraint is None


def test_constraint_fields_become_one_spec_shared_by_every_completion():
    gen = generation({"json_schema": {"type": "object"}, "n_cmpl": 2}, ServerDefaults(n_parallel=2))
    assert gen.requests[0].constraint.source == "json_schema" and gen.requests[0].constraint is gen.requests[1].constraint
    lazy = generation({"grammar": 'root ::= "x"', "grammar_lazy": True,
                       "grammar_triggers": [{"type": 1, "value": "tool"}]}, ServerDefaults()).requests[0].constraint
    assert lazy.lazy and lazy.triggers[0].value == "tool"
    chat = validate(ChatBody, {"messages": [], "response_format": {"type": "json_object"}}).constraint()
    assert chat.source == "json_schema"
    assert validate(ChatBody, {"messages": [], "response_format": {"type": "text"}}).constraint() is None


def test_openai_completions_refuse_what_they_cannot_do():
    for body, words in [({"echo": True}, "'echo'"), ({"best_of": 2}, "'best_of'"), ({"suffix": "x"}, "'suffix'")]:
        with pytest.raises(ApiError, match=words):
            validate(OaiCompletionBody, body)
    assert validate(OaiCompletionBody, {"echo": False, "best_of": None}).echo is False


def test_chat_logprobs_are_a_boolean_with_top_logprobs():
    server = ServerDefaults()
    chat = dict(model=ChatBody, prompts=((1,),))
    assert generation({"messages": [], "logprobs": True}, server, **chat).requests[0].n_probs == 20
    assert generation({"messages": [], "logprobs": True, "top_logprobs": 3}, server, **chat).requests[0].n_probs == 3
    assert generation({"messages": [], "logprobs": False, "n_probs": 2}, server, **chat).requests[0].n_probs == 2
    with pytest.raises(ApiError, match="'top_logprobs' requires logprobs"):
        generation({"messages": [], "top_logprobs": 3}, server, **chat)
    with pytest.raises(ApiError, match="field 'logprobs' must be a boolean"):
        generation({"messages": [], "logprobs": 3}, server, **chat)
    with pytest.raises(ApiError, match="field 'messages' is required"):
        validate(ChatBody, {"messages": None})


def test_tokenize_flags_are_booleans():
    assert validate(TokenizeBody, {"content": "x", "with_pieces": None}).with_pieces is None
    with pytest.raises(ApiError, match="field 'add_special' must be a boolean, not a number"):
        validate(TokenizeBody, {"content": "x", "add_special": 1})
