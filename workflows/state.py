"""The one state object of an AgentTask run, and what it carries when it continues as new.

Every part of the workflow (planning, execution, people, memory calls, ReAct) reads and
changes this object instead of threading the request, the queues and the ledger through its
signatures. `carried()` turns it into the compact `CarriedState` the next run starts from,
and `resume()` picks that up again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from temporalio import workflow
from temporalio.common import Priority, SearchAttributeUpdate

from keel import _search_attributes as sa
from keel import durable
from keel._core.budget import BudgetBook
from keel._core.plan_run import Snapshot
from keel._plans import output_text
from keel._queues import Queues, fairness_key
from keel._short_term import ShortTermMemory
from keel.contracts import (
    CarriedState,
    CatalogRef,
    Plan,
    StepResult,
    StepStatus,
    SubAgent,
    TaskProgress,
    TaskRequest,
    TaskResult,
    TaskStatus,
    ToolSpec,
)
from workflows import metrics
from workflows.human import HumanDesk

# Runs started before this patch fetch the catalog with `list_tools` and send it whole with
# every plan request, upsert search attributes that did not change, store the synthesis
# cache entry with its own activity, and mark the parallel-steps cap with its own patch;
# they replay that way. One patch for all of it: each patch costs every run a marker and
# a search-attribute upsert in its history.
LEAN_PATCH = "keel-lean-history"
EVENTS_KEPT = 50
# Continuing as new carries the last results (for the answer) and nothing older.
RESULTS_CARRIED = 20


@dataclass(frozen=True)
class Outcome:
    """How the task's work ended: its status, why when it did not complete, and the answer."""

    status: TaskStatus
    error: str | None = None
    answer: str = ""


def short_args(args: dict[str, object], limit: int = 60) -> str:
    """Arguments as one short line for events and the UI timeline."""
    text = ", ".join(f"{v}" if len(args) == 1 else f"{k}={v}" for k, v in args.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


APPROVAL_VALUE_CHARS = 500


def every_arg(args: dict[str, object], per_value: int = APPROVAL_VALUE_CHARS) -> str:
    """Every argument, named, each value in full up to `per_value` characters (then how much
    was left out): what a person approving a call must see. Values are JSON (strings quoted,
    control characters escaped), so a value cannot pass for the next argument."""

    def shown(value: object) -> str:
        text = json.dumps(value, ensure_ascii=False, default=str)
        if len(text) <= per_value:
            return text
        return f"{text[:per_value]}… ({len(text) - per_value} more characters)"

    return ", ".join(f"{k}={shown(v)}" for k, v in args.items())


@dataclass
class TaskState:
    request: TaskRequest
    queues: Queues
    book: BudgetBook
    status: TaskStatus = TaskStatus.RUNNING
    working_status: TaskStatus = TaskStatus.RUNNING  # what to go back to after waiting
    events: list[str] = field(default_factory=list)
    events_total: int = 0
    plan: Plan | None = None
    results: list[StepResult] = field(default_factory=list)
    outputs: dict[str, StepResult] = field(default_factory=dict)  # succeeded, by step id
    steps_total: int = 0
    read_files: bool = False  # a file tool ran: its copy of the files goes when the task ends
    replans: int = 0
    solve_rounds: int = 0  # plans that gathered and had the planner plan on
    short_term: ShortTermMemory = field(default_factory=ShortTermMemory)
    human: HumanDesk = field(default_factory=HumanDesk)
    subagents: dict[str, SubAgent] = field(default_factory=dict)
    # the specs the task knows: the whole catalog, or (catalog_ref set) the workflow's own
    # tools and those its plans called, which come back with each plan
    tools: dict[str, ToolSpec] = field(default_factory=dict)
    catalog_ref: CatalogRef | None = None
    lean: bool = False  # LEAN_PATCH applies
    published_usd: float | None = None  # the cost the KeelCostUsd attribute shows
    attributes_due: list[SearchAttributeUpdate[Any]] = field(default_factory=list)
    answer_cache_key: str | None = None  # the answer is cached with the episode, by this
    # from the previous run, when this one continued as new
    carried_failures: list[str] = field(default_factory=list)
    first_version: int = 1
    runs: int = 1
    resume_plan: Snapshot | None = None

    @classmethod
    def start(cls, request: TaskRequest, queues: Queues) -> TaskState:
        state = cls(
            request, queues, BudgetBook.for_budget(request.budget.usd, request.budget.tokens)
        )
        if request.carried is not None:
            state.resume(request.carried)
        else:
            state.short_term.add(f"user asked: {request.task}")
        # metrics count what this run books (a carried ledger was counted by the runs before)
        state.book.observer = metrics.LEDGER
        return state

    @property
    def user_id(self) -> str:
        return self.request.user_id

    @property
    def workspace(self) -> str:
        """Whose files its tools read: this task's, from its first run on (a later task
        reusing the workflow id gets its own)."""
        info = workflow.info()
        return f"{info.workflow_id}.{info.first_execution_run_id}"

    @property
    def priority(self) -> Priority:
        """Of the task's tool and model calls: dispatched fairly between users where the
        server has task-queue fairness on (a lean run; others replay without a key)."""
        if not self.lean:
            return Priority.default
        return Priority(fairness_key=fairness_key(self.user_id))

    # --- what a person watching sees ---------------------------------------------------

    def event(self, text: str) -> None:
        self.events.append(text)
        self.events_total += 1
        del self.events[:-EVENTS_KEPT]
        workflow.logger.info(text, extra={"keel_status": self.status.value})

    def set_status(self, status: TaskStatus, event: str) -> None:
        self.status = status
        self.event(event)
        updates: list[SearchAttributeUpdate[Any]] = [
            *self.attributes_due,
            sa.STATUS.value_set(status.value),
            sa.COST_USD.value_set(self.book.ledger.total_usd),
        ]
        self.attributes_due = []
        if status.is_final:  # the completion-rate metric: done with no person stepping in
            without_human = status == TaskStatus.COMPLETED and self.human.interventions == 0
            updates.append(sa.WITHOUT_HUMAN.value_set(without_human))
        workflow.upsert_search_attributes(updates)
        self.published_usd = self.book.ledger.total_usd

    def publish_cost(self) -> None:
        """Show the cost so far in the UI (a lean run: only when it changed)."""
        cost = self.book.ledger.total_usd
        if self.lean and cost == self.published_usd:
            return
        workflow.upsert_search_attributes([sa.COST_USD.value_set(cost)])
        self.published_usd = cost

    def progress(self) -> TaskProgress:
        return TaskProgress(
            status=self.status,
            events=self.events,
            events_total=self.events_total,
            steps_done=sum(r.status == StepStatus.SUCCEEDED for r in self.results),
            replans=self.replans,
            total_usd=self.book.ledger.total_usd,
        )

    # --- results -----------------------------------------------------------------------

    def record(self, result: StepResult) -> None:
        self.results.append(result)
        self.steps_total += 1
        self.read_files = self.read_files or result.tool in durable.FILE_TOOLS
        outcome = (
            output_text(result)[:200] if result.status == StepStatus.SUCCEEDED else result.error
        )
        call = f"{result.step_id} {result.tool}({short_args(result.args)})"
        self.short_term.add(f"{call} {result.status.value}: {outcome}")
        if result.status == StepStatus.SUCCEEDED:
            self.outputs[result.step_id] = result

    def result(self, status: TaskStatus, answer: str, error: str | None) -> TaskResult:
        return TaskResult(
            workflow_id=workflow.info().workflow_id,
            status=status,
            answer=answer,
            steps=self.results,
            steps_total=self.steps_total,
            ledger=self.book.ledger,
            llm_calls=self.book.llm_calls(),
            replans=self.replans,
            human_interventions=self.human.interventions,
            plan=self.plan,
            error=error,
        )

    # --- continue-as-new ---------------------------------------------------------------

    def carried(self, failures: list[str], version: int, snapshot: Snapshot | None) -> CarriedState:
        """The compact state of the next run: the ledger summed per model and tool, the
        short-term summary, the last results, and, in the middle of a plan, only the steps
        still to run with the settled steps and outputs they depend on."""
        needed = snapshot.needed if snapshot is not None else set()
        return CarriedState(
            short_term=self.short_term.carried(),
            ledger=self.book.ledger.compacted(),
            results=self.results[-RESULTS_CARRIED:],
            outputs=[r for i, r in self.outputs.items() if i in needed],
            failures=failures[-RESULTS_CARRIED:],
            replans=self.replans,
            solve_rounds=self.solve_rounds,
            plan_version=version,
            runs=self.runs,
            steps_total=self.steps_total,
            human_interventions=self.human.interventions,
            plan=snapshot.plan if snapshot is not None else None,
            settled=sorted(snapshot.settled) if snapshot is not None else [],
            skipped=sorted(snapshot.skipped) if snapshot is not None else [],
            tools=[t for t in self.tools.values() if t.runs_as == "activity"]
            if self.catalog_ref is not None
            else None,
            read_files=self.read_files,
            events_total=self.events_total,
        )

    def resume(self, carried: CarriedState) -> None:
        """Pick up where the previous run stopped when it continued as new."""
        self.short_term = carried.short_term
        self.book = BudgetBook(carried.ledger)
        self.results = list(carried.results)
        for result in [*carried.outputs, *carried.results]:
            if result.status == StepStatus.SUCCEEDED:
                self.outputs[result.step_id] = result
        self.steps_total = carried.steps_total
        self.read_files = carried.read_files
        self.events_total = carried.events_total
        self.human.interventions = carried.human_interventions
        self.carried_failures = carried.failures
        self.replans = carried.replans
        self.solve_rounds = carried.solve_rounds
        self.first_version = carried.plan_version + 1
        self.runs = carried.runs + 1
        if carried.plan is not None:
            settled, skipped = set(carried.settled), set(carried.skipped)
            self.resume_plan = Snapshot(carried.plan, settled, skipped)
        self.event(f"continued as new (run {self.runs}), {carried.steps_total} steps done before")
