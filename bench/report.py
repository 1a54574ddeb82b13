"""What every benchmark ends with: its summary as a two-column table, and its report written
to bench/results/<name>.json (git-ignored)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def print_summary(summary: Mapping[str, object]) -> None:
    width = max(len(key) for key in summary) + 2
    print(f"\n{'metric':{width}} {'value':>12}")
    for key, value in summary.items():
        print(f"{key:{width}} {value!s:>12}")


def finish(name: str, report: Mapping[str, object]) -> Path:
    """The report's `summary` printed as the table, and the whole report saved."""
    summary = report["summary"]
    assert isinstance(summary, Mapping)
    print_summary(summary)
    return save(name, report)


def save(name: str, report: object) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return path
