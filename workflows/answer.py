"""Writing the answer: from the cache when the same task met the same results and knowledge
before, otherwise by the reasoner (then cached for next time)."""

from __future__ import annotations

from typing import Literal

from temporalio import workflow

from keel import durable
from keel._core.budget import fits
from keel._core.cache_keys import answer_entry, answer_key
from keel.contracts import Synthesis, SynthesisRequest, TaskStatus
from workflows import activity_options as options
from workflows.memory_calls import cache_lookup, cache_store
from workflows.state import TaskState


async def synthesize(task: TaskState, context: list[str], knowledge: list[str]) -> str:
    task.set_status(TaskStatus.SYNTHESIZING, "writing the answer")
    key = answer_key(task.request.task, knowledge, task.results)
    hit = await cache_lookup(task, durable.SYNTHESIZE, key, True, False)
    if hit is not None and isinstance(hit.value.get("answer"), str):
        task.book.book_cached("model", durable.SYNTHESIZE)
        return str(hit.value["answer"])
    remaining = task.book.require("writing the answer")
    # the large model when the budget left pays for its usual answer, else the small one
    estimate = task.plan.synthesis_estimate_usd if task.plan is not None else 0.0
    role: Literal["reasoner", "planner"] = "reasoner" if fits(estimate, remaining) else "planner"
    synthesis = await options.call_model(
        durable.SYNTHESIZE,
        SynthesisRequest(
            task=task.request.task,
            steps=task.results,
            context=context,
            max_usd=remaining,
            max_tokens=task.book.remaining_tokens(),
            role=role,
        ),
        Synthesis,
        task.queues.llm,
        summary=f"synthesize: answer from {len(task.results)} step results by the {role}",
        refusal="the answer does not fit the budget",
        priority=task.priority,
    )
    task.book.book_model(synthesis.usage)
    if task.lean and workflow.info().parent is None:
        task.answer_cache_key = key  # stored with the episode: one memory call, not two
    else:
        workflow_id = workflow.info().workflow_id
        await cache_store(task, answer_entry(key, task.user_id, synthesis.answer, workflow_id))
    return synthesis.answer
