"""Keel's orchestration overhead: AgentTask (scripted model, N no-op steps) against a bare
Temporal workflow running the same number of activities, same server, same concurrency.

    .venv/bin/python bench/overhead.py [--quick] [--steps N] [--tasks T] [--concurrency C]

Besides throughput and latency, it reads the histories of a sample of tasks of each kind:
events and bytes per task, and where a task's wall time goes (each activity type's queue
wait and run time, the workflow tasks' time). Prints tables and writes
bench/results/overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.tools.registry import ToolContext, define_tool  # noqa: E402
from bench.report import finish  # noqa: E402
from keel._queues import Queues  # noqa: E402
from keel.client import start_task  # noqa: E402
from keel.contracts import Budget, TaskRequest, TaskStatus  # noqa: E402
from keel.settings import Settings  # noqa: E402
from keel.testing import scripted_components  # noqa: E402
from temporal.devserver import start_test_environment  # noqa: E402
from workers.process import build_all, workers_running  # noqa: E402

# What AgentTask ran besides its steps when the issue was filed (recall, list_tools, plan,
# synthesize, remember): the bare workflow runs that many more activities than steps.
# AgentTask now runs recall, plan, cache_lookup, synthesize, remember.
KEEL_FIXED_ACTIVITIES = 5
BARE_QUEUE = "bench-bare"
HISTORY_SAMPLE = 10  # the last tasks of each kind, whose histories are read


class _Nth(BaseModel):
    n: int  # steps differ, or the planner would drop repeats of the same call


class _Done(BaseModel):
    text: str = "ok"


async def _noop(args: _Nth, ctx: ToolContext) -> _Done:
    return _Done()


@activity.defn(name="bench_noop")
async def bare_noop() -> str:
    return "ok"


@workflow.defn(name="BareWorkflow", sandboxed=False)
class BareWorkflow:
    @workflow.run
    async def run(self, activities: int) -> int:
        for _ in range(activities):
            await workflow.execute_activity(
                "bench_noop", start_to_close_timeout=timedelta(seconds=30)
            )
        return activities


async def _drive(start: object, tasks: int, concurrency: int) -> tuple[float, list[float]]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(i: int) -> None:
        async with gate:
            began = time.perf_counter()
            await start(i)  # type: ignore[operator]
            latencies.append((time.perf_counter() - began) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(tasks)))
    return tasks / (time.perf_counter() - began), latencies


def _ms(later: object, earlier: object) -> float:
    return (later.ToMicroseconds() - earlier.ToMicroseconds()) / 1000  # type: ignore[attr-defined]


def profile(histories: list[WorkflowHistory]) -> dict[str, object]:
    """Events and bytes per task, and the median per task of each activity type's queue
    wait (scheduled to started) and run (started to closed), and of workflow-task time."""
    per_task: dict[str, list[float]] = defaultdict(list)
    events, sizes = [], []
    for history in histories:
        events.append(len(history.events))
        sizes.append(sum(e.ByteSize() for e in history.events))
        by_id = {e.event_id: e for e in history.events}
        spent: dict[str, float] = defaultdict(float)
        for e in history.events:
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                closed = e.activity_task_completed_event_attributes
                scheduled = by_id[closed.scheduled_event_id]
                started = by_id[closed.started_event_id]
                name = scheduled.activity_task_scheduled_event_attributes.activity_type.name
                spent[f"{name} wait"] += _ms(started.event_time, scheduled.event_time)
                spent[f"{name} run"] += _ms(e.event_time, started.event_time)
            elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                closed_wft = e.workflow_task_completed_event_attributes
                scheduled = by_id[closed_wft.scheduled_event_id]
                started = by_id[closed_wft.started_event_id]
                spent["workflow tasks wait"] += _ms(started.event_time, scheduled.event_time)
                spent["workflow tasks run"] += _ms(e.event_time, started.event_time)
                spent["workflow tasks (count)"] += 1
        total = _ms(history.events[-1].event_time, history.events[0].event_time)
        spent["whole task"] = total
        for key, value in spent.items():
            per_task[key].append(value)
    return {
        "events_per_task": statistics.median(events),
        "bytes_per_task": statistics.median(sizes),
        "median_ms_per_task": {
            k: round(statistics.median(v), 1) for k, v in sorted(per_task.items())
        },
    }


async def bench(steps: int, tasks: int, concurrency: int) -> dict[str, object]:
    env = await start_test_environment()
    client: Client = env.client
    with tempfile.TemporaryDirectory() as home:
        components, model = scripted_components(Settings(home=Path(home)), Queues())
        components.registry.add(define_tool("noop", "does nothing", _noop, _Nth, _Done))
        plan = {
            "steps": [
                {"id": f"s{i}", "tool": "noop", "args": {"n": i}, "depends_on": []}
                for i in range(1, steps + 1)
            ]
        }
        model.script("bench-task", "plan", json.dumps(plan))
        workers = [
            *build_all(client, components),
            Worker(
                client,
                task_queue=BARE_QUEUE,
                workflows=[BareWorkflow],
                activities=[bare_noop],
            ),
        ]
        try:
            async with workers_running(workers):
                bare_activities = steps + KEEL_FIXED_ACTIVITIES

                keel_ids: list[str] = []
                bare_ids: list[str] = []

                async def keel_task(i: int) -> None:
                    handle = await start_task(
                        client, TaskRequest(task=f"bench-task {i}", budget=Budget(usd=10))
                    )
                    result = await handle.result()
                    assert result.status == TaskStatus.COMPLETED, result.error
                    keel_ids.append(handle.id)

                async def bare_task(i: int) -> None:
                    workflow_id = f"bare-{i}-{time.time_ns()}"
                    await client.execute_workflow(
                        BareWorkflow.run,
                        bare_activities,
                        id=workflow_id,
                        task_queue=BARE_QUEUE,
                    )
                    bare_ids.append(workflow_id)

                await _drive(keel_task, min(5, tasks), concurrency)  # warm up both paths
                await _drive(bare_task, min(5, tasks), concurrency)
                keel_rate, keel_lat = await _drive(keel_task, tasks, concurrency)
                bare_rate, bare_lat = await _drive(bare_task, tasks, concurrency)
                keel_profile, bare_profile = [
                    profile(
                        [
                            await client.get_workflow_handle(i).fetch_history()
                            for i in ids[-HISTORY_SAMPLE:]
                        ]
                    )
                    for ids in (keel_ids, bare_ids)
                ]
        finally:
            components.close_memory()
            await env.shutdown()
    return {
        "config": {
            "steps": steps,
            "tasks": tasks,
            "concurrency": concurrency,
            "activities_per_workflow": steps + KEEL_FIXED_ACTIVITIES,
        },
        "summary": {
            "keel_wf_per_s": round(keel_rate, 2),
            "bare_wf_per_s": round(bare_rate, 2),
            "throughput_ratio": round(keel_rate / bare_rate, 3),
            "keel_p50_ms": round(statistics.median(keel_lat), 1),
            "bare_p50_ms": round(statistics.median(bare_lat), 1),
            "keel_history_events": keel_profile["events_per_task"],
            "bare_history_events": bare_profile["events_per_task"],
            "keel_history_bytes": keel_profile["bytes_per_task"],
            "bare_history_bytes": bare_profile["bytes_per_task"],
            "history_bytes_ratio": round(
                float(keel_profile["bytes_per_task"]) / float(bare_profile["bytes_per_task"]),
                2,  # type: ignore[arg-type]
            ),
        },
        "profile": {"keel": keel_profile, "bare": bare_profile},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small run (well under a minute)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=None)
    args = parser.parse_args()
    tasks = args.tasks or (20 if args.quick else 200)
    concurrency = args.concurrency or (10 if args.quick else 50)
    print(f"AgentTask vs bare workflow: {args.steps} steps, {tasks} tasks, {concurrency} in flight")
    report = asyncio.run(bench(args.steps, tasks, concurrency))
    profiles = report["profile"]
    assert isinstance(profiles, dict)
    print("\nmedian ms per task (history sample; wait = scheduled to started)")
    for kind, prof in profiles.items():
        print(f"{kind}:")
        for key, value in prof["median_ms_per_task"].items():
            print(f"  {key:40} {value:10.1f}")
    finish("overhead", report)


if __name__ == "__main__":
    main()
