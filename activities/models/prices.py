"""What model calls cost, in USD per million tokens (input, output).

The local model runs on our own hardware; its price approximates GPU time per token so that
budgets and ledgers stay meaningful when it is the only model in play.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float

    def usd(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


PRICES: dict[str, Price] = {
    "smollm2-135m-instruct": Price(0.01, 0.02),
    "scripted": Price(1.0, 2.0),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4o": Price(2.50, 10.00),
    "claude-sonnet-4": Price(3.00, 15.00),
}


def price_of(model: str) -> Price:
    try:
        return PRICES[model]
    except KeyError:
        raise KeyError(
            f"no price for model {model!r}: add it to activities/models/prices.py"
        ) from None
