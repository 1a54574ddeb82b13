"""Tools the AgentTask workflow carries out itself, with no tool activity: `ask_human`
(the task waits for a person's answer) and the sub-agents (child AgentTasks).

They reach the planner in the same catalog as the activity tools, so a plan step can ask a
question or delegate like any other call; `ToolSpec.runs_as` tells the workflow which is which.
"""

from __future__ import annotations

from keel.contracts import CatalogRef, SideEffects, SubAgent, ToolSpec

ASK_HUMAN = ToolSpec(
    name="ask_human",
    description="Ask the user a question and wait for the answer.",
    input_schema={
        "type": "object",
        "properties": {"question": {"type": "string", "minLength": 1, "maxLength": 2000}},
        "required": ["question"],
        "additionalProperties": False,
    },
    output_schema={
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    },
    avg_latency_ms=3_600_000,  # a person: hours, not milliseconds
    timeout_s=86_400,
    side_effects=SideEffects.NONE,
    runs_as="human",
)

DEFAULT_SUBAGENTS = [
    SubAgent(
        name="researcher",
        description="looks things up in the documents and answers a research question",
        tools=["search_docs", "list_files", "read_file", "ask_reasoner"],
    ),
    SubAgent(
        name="coder",
        description="writes and runs Python code to compute or check something",
        tools=["run_python", "calculator"],
    ),
]


def subagent_spec(agent: SubAgent) -> ToolSpec:
    """How a sub-agent looks to the planner: a tool that takes a task and costs at most its
    budget slice."""
    return ToolSpec(
        name=agent.name,
        description=f"Delegate a sub-task to the {agent.name} sub-agent, who {agent.description}.",
        input_schema={
            "type": "object",
            "properties": {"task": {"type": "string", "minLength": 1, "maxLength": 20_000}},
            "required": ["task"],
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {"answer": {"type": "string"}, "status": {"type": "string"}},
            "required": ["answer", "status"],
        },
        cost_per_call_usd=agent.budget_usd,
        avg_latency_ms=30_000,
        timeout_s=3600,
        side_effects=SideEffects.READ,
        idempotent=False,
        runs_as="subagent",
    )


def resolve_catalog(listed: list[ToolSpec], ref: CatalogRef) -> list[ToolSpec]:
    """A task's catalog: the tool activities' specs (`listed`), then ask_human and the
    sub-agents where the task offers them, cut to its allow-list. The workflow builds it so
    for runs that fetched the catalog; the planner worker, for a plan request by reference."""
    specs = [
        *listed,
        *([ASK_HUMAN] if ref.ask_human else []),
        *(
            subagent_spec(a)
            for a in (DEFAULT_SUBAGENTS if ref.subagents is None else ref.subagents)
        ),
    ]
    allowed = set(ref.allowed_tools) if ref.allowed_tools is not None else None
    return [t for t in specs if allowed is None or t.name in allowed]
