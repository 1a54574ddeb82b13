"""The plain `temporal` CLI as a client: starting tasks with JSON input, and bad input."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from keel.contracts import TaskResult, TaskStatus
from temporal.devserver import temporal_cli
from tests.conftest import Stack, unique


async def _temporal(stack: Stack, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        str(temporal_cli()), *args, "--address", stack.address,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await process.communicate()
    assert process.returncode == 0, out.decode()
    return out.decode()


async def _start(stack: Stack, payload: dict[str, object]) -> str:
    workflow_id = f"cli-{uuid.uuid4().hex[:8]}"
    await _temporal(
        stack, "workflow", "start", "--type", "AgentTask", "--task-queue", "keel-agent",
        "--workflow-id", workflow_id, "--input", json.dumps(payload),
    )  # fmt: skip
    return workflow_id


async def test_task_started_with_the_temporal_cli_completes(stack: Stack) -> None:
    workflow_id = await _start(stack, {"task": unique("What is 12*12?"), "budget": {"usd": 0.02}})
    handle = stack.client.get_workflow_handle(workflow_id, result_type=TaskResult)
    result = await handle.result()
    assert result.status == TaskStatus.COMPLETED
    assert "144" in result.answer

    described = await _temporal(stack, "workflow", "describe", "--workflow-id", workflow_id)
    assert "Completed" in described or "COMPLETED" in described


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        ({"budget": {"usd": 1}}, "task: Field required"),
        ({"task": "hi", "budget": {"usd": -1}}, "budget.usd: Input should be greater than 0"),
        ({"task": "hi", "colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
async def test_malformed_input_fails_fast_and_clearly(
    stack: Stack, payload: dict[str, object], complaint: str
) -> None:
    workflow_id = await _start(stack, payload)
    handle = stack.client.get_workflow_handle(workflow_id, result_type=TaskResult)
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(handle.result(), timeout=30)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "InvalidInput" and cause.non_retryable
    assert complaint in cause.message
    assert "\n" not in cause.message
