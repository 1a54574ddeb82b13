"""Session fixtures: one real Temporal dev server and one set of Keel workers per test run.

Workers use the scripted model (deterministic orchestration tests) and the real tools and
Qdrant local mode; tests share them and keep apart by unique task texts and workflow ids.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.tools.registry import Tool, ToolContext, define_tool
from keel import testing
from keel._ports import LOCALHOST
from keel._queues import Queues
from keel.client import start_task
from keel.contracts import SideEffects, TaskRequest, TaskResult
from keel.settings import Settings
from keel.testing import ScriptedModel, Stack, scripted_stack
from temporal.devserver import start_test_environment_with_ui
from workers.components import Components
from workers.neo4j.server import Neo4jServer

REPO = Path(__file__).resolve().parent.parent
NEO4J_PASSWORD = "keel-test-password"


def _tests_tools() -> list[Tool]:
    return [*unreliable_tools(), *guarded_tools(), *bulky_tools()]


def scripted_components(settings: Settings, queues: Queues) -> tuple[Components, ScriptedModel]:
    """The scripted stack's components with the tests' own tools (flaky, transfer)."""
    return testing.scripted_components(settings, queues, _tests_tools())


def scripted_workers(
    client: Client, settings: Settings, queues: Queues | None = None
) -> contextlib.AbstractAsyncContextManager[tuple[Components, ScriptedModel]]:
    """Every worker on `client`, scripted, with the tests' own tools, for a block."""
    return testing.scripted_workers(client, settings, queues, _tests_tools())


class FlakyInput(BaseModel):
    key: str = Field(description="calls with the same key share one failure count")
    failures: int = Field(ge=0, description="fail this many times, then succeed")


class FlakyOutput(BaseModel):
    attempts: int
    text: str


FLAKY_ATTEMPTS: Counter[str] = Counter()


async def _flaky(args: FlakyInput, ctx: ToolContext) -> FlakyOutput:
    FLAKY_ATTEMPTS[args.key] += 1
    if FLAKY_ATTEMPTS[args.key] <= args.failures:
        raise RuntimeError(f"temporary outage (attempt {FLAKY_ATTEMPTS[args.key]})")
    return FlakyOutput(attempts=FLAKY_ATTEMPTS[args.key], text="ok")


def unreliable_tools() -> list[Tool]:
    """A tool that fails transiently a given number of times (an unreliable API)."""
    return [
        define_tool(
            "flaky",
            "An unreliable service: fails `failures` times, then answers.",
            _flaky,
            FlakyInput,
            FlakyOutput,
            max_attempts=3,
        )
    ]


class TransferInput(BaseModel):
    to: str
    usd: float = Field(gt=0)


class TransferOutput(BaseModel):
    text: str


TRANSFERS: list[TransferInput] = []


async def _transfer(args: TransferInput, ctx: ToolContext) -> TransferOutput:
    TRANSFERS.append(args)
    return TransferOutput(text=f"sent ${args.usd:g} to {args.to}")


def guarded_tools() -> list[Tool]:
    """A tool with real-world effects that a person must approve (`requires_approval`);
    TRANSFERS records the calls that actually ran."""
    return [
        define_tool(
            "transfer",
            "Send money to someone.",
            _transfer,
            TransferInput,
            TransferOutput,
            cost_per_call_usd=0.001,
            side_effects=SideEffects.WRITE,
            idempotent=False,
            requires_approval=True,
        )
    ]


class BulkyInput(BaseModel):
    label: str = Field(max_length=40)
    kib: int = Field(ge=1, le=250, description="KiB of text to return")


class BulkyOutput(BaseModel):
    text: str


async def _bulky(args: BulkyInput, ctx: ToolContext) -> BulkyOutput:
    line = f"{args.label}: the same line again, as a long document would be.\n"
    return BulkyOutput(text=(line * (args.kib * 1024 // len(line) + 1))[: args.kib * 1024])


def bulky_tools() -> list[Tool]:
    """A tool whose output is as large as a legal file read (up to 250 KiB)."""
    return [define_tool("bulky", "Return a long text.", _bulky, BulkyInput, BulkyOutput)]


# Plan steps the people-in-the-loop tests share: a guarded step, and a question whose answer
# the next step squares.
TRANSFER_STEP = {"id": "s1", "tool": "transfer", "args": {"to": "bob", "usd": 5}}
QUESTION_STEP = {"id": "s1", "tool": "ask_human", "args": {"question": "Which number?"}}
SQUARE_STEP = {
    "id": "s2",
    "tool": "calculator",
    "args": {"expression": "{{s1}}*{{s1}}"},
    "depends_on": ["s1"],
}


def counting_chains(steps: int, width: int) -> list[dict[str, Any]]:
    """A long plan of `width` chains counting up side by side: chain c starts at c, and step
    i adds one to step i - width ("+ 0*i": no two calls are alike, so none is answered by
    reusing another)."""
    return [
        {"id": f"s{i}", "tool": "calculator", "args": {"expression": str(i)}}
        if i <= width
        else {
            "id": f"s{i}",
            "tool": "calculator",
            "args": {"expression": f"{{{{s{i - width}}}}} + 1 + 0*{i}"},
            "depends_on": [f"s{i - width}"],
        }
        for i in range(1, steps + 1)
    ]


@pytest.fixture(scope="session")
async def temporal_env_and_ui_port() -> AsyncIterator[tuple[WorkflowEnvironment, int]]:
    """The session's dev server and its Web UI port."""
    env, ui_port = await start_test_environment_with_ui()
    try:
        yield env, ui_port
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
def temporal_env(
    temporal_env_and_ui_port: tuple[WorkflowEnvironment, int],
) -> WorkflowEnvironment:
    return temporal_env_and_ui_port[0]


@pytest.fixture(scope="session")
def web_ui_url(temporal_env_and_ui_port: tuple[WorkflowEnvironment, int]) -> str:
    """The base URL of the session dev server's Web UI."""
    return f"http://{LOCALHOST}:{temporal_env_and_ui_port[1]}"


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("keel-home")
    return Settings(home=home, planner_model="scripted", reasoner_model="scripted")


@pytest.fixture(scope="session")
async def stack(temporal_env: WorkflowEnvironment, settings: Settings) -> AsyncIterator[Stack]:
    async with scripted_workers(temporal_env.client, settings) as (components, model):
        yield Stack(temporal_env, temporal_env.client, settings, model, components)


def own_stack(home: Path, *dev_server_args: str) -> contextlib.AbstractAsyncContextManager[Stack]:
    """A second dev server with its own flags (say, an early continue-as-new suggestion)
    and its own scripted workers, for a module that needs a differently configured server."""
    return scripted_stack(home, *dev_server_args, tools=[*unreliable_tools(), *guarded_tools()])


@dataclass(frozen=True)
class Neo4jAccess:
    uri: str
    user: str
    password: str


@pytest.fixture(scope="session")
def neo4j() -> Iterator[Neo4jAccess]:
    """A real Neo4j 5.26 from Maven Central jars (fetched once into the repo's .keel/), with
    password auth, one per test run; tests keep apart by unique user ids."""
    with Neo4jServer(REPO / ".keel", password=NEO4J_PASSWORD) as server:
        yield Neo4jAccess(server.uri, "neo4j", NEO4J_PASSWORD)


def unique(text: str) -> str:
    """A task text no other test uses, so scripted responses never cross tests."""
    return f"{text} [{uuid.uuid4().hex[:8]}]"


async def run_task(stack: Stack, request: TaskRequest) -> tuple[TaskResult, list[str]]:
    """The task's result and the activity types it scheduled, in history order."""
    handle = await start_task(stack.client, request)
    result = await handle.result()
    history = await handle.fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    return result, scheduled
