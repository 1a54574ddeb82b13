"""Tokens/s of the local model (SmolLM2-135M GGUF) on one or more llama-cpp-python builds:
the portable one Keel installs, and any other (a -march=native build, say) in another
environment. Each build runs in its own process, so one that crashes (SIGSEGV, SIGILL) is
reported as such instead of ending the benchmark.

    .venv/bin/python bench/llama_build.py [--quick] [--build LABEL=/path/to/python ...]

Per build: its compiled instruction sets (llama_print_system_info), prompt tokens/s (a
~250-token prompt evaluated at once) and generation tokens/s (greedy, one token at a time),
medians over the repeats, on `--threads` threads. Prints a table and writes
bench/results/llama_build.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.models.llamacpp import default_model_path  # noqa: E402
from bench.report import save  # noqa: E402

# Run in the build's own interpreter: load the model, evaluate a prompt, generate N tokens.
MEASURE = r"""
import json, sys, time
import llama_cpp
from llama_cpp import Llama

path, threads, generate, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
info = llama_cpp.llama_print_system_info().decode()
llm = Llama(model_path=path, n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False)
prompt = llm.tokenize(("Plan the steps of this task and name a tool for each. " * 25).encode())
prompt_tps, gen_tps = [], []
for _ in range(repeats):
    llm.reset()
    started = time.perf_counter()
    llm.eval(prompt)
    prompt_tps.append(len(prompt) / (time.perf_counter() - started))
    started = time.perf_counter()
    for i, _token in enumerate(llm.generate([], top_k=1, reset=False)):
        if i + 1 == generate:
            break
    gen_tps.append(generate / (time.perf_counter() - started))
print(json.dumps({"system_info": info, "prompt_tokens": len(prompt),
                  "prompt_tps": prompt_tps, "generation_tps": gen_tps}))
"""


def measure(python: str, threads: int, generate: int, repeats: int) -> dict[str, Any]:
    model = str(default_model_path())
    done = subprocess.run(
        [python, "-c", MEASURE, model, str(threads), str(generate), str(repeats)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        how = (
            f"crashed ({signal.Signals(-done.returncode).name})"
            if done.returncode < 0
            else f"exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
        )
        return {"ok": False, "result": how}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    flags = [f.split(" = ")[0].strip() for f in out["system_info"].split("|") if "= 1" in f]
    return {
        "ok": True,
        "result": "ran",
        "instruction_sets": [f.removeprefix("CPU : ") for f in flags],
        "prompt_tokens": out["prompt_tokens"],
        "prompt_tokens_per_s": round(statistics.median(out["prompt_tps"]), 1),
        "generation_tokens_per_s": round(statistics.median(out["generation_tps"]), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and repeats")
    parser.add_argument(
        "--build",
        action="append",
        default=[],
        metavar="LABEL=PYTHON",
        help="another build: the interpreter of an environment it is installed in",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    generate, repeats = (32, 2) if args.quick else (128, 5)
    builds = {"portable (installed)": sys.executable}
    for spec in args.build:
        label, sep, python = spec.rpartition("=")
        if not sep:
            parser.error(f"--build {spec!r}: write LABEL=/path/to/python")
        builds[label] = python

    rows = {
        label: measure(python, args.threads, generate, repeats) for label, python in builds.items()
    }
    print(f"\n{'build':24} {'result':18} {'prompt tok/s':>13} {'gen tok/s':>10}  instruction sets")
    for label, row in rows.items():
        prompt = f"{row['prompt_tokens_per_s']:.1f}" if row["ok"] else "-"
        gen = f"{row['generation_tokens_per_s']:.1f}" if row["ok"] else "-"
        sets = " ".join(row.get("instruction_sets", []))
        print(f"{label:24} {row['result']:18} {prompt:>13} {gen:>10}  {sets}")
    save(
        "llama_build",
        {
            "threads": args.threads,
            "generated_tokens": generate,
            "repeats": repeats,
            "summary": rows,
        },
    )


if __name__ == "__main__":
    main()
