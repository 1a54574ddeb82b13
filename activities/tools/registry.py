"""Tools declared once: a function, its pydantic input/output models and its metadata.

The JSON schemas the planner sees are derived from the models, and the same models validate
every call's input and output in the executor.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from activities.models.router import ModelRouter
from keel import durable
from keel._queues import TOOLS
from keel.contracts import CachePolicy, ModelUsage, SideEffects, ToolSpec
from sandbox.workspace import TaskWorkspace


@dataclass
class ToolContext:
    workflow_id: str
    step_id: str
    max_usd: float
    max_tokens: int | None
    workspaces_dir: Path
    docs_dir: Path
    router: ModelRouter | None = None
    usage: list[ModelUsage] = field(default_factory=list)  # model calls made by the tool
    workspace_id: str | None = None  # the task's files; None: the workflow id's
    tool: str = ""  # the tool called

    def workspace(self) -> TaskWorkspace:
        if self.tool not in durable.FILE_TOOLS:  # its task would never release the copy
            raise RuntimeError(
                f"tool {self.tool!r} reads the task's files: add it to keel.durable.FILE_TOOLS"
            )
        return TaskWorkspace.for_task(
            self.workspaces_dir, self.workspace_id or self.workflow_id, self.docs_dir
        )


ToolFn = Callable[[Any, ToolContext], Awaitable[BaseModel]]


@dataclass(frozen=True)
class Tool:
    spec: ToolSpec
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    fn: ToolFn


def define_tool(
    name: str,
    description: str,
    fn: ToolFn,
    input_model: type[BaseModel],
    output_model: type[BaseModel],
    *,
    cost_per_call_usd: float = 0.0,
    avg_latency_ms: float = 10.0,
    timeout_s: float = 30.0,
    side_effects: SideEffects = SideEffects.NONE,
    idempotent: bool = True,
    requires_approval: bool | None = None,
    queue: str = TOOLS,
    queue_arg: str | None = None,
    max_attempts: int = 3,
    cache: CachePolicy | None = None,
) -> Tool:
    spec = ToolSpec(
        name=name,
        description=description,
        input_schema=input_model.model_json_schema(),
        output_schema=output_model.model_json_schema(),
        cost_per_call_usd=cost_per_call_usd,
        avg_latency_ms=avg_latency_ms,
        timeout_s=timeout_s,
        side_effects=side_effects,
        idempotent=idempotent,
        # unsaid: a tool that changes something or calls a third party waits for a person
        # (a prompt-injected plan cannot act on its own); a tool says False to run freely
        requires_approval=requires_approval
        if requires_approval is not None
        else side_effects in (SideEffects.WRITE, SideEffects.EXTERNAL),
        queue=queue,
        queue_arg=queue_arg,
        max_attempts=max_attempts,
        cache=cache,
    )
    return Tool(spec, input_model, output_model, fn)


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool) -> None:
        if tool.spec.name in self._tools:
            raise ValueError(f"tool {tool.spec.name!r} is registered twice")
        self._tools[tool.spec.name] = tool

    def specs(self) -> list[ToolSpec]:
        return [t.spec for t in self._tools.values()]

    def on_queue(self, base_queue: str) -> list[Tool]:
        return [t for t in self._tools.values() if t.spec.queue == base_queue]
