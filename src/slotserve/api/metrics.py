"""GET /metrics: llama-server's Prometheus metrics (names `llamacpp:*`), in the text exposition format.

The format is three lines per metric, so it is written here directly rather than through a client
library whose registry and naming rules (no ':' outside recording rules) would fight llama.cpp's names.
"""
from __future__ import annotations

import time

from ..engine.snapshot import EngineStats


class Metrics:
    """What /metrics needs beyond EngineStats: the cached-prompt counter, and the previous scrape, since
    llama-server's throughput gauges average over the window between two scrapes."""

    def __init__(self) -> None:
        self.t_start = int(time.time())
        self._last = (0, 0.0, 0, 0.0)  # n_prompt, t_prompt_ms, predicted steps, t_predicted_ms at the last scrape
        self.n_rejected = 0  # completions refused by --max-queued (counted on the event loop)

    def render(self, stats: EngineStats, n_processing: int, n_deferred: int) -> str:
        n_prompt, t_prompt = stats.n_prompt_tokens, stats.t_prompt_ms
        n_pred, t_pred = stats.n_predicted_tokens, stats.t_predicted_ms
        # generation throughput counts decode steps, not tokens, as llama-server's does: a request's
        # first token comes with its prompt
        steps = stats.n_predicted_steps
        l_n_prompt, l_t_prompt, l_steps, l_t_pred = self._last
        self._last = (n_prompt, t_prompt, steps, t_pred)

        def rate(n: float, t_ms: float) -> float:
            return 1e3 * n / t_ms if t_ms > 0 else 0.0

        counters = [
            ("prompt_tokens_total", "Number of prompt tokens processed, excluding cached tokens", n_prompt),
            ("prompt_tokens_cached_total", "Number of prompt tokens reused from the cache",
             stats.n_prompt_tokens_cached),
            ("prompt_seconds_total", "Total time spent processing prompts", t_prompt / 1e3),
            ("tokens_predicted_total", "Number of generation tokens processed", n_pred),
            ("tokens_predicted_seconds_total", "Total time spent generating tokens", t_pred / 1e3),
            ("n_decode_total", "Total number of llama_decode() calls, excluding speculative decoding and "
                               "multimodal decoding", stats.n_decode_calls),
            ("n_tokens_max", "Largest observed sequence length (prompt + generation)", stats.n_tokens_max),
            ("spec_decode_num_draft_tokens_total", "Speculative: Total draft tokens generated",
             stats.n_draft_tokens),
            ("spec_decode_num_accepted_tokens_total", "Speculative: Total draft tokens accepted by the target model",
             stats.n_draft_accepted),
            ("spec_decode_num_drafts_total", "Speculative: Total speculative decoding verification steps",
             stats.n_draft_steps),
        ]
        gauges = [
            ("prompt_tokens_seconds", "Average prompt throughput in tokens/s",
             rate(n_prompt - l_n_prompt, t_prompt - l_t_prompt)),
            ("predicted_tokens_seconds", "Average generation throughput in tokens/s",
             rate(steps - l_steps, t_pred - l_t_pred)),
            ("requests_processing", "Number of requests processing", n_processing),
            ("requests_deferred", "Number of requests deferred", n_deferred),
            ("n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call",
             stats.n_busy_slots_total / max(stats.n_decode_calls, 1)),
        ]
        lines = []
        for kind, items in (("counter", counters), ("gauge", gauges)):
            for name, help_text, value in items:
                lines += [f"# HELP llamacpp:{name} {help_text}", f"# TYPE llamacpp:{name} {kind}",
                          f"llamacpp:{name} {value}"]
        lines += ["# HELP slotserve:requests_rejected_total Requests refused with a 503 because --max-queued "
                  "requests were already waiting for a slot", "# TYPE slotserve:requests_rejected_total counter",
                  f"slotserve:requests_rejected_total {self.n_rejected}"]
        return "\n".join(lines) + "\n"
