"""Recorded histories replay against today's workflow code: a change that breaks
determinism for running tasks fails here.

A history is what a task started by an earlier release looks like: keep it. A deliberate
change to the command sequence goes behind `workflow.patched()` and adds a new recording
(`python -m tests.record_history NAME`); re-recording an old one would hide the very break
this test exists to catch. `*_before_lean.json` and `subagent.json`/`subagent_child.json` are
runs recorded before the lean-history patch (workflows/state.py), kept as they were."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from keel.plugin import KeelPlugin
from workflows.agent_task import AgentTask
from workflows.memorize import MemorizeDocuments

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_histories_are_recorded() -> None:
    assert HISTORIES, "no recorded histories under tests/histories/"


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_history_replays(path: Path) -> None:
    # Under the workflow id it was recorded with: a sub-agent's id is derived from its
    # parent's, and the replay checks it. (A child's and a later run's ids differ, unchecked.)
    history = WorkflowHistory.from_json(f"history-{path.stem}", path.read_text())
    replayer = Replayer(workflows=[AgentTask, MemorizeDocuments], plugins=[KeelPlugin()])
    await replayer.replay_workflow(history)  # raises on any nondeterminism
