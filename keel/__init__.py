"""Keel: a production-first runtime for AI agents on Temporal.

The public surface is what `__all__` lists; everything else is internal and may change.

    from keel import Budget, TaskRequest, connect, start_task

    client = await connect()
    handle = await start_task(client, TaskRequest(task="What is 6*7?", budget=Budget(usd=0.01)))
    result = await handle.result()

Names load on first use, so `import keel` (and the workflow sandbox importing `keel.durable`)
does not pull in the Temporal client or the settings.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    # contracts: what a task is asked and answers
    "Approval": "keel.contracts",
    "Budget": "keel.contracts",
    "HumanAnswer": "keel.contracts",
    "HumanPolicy": "keel.contracts",
    "Ledger": "keel.contracts",
    "PendingRequest": "keel.contracts",
    "Plan": "keel.contracts",
    "Rejection": "keel.contracts",
    "StepResult": "keel.contracts",
    "SubAgent": "keel.contracts",
    "TaskProgress": "keel.contracts",
    "TaskRequest": "keel.contracts",
    "TaskResult": "keel.contracts",
    "TaskStatus": "keel.contracts",
    "ToolSpec": "keel.contracts",
    # starting and watching tasks
    "connect": "keel.client",
    "memorize": "keel.client",
    "start_task": "keel.client",
    "KeelPlugin": "keel.plugin",
    "Queues": "keel._queues",
    "Settings": "keel.settings",
    "get_settings": "keel.settings",
    # what can go wrong
    "KeelError": "keel.errors",
}

__all__ = [
    "Approval",
    "Budget",
    "HumanAnswer",
    "HumanPolicy",
    "KeelError",
    "KeelPlugin",
    "Ledger",
    "PendingRequest",
    "Plan",
    "Queues",
    "Rejection",
    "Settings",
    "StepResult",
    "SubAgent",
    "TaskProgress",
    "TaskRequest",
    "TaskResult",
    "TaskStatus",
    "ToolSpec",
    "connect",
    "get_settings",
    "memorize",
    "start_task",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'keel' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # next time without __getattr__
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from keel._queues import Queues
    from keel.client import connect, memorize, start_task
    from keel.contracts import (
        Approval,
        Budget,
        HumanAnswer,
        HumanPolicy,
        Ledger,
        PendingRequest,
        Plan,
        Rejection,
        StepResult,
        SubAgent,
        TaskProgress,
        TaskRequest,
        TaskResult,
        TaskStatus,
        ToolSpec,
    )
    from keel.errors import KeelError
    from keel.plugin import KeelPlugin
    from keel.settings import Settings, get_settings
