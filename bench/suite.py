"""The benchmark task suite: tasks over the offline tools (calculator, read_file, list_files,
search_docs over samples/docs/handbook.md and report.md) with answers known in advance, so
success is checked, not judged.

A task succeeds when it completes and its answer contains every expected fragment
(case-insensitive; thousands separators in the answer are ignored, so "41,000" counts as
"41000"). Fragments are numbers the tools compute, facts the documents state, and numbers
exact arithmetic gives on those facts; none is part of the task's own text, so an answer
that only echoes the task fails. tests/test_suite_answers.py checks every fragment.

Each task has a kind (KINDS):
- arithmetic: computations the task states, no documents;
- fact: a fact from one document, often beside a computation the task states;
- fact+arithmetic: a number read from a document and then computed on (the task does not
  state the number);
- two documents: facts from both handbook.md and report.md in one answer;
- conditional: a branch on a computed or read value, or a yes/no question;
- parallel: 5-8 independent tool calls (LLMCompiler's ParallelQA shape).

The first 4 tasks are quick and representative (bench/planning.py --quick runs them on the
local model); the first 16 mix every kind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("arithmetic", "fact", "fact+arithmetic", "two documents", "conditional", "parallel")
DOCUMENTS = ("handbook.md", "report.md")

# An expression the task states, e.g. 17*7*24, 2**10, (120000+145000+161000)/3.
_EXPRESSION = re.compile(r"\(*\d+(?:\.\d+)?\)*(?:(?:\*\*|[-+*/])\(*\d+(?:\.\d+)?\)*)+")
# "41,000" -> "41000" in an answer (a comma between digit groups of three).
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def _balanced(expression: str) -> str:
    """An expression without the unmatched parentheses the pattern took from the prose."""
    while expression.count("(") > expression.count(")") and expression.startswith("("):
        expression = expression[1:]
    while expression.count(")") > expression.count("(") and expression.endswith(")"):
        expression = expression[:-1]
    return expression


@dataclass(frozen=True)
class SuiteTask:
    task: str
    expected: tuple[str, ...]
    kind: str = ""  # one of KINDS; "" for a task built without one

    def succeeded(self, answer: str) -> bool:
        text = _THOUSANDS.sub("", answer).lower()
        return all(fragment.lower() in text for fragment in self.expected)

    @property
    def expressions(self) -> tuple[str, ...]:
        """The arithmetic the task states, in order."""
        return tuple(_balanced(e) for e in _EXPRESSION.findall(self.task))

    @property
    def documents(self) -> tuple[str, ...]:
        """The sample documents the task names."""
        return tuple(d for d in DOCUMENTS if d in self.task)

    @property
    def tool_calls_needed(self) -> int:
        """A rough count of the tool calls a good plan makes: one calculator call per stated
        expression, one read per named document, and one calculation for a fact+arithmetic
        task (it computes on numbers it reads, so it states no expression)."""
        derived = self.kind == "fact+arithmetic"
        return len(self.expressions) + len(self.documents) + int(derived)


TASKS: list[SuiteTask] = [
    # --- the first 4: quick and representative (--quick) ---------------------------------
    SuiteTask(
        "Compute 17*7*24 and say what handbook.md says about deployments.",
        ("2856", "Tuesday"),
        "fact",
    ),
    SuiteTask(
        "How many new customers did we get in Q2 and Q3 together, according to report.md?",
        ("42",),
        "fact+arithmetic",
    ),
    SuiteTask(
        "In which channel must rollbacks be announced (handbook.md), and how many support "
        "tickets were there in Q1 (report.md)?",
        ("#ops", "410"),
        "two documents",
    ),
    SuiteTask(
        "If 17*23 is more than 400, compute 17*23+100; otherwise compute 17*23*2.",
        ("782",),
        "conditional",
    ),
    # --- the rest of the first 16: every kind ---------------------------------------------
    SuiteTask("Compute 365*24 and 52*7.", ("8760", "364"), "arithmetic"),
    SuiteTask(
        "Compute 120000/14 and 161000/23 (revenue per new customer in Q1 and Q3), "
        "145000-120000 and 161000-145000, and read handbook.md: how must rollbacks be done?",
        ("8571", "7000", "25000", "16000", "deploy rollback"),
        "parallel",
    ),
    SuiteTask(
        "By how much did revenue grow from Q1 to Q3 (report.md)?", ("41000",), "fact+arithmetic"
    ),
    SuiteTask(
        "Compute 5*60 and read handbook.md: how fast must a page be acknowledged?",
        ("300", "5 minutes"),
        "fact",
    ),
    SuiteTask(
        "Read report.md: if Q3 revenue was above 150000, compute by how much it was; "
        "otherwise compute Q1 plus Q2 revenue.",
        ("11000",),
        "conditional",
    ),
    SuiteTask(
        "Read handbook.md and report.md: on which weekdays do we deploy, and how many new "
        "customers did we get in Q3?",
        ("Tuesday", "Thursday", "23"),
        "two documents",
    ),
    SuiteTask(
        "How many days are in 3 on-call rotations, according to handbook.md?",
        ("21",),
        "fact+arithmetic",
    ),
    SuiteTask(
        "Compute 2**8, 3**5, 5**4, 7**3 and 11**2, and read report.md: how many new customers "
        "were there in Q2?",
        ("256", "243", "625", "343", "121", "19"),
        "parallel",
    ),
    SuiteTask(
        "Compute 120000+145000+161000 and read report.md for the quarterly revenue.",
        ("426000",),
        "fact",
    ),
    SuiteTask(
        "Read report.md: did revenue grow in every quarter, and which quarter brought the most "
        "new customers?",
        ("yes", "Q3"),
        "conditional",
    ),
    SuiteTask(
        "How many minutes long is the deployment window on a deploy day, according to handbook.md?",
        ("360",),
        "fact+arithmetic",
    ),
    SuiteTask(
        "Compute 123*4, 234*5, 345*6 and 456*7, and read report.md: what was the revenue in Q1?",
        ("492", "1170", "2070", "3192", "120000"),
        "parallel",
    ),
    # --- the rest --------------------------------------------------------------------------
    SuiteTask("Compute 410-288 and read report.md about support tickets.", ("122",), "fact"),
    SuiteTask("Compute 2**10 and 2**16 and 2**20.", ("1024", "65536", "1048576"), "arithmetic"),
    SuiteTask(
        "Compute 14+19+23 and read report.md: how many new customers in total?", ("56",), "fact"
    ),
    SuiteTask(
        "Read handbook.md and compute 15*60: how many seconds to announce a rollback?",
        ("900",),
        "fact",
    ),
    SuiteTask(
        "Compute 161000-120000 and 161000/120000 and read report.md.", ("41000", "1.34"), "fact"
    ),
    SuiteTask(
        "Compute 7*24 and read handbook.md: how long is the on-call rotation in hours?",
        ("168",),
        "fact",
    ),
    SuiteTask(
        "Compute 16-10 and read handbook.md: how many hours is the deployment window?",
        ("6 hours",),
        "fact",
    ),
    SuiteTask("Compute 3*17 and 4*13 and 6*9.", ("51", "52", "54"), "arithmetic"),
    SuiteTask("Compute 1000*1.07 and 1000*1.07*1.07.", ("1070", "1144.9"), "arithmetic"),
    SuiteTask("Read report.md and handbook.md and compute 145000-120000.", ("25000",), "fact"),
    SuiteTask(
        "Compute 288/410 and read report.md: what share of Q1 tickets remained by Q3?",
        ("0.70",),
        "fact",
    ),
    SuiteTask("Compute 99*99 and 101*101 and 100*100.", ("9801", "10201", "10000"), "arithmetic"),
    SuiteTask("Compute (120000+145000+161000)/3 and read report.md.", ("142000",), "fact"),
    SuiteTask("Compute 23-14 and read report.md about new customers.", ("9",), "fact"),
    SuiteTask(
        "Compute 60*60*24*7 and read handbook.md about on-call.", ("604800", "Monday"), "fact"
    ),
    SuiteTask(
        "Compute 12*12 and 13*13 and 14*14 and 15*15.",
        ("144", "169", "196", "225"),
        "arithmetic",
    ),
    SuiteTask(
        "Compute 2*2*2*2*2 and read handbook.md about rollbacks.", ("32", "15 minutes"), "fact"
    ),
    SuiteTask(
        "Compute 1/8 and 3/8 and 5/8 and 7/8.", ("0.125", "0.375", "0.625", "0.875"), "arithmetic"
    ),
    # facts, then arithmetic on them
    SuiteTask(
        "What was the average quarterly revenue over Q1 to Q3, according to report.md?",
        ("142000",),
        "fact+arithmetic",
    ),
    SuiteTask(
        "What was the revenue per new customer in Q3, according to report.md?",
        ("7000",),
        "fact+arithmetic",
    ),
    SuiteTask(
        "How many fewer support tickets were there in Q3 than in Q1, according to report.md?",
        ("122",),
        "fact+arithmetic",
    ),
    SuiteTask(
        "How many hours a week are deployments allowed, according to handbook.md?",
        ("12",),
        "fact+arithmetic",
    ),
    SuiteTask(
        "How many seconds does handbook.md allow for acknowledging an incident page?",
        ("300",),
        "fact+arithmetic",
    ),
    SuiteTask(
        "What was the combined revenue of Q1 and Q2 in report.md?", ("265000",), "fact+arithmetic"
    ),
    # two documents
    SuiteTask(
        "Within how many minutes must a rollback be announced (handbook.md), and what was the "
        "Q2 revenue (report.md)?",
        ("15 minutes", "145000"),
        "two documents",
    ),
    SuiteTask(
        "How many minutes does handbook.md allow to acknowledge a page, and how many support "
        "tickets were there in Q3 per report.md? Multiply the two numbers as well.",
        ("5 minutes", "288", "1440"),
        "two documents",
    ),
    SuiteTask(
        "When does the on-call rotation hand over (handbook.md), and what was the total revenue "
        "of Q1 to Q3 (report.md)?",
        ("Monday", "9:00", "426000"),
        "two documents",
    ),
    # conditionals
    SuiteTask(
        "Read handbook.md: if we deploy on Fridays, compute 2*6; otherwise compute 3*7.",
        ("21",),
        "conditional",
    ),
    SuiteTask(
        "Read handbook.md: if the on-call rotation is longer than 5 days, give its length in "
        "hours; otherwise give it in minutes.",
        ("168",),
        "conditional",
    ),
    SuiteTask(
        "Read report.md: was Q3 revenue more than 1.3 times Q1 revenue? Give the ratio to two "
        "decimals.",
        ("yes", "1.34"),
        "conditional",
    ),
    # parallel
    SuiteTask(
        "Compute the revenue of each quarter in millions (120000/1000000, 145000/1000000, "
        "161000/1000000) and the total (120000+145000+161000)/1000000, and read handbook.md: "
        "in which channel are rollbacks announced?",
        ("0.12", "0.145", "0.161", "0.426", "#ops"),
        "parallel",
    ),
    SuiteTask(
        "Compute 365*24, 366*24, 52*7 and 7*24*60, read handbook.md: on which day does on-call "
        "hand over, and read report.md: what was the Q1 revenue?",
        ("8760", "8784", "364", "10080", "Monday", "120000"),
        "parallel",
    ),
    SuiteTask(
        "Compute 60*24, 60*24*30, 60*24*365 and 60*60*24, read handbook.md: within how many "
        "minutes must a page be acknowledged, and read report.md: how many new customers came "
        "in Q3?",
        ("1440", "43200", "525600", "86400", "5 minutes", "23"),
        "parallel",
    ),
    SuiteTask(
        "Compute 11*11, 111*111, 1111*1111, 2**12, 3**8, 10**6/64 and 7**4, and read "
        "handbook.md: at what time does on-call hand over?",
        ("121", "12321", "1234321", "4096", "6561", "15625", "2401", "9:00"),
        "parallel",
    ),
]
