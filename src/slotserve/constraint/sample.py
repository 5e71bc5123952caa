"""Sampling under a constraint in llama.cpp's order (common_sampler_sample with grammar_first = false).

The sampler chain runs on the raw logits first; if the grammar takes that token it stands, and the mask was
never needed. Only a refused token makes the grammar mask the logits and the chain run again -- a second
draw from the seeded RNG, as in llama.cpp, so seeded answers follow llama-server's.
"""
from __future__ import annotations

import numpy as np

from .matcher import Constraint, apply_allowed


def sample_constrained(sampler, logits: np.ndarray, constraint: Constraint | None,
                       bitmask: np.ndarray | None = None) -> tuple[int, np.ndarray]:
    """(token, the logits it was drawn from). `sampler` is a model.sampling.Sampler; `bitmask` is this row of
    ConstraintMasks.compute when the batch's masks were computed ahead (else the mask is computed here, and
    only if needed). Pass the returned logits to the sampler's top_probs/token_prob: with post_sampling_probs
    llama-server reports the pass the token came from; otherwise it reports the raw logits, masked or not.
    The token is not accepted into the sampler or the constraint."""
    token = sampler.sample(logits)
    if constraint is None or constraint.allows(token):
        return token, logits
    masked = np.array(logits, dtype=np.float32)
    if bitmask is None:
        constraint.apply(masked)
    else:
        apply_allowed(masked, constraint.vocab.allowed_from_bitmask(bitmask))
    return sampler.sample(masked), masked
