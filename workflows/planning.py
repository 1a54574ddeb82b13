"""Plan, validate, execute, re-plan: the AgentTask's main loop over plan versions.

A plan the small model got wrong goes to a larger one; a plan a person rejected goes back to
the same planner with the reason; a plan whose step failed is re-planned with the failure,
up to `max_replans`. Between plans (and mid-plan, see execution.py) the task continues as
new when Temporal suggests it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from temporalio import workflow
from temporalio.exceptions import ActivityError

from keel import durable
from keel._core.budget import BudgetExhausted
from keel._core.plan_run import Snapshot
from keel._plans import (
    MAX_STEPS,
    budget_error,
    carried_plan_errors,
    render_answer,
    validate_plan,
)
from keel.contracts import (
    PendingKind,
    Plan,
    PlanRequest,
    PlanResponse,
    TaskStatus,
    ToolSpec,
)
from workflows import activity_options as options
from workflows.execution import execute
from workflows.people import ask
from workflows.state import Outcome, TaskState, every_arg


@dataclass(frozen=True)
class Replan:
    """The plan's steps failed; another plan, told why, may still do the task."""

    failures: list[str]


RECHECK_CARRIED_PATCH = "keel-recheck-carried-plan"

# A plan may gather first and plan the rest seeing what it gathered ("then": "plan"); this
# bounds how many times a task does so.
MAX_SOLVE_ROUNDS = 2


async def plan_and_execute(
    task: TaskState, context: list[str], tools: dict[str, ToolSpec]
) -> Outcome:
    """The task's outcome; a completed one carries the answer when its plan wrote it (an
    empty answer: a model writes it from the results)."""
    failures = list(task.carried_failures)
    version = task.first_version - 1
    role = "planner"
    solving = False  # this version is a solve round, not a re-plan
    if task.resume_plan is not None:  # the previous run continued as new mid-plan
        resumed = task.resume_plan
        version = resumed.plan.version
        # checked again, like any plan, before it runs on: what the workflow did not make
        # itself this run is not taken on trust (patched: earlier runs resumed unchecked)
        stale = (
            carried_plan_errors(
                resumed.plan,
                tools,
                {*task.outputs, *resumed.settled, *resumed.skipped},
                task.request.max_plan_steps or MAX_STEPS,
            )
            if workflow.patched(RECHECK_CARRIED_PATCH)
            else []
        )
        if stale:
            problem = f"plan v{version}, carried into this run, is invalid: " + "; ".join(stale)
            failures.append(problem)
            task.event(problem)
        else:
            ran = await _run_plan(task, resumed.plan, tools, failures, resumed)
            if isinstance(ran, Outcome):
                if not _solve_next(task, resumed.plan, ran):
                    return _answered(task, resumed.plan, ran)
                solving = True
            else:
                failures.extend(ran.failures)
    while True:
        version += 1
        if version > task.first_version and workflow.info().is_continue_as_new_suggested():
            _continue_as_new(task, failures, version - 1, None)
        if version > 1 and not solving:
            task.replans += 1
        solving = False
        try:
            response = await _call_planner(task, context, tools, failures, version, role)
        except BudgetExhausted as err:
            return Outcome(TaskStatus.BUDGET_EXHAUSTED, str(err))
        except ActivityError as err:
            return Outcome(TaskStatus.FAILED, f"the planner failed: {err.cause or err}")
        plan = response.plan
        over_budget = False
        rejection = ""
        if plan is None:
            problem = f"plan v{version} was not usable: {response.error}"
        else:
            errors = validate_plan(
                plan,
                tools,
                done=task.outputs,
                max_steps=task.request.max_plan_steps or MAX_STEPS,
                offered=response.offered if task.catalog_ref is not None else None,
            )
            money = budget_error(plan, task.book.remaining_usd())
            over_budget = money is not None and not errors
            if money:
                errors.append(money)
            problem = f"plan v{version} is invalid: " + "; ".join(errors) if errors else ""
            if not problem:
                rejection = problem = await _approve_plan(task, plan)
        if problem:
            failures.append(problem)
            task.short_term.add(problem)
            task.event(problem)
            if version - task.solve_rounds > task.request.max_replans:
                final = TaskStatus.BUDGET_EXHAUSTED if over_budget else TaskStatus.FAILED
                return Outcome(final, problem)
            # The small model could not produce a valid plan: a larger one tries next
            # (a plan a person rejected was valid: the same planner tries again).
            role = "planner" if rejection else "escalation"
            continue
        role = "planner"
        assert plan is not None
        ran = await _run_plan(task, plan, tools, failures)
        if isinstance(ran, Outcome):
            if not _solve_next(task, plan, ran):
                return _answered(task, plan, ran)
            solving = True
            continue
        failures.extend(ran.failures)


def _solve_next(task: TaskState, plan: Plan, ran: Outcome) -> bool:
    """Whether the planner plans again, seeing the results, before the task answers."""
    if ran.status != TaskStatus.COMPLETED or plan.then != "plan":
        return False
    if task.solve_rounds >= MAX_SOLVE_ROUNDS:
        task.event(f"plan v{plan.version} asked to plan on; {MAX_SOLVE_ROUNDS} rounds are done")
        return False
    task.solve_rounds += 1
    task.event(f"plan v{plan.version} gathered; planning the rest with its results")
    return True


def _answered(task: TaskState, plan: Plan, ran: Outcome) -> Outcome:
    """The outcome with the plan's own answer rendered from the step outputs, if it wrote
    one: no model call."""
    if ran.status != TaskStatus.COMPLETED or plan.answer is None:
        return ran
    answer = render_answer(plan.answer, task.outputs)
    task.event(f"answered from plan v{plan.version}'s template, no model call")
    return Outcome(TaskStatus.COMPLETED, answer=answer)


async def _approve_plan(task: TaskState, plan: Plan) -> str:
    """A plan expected to cost more than the task's threshold waits for a person's approval
    of step 'plan'; returns why it may not run, or '' when it may."""
    threshold = task.request.human.approve_plans_above_usd
    cost = plan.expected_cost_usd + plan.synthesis_estimate_usd
    if threshold is None or cost <= threshold:
        return ""
    steps = ", ".join(f"{s.id}={s.tool}({every_arg(s.args)})" for s in plan.steps)
    decision = await ask(
        task,
        PendingKind.APPROVAL,
        durable.PLAN_APPROVAL_ID,
        f"plan v{plan.version}, expected ${cost:.4f} (over ${threshold:g}): {steps}",
        cost,
    )
    if decision.approved:
        return ""
    return f"plan v{plan.version} was rejected by {decision.by or 'a person'}: {decision.text}"


async def _run_plan(
    task: TaskState,
    plan: Plan,
    tools: dict[str, ToolSpec],
    failures: list[str],
    resumed: Snapshot | None = None,
) -> Outcome | Replan:
    """Execute one plan: the task's outcome, or what failed when it must be re-planned."""
    task.plan = plan
    task.set_status(
        TaskStatus.EXECUTING,
        f"plan v{plan.version} by {plan.model}: "
        + ", ".join(f"{s.id}={s.tool}" + (" (if)" if s.when else "") for s in plan.steps[:20])
        + (f", … ({len(plan.steps)} steps)" if len(plan.steps) > 20 else ""),
    )

    def pause(snapshot: Snapshot) -> NoReturn:
        _continue_as_new(task, failures, plan.version, snapshot)

    try:
        failed = await execute(task, plan, tools, pause, resumed)
    except BudgetExhausted as err:
        return Outcome(TaskStatus.BUDGET_EXHAUSTED, str(err))
    if not failed:
        return Outcome(TaskStatus.COMPLETED)
    if plan.version - task.solve_rounds > task.request.max_replans:
        return Outcome(TaskStatus.FAILED, "; ".join(failed))
    return Replan(failed)


async def _call_planner(
    task: TaskState,
    context: list[str],
    tools: dict[str, ToolSpec],
    failures: list[str],
    version: int,
    role: str,
) -> PlanResponse:
    task.set_status(TaskStatus.PLANNING, f"planning (v{version}, {role})")
    remaining = task.book.require("planning")
    response = await options.call_model(
        durable.PLAN,
        PlanRequest(
            task=task.request.task,
            role=role,
            context=context + task.short_term.recap(),  # what left the window
            tools=[] if task.catalog_ref is not None else list(tools.values()),
            catalog=task.catalog_ref,
            remaining_usd=remaining,
            max_usd=remaining,
            max_tokens=task.book.remaining_tokens(),
            completed=task.results,
            failures=failures,
            version=version,
            max_steps=task.request.max_plan_steps,
        ),
        PlanResponse,
        task.queues.planner,
        summary=f"plan v{version} by the {role} (budget left ${remaining:.4f})",
        refusal="planning does not fit the budget",
        priority=task.priority,
    )
    task.book.book_model(response.usage)
    if task.catalog_ref is not None:  # the specs of the tool activities this plan calls
        allowed = task.request.allowed_tools
        tools.update(
            {
                t.name: t
                for t in response.tools
                if t.runs_as == "activity"  # the workflow's own tools are known here
                and tools.get(t.name, t).runs_as == "activity"
                and (allowed is None or t.name in allowed)
            }
        )
    return response


def _continue_as_new(
    task: TaskState, failures: list[str], version: int, snapshot: Snapshot | None
) -> NoReturn:
    """History is getting long: start a fresh run with compact state (Temporal suggests
    this well before its limits). Does not return."""
    task.event(f"continuing as new after {task.steps_total} steps (plan v{version})")
    carried = task.carried(failures, version, snapshot)
    workflow.continue_as_new(task.request.model_copy(update={"carried": carried}))
