"""Tool activities: one activity type per tool (`tool.<name>`), plus the catalog.

`ToolActivities.execute` is the validated execution path (input validation, cost check, the
tool itself, output validation, size cap); the activities run it, and so does anything else
that calls Keel tools outside a workflow (the MCP server, keel/_mcp_server.py), so the same
refusals and caps hold everywhere.

A tool refuses a call only by raising `ToolRefusal` (keel/errors.py): a final failure the
planner plans around. Anything else a tool raises is a bug or an outage, never a refusal:
the activity fails with the exception's type named in its failure, and Temporal retries it
when the tool is idempotent.

A tool activity heartbeats while its tool runs (`heartbeating`): the heartbeat is how a worker
learns that the activity was cancelled (its workflow cancelled the step or the task). The
worker then cancels the activity's task, the tool stops what it started (a sandbox run is
killed, a SQL query cancelled on the server, a connection closed) and the cancellation goes
back up, so Temporal records the activity as cancelled with nothing of it still running.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog
from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import FailureError

from activities.heartbeat import heartbeating
from activities.models.router import ModelRouter
from activities.tools.registry import Tool, ToolContext, ToolRegistry
from keel import _tracing as tracing
from keel import durable
from keel._converter import describe_validation_error
from keel._core.budget import fits
from keel._logging import activity_logger
from keel.contracts import ToolCall, ToolOutput, ToolSpec
from keel.errors import BudgetExceeded, Failure, InvalidToolOutput, ToolFailed, ToolRefusal
from keel.settings import Settings
from sandbox.workspace import TaskWorkspace

WARN_OUTPUT_BYTES = 256 * 1024
MAX_OUTPUT_BYTES = 1024 * 1024  # Temporal caps payloads at 2 MB


class ToolActivities:
    def __init__(
        self, registry: ToolRegistry, settings: Settings, router: ModelRouter | None = None
    ) -> None:
        self.registry, self.settings, self.router = registry, settings, router

    @activity.defn(name=durable.LIST_TOOLS)
    async def list_tools(self) -> list[ToolSpec]:
        return self.registry.specs()

    @activity.defn(name=durable.RELEASE_WORKSPACE)
    async def release_workspace(self, workspace: str) -> bool:
        """The task has ended: its copy of the files goes (a copy another tools worker made
        on its own disk goes with the idle sweep, sandbox/workspace.py)."""
        released = TaskWorkspace.release(self.settings.workspaces_dir, workspace)
        activity_logger().info("workspace released", found=released)
        return released

    def for_queue(self, base_queue: str) -> list[Callable[..., Any]]:
        return [self._activity(tool) for tool in self.registry.on_queue(base_queue)]

    def _activity(self, tool: Tool) -> Callable[..., Any]:
        async def run(call: ToolCall) -> ToolOutput:
            return await self._run(tool, call)

        return activity.defn(name=durable.tool_activity(tool.spec.name))(run)

    async def _run(self, tool: Tool, call: ToolCall) -> ToolOutput:
        log = activity_logger().bind(tool=tool.spec.name, step_id=call.step_id)
        try:
            async with heartbeating():
                return await self.execute(tool, call, log)
        except asyncio.CancelledError:
            log.info("tool cancelled")  # and stopped: the tool ended what it started
            raise
        except Failure as failure:  # a refusal (or another failure a tool raised on purpose)
            raise failure.to_application_error() from None
        except FailureError:
            raise  # built for Temporal by the tool (an API's outage, a model's failure)
        except Exception as err:
            # A bug or an outage, never a refusal: retried when the tool is idempotent. The
            # step's error names the exception, which the message alone may not (a bare
            # "Expecting value: line 1 column 1"); its traceback stays in the failure's cause.
            # One failure type for all of them: a class that happens to be named like a
            # final failure type (some library's ToolError) must not stop the retries.
            failed = ToolFailed(f"{tool.spec.name} failed: {type(err).__name__}: {err}")
            raise failed.to_application_error() from err

    async def execute(self, tool: Tool, call: ToolCall, log: Any = None) -> ToolOutput:
        """Run one call through the validated path: validate the input, check the cost
        against `call.max_usd`, run the tool, validate its output and cap its size.

        Raises ToolRefusal (InvalidToolOutput for a bad output) or BudgetExceeded for a call
        refused; anything else is the tool failing, a bug or an outage (an activity retries
        those when the tool is idempotent). Works outside an activity."""
        # One span per call (per attempt, in an activity), here where every call passes:
        # its outcome and duration, never its arguments or output (keel/_tracing.py).
        with tracing.tool_call(tool.spec.name, call.step_id) as span:
            output = await self._execute(tool, call, log)
            span.set_attribute(tracing.COST_USD, output.cost_usd)
            return output

    async def _execute(self, tool: Tool, call: ToolCall, log: Any) -> ToolOutput:
        spec = tool.spec
        if log is None:
            log = structlog.get_logger("keel.tools").bind(
                tool=spec.name, workflow_id=call.workflow_id, step_id=call.step_id
            )
        try:
            args = tool.input_model.model_validate(call.args)
        except ValidationError as err:
            raise ToolRefusal(describe_validation_error(err, f"{spec.name} arguments")) from None
        if not fits(spec.cost_per_call_usd, call.max_usd):
            raise BudgetExceeded(
                f"{spec.name} costs ${spec.cost_per_call_usd:.6f} per call; "
                f"only ${call.max_usd:.6f} was reserved"
            )
        ctx = ToolContext(
            workflow_id=call.workflow_id,
            workspace_id=call.workspace,
            tool=spec.name,
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
        except ToolRefusal as refusal:  # raised on purpose: nothing else is a refusal
            log.info("tool refused its input", error=refusal.message)
            raise refusal.reworded(f"{spec.name}: {refusal.message}") from None
        try:
            output = tool.output_model.model_validate(result.model_dump()).model_dump(mode="json")
        except ValidationError as err:
            raise InvalidToolOutput(describe_validation_error(err, f"{spec.name} output")) from None
        size = len(ToolOutput(output=output).model_dump_json())
        if size > MAX_OUTPUT_BYTES:
            raise ToolRefusal(f"{spec.name} output is {size} bytes, over {MAX_OUTPUT_BYTES}")
        if size > WARN_OUTPUT_BYTES:
            log.warning("large tool output", bytes=size)
        # A tool that calls models costs what its calls cost (its listed price is only the
        # estimate); any other tool costs its listed price.
        cost = sum(u.usd for u in ctx.usage) if ctx.usage else spec.cost_per_call_usd
        log.info("tool done", ms=round((time.perf_counter() - started) * 1000, 1), usd=cost)
        return ToolOutput(output=output, cost_usd=cost, usage=ctx.usage)
