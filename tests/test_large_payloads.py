"""Payloads over the threshold live out of band (keel/_payload_store.py), so legal inputs
whose results add up past Temporal's 2 MB limit cannot wedge a task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import StorageDriverClaim, StorageDriverRetrieveContext
from temporalio.converter import StorageDriverStoreContext as StoreContext

from keel._payload_store import DiskPayloadDriver, PayloadMissing
from keel.client import start_task
from keel.contracts import TaskRequest, TaskStatus
from keel.settings import get_settings, settings_from_env
from keel.testing import Stack
from tests.conftest import unique

KIB = 1024


def _payload(size: int) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=b"x" * size)


async def test_a_stored_payload_comes_back_whole_and_is_stored_once(tmp_path: Path) -> None:
    driver = DiskPayloadDriver(tmp_path)
    big = _payload(300 * KIB)
    claims = await driver.store(StoreContext(), [big, big])
    assert claims[0] == claims[1]
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1
    (back,) = await driver.retrieve(StorageDriverRetrieveContext(), claims[:1])
    assert back == big


async def test_a_missing_or_changed_payload_says_which_and_why(tmp_path: Path) -> None:
    driver = DiskPayloadDriver(tmp_path)
    (claim,) = await driver.store(StoreContext(), [_payload(10)])
    stored = next(p for p in tmp_path.rglob("*") if p.is_file())
    stored.write_bytes(stored.read_bytes() + b"!")
    with pytest.raises(PayloadMissing, match="changed on disk"):
        await driver.retrieve(StorageDriverRetrieveContext(), [claim])
    stored.unlink()
    with pytest.raises(PayloadMissing, match="KEEL_PAYLOAD_DIR"):
        await driver.retrieve(StorageDriverRetrieveContext(), [claim])
    with pytest.raises(PayloadMissing, match="not a payload claim"):
        await driver.retrieve(
            StorageDriverRetrieveContext(), [StorageDriverClaim({"sha256": "../../etc/passwd"})]
        )


def test_the_threshold_is_bounded_below_temporals_limit() -> None:
    assert settings_from_env({}).payload_threshold_bytes == 128 * KIB
    with pytest.raises(ValueError, match="KEEL_PAYLOAD_THRESHOLD_BYTES"):
        settings_from_env({"KEEL_PAYLOAD_THRESHOLD_BYTES": str(3 * 1024 * KIB)})


async def test_results_past_two_megabytes_finish_and_history_holds_claims(stack: Stack) -> None:
    """Nine 250 KiB results reach `synthesize` together (2.2 MiB): the task completes, and
    no event in its history carries a payload over the threshold."""
    task = unique("Summarize nine long reports")
    steps = [
        {"id": f"s{i}", "tool": "bulky", "args": {"label": f"report {i}", "kib": 250}}
        for i in range(1, 10)
    ]
    stack.model.script(task, "plan", json.dumps({"steps": steps}))
    request = TaskRequest(task=task, max_plan_steps=9, allowed_tools=["bulky"])
    handle = await start_task(stack.client, request)
    result = await handle.result()

    assert result.status == TaskStatus.COMPLETED, result.error
    assert len([s for s in result.steps if s.output]) == 9
    assert all(len(s.output["text"]) == 250 * KIB for s in result.steps)
    history = await handle.fetch_history()
    largest = max(e.ByteSize() for e in history.events)
    assert largest < get_settings().payload_threshold_bytes
    assert sum(e.ByteSize() for e in history.events) < 2 * 1024 * KIB
