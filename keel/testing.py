"""Testing Keel without paying for models: a stack of real workers on a throwaway Temporal
dev server, with the deterministic scripted model in every model role.

    async with scripted_stack(tmp_path) as stack:
        stack.model.script("What is 6*7", "plan", scripted_plan({"id": "s1", ...}))
        result = await (await start_task(stack.client, TaskRequest(task="What is 6*7"))).result()

Keel's own tests (tests/conftest.py) and benchmarks (bench/) are built on these helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.models.router import ModelRouter
from activities.models.scripted import ScriptedModel
from activities.tools.builtin import default_registry
from activities.tools.registry import Tool
from keel._queues import Queues
from keel.settings import Settings
from temporal.devserver import start_test_environment
from workers.components import Components
from workers.process import build_all, workers_running

__all__ = [
    "ScriptedModel",
    "Stack",
    "eventually",
    "scripted_components",
    "scripted_plan",
    "scripted_stack",
    "scripted_workers",
]

T = TypeVar("T")


@dataclass
class Stack:
    env: WorkflowEnvironment
    client: Client
    settings: Settings
    model: ScriptedModel
    components: Components

    @property
    def address(self) -> str:
        return self.client.service_client.config.target_host


def scripted_components(
    settings: Settings, queues: Queues, tools: Sequence[Tool] = ()
) -> tuple[Components, ScriptedModel]:
    """Every component with the scripted model as planner and reasoner; escalations go to
    the same scripts under a large model's price. `tools` join the built-in ones."""
    model = ScriptedModel()
    registry = default_registry(settings)
    for tool in tools:
        registry.add(tool)
    components = Components(
        settings=settings,
        queues=queues,
        _router=ModelRouter(
            {"planner": model, "reasoner": model, "escalation": model.renamed("scripted-large")}
        ),
        _registry=registry,
    )
    return components, model


@contextlib.asynccontextmanager
async def scripted_workers(
    client: Client, settings: Settings, queues: Queues | None = None, tools: Sequence[Tool] = ()
) -> AsyncIterator[tuple[Components, ScriptedModel]]:
    """Every worker on `client` with scripted models (scripted_components), for the duration
    of the block; their memory stores are closed after it."""
    components, model = scripted_components(settings, queues or Queues(), tools)
    try:
        async with workers_running(build_all(client, components)):
            yield components, model
    finally:
        components.close_memory()


@contextlib.asynccontextmanager
async def scripted_stack(
    home: Path, *dev_server_args: str, tools: Sequence[Tool] = ()
) -> AsyncIterator[Stack]:
    """A dev server of its own (with any extra flags, say an early continue-as-new
    suggestion) and scripted workers, for the duration of the block."""
    env = await start_test_environment(*dev_server_args)
    settings = Settings(home=home, planner_model="scripted", reasoner_model="scripted")
    try:
        async with scripted_workers(env.client, settings, tools=tools) as (components, model):
            yield Stack(env, env.client, settings, model, components)
    finally:
        await env.shutdown()


def scripted_plan(*steps: dict[str, Any]) -> str:
    """A plan as the scripted planner should answer it (steps depend on nothing by default)."""
    return json.dumps({"steps": [{"depends_on": [], **step} for step in steps]})


async def eventually(
    check: Callable[[], Awaitable[T | None]], what: str, timeout_s: float = 30
) -> T:
    """Poll `check` until it returns something other than None (or False); fail after
    `timeout_s` saying what never happened. For states another process reaches (a workflow
    starting to wait, visibility catching up), never a fixed sleep."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await check()
        if value is not None and value is not False:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.05)
