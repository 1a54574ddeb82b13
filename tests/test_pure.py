"""Pure pieces: the calculator, plan validation, the task workspace, settings."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from activities.tools.calculator import CalculatorError, evaluate
from activities.tools.registry import ToolContext
from keel._core.plan_run import PlanRun
from keel._plans import budget_error, carried_plan_errors, resolve_args, validate_plan
from keel.contracts import Plan, PlanStep
from keel.settings import SettingsError, settings_from_env
from sandbox.workspace import IDLE_S, TaskWorkspace, WorkspaceError, sweep

CALC_SPEC = {
    "type": "object",
    "properties": {"expression": {"type": "string", "minLength": 1}},
    "required": ["expression"],
}


@pytest.mark.parametrize(
    ("expression", "value"),
    [("17*23", 391), ("(1+2)*3 - -4", 13), ("2**10", 1024), ("7//2", 3), ("sqrt(16)+1", 5)],
)
def test_calculator(expression: str, value: float) -> None:
    assert evaluate(expression) == value
    assert evaluate("(" * 48 + expression + ")" * 48) == value
    assert evaluate("-" * 400 + expression) == value  # signs in a loop, not nested calls


@pytest.mark.parametrize(
    "expression",
    [
        *("1/0", "__import__('os')", "2**99999", "1+", "open('x')", "9**9**9"),
        "(" * 51 + "1" + ")" * 51,  # nesting that would overflow the parser's stack
        "round(10**300*10**300)",  # round(inf): OverflowError, the expression's fault
    ],
)
def test_calculator_refuses(expression: str) -> None:
    with pytest.raises(CalculatorError):
        evaluate(expression)


def _tools() -> dict[str, object]:
    from keel.contracts import ToolSpec

    spec = ToolSpec(
        name="calculator",
        description="",
        input_schema=CALC_SPEC,
        output_schema={},
        cost_per_call_usd=0.01,
    )
    return {"calculator": spec}


def _step(id: str, deps: list[str] | None = None, **args: object) -> PlanStep:
    return PlanStep(
        id=id,
        tool="calculator",
        args=args or {"expression": "1"},
        depends_on=deps or [],
        expected_cost_usd=0.01,
    )


def test_plan_validation_finds_every_problem() -> None:
    plan = Plan(
        steps=[
            _step("a", ["b"]),
            _step("b", ["a"]),
            PlanStep(id="c", tool="shell", args={}),
            _step("d", expression=5),
            _step("e", ["zz"], expression="{{a}}+1"),
        ]
    )
    errors = " | ".join(validate_plan(plan, _tools()))  # type: ignore[arg-type]
    assert "cycle" in errors
    assert "unknown or disallowed tool 'shell'" in errors
    assert "arguments for calculator are invalid" in errors
    assert "depends on unknown step 'zz'" in errors
    assert "uses {{a}} but does not depend on a" in errors


def test_conditions_and_replans_are_validated() -> None:
    bad_condition = _step("a")
    bad_condition.when = "a.value >"
    reads_undeclared = _step("b")
    reads_undeclared.when = "a.value > 1"
    errors = " | ".join(validate_plan(Plan(steps=[bad_condition, reads_undeclared]), _tools()))  # type: ignore[arg-type]
    assert "condition 'a.value >' is invalid" in errors
    assert "condition reads a but does not depend on it" in errors

    # A re-plan may build on completed steps, but not take over their ids.
    replan = Plan(steps=[_step("s2", ["s1"], expression="{{s1}}+1"), _step("s1")])
    errors = " | ".join(validate_plan(replan, _tools(), done={"s1"}))  # type: ignore[arg-type]
    assert errors == "step ids already used by completed steps: s1"
    ok = Plan(steps=[_step("s2", ["s1"], expression="{{s1}}+1")])
    assert validate_plan(ok, _tools(), done={"s1"}) == []  # type: ignore[arg-type]


def test_a_carried_plan_is_checked_again_in_the_next_run() -> None:
    """The rest of a plan handed over by continue-as-new (as PlanRun.snapshot makes it: the
    steps left) runs on only if it is still valid here: the settled and skipped steps it
    builds on are known, a tool this run does not have is not."""
    s2, s3 = _step("s2", ["s1"]), _step("s3", ["s2"], expression="{{s2}}+1")
    s3.when = "s2.value > 1"
    s4 = _step("s4", ["s5"])  # s5 was skipped (its condition was false)
    run = PlanRun(Plan(version=2, steps=[_step("s1"), s2, s3, s4, _step("s5")]))
    run.settled |= {"s1", "s2", "s5"}
    run.skipped |= {"s5"}
    snapshot = run.snapshot()
    assert [s.id for s in snapshot.plan.steps] == ["s3", "s4"]
    known = {"s0", *snapshot.settled, *snapshot.skipped}  # s0: an earlier plan's output
    assert carried_plan_errors(snapshot.plan, _tools(), known) == []  # type: ignore[arg-type]
    gone = PlanStep(id="s6", tool="gone_tool", args={})
    rest = snapshot.plan.model_copy(update={"steps": [*snapshot.plan.steps, gone]})
    errors = carried_plan_errors(rest, _tools(), known)  # type: ignore[arg-type]
    assert errors == ["step s6: unknown or disallowed tool 'gone_tool' (available: calculator)"]


def test_plan_budget() -> None:
    plan = Plan(steps=[_step("a"), _step("b")], synthesis_estimate_usd=0.005)
    assert budget_error(plan, 0.025) is None
    assert "only $0.020000 is left" in (budget_error(plan, 0.02) or "")


def test_references_resolve_to_outputs() -> None:
    from keel.contracts import StepResult, StepStatus

    done = StepResult(
        step_id="a", plan_version=1, tool="calculator", status=StepStatus.SUCCEEDED,
        output={"value": 391.0, "text": "391"},
    )  # fmt: skip
    assert resolve_args({"expression": "{{a}} * 2"}, {"a": done}) == {"expression": "391 * 2"}


def test_workspace_is_a_private_copy_that_refuses_escapes(tmp_path: Path) -> None:
    source = tmp_path / "docs"
    source.mkdir()
    (source / "a.md").write_text("hello")
    (tmp_path / "secret.txt").write_text("top secret")
    os.symlink(tmp_path / "secret.txt", source / "link.md")
    ws = TaskWorkspace.for_task(tmp_path / "ws", "wf/1", source)

    assert ws.read_text("a.md") == "hello"
    (ws.root / "a.md").write_text("changed")
    assert (source / "a.md").read_text() == "hello"  # the task only touched its copy
    for bad in ["../secret.txt", "/etc/passwd", "link.md", "a.md/../../../secret.txt"]:
        with pytest.raises(WorkspaceError):
            ws.read_text(bad)
    assert ws.list_files() == ["a.md"]
    for bad_id in ["..", ".", ""]:  # the workspaces folder itself, or Keel's home
        with pytest.raises(WorkspaceError, match="cannot name a workspace"):
            TaskWorkspace.for_task(tmp_path / "ws", bad_id, source)


def test_a_task_copy_unused_for_a_day_is_deleted(tmp_path: Path) -> None:
    source = tmp_path / "docs"
    source.mkdir()
    (source / "a.md").write_text("hello")
    workspaces = tmp_path / "ws"
    old = TaskWorkspace.for_task(workspaces, "wf-old", source)
    used = TaskWorkspace.for_task(workspaces, "wf-used", source)
    day_ago = time.time() - IDLE_S - 60
    for ws in (old, used):
        os.utime(ws.root, (day_ago, day_ago))
    TaskWorkspace.for_task(workspaces, "wf-used", source)  # a call of that task: in use
    assert sweep(workspaces) == ["wf-old"]
    assert sorted(p.name for p in workspaces.iterdir()) == ["wf-used"]
    # the deleted task's next call gets a fresh copy of the files
    assert TaskWorkspace.for_task(workspaces, "wf-old", source).read_text("a.md") == "hello"


def test_settings_errors_are_one_clear_line() -> None:
    with pytest.raises(SettingsError, match="KEEL_LLAMACPP_THREADS='many' is invalid"):
        settings_from_env({"KEEL_LLAMACPP_THREADS": "many"})
    settings = settings_from_env({"KEEL_TEMPORAL_ADDRESS": "temporal.example:7233"})
    assert not settings.uses_embedded_temporal


def test_only_a_file_tool_may_make_a_task_copy(tmp_path: Path) -> None:
    """A task releases its copy of the files when it ran one of durable.FILE_TOOLS: a tool
    outside them that read files would leave the copy behind, so it is refused at once."""
    source = tmp_path / "docs"
    source.mkdir()
    (source / "a.md").write_text("hello")
    reader = ToolContext("wf", "s1", 0.0, None, tmp_path / "ws", source, tool="read_file")
    assert reader.workspace().read_text("a.md") == "hello"
    other = ToolContext("wf", "s1", 0.0, None, tmp_path / "ws", source, tool="fetch_notes")
    with pytest.raises(RuntimeError, match="add it to keel.durable.FILE_TOOLS"):
        other.workspace()
