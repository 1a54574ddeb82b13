"""The scheduler of one plan: which steps may start, which settle without a call, and what a
task carries when it continues as new in the middle of the plan.

Each step starts as soon as its dependencies have settled, so independent steps run in
parallel. After a failure, or when the budget cannot cover the next step, no new step
starts; steps already running finish, so their results reach the re-plan instead of being
paid for and thrown away. The workflow runs the calls; this module only decides.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from keel._conditions import ConditionError, parse_condition
from keel._core.budget import BudgetBook
from keel._plans import ready_steps, referenced_steps, resolve_args
from keel.contracts import Plan, PlanStep, SideEffects, StepResult, StepStatus, ToolSpec


def failure_text(result: StepResult) -> str:
    return f"step {result.step_id} ({result.tool}) failed: {result.error}"


@dataclass(frozen=True)
class Snapshot:
    """What continues as new mid-plan: only the steps still to run, with the settled and
    skipped steps (and so the outputs) they depend on."""

    plan: Plan
    settled: set[str]
    skipped: set[str]

    @property
    def needed(self) -> set[str]:
        """The steps the rest of the plan depends on: their outputs travel along."""
        return needed_by(self.plan, self.plan.steps)


def needed_by(plan: Plan, steps: list[PlanStep]) -> set[str]:
    """The steps whose outputs `steps` and the plan's answer read."""
    return {d for s in steps for d in s.depends_on} | referenced_steps(plan.answer or "")


@dataclass
class PlanRun:
    plan: Plan
    # settled: succeeded, skipped or failed; steps done by earlier plan versions (or by this
    # plan in the previous run) count as settled
    settled: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)
    started: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    out_of_budget: str | None = None
    progressed: bool = False  # a step settled by a call in this run of the workflow

    def __post_init__(self) -> None:
        self.started |= self.settled

    @classmethod
    def start(cls, plan: Plan, done: Collection[str], resumed: Snapshot | None = None) -> PlanRun:
        """A run of `plan`. Steps done before count as settled: those of earlier plan
        versions (`done`) and, when the task continued as new in the middle of this plan,
        the settled and skipped steps the rest of it waits on (`resumed`)."""
        if resumed is None:
            return cls(plan, settled=set(done))
        return cls(plan, settled=set(done) | resumed.settled, skipped=set(resumed.skipped))

    @property
    def blocked(self) -> bool:
        """No new step may start: one failed or the budget cannot cover the next."""
        return bool(self.failures) or self.out_of_budget is not None

    @property
    def unfinished(self) -> bool:
        return any(s.id not in self.settled for s in self.plan.steps)

    def should_pause(self, suggested: Callable[[], bool]) -> bool:
        """Temporal suggests continuing as new: start nothing more, and once the running
        steps have settled, continue where the plan stands. `suggested` is asked only when
        pausing could matter (after progress, with work left)."""
        return self.progressed and self.unfinished and suggested()

    def advance(
        self,
        tools: Mapping[str, ToolSpec],
        outputs: Mapping[str, StepResult],
        book: BudgetBook,
        settle: Callable[[StepResult], None],
        note: Callable[[str], None],
        readied_now: Callable[[], bool] = lambda: True,
        room: int | None = None,
    ) -> list[PlanStep]:
        """Start every ready step that may start now, at most `room` of them needing a
        call, and return those (their expected cost reserved in `book`); the rest stay
        ready for a later call. Steps that need no call settle here
        through `settle` (which records the result, so later gates see it); `note` gets
        what a person watching should read. `readied_now` is asked when such a step readied
        others: whether they start at once (the workflow's patch for runs started before
        they did; those start them after the next call returns, or never)."""
        launch: list[PlanStep] = []
        ready = ready_steps(self.plan, self.settled, self.started)
        while ready and not self.blocked:
            for step in ready:
                if room is not None and len(launch) >= room:
                    return launch
                self.started.add(step.id)
                spec = tools[step.tool]
                gated = gate(self.plan.version, step, spec, self.skipped, outputs, note)
                if gated is not None:
                    settle(gated)
                    self.settle(gated, by_call=False)
                    if gated.status == StepStatus.FAILED:
                        break
                    continue
                left = book.reserve(step.id, spec.cost_per_call_usd)
                if left is not None:
                    self.out_of_budget = (
                        f"step {step.id} ({step.tool}) needs ${spec.cost_per_call_usd:.6f}; "
                        f"${left:.6f} is left"
                    )
                    break
                launch.append(step)
            # a step settled without a call (skipped, reused) may have readied its
            # dependants: they start now, not only after some running call returns
            ready = ready_steps(self.plan, self.settled, self.started)
            if ready and not readied_now():
                break
        return launch

    def settle(self, result: StepResult, by_call: bool = True) -> None:
        self.settled.add(result.step_id)
        if by_call:
            self.progressed = True
        if result.status == StepStatus.SKIPPED:
            self.skipped.add(result.step_id)
        elif result.status == StepStatus.FAILED:
            self.failures.append(failure_text(result))

    def snapshot(self) -> Snapshot:
        left = [s for s in self.plan.steps if s.id not in self.settled]
        needed = needed_by(self.plan, left)
        return Snapshot(
            plan=self.plan.model_copy(update={"steps": left}),
            settled=self.settled & needed,
            skipped=self.skipped & needed,
        )


def gate(
    version: int,
    step: PlanStep,
    spec: ToolSpec,
    skipped: Collection[str],
    outputs: Mapping[str, StepResult],
    note: Callable[[str], None],
) -> StepResult | None:
    """The result of a step that needs no call (skipped, reused, or a broken condition),
    or None when the step must run."""

    def settled(
        status: StepStatus, why: str, output: dict[str, object] | None = None
    ) -> StepResult:
        note(f"{step.id}: {status.value}: {why}")
        return StepResult(
            step_id=step.id,
            plan_version=version,
            tool=step.tool,
            args=step.args,
            status=status,
            output=output,
            error=None if status == StepStatus.SUCCEEDED else why,
        )

    gone = [d for d in step.depends_on if d in skipped]
    if gone:
        return settled(StepStatus.SKIPPED, f"it depends on skipped step {gone[0]}")
    if step.when is not None:
        try:
            holds = parse_condition(step.when).evaluate({i: r.output for i, r in outputs.items()})
        except ConditionError as err:
            return settled(StepStatus.FAILED, f"condition {step.when!r} failed: {err}")
        if not holds:
            return settled(StepStatus.SKIPPED, f"condition {step.when!r} is false")
        note(f"{step.id}: condition {step.when!r} holds")
    if spec.side_effects in (SideEffects.NONE, SideEffects.READ):
        args = resolve_args(step.args, outputs)
        for earlier in outputs.values():
            if earlier.tool == step.tool and earlier.args == args:
                # A re-plan that repeats finished read-only work gets the result again,
                # free: only the remaining work is paid for.
                return settled(
                    StepStatus.SUCCEEDED,
                    f"reused the result of v{earlier.plan_version}.{earlier.step_id}",
                    output=earlier.output,
                )
    return None
