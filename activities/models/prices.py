"""What model calls cost: USD per million tokens for hosted models, GPU time for local ones.

Hosted models bill tokens. A local model runs on our own GPU workers, so what it costs is the
GPU time a call holds: `usd_per_gpu_hour` times the call's seconds. Before a call, its time is
estimated from the throughput the model is expected to reach on its hardware, so that the
router can cap the call to what the budget allows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    # Local models: billed by GPU-seconds; the throughputs turn tokens into expected seconds.
    usd_per_gpu_hour: float = 0.0
    prefill_tokens_per_s: float = 0.0
    decode_tokens_per_s: float = 0.0

    @property
    def by_time(self) -> bool:
        return self.usd_per_gpu_hour > 0

    def expected_seconds(self, input_tokens: int, output_tokens: int) -> float:
        return input_tokens / self.prefill_tokens_per_s + output_tokens / self.decode_tokens_per_s

    def estimate(self, input_tokens: int, output_tokens: int) -> float:
        """USD expected before the call."""
        if self.by_time:
            return self.expected_seconds(input_tokens, output_tokens) * self.usd_per_gpu_hour / 3600
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6

    def output_tokens_for(self, usd: float) -> float:
        """How many output tokens `usd` pays for (after the input is paid)."""
        if self.by_time:
            return usd * 3600 / self.usd_per_gpu_hour * self.decode_tokens_per_s
        if self.output_per_mtok <= 0:
            return float("inf")
        return usd * 1e6 / self.output_per_mtok

    def actual(self, input_tokens: int, output_tokens: int, seconds: float) -> float:
        """USD of a finished call: tokens for hosted models, measured GPU time for local ones."""
        if self.by_time:
            return seconds * self.usd_per_gpu_hour / 3600
        return self.estimate(input_tokens, output_tokens)


# SmolLM2-135M on one GPU worker: an H100 slice at $2.50/h. The throughputs are assumptions
# (no GPU was available when this was written); replace them with the tokens/s that
# `bench/triton.py` measures on the GPU workers. On CPU-only machines the same calls take
# longer and are billed for the time they really hold the worker.
LOCAL_GPU = Price(usd_per_gpu_hour=2.50, prefill_tokens_per_s=4000, decode_tokens_per_s=250)

PRICES: dict[str, Price] = {
    "smollm2-135m-instruct": LOCAL_GPU,
    "scripted": Price(1.0, 2.0),
    "scripted-large": Price(3.0, 15.0),  # the scripted model standing in for a large one
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4.1": Price(2.00, 8.00),
    "claude-sonnet-4": Price(3.00, 15.00),
    "claude-sonnet-4-5": Price(3.00, 15.00),
    "claude-haiku-4-5": Price(1.00, 5.00),
}


def price_of(model: str) -> Price:
    try:
        return PRICES[model]
    except KeyError:
        raise KeyError(
            f"no price for model {model!r}: add it to activities/models/prices.py"
        ) from None
