"""KeelPlugin: everything a Temporal client, worker or replayer needs to run Keel, in one
object (the SDK's plugin mechanism): Keel's data converter, payloads encrypted when
KEEL_ENCRYPTION_KEYS is set (keel/_encryption.py), large payloads out of band
(keel/_payload_store.py), the workflow sandbox that passes Keel's pure modules through, and
signed identity when KEEL_CREDENTIAL or KEEL_IDENTITY_KEYS is set (keel/_identity.py), and
OpenTelemetry traces when KEEL_OTLP_ENDPOINT is set or the application set a global
TracerProvider before connecting (keel/_tracing.py).

A client connected with it hands it to every worker built on that client, so a worker needs
no wiring of its own; a `Replayer` takes it the same way.

    client = await Client.connect(address, plugins=[KeelPlugin()])
"""

from __future__ import annotations

import dataclasses
from functools import partial

from temporalio.converter import DataConverter, DefaultFailureConverter
from temporalio.plugin import SimplePlugin
from temporalio.worker import WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from keel._converter import (
    EncryptedFailureConverter,
    KeelFailureConverter,
    KeelPayloadConverter,
    data_converter,
)
from keel._identity import Credential, KeelIdentity, parse_identity_keys
from keel._payload_store import external_storage
from keel._tracing import interceptors as tracing_interceptors
from keel.settings import Settings, get_settings

# Imported once per worker instead of once per workflow run: deterministic code with no
# module state (contracts, the pure core, durable names) and the libraries under it.
PASSED_THROUGH = ("keel", "pydantic", "pydantic_core", "jsonschema", "annotated_types")


def _keel_converter(settings: Settings, configured: DataConverter | None) -> DataConverter:
    """Keel's payload converter and payload store, keeping whatever else the caller
    configured (a payload codec that encrypts, a failure converter, its own store)."""
    converter = dataclasses.replace(
        configured or data_converter, payload_converter_class=KeelPayloadConverter
    )
    if converter.failure_converter_class is DefaultFailureConverter:  # not the caller's own
        converter = dataclasses.replace(converter, failure_converter_class=KeelFailureConverter)
    if settings.encryption_keys and converter.payload_codec is None:
        from keel._encryption import AesGcmCodec, parse_keys

        converter = dataclasses.replace(
            converter, payload_codec=AesGcmCodec(parse_keys(settings.encryption_keys))
        )
        if converter.failure_converter_class is KeelFailureConverter:
            converter = dataclasses.replace(
                converter, failure_converter_class=EncryptedFailureConverter
            )
    if converter.external_storage is None:
        converter = dataclasses.replace(
            converter,
            external_storage=external_storage(
                settings.payloads_dir, settings.payload_threshold_bytes
            ),
        )
    return converter


def _keel_runner(configured: WorkflowRunner | None) -> WorkflowRunner:
    """The caller's sandbox (its restrictions and runner) with Keel's pure modules passed
    through; a runner that is no sandbox (a debugger's) is the caller's call."""
    if configured is None:
        configured = SandboxedWorkflowRunner()
    if not isinstance(configured, SandboxedWorkflowRunner):
        return configured
    return SandboxedWorkflowRunner(
        restrictions=configured.restrictions.with_passthrough_modules(*PASSED_THROUGH),
        runner_class=configured.runner_class,
    )


def _identity(settings: Settings) -> list[KeelIdentity]:
    """Signing with the caller's credential, checking with the workers' keys: each where
    its setting is given (keel/_identity.py)."""
    if not (settings.credential or settings.identity_keys):
        return []
    return [
        KeelIdentity(
            Credential.parse(settings.credential) if settings.credential else None,
            parse_identity_keys(settings.identity_keys) if settings.identity_keys else None,
        )
    ]


class KeelPlugin(SimplePlugin):
    def __init__(self, settings: Settings | None = None) -> None:
        settings = settings or get_settings()
        super().__init__(
            "keel.KeelPlugin",
            data_converter=partial(_keel_converter, settings),
            workflow_runner=_keel_runner,
            # Identity first: a call it refuses leaves no span.
            interceptors=[*_identity(settings), *tracing_interceptors(settings.otlp_endpoint)]
            or None,
        )
