"""The `react_step` activity: the ReAct baseline's one model call per step.

Each turn shows the model the task, the tools and every observation so far, and asks for
one action: a tool call or the final answer. The prompt grows with every step; that growth
is what plan-ahead avoids (bench/planning.py measures both).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio import activity

from activities.models.base import Message, ModelRequest
from activities.models.router import ModelRouter
from activities.planning import BUDGET, MEMORY, TASK, TOOLS, grammar_schema, tool_line
from keel import durable
from keel._converter import describe_validation_error
from keel._core.untrusted import DATA_RULE, quoted
from keel._logging import activity_logger
from keel._plans import output_text
from keel.contracts import ReactDecision, ReactRequest, StepStatus, ToolSpec

FINISH = "finish"
TURN_MAX_TOKENS = 300
OBSERVATION_CHARS = 600
OBSERVATION = "Observation: "  # the user turn after each action (the scripted model reads it)

SYSTEM = f"""You are an agent that solves the task one tool call at a time.
Each turn reply with JSON only, either a tool call:
{{"thought": "...", "tool": "<tool name>", "args": {{...}}}}
or, once the observations answer the task:
{{"thought": "...", "tool": "{FINISH}", "answer": "<the answer>"}}
{DATA_RULE}"""


class _Turn(BaseModel):
    thought: str = ""
    tool: str
    args: dict[str, Any] = {}
    answer: str | None = None


def react_output_schema(tools: list[ToolSpec]) -> dict[str, Any]:
    branches: list[dict[str, Any]] = []
    for spec in tools:
        args = grammar_schema(spec.input_schema)
        args["additionalProperties"] = False
        branches.append(
            {
                "type": "object",
                "properties": {
                    "thought": {"type": "string"},
                    "tool": {"const": spec.name},
                    "args": args,
                },
                "required": ["thought", "tool", "args"],
                "additionalProperties": False,
            }
        )
    branches.append(
        {
            "type": "object",
            "properties": {
                "thought": {"type": "string"},
                "tool": {"const": FINISH},
                "answer": {"type": "string"},
            },
            "required": ["thought", "tool", "answer"],
            "additionalProperties": False,
        }
    )
    return {"anyOf": branches}


def react_prompt(request: ReactRequest) -> list[Message]:
    lines = [f"{TASK}{request.task}", "", TOOLS]
    lines += [tool_line(spec, latency=False) for spec in request.tools]
    if request.context:
        lines += ["", MEMORY, *(f"- {quoted(c)}" for c in request.context)]
    lines.append(f"{BUDGET}{request.remaining_usd:.6f}; tool calls left: {request.steps_left}")
    messages = [Message("system", SYSTEM), Message("user", "\n".join(lines))]
    for step in request.history:  # the transcript: every action and what it returned
        messages.append(Message("assistant", json.dumps({"tool": step.tool, "args": step.args})))
        observation = (
            quoted(output_text(step)[:OBSERVATION_CHARS])
            if step.status == StepStatus.SUCCEEDED
            else f"error: {quoted(step.error or '')}"
        )
        messages.append(Message("user", f"{OBSERVATION}{observation}"))
    return messages


class ReactActivities:
    def __init__(self, router: ModelRouter) -> None:
        self.router = router

    @activity.defn(name=durable.REACT_STEP)
    async def react_step(self, request: ReactRequest) -> ReactDecision:
        routed = await self.router.complete(
            "planner",
            ModelRequest(
                messages=react_prompt(request),
                max_tokens=TURN_MAX_TOKENS,
                json_schema=react_output_schema(request.tools),
            ),
            max_usd=request.max_usd,
            max_tokens=request.max_tokens,
        )
        try:
            turn = _Turn.model_validate_json(routed.text)
        except ValidationError as err:
            activity_logger().info("react output is not an action", output=routed.text[:300])
            return ReactDecision(
                error=describe_validation_error(err, "action JSON"), usage=routed.usage
            )
        if turn.tool == FINISH:
            return ReactDecision(answer=turn.answer or "", usage=routed.usage)
        return ReactDecision(tool=turn.tool, args=turn.args, usage=routed.usage)
