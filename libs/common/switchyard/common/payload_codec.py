"""Encryption at rest with key ids: Temporal payloads and sealed job input.

One ``KeyRing`` per process, from the environment (``SWITCHYARD_PAYLOAD_KEYS``: key id → base64 of
a 32-byte key; ``SWITCHYARD_PAYLOAD_KEY_ID``: the id new data is encrypted with). Everything is
AES-256-GCM with a random 96-bit nonce, and names the id of its key, so decryption picks the key by
id: rotating is adding a key, making it the active one everywhere, and dropping the old one once
nothing encrypted with it is left (Temporal histories past their retention, jobs ended).

- ``EncryptionCodec``: a Temporal ``PayloadCodec`` (the data-converter practice Temporal documents
  for encryption): every payload of every workflow (inputs, results, heartbeat details, and, with
  ``DefaultFailureConverterWithEncodedAttributes``, failure messages and stack traces) leaves the
  process as ``encoding: binary/encrypted`` with ``encryption-key-id: <id>``; the Temporal server
  and whoever reads its database or history see ciphertext only.
- ``KeyRing.seal``/``unseal``: the job's engine input in PostgreSQL (``jobs.input_sealed``), bound
  to the job by the AEAD's associated data, so one job's sealed input cannot pass for another's;
  ``seal_bytes`` the same for raw bytes (a shadow case's V2 request body in Redis).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

from switchyard.common.settings import CommonSettings

ENCODING = b"binary/encrypted"
KEY_ID_META = "encryption-key-id"
NONCE_BYTES = 12
KEY_BYTES = 32
_KID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Sealed blob: version, key id length, key id, nonce, ciphertext + tag.
_SEAL_VERSION = 1


class PayloadKeyError(ValueError):
    """Missing or malformed keys, an unknown key id, or ciphertext that does not authenticate."""


def generate_key() -> str:
    """A new random key, base64 (what SWITCHYARD_PAYLOAD_KEYS holds)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


class KeyRing:
    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        if not keys:
            raise PayloadKeyError("no payload encryption key: set SWITCHYARD_PAYLOAD_KEYS (JSON: key id → base64 of 32 random bytes) "
                                  "and SWITCHYARD_PAYLOAD_KEY_ID")
        for kid, key in keys.items():
            if not _KID.match(kid):
                raise PayloadKeyError(f"payload key id {kid!r}: use 1-64 characters of A-Z a-z 0-9 . _ -")
            if len(key) != KEY_BYTES:
                raise PayloadKeyError(f"payload key {kid!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES}")
        if active not in keys:
            raise PayloadKeyError(f"SWITCHYARD_PAYLOAD_KEY_ID {active!r} is not one of SWITCHYARD_PAYLOAD_KEYS ({', '.join(sorted(keys))})")
        self.active = active
        self._aead = {kid: AESGCM(key) for kid, key in keys.items()}

    @classmethod
    def parse(cls, keys: Mapping[str, str], active: str) -> KeyRing:
        """From base64 strings (the environment's form)."""
        raw: dict[str, bytes] = {}
        for kid, b64 in keys.items():
            try:
                raw[kid] = base64.b64decode(b64.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise PayloadKeyError(f"payload key {kid!r} is not valid base64") from None
        return cls(raw, active)

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> KeyRing:
        return cls.parse({k: v.get_secret_value() for k, v in settings.payload_keys.items()}, settings.payload_key_id)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._aead)

    def _cipher(self, kid: str) -> AESGCM:
        aead = self._aead.get(kid)
        if aead is None:
            raise PayloadKeyError(f"data encrypted with key id {kid!r}, which this process does not have "
                                  f"(SWITCHYARD_PAYLOAD_KEYS holds {', '.join(self.key_ids)}): keep an old key until nothing uses it")
        return aead

    def encrypt(self, plaintext: bytes, aad: bytes | None = None) -> tuple[str, bytes]:
        """(key id, nonce + ciphertext) under the active key."""
        nonce = os.urandom(NONCE_BYTES)
        return self.active, nonce + self._aead[self.active].encrypt(nonce, plaintext, aad)

    def decrypt(self, kid: str, blob: bytes, aad: bytes | None = None) -> bytes:
        aead = self._cipher(kid)
        try:
            return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise PayloadKeyError(f"data under key id {kid!r} does not authenticate (altered, or that id's key changed)") from None

    # -------------------------------------------------------------- sealed values (PostgreSQL, Redis)

    def seal(self, value: Any, context: str) -> bytes:
        """JSON ``value`` encrypted, self-describing (key id inside), bound to ``context``."""
        return self.seal_bytes(json.dumps(value, separators=(",", ":")).encode(), context)

    def unseal(self, sealed: bytes, context: str) -> Any:
        return json.loads(self.unseal_bytes(sealed, context))

    def seal_bytes(self, data: bytes, context: str) -> bytes:
        kid = self.active.encode()
        header = bytes([_SEAL_VERSION, len(kid)]) + kid
        _, blob = self.encrypt(data, header + context.encode())
        return header + blob

    def unseal_bytes(self, sealed: bytes, context: str) -> bytes:
        if len(sealed) < 2 or sealed[0] != _SEAL_VERSION:
            raise PayloadKeyError("not a sealed value of a known version")
        end = 2 + sealed[1]
        header = sealed[:end]
        return self.decrypt(header[2:].decode(), sealed[end:], header + context.encode())


def sealed_input_context(job_id: object) -> str:
    """What a job's sealed input is bound to (its row)."""
    return f"jobs.input_sealed:{job_id}"


def sealed_result_context(job_id: object) -> str:
    """What a job's sealed result is bound to (its row)."""
    return f"jobs.result_sealed:{job_id}"


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over each whole serialized payload (metadata included), tagged with the key id."""

    def __init__(self, keys: KeyRing) -> None:
        self.keys = keys

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for p in payloads:
            kid, blob = self.keys.encrypt(p.SerializeToString())
            out.append(Payload(metadata={"encoding": ENCODING, KEY_ID_META: kid.encode()}, data=blob))
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for p in payloads:
            # Not ours to decrypt (e.g. written before encryption was on): passed on as it is.
            if p.metadata.get("encoding") != ENCODING:
                out.append(p)
                continue
            kid = p.metadata.get(KEY_ID_META)
            if not kid:
                raise PayloadKeyError(f"encrypted payload without {KEY_ID_META}")
            out.append(Payload.FromString(self.keys.decrypt(kid.decode(), p.data)))
        return out


def data_converter(keys: KeyRing) -> DataConverter:
    """The pydantic data converter, every payload encrypted, failure messages and traces too."""
    return dataclasses.replace(pydantic_data_converter, payload_codec=EncryptionCodec(keys),
                               failure_converter_class=DefaultFailureConverterWithEncodedAttributes)


def keys_or_exit(process: str, settings: CommonSettings) -> KeyRing:
    """The process's key ring; without a usable key the process does not start (nothing may be
    written to Temporal or PostgreSQL in clear)."""
    try:
        return KeyRing.from_settings(settings)
    except PayloadKeyError as e:
        sys.exit(f"{process}: {e} (a key: `python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'`)")
