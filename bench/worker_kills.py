"""What killing planner workers costs: T tasks (scripted model) with the planner queue served
by two `keel worker planner` processes, once undisturbed and once with one of them killed
(SIGKILL) every few seconds and started again. A plan or extract_facts call that dies with
its worker is retried once its heartbeats stop (15 s), not at its 5-minute timeout.

    .venv/bin/python bench/worker_kills.py [--quick] [--tasks T] [--kill-every S]

Prints a table and writes bench/results/worker_kills.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import finish  # noqa: E402
from keel import _logging as keel_logging  # noqa: E402
from keel._queues import Queues  # noqa: E402
from keel.client import start_task  # noqa: E402
from keel.contracts import Budget, TaskRequest, TaskStatus  # noqa: E402
from keel.settings import Settings  # noqa: E402
from keel.testing import scripted_components  # noqa: E402
from temporal.devserver import start_test_environment  # noqa: E402
from workers.process import build_all, workers_running  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PLANNERS = 2


async def _planner(address: str, home: str, prefix: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env |= {
        "KEEL_TEMPORAL_ADDRESS": address,
        "KEEL_HOME": home,
        "KEEL_QUEUE_PREFIX": prefix,
        "KEEL_PLANNER_MODEL": "scripted",
        "KEEL_REASONER_MODEL": "scripted",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keel.cli", "worker", "planner", cwd=REPO, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def run_once(
    address: str, client: object, home: str, tasks: int, kill_every_s: float | None
) -> dict[str, float]:
    prefix = f"kills-{time.time_ns()}-"
    queues = Queues(prefix)
    components, _ = scripted_components(Settings(home=Path(home) / prefix), queues)
    planners = [await _planner(address, home, prefix) for _ in range(PLANNERS)]
    kills = 0
    stop = asyncio.Event()

    async def killer() -> None:
        nonlocal kills
        i = 0
        while kill_every_s is not None and not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), kill_every_s)
                return
            except TimeoutError:
                pass
            victim = planners[i % PLANNERS]
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            kills += 1
            planners[i % PLANNERS] = await _planner(address, home, prefix)
            i += 1

    latencies: list[float] = []

    async def one(i: int) -> None:
        began = time.perf_counter()
        handle = await start_task(
            client,  # type: ignore[arg-type]
            TaskRequest(task=f"What is {i}*7?", user_id=f"u{i % 10}", budget=Budget(usd=1)),
            queues=queues,
        )
        result = await handle.result()
        assert result.status == TaskStatus.COMPLETED, result.error
        latencies.append(time.perf_counter() - began)

    try:
        async with workers_running(
            build_all(client, components, ["agent", "tools", "memory", "llm"])
        ):  # type: ignore[arg-type]
            killing = asyncio.create_task(killer())
            began = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(tasks)))
            wall = time.perf_counter() - began
            stop.set()
            await killing
    finally:
        for planner in planners:
            if planner.returncode is None:
                planner.kill()
                await planner.wait()
        components.close_memory()
    return {
        "wall_s": round(wall, 1),
        "task_p50_s": round(statistics.median(latencies), 1),
        "task_max_s": round(max(latencies), 1),
        "planner_kills": kills,
    }


async def bench(tasks: int, kill_every_s: float) -> dict[str, object]:
    env = await start_test_environment()
    address = env.client.service_client.config.target_host
    try:
        with tempfile.TemporaryDirectory() as home:
            calm = await run_once(address, env.client, home, tasks, None)
            killed = await run_once(address, env.client, home, tasks, kill_every_s)
    finally:
        await env.shutdown()
    return {
        "config": {"tasks": tasks, "planner_processes": PLANNERS, "kill_every_s": kill_every_s},
        "summary": {
            "no_kills_wall_s": calm["wall_s"],
            "kills_wall_s": killed["wall_s"],
            "planner_kills": killed["planner_kills"],
            "wall_ratio": round(killed["wall_s"] / calm["wall_s"], 2),
            "no_kills_task_max_s": calm["task_max_s"],
            "kills_task_max_s": killed["task_max_s"],
            "kills_task_p50_s": killed["task_p50_s"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 tasks")
    parser.add_argument("--tasks", type=int, default=None)
    parser.add_argument("--kill-every", type=float, default=2.0, metavar="SECONDS")
    args = parser.parse_args()
    tasks = args.tasks or (30 if args.quick else 100)
    print(f"{tasks} tasks, {PLANNERS} planner processes, one killed every {args.kill_every:g} s")
    keel_logging.configure("WARNING")  # the workers' per-activity lines would bury the table
    finish("worker_kills", asyncio.run(bench(tasks, args.kill_every)))


if __name__ == "__main__":
    main()
