"""The error tree (keel/errors.py), refusals versus failures in tools, and the Retry-After
reader (keel/_retry_after.py). Pure: no server."""

from __future__ import annotations

import ast
import builtins
import importlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import keel.errors
from activities.models.provider_errors import MAX_RETRY_DELAY_S
from activities.tools.activity import ToolActivities
from activities.tools.calculator import CalculatorError
from activities.tools.http import MAX_RETRY_AFTER_S, _Call
from activities.tools.registry import Tool, ToolContext, ToolRegistry, define_tool
from keel import durable
from keel._queues import TOOLS
from keel._retry_after import retry_after
from keel.contracts import ToolCall, ToolOutput
from keel.errors import (
    BudgetExceeded,
    Failure,
    HttpUnavailable,
    InvalidToolOutput,
    KeelError,
    ModelFailure,
    ModelUnavailable,
    ToolRefusal,
)
from keel.settings import Settings
from tests.conftest import REPO

PACKAGES = ("keel", "activities", "workers", "sandbox", "temporal", "workflows")
# Runs in Triton's own Python process, which cannot import Keel (see keel/errors.py).
OUTSIDE = {REPO / "workers" / "triton" / "model_repository"}
_BUILTIN_EXCEPTIONS = {
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}


# --- the tree ------------------------------------------------------------------------------


def _sources() -> Iterator[tuple[str, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if any(outside in path.parents for outside in OUTSIDE):
                continue
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            yield module.removesuffix(".__init__"), ast.parse(path.read_text(), str(path))


def _exception_classes() -> list[type[BaseException]]:
    """Every exception class the packages define at module level, found in their source
    (a class whose bases lead to a builtin exception) and then imported."""
    bases: dict[tuple[str, str], set[str]] = {}
    for module, tree in _sources():
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                names = {b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases}
                bases[(module, node.name)] = {n.rsplit(".", 1)[-1] for n in names}
    exceptions = set(_BUILTIN_EXCEPTIONS)
    found: set[tuple[str, str]] = set()
    while True:  # a class is an exception when one of its bases is: to a fixed point
        more = {
            key
            for key, names in bases.items()
            if names & exceptions or any(n.endswith(("Error", "Exception")) for n in names)
        } - found
        if not more:
            break
        found |= more
        exceptions |= {name for _, name in more}
    classes = [getattr(importlib.import_module(module), name) for module, name in sorted(found)]
    assert all(issubclass(c, BaseException) for c in classes)
    return classes


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


_LINE = re.compile(r"^(?P<indent>(?:[| ] {3})*)\+-- (?P<name>\w+)\s*(?P<says>.*)$")


def _drawing() -> dict[str, tuple[str, str]]:
    """The tree in keel/errors.py's docstring: class name -> (its parent, the rest of its
    line)."""
    doc = keel.errors.__doc__ or ""
    lines = doc.split("\n\n")[1].strip("\n").splitlines()
    assert lines[0].strip() == "KeelError"
    drawn: dict[str, tuple[str, str]] = {}
    parents = ["KeelError"]
    for line in lines[1:]:
        match = _LINE.match(line.strip("\n")[4:])  # the block is indented by 4
        assert match, f"not a line of the tree: {line!r}"
        depth = len(match["indent"]) // 4
        del parents[depth + 1 :]
        name = match["name"]
        assert name not in drawn, f"{name} is drawn twice"
        drawn[name] = (parents[depth], match["says"])
        parents.append(name)
    return drawn


def test_every_exception_class_is_a_keel_error() -> None:
    loose = [
        f"{c.__module__}.{c.__qualname__}"
        for c in _exception_classes()
        if not issubclass(c, KeelError)
    ]
    assert loose == [], "root these at KeelError (keel/errors.py) and draw them there"


def test_the_drawing_shows_every_keel_error_where_it_is() -> None:
    _exception_classes()  # imports every module that defines one
    drawn = _drawing()
    classes = {c.__name__: c for c in _subclasses(KeelError) if c.__module__ != __name__}
    assert sorted(classes) == sorted(drawn)  # nothing left out, nothing stale
    for name, cls in classes.items():
        parent, says = drawn[name]
        base = next(b for b in cls.__bases__ if issubclass(b, KeelError))
        assert parent == base.__name__, f"{name} is drawn under {parent}, not {base.__name__}"
        if cls.__module__ != "keel.errors":
            path = cls.__module__.replace(".", "/") + ".py"
            assert f"({path})" in says, f"{name}'s line does not name {path}"
        for builtin in (b for b in cls.__bases__ if b.__module__ == "builtins"):
            assert builtin.__name__ in says, f"{name}'s line does not say it is a {builtin}"


def _failure_types() -> list[str]:
    """The failure type names of keel/durable.py (its section `failure types`)."""
    source = Path(durable.__file__).read_text()
    section = source.split("# --- failure types", 1)[1]
    return [getattr(durable, name) for name in re.findall(r"^([A-Z_]+) = ", section, re.M)]


def test_each_failure_type_belongs_to_one_class() -> None:
    _exception_classes()
    owners = [c for c in _subclasses(Failure) if "type" in vars(c)]
    assert sorted(Counter(c.type for c in owners).items()) == sorted(
        (t, 1) for t in _failure_types()
    )
    drawn = _drawing()
    for cls in owners:  # the drawing says the type and whether it is retried
        says = drawn[cls.__name__][1]
        assert says.startswith(f"{cls.type}, "), says
        assert ("final" in says) == cls.final, says


def test_a_failure_becomes_the_application_error_temporal_stores() -> None:
    delay = timedelta(seconds=3)
    failure = ModelUnavailable("the model is down", {"status": 503}, next_retry_delay=delay)
    error = failure.to_application_error()
    assert (error.message, error.type, error.non_retryable) == (
        "the model is down",
        durable.MODEL_UNAVAILABLE,
        False,
    )
    assert (error.details, error.next_retry_delay) == (({"status": 503},), delay)
    assert ModelUnavailable("x", non_retryable=True).to_application_error().non_retryable
    assert ToolRefusal("no").to_application_error().non_retryable
    assert ModelUnavailable("gone", non_retryable=True).retryable is False  # this one's rule
    with pytest.raises(TypeError, match="no failure type"):
        ModelFailure("which one?")
    assert not HttpUnavailable("busy").to_application_error().non_retryable
    reworded = CalculatorError("division by zero").reworded("calculator: division by zero")
    assert type(reworded) is CalculatorError and reworded.type == durable.TOOL_ERROR
    assert str(reworded) == reworded.message == "calculator: division by zero"


# --- refusals and failures of tools --------------------------------------------------------


class _In(BaseModel):
    text: str = ""


class _Out(BaseModel):
    n: int


def _tool(raises: BaseException | None, output: BaseModel | None = None) -> Tool:
    async def fn(args: _In, ctx: ToolContext) -> BaseModel:
        if raises is not None:
            raise raises
        return output or _Out(n=1)

    return define_tool("probe", "a probe", fn, _In, _Out, cost_per_call_usd=0.01)


def _call(max_usd: float = 1.0) -> ToolCall:
    return ToolCall(workflow_id="w", step_id="s1", tool="probe", args={}, max_usd=max_usd)


def _executor(tmp_path: Path, tool: Tool) -> ToolActivities:
    return ToolActivities(ToolRegistry([tool]), Settings(home=tmp_path))


def _broken_json() -> json.JSONDecodeError:
    try:
        json.loads("{not json")
    except json.JSONDecodeError as err:
        return err
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    "bug",
    [_broken_json(), ValueError("a bug"), KeyError("id"), RuntimeError("an outage")],
    ids=["JSONDecodeError", "ValueError", "KeyError", "RuntimeError"],
)
async def test_a_bug_in_a_tool_is_no_refusal(tmp_path: Path, bug: BaseException) -> None:
    tool = _tool(bug)
    with pytest.raises(type(bug)) as raised:  # the validated path lets it through, as it is
        await _executor(tmp_path, tool).execute(tool, _call())
    assert raised.value is bug and not isinstance(raised.value, ToolRefusal)

    [activity_fn] = _executor(tmp_path, tool).for_queue(TOOLS)
    with pytest.raises(ApplicationError) as failed:  # the activity: retried, type named
        await ActivityEnvironment().run(activity_fn, _call())
    assert failed.value.type == durable.TOOL_FAILED and not failed.value.non_retryable
    assert not failed.value.non_retryable
    assert failed.value.message.startswith(f"probe failed: {type(bug).__name__}: ")
    assert failed.value.__cause__ is bug  # its traceback travels as the failure's cause


@pytest.mark.parametrize(
    ("refusal", "kind"),
    [
        (ToolRefusal("no such row"), durable.TOOL_ERROR),
        (CalculatorError("no such row"), durable.TOOL_ERROR),
        (InvalidToolOutput("no such row"), durable.INVALID_OUTPUT),
    ],
)
async def test_a_tool_refuses_by_raising_a_tool_refusal(
    tmp_path: Path, refusal: ToolRefusal, kind: str
) -> None:
    tool = _tool(refusal)
    with pytest.raises(ToolRefusal) as refused:
        await _executor(tmp_path, tool).execute(tool, _call())
    assert type(refused.value) is type(refusal)  # a subclass stays what it is
    assert refused.value.message == "probe: no such row"

    [activity_fn] = _executor(tmp_path, tool).for_queue(TOOLS)
    with pytest.raises(ApplicationError) as failed:
        await ActivityEnvironment().run(activity_fn, _call())
    assert (failed.value.type, failed.value.message) == (kind, "probe: no such row")
    assert failed.value.non_retryable


async def test_the_validated_path_refuses_with_the_failure_types(tmp_path: Path) -> None:
    tool = _tool(None)
    executor = _executor(tmp_path, tool)
    with pytest.raises(BudgetExceeded, match=r"probe costs \$0.010000 per call; only \$0.0000"):
        await executor.execute(tool, _call(max_usd=0.0))
    with pytest.raises(ToolRefusal, match="invalid probe arguments: text: Input should be a"):
        await executor.execute(tool, _call().model_copy(update={"args": {"text": 5}}))
    bad_output = _tool(None, output=_In(text="not a count"))
    with pytest.raises(InvalidToolOutput, match="invalid probe output: n: Field required"):
        await executor.execute(bad_output, _call())
    out = await executor.execute(tool, _call())
    assert out == ToolOutput(output={"n": 1}, cost_usd=0.01)


# --- Retry-After ---------------------------------------------------------------------------

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _after(headers: dict[str, str], cap_s: float = 600) -> timedelta | None:
    return retry_after(headers, cap_s=cap_s, now=NOW.timestamp())


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "2"}, 2),
        ({"Retry-After": " 7 "}, 7),  # any case, around spaces
        ({"retry-after": "1.5"}, 1.5),  # a fraction, as the provider SDKs read it
        ({"retry-after": "0"}, 0),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the milliseconds win
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9),  # ... when they can be read
        ({"retry-after": format_datetime(NOW + timedelta(seconds=30), usegmt=True)}, 30),
        ({"retry-after": "Tuesday, 01-Jan-30 00:00:45 GMT"}, 45),  # RFC 850
        ({"retry-after": "Tue Jan  1 00:01:00 2030"}, 60),  # asctime: no zone, GMT
        ({"retry-after": format_datetime(NOW - timedelta(hours=1), usegmt=True)}, 0),  # past
        ({"retry-after": "86400"}, 600),  # capped
        ({"retry-after": "9" * 400}, 600),
        ({"retry-after-ms": "86400000"}, 600),
    ],
)
def test_retry_after_reads(headers: dict[str, str], seconds: float) -> None:
    assert _after(headers) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "value", ["", "soon", "-4", "+3", "1e3", "inf", "nan", "1_000", "3 s", "Tue, 99 Foo 2030"]
)
def test_retry_after_ignores_what_is_no_delay(value: str) -> None:
    assert _after({"retry-after": value}) is None
    assert _after({"retry-after-ms": value}) is None


def test_retry_after_without_the_headers() -> None:
    assert _after({}) is None
    assert _after({"x-should-retry": "true"}) is None
    headers = httpx.Headers({"Retry-After": "12"})  # what both callers pass
    assert retry_after(headers, cap_s=MAX_RETRY_DELAY_S) == timedelta(seconds=12)


async def test_each_caller_keeps_its_cap() -> None:
    assert (MAX_RETRY_DELAY_S, MAX_RETRY_AFTER_S) == (600, 60)
    response = httpx.Response(503, headers={"Retry-After": "86400"}, content=b"down")
    with pytest.raises(ApplicationError) as busy:
        await _Call("GET api:/x", {}).refuse_status(response)
    assert busy.value.type == durable.HTTP_UNAVAILABLE and not busy.value.non_retryable
    assert busy.value.next_retry_delay == timedelta(seconds=MAX_RETRY_AFTER_S)
