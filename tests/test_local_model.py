"""The real local model path: SmolLM2 through llama.cpp with grammar-constrained plans."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import jsonschema
import pytest
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.memory.extraction import ExtractionActivities
from activities.models.base import Message, ModelRequest
from activities.models.llamacpp import LlamaCppModel
from activities.models.router import ModelRouter
from activities.planning import PlanningActivities
from activities.react import ReactActivities
from activities.tools.builtin import default_registry
from keel._queues import Queues
from keel.client import start_task
from keel.contracts import ExtractionRequest, PlanRequest, ReactRequest, TaskRequest, TaskStatus
from keel.durable import MODEL_UNAVAILABLE
from keel.settings import Settings
from keel.testing import Stack, eventually, scripted_plan
from sandbox.backend import Limits, Run
from sandbox.bwrap import BwrapBackend
from tests.conftest import unique
from workers.components import Components
from workers.process import build_all, workers_running


def test_the_installed_llama_cpp_runs_on_any_avx2_cpu() -> None:
    """The build `make install` puts in place targets x86-64 with AVX2 (x86-64-v3), not the
    CPU that compiled it: no AVX-512 or AMX code paths compiled in, and no instruction on an
    AVX-512 register anywhere in its CPU backend."""
    info = subprocess.run(
        [sys.executable, "-c", "import llama_cpp; print(llama_cpp.llama_print_system_info())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "AVX2 = 1" in info and "FMA = 1" in info
    assert "AVX512" not in info and "AMX" not in info, info
    import llama_cpp

    [cpu_backend] = Path(llama_cpp.__file__).parent.glob("lib/libggml-cpu.so")
    objdump = shutil.which("objdump")
    assert objdump, "objdump (Debian binutils, installed with gcc) is needed to read the build"
    code = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", str(cpu_backend)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "ymm" in code  # AVX2 kernels are there
    assert "zmm" not in code  # AVX-512 ones are not


@pytest.fixture(scope="module")
def local_model() -> LlamaCppModel:
    return LlamaCppModel()


async def test_llamacpp_planner_returns_a_schema_valid_plan(
    local_model: LlamaCppModel, settings: Settings
) -> None:
    specs = default_registry(settings).specs()
    planning = PlanningActivities(
        ModelRouter({"planner": local_model, "reasoner": local_model}), settings.docs_dir
    )
    request = PlanRequest(
        task="Compute 17*7*24 and say what handbook.md says about deployments.",
        tools=specs,
        remaining_usd=0.05,
        max_usd=0.05,
    )
    response = await ActivityEnvironment().run(planning.plan, request)

    assert response.error is None, response.error
    assert response.plan is not None and response.plan.steps
    assert response.usage.model == "smollm2-135m-instruct" and response.usage.output_tokens > 0
    by_name = {s.name: s for s in specs}
    for step in response.plan.steps:
        jsonschema.validate(step.args, by_name[step.tool].input_schema)
        assert step.expected_cost_usd == by_name[step.tool].cost_per_call_usd


async def test_llamacpp_extracts_facts_as_schema_valid_triples(local_model: LlamaCppModel) -> None:
    extraction = ExtractionActivities(ModelRouter({"planner": local_model}))
    request = ExtractionRequest(
        task="My preferred language is Python. Write a hello world program.",
        answer="print('hello world')",
        max_usd=0.05,
    )
    result = await ActivityEnvironment().run(extraction.extract_facts, request)

    assert result.error is None, result.error  # grammar-constrained: always parses
    assert result.usage is not None and result.usage.role == "memory"
    assert result.usage.model == "smollm2-135m-instruct" and result.usage.output_tokens > 0
    mentioned = " ".join(f"{t.subject} {t.relation} {t.object}" for t in result.triples)
    print("SmolLM2 extracted:", result.triples)
    assert "python" in mentioned.lower()


async def test_llamacpp_react_step_returns_an_action_an_answer_or_a_clear_error(
    local_model: LlamaCppModel, settings: Settings
) -> None:
    """Holds on any llama.cpp build: what a build's greedy decoding says differs (one build
    answers, another repeats itself up to the token limit), what Keel makes of it does not."""
    specs = default_registry(settings).specs()
    react = ReactActivities(ModelRouter({"planner": local_model, "reasoner": local_model}))
    request = ReactRequest(
        task="Compute 6*7.", tools=specs, remaining_usd=0.05, max_usd=0.05, steps_left=5
    )
    decision = await ActivityEnvironment().run(react.react_step, request)

    assert decision.usage.role == "planner" and decision.usage.output_tokens > 0
    if decision.error is not None:  # cut off mid-JSON: one line the workflow reports
        assert decision.error.startswith("invalid action JSON")
    elif decision.tool is not None:  # an action: a known tool with arguments it accepts
        by_name = {s.name: s for s in specs}
        jsonschema.validate(decision.args, by_name[decision.tool].input_schema)
    else:
        assert decision.answer is not None


async def test_whole_task_on_the_local_model(stack: Stack, local_model: LlamaCppModel) -> None:
    queues = Queues("local-")
    components = Components(
        settings=stack.settings.model_copy(update={"planner_model": "llamacpp"}),
        queues=queues,
        _router=ModelRouter({"planner": local_model, "reasoner": local_model}),
        _vectors=stack.components.vectors,
    )
    async with workers_running(build_all(stack.client, components)):
        # a user of its own: other real-model tests ask the same task, whose cached answer
        # would stand in for this one
        handle = await start_task(
            stack.client,
            TaskRequest(task="Compute 6*7 and read handbook.md", user_id=unique("user")),
            queues=queues,
        )
        result = await asyncio.wait_for(handle.result(), timeout=240)

    # A small model's plans may all be refused (made-up numbers, unknown tools) or fail (an
    # expression the calculator refuses): then the task fails saying which, never silently.
    assert result.status in (TaskStatus.COMPLETED, TaskStatus.FAILED), result.error
    if result.status == TaskStatus.COMPLETED:
        assert result.answer.strip()
    else:
        why = r"(plan v\d+ (was not usable|is invalid)|step \w+ \(\w+\) failed): "
        assert re.match(why, result.error or ""), result.error
    assert result.llm_calls >= 1
    assert all(
        e.name == "smollm2-135m-instruct" for e in result.ledger.entries if e.kind == "model"
    )


async def test_a_native_crash_of_the_model_fails_one_call_and_the_next_gets_a_new_process(
    local_model: LlamaCppModel,
) -> None:
    await local_model.server.ensure_running()
    crashed = local_model.server.pid
    assert crashed is not None
    long_answer = ModelRequest([Message("user", "Tell a long story about a ship.")], 400)
    call = asyncio.ensure_future(local_model.complete(long_answer))
    os.kill(crashed, signal.SIGSEGV)  # what a CPU it was not built for does to llama.cpp
    with pytest.raises(ApplicationError) as failed:
        await call
    assert failed.value.type == MODEL_UNAVAILABLE and not failed.value.non_retryable
    assert failed.value.message == (
        "the local model process (smollm2-135m-instruct) was killed by SIGSEGV during this "
        "call; a new one is started for the retry"
    )
    answer = await local_model.complete(ModelRequest([Message("user", "Say hi.")], 8))
    assert answer.output_tokens > 0 and local_model.server.pid not in (None, crashed)


async def test_a_model_process_killed_mid_plan_costs_one_retry(
    stack: Stack, local_model: LlamaCppModel
) -> None:
    """A native crash of the model (here SIGKILL of its process while it plans) fails that
    one attempt with one line; a new model process serves the retry and the task completes."""
    await local_model.server.ensure_running()
    queues = Queues(f"model-kill-{uuid.uuid4().hex[:6]}-")
    components = Components(
        settings=stack.settings,
        queues=queues,
        # a plan the small model gets wrong goes to the scripted model, so the task's end
        # shows the kill, not the small model's plan quality
        _router=ModelRouter(
            {"planner": local_model, "escalation": stack.model, "reasoner": stack.model}
        ),
        _vectors=stack.components.vectors,
    )
    async with workers_running(build_all(stack.client, components)):
        handle = await start_task(
            stack.client, TaskRequest(task=unique("Compute 6*7")), queues=queues
        )

        async def plan_activity() -> PendingActivityInfo | None:
            described = await handle.describe()
            return next(
                (
                    a
                    for a in described.raw_description.pending_activities
                    if a.activity_type.name == "plan"
                    and a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                ),
                None,
            )

        await eventually(plan_activity, "the plan activity to start", timeout_s=60)
        killed, starts = local_model.server.pid, local_model.server.starts
        assert killed is not None
        os.kill(killed, signal.SIGKILL)

        async def retried() -> PendingActivityInfo | None:
            pending = await plan_activity()
            return pending if pending is not None and pending.attempt >= 2 else None

        retry = await eventually(retried, "the plan's second attempt", timeout_s=60)
        result = await asyncio.wait_for(handle.result(), timeout=240)

    assert retry.last_failure.message == (
        "the local model process (smollm2-135m-instruct) was killed by SIGKILL during this "
        "call; a new one is started for the retry"
    )
    assert result.status == TaskStatus.COMPLETED, result.error
    assert local_model.server.starts == starts + 1 and local_model.server.pid != killed


ADD_PROPERTIES = """
import random
from solution import add

random.seed(7)
assert add(2, 3) == 5
for _ in range(200):
    a, b = random.randint(-10**6, 10**6), random.randint(-10**6, 10**6)
    assert add(a, b) == a + b, (a, b, add(a, b))
    assert add(a, b) == add(b, a)
    assert add(a, 0) == a
print("properties hold")
"""


def _code_of(answer: str) -> str:
    """The program in a model's answer: its first fenced block (closed or not: a model may
    stop right after the code), or the whole answer."""
    match = re.search(r"```(?:python)?\n(.*?)(?:```|\Z)", answer, re.S)
    return match.group(1) if match else answer


async def test_agent_writes_a_function_that_passes_properties_in_the_sandbox(
    stack: Stack, local_model: LlamaCppModel
) -> None:
    """The article's test: the agent writes `add`; the test runs it in the sandbox and checks
    properties of its behaviour, not its text."""
    # The reasoner reads the same question every run (greedy decoding: the same answer on
    # every build); only the task around it is unique.
    question = "Write a Python function add(a, b) that returns the sum of a and b."
    task = unique(question)
    queues = Queues("writes-code-")
    stack.model.script(
        task,
        "plan",
        scripted_plan({"id": "s1", "tool": "ask_reasoner", "args": {"question": question}}),
    )
    components = Components(
        settings=stack.settings,
        queues=queues,
        _router=ModelRouter({"planner": stack.model, "reasoner": local_model}),
        _vectors=stack.components.vectors,
    )
    async with workers_running(build_all(stack.client, components)):
        handle = await start_task(stack.client, TaskRequest(task=task), queues=queues)
        result = await asyncio.wait_for(handle.result(), timeout=240)

    assert result.status == TaskStatus.COMPLETED, result.error
    written = next(s for s in result.steps if s.tool == "ask_reasoner").output["answer"]
    run = BwrapBackend().run(
        Run(
            [str(stack.settings.sandbox_python), "check.py"],
            files={"solution.py": _code_of(written).encode(), "check.py": ADD_PROPERTIES.encode()},
            limits=Limits(wall_s=10),
        )
    )
    assert run.ok, f"the written function failed its properties:\n{written}\n{run.stderr}"
    assert run.stdout == "properties hold\n"
