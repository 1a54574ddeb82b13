"""Keel's search attributes and memo: what the Temporal UI lists, filters and shows tasks by."""

from __future__ import annotations

from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
)

from keel import durable
from keel.contracts import TaskRequest, TaskStatus

STATUS = SearchAttributeKey.for_keyword(durable.SA_STATUS)
COST_USD = SearchAttributeKey.for_float(durable.SA_COST_USD)
USER = SearchAttributeKey.for_keyword(durable.SA_USER)
# Set when a task ends: completed with no person stepping in (the completion-rate metric).
WITHOUT_HUMAN = SearchAttributeKey.for_bool(durable.SA_WITHOUT_HUMAN)

ALL = (STATUS, COST_USD, USER, WITHOUT_HUMAN)
# The tasks waiting for a person (`keel pending`).
_WAITING = ", ".join(f'"{status.value}"' for status in TaskStatus if status.is_waiting)
WAITING_QUERY = f"{STATUS.name} IN ({_WAITING})"


def memo(request: TaskRequest) -> dict[str, object]:
    """Shown with a task in the UI (not searchable): what it was asked, with what budget."""
    return {"task": request.task[:1000], "budget_usd": request.budget.usd, "user": request.user_id}


def initial(user_id: str) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(STATUS, TaskStatus.RUNNING.value),
            SearchAttributePair(COST_USD, 0.0),
            SearchAttributePair(USER, user_id),
        ]
    )
