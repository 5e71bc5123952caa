"""Constrained generation (grammars, JSON schemas, lazy tool-call grammars) with llguidance.

API side: `from_fields(body)` (completions), `from_chat(body)`, `from_response_format(fmt)` (Responses'
text.format), `from_gbnf`, `from_json_schema`, `from_lark` -> a `ConstraintSpec` or a ConstraintError (400). Model side: `GrammarVocab.from_tokenizer(tok)` once per model;
`Constraint(spec, vocab)` per generation; `ConstraintMasks(vocab)` for a batch's masks;
`sample_constrained(sampler, logits, constraint)` samples in llama.cpp's order.
"""
from .masks import ConstraintMasks
from .matcher import Constraint, apply_allowed
from .sample import sample_constrained
from .spec import (ConstraintError, ConstraintSpec, Trigger, TriggerType, from_chat, from_fields,
                   from_gbnf, from_json_schema, from_lark, from_response_format)
from .vocab import GrammarVocab

__all__ = ["Constraint", "ConstraintError", "ConstraintMasks", "ConstraintSpec", "GrammarVocab", "Trigger",
           "TriggerType", "apply_allowed", "from_chat", "from_fields", "from_gbnf", "from_json_schema", "from_lark",
           "from_response_format",
           "sample_constrained"]
