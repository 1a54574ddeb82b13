"""Tool activities: one activity type per tool (`tool.<name>`), plus the catalog."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.models.router import ModelRouter
from activities.tools.registry import Tool, ToolContext, ToolRegistry
from keel.contracts import ToolCall, ToolOutput, ToolSpec
from keel.converter import describe_validation_error
from keel.errors import BUDGET_EXCEEDED, INVALID_OUTPUT, TOOL_ERROR
from keel.logging import activity_logger
from keel.settings import Settings

LIST_TOOLS = "list_tools"
WARN_OUTPUT_BYTES = 256 * 1024
MAX_OUTPUT_BYTES = 1024 * 1024  # Temporal caps payloads at 2 MB


def activity_name(tool_name: str) -> str:
    return f"tool.{tool_name}"


class ToolActivities:
    def __init__(
        self, registry: ToolRegistry, settings: Settings, router: ModelRouter | None = None
    ) -> None:
        self.registry, self.settings, self.router = registry, settings, router

    @activity.defn(name=LIST_TOOLS)
    async def list_tools(self) -> list[ToolSpec]:
        return self.registry.specs()

    def for_queue(self, base_queue: str) -> list[Callable[..., Any]]:
        return [self._activity(tool) for tool in self.registry.on_queue(base_queue)]

    def _activity(self, tool: Tool) -> Callable[..., Any]:
        async def run(call: ToolCall) -> ToolOutput:
            return await self._run(tool, call)

        return activity.defn(name=activity_name(tool.spec.name))(run)

    async def _run(self, tool: Tool, call: ToolCall) -> ToolOutput:
        log = activity_logger().bind(tool=tool.spec.name, step_id=call.step_id)
        spec = tool.spec
        try:
            args = tool.input_model.model_validate(call.args)
        except ValidationError as err:
            raise _refusal(describe_validation_error(err, f"{spec.name} arguments")) from None
        if spec.cost_per_call_usd > call.max_usd + 1e-12:
            raise ApplicationError(
                f"{spec.name} costs ${spec.cost_per_call_usd:.6f} per call; "
                f"only ${call.max_usd:.6f} was reserved",
                type=BUDGET_EXCEEDED,
                non_retryable=True,
            )
        ctx = ToolContext(
            workflow_id=call.workflow_id,
            step_id=call.step_id,
            max_usd=call.max_usd,
            max_tokens=call.max_tokens,
            workspaces_dir=self.settings.workspaces_dir,
            docs_dir=self.settings.docs_dir,
            router=self.router,
        )
        started = time.perf_counter()
        try:
            result = await tool.fn(args, ctx)
        except ValueError as err:  # tools raise ValueError for input they refuse
            log.info("tool refused its input", error=str(err))
            raise _refusal(f"{spec.name}: {err}") from None
        try:
            output = tool.output_model.model_validate(result.model_dump()).model_dump(mode="json")
        except ValidationError as err:
            raise ApplicationError(
                describe_validation_error(err, f"{spec.name} output"),
                type=INVALID_OUTPUT,
                non_retryable=True,
            ) from None
        size = len(ToolOutput(output=output).model_dump_json())
        if size > MAX_OUTPUT_BYTES:
            raise _refusal(f"{spec.name} output is {size} bytes, over {MAX_OUTPUT_BYTES}")
        if size > WARN_OUTPUT_BYTES:
            log.warning("large tool output", bytes=size)
        # A tool that calls models costs what its calls cost (its listed price is only the
        # estimate); any other tool costs its listed price.
        cost = sum(u.usd for u in ctx.usage) if ctx.usage else spec.cost_per_call_usd
        log.info("tool done", ms=round((time.perf_counter() - started) * 1000, 1), usd=cost)
        return ToolOutput(output=output, cost_usd=cost, usage=ctx.usage)


def _refusal(message: str) -> ApplicationError:
    return ApplicationError(message, type=TOOL_ERROR, non_retryable=True)
