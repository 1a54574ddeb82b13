"""Keel's pure core: the decisions an AgentTask makes, with no Temporal and no I/O.

The workflow replays these functions and must get the same answers every time, so nothing
here reads a clock, draws a random number or imports `temporalio`; `make lint` checks the
last. Each piece is unit-tested without a server (tests/test_core.py).

- `budget`: the budget book: what is left, whether a cost fits, reservations, bookings.
- `plan_run`: the scheduler of one plan: ready steps, gates (skip, reuse, condition),
  settling, and the snapshot a task carries when it continues as new mid-plan.
- `cache_keys`: what a cached tool call or answer is looked up by.
"""
