"""/metrics lines for slotserve's prompt-cache tiers (llama-server has none: the names are ours,
`slotserve:prompt_cache_*`, one series per tier by label), from the engine snapshot's PromptCache.stats()."""
from __future__ import annotations


def prompt_cache_lines(stats: dict | None) -> str:
    """The exposition text, or "" when the server runs without a prompt cache."""
    if stats is None:
        return ""
    tiers = {name: stats[name] for name in ("ram", "disk") if name in stats}
    counters = [
        ("lookups_total", "Prompts looked up in the prompt cache", {"": stats["lookups"]}),
        ("misses_total", "Lookups no cache tier could improve on (the slot's own prefix was kept)",
         {"": stats["misses"]}),
        ("hits_total", "Prompts that started from a state loaded from this tier", _per(tiers, "hits")),
        ("tokens_reused_total", "Prompt tokens a hit on this tier spared from evaluation", _per(tiers, "tokens_reused")),
        ("stores_total", "States stored in this tier", _per(tiers, "stores")),
    ]
    gauges = [
        ("bytes", "Bytes this tier holds", _per(tiers, "bytes")),
        # an unlimited RAM tier (--cache-ram -1) has no byte limit: +Inf
        ("limit_bytes", "Most bytes this tier may hold", {k: float("inf") if v is None else v
                                                         for k, v in _per(tiers, "limit_bytes").items()}),
    ]
    lines = []
    for kind, items in (("counter", counters), ("gauge", gauges)):
        for name, help_text, values in items:
            lines += [f"# HELP slotserve:prompt_cache_{name} {help_text}", f"# TYPE slotserve:prompt_cache_{name} {kind}"]
            for tier, value in values.items():
                label = f'{{tier="{tier}"}}' if tier else ""
                lines.append(f"slotserve:prompt_cache_{name}{label} {'+Inf' if value == float('inf') else value}")
    return "\n".join(lines) + "\n"


def _per(tiers: dict, key: str) -> dict:
    return {name: tier[key] for name, tier in tiers.items()}
