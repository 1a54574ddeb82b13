"""The `when` condition language: what it computes, and what it refuses."""

from __future__ import annotations

import pytest

from keel._conditions import ConditionError, parse_condition

OUTPUTS = {
    "s1": {"matches": [{"path": "handbook.md", "year": 2025}], "text": "Deploy on Tuesdays"},
    "s2": {"value": 42, "text": "42"},
    "s3": {"matches": [], "text": ""},
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("s1.matches[0].year > 2024", True),
        ("s1.matches[0].year > 2025", False),
        ("len(s1.matches) > 0 and not (len(s3.matches) > 0)", True),
        ("len(s3.matches) == 0 or s2.value < 0", True),
        ("s1.text contains 'deploy'", True),  # case-insensitive text search
        ('"tuesdays" in lower(s1.text)', True),
        ("s2.value * 2 - 4 == 80", True),
        ("s2.value / 4 >= 10.5", True),
        ("-s2.value < 0", True),
        ("s1.missing == null", True),  # a missing field is null ...
        ("s1.missing > 3", False),  # ... and comparing null is false, not an error
        ("s1.matches[5].year > 2000", False),
        ("exists(s2.value) and number(s2.text) == 42", True),
        ("s1.matches[0]['path'] == 'handbook.md'", True),
        ("true and not false", True),
    ],
)
def test_conditions_evaluate(source: str, expected: bool) -> None:
    assert parse_condition(source).evaluate(OUTPUTS) is expected


def test_condition_reports_the_steps_it_reads() -> None:
    assert parse_condition("len(s1.matches) > 0 and not (s2.value == 3)").steps == {"s1", "s2"}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("__import__('os').system('id')", "unknown function '__import__'"),
        ("s1.text.__class__ == 1 or open('x')", "unknown function 'open'"),
        ("s1 >", "unexpected 'end'"),
        ("(s2.value > 1", "expected '\\)'"),
        ("1 < s2.value < 50", "chained comparison"),
        ("s2.value ; 1", "unexpected character ';'"),
        ("", "empty"),
        ("x" * 600, "at most 500"),
        ("not " * 40 + "true", "nested too deeply"),
    ],
)
def test_bad_conditions_are_refused_when_parsed(source: str, message: str) -> None:
    with pytest.raises(ConditionError, match=message):
        parse_condition(source)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("s1.text > 3", "cannot compare"),
        ("s2.value / 0 == 1", "division by zero"),
        ("s9.value == 1", "step 's9' has no output"),
        ("number(s1.text) == 1", "number\\(\\) cannot read"),
    ],
)
def test_conditions_that_cannot_be_evaluated_say_why(source: str, message: str) -> None:
    with pytest.raises(ConditionError, match=message):
        parse_condition(source).evaluate(OUTPUTS)
