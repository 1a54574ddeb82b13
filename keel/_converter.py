"""The data converter every Keel client and worker uses: pydantic JSON, plus one clear error.

A workflow started with malformed input (e.g. by hand from the `temporal` CLI) must fail at
once with a readable, non-retryable error instead of retrying its first workflow task forever.
"""

from __future__ import annotations

from typing import Any

import temporalio.api.common.v1
from pydantic import ValidationError
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultFailureConverter,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
    PayloadConverter,
)

from keel._core.redaction import scrub
from keel.errors import InvalidInput


def describe_validation_error(err: ValidationError, type_name: str) -> str:
    problems = []
    for e in err.errors()[:5]:
        where = ".".join(str(p) for p in e["loc"]) or "(root)"
        problems.append(f"{where}: {str(e['msg']).removeprefix('Value error, ')}")
    return f"invalid {type_name}: " + "; ".join(problems)


class _ClearJSONConverter(PydanticJSONPlainPayloadConverter):
    def from_payload(
        self, payload: temporalio.api.common.v1.Payload, type_hint: type | None = None
    ) -> Any:
        try:
            return super().from_payload(payload, type_hint)
        except ValidationError as err:
            name = getattr(type_hint, "__name__", str(type_hint))
            raise InvalidInput(
                describe_validation_error(err, name) + " (fix the input JSON and send it again)"
            ).to_application_error() from None


class KeelPayloadConverter(CompositePayloadConverter):
    """The default converters with JSON handled by pydantic (see `_ClearJSONConverter`)."""

    def __init__(self) -> None:
        super().__init__(
            *(
                _ClearJSONConverter() if isinstance(c, JSONPlainPayloadConverter) else c
                for c in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


class KeelFailureConverter(DefaultFailureConverter):
    """Temporal's failure converter, with every failure's message and stack trace (each
    cause's too) scrubbed of this process's secrets: a provider error that quotes the key it
    was sent, or an exception that names a webhook URL, reaches history without them."""

    encrypt = False

    def __init__(self) -> None:
        super().__init__(encode_common_attributes=False)

    def to_failure(
        self,
        exception: BaseException,
        payload_converter: PayloadConverter,
        failure: temporalio.api.failure.v1.Failure,
    ) -> None:
        super().to_failure(exception, payload_converter, failure)  # causes come through here
        failure.message = scrub(failure.message)
        failure.stack_trace = scrub(failure.stack_trace)
        if self.encrypt:  # into a payload the codec encrypts, as Temporal's option does
            attributes = {"message": failure.message, "stack_trace": failure.stack_trace}
            failure.encoded_attributes.CopyFrom(payload_converter.to_payloads([attributes])[0])
            failure.message = "Encoded failure"
            failure.stack_trace = ""


class EncryptedFailureConverter(KeelFailureConverter):
    """The same, with messages and stack traces in the encrypted part (KEEL_ENCRYPTION_KEYS)."""

    encrypt = True


data_converter = DataConverter(
    payload_converter_class=KeelPayloadConverter, failure_converter_class=KeelFailureConverter
)
