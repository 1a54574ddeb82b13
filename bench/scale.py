"""Scale out the planner: the same burst of tasks with 1 and with 2 planner worker processes.

Each planner worker is its own process (`python -m workers planner`, as a deployment runs
it) with the real local model (KEEL_LOCAL_MODEL, default `small`) and KEEL_LLAMACPP_THREADS
threads (default 1: one replica's share of the machine). Everything else (agent, tools,
memory, answer model) runs in this process; the answers are written by the scripted model,
so the planner is the only real model. Each task is "What is A+B?" with no re-plan allowed:
one plan call per task, so tasks per second is the planner's throughput. While the tasks
run, the planner queue's backlog is read from the server (DescribeTaskQueue) every few
seconds and printed as a small chart.

    .venv/bin/python bench/scale.py [--quick] [--tasks N] [--threads T] [--model small|medium]

Prints tables and writes bench/results/scale.json. On a machine with fewer cores than
planner threads in all, the second worker only shares the same cores: say so when quoting.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import finish  # noqa: E402
from keel import _logging as keel_logging  # noqa: E402
from keel._lifeline import bound_to_this_process  # noqa: E402
from keel._queues import Queues  # noqa: E402
from keel._stalls import activity_backlog  # noqa: E402
from keel.client import start_task  # noqa: E402
from keel.contracts import Budget, TaskRequest, TaskResult, TaskStatus  # noqa: E402
from keel.settings import Settings  # noqa: E402
from keel.testing import scripted_components  # noqa: E402
from temporal.devserver import start_test_environment  # noqa: E402
from workers.process import build_all, workers_running  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE_EVERY_S = 2.0
CHART_WIDTH = 50


async def backlog(client: Client, queue: str) -> int | None:
    """The queue's approximate backlog; None when the busy server did not answer."""
    try:
        return await activity_backlog(client, queue)
    except RPCError:
        return None


def planner_workers(
    n: int, address: str, home: Path, prefix: str, model: str, threads: int
) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "KEEL_TEMPORAL_ADDRESS": address,
        "KEEL_HOME": str(home),
        "KEEL_QUEUE_PREFIX": prefix,
        "KEEL_PLANNER_MODEL": "llamacpp",
        "KEEL_LOCAL_MODEL": model,
        "KEEL_LLAMACPP_THREADS": str(threads),
        "KEEL_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "workers", "planner"]
    return [subprocess.Popen(bound_to_this_process(command), cwd=REPO, env=env) for _ in range(n)]


async def run_config(
    client: Client, address: str, home: Path, workers: int, tasks: int, args: Any
) -> dict[str, Any]:
    prefix = f"scale{workers}-"
    queues = Queues(prefix)
    settings = Settings(home=home / str(workers), planner_model="scripted", queue_prefix=prefix)
    components, _ = scripted_components(settings, queues)
    names = ("agent", "llm", "tools", "memory")  # the planner: the processes started here
    processes = planner_workers(
        workers, address, home / "planner", prefix, args.model, args.threads
    )
    samples: list[tuple[float, int]] = []
    try:
        async with workers_running(build_all(client, components, names)):
            # one task first, so that every worker has loaded its model before the clock runs
            warm = [
                await start_task(client, _request(-i - 1), queues=queues) for i in range(workers)
            ]
            await asyncio.gather(*(outcome(h) for h in warm))
            began = time.perf_counter()
            handles = [await start_task(client, _request(i), queues=queues) for i in range(tasks)]
            pending = asyncio.ensure_future(asyncio.gather(*(outcome(h) for h in handles)))
            while not pending.done():
                count = await backlog(client, queues.planner)
                if count is not None:
                    samples.append((time.perf_counter() - began, count))
                await asyncio.wait([pending], timeout=SAMPLE_EVERY_S)
            outcomes: list[TaskResult | None] = pending.result()
            elapsed = time.perf_counter() - began
    finally:
        for p in processes:
            p.terminate()
        for p in processes:
            p.wait(timeout=30)
        components.close_memory()
    results = [r for r in outcomes if r is not None]
    plans_s = [
        e.latency_ms / 1000 for r in results for e in r.ledger.entries if e.role == "planner"
    ]
    return {
        "planner_workers": workers,
        "tasks": tasks,
        "seconds": round(elapsed, 1),
        "tasks_per_s": round(tasks / elapsed, 3),
        "plan_p50_s": round(statistics.median(plans_s), 2) if plans_s else None,
        "answered": sum(r.status == TaskStatus.COMPLETED for r in results),
        "workflow_failed": len(outcomes) - len(results),
        "backlog": [(round(t, 1), b) for t, b in samples],
    }


async def outcome(handle: WorkflowHandle[Any, TaskResult]) -> TaskResult | None:
    """The task's result, or None when its workflow failed: a small model's bad plan can end
    a task that way, and it still counts as planner throughput. A long poll for the result
    that the busy dev server cuts (it answers "operation was canceled") is asked again."""
    while True:
        try:
            return await handle.result()
        except WorkflowFailureError:
            return None
        except RPCError:
            continue
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():  # this task was cancelled: stop
                raise
            # only the poll's call was cancelled underneath it: ask again


def _request(i: int) -> TaskRequest:
    a, b = 100 + i, 7 + (i % 13)
    return TaskRequest(
        task=f"What is {a}+{b}?", user_id=f"scale-{i % 10}", budget=Budget(usd=1.0), max_replans=0
    )


def chart(samples: list[tuple[float, int]]) -> list[str]:
    top = max((b for _, b in samples), default=0) or 1
    step = max(1, len(samples) // 20)  # at most ~20 rows
    return [f"{t:7.1f} s {b:5d} {'#' * round(b * CHART_WIDTH / top)}" for t, b in samples[::step]]


async def bench(args: Any) -> dict[str, Any]:
    keel_logging.configure("WARNING")  # a tool failure of a bad plan is not news here
    env = await start_test_environment()
    client = env.client
    address = client.service_client.config.target_host
    try:
        with tempfile.TemporaryDirectory() as home:
            configs = [
                await run_config(client, address, Path(home), n, args.tasks, args) for n in (1, 2)
            ]
    finally:
        await env.shutdown()
    one, two = configs
    return {
        "config": {
            "tasks": args.tasks,
            "model": args.model,
            "llama_threads_per_worker": args.threads,
            "cpu_count": os.cpu_count(),
        },
        "summary": {
            "one_worker_tasks_per_s": one["tasks_per_s"],
            "two_workers_tasks_per_s": two["tasks_per_s"],
            "speedup": round(two["tasks_per_s"] / one["tasks_per_s"], 2),
            "one_worker_plan_p50_s": one["plan_p50_s"],
            "two_workers_plan_p50_s": two["plan_p50_s"],
            "one_worker_answered": f"{one['answered']}/{args.tasks}",
            "two_workers_answered": f"{two['answered']}/{args.tasks}",
        },
        "runs": configs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 tasks instead of 100")
    parser.add_argument("--tasks", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads per worker")
    parser.add_argument("--model", default="small", help="KEEL_LOCAL_MODEL of the planners")
    args = parser.parse_args()
    args.tasks = args.tasks or (20 if args.quick else 100)
    print(
        f"{args.tasks} tasks at once, planner on the local {args.model} model, "
        f"{args.threads} thread(s) per planner worker, {os.cpu_count()} CPUs"
    )
    report = asyncio.run(bench(args))
    for run in report["runs"]:
        print(f"\nplanner queue backlog, {run['planner_workers']} planner worker(s):")
        print("\n".join(chart(run["backlog"])))
    finish("scale", report)


if __name__ == "__main__":
    main()
