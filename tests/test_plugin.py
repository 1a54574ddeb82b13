"""KeelPlugin configures clients, workers and replayers, keeping what the caller set."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from temporalio.converter import DataConverter, PayloadCodec
from temporalio.worker import UnsandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from keel._converter import KeelPayloadConverter
from keel.plugin import PASSED_THROUGH, KeelPlugin


class _Codec(PayloadCodec):
    async def encode(self, payloads: Any) -> Any:
        return payloads

    async def decode(self, payloads: Any) -> Any:
        return payloads


def test_the_client_gets_keels_payloads_and_keeps_its_codec() -> None:
    codec = _Codec()
    given = dataclasses.replace(DataConverter.default, payload_codec=codec)
    config = KeelPlugin().configure_client(cast(Any, {"data_converter": given}))
    converter = config["data_converter"]
    assert converter.payload_converter_class is KeelPayloadConverter
    assert converter.payload_codec is codec  # encryption survives


def test_a_worker_keeps_its_sandbox_settings_and_passes_keel_through() -> None:
    mine = SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("mylib")
    )
    config = KeelPlugin().configure_worker(cast(Any, {"workflow_runner": mine}))
    runner = config["workflow_runner"]
    assert isinstance(runner, SandboxedWorkflowRunner)
    passed = runner.restrictions.passthrough_modules
    assert "mylib" in passed and set(PASSED_THROUGH) <= passed


def test_a_runner_without_a_sandbox_is_left_alone() -> None:
    debugger = UnsandboxedWorkflowRunner()
    config = KeelPlugin().configure_worker(cast(Any, {"workflow_runner": debugger}))
    assert config["workflow_runner"] is debugger
