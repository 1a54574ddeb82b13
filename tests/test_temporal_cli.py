"""The plain `temporal` CLI as a client: starting tasks with JSON input, bad input, and a
person in the loop (status, listing by search attribute, approve / reject / answer Updates,
cancel) with nothing but the `temporal` command."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from keel._short_term import ShortTermMemory
from keel.contracts import CarriedState, Ledger, TaskResult, TaskStatus
from keel.testing import Stack, eventually, scripted_plan
from temporal.devserver import temporal_cli
from tests.conftest import QUESTION_STEP, SQUARE_STEP, TRANSFER_STEP, TRANSFERS, unique


async def _temporal_run(stack: Stack, *args: str) -> tuple[int, str]:
    """Run `temporal ARGS` against the session's server: exit code and output."""
    process = await asyncio.create_subprocess_exec(
        str(temporal_cli()), *args, "--address", stack.address,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def _temporal(stack: Stack, *args: str) -> str:
    code, out = await _temporal_run(stack, *args)
    assert code == 0, out
    return out


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
    # the completion-rate metric: done, and no person had to step in
    await _counted(stack, f'KeelWithoutHuman=true AND WorkflowId="{workflow_id}"')


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        ({"budget": {"usd": 1}}, "task: Field required"),
        ({"task": "hi", "budget": {"usd": -1}}, "budget.usd: Input should be greater than 0"),
        ({"task": "hi", "colour": "red"}, "colour: Extra inputs are not permitted"),
        # the security review's probes (issue 17): each one line, none a wedged task
        (
            {"task": "hi", "human": {"wait_timeout_s": 1e14}},
            "human.wait_timeout_s: Input should be less than or equal to 31622400",
        ),
        (
            {"task": "hi", "subagents": [{"name": "a", "description": "d"}] * 2600},
            "subagents: List should have at most 16 items",
        ),
        ({"task": "hi", "user_id": "\U0001f600" * 200}, "user_id: is 800 bytes of UTF-8"),
        ({"task": "hi", "user_id": "bob\x1b]0;admin\x07"}, "user_id: must be printable text"),
        (
            {
                "task": "hi",
                "carried": CarriedState(
                    short_term=ShortTermMemory().carried(), ledger=Ledger(budget_usd=1e6)
                ).model_dump(mode="json"),
            },
            "a caller may not send it",
        ),
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


# --- a person in the loop, with the temporal CLI only -----------------------------------------


async def _query(stack: Stack, workflow_id: str, name: str) -> Any:
    """`temporal workflow query --name NAME -o json`: the query's value."""
    out = await _temporal(
        stack, "workflow", "query", "--workflow-id", workflow_id, "--name", name, "-o", "json"
    )
    return json.loads(out)["queryResult"][0]


async def _waiting(stack: Stack, workflow_id: str, request_id: str) -> list[dict[str, Any]]:
    """Poll the `pending` query until the task waits for a decision on `request_id`."""

    async def pending() -> list[dict[str, Any]] | None:
        code, out = await _temporal_run(
            stack, "workflow", "query", "--workflow-id", workflow_id, "--name", "pending",
            "-o", "json",
        )  # fmt: skip
        if code != 0:  # the task has not run its first workflow task yet
            return None
        # nothing pending yet: an empty list, which `-o json` shows as null
        found: list[dict[str, Any]] = json.loads(out)["queryResult"][0] or []
        return found if any(p["id"] == request_id for p in found) else None

    return await eventually(pending, f"{workflow_id} to wait for a decision on {request_id}")


async def _listed(stack: Stack, query: str) -> list[dict[str, Any]]:
    """`temporal workflow list --query QUERY -o json`, polled until it lists something
    (visibility lags the workflow a little)."""

    async def listed() -> list[dict[str, Any]] | None:
        out = await _temporal(stack, "workflow", "list", "--query", query, "-o", "json")
        found: list[dict[str, Any]] = json.loads(out)
        return found or None

    return await eventually(listed, f"visibility to list {query}")


async def _counted(stack: Stack, query: str) -> None:
    async def counted() -> bool:
        out = await _temporal(stack, "workflow", "count", "--query", query)
        return out.strip() == "Total: 1"

    await eventually(counted, f"`temporal workflow count` to find one task for {query}")


async def _update(stack: Stack, workflow_id: str, name: str, payload: dict[str, Any]) -> str:
    return await _temporal(
        stack, "workflow", "update", "execute", "--workflow-id", workflow_id, "--name", name,
        "--input", json.dumps(payload),
    )  # fmt: skip


async def _refused(stack: Stack, workflow_id: str, name: str, payload: dict[str, Any]) -> str:
    code, out = await _temporal_run(
        stack, "workflow", "update", "execute", "--workflow-id", workflow_id, "--name", name,
        "--input", json.dumps(payload),
    )  # fmt: skip
    assert code == 1, out
    return out


async def _result(stack: Stack, workflow_id: str) -> dict[str, Any]:
    """`temporal workflow result -o json`: the TaskResult, once the task has ended."""
    out = await _temporal(stack, "workflow", "result", "--workflow-id", workflow_id, "-o", "json")
    result: dict[str, Any] = json.loads(out)["result"]
    return result


async def test_a_task_needing_approval_is_driven_with_the_temporal_cli_alone(
    stack: Stack,
) -> None:
    task = unique("Send bob five dollars")
    stack.model.script(task, "plan", scripted_plan(TRANSFER_STEP))
    user = f"cli-{uuid.uuid4().hex[:8]}"
    before = len(TRANSFERS)
    human = {"wait_timeout_s": 3600, "on_timeout": "escalate"}
    workflow_id = await _start(
        stack, {"task": task, "user_id": user, "budget": {"usd": 0.02}, "human": human}
    )

    [pending] = await _waiting(stack, workflow_id, "s1")
    assert pending["kind"] == "approval" and pending["text"] == 'transfer(to="bob", usd=5)'
    assert pending["expected_cost_usd"] == 0.001 and pending["escalated"] is False
    status = await _query(stack, workflow_id, "status")
    assert status["status"] == "awaiting_approval"
    assert status["events"][-1] == "waiting for approval: s1" and status["total_usd"] > 0
    [listed] = await _listed(
        stack, f'KeelStatus="awaiting_approval" AND WorkflowId="{workflow_id}"'
    )
    assert listed["execution"]["workflowId"] == workflow_id
    assert listed["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING"
    await _listed(stack, f'KeelStatus="awaiting_approval" AND KeelUser="{user}"')

    # a refused Update shows the task's own reason
    out = await _refused(stack, workflow_id, "approve", {"step_id": "s9"})
    assert "step 's9' is not waiting for approval; waiting: s1" in out
    out = await _refused(stack, workflow_id, "approve", {"step": "s1"})
    assert "invalid Approval: step_id: Field required; step: Extra inputs are not permitted" in out
    assert len(TRANSFERS) == before

    out = await _update(stack, workflow_id, "approve", {"step_id": "s1", "by": "carol"})
    assert "approved s1" in out
    result = await _result(stack, workflow_id)
    assert result["status"] == "completed" and result["human_interventions"] == 1
    assert result["steps"][0]["output"] == {"text": "sent $5 to bob"}
    assert result["completed_without_human"] is False
    assert len(TRANSFERS) == before + 1
    await _counted(stack, f'KeelWithoutHuman=false AND WorkflowId="{workflow_id}"')


async def test_a_step_is_rejected_with_the_temporal_cli(stack: Stack) -> None:
    task = unique("Send bob five dollars, or tell me why not")
    calculator = {"id": "s2", "tool": "calculator", "args": {"expression": "5*1"}}
    stack.model.script(task, "plan", scripted_plan(TRANSFER_STEP), scripted_plan(calculator))
    workflow_id = await _start(stack, {"task": task})
    await _waiting(stack, workflow_id, "s1")

    out = await _refused(stack, workflow_id, "reject", {"step_id": "s1"})
    assert "invalid Rejection: reason: Field required" in out
    reject = {"step_id": "s1", "reason": "too risky", "by": "dan"}
    assert "rejected s1" in await _update(stack, workflow_id, "reject", reject)
    result = await _result(stack, workflow_id)
    assert result["status"] == "completed" and result["replans"] == 1
    assert [(s["step_id"], s["status"]) for s in result["steps"]] == [
        ("s1", "failed"),
        ("s2", "succeeded"),
    ]
    assert result["steps"][0]["error"] == "rejected by dan: too risky"


async def test_a_question_is_answered_with_the_temporal_cli(stack: Stack) -> None:
    task = unique("Ask me which number to square, then square it")
    stack.model.script(task, "plan", scripted_plan(QUESTION_STEP, SQUARE_STEP))
    workflow_id = await _start(stack, {"task": task, "human": {"questions": True}})
    [pending] = await _waiting(stack, workflow_id, "s1")
    assert pending["kind"] == "question" and pending["text"] == "Which number?"
    assert (await _query(stack, workflow_id, "status"))["status"] == "awaiting_answer"
    await _listed(stack, f'KeelStatus="awaiting_answer" AND WorkflowId="{workflow_id}"')

    out = await _refused(stack, workflow_id, "answer", {"text": "7", "question_id": "q"})
    assert "no open question 'q'; open: s1" in out
    out = await _update(stack, workflow_id, "answer", {"text": "7", "question_id": "s1"})
    assert "answered s1" in out
    result = await _result(stack, workflow_id)
    assert result["status"] == "completed"
    assert result["steps"][1]["output"]["value"] == 49


async def test_a_waiting_task_is_cancelled_with_the_temporal_cli(stack: Stack) -> None:
    task = unique("Send bob five dollars (then changed my mind)")
    stack.model.script(task, "plan", scripted_plan(TRANSFER_STEP))
    workflow_id = await _start(stack, {"task": task})
    await _waiting(stack, workflow_id, "s1")
    spent = (await _query(stack, workflow_id, "status"))["total_usd"]

    await _temporal(stack, "workflow", "cancel", "--workflow-id", workflow_id)
    code, out = await _temporal_run(stack, "workflow", "result", "--workflow-id", workflow_id)
    assert code == 1 and "CANCELED" in out
    status = await _query(stack, workflow_id, "status")
    assert status["status"] == "cancelled" and status["total_usd"] == spent
    [listed] = await _listed(stack, f'KeelStatus="cancelled" AND WorkflowId="{workflow_id}"')
    assert listed["status"] == "WORKFLOW_EXECUTION_STATUS_CANCELED"
    out = await _refused(stack, workflow_id, "approve", {"step_id": "s1"})
    assert "workflow execution already completed" in out
