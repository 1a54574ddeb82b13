"""The `synthesize` activity: the reasoner writes the final answer from the step results."""

from __future__ import annotations

import json

from temporalio import activity

from activities.models.base import Message, ModelRequest
from activities.models.router import ModelRouter
from keel import durable
from keel._core.untrusted import DATA_RULE, quoted
from keel._logging import activity_logger
from keel._plans import output_text
from keel.contracts import StepStatus, Synthesis, SynthesisRequest

ANSWER_MAX_TOKENS = 300
RESULT_CHARS = 1500

SYSTEM = (
    "You answer the user's task using only the tool results given. Quote numbers exactly as "
    "the results give them. Be brief. " + DATA_RULE
)

# The prompt's labels (the scripted model reads the prompt back by them).
TASK = "Task: "
RESULTS = "Tool results:"
NO_RESULTS = "(none)"
MEMORY = "From memory:"


def results_text(request: SynthesisRequest) -> str:
    lines = []
    for r in request.steps:
        if r.status == StepStatus.SUCCEEDED:
            args = json.dumps(r.args, sort_keys=True)
            lines.append(f"{r.tool}({args}) = {quoted(output_text(r)[:RESULT_CHARS])}")
    return "\n".join(lines)


def synthesis_prompt(request: SynthesisRequest) -> list[Message]:
    user = f"{TASK}{request.task}\n\n{RESULTS}\n{results_text(request) or NO_RESULTS}"
    if request.context:
        user += f"\n\n{MEMORY}\n" + "\n".join(f"- {quoted(c)}" for c in request.context)
    return [Message("system", SYSTEM), Message("user", user)]


class ReasoningActivities:
    def __init__(self, router: ModelRouter) -> None:
        self.router = router

    @activity.defn(name=durable.SYNTHESIZE)
    async def synthesize(self, request: SynthesisRequest) -> Synthesis:
        routed = await self.router.complete(
            request.role,
            ModelRequest(messages=synthesis_prompt(request), max_tokens=ANSWER_MAX_TOKENS),
            max_usd=request.max_usd,
            max_tokens=request.max_tokens,
        )
        activity_logger().info("answer written", chars=len(routed.text))
        return Synthesis(answer=routed.text.strip(), usage=routed.usage)
