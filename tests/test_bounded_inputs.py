"""Every field a caller sends is bounded: an input that would pass here and wedge a task
later (a timer too long for the server, a catalog too large for a payload, a user id too
long for a search attribute) is refused at the door with one line that says what to do."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from keel import cli
from keel._queues import Queues
from keel._terminal import terminal_safe
from keel.contracts import (
    MAX_SUBAGENTS,
    USER_ID_MAX_BYTES,
    Budget,
    Document,
    HumanPolicy,
    MemorizeRequest,
    SubAgent,
    TaskRequest,
)
from keel.testing import Stack
from workers import agent
from workers.agent import WORKFLOW_BUGS
from workers.components import Components
from workflows.state import every_arg


def _refused(match: str, **fields: object) -> None:
    with pytest.raises(ValidationError, match=match):
        TaskRequest.model_validate({"task": "What is 6*7?", **fields})


def test_a_user_id_is_printable_and_fits_a_search_attribute() -> None:
    assert TaskRequest(task="t", user_id="ana@example.com").user_id == "ana@example.com"
    assert TaskRequest(task="t", user_id="Алиса 🙂").user_id == "Алиса 🙂"  # any script
    assert TaskRequest(task="t", user_id="é" * (USER_ID_MAX_BYTES // 2)).user_id
    _refused("800 bytes of UTF-8; at most 128", user_id="🙂" * 200)
    for bad in ("ana\x1b]0;root\x07", "bob\nalice", "eve\u202e", " padded", "a\u2028b"):
        _refused("printable text without control characters", user_id=bad)
    _refused("reserved for memory shared", user_id="*")
    with pytest.raises(ValidationError, match="at most 128"):
        MemorizeRequest(user_id="x" * 129, documents=[Document(source="a", text="b")])


def test_a_wait_for_a_person_fits_a_timer() -> None:
    assert HumanPolicy(wait_timeout_s=30 * 24 * 3600).wait_timeout_s == 2_592_000
    _refused("less than or equal to 31622400", human={"wait_timeout_s": 1e14})


def test_catalog_fields_are_bounded() -> None:
    helper = {"name": "helper", "description": "helps", "tools": ["calculator"]}
    assert len(TaskRequest(task="t", subagents=[helper] * MAX_SUBAGENTS).subagents or []) == 16
    _refused("at most 16 items", subagents=[helper] * 2600)
    _refused("should match pattern", allowed_tools=["calculator", "Calculator; drop"])
    _refused("at most 128 items", allowed_tools=["calculator"] * 129)
    with pytest.raises(ValidationError, match="should match pattern"):
        SubAgent(name="helper", description="helps", tools=["../etc"])
    with pytest.raises(ValidationError, match="less than or equal to 1000"):
        SubAgent(name="helper", description="helps", tools=["calculator"], budget_usd=1e9)
    with pytest.raises(ValidationError, match="less than or equal to 1000000000"):
        Budget(tokens=10**12)


async def test_a_bug_in_a_workflow_fails_its_task_but_non_determinism_still_retries(
    stack: Stack,
) -> None:
    from temporalio.workflow import NondeterminismError

    # the worker that runs AgentTask is the one built with them
    own = Components(settings=stack.settings, queues=Queues(f"bugs{uuid.uuid4().hex[:8]}-"))
    config = agent.build(stack.client, own).config()
    assert config.get("workflow_failure_exception_types") == list(WORKFLOW_BUGS)
    # what the inputs above used to raise inside the workflow, retried without end
    for error in (OverflowError("date value out of range"), KeyError("nope"), ValueError()):
        assert isinstance(error, WORKFLOW_BUGS)
    assert not issubclass(NondeterminismError, WORKFLOW_BUGS)  # a fixed deployment takes it


def test_an_approval_shows_every_argument_in_full() -> None:
    rent = "bob (the usual monthly rent, as agreed with alice last spring)"
    assert every_arg({"to": rent, "usd": 9999}) == f'to="{rent}", usd=9999'
    shown = every_arg({"note": "x" * 2000, "usd": 5})
    assert shown.endswith("… (1502 more characters), usd=5")  # 2002 characters quoted
    # a value cannot pass for another argument, nor move the cursor
    assert every_arg({"to": 'bob", usd=1'}) == r'to="bob\", usd=1"'
    assert every_arg({"to": "bob\x1b[2J"}) == r'to="bob\u001b[2J"'


def test_the_cli_prints_no_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    hostile = "42\x1b]0;pwned\x07\x1b[2J\rapproved by admin\u202e\nnext line\tok"
    cli._out(hostile)
    printed = capsys.readouterr().out
    assert printed == "42\\x1b]0;pwned\\x07\\x1b[2J\\x0dapproved by admin\\u202e\nnext line\tok\n"
    assert terminal_safe("Алиса 🙂 naïve") == "Алиса 🙂 naïve"


def test_keel_run_refuses_a_bad_user_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "What is 6*7?", "--user", "🙂" * 200]) == 2
    err = capsys.readouterr().err
    said = "invalid task: user_id: is 800 bytes of UTF-8; at most 128 (use a shorter id)"
    assert err == f"keel: error: {said}\n"  # one line, no traceback
