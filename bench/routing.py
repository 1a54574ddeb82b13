"""What routing saves: the planner on the small local model and the answer on a large model,
against every call on the large model. Same tasks, same price table, same tokens.

No provider keys reach this machine, so the "large model" is the local model billed at a
large model's token price (`--large`, default gpt-4o from activities/models/prices.py). Both
configurations therefore make the same calls with the same prompts and outputs; only who
bills them differs, which is exactly what the routing decision changes. The small model is
billed as the router books it: its measured seconds of CPU time at the CPU rate
(activities/models/prices.py). The `gpu_estimate` figures bill the same calls at the GPU
rate and the throughput its size class assumes on a GPU.

    .venv/bin/python bench/routing.py [--quick] [--tasks N] [--large MODEL] [--model small|medium]

Prints a table and writes bench/results/routing.json.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.models.base import Completion, Message, ModelClient, ModelRequest  # noqa: E402
from activities.models.llamacpp import default_model_path, local_model_path  # noqa: E402
from activities.models.prices import Price, local_price, price_of  # noqa: E402
from activities.models.router import ModelRouter, build_model  # noqa: E402
from activities.tools.builtin import default_registry  # noqa: E402
from bench.report import print_summary, save  # noqa: E402
from bench.suite import TASKS  # noqa: E402
from keel._queues import Queues  # noqa: E402
from keel.client import start_task  # noqa: E402
from keel.contracts import Budget, LedgerEntry, TaskRequest, TaskResult  # noqa: E402
from keel.settings import Settings  # noqa: E402
from temporal.devserver import start_test_environment  # noqa: E402
from workers.components import Components  # noqa: E402
from workers.process import build_all, workers_running  # noqa: E402

TOOLS = ["calculator", "read_file", "list_files", "search_docs"]


class BilledAs(ModelClient):
    """A model whose calls are billed under another model's name in the price table."""

    def __init__(self, model: ModelClient, name: str) -> None:
        self._model, self.name = model, name
        self.needs_demonstrations = model.needs_demonstrations

    def count_tokens(self, messages: list[Message]) -> int:
        return self._model.count_tokens(messages)

    async def complete(self, request: ModelRequest) -> Completion:
        return await self._model.complete(request)


async def run_config(
    client: Any, router: ModelRouter, settings: Settings, prefix: str, tasks: int
) -> list[TaskResult]:
    queues = Queues(prefix)
    components = Components(
        settings=settings, queues=queues, _router=router, _registry=default_registry(settings)
    )
    results = []
    try:
        async with workers_running(build_all(client, components)):
            for i, suite_task in enumerate(TASKS[:tasks]):  # one at a time: one local model
                request = TaskRequest(
                    task=suite_task.task,
                    user_id=f"routing-{prefix}{i}",
                    budget=Budget(usd=1.0),
                    allowed_tools=TOOLS,
                )
                result = await (await start_task(client, request, queues=queues)).result()
                print(
                    f"  {prefix[:-1]:9} ${result.ledger.total_usd:.6f} {result.status.value:10} "
                    f"{suite_task.task[:60]}",
                    flush=True,
                )
                results.append(result)
    finally:
        components.close_memory()
    return results


def gpu_estimate(entry: LedgerEntry, gpu: Price, small: str) -> float:
    """The entry with the small model's calls billed as if a GPU worker served them."""
    if entry.kind != "model" or entry.name != small:
        return entry.usd
    return gpu.estimate(entry.input_tokens, entry.output_tokens)


def per_task(results: list[TaskResult], key: Any) -> float:
    return statistics.fmean(sum(key(e) for e in r.ledger.entries) for r in results)


async def bench(tasks: int, large: str, local_model: str) -> dict[str, Any]:
    price_of(large)  # fail early on a model the table does not price
    env = await start_test_environment()
    try:
        with tempfile.TemporaryDirectory() as home:
            settings = Settings(home=Path(home), planner_model="llamacpp", local_model=local_model)
            small = build_model("llamacpp", settings)
            big = BilledAs(small, large)
            path = local_model_path(settings) or default_model_path()
            gpu = local_price(path, gpu=True, settings=settings)
            print(f"routed: planner {small.name} (GPU time), answer {large}")
            routed = await run_config(
                env.client,
                ModelRouter({"planner": small, "reasoner": big}),
                settings,
                "routed-",
                tasks,
            )
            print(f"all large: planner and answer on {large}")
            all_large = await run_config(
                env.client,
                ModelRouter({"planner": big, "reasoner": big}),
                settings,
                "large-",
                tasks,
            )
    finally:
        await env.shutdown()

    def booked(e: LedgerEntry) -> float:
        return e.usd

    def planner_share(results: list[TaskResult]) -> float:
        return per_task(results, lambda e: e.usd if e.role == "planner" else 0.0)

    def success(results: list[TaskResult]) -> float:
        return round(
            statistics.fmean(t.succeeded(r.answer) for t, r in zip(TASKS, results, strict=False)),
            3,
        )

    routed_usd = per_task(routed, booked)
    large_usd = per_task(all_large, booked)
    routed_gpu = per_task(routed, lambda e: gpu_estimate(e, gpu, small.name))
    return {
        "machine": f"{platform.node()} ({platform.machine()}, CPU only)",
        "config": {"tasks": tasks, "small": small.name, "large": large},
        "summary": {
            "routed_usd_per_task": round(routed_usd, 7),
            "all_large_usd_per_task": round(large_usd, 7),
            "cost_ratio": round(large_usd / routed_usd, 3),
            "routed_success_rate": success(routed),
            "all_large_success_rate": success(all_large),
            "routed_planner_usd_per_task": round(planner_share(routed), 7),
            "all_large_planner_usd_per_task": round(planner_share(all_large), 7),
            "gpu_estimate_routed_usd_per_task": round(routed_gpu, 7),
            "gpu_estimate_cost_ratio": round(large_usd / routed_gpu, 3),
            "planner_tokens_per_task": round(
                per_task(
                    routed,
                    lambda e: e.input_tokens + e.output_tokens if e.role == "planner" else 0,
                ),
                1,
            ),
            "answer_tokens_per_task": round(
                per_task(
                    routed,
                    lambda e: e.input_tokens + e.output_tokens if e.role == "reasoner" else 0,
                ),
                1,
            ),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="6 tasks (< 3 min)")
    parser.add_argument("--tasks", type=int, default=None)
    parser.add_argument("--large", default="gpt-4o", help="price-table name of the large model")
    parser.add_argument("--model", default="small", help="KEEL_LOCAL_MODEL for the small model")
    args = parser.parse_args()
    tasks = args.tasks or (6 if args.quick else len(TASKS))
    report = asyncio.run(bench(tasks, args.large, args.model))
    print_summary(report["summary"])
    save("routing", report)


if __name__ == "__main__":
    main()
