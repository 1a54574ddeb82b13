"""KeelPlugin: everything a Temporal client, worker or replayer needs to run Keel, in one
object (the SDK's plugin mechanism): Keel's data converter and the workflow sandbox that
passes Keel's pure modules through.

A client connected with it hands it to every worker built on that client, so a worker needs
no wiring of its own; a `Replayer` takes it the same way.

    client = await Client.connect(address, plugins=[KeelPlugin()])
"""

from __future__ import annotations

from temporalio.converter import DataConverter
from temporalio.plugin import SimplePlugin
from temporalio.worker import WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from keel._converter import data_converter

# Imported once per worker instead of once per workflow run: deterministic code with no
# module state (contracts, the pure core, durable names) and the libraries under it.
PASSED_THROUGH = ("keel", "pydantic", "pydantic_core", "jsonschema", "annotated_types")


def _keel_converter(configured: DataConverter | None) -> DataConverter:
    if configured is not None and configured is not DataConverter.default:
        if configured.payload_converter_class is not data_converter.payload_converter_class:
            raise ValueError(
                "KeelPlugin needs Keel's data converter (pydantic payloads); this client was "
                "given another: drop the data_converter argument"
            )
        return configured  # Keel's payloads with the caller's codec (e.g. encryption)
    return data_converter


def _keel_runner(configured: WorkflowRunner | None) -> WorkflowRunner:
    if configured is not None and not isinstance(configured, SandboxedWorkflowRunner):
        return configured  # e.g. UnsandboxedWorkflowRunner in a debugger: the caller's call
    restrictions = SandboxRestrictions.default.with_passthrough_modules(*PASSED_THROUGH)
    return SandboxedWorkflowRunner(restrictions=restrictions)


class KeelPlugin(SimplePlugin):
    def __init__(self) -> None:
        super().__init__(
            "keel.KeelPlugin", data_converter=_keel_converter, workflow_runner=_keel_runner
        )
