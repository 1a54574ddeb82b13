"""The budget book: one place that says what is left and whether a cost fits.

A task never spends more than its budget (DESIGN.md §3.6): before a model or tool call its
expected cost must fit in what is left, less what running calls have reserved; after the
call its actual cost is booked in the ledger and the reservation released.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from keel.contracts import Ledger, LedgerEntry, ModelUsage
from keel.errors import KeelError

# Costs are sums of float prices: a cost equal to what is left must fit despite rounding.
EPSILON_USD = 1e-12


def fits(cost_usd: float, left_usd: float) -> bool:
    """Whether a cost fits in what is left (with one rounding epsilon, used everywhere)."""
    return cost_usd <= left_usd + EPSILON_USD


class BudgetExhausted(KeelError):
    """The next call does not fit in what is left: the task ends as budget_exhausted."""


class BookObserver(Protocol):
    """Told of each booking and refusal as it happens (the workflow's metrics)."""

    def booked(self, entry: LedgerEntry) -> None: ...

    def refused(self, what: Literal["model", "tool"]) -> None: ...


@dataclass
class BudgetBook:
    """The task's ledger plus the reservations of the calls now running."""

    ledger: Ledger
    reserved: dict[str, float] = field(default_factory=dict)
    observer: BookObserver | None = None

    @classmethod
    def for_budget(cls, usd: float, tokens: int | None) -> BudgetBook:
        return cls(Ledger(budget_usd=usd, budget_tokens=tokens))

    # --- what is left ------------------------------------------------------------------

    def remaining_usd(self) -> float:
        return max(0.0, self.ledger.budget_usd - self.ledger.total_usd)

    def remaining_tokens(self) -> int | None:
        if self.ledger.budget_tokens is None:
            return None
        return max(0, self.ledger.budget_tokens - self.ledger.total_tokens)

    def available_usd(self) -> float:
        """What a new call may still reserve: what is left less the running calls' share."""
        return self.remaining_usd() - sum(self.reserved.values())

    def require(self, what: str) -> float:
        """What is left for a model call; BudgetExhausted when nothing is."""
        remaining = self.remaining_usd()
        if remaining <= 0 or self.remaining_tokens() == 0:
            self.refused("model")
            raise BudgetExhausted(f"nothing is left of the budget for {what}")
        return remaining

    # --- reservations ------------------------------------------------------------------

    def reserve(self, key: str, cost_usd: float) -> float | None:
        """Reserve a call's expected cost; None when it fits, else what was available."""
        left = self.available_usd()
        if not fits(cost_usd, left):
            self.refused("tool")
            return left
        self.reserved[key] = cost_usd
        return None

    def release(self, key: str) -> None:
        self.reserved.pop(key, None)

    def refused(self, what: Literal["model", "tool"]) -> None:
        """A call that was not made because it did not fit."""
        if self.observer is not None:
            self.observer.refused(what)

    # --- bookings ----------------------------------------------------------------------

    def _book(self, entry: LedgerEntry) -> None:
        self.ledger.entries.append(entry)
        if self.observer is not None:
            self.observer.booked(entry)

    def book_model(self, usage: ModelUsage, step_id: str | None = None) -> None:
        self._book(
            LedgerEntry(
                kind="model",
                name=usage.model,
                role=usage.role,
                step_id=step_id,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                usd=usage.usd,
                latency_ms=usage.latency_ms,
            )
        )

    def book_cached(
        self, kind: Literal["model", "tool"], name: str, step_id: str | None = None
    ) -> None:
        self._book(LedgerEntry(kind=kind, name=name, step_id=step_id, usd=0.0, cached=True))

    def book_tool(self, name: str, step_id: str, usd: float, seconds: float, ok: bool) -> None:
        self._book(
            LedgerEntry(
                kind="tool", name=name, step_id=step_id, usd=usd, latency_ms=seconds * 1000, ok=ok
            )
        )

    def book_agent(
        self, name: str, step_id: str, ledger: Ledger, usd: float | None, seconds: float
    ) -> None:
        """One entry for a sub-agent's whole spend (its own ledger has the details); `usd`
        overrides its ledger's total when that is unknown (a failed child: its whole slice)."""
        self._book(
            LedgerEntry(
                kind="agent",
                name=name,
                step_id=step_id,
                input_tokens=sum(e.input_tokens for e in ledger.entries),
                output_tokens=sum(e.output_tokens for e in ledger.entries),
                usd=ledger.total_usd if usd is None else usd,
                latency_ms=seconds * 1000,
            )
        )

    def llm_calls(self) -> int:
        """Model calls the task paid for itself (memory upkeep and cache hits excluded)."""
        return sum(
            e.calls
            for e in self.ledger.entries
            if e.kind == "model" and e.role != "memory" and not e.cached
        )
