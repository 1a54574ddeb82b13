"""Payloads encrypted at rest in Temporal: an AES-256-GCM payload codec.

With `KEEL_ENCRYPTION_KEYS` set, every payload a Keel client or worker sends (inputs, results,
memo, summaries, failures' details) is encrypted before it leaves the process, so the
server's history, its database and anyone who can read them see only ciphertext. Search
attributes stay plain (the server filters on them): Keel's hold a user id, a status and a
cost, never task text.

    KEEL_ENCRYPTION_KEYS="k2:<base64 of 32 bytes>,k1:<base64 of 32 bytes>"

The first key encrypts; every listed key decrypts, so a key is rotated by putting a new one
first and keeping the old ones while histories that use them are still read. Each payload
names its key id (metadata `encryption-key-id`, also bound into the ciphertext), and a
payload that was never encrypted is read as it is (histories from before encryption).
`keel codec-server` decrypts for the Web UI and the `temporal` CLI.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from keel._keys import parse_key_list
from keel.errors import KeelError

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12


class EncryptionError(KeelError, ValueError):
    """A key setting that cannot be used, or a payload this process cannot decrypt."""


def parse_keys(spec: str) -> dict[str, bytes]:
    """`id:base64,id:base64` → {id: 32-byte key}, in the order given (the first encrypts)."""
    return parse_key_list(spec, "KEEL_ENCRYPTION_KEYS", EncryptionError)


class AesGcmCodec(PayloadCodec):
    def __init__(self, keys: dict[str, bytes]) -> None:
        if not keys:
            raise EncryptionError("an encryption codec needs at least one key")
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self.active = next(iter(keys))

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self.active].encrypt(
            nonce, payload.SerializeToString(), self.active.encode()
        )
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID: self.active.encode()}, data=nonce + sealed
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # written before encryption was turned on
        key_id = payload.metadata.get(KEY_ID, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise EncryptionError(
                f"a payload is encrypted with key {key_id!r}, which this process does not "
                "have: add it to KEEL_ENCRYPTION_KEYS (after the key that encrypts)"
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            plain = cipher.decrypt(nonce, sealed, key_id.encode())
        except InvalidTag:
            raise EncryptionError(
                f"a payload encrypted with key {key_id!r} does not decrypt: it was changed, "
                "or the key under that id is not the one it was encrypted with"
            ) from None
        decrypted = Payload()
        decrypted.ParseFromString(plain)
        return decrypted
