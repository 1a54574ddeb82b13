"""The benchmark suite's known answers (bench/suite.py), checked without a server: every
expected fragment is the value of arithmetic the task states, a fact its documents state,
or exact arithmetic on numbers those documents give (DERIVED says how, and the test checks
that the numbers are there), and none is part of the task's own text."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from bench.suite import DOCUMENTS, KINDS, TASKS, SuiteTask

DOCS = Path(__file__).resolve().parent.parent / "samples" / "docs"
TEXT = {name: (DOCS / name).read_text().lower() for name in DOCUMENTS}
MINIMUM = {
    "fact+arithmetic": 8,
    "two documents": 4,
    "conditional": 4,
    "parallel": 6,
}
# Numbers a derivation may use that the documents give in words or units.
UNITS = {
    "60": "minutes in an hour, seconds in a minute",
    "24": "hours in a day",
    "7": "days in a week: the on-call rotation is one week long",
    "2": "deploy days a week: Tuesdays and Thursdays",
}
# For a task (found by a unique piece of its text): fragment -> a Python expression over
# numbers from the documents (and the task) whose value the fragment gives; True gives "yes".
# `handbook` and `report` are the documents' lowercased text, for facts stated in words.
DERIVED: dict[str, dict[str, str]] = {
    "new customers did we get in Q2 and Q3 together": {"42": "19 + 23"},
    "did revenue grow from Q1 to Q3": {"41000": "161000 - 120000"},
    "How many days are in 3 on-call rotations": {
        "21": "3 * 7 if 'one week long' in handbook else None"
    },
    "deployment window on a deploy day": {
        "360": "(16 - 10) * 60 if 'between 10:00 and 16:00' in handbook else None"
    },
    "average quarterly revenue over Q1 to Q3": {"142000": "(120000 + 145000 + 161000) / 3"},
    "revenue per new customer in Q3, according": {"7000": "161000 / 23"},
    "fewer support tickets were there in Q3 than in Q1": {"122": "410 - 288"},
    "hours a week are deployments allowed": {
        "12": "2 * (16 - 10) if 'tuesdays and thursdays' in handbook else None"
    },
    "seconds does handbook.md allow for acknowledging": {
        "300": "5 * 60 if 'acknowledged within 5 minutes' in handbook else None"
    },
    "combined revenue of Q1 and Q2": {"265000": "120000 + 145000"},
    "Multiply the two numbers as well": {"1440": "5 * 288"},
    "total revenue of Q1 to Q3 (report.md)": {"426000": "120000 + 145000 + 161000"},
    "If 17*23 is more than 400": {"782": "17*23 + 100 if 17*23 > 400 else 17*23*2"},
    "if Q3 revenue was above 150000": {
        "11000": "161000 - 150000 if 161000 > 150000 else 120000 + 145000"
    },
    "did revenue grow in every quarter": {"yes": "120000 < 145000 < 161000"},
    "if we deploy on Fridays": {"21": "2*6 if 'friday' in handbook else 3*7"},
    "rotation is longer than 5 days": {
        "168": "(7*24 if 7 > 5 else 7*24*60) if 'one week long' in handbook else None"
    },
    "more than 1.3 times Q1 revenue": {
        "yes": "161000 > 1.3 * 120000",
        "1.34": "161000 / 120000",
    },
}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_ARITHMETIC = re.compile(r"[\d.+\-*/() ]+")


def derivations(task: SuiteTask) -> dict[str, str]:
    found = [d for key, d in DERIVED.items() if key.lower() in task.task.lower()]
    assert len(found) <= 1, f"more than one DERIVED entry for {task.task!r}"
    return found[0] if found else {}


def names_number(text: str, number: str) -> bool:
    """The number as a whole number in the text (23 in "| 23 |", not in "123")."""
    return re.search(rf"(?<![\d.]){re.escape(number)}(?![\d]|\.\d)", text) is not None


def evaluate(expression: str) -> float:
    """Python's arithmetic, on a string of digits and operators only."""
    assert _ARITHMETIC.fullmatch(expression), expression
    return float(eval(expression, {"__builtins__": {}}, {}))


def gives(value: float | bool | None, fragment: str) -> bool:
    """The fragment is the value as an answer writes it: its number is the value rounded to
    the fragment's decimals, and a prefix of the value rounded to any finer precision (so
    "1.34" is right for 1.3416... and "8571" for 8571.43, but "7631" not for 7631.58)."""
    if isinstance(value, bool) or fragment.lower() == "yes":
        return value is True and fragment.lower() == "yes"
    match = _NUMBER.match(fragment)
    if value is None or match is None:
        return False
    number = match.group(0)
    decimals = len(number.partition(".")[2])
    return all(f"{float(value):.{d}f}".startswith(number) for d in range(decimals, decimals + 6))


def sources(task: SuiteTask, fragment: str) -> set[str]:
    """Where the fragment comes from: "task" (arithmetic it states) and the documents that
    state it or the numbers it is computed from; empty when nothing accounts for it."""
    found: set[str] = set()
    derived = derivations(task).get(fragment)
    if derived is not None:
        value = eval(
            derived,
            {"__builtins__": {}},
            {"handbook": TEXT["handbook.md"], "report": TEXT["report.md"]},
        )
        assert gives(value, fragment), f"{derived} gives {value}, not {fragment!r}"
        for number in _NUMBER.findall(derived):
            where = {doc for doc in task.documents if names_number(TEXT[doc], number)}
            assert where or names_number(task.task, number) or number in UNITS, (
                f"{number} in the derivation of {fragment!r} is in neither "
                f"{task.documents} nor the task"
            )
            found |= where
        for doc in task.documents:
            if f"' in {doc.removesuffix('.md')}" in derived:  # a fact stated in words
                found.add(doc)
        return found | {"derived"}
    for expression in task.expressions:
        if gives(evaluate(expression), fragment):
            found.add("task")
    for doc in task.documents:
        text, wanted = TEXT[doc], fragment.lower()
        if names_number(text, wanted) if wanted.isdigit() else wanted in text:
            found.add(doc)
    return found


def test_the_suite_is_large_and_labelled() -> None:
    assert len(TASKS) >= 40
    assert len({t.task for t in TASKS}) == len(TASKS), "a task is listed twice"
    assert all(t.kind in KINDS for t in TASKS), [t.task for t in TASKS if t.kind not in KINDS]
    counts = Counter(t.kind for t in TASKS)
    for kind, least in MINIMUM.items():
        assert counts[kind] >= least, (kind, counts[kind])
    assert set(KINDS) <= {t.kind for t in TASKS[:16]}, "the first 16 should mix every kind"
    assert all(t.kind != "parallel" and t.tool_calls_needed <= 3 for t in TASKS[:4])


def test_positional_construction_still_works() -> None:
    task = SuiteTask("Compute 6*7.", ("42",))
    assert (task.task, task.expected, task.kind) == ("Compute 6*7.", ("42",), "")
    assert task.succeeded("It is 42.") and not task.succeeded("It is 41.")
    assert task.tool_calls_needed == 1


def test_answers_are_matched_without_case_or_thousands_separators() -> None:
    task = SuiteTask("How much?", ("426000", "Tuesday"))
    assert task.succeeded("$426,000 on TUESDAYS")
    assert not task.succeeded("426 000 on Tuesdays")  # only commas are separators
    assert SuiteTask("x", ("1144.9",)).succeeded("1,144.90")


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.task[:50])
def test_no_fragment_is_in_the_task_text(task: SuiteTask) -> None:
    assert task.expected and all(task.expected)
    for fragment in task.expected:
        assert fragment.lower() not in task.task.lower(), fragment
        assert fragment.lower() != "no", "'no' is in too many answers (not, now, know)"
    assert not task.succeeded(task.task), "an answer that echoes the task would pass"


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.task[:50])
def test_every_fragment_is_accounted_for(task: SuiteTask) -> None:
    for fragment in task.expected:
        assert sources(task, fragment), f"nothing gives {fragment!r} for {task.task!r}"
    for fragment in derivations(task):
        assert fragment in task.expected, f"DERIVED names {fragment!r}, not expected"


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.task[:50])
def test_each_kind_has_its_shape(task: SuiteTask) -> None:
    origins = [sources(task, f) for f in task.expected]
    if task.kind == "arithmetic":
        assert not task.documents
        assert all(o == {"task"} for o in origins)
    elif task.kind == "fact":
        assert task.documents
    elif task.kind == "fact+arithmetic":
        assert len(task.documents) == 1 and not task.expressions, "it must read the number"
        derived = derivations(task)
        assert derived, "the number is computed from the document"
        numbers = {n for d in derived.values() for n in _NUMBER.findall(d)}
        assert any(not names_number(task.task, n) for n in numbers), "the task states them"
        assert all(task.documents[0] in o for o in origins)
    elif task.kind == "two documents":
        assert set(task.documents) == set(DOCUMENTS)
        for doc in DOCUMENTS:
            assert any(doc in o for o in origins), f"no fragment from {doc}"
    elif task.kind == "conditional":
        branches = derivations(task).values()
        assert any(" if " in d or "<" in d or ">" in d for d in branches), "no branch checked"
    elif task.kind == "parallel":
        assert 5 <= task.tool_calls_needed <= 8
        assert len(task.expected) >= 4
        assert any(o & set(DOCUMENTS) for o in origins), "a document branch"
        assert sum("task" in o for o in origins) >= 3, "independent computations"
