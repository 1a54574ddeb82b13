"""The planner model through Triton Inference Server against the `llamacpp` backend
(llama.cpp's own server in a child process): the same GGUF, the same real planning prompts
and plan grammar, one request at a time and 8 at once.

    .venv/bin/python bench/triton.py [--quick] [--single N] [--concurrent M] [--instances K]

Latency is per request, as the caller sees it (HTTP and queueing included for both).
Tokens/s is output tokens over wall time. Prints a table and writes
bench/results/triton.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.models.base import ModelClient, ModelRequest  # noqa: E402
from activities.models.llamacpp import LlamaCppModel  # noqa: E402
from activities.models.triton import TritonModel  # noqa: E402
from activities.planning import PLAN_MAX_TOKENS, plan_output_schema, planning_prompt  # noqa: E402
from activities.tools.builtin import default_registry  # noqa: E402
from bench.report import save  # noqa: E402
from keel.contracts import PlanRequest  # noqa: E402
from keel.settings import Settings  # noqa: E402
from workers.triton.server import MODEL_REPOSITORY, TritonServer  # noqa: E402

CONCURRENCY = 8
TASKS = [
    "Compute 17*7*24 and say what handbook.md says about deployments.",
    "What does report.md say about Q2 revenue, and what is 1250*1.08?",
    "How many seconds are in a week (7*24*3600)?",
    "Summarise handbook.md.",
    "Which files are there, and what does report.md say about hiring?",
    "What is (3+4)*12, and what does handbook.md say about on-call?",
    "Search the docs for rollback and read what they say.",
    "Compare what report.md and handbook.md say about costs.",
]


def planning_requests(count: int, home: Path) -> list[ModelRequest]:
    """The plan activity's real model requests: its prompt and its grammar over the builtin
    tools and the sample documents."""
    settings = Settings(home=home)
    tools = default_registry(settings).specs()
    docs = settings.docs_dir
    files = sorted(str(p.relative_to(docs)) for p in docs.rglob("*") if p.is_file())
    schema = plan_output_schema(tools, files)
    requests = []
    for i in range(count):
        plan = PlanRequest(
            task=TASKS[i % len(TASKS)], tools=tools, remaining_usd=0.05, max_usd=0.05
        )
        requests.append(
            ModelRequest(
                planning_prompt(plan, files), max_tokens=PLAN_MAX_TOKENS, json_schema=schema
            )
        )
    return requests


def repository_with(instances: int | None, into: Path) -> Path:
    """The model repository, with another instance count when asked."""
    if instances is None:
        return MODEL_REPOSITORY
    copy = into / "model_repository"
    shutil.copytree(MODEL_REPOSITORY, copy, ignore=shutil.ignore_patterns("__pycache__"))
    config = copy / "planner" / "config.pbtxt"
    config.write_text(re.sub(r"count: \d+", f"count: {instances}", config.read_text()))
    return copy


def instance_count(repository: Path) -> int:
    found = re.search(r"count: (\d+)", (repository / "planner" / "config.pbtxt").read_text())
    return int(found.group(1)) if found else 1


async def _timed(model: ModelClient, request: ModelRequest) -> tuple[float, int]:
    began = time.perf_counter()
    completion = await model.complete(request)
    return (time.perf_counter() - began) * 1000, completion.output_tokens


def _stats(latencies: list[float], tokens: int, wall_s: float) -> dict[str, float]:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "p50_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(p95, 1),
        "tokens_per_s": round(tokens / wall_s, 1),
        "requests": len(ordered),
        "output_tokens": tokens,
    }


async def measure(
    model: ModelClient, single_requests: list[ModelRequest], concurrent_requests: list[ModelRequest]
) -> dict[str, Any]:
    await model.complete(single_requests[0])  # warm up: grammar built, prompt prefix cached
    # One at a time: what a single plan costs.
    began, single = time.perf_counter(), []
    for request in single_requests:
        single.append(await _timed(model, request))
    single_wall = time.perf_counter() - began
    # 8 in flight at once, as a busy planner worker sees them.
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(request: ModelRequest) -> tuple[float, int]:
        async with gate:
            return await _timed(model, request)

    began = time.perf_counter()
    concurrent = await asyncio.gather(*(one(r) for r in concurrent_requests))
    concurrent_wall = time.perf_counter() - began
    return {
        "single": _stats([ms for ms, _ in single], sum(t for _, t in single), single_wall),
        "concurrent8": _stats(
            [ms for ms, _ in concurrent], sum(t for _, t in concurrent), concurrent_wall
        ),
    }


def device() -> str:
    from llama_cpp import llama_supports_gpu_offload

    cpu = "CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = names[0].strip() if names else cpu
    cores = len(os.sched_getaffinity(0))
    where = "GPU offload" if llama_supports_gpu_offload() else "CPU only"
    return f"{cpu}, {cores} cores ({where})"


async def bench(single_n: int, concurrent_n: int, instances: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch)
        requests = planning_requests(max(single_n, concurrent_n), home)
        single, concurrent = requests[:single_n], requests[:concurrent_n]
        repository = repository_with(instances, home)
        triton_instances = instance_count(repository)
        load = os.getloadavg()[0]
        with TritonServer(home, model_repository=repository) as server:
            triton = await measure(TritonModel(server.url), single, concurrent)
        llamacpp = await measure(LlamaCppModel(), single, concurrent)
    return {
        "config": {
            "single_requests": single_n,
            "concurrent_requests": concurrent_n,
            "concurrency": CONCURRENCY,
            "max_tokens": PLAN_MAX_TOKENS,
            "triton_instances": triton_instances,
            "llamacpp_threads": 2,
            "load_average_at_start": round(load, 2),
        },
        "device": device(),
        "triton": triton,
        "llamacpp": llamacpp,
        "summary": {
            "device": device(),
            "triton_p50_ms": triton["single"]["p50_ms"],
            "triton_p95_ms": triton["single"]["p95_ms"],
            "llamacpp_p50_ms": llamacpp["single"]["p50_ms"],
            "llamacpp_p95_ms": llamacpp["single"]["p95_ms"],
            "triton_tokens_per_s": triton["single"]["tokens_per_s"],
            "llamacpp_tokens_per_s": llamacpp["single"]["tokens_per_s"],
            "triton_concurrent8_p50_ms": triton["concurrent8"]["p50_ms"],
            "triton_concurrent8_p95_ms": triton["concurrent8"]["p95_ms"],
            "llamacpp_concurrent8_p50_ms": llamacpp["concurrent8"]["p50_ms"],
            "llamacpp_concurrent8_p95_ms": llamacpp["concurrent8"]["p95_ms"],
            "triton_concurrent8_tokens_per_s": triton["concurrent8"]["tokens_per_s"],
            "llamacpp_concurrent8_tokens_per_s": llamacpp["concurrent8"]["tokens_per_s"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small run (under 3 minutes)")
    parser.add_argument("--single", type=int, default=None, help="plans run one at a time")
    parser.add_argument("--concurrent", type=int, default=None, help="plans run 8 at a time")
    parser.add_argument(
        "--instances", type=int, default=None, help="Triton model instances (default: config)"
    )
    args = parser.parse_args()
    single_n = args.single or (4 if args.quick else 16)
    concurrent_n = args.concurrent or (CONCURRENCY if args.quick else 3 * CONCURRENCY)
    print(
        f"Planner model: Triton vs the llamacpp backend; {single_n} plans one at a time, "
        f"then {concurrent_n} with {CONCURRENCY} in flight",
        flush=True,
    )
    report = asyncio.run(bench(single_n, concurrent_n, args.instances))
    print(f"device: {report['device']}")
    print(f"{'backend':10} {'mode':12} {'p50 ms':>9} {'p95 ms':>9} {'tokens/s':>9}")
    for backend in ("triton", "llamacpp"):
        for mode in ("single", "concurrent8"):
            row = report[backend][mode]
            print(
                f"{backend:10} {mode:12} {row['p50_ms']:>9} {row['p95_ms']:>9} "
                f"{row['tokens_per_s']:>9}"
            )
    save("triton", report)


if __name__ == "__main__":
    main()
