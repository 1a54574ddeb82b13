"""Large payloads out of band: Temporal's external storage with a local-disk driver.

Temporal refuses a payload over 2 MB (and a workflow task whose commands together pass its
gRPC limit), so a task that reads nine legal 250 KB files would wedge when their results go
to `synthesize` together. Every payload over `KEEL_PAYLOAD_THRESHOLD_BYTES` is written to
`KEEL_PAYLOAD_DIR` instead, and history holds a small claim (its sha256). The SDK does the
swapping (`temporalio.converter.ExternalStorage`); this module is only where bytes live.

Every client and worker of one deployment must see the same directory (one machine, or a
shared volume); a claim that cannot be found fails with a line saying so.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    ExternalStorage,
    StorageDriver,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverStoreContext,
)

from keel.errors import KeelError

DRIVER_NAME = "keel.disk"
SHA256 = "sha256"


class PayloadMissing(KeelError, LookupError):
    """A claim in history names a payload the store does not hold."""


class DiskPayloadDriver(StorageDriver):
    """Payloads as files named by the sha256 of their bytes: storing one twice writes once,
    and a file changed on disk is refused on the way back in."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def name(self) -> str:
        return DRIVER_NAME

    def path_of(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise PayloadMissing(f"not a payload claim: {digest[:80]!r}")
        return self.root / digest[:2] / digest

    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        # Local files of at most a few MB: writing them inline costs less than a thread hop.
        return [StorageDriverClaim({SHA256: self._write(p.SerializeToString())}) for p in payloads]

    def _write(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_of(digest)
        if path.exists():
            return digest
        path.parent.mkdir(parents=True, exist_ok=True)
        # write then rename: a reader never sees half a payload, even across processes
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        return [self._read(str(claim.claim_data.get(SHA256, ""))) for claim in claims]

    def _read(self, digest: str) -> Payload:
        path = self.path_of(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PayloadMissing(
                f"payload {digest[:12]} is not in {self.root}: every Keel client and worker "
                "must share KEEL_PAYLOAD_DIR (one machine or a shared volume)"
            ) from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise PayloadMissing(f"payload {digest[:12]} in {self.root} was changed on disk")
        payload = Payload()
        payload.ParseFromString(data)
        return payload


def external_storage(root: Path, threshold_bytes: int) -> ExternalStorage:
    return ExternalStorage(
        drivers=[DiskPayloadDriver(root)], payload_size_threshold=threshold_bytes
    )
