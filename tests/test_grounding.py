"""The narrowed grammar a small local model decodes under (activities/grounding.py): what
its patterns let through and what they stop, checked with Python's regular expressions and
compiled by llama.cpp's own JSON-schema converter."""

from __future__ import annotations

import json
import re

from llama_cpp import llama_grammar

from activities.grounding import (
    answer_pattern,
    condition_pattern,
    expression_pattern,
    ground,
    query_pattern,
    task_words,
)
from activities.planning import decoding_schema, output_fields
from activities.tools.builtin import default_registry
from keel.contracts import PlanRequest, StepResult, StepStatus
from keel.settings import Settings

TASK = "Compute 17*7*24 and say what handbook.md says about deployments (#ops, Q3, 1.07)."
IDS = ["s1", "s2", "s3"]
FIELDS = ["value", "text", "matches[0].text"]


def _fits(pattern: str, text: str) -> bool:
    assert pattern.startswith("^") and pattern.endswith("$")  # llama.cpp's converter needs both
    return re.fullmatch(pattern[1:-1], text) is not None


def _request(task: str = TASK, completed: list[StepResult] | None = None) -> PlanRequest:
    tools = [
        s
        for s in default_registry(Settings()).specs()
        if s.name in ("calculator", "read_file", "search_docs", "list_files")
    ]
    return PlanRequest(
        task=task, tools=tools, remaining_usd=1, max_usd=1, completed=completed or []
    )


def test_expressions_use_known_numbers_and_step_values() -> None:
    pattern = expression_pattern({"17", "24", "1.07"}, IDS)
    for ok in ("17*7*24", "({{s1.value}}+{{s2.value}})/2", "1.07*1.07", "17 ** 2"):
        assert _fits(pattern, ok), ok
    # a pasted number, a cell name, a field that is not a value, an unknown step
    for bad in ("2+95", "Q3-Q1", "{{s1.text}}*2", "{{s9.value}}+1", "1724"):
        assert not _fits(pattern, bad), bad


def test_queries_are_words_of_the_task() -> None:
    pattern = query_pattern(task_words(TASK))
    assert _fits(pattern, "deployments")
    assert _fits(pattern, "handbook.md deployments")
    assert not _fits(pattern, "Mars moons")
    assert not _fits(pattern, " ".join(["deployments"] * 7))  # at most 6 words


def test_conditions_compare_a_value_with_a_known_number() -> None:
    pattern = condition_pattern({"400"}, IDS)
    assert _fits(pattern, "s1.value > 400")
    assert not _fits(pattern, "plan")
    assert not _fits(pattern, "s1.value > 95")


def test_answers_are_task_words_numbers_and_references() -> None:
    pattern = answer_pattern(task_words(TASK), {"17", "24"}, IDS, FIELDS)
    assert _fits(pattern, "17*7*24 = {{s1.value}}. handbook.md: {{s2.matches[0].text}}")
    assert _fits(pattern, "#ops, Q3: {{s3.text}}")
    assert not _fits(pattern, "Mars has {{s1.value}} moons")
    assert not _fits(pattern, "2856 hours")  # a number no one gave: it must be a reference
    assert not _fits(pattern, "17*7*24 = 2856")  # digits do not run together into one


def test_the_narrowed_schema_compiles_to_a_llama_grammar() -> None:
    request = _request()
    small = decoding_schema(request, ["handbook.md", "report.md"], set(), small=True)
    hosted = decoding_schema(request, ["handbook.md", "report.md"], set(), small=False)
    assert "pattern" not in json.dumps(hosted)  # a hosted model is not narrowed
    calc = next(
        b
        for b in small["properties"]["steps"]["items"]["anyOf"]
        if b["properties"]["tool"] == {"const": "calculator"}
    )
    assert _fits(calc["properties"]["args"]["properties"]["expression"]["pattern"], "17*7*24")
    grammar = llama_grammar.json_schema_to_gbnf(json.dumps(small))
    llama_grammar.LlamaGrammar.from_string(grammar, verbose=False)  # raises if it cannot parse


def test_grounding_leaves_the_callers_schema_alone() -> None:
    request = _request()
    schema = decoding_schema(request, [], set(), small=False)
    before = json.dumps(schema)
    fields = [f for s in request.tools for f in output_fields(s.output_schema)]
    ground(schema, request, IDS, fields)
    assert json.dumps(schema) == before


def _patterns(request: PlanRequest, done: set[str]) -> tuple[str, str]:
    """The small model's expression and answer patterns for this request."""
    schema = decoding_schema(request, ["report.md"], done, small=True)
    calc = next(
        b
        for b in schema["properties"]["steps"]["items"]["anyOf"]
        if b["properties"]["tool"] == {"const": "calculator"}
    )
    expression = calc["properties"]["args"]["properties"]["expression"]["pattern"]
    return expression, schema["properties"]["answer"]["pattern"]


def test_numbers_a_plan_would_invent_cannot_be_decoded() -> None:
    request = _request("How many new customers in Q2 and Q3 together (report.md)?")
    expression, answer = _patterns(request, set())
    assert not _fits(expression, "2+95")  # pasted from the demonstration
    assert not _fits(answer, "Q2 and Q3 {{s1.value}} customers, 3 more than 39")
    assert _fits(answer, "Q2 and Q3 together: {{s1.value}} new customers")
    # numbers a result holds (120,000 as 120000), units of time and single digits may be used
    search = StepResult(
        step_id="s2",
        plan_version=1,
        tool="search_docs",
        status=StepStatus.SUCCEEDED,
        output={"matches": [{"path": "report.md", "line": 9, "text": "| Q3 | 23 | 120,000 |"}]},
    )
    expression, answer = _patterns(_request(request.task, [search]), {"s2"})
    assert _fits(expression, "23*24*7") and _fits(expression, "120000/23")
    assert _fits(answer, "{{s3.value}}") and _fits(answer, "Q3: {{s2.matches[0].text}}")
