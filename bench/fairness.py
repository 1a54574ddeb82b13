"""Fairness under load: one user's simple task while another user floods the sandbox.

    .venv/bin/python bench/fairness.py [--quick] [--victims N] [--flood-tasks T] [--sleep S]

The victim runs "What is 12+N?" (recall, plan, one calculator step, remember) one task at a
time, first alone and then while the attacker's T tasks each run 8 sandboxed
`time.sleep(S)` programs in parallel (8 is a task's default `max_parallel_steps`; T=6 is
48 sandbox runs asked for at once). Scripted model, real dev server, real sandbox. Prints a
table and writes bench/results/fairness.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from temporalio.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import finish  # noqa: E402
from keel._queues import Queues  # noqa: E402
from keel.client import start_task  # noqa: E402
from keel.contracts import Budget, TaskRequest, TaskStatus  # noqa: E402
from keel.settings import Settings  # noqa: E402
from keel.testing import ScriptedModel, scripted_components  # noqa: E402
from temporal.devserver import start_test_environment  # noqa: E402
from workers.process import build_all, workers_running  # noqa: E402

STEPS_PER_FLOOD_TASK = 8


async def victim_latencies(client: Client, model: ScriptedModel, label: str, n: int) -> list[float]:
    latencies = []
    for i in range(n):
        task = f"What is 12+{i}? ({label} {i})"
        step = {"id": "s1", "tool": "calculator", "args": {"expression": f"12+{i}"}}
        model.script(task, "plan", json.dumps({"steps": [step], "answer": "{{s1.value}}"}))
        began = time.perf_counter()
        handle = await start_task(client, TaskRequest(task=task, user_id="victim"))
        result = await handle.result()
        latencies.append((time.perf_counter() - began) * 1000)
        assert result.status == TaskStatus.COMPLETED and result.answer == str(12 + i), result
    return latencies


async def bench(victims: int, flood_tasks: int, sleep_s: float) -> dict[str, object]:
    env = await start_test_environment()
    client = env.client
    with tempfile.TemporaryDirectory() as home:
        components, model = scripted_components(Settings(home=Path(home)), Queues())
        try:
            async with workers_running(build_all(client, components)):
                await victim_latencies(client, model, "warm-up", 2)
                alone = await victim_latencies(client, model, "alone", victims)

                flood = []
                for t in range(flood_tasks):
                    # each program its own text: identical calls would be answered once
                    steps = [
                        {
                            "id": f"s{i}",
                            "tool": "run_python",
                            "args": {
                                "code": f"import time; time.sleep({sleep_s}); print({t}, {i})"
                            },
                        }
                        for i in range(1, STEPS_PER_FLOOD_TASK + 1)
                    ]
                    task = f"Flood the sandbox ({t})"
                    model.script(task, "plan", json.dumps({"steps": steps, "answer": "done"}))
                    request = TaskRequest(
                        task=task, user_id="attacker", budget=Budget(usd=10), max_plan_steps=8
                    )
                    flood.append(await start_task(client, request))
                await asyncio.sleep(1.0)  # the flood's sandbox runs have started
                flooded = await victim_latencies(client, model, "flooded", victims)
                results = [await h.result() for h in flood]
        finally:
            components.close_memory()
            await env.shutdown()
    ran = [s for r in results for s in r.steps]
    alone_p50, flooded_p50 = statistics.median(alone), statistics.median(flooded)
    return {
        "config": {
            "victims": victims,
            "flood_tasks": flood_tasks,
            "flood_sandbox_runs": flood_tasks * STEPS_PER_FLOOD_TASK,
            "sleep_s": sleep_s,
        },
        "summary": {
            "victim_alone_p50_ms": round(alone_p50, 1),
            "victim_flooded_p50_ms": round(flooded_p50, 1),
            "victim_flooded_max_ms": round(max(flooded), 1),
            "flooded_vs_alone_p50": round(flooded_p50 / alone_p50, 2),
            "flood_steps_succeeded": sum(s.status.value == "succeeded" for s in ran),
            "flood_steps_total": flood_tasks * STEPS_PER_FLOOD_TASK,
            "flood_tasks_completed": sum(r.status == TaskStatus.COMPLETED for r in results),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer victim tasks")
    parser.add_argument("--victims", type=int, default=None)
    parser.add_argument("--flood-tasks", type=int, default=6)
    parser.add_argument("--sleep", type=float, default=9.0)
    args = parser.parse_args()
    victims = args.victims or (4 if args.quick else 10)
    print(
        f"victim p50 alone and under a flood of {args.flood_tasks * STEPS_PER_FLOOD_TASK} "
        f"sandboxed time.sleep({args.sleep}) runs"
    )
    finish("fairness", asyncio.run(bench(victims, args.flood_tasks, args.sleep)))


if __name__ == "__main__":
    main()
