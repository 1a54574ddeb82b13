"""Keel's search attributes and memo: what the Temporal UI lists, filters and shows tasks by."""

from __future__ import annotations

from typing import TYPE_CHECKING

from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
)

if TYPE_CHECKING:
    from keel.contracts import TaskRequest

STATUS = SearchAttributeKey.for_keyword("KeelStatus")
COST_USD = SearchAttributeKey.for_float("KeelCostUsd")
USER = SearchAttributeKey.for_keyword("KeelUser")
# Set when a task ends: completed with no person stepping in (the completion-rate metric).
WITHOUT_HUMAN = SearchAttributeKey.for_bool("KeelWithoutHuman")

ALL = (STATUS, COST_USD, USER, WITHOUT_HUMAN)
WAITING_QUERY = 'KeelStatus IN ("awaiting_approval", "awaiting_answer")'


def memo(request: TaskRequest) -> dict[str, object]:
    """Shown with a task in the UI (not searchable): what it was asked, with what budget."""
    return {"task": request.task[:1000], "budget_usd": request.budget.usd, "user": request.user_id}


def initial(user_id: str) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(STATUS, "running"),
            SearchAttributePair(COST_USD, 0.0),
            SearchAttributePair(USER, user_id),
        ]
    )
