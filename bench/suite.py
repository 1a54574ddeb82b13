"""The benchmark task suite: tasks over the offline tools (calculator, the sample documents)
with answers known in advance, so success is checked, not judged.

A task succeeds when it completes and its answer contains every expected fragment
(case-insensitive). Fragments are numbers the tools compute and facts the documents state.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SuiteTask:
    task: str
    expected: tuple[str, ...]

    def succeeded(self, answer: str) -> bool:
        text = answer.lower()
        return all(fragment.lower() in text for fragment in self.expected)


TASKS: list[SuiteTask] = [
    SuiteTask(
        "Compute 17*7*24 and say what handbook.md says about deployments.", ("2856", "Tuesday")
    ),
    SuiteTask(
        "Compute 120000+145000+161000 and read report.md for the quarterly revenue.", ("426000",)
    ),
    SuiteTask("Compute 410-288 and read report.md about support tickets.", ("122", "288")),
    SuiteTask("Compute 365*24 and 52*7.", ("8760", "364")),
    SuiteTask("Compute 2**10 and 2**16 and 2**20.", ("1024", "65536", "1048576")),
    SuiteTask("Compute 14+19+23 and read report.md: how many new customers in total?", ("56",)),
    SuiteTask(
        "Read handbook.md and compute 15*60: how many seconds to announce a rollback?", ("900",)
    ),
    SuiteTask(
        "Compute 5*60 and read handbook.md: how fast must a page be acknowledged?",
        ("300", "5 minutes"),
    ),
    SuiteTask("Compute 161000-120000 and 161000/120000 and read report.md.", ("41000", "1.34")),
    SuiteTask(
        "Compute 7*24 and read handbook.md: how long is the on-call rotation in hours?", ("168",)
    ),
    SuiteTask(
        "Compute 16-10 and read handbook.md: how many hours is the deployment window?", ("6",)
    ),
    SuiteTask("Compute 3*17 and 4*13 and 6*9.", ("51", "52", "54")),
    SuiteTask("Compute 1000*1.07 and 1000*1.07*1.07.", ("1070", "1144.9")),
    SuiteTask("Read report.md and handbook.md and compute 145000-120000.", ("25000",)),
    SuiteTask(
        "Compute 288/410 and read report.md: what share of Q1 tickets remained by Q3?", ("0.70",)
    ),
    SuiteTask("Compute 99*99 and 101*101 and 100*100.", ("9801", "10201", "10000")),
    SuiteTask("Compute (120000+145000+161000)/3 and read report.md.", ("142000",)),
    SuiteTask("Compute 23-14 and read report.md about new customers.", ("9",)),
    SuiteTask("Compute 60*60*24*7 and read handbook.md about on-call.", ("604800", "Monday")),
    SuiteTask("Compute 12*12 and 13*13 and 14*14 and 15*15.", ("144", "169", "196", "225")),
    SuiteTask("Compute 2*2*2*2*2 and read handbook.md about rollbacks.", ("32", "rollback")),
    SuiteTask("Compute 1/8 and 3/8 and 5/8 and 7/8.", ("0.125", "0.375", "0.625", "0.875")),
]
