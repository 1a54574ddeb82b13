"""Keel's worker processes, one per task queue (DESIGN.md §2).

`python -m workers planner` (or `keel worker planner`) serves one or more of them; the names
are here, apart from their builders, so that listing them loads none of their dependencies.
"""

NAMES = ("agent", "planner", "llm", "tools", "memory")
