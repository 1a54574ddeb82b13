"""`ask_reasoner`: a hard question for the large model, through the router's reasoner role."""

from __future__ import annotations

from pydantic import BaseModel, Field

from activities.models.base import Message, ModelRequest
from activities.tools.registry import ToolContext
from keel._core.untrusted import DATA_RULE

SYSTEM = "You are a careful expert. Answer the question briefly and precisely. " + DATA_RULE
MAX_ANSWER_TOKENS = 400


class AskReasonerInput(BaseModel):
    question: str = Field(min_length=1, max_length=8000, description="the question to answer")


class AskReasonerOutput(BaseModel):
    answer: str


def question_prompt(question: str) -> list[Message]:
    return [Message("system", SYSTEM), Message("user", question)]


async def ask_reasoner(args: AskReasonerInput, ctx: ToolContext) -> AskReasonerOutput:
    if ctx.router is None:
        raise RuntimeError("ask_reasoner runs on the reasoner worker, which has no model router")
    routed = await ctx.router.complete(
        "reasoner",
        ModelRequest(messages=question_prompt(args.question), max_tokens=MAX_ANSWER_TOKENS),
        max_usd=ctx.max_usd,
        max_tokens=ctx.max_tokens,
    )
    ctx.usage.append(routed.usage)
    return AskReasonerOutput(answer=routed.text.strip())
