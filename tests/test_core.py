"""The pure core without a server: the budget book, the plan-run scheduler, cache keys.

The properties drive `PlanRun` the way the workflow does (advance, run what it launched,
settle) over random plans, costs, conditions and failures.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from keel._core.budget import EPSILON_USD, BudgetBook, BudgetExhausted, fits
from keel._core.cache_keys import answer_key, tool_call_key
from keel._core.plan_run import PlanRun, gate
from keel.contracts import (
    Ledger,
    ModelUsage,
    Plan,
    PlanStep,
    SideEffects,
    StepResult,
    StepStatus,
    ToolSpec,
)

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}}


def spec(name: str, cost: float, side_effects: SideEffects = SideEffects.WRITE) -> ToolSpec:
    return ToolSpec(
        name=name,
        description=name,
        input_schema=SCHEMA,
        output_schema=SCHEMA,
        cost_per_call_usd=cost,
        side_effects=side_effects,
    )


def ignore(_: object) -> None:
    """For the notes and results a test does not look at."""


def result(step_id: str, status: StepStatus = StepStatus.SUCCEEDED, **fields: object) -> StepResult:
    values: dict[str, object] = {"tool": "t", "args": {}, "plan_version": 1, "output": {}}
    return StepResult(step_id=step_id, status=status, **(values | fields))  # type: ignore[arg-type]


def usage(usd: float, tokens: int = 10) -> ModelUsage:
    return ModelUsage(model="m", role="planner", input_tokens=tokens, output_tokens=0, usd=usd)


# --- the budget book --------------------------------------------------------------------


def test_a_cost_equal_to_what_is_left_fits_despite_rounding() -> None:
    left = 0.1 + 0.2 - 0.3 + 0.3  # not exactly 0.3
    assert fits(0.3, left)
    assert not fits(0.3 + 10 * EPSILON_USD, 0.3)


def test_reservations_count_against_what_is_left_until_released() -> None:
    book = BudgetBook.for_budget(1.0, None)
    assert book.reserve("a", 0.6) is None
    assert book.reserve("b", 0.6) == pytest.approx(0.4)  # refused: says what was available
    book.release("a")
    book.book_tool("t", "a", 0.5, 0.1, ok=True)
    assert book.remaining_usd() == pytest.approx(0.5)
    assert book.reserve("b", 0.5) is None


def test_require_refuses_when_money_or_tokens_are_spent() -> None:
    book = BudgetBook.for_budget(0.01, 100)
    assert book.require("planning") == pytest.approx(0.01)
    book.book_model(usage(0.0, tokens=100))
    with pytest.raises(BudgetExhausted, match="for planning"):
        book.require("planning")
    spent = BudgetBook.for_budget(0.01, None)
    spent.book_model(usage(0.02))
    assert spent.remaining_usd() == 0.0
    with pytest.raises(BudgetExhausted):
        spent.require("the answer")


def test_bookings_become_ledger_entries() -> None:
    book = BudgetBook.for_budget(1.0, None)
    book.book_model(usage(0.01), step_id="s1")
    book.book_cached("model", "synthesize")
    book.book_tool("calculator", "s1", 0.002, 0.5, ok=False)
    child = BudgetBook.for_budget(0.2, None)
    child.book_model(usage(0.03, tokens=12))
    book.book_agent("coder", "s2", child.ledger, None, 1.0)  # what the sub-agent spent
    book.book_agent("coder", "s3", Ledger(), 0.2, 1.0)  # unknown: its whole slice
    kinds = [(e.kind, e.name, e.usd, e.cached, e.ok) for e in book.ledger.entries]
    assert kinds == [
        ("model", "m", 0.01, False, True),
        ("model", "synthesize", 0.0, True, True),
        ("tool", "calculator", 0.002, False, False),
        ("agent", "coder", 0.03, False, True),
        ("agent", "coder", 0.2, False, True),
    ]
    assert book.ledger.entries[3].input_tokens == 12
    assert book.llm_calls() == 1  # the cached answer cost no call


# --- cache keys -------------------------------------------------------------------------


def test_a_tool_call_with_one_text_argument_is_keyed_by_that_text() -> None:
    assert tool_call_key({"query": "rollback"}) == "rollback"
    assert tool_call_key({"b": 1, "a": "x"}) == '{"a": "x", "b": 1}'


def test_the_answer_key_ignores_failed_steps_and_argument_order() -> None:
    ok = result("s1", args={"a": 1, "b": 2})
    failed = ok.model_copy(update={"step_id": "s2", "status": StepStatus.FAILED})
    swapped = ok.model_copy(update={"args": {"b": 2, "a": 1}})
    assert answer_key("q", [], [ok, failed]) == answer_key("q", [], [swapped])
    assert answer_key("q", [], [ok]) != answer_key("q", ["a fact"], [ok])


# --- gates ------------------------------------------------------------------------------


def test_a_step_of_a_skipped_dependency_is_skipped() -> None:
    step = PlanStep(id="s2", tool="t", depends_on=["s1"])
    result = gate(1, step, spec("t", 0.0), {"s1"}, {}, ignore)
    assert result is not None and result.status == StepStatus.SKIPPED


def test_a_false_condition_skips_and_a_broken_one_fails() -> None:
    s1 = result("s1", output={"n": 3})
    false = PlanStep(id="s2", tool="t", depends_on=["s1"], when="s1.n > 5")
    broken = PlanStep(id="s3", tool="t", depends_on=["s1"], when='s1.n > "a"')
    holds = PlanStep(id="s4", tool="t", depends_on=["s1"], when="s1.n < 5")
    notes: list[str] = []
    skipped = gate(1, false, spec("t", 0.0), set(), {"s1": s1}, notes.append)
    failed = gate(1, broken, spec("t", 0.0), set(), {"s1": s1}, notes.append)
    assert skipped is not None and skipped.status == StepStatus.SKIPPED
    assert failed is not None and failed.status == StepStatus.FAILED
    assert gate(1, holds, spec("t", 0.0), set(), {"s1": s1}, notes.append) is None
    assert notes[-1] == "s4: condition 's1.n < 5' holds"


def test_read_only_work_done_before_is_reused_and_writes_are_not() -> None:
    done = result("s1", args={"n": 1}, output={"n": 2})
    again = PlanStep(id="s5", tool="t", args={"n": 1})
    reused = gate(2, again, spec("t", 1.0, SideEffects.READ), set(), {"s1": done}, ignore)
    assert reused is not None and reused.output == {"n": 2}
    assert gate(2, again, spec("t", 1.0, SideEffects.WRITE), set(), {"s1": done}, ignore) is None


# --- the scheduler, driven like the workflow drives it -----------------------------------


@st.composite
def plans(draw: st.DrawFn) -> tuple[Plan, dict[str, ToolSpec], dict[str, str], float]:
    """A random acyclic plan (steps depend only on earlier ones), tool prices, how each
    step's call ends, and a budget."""
    size = draw(st.integers(1, 12))
    tools = {
        f"t{i}": spec(f"t{i}", draw(st.sampled_from([0.0, 0.001, 0.01, 0.1])))
        for i in range(draw(st.integers(1, 4)))
    }
    steps = []
    for i in range(size):
        earlier = [f"s{j}" for j in range(i)]
        deps = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        when = None
        if deps and draw(st.booleans()):
            when = f"{deps[0]}.n {draw(st.sampled_from(['>', '<', '==']))} 1"
        tool = draw(st.sampled_from(sorted(tools)))
        steps.append(PlanStep(id=f"s{i}", tool=tool, args={"n": i}, depends_on=deps, when=when))
    outcomes = {s.id: draw(st.sampled_from(["ok", "ok", "ok", "fail"])) for s in steps}
    budget = draw(st.sampled_from([0.0, 0.005, 0.05, 0.3, 10.0]))
    return Plan(version=1, steps=steps), tools, outcomes, budget


def drive(
    plan: Plan,
    tools: dict[str, ToolSpec],
    outcomes: dict[str, str],
    budget: float,
    seed: int,
    *,
    resumed: tuple[PlanRun, BudgetBook, dict[str, StepResult]] | None = None,
    pause_after: int | None = None,
    cap: int | None = None,
):
    """Run the plan as the workflow does, finishing running calls in a random order, to its
    end or, with `pause_after`, until that many calls have returned (then nothing new
    starts and the running calls finish: how a run continues as new). A step's output
    depends only on its id, so two drives of one plan take the same branches. Returns the
    run, the book, every settled result in order and the outputs. With `cap`, at most that
    many calls run at once (the workflow's per-task parallel-step cap)."""
    rng = random.Random(seed)
    if resumed is None:
        run, book, outputs = PlanRun(plan), BudgetBook.for_budget(budget, None), {}
    else:
        run, book, outputs = resumed
    results: list[StepResult] = []
    running: list[PlanStep] = []
    returned = 0

    def record(result: StepResult) -> None:
        results.append(result)
        if result.status == StepStatus.SUCCEEDED:
            outputs[result.step_id] = result

    while True:
        if pause_after is None or returned < pause_after:
            room = None if cap is None else cap - len(running)
            running += run.advance(tools, outputs, book, record, ignore, room=room)
        assert cap is None or len(running) <= cap
        # the money reserved never exceeds what is left
        assert fits(sum(book.reserved.values()), book.remaining_usd())
        if not running:
            return run, book, results, outputs
        step = running.pop(rng.randrange(len(running)))
        cost = tools[step.tool].cost_per_call_usd
        ok = outcomes[step.id] == "ok"
        book.book_tool(step.tool, step.id, cost * rng.choice([0.5, 1.0]), 0.0, ok)
        book.release(step.id)
        result = StepResult(
            step_id=step.id,
            plan_version=plan.version,
            tool=step.tool,
            args=step.args,
            status=StepStatus.SUCCEEDED if ok else StepStatus.FAILED,
            output={"n": int(step.id[1:]) % 3} if ok else None,
            error=None if ok else "boom",
        )
        record(result)
        run.settle(result)
        returned += 1


@settings(max_examples=300, deadline=None)
@given(plans(), st.integers(0, 2**16))
def test_a_plan_run_never_overspends_and_settles_every_step_once(case, seed) -> None:
    plan, tools, outcomes, budget = case
    run, book, results, _ = drive(plan, tools, outcomes, budget, seed)

    assert book.ledger.total_usd <= budget + EPSILON_USD
    settled_ids = [r.step_id for r in results]
    assert len(settled_ids) == len(set(settled_ids)), "a step settled twice"
    assert set(settled_ids) == run.settled
    by_id = {r.step_id: r for r in results}
    for step in plan.steps:
        if step.id not in by_id:
            # only a failure or the budget stops a step from settling
            assert run.blocked
            continue
        for dep in step.depends_on:
            assert dep in by_id, f"{step.id} settled before its dependency {dep}"
            if by_id[dep].status == StepStatus.SKIPPED:
                assert by_id[step.id].status == StepStatus.SKIPPED
    if not run.blocked:
        assert not run.unfinished
    if run.out_of_budget is not None:
        assert "is left" in run.out_of_budget


@settings(max_examples=200, deadline=None)
@given(plans(), st.integers(0, 2**16))
def test_a_snapshot_carries_only_what_the_rest_of_the_plan_needs(case, seed) -> None:
    plan, tools, outcomes, budget = case
    run, _, _, _ = drive(plan, tools, outcomes, budget, seed)
    snap = run.snapshot()
    left = {s.id for s in snap.plan.steps}
    assert left == {s.id for s in plan.steps} - run.settled
    assert snap.settled <= run.settled and snap.skipped <= run.skipped
    assert snap.settled | snap.skipped <= snap.needed
    for step in snap.plan.steps:  # every dependency is still to run or carried as settled
        assert all(d in left or d in snap.settled for d in step.depends_on)


@settings(max_examples=1000, deadline=None)
@given(plans(), st.integers(0, 2**16), st.integers(0, 12))
def test_continuing_as_new_anywhere_runs_the_same_steps(case, seed, pause_after) -> None:
    """Pause after any number of returned calls, snapshot, resume from only what the
    snapshot carries (with the outputs its steps need): the same steps settle the same way
    as in a run that never paused."""
    plan, tools, outcomes, _ = case
    whole, _, uninterrupted, _ = drive(plan, tools, outcomes, 10.0, seed)
    assume(not whole.blocked)  # a failed plan is re-planned, never continued as new
    first, book, before, outputs = drive(plan, tools, outcomes, 10.0, seed, pause_after=pause_after)
    snap = first.snapshot()
    carried = {i: r for i, r in outputs.items() if i in snap.needed}
    second = PlanRun.start(snap.plan, carried, snap)
    _, _, after, _ = drive(
        snap.plan, tools, outcomes, 10.0, seed, resumed=(second, book, dict(carried))
    )

    def statuses(results: list[StepResult]) -> dict[str, StepStatus]:
        return {r.step_id: r.status for r in results}

    assert statuses(before) | statuses(after) == statuses(uninterrupted)
    assert not set(statuses(before)) & set(statuses(after)), "a step settled in both runs"


def test_a_snapshot_keeps_a_skipped_step_that_the_rest_waits_on() -> None:
    # s1 is skipped while s2 still runs; the run continues as new before s3 starts: the
    # next run must know s1 was skipped, or s3 would run instead of being skipped
    plan = Plan(
        version=1,
        steps=[
            PlanStep(id="s0", tool="t"),
            PlanStep(id="s1", tool="t", depends_on=["s0"], when="s0.n > 1"),
            PlanStep(id="s2", tool="t"),
            PlanStep(id="s3", tool="t", depends_on=["s1", "s2"]),
        ],
    )
    tools, book, outputs = {"t": spec("t", 0.0)}, BudgetBook.for_budget(1.0, None), {}
    run = PlanRun(plan)
    assert [s.id for s in run.advance(tools, outputs, book, ignore, ignore)] == ["s0", "s2"]
    outputs["s0"] = result("s0", output={"n": 0})
    run.settle(outputs["s0"])
    gated: list[StepResult] = []
    assert run.advance(tools, outputs, book, gated.append, ignore) == []  # s3 waits for s2
    assert [(r.step_id, r.status) for r in gated] == [("s1", StepStatus.SKIPPED)]
    run.settle(result("s2"))
    snap = run.snapshot()
    assert [s.id for s in snap.plan.steps] == ["s3"] and snap.skipped == {"s1"}
    resumed = PlanRun.start(snap.plan, {}, snap)
    skipped: list[StepResult] = []
    assert resumed.advance(tools, {}, book, skipped.append, ignore) == []
    assert [(r.step_id, r.status) for r in skipped] == [("s3", StepStatus.SKIPPED)]


@settings(max_examples=200, deadline=None)
@given(plans(), st.integers(0, 2**16), st.integers(1, 3))
def test_a_capped_run_settles_the_same_steps_a_few_at_a_time(case, seed, cap) -> None:
    plan, tools, outcomes, budget = case
    free_run, _, free_results, _ = drive(plan, tools, outcomes, budget, seed)
    run, book, results, _ = drive(plan, tools, outcomes, budget, seed, cap=cap)

    assert book.ledger.total_usd <= budget + EPSILON_USD
    settled_ids = [r.step_id for r in results]
    assert len(settled_ids) == len(set(settled_ids)), "a step settled twice"
    if not run.blocked and not free_run.blocked:
        # the cap delays steps, never drops or adds one
        assert set(settled_ids) == {r.step_id for r in free_results} == run.settled
        assert not run.unfinished


def test_after_a_failure_nothing_new_starts_but_running_steps_finish() -> None:
    plan = Plan(
        version=1,
        steps=[
            PlanStep(id="a", tool="t"),
            PlanStep(id="b", tool="t"),
            PlanStep(id="c", tool="t", depends_on=["a"]),
        ],
    )
    tools = {"t": spec("t", 0.0)}
    run, book = PlanRun(plan), BudgetBook.for_budget(1.0, None)
    launched = run.advance(tools, {}, book, ignore, ignore)
    assert [s.id for s in launched] == ["a", "b"]
    run.settle(result("b", StepStatus.FAILED, output=None, error="x"))
    assert run.blocked and run.failures == ["step b (t) failed: x"]
    run.settle(result("a"))
    assert run.advance(tools, {}, book, ignore, ignore) == []  # c never starts


def test_a_pause_is_considered_only_after_progress_with_work_left() -> None:
    plan = Plan(
        version=1, steps=[PlanStep(id="a", tool="t"), PlanStep(id="b", tool="t", depends_on=["a"])]
    )
    run = PlanRun(plan)
    asked: list[int] = []

    def suggested() -> bool:
        asked.append(1)
        return True

    assert not run.should_pause(suggested) and not asked  # no progress yet: not even asked
    run.settle(result("a"))
    assert run.should_pause(suggested)
    run.settle(result("b"))
    assert not run.should_pause(suggested)  # nothing left to carry
