"""Plan-ahead against the ReAct baseline: model calls, tokens and success per task.

Runs the task suite (bench/suite.py: tasks with known answers over offline tools) as real
AgentTask workflows on a real Temporal dev server, once per strategy, first with the
scripted model (deterministic orchestration; its plans write their answer where the tools
allow, as a good planner's do) and then with the real embedded local model
(KEEL_LOCAL_MODEL through llama.cpp, planner and answer both local).

    .venv/bin/python bench/planning.py [--quick] [--local] [--local-tasks N] [--no-local]
        [--model small|medium|large|PATH] [--local-strategies plan,react]

Prints a table and writes bench/results/planning.json.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.models.base import ModelClient  # noqa: E402
from activities.models.router import ModelRouter  # noqa: E402
from activities.tools.builtin import default_registry  # noqa: E402
from bench.report import save  # noqa: E402
from bench.suite import TASKS, SuiteTask  # noqa: E402
from keel._queues import Queues  # noqa: E402
from keel.client import start_task  # noqa: E402
from keel.contracts import Budget, Strategy, TaskRequest, TaskResult, TaskStatus  # noqa: E402
from keel.settings import Settings  # noqa: E402
from temporal.devserver import start_test_environment  # noqa: E402
from workers.components import Components  # noqa: E402
from workers.process import build_all, workers_running  # noqa: E402

TOOLS = ["calculator", "read_file", "list_files", "search_docs"]  # offline, known answers
BUDGET = Budget(usd=1.0)
STRATEGIES: tuple[Strategy, ...] = ("plan", "react")


async def run_suite(
    client: Any,
    model: ModelClient,
    settings: Settings,
    tasks: list[SuiteTask],
    prefix: str,
    concurrency: int,
    strategies: tuple[Strategy, ...] = STRATEGIES,
) -> dict[str, list[dict[str, Any]]]:
    """Every task under both strategies; one row per task run."""
    queues = Queues(prefix)
    components = Components(
        settings=settings,
        queues=queues,
        _router=ModelRouter({"planner": model, "reasoner": model}),
        _registry=default_registry(settings),
    )
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in strategies}
    gate = asyncio.Semaphore(concurrency)

    async def one(strategy: Strategy, index: int, suite_task: SuiteTask) -> None:
        async with gate:
            began = time.perf_counter()
            request = TaskRequest(
                task=suite_task.task,
                user_id=f"bench-{prefix}{strategy}-{index}",  # no memory shared between runs
                budget=BUDGET,
                allowed_tools=TOOLS,
                strategy=strategy,
            )
            handle = await start_task(client, request, queues=queues)
            result: TaskResult = await handle.result()
            ok = result.status == TaskStatus.COMPLETED and suite_task.succeeded(result.answer)
            rows[strategy].append(
                {
                    "task": suite_task.task,
                    "kind": suite_task.kind,
                    "status": result.status.value,
                    "success": ok,
                    "llm_calls": result.llm_calls,
                    "tokens": result.ledger.total_tokens,
                    "usd": result.ledger.total_usd,
                    "tool_steps": sum(s.status == "succeeded" for s in result.steps),
                    "seconds": round(time.perf_counter() - began, 2),
                    "answer": result.answer[:300],
                }
            )
            print(
                f"  {strategy:5} {'ok  ' if ok else 'FAIL'} calls={result.llm_calls} "
                f"tokens={result.ledger.total_tokens:5} {suite_task.task[:60]}",
                flush=True,
            )

    try:
        async with workers_running(build_all(client, components)):
            for strategy in strategies:
                await asyncio.gather(*(one(strategy, i, t) for i, t in enumerate(tasks)))
    finally:
        components.close_memory()
    return rows


def summarize(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Means per strategy run, the plan/ReAct ratios when both ran, and plan success by kind."""

    def mean(strategy: str, key: str) -> float:
        return round(statistics.fmean(float(r[key]) for r in rows[strategy]), 3)

    ran = [s for s in STRATEGIES if rows.get(s)]
    summary: dict[str, Any] = {}
    for strategy in ran:
        summary[f"{strategy}_llm_calls_per_task"] = mean(strategy, "llm_calls")
        summary[f"{strategy}_tokens_per_task"] = mean(strategy, "tokens")
        summary[f"{strategy}_success_rate"] = mean(strategy, "success")
        summary[f"{strategy}_median_s"] = statistics.median(r["seconds"] for r in rows[strategy])
    summary["tasks"] = len(rows[ran[0]])
    if len(ran) == len(STRATEGIES):
        for key in ("llm_calls", "tokens"):
            ratio = summary[f"plan_{key}_per_task"] / summary[f"react_{key}_per_task"]
            summary[f"{key.removeprefix('llm_')}_ratio"] = round(ratio, 3)
    for kind in dict.fromkeys(r["kind"] for r in rows.get("plan", [])):
        ok = [r["success"] for r in rows["plan"] if r["kind"] == kind]
        summary[f"plan_success[{kind}]"] = f"{sum(ok)}/{len(ok)}"
    return summary


async def bench(
    local_tasks: int,
    with_scripted: bool,
    with_local: bool,
    local_model: str,
    local_strategies: tuple[Strategy, ...] = STRATEGIES,
) -> dict[str, Any]:
    from activities.models.router import build_model
    from activities.models.scripted import ScriptedModel

    env = await start_test_environment()
    report: dict[str, Any] = {"machine": f"{platform.node()} ({platform.machine()}, CPU only)"}
    report["summary"] = {}
    try:
        with tempfile.TemporaryDirectory() as home:
            settings = Settings(
                home=Path(home), planner_model="scripted", reasoner_model="scripted"
            )
            if with_scripted:
                print(f"scripted model: {len(TASKS)} tasks x {len(STRATEGIES)} strategies")
                model = ScriptedModel(plans_answers=True)
                scripted = await run_suite(env.client, model, settings, TASKS, "s-", 8)
                report["summary"] = summarize(scripted)
                report["scripted_runs"] = scripted
            if with_local:
                local_settings = settings.model_copy(
                    update={
                        "planner_model": "llamacpp",
                        "reasoner_model": "llamacpp",
                        "local_model": local_model,
                    }
                )
                local = build_model("llamacpp", local_settings)
                subset = TASKS[:local_tasks]
                print(
                    f"local model ({local.name}): {len(subset)} tasks x "
                    f"{', '.join(local_strategies)}"
                )
                runs = await run_suite(
                    env.client, local, local_settings, subset, "l-", 2, local_strategies
                )
                report["summary"]["local_model"] = summarize(runs)
                report["local_runs"] = runs
    finally:
        await env.shutdown()
    return report


def print_table(summary: dict[str, Any]) -> None:
    columns = [("scripted", summary)] if "tasks" in summary else []
    if "local_model" in summary:
        columns.append(("local model", summary["local_model"]))
    keys = list(dict.fromkeys(k for _, col in columns for k in col if k != "local_model"))
    print(f"\n{'metric':34}" + "".join(f"{name:>14}" for name, _ in columns))
    for key in keys:
        print(f"{key:34}" + "".join(f"{col.get(key, ''):>14}" for _, col in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer local-model tasks (< 3 min)")
    parser.add_argument("--local-tasks", type=int, default=None, help="tasks for the local model")
    parser.add_argument("--no-local", action="store_true", help="skip the local-model run")
    parser.add_argument("--local", action="store_true", help="only the local model, every task")
    parser.add_argument("--model", default="small", help="KEEL_LOCAL_MODEL for the local run")
    parser.add_argument(
        "--local-strategies",
        default=",".join(STRATEGIES),
        help="the strategies the local model runs (plan,react; a large model's ReAct run "
        "takes as long again)",
    )
    args = parser.parse_args()
    local_tasks = args.local_tasks or (4 if args.quick else len(TASKS))
    chosen = tuple(s for s in STRATEGIES if s in args.local_strategies.split(","))
    if not chosen:
        parser.error(f"--local-strategies: choose from {', '.join(STRATEGIES)}")
    report = asyncio.run(bench(local_tasks, not args.local, not args.no_local, args.model, chosen))
    print_table(report["summary"])
    save("planning", report)


if __name__ == "__main__":
    main()
