"""Key lists in settings: `id:base64,id:base64`, the first key in use, every key accepted.

Encryption (KEEL_ENCRYPTION_KEYS) and signed identity (KEEL_IDENTITY_KEYS) rotate keys the
same way: put a new key first and keep the old ones while anything made with them is read.
"""

from __future__ import annotations

import base64
import binascii
import re

KEY_BYTES = 32
_KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def parse_key_list(spec: str, setting: str, error: type[Exception]) -> dict[str, bytes]:
    """`id:base64,id:base64` → {id: 32-byte key}, in the order given; anything wrong raises
    `error` with one line that names `setting` and never shows a key."""
    keys: dict[str, bytes] = {}
    for item in (i.strip() for i in spec.split(",") if i.strip()):
        key_id, sep, encoded = item.partition(":")
        if not sep or not _KEY_ID_PATTERN.match(key_id):
            raise error(
                f"{setting}: give `id:base64key` pairs separated by commas, ids of "
                "letters, digits, '_', '.', '-'"
            )
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise error(f"{setting}: key {key_id!r} is not base64") from None
        if len(key) != KEY_BYTES:
            raise error(
                f"{setting}: key {key_id!r} is {len(key)} bytes, not {KEY_BYTES}; "
                'make one with: python -c "import os, base64; '
                'print(base64.b64encode(os.urandom(32)).decode())"'
            )
        if key_id in keys:
            raise error(f"{setting}: key id {key_id!r} is given twice")
        keys[key_id] = key
    if not keys:
        raise error(f"{setting} is set but names no key")
    return keys
