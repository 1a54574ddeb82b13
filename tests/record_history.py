"""Record the history of a real AgentTask run into tests/histories/ for the replay test.

Run after a deliberate change to the workflow's command sequence (and say so in review):
    .venv/bin/python -m tests.record_history
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from keel.client import start_task
from keel.contracts import TaskRequest
from keel.queues import Queues
from keel.settings import Settings
from temporal.devserver import start_test_environment
from tests.conftest import scripted_components
from workers.process import build_all, workers_running

HISTORIES = Path(__file__).parent / "histories"
SCENARIOS = {
    # a plan with parallel steps, one failing, a re-plan, synthesis and recall
    "replan_after_tool_failure": (
        "Read missing.md and compute 6*7",
        [
            '{"steps": [{"id": "s1", "tool": "read_file", "args": {"path": "missing.md"},'
            ' "depends_on": []}, {"id": "s2", "tool": "calculator",'
            ' "args": {"expression": "6*7"}, "depends_on": []}]}',
            '{"steps": [{"id": "s1", "tool": "read_file", "args": {"path": "handbook.md"},'
            ' "depends_on": []}]}',
        ],
    ),
    # lookahead: one branch runs, the other is skipped by its condition
    "lookahead_branches": (
        "Find what the docs say about rollbacks",
        [
            '{"steps": [{"id": "s1", "tool": "search_docs", "args": {"query": "rollback"},'
            ' "depends_on": []}, {"id": "s2", "tool": "read_file",'
            ' "args": {"path": "{{s1}}"}, "depends_on": ["s1"],'
            ' "when": "len(s1.matches) == 0"}, {"id": "s3", "tool": "calculator",'
            ' "args": {"expression": "15*60"}, "depends_on": ["s1"],'
            ' "when": "s1.matches[0].path == \'handbook.md\'"}]}',
        ],
    ),
    # memory: a cached reasoner call, facts extracted and remembered
    "memory_facts_and_cache": (
        "My preferred language is Go. Explain closures in my preferred language",
        [],
    ),
}
REACT_SCENARIOS = {"react_loop": "Compute 12*12 and read report.md"}


def _save(name: str, history_json: str) -> None:
    path = HISTORIES / f"{name}.json"
    path.write_text(json.dumps(json.loads(history_json), indent=1) + "\n")
    print(f"recorded {path}")


async def record() -> None:
    env = await start_test_environment()
    with tempfile.TemporaryDirectory() as home:
        components, model = scripted_components(Settings(home=Path(home)), Queues())
        try:
            async with workers_running(build_all(env.client, components)):
                for name, (task, plans) in SCENARIOS.items():
                    model.script(task, "plan", *plans)
                    handle = await start_task(
                        env.client, TaskRequest(task=task), workflow_id=f"history-{name}"
                    )
                    await handle.result()
                    history = await handle.fetch_history()
                    _save(name, history.to_json())
                for name, task in REACT_SCENARIOS.items():
                    handle = await start_task(
                        env.client,
                        TaskRequest(task=task, strategy="react"),
                        workflow_id=f"history-{name}",
                    )
                    await handle.result()
                    _save(name, (await handle.fetch_history()).to_json())
        finally:
            components.close_memory()
            await env.shutdown()


if __name__ == "__main__":
    asyncio.run(record())
