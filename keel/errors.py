"""Failure type names that cross Temporal (ApplicationError.type); durable like activity names."""

BUDGET_EXCEEDED = "BudgetExceeded"  # a call could not fit in what it was allowed to spend
TOOL_ERROR = "ToolError"  # the tool refused its input; retrying will not help
INVALID_OUTPUT = "InvalidToolOutput"  # the tool returned data that breaks its output schema
INVALID_INPUT = "InvalidInput"  # a payload did not match its contract


class ServiceStartError(RuntimeError):
    """A server Keel starts for itself (Triton, ...) is missing or would not start; the
    message says what to do."""
