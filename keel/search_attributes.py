"""Keel's search attributes: what the Temporal UI lists and filters tasks by."""

from __future__ import annotations

from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
)

STATUS = SearchAttributeKey.for_keyword("KeelStatus")
COST_USD = SearchAttributeKey.for_float("KeelCostUsd")
USER = SearchAttributeKey.for_keyword("KeelUser")
# Set when a task ends: completed with no person stepping in (the completion-rate metric).
WITHOUT_HUMAN = SearchAttributeKey.for_bool("KeelWithoutHuman")

ALL = (STATUS, COST_USD, USER, WITHOUT_HUMAN)
WAITING_QUERY = 'KeelStatus IN ("awaiting_approval", "awaiting_answer")'


def initial(user_id: str) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(STATUS, "running"),
            SearchAttributePair(COST_USD, 0.0),
            SearchAttributePair(USER, user_id),
        ]
    )
