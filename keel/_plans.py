"""Pure plan-graph helpers used inside the workflow: validation, scheduling, argument refs.

No I/O and no randomness here: the workflow replays these functions and must get the same
answers every time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import jsonschema

from keel._conditions import ConditionError, parse_condition
from keel._core.budget import fits
from keel.contracts import Plan, PlanStep, StepResult, ToolSpec

# `{{s1}}` inside a string argument is replaced by the text of step s1's output.
REF_PATTERN = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9_-]{0,31})\s*\}\}")
REF_TEXT_LIMIT = 4000
MAX_STEPS = 16


def referenced_steps(value: Any) -> set[str]:
    """Step ids referenced with `{{id}}` anywhere inside an argument value."""
    if isinstance(value, str):
        return set(REF_PATTERN.findall(value))
    if isinstance(value, Mapping):
        return set().union(*(referenced_steps(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(referenced_steps(v) for v in value)) if value else set()
    return set()


def validate_plan(
    plan: Plan,
    tools: Mapping[str, ToolSpec],
    done: Collection[str] = (),
    max_steps: int = MAX_STEPS,
) -> list[str]:
    """Every structural reason the plan must not run; empty when it may.

    `done` holds the ids of steps that earlier plan versions already completed: a re-plan
    may depend on them (and reference their outputs) but not reuse their ids.
    """
    errors: list[str] = []
    if not plan.steps:
        return ["the plan has no steps"]
    if len(plan.steps) > max_steps:
        errors.append(f"the plan has {len(plan.steps)} steps; at most {max_steps} are allowed")
    ids = [s.id for s in plan.steps]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        errors.append(f"duplicate step ids: {', '.join(duplicates)}")
    reused = sorted(set(ids) & set(done))
    if reused:
        errors.append(f"step ids already used by completed steps: {', '.join(reused)}")
    known = set(ids) | set(done)
    for step in plan.steps:
        spec = tools.get(step.tool)
        if spec is None:
            errors.append(
                f"step {step.id}: unknown or disallowed tool {step.tool!r} "
                f"(available: {', '.join(sorted(tools))})"
            )
            continue
        for dep in step.depends_on:
            if dep not in known:
                errors.append(f"step {step.id}: depends on unknown step {dep!r}")
        for ref in referenced_steps(step.args):
            if ref not in step.depends_on:
                errors.append(f"step {step.id}: uses {{{{{ref}}}}} but does not depend on {ref}")
        if step.when is not None:
            try:
                condition = parse_condition(step.when)
            except ConditionError as err:
                errors.append(f"step {step.id}: condition {step.when!r} is invalid: {err}")
            else:
                for ref in sorted(condition.steps - set(step.depends_on)):
                    errors.append(
                        f"step {step.id}: condition reads {ref} but does not depend on it"
                    )
        schema_error = _schema_error(step.args, spec.input_schema)
        if schema_error:
            errors.append(f"step {step.id}: arguments for {step.tool} are invalid: {schema_error}")
    cycle = find_cycle(plan.steps)
    if cycle:
        errors.append(f"the steps form a cycle: {' -> '.join(cycle)}")
    return errors


def budget_error(plan: Plan, remaining_usd: float) -> str | None:
    """Why the plan (with writing the answer) cannot be afforded, or None when it can."""
    total = plan.expected_cost_usd + plan.synthesis_estimate_usd
    if not fits(total, remaining_usd):
        return (
            f"the plan is expected to cost ${total:.6f} (steps ${plan.expected_cost_usd:.6f}, "
            f"answer ${plan.synthesis_estimate_usd:.6f}) but only ${remaining_usd:.6f} is left; "
            "use cheaper tools or fewer steps"
        )
    return None


def _schema_error(args: dict[str, Any], schema: dict[str, Any]) -> str | None:
    # References are resolved at run time; validate with placeholders that keep the type.
    probe = _replace_refs(args, lambda _ref: "0")
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(probe)
    )
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where + ': ' if where else ''}{error.message}"


def find_cycle(steps: Iterable[PlanStep]) -> list[str] | None:
    graph = {s.id: list(s.depends_on) for s in steps}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in graph.get(node, []):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep in graph and dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def ready_steps(plan: Plan, settled: Collection[str], started: Collection[str]) -> list[PlanStep]:
    """Steps not yet started whose dependencies have all settled (succeeded or skipped)."""
    return [
        s for s in plan.steps if s.id not in started and all(d in settled for d in s.depends_on)
    ]


def output_text(result: StepResult) -> str:
    """The text form of a step output used in references and prompts."""
    output = result.output or {}
    for key in ("text", "answer", "value"):
        if key in output:
            return str(output[key])
    return json.dumps(output, sort_keys=True)


def resolve_args(args: dict[str, Any], results: Mapping[str, StepResult]) -> dict[str, Any]:
    def text(ref: str) -> str:
        return output_text(results[ref])[:REF_TEXT_LIMIT]

    resolved = _replace_refs(args, text)
    assert isinstance(resolved, dict)
    return resolved


def _replace_refs(value: Any, text: Any) -> Any:
    if isinstance(value, str):
        return REF_PATTERN.sub(lambda m: text(m.group(1)), value)
    if isinstance(value, Mapping):
        return {k: _replace_refs(v, text) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_refs(v, text) for v in value]
    return value
