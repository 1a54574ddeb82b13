"""Typed contracts that cross Temporal (workflow inputs, activity payloads, results).

Activity names and these payload shapes are durable: running workflows replay against them,
so fields are only ever added with defaults, never renamed or removed.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, computed_field, field_validator

from keel._short_term import ShortTermMemory
from keel._terminal import unprintable
from keel.durable import TOOLS_QUEUE

STEP_ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,31}$"
SHARED_SCOPE = "*"  # the memory scope every user reads (a shared cache); no user may be it


USER_ID_MAX_BYTES = 128  # a search attribute (KeelUser) and every memory key carry it
TOOL_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,47}$"
LONGEST_WAIT_S = 366 * 24 * 3600  # a wait for a person: a year at most
MAX_TOOL_NAMES = 128  # in a task's allowed tools, or a sub-agent's
MAX_SUBAGENTS = 16  # each is a tool in every plan request: more would crowd the planner


def _not_shared(user_id: str) -> str:
    if user_id == SHARED_SCOPE:
        raise ValueError(f"{SHARED_SCOPE!r} is reserved for memory shared by every user")
    return user_id


def checked_user_id(user_id: str) -> str:
    """A user id is printable text of at most USER_ID_MAX_BYTES bytes of UTF-8: it is a
    search attribute, a memory partition key and a line in `keel status`."""
    size = len(user_id.encode("utf-8", "surrogatepass"))
    if size > USER_ID_MAX_BYTES:
        raise ValueError(
            f"is {size} bytes of UTF-8; at most {USER_ID_MAX_BYTES} (use a shorter id)"
        )
    if any(unprintable(c) for c in user_id) or user_id != user_id.strip():
        raise ValueError("must be printable text without control characters or surrounding spaces")
    return _not_shared(user_id)


Strategy = Literal["plan", "react"]


# A duration in milliseconds, to 0.1 ms: more digits are noise that every payload carries.
Millis = Annotated[float, AfterValidator(lambda v: round(v, 1))]


class Budget(BaseModel):
    """What a task may spend: USD always, tokens optionally."""

    model_config = ConfigDict(extra="forbid")

    usd: float = Field(default=0.05, gt=0, le=1000, description="hard cap on spend in USD")
    tokens: int | None = Field(
        default=None, gt=0, le=10**9, description="optional cap on model tokens"
    )


class HumanPolicy(BaseModel):
    """When a task waits for a person, and what happens when no one comes."""

    model_config = ConfigDict(extra="forbid")

    approve_plans_above_usd: float | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="a plan expected to cost more than this waits for approval of step 'plan'",
    )
    wait_timeout_s: float = Field(
        default=24 * 3600,
        gt=0,
        le=LONGEST_WAIT_S,
        description="how long one wait for a person may take (a year at most)",
    )
    on_timeout: Literal["escalate", "fail"] = Field(
        default="escalate",
        description="escalate: send a notification, then keep waiting; "
        "fail: end the task with status timed_out_waiting",
    )
    questions: bool = Field(
        default=False,
        description="a person answers the task's questions: the planner may ask them "
        "(the ask_human tool); off, no plan can wait on a question nobody was asked to answer",
    )


class SubAgent(BaseModel):
    """A named sub-agent a plan step can delegate to: a child AgentTask with its own tools
    and a fixed slice of its parent's budget."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    description: str = Field(min_length=1, max_length=500)
    tools: list[Annotated[str, Field(pattern=TOOL_NAME_PATTERN)]] = Field(
        min_length=1, max_length=MAX_TOOL_NAMES, description="the tools the sub-agent may use"
    )
    budget_usd: float = Field(
        default=0.01, gt=0, le=1000, description="at most this much per delegation"
    )


class TaskRequest(BaseModel):
    """Input of the AgentTask workflow (also what `temporal workflow start --input` takes)."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=20_000, description="what the agent should do")
    user_id: str = Field(default="anonymous", min_length=1)
    budget: Budget = Field(default_factory=Budget)
    max_replans: int = Field(default=2, ge=0, le=10)
    allowed_tools: list[Annotated[str, Field(pattern=TOOL_NAME_PATTERN)]] | None = Field(
        default=None, max_length=MAX_TOOL_NAMES, description="restrict the catalog to these tools"
    )
    strategy: Strategy = Field(
        default="plan",
        description="plan: one model call plans the whole graph (default); "
        "react: the naive loop, one model call per step (a baseline for comparison)",
    )
    max_steps: int = Field(
        default=12, ge=1, le=100, description="react: at most this many tool calls"
    )
    max_plan_steps: int | None = Field(
        default=None,
        ge=1,
        le=2000,
        description="plan: allow plans this long (batch work); None: the planner's default "
        "(the small model writes at most 6 steps, a plan may have 16)",
    )
    max_parallel_steps: int = Field(
        default=8,
        ge=1,
        le=32,
        description="plan: at most this many steps of the task run at once; the rest wait "
        "for a slot (one wide plan cannot take every tool slot from other users' tasks)",
    )
    human: HumanPolicy = Field(default_factory=HumanPolicy)
    subagents: list[SubAgent] | None = Field(
        default=None,
        max_length=MAX_SUBAGENTS,
        description="who steps may delegate to; None: Keel's default sub-agents",
    )
    _user_is_a_user = field_validator("user_id")(checked_user_id)
    carried: CarriedState | None = Field(
        default=None, description="set by the workflow when it continues as new; not for callers"
    )


class SideEffects(StrEnum):
    NONE = "none"  # pure computation
    READ = "read"  # reads data, changes nothing
    WRITE = "write"  # changes state somewhere
    EXTERNAL = "external"  # calls a third party (may cost money, may not be undoable)


class CachePolicy(BaseModel):
    """How results of an expensive tool are reused (activities/memory/cache.py)."""

    semantic: bool = Field(default=True, description="also reuse answers to similar requests")
    per_user: bool = Field(default=True, description="the result is personal to its user")
    ttl_s: float | None = Field(default=None, gt=0, description="default: KEEL_CACHE_TTL_S")


class ToolSpec(BaseModel):
    """A tool as the planner and the executor see it: schema plus operational metadata."""

    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    cost_per_call_usd: float = Field(default=0.0, ge=0)
    avg_latency_ms: float = Field(default=10.0, ge=0)
    timeout_s: float = Field(default=30.0, gt=0)
    side_effects: SideEffects = SideEffects.NONE
    idempotent: bool = True
    requires_approval: bool = False
    runs_as: Literal["activity", "human", "subagent"] = Field(
        default="activity",
        description="activity: a tool activity; human: the task asks a person (ask_human); "
        "subagent: a child AgentTask (the tool's name is the sub-agent's)",
    )
    queue: str = TOOLS_QUEUE
    queue_arg: str | None = Field(
        default=None,
        description="when set, each call goes to `<queue>-<args[queue_arg]>`: one task queue "
        "per external API, whose rate limit the Temporal server enforces for all workers",
    )
    max_attempts: int = Field(default=3, ge=1, description="attempts when the tool is idempotent")
    cache: CachePolicy | None = Field(default=None, description="None: never cached")

    def activity_queue(self, args: dict[str, Any]) -> str:
        """The base task queue of one call (before the deployment's queue prefix)."""
        if self.queue_arg is None:
            return self.queue
        value = args.get(self.queue_arg)
        allowed = self.input_schema.get("properties", {}).get(self.queue_arg, {}).get("enum")
        if not isinstance(value, str) or (allowed is not None and value not in allowed):
            # refused here: a call sent to a queue no worker polls would wait forever
            raise ValueError(
                f"{self.name}: {self.queue_arg} must be one of {allowed}, not {value!r}"
            )
        return f"{self.queue}-{value}"


class PlanStep(BaseModel):
    id: str = Field(pattern=STEP_ID_PATTERN)
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    when: str | None = Field(
        default=None,
        description="run only if this condition over earlier outputs holds (keel/_conditions.py)",
    )
    expected_cost_usd: float = 0.0
    expected_latency_ms: float = 0.0


class Plan(BaseModel):
    version: int = 1
    steps: list[PlanStep]
    model: str = ""
    synthesis_estimate_usd: float = Field(
        default=0.0, description="expected cost of writing the final answer"
    )
    answer: str | None = Field(
        default=None,
        description="the answer as a template over step outputs ({{s1.value}}), rendered by "
        "the workflow with no model call; None: a model writes the answer from the results",
    )
    then: Literal["answer", "plan"] = Field(
        default="answer",
        description="plan: once these steps are done the planner sees their results and "
        "plans the rest (the solve round), for work that needs values only a step can read",
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def expected_cost_usd(self) -> float:
        """Every step counted, branches included: the worst case is what must fit."""
        return sum(s.expected_cost_usd for s in self.steps)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def expected_latency_ms(self) -> float:
        """The longest dependency chain: independent steps run in parallel."""
        by_id = {s.id: s for s in self.steps}
        finish: dict[str, float] = {}

        def done_at(step: PlanStep, seen: frozenset[str]) -> float:
            if step.id not in finish:
                deps = [by_id[d] for d in step.depends_on if d in by_id and d not in seen]
                start = max((done_at(d, seen | {step.id}) for d in deps), default=0.0)
                finish[step.id] = start + step.expected_latency_ms
            return finish[step.id]

        return max((done_at(s, frozenset()) for s in self.steps), default=0.0)


class StepStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class StepResult(BaseModel):
    step_id: str
    plan_version: int
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    status: StepStatus
    output: dict[str, Any] | None = None
    error: str | None = None
    cost_usd: float = 0.0
    latency_ms: Millis = 0.0
    cached: bool = Field(default=False, description="the output came from the cache")


class ModelUsage(BaseModel):
    role: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0
    latency_ms: float = 0.0  # unrounded: a local model's price is computed from it


class LedgerEntry(BaseModel):
    kind: Literal["model", "tool", "agent"]  # agent: a sub-agent's whole spend
    name: str  # model, tool or sub-agent name
    role: str = ""  # planner / reasoner for model calls
    step_id: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0
    latency_ms: Millis = 0.0
    ok: bool = True
    cached: bool = Field(default=False, description="answered from the cache, at no model cost")
    calls: int = Field(default=1, ge=1, description="calls summed into this entry (compaction)")


class Ledger(BaseModel):
    budget_usd: float = 0.0
    budget_tokens: int | None = None
    entries: list[LedgerEntry] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_usd(self) -> float:
        return float(sum(e.usd for e in self.entries))

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_tokens(self) -> int:
        return sum(e.input_tokens + e.output_tokens for e in self.entries)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cache_hits(self) -> int:
        return sum(e.calls for e in self.entries if e.cached)

    def compacted(self) -> Ledger:
        """The same totals in one entry per kind, name, role and outcome (what a task
        carries when it continues as new)."""
        merged: dict[tuple[object, ...], LedgerEntry] = {}
        for e in self.entries:
            key = (e.kind, e.name, e.role, e.ok, e.cached)
            if key not in merged:
                merged[key] = e.model_copy(update={"step_id": None})
                continue
            m = merged[key]
            m.input_tokens += e.input_tokens
            m.output_tokens += e.output_tokens
            m.usd += e.usd
            m.latency_ms += e.latency_ms
            m.calls += e.calls
        return self.model_copy(update={"entries": list(merged.values())})


class TaskStatus(StrEnum):
    RUNNING = "running"
    RECALLING = "recalling"
    PLANNING = "planning"
    EXECUTING = "executing"
    SYNTHESIZING = "synthesizing"
    REMEMBERING = "remembering"
    COMPLETED = "completed"
    FAILED = "failed"
    BUDGET_EXHAUSTED = "budget_exhausted"
    AWAITING_APPROVAL = "awaiting_approval"
    AWAITING_ANSWER = "awaiting_answer"
    TIMED_OUT_WAITING = "timed_out_waiting"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (
            TaskStatus.COMPLETED,
            TaskStatus.FAILED,
            TaskStatus.BUDGET_EXHAUSTED,
            TaskStatus.TIMED_OUT_WAITING,
            TaskStatus.CANCELLED,
        )

    @property
    def is_waiting(self) -> bool:
        return self in (TaskStatus.AWAITING_APPROVAL, TaskStatus.AWAITING_ANSWER)


class TaskProgress(BaseModel):
    """What the `status` query returns: enough for a progress display."""

    status: TaskStatus
    events: list[str] = Field(default_factory=list, description="the latest events")
    events_total: int = Field(default=0, description="events so far, including dropped ones")
    steps_done: int = 0
    replans: int = 0
    total_usd: float = 0.0


class TaskResult(BaseModel):
    workflow_id: str
    status: TaskStatus
    answer: str
    steps: list[StepResult] = Field(default_factory=list)
    ledger: Ledger
    llm_calls: int = 0
    replans: int = 0
    human_interventions: int = Field(default=0, description="approvals, rejections, answers")
    plan: Plan | None = None
    error: str | None = None
    steps_total: int = Field(
        default=0, description="steps run in all runs; `steps` holds the last ones only"
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def completed_without_human(self) -> bool:
        """The completion-rate metric: done, and no person had to step in."""
        return self.status == TaskStatus.COMPLETED and self.human_interventions == 0


class PendingKind(StrEnum):
    APPROVAL = "approval"
    QUESTION = "question"


class PendingRequest(BaseModel):
    """Something a task waits for a person to decide (the `pending` query)."""

    kind: PendingKind
    id: str = Field(description="the step id to approve or reject, or the question's step id")
    text: str = Field(description="what is asked: the step and its arguments, or the question")
    expected_cost_usd: float = 0.0
    asked_at: datetime
    escalated: bool = False


class WatchRequest(BaseModel):
    """Input of the `watch` Update: it returns the task's progress once the task has more
    events than `after` (or has ended)."""

    model_config = ConfigDict(extra="forbid")

    after: int = Field(
        default=0, ge=0, le=2**31, description="events already seen: the last events_total"
    )


class Approval(BaseModel):
    """Input of the `approve` Update."""

    model_config = ConfigDict(extra="forbid")

    step_id: str = Field(min_length=1, description="a pending step id, or 'plan'")
    by: str = Field(default="", max_length=200, description="who approved")


class Rejection(BaseModel):
    """Input of the `reject` Update."""

    model_config = ConfigDict(extra="forbid")

    step_id: str = Field(min_length=1, description="a pending step id, or 'plan'")
    reason: str = Field(min_length=1, max_length=2000, description="why; the planner reads it")
    by: str = Field(default="", max_length=200)


class HumanAnswer(BaseModel):
    """Input of the `answer` Update."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=20_000)
    question_id: str | None = Field(
        default=None, description="which question; may be left out when only one is open"
    )
    by: str = Field(default="", max_length=200)


class Notification(BaseModel):
    """A task has waited too long for a person (the `notify_human` activity's input)."""

    workflow_id: str
    user_id: str
    kind: PendingKind
    id: str
    text: str
    waited_s: float


class CarriedState(BaseModel):
    """What a task carries into its next run when it continues as new: compact, not the
    whole transcript."""

    short_term: ShortTermMemory
    ledger: Ledger
    results: list[StepResult] = Field(default_factory=list)
    failures: list[str] = Field(default_factory=list)
    replans: int = 0
    solve_rounds: int = 0
    plan_version: int = 0
    runs: int = Field(default=1, description="how many runs this task has had before")
    outputs: list[StepResult] = Field(
        default_factory=list, description="older results the remaining steps depend on"
    )
    steps_total: int = 0
    human_interventions: int = 0
    plan: Plan | None = Field(
        default=None, description="continued mid-plan: the steps still to run"
    )
    settled: list[str] = Field(default_factory=list, description="finished steps they wait on")
    skipped: list[str] = Field(default_factory=list, description="skipped steps they wait on")
    tools: list[ToolSpec] | None = Field(
        default=None, description="the specs of the tools the task's plans called so far"
    )
    read_files: bool = Field(
        default=False, description="a file tool ran: the task's copy is released at its end"
    )
    events_total: int = Field(default=0, description="events so far: watchers count on")


# --- activity payloads ---------------------------------------------------------------------


class Episode(BaseModel):
    id: str
    user_id: str
    task: str
    answer: str
    status: str
    score: float | None = None


class Triple(BaseModel):
    """One (subject, relation, object) statement, as the extraction model writes it."""

    model_config = ConfigDict(extra="forbid")

    subject: str = Field(min_length=1, max_length=200)
    relation: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    object: str = Field(min_length=1, max_length=500)


class Fact(Triple):
    """A stored triple with its validity interval: valid from `valid_from` until a
    contradicting fact closes it (`valid_to`); closed facts are kept for history."""

    id: str
    valid_from: datetime
    valid_to: datetime | None = None
    source: str = Field(
        default="",
        description="the workflow (and step) that learned it; ending in /from-tool-output when "
        "the task's text did not state it",
    )


class CacheHit(BaseModel):
    key: str
    value: dict[str, Any]
    score: float = Field(description="1.0 for an exact hit, the cosine similarity otherwise")
    exact: bool


MEMORIZE_MAX_BYTES = 1_500_000


class Document(BaseModel):
    source: str = Field(min_length=1, max_length=500, description="where it came from, e.g. a path")
    text: str


class DocumentChunk(BaseModel):
    source: str
    text: str
    score: float


class MemorizeRequest(BaseModel):
    """Input of the MemorizeDocuments workflow: documents to keep in a user's memory."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1)
    documents: list[Document] = Field(min_length=1, max_length=100)
    _user_is_a_user = field_validator("user_id")(checked_user_id)

    @field_validator("documents")
    @classmethod
    def _fits_one_payload(cls, documents: list[Document]) -> list[Document]:
        total = sum(len(d.text.encode()) for d in documents)
        if total > MEMORIZE_MAX_BYTES:
            raise ValueError(
                f"{total:,} bytes of text in one request; at most {MEMORIZE_MAX_BYTES:,} "
                "(a Temporal payload holds 2 MB): memorize the files in several runs"
            )
        return documents


class RememberDocument(BaseModel):
    user_id: str
    document: Document


class Memorized(BaseModel):
    chunks: dict[str, int] = Field(default_factory=dict, description="chunks stored per source")


class RecallRequest(BaseModel):
    user_id: str
    query: str
    limit: int = Field(default=3, description="at most this many episodes")
    compact: bool = Field(
        default=False,
        description="return the context and the knowledge only, not the records it was made "
        "of (they would be in the task's history twice)",
    )


class Recall(BaseModel):
    episodes: list[Episode] = Field(default_factory=list)
    facts: list[Fact] = Field(default_factory=list)
    cached: list[CacheHit] = Field(default_factory=list)
    documents: list[DocumentChunk] = Field(default_factory=list)
    context: list[str] = Field(
        default_factory=list, description="what fits the token budget, for the planner"
    )
    context_tokens: int = 0
    knowledge: list[str] | None = Field(
        default=None,
        description="what an answer depends on besides its results (`answer_knowledge`); "
        "set by a compact recall, which leaves the records out",
    )


class ExtractionRequest(BaseModel):
    task: str
    answer: str
    max_usd: float
    max_tokens: int | None = None


class Extraction(BaseModel):
    triples: list[Triple] = Field(default_factory=list)
    usage: ModelUsage | None = None
    error: str | None = None


class RememberRequest(BaseModel):
    workflow_id: str
    user_id: str
    task: str
    answer: str
    status: str
    triples: list[Triple] = Field(default_factory=list)
    learned_at: datetime | None = Field(
        default=None, description="when the facts became known (workflow time)"
    )
    answer_cache_key: str | None = Field(
        default=None, description="cache the answer under this synthesis key (for this user)"
    )


class Remembered(BaseModel):
    episode_id: str
    facts: list[Fact] = Field(default_factory=list)


class CacheLookup(BaseModel):
    kind: str = Field(description="what is cached, e.g. tool.ask_reasoner or synthesize")
    key: str = Field(description="the canonical request text")
    user_id: str | None = Field(default=None, description="None: shared by every user")
    semantic: bool = True


class CacheStore(BaseModel):
    kind: str
    key: str
    user_id: str | None = None
    value: dict[str, Any]
    semantic: bool = True
    ttl_s: float | None = None
    source: str = Field(default="", description="the workflow and step that paid for it")


class CacheAnswer(BaseModel):
    hit: CacheHit | None = None


class CatalogRef(BaseModel):
    """The task's tool catalog by reference: the planner worker rebuilds it from its own tool
    registry plus the workflow's own tools named here, so no plan request carries it."""

    allowed_tools: list[str] | None = Field(
        default=None, description="the task's allow-list; None: every tool"
    )
    ask_human: bool = Field(default=False, description="offer ask_human")
    subagents: list[SubAgent] | None = Field(
        default=None, description="offered as tools; None: the default sub-agents"
    )


class PlanRequest(BaseModel):
    task: str
    role: str = Field(
        default="planner", description="planner, or escalation after the planner's plan failed"
    )
    context: list[str] = Field(default_factory=list)
    tools: list[ToolSpec] = Field(
        default_factory=list, description="the catalog in full (runs before catalog refs)"
    )
    catalog: CatalogRef | None = Field(
        default=None, description="the catalog by reference; the planner resolves it"
    )
    remaining_usd: float
    max_usd: float = Field(description="the planning call itself may spend at most this")
    max_tokens: int | None = Field(default=None, description="token allowance for the call")
    completed: list[StepResult] = Field(default_factory=list)
    failures: list[str] = Field(default_factory=list)
    version: int = 1
    max_steps: int | None = Field(
        default=None, description="a longer plan than the planner's default may be written"
    )


class PlanResponse(BaseModel):
    """A plan, or why none came out; the model usage is reported either way so it is booked."""

    plan: Plan | None = None
    error: str | None = None
    usage: ModelUsage
    tools: list[ToolSpec] = Field(
        default_factory=list,
        description="for a request by catalog ref: the specs of the tools the plan calls",
    )
    offered: list[str] = Field(
        default_factory=list, description="for a request by catalog ref: every tool offered"
    )


class ReactRequest(BaseModel):
    """One turn of the ReAct baseline: the task and everything observed so far."""

    task: str
    context: list[str] = Field(default_factory=list)
    tools: list[ToolSpec]
    history: list[StepResult] = Field(default_factory=list)
    remaining_usd: float
    max_usd: float
    max_tokens: int | None = None
    steps_left: int


class ReactDecision(BaseModel):
    """The next action (a tool call), the final answer, or why the output was unusable."""

    tool: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    answer: str | None = None
    error: str | None = None
    usage: ModelUsage


class ToolCall(BaseModel):
    workflow_id: str
    workspace: str | None = Field(
        default=None,
        description="whose files the tool reads: one set per task (its first run), so a later "
        "task reusing the workflow id never sees them; None: the workflow id",
    )
    step_id: str
    tool: str
    args: dict[str, Any]
    max_usd: float = Field(description="what this call may spend (its reservation)")
    max_tokens: int | None = None


class ToolOutput(BaseModel):
    output: dict[str, Any]
    cost_usd: float = 0.0
    usage: list[ModelUsage] = Field(default_factory=list)


class SynthesisRequest(BaseModel):
    task: str
    steps: list[StepResult]
    context: list[str] = Field(default_factory=list)
    max_usd: float
    max_tokens: int | None = None
    role: Literal["reasoner", "planner"] = Field(
        default="reasoner",
        description="who writes it: the large reasoner, or the small planner model when "
        "the budget left cannot pay for the large one",
    )


class Synthesis(BaseModel):
    answer: str
    usage: ModelUsage
