"""The `synthesize` activity: the reasoner writes the final answer from the step results."""

from __future__ import annotations

import json

from temporalio import activity

from activities.models.base import Message, ModelRequest
from activities.models.router import ModelRouter
from keel import durable
from keel.contracts import StepStatus, Synthesis, SynthesisRequest
from keel.logging import activity_logger
from keel.plans import output_text

ANSWER_MAX_TOKENS = 300
RESULT_CHARS = 1500

SYSTEM = (
    "You answer the user's task using only the tool results given. Quote numbers exactly as "
    "the results give them. Be brief."
)


def results_text(request: SynthesisRequest) -> str:
    lines = []
    for r in request.steps:
        if r.status == StepStatus.SUCCEEDED:
            args = json.dumps(r.args, sort_keys=True)
            lines.append(f"{r.tool}({args}) = {output_text(r)[:RESULT_CHARS]}")
    return "\n".join(lines)


class ReasoningActivities:
    def __init__(self, router: ModelRouter) -> None:
        self.router = router

    @activity.defn(name=durable.SYNTHESIZE)
    async def synthesize(self, request: SynthesisRequest) -> Synthesis:
        results = results_text(request)
        user = f"Task: {request.task}\n\nTool results:\n{results or '(none)'}"
        if request.context:
            user += "\n\nFrom memory:\n" + "\n".join(f"- {c}" for c in request.context)
        routed = await self.router.complete(
            "reasoner",
            ModelRequest(
                messages=[Message("system", SYSTEM), Message("user", user)],
                max_tokens=ANSWER_MAX_TOKENS,
                meta={"purpose": "synthesize", "task": request.task, "results": results},
            ),
            max_usd=request.max_usd,
            max_tokens=request.max_tokens,
        )
        activity_logger().info("answer written", chars=len(routed.text))
        return Synthesis(answer=routed.text.strip(), usage=routed.usage)
