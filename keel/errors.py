"""Failure types that cross Temporal (ApplicationError.type) live in keel/durable.py."""

from keel.durable import BUDGET_EXCEEDED, INVALID_INPUT, INVALID_OUTPUT, TOOL_ERROR

__all__ = ["BUDGET_EXCEEDED", "INVALID_INPUT", "INVALID_OUTPUT", "TOOL_ERROR", "ServiceStartError"]


class ServiceStartError(RuntimeError):
    """A server Keel starts for itself (Triton, ...) is missing or would not start; the
    message says what to do."""
