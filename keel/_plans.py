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
from keel._core.untrusted import quoted
from keel.contracts import Plan, PlanStep, StepResult, StepStatus, ToolSpec
from keel.durable import LLM_QUEUE

# `{{s1}}` inside a string argument (or the plan's answer) is replaced by the text of step
# s1's output; `{{s1.value}}` or `{{s1.matches[0].text}}` by one field inside it.
REF_PATTERN = re.compile(
    r"\{\{\s*([A-Za-z][A-Za-z0-9_-]{0,31})((?:\.[A-Za-z_][A-Za-z0-9_]{0,63}|\[\d{1,4}\]){0,8})\s*\}\}"
)
_PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
REF_TEXT_LIMIT = 4000
MAX_STEPS = 16
MAX_ANSWER_TEMPLATE = 2000


def referenced_steps(value: Any) -> set[str]:
    """Step ids referenced with `{{id}}` anywhere inside an argument value."""
    if isinstance(value, str):
        return {m.group(1) for m in REF_PATTERN.finditer(value)}
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
    offered: Collection[str] | None = None,
) -> list[str]:
    """Every structural reason the plan must not run; empty when it may.

    `done` holds the ids of steps that earlier plan versions already completed: a re-plan
    may depend on them (and reference their outputs) but not reuse their ids. `offered`
    names the tools the planner was offered, when `tools` holds only those the plan calls.
    """
    errors: list[str] = []
    if not plan.steps and plan.answer is None:
        return ["the plan has no steps and no answer"]
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
                f"(available: {', '.join(sorted(tools if offered is None else offered))})"
            )
            continue
        for dep in step.depends_on:
            if dep not in known:
                errors.append(f"step {step.id}: depends on unknown step {dep!r}")
        for ref in referenced_steps(step.args):
            if ref not in step.depends_on:
                errors.append(f"step {step.id}: uses {{{{{ref}}}}} but does not depend on {ref}")
        errors += [f"step {step.id}: {e}" for e in _path_errors(step.args, plan, tools)]
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
    if plan.answer is not None:
        errors += answer_errors(plan, tools, known)
    return errors


def carried_plan_errors(
    plan: Plan, tools: Mapping[str, ToolSpec], settled: Collection[str], max_steps: int = MAX_STEPS
) -> list[str]:
    """Why the rest of a plan handed over by continue-as-new must not run on in this run (a
    tool this run does not have, a shape no plan may have). `plan` holds the steps left;
    `settled` the ids they may build on: earlier plans' outputs and this plan's settled and
    skipped steps. Its cost was approved when it was planned: the budget is not asked again."""
    own = {s.id for s in plan.steps}
    return validate_plan(plan, tools, done=set(settled) - own, max_steps=max_steps)


def answer_errors(plan: Plan, tools: Mapping[str, ToolSpec], known: set[str]) -> list[str]:
    answer = plan.answer or ""
    if not answer.strip():
        return ["the answer template is empty: write the answer, or leave it out"]
    if len(answer) > MAX_ANSWER_TEMPLATE:
        return [f"the answer template has {len(answer)} characters; at most {MAX_ANSWER_TEMPLATE}"]
    errors = [
        f"the answer uses {{{{{ref}}}}} but no step has that id"
        for ref in sorted(referenced_steps(answer) - known)
    ]
    return errors + [f"the answer: {e}" for e in _path_errors(answer, plan, tools)]


def _path_errors(value: Any, plan: Plan, tools: Mapping[str, ToolSpec]) -> list[str]:
    """Field references (`{{s1.value}}`) that the referenced tool's output cannot have."""
    tool_of = {s.id: s.tool for s in plan.steps}
    errors = []
    for ref, path in _references(value):
        spec = tools.get(tool_of.get(ref, ""))
        if not path or spec is None:
            continue  # a whole output, or a step of an earlier plan (its output is known)
        if _schema_at(spec.output_schema, path) is None:
            fields = ", ".join(sorted(spec.output_schema.get("properties", {}))) or "none"
            errors.append(
                f"{{{{{ref}{path}}}}}: {spec.name} output has no such field (fields: {fields})"
            )
    return errors


def _references(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(m.group(1), m.group(2)) for m in REF_PATTERN.finditer(value)]
    if isinstance(value, Mapping):
        return [r for v in value.values() for r in _references(v)]
    if isinstance(value, list):
        return [r for v in value for r in _references(v)]
    return []


def _schema_at(schema: Any, path: str) -> Any:
    """The sub-schema a field path reaches, or None when the schema says it cannot exist.
    A schema that does not describe its fields lets any path through."""
    defs = schema.get("$defs", {}) if isinstance(schema, dict) else {}
    for name, index in _PATH_PART.findall(path):
        if isinstance(schema, dict) and str(schema.get("$ref", "")).startswith("#/$defs/"):
            schema = defs.get(schema["$ref"].removeprefix("#/$defs/"), {})
        if not isinstance(schema, dict):
            return {}
        if index:
            if schema.get("type") not in (None, "array"):
                return None
            schema = schema.get("items", {})
        else:
            props = schema.get("properties")
            if props is None:
                if schema.get("type") not in (None, "object"):
                    return None
                return {}
            if name not in props:
                return None
            schema = props[name]
    return schema


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
    probe = _replace_refs(args, lambda _ref, _path: "0")
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


def field_text(result: StepResult | None, path: str) -> str:
    """The text of a step output, or of the field `path` (".value", ".matches[0].text")
    inside it; empty when the step did not succeed or the field is missing."""
    if result is None or result.status != StepStatus.SUCCEEDED:
        return ""
    if not path:
        return output_text(result)
    value: Any = result.output or {}
    for name, index in _PATH_PART.findall(path):
        if index and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        elif name and isinstance(value, Mapping) and name in value:
            value = value[name]
        else:
            return ""
    if isinstance(value, float):
        return f"{value:.12g}"  # 1144.9, not 1144.9000000000001; 2856, not 2856.0
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def reads_as_prompt(spec: ToolSpec) -> bool:
    """Whether a model reads the tool's input as its prompt: a sub-agent's task, a question
    for the reasoner (the tools on the model queue)."""
    return spec.runs_as == "subagent" or spec.queue == LLM_QUEUE


def resolve_args(
    args: dict[str, Any], results: Mapping[str, StepResult], quote: bool = False
) -> dict[str, Any]:
    """The step's arguments with each `{{s1}}` replaced by what s1 returned; `quote`: as
    quoted data (keel/_core/untrusted.py), for a tool whose input a model reads as a prompt
    (ask_reasoner's question, a sub-agent's task)."""

    def text(ref: str, path: str) -> str:
        value = field_text(results.get(ref), path)[:REF_TEXT_LIMIT]
        return quoted(value) if quote else value

    resolved = _replace_refs(args, text)
    assert isinstance(resolved, dict)
    return resolved


def render_answer(template: str, results: Mapping[str, StepResult]) -> str:
    """The plan's answer with every reference replaced by what its step returned (a step
    that was skipped or failed reads as empty)."""
    return REF_PATTERN.sub(
        lambda m: field_text(results.get(m.group(1)), m.group(2))[:REF_TEXT_LIMIT], template
    ).strip()


def _replace_refs(value: Any, text: Any) -> Any:
    if isinstance(value, str):
        return REF_PATTERN.sub(lambda m: text(m.group(1), m.group(2)), value)
    if isinstance(value, Mapping):
        return {k: _replace_refs(v, text) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_refs(v, text) for v in value]
    return value
