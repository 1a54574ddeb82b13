"""What a small local model's plan may say: numbers, words and references it was given.

A 135M-1.5B planner pastes values from its demonstrations (`2+95`, "Mars moons") or makes
them up, and the plan runs without any step failing. For such a model the decoding grammar
is narrowed to what the request holds: a calculator expression is built from the numbers
of the task, memory and results (and step references), a search query from the task's
words, a condition compares a step's value with a known number, and the written answer is
the task's words, known numbers and step references. A hosted model plans under the tool
schemas alone.
"""

from __future__ import annotations

import json
import re
from typing import Any

from keel.contracts import PlanRequest

_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")
# A word of the task: names, "Q3", "#ops", "on-call", "handbook.md".
_WORD = re.compile(r"#?[A-Za-z][A-Za-z0-9_'-]*(?:\.(?:md|txt|csv|json))?")
# Numbers a plan may use without finding them anywhere: digits and units of time and count.
CONSTANTS = frozenset(["10", "12", "24", "30", "31", "52", "60", "100", "365", "1000", "3600"])
# Bounds that keep the grammar small and the model from rambling.
MAX_QUERY_WORDS = 6
MAX_WORDS = 80  # of the task's words offered


def numbers_in(text: str) -> set[str]:
    return set(_NUMBER.findall(text.replace(",", "")))


def known_numbers(request: PlanRequest) -> set[str]:
    """Numbers the task, memory and the results so far hold, and the usual constants."""
    sources = [request.task, *request.context, *(json.dumps(r.output) for r in request.completed)]
    return set().union(*(numbers_in(s) for s in sources)) | CONSTANTS


def task_words(task: str) -> list[str]:
    """The task's words, each once, in the order they come."""
    return list(dict.fromkeys(_WORD.findall(task)))[:MAX_WORDS]


def _literal(text: str) -> str:
    """`text` as a regular expression matching itself, in the subset llama.cpp's converter
    reads (a dot in brackets: its literals keep a backslash before one)."""
    return "".join(
        f"[{c}]" if c in ".^$" else (f"\\{c}" if c in "|()[]{}*+?\\" else c) for c in text
    )


def _either(options: list[str]) -> str:
    return "(" + "|".join(_literal(o) for o in options) + ")"


def _numbers_pattern(numbers: set[str]) -> str:
    # digits as themselves, so a constant such as 7 or 2 is always there (sorted: the same
    # request, the same grammar)
    ordered = sorted(numbers - set("0123456789"))
    return "(" + "|".join([*(_literal(n) for n in ordered), "[0-9]"]) + ")"


def _reference(ids: list[str], fields: list[str]) -> str:
    path = f"([.]{_either(fields)})?" if fields else ""
    return r"\{\{" + _either(ids) + path + r"\}\}"


def expression_pattern(numbers: set[str], ids: list[str]) -> str:
    """Arithmetic on known numbers and step values: `17*7*24`, `({{s1.value}}+{{s2.value}})/2`."""
    operand = rf"\(*({_numbers_pattern(numbers)}|{_reference(ids, ['value'])})\)*"
    return rf"^{operand}( ?(\*\*|[-+*/]) ?{operand})*$"


def query_pattern(words: list[str]) -> str:
    """One to MAX_QUERY_WORDS of the task's words."""
    word = _either(words)
    return rf"^{word}( {word}){{0,{MAX_QUERY_WORDS - 1}}}$"


def condition_pattern(numbers: set[str], ids: list[str]) -> str:
    """A step's value compared with a known number: `s1.value > 400`."""
    return rf"^{_either(ids)}[.]value (>|<|>=|<=|==|!=) {_numbers_pattern(numbers)}$"


def answer_pattern(words: list[str], numbers: set[str], ids: list[str], fields: list[str]) -> str:
    """Words of the task, known numbers, arithmetic signs and references to step outputs."""
    piece = f"({_either(words)}|{_numbers_pattern(numbers)}|{_reference(ids, fields)})"
    # One character a sign (`**` is two signs) and no bounded repetition such as {0,80}:
    # llama.cpp's grammar sampler stalled past the 280 s call timeout on a repeated choice
    # between `*` and `**`, and on the 80 nested copies a bound unrolls into. The output
    # token limit bounds the answer instead.
    sign = r"([ ,.:;=+*/-]|\(|\))"
    return f"^{piece}({sign}+{piece})*{sign}*$"


def ground(
    schema: dict[str, Any], request: PlanRequest, ids: list[str], fields: list[str]
) -> dict[str, Any]:
    """The plan schema (activities.planning.plan_output_schema) narrowed for a small model:
    `expression` and `query` arguments, conditions and the answer (see the module doc).
    `ids` are the step ids a reference may name; `fields` the output fields it may reach."""
    numbers = known_numbers(request)
    words = task_words(request.task)
    narrowed = json.loads(json.dumps(schema))  # the caller's schema stays as it was
    for branch in narrowed["properties"]["steps"]["items"]["anyOf"]:
        args = branch["properties"]["args"].get("properties", {})
        if args.get("expression", {}).get("type") == "string":
            args["expression"] = {"type": "string", "pattern": expression_pattern(numbers, ids)}
        if args.get("query", {}).get("type") == "string" and words:
            args["query"] = {"type": "string", "pattern": query_pattern(words)}
        branch["properties"]["when"] = {
            "type": "string",
            "pattern": condition_pattern(numbers, ids),
        }
    if words:
        narrowed["properties"]["answer"] = {
            "type": "string",
            "pattern": answer_pattern(words, numbers, ids, fields),
        }
    return narrowed
