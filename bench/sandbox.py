"""Sandbox cold start: `python3 -c pass` under full isolation against the same command bare.

    .venv/bin/python bench/sandbox.py [--quick] [--runs N]

Isolated = the bwrap backend as `run_python` uses it: per-run uid, rlimits, every namespace,
seccomp, tmpfs workdir, a per-run cgroup where the machine allows, output capture, wall
limit; also without the cgroup (rlimits only), as on machines that allow none. Bare =
`subprocess.run` of the same interpreter and arguments. Latency is wall time per run as the
caller sees it. Throughput is runs completed per second, sequentially and with 2 runs at a
time. Isolated and bare alternate run by run, so both see the same machine load. Prints a
table and writes bench/results/sandbox.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import print_summary, save  # noqa: E402
from sandbox.backend import Limits, Run  # noqa: E402
from sandbox.bwrap import BwrapBackend  # noqa: E402

PYTHON = "/usr/bin/python3"
ARGV = [PYTHON, "-c", "pass"]
TARGET_P50_MS = 50.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (about 10 s)")
    parser.add_argument("--runs", type=int, help="runs per mode (default 200, quick 40)")
    args = parser.parse_args()
    runs = args.runs or (40 if args.quick else 200)

    backend = BwrapBackend()
    rlimits_only = BwrapBackend(use_cgroups=False)  # what a machine without cgroups gets
    run = Run(ARGV, limits=Limits(wall_s=10))

    def isolated(sandbox: BwrapBackend = backend) -> float:
        started = time.perf_counter()
        result = sandbox.run(run)
        if not result.ok:
            raise SystemExit(f"isolated run failed: {result.describe()}: {result.stderr}")
        return (time.perf_counter() - started) * 1000

    def bare() -> float:
        started = time.perf_counter()
        subprocess.run(ARGV, check=True)
        return (time.perf_counter() - started) * 1000

    isolated(), bare()  # warm the page cache and the seccomp program
    isolated_ms, bare_ms = [], []
    for _ in range(runs):
        isolated_ms.append(isolated())
        bare_ms.append(bare())
    # a block of its own: interleaved with cgroup runs, both modes measured slower
    no_cgroup_ms = [isolated(rlimits_only) for _ in range(runs)]

    started = time.perf_counter()
    for _ in range(runs):
        isolated()
    sequential_per_s = runs / (time.perf_counter() - started)
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: isolated(), range(runs)))
    parallel_per_s = runs / (time.perf_counter() - started)

    isolated_p50 = statistics.median(isolated_ms)
    bare_p50 = statistics.median(bare_ms)
    summary = {
        "runs": runs,
        "cgroup": backend.cgroups is not None,
        "isolated_p50_ms": round(isolated_p50, 2),
        "isolated_p95_ms": round(percentile(isolated_ms, 0.95), 2),
        "isolated_no_cgroup_p50_ms": round(statistics.median(no_cgroup_ms), 2),
        "bare_p50_ms": round(bare_p50, 2),
        "bare_p95_ms": round(percentile(bare_ms, 0.95), 2),
        "isolation_overhead_p50_ms": round(isolated_p50 - bare_p50, 2),
        "isolated_vs_bare_p50": round(isolated_p50 / bare_p50, 2),
        "runs_per_s": round(sequential_per_s, 1),
        "runs_per_s_2_parallel": round(parallel_per_s, 1),
        "target_isolated_p50_ms": TARGET_P50_MS,
        "target_met": isolated_p50 <= TARGET_P50_MS,
    }
    print_summary(summary)
    save(
        "sandbox",
        {
            "summary": summary,
            "isolated_ms": isolated_ms,
            "isolated_no_cgroup_ms": no_cgroup_ms,
            "bare_ms": bare_ms,
        },
    )


if __name__ == "__main__":
    main()
