"""Encryption at rest: the Temporal payload codec and sealed values, key ids and rotation."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.exceptions import ApplicationError

from switchyard.common.contracts import JobSpec
from switchyard.common.payload_codec import (
    ENCODING,
    KEY_ID_META,
    EncryptionCodec,
    KeyRing,
    PayloadKeyError,
    data_converter,
    generate_key,
    keys_or_exit,
    sealed_input_context,
)
from switchyard.common.settings import CommonSettings

K1, K2 = generate_key(), generate_key()
SECRET = "marker-7f3a-the-prompt-nobody-may-read"


def ring(active: str = "k1", **keys: str) -> KeyRing:
    return KeyRing.parse(keys or {"k1": K1}, active)


def payload(text: str = SECRET) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=f'{{"prompt":"{text}"}}'.encode())


def encode(codec: EncryptionCodec, *payloads: Payload) -> list[Payload]:
    return asyncio.run(codec.encode(list(payloads)))


def decode(codec: EncryptionCodec, payloads: list[Payload]) -> list[Payload]:
    return asyncio.run(codec.decode(payloads))


def test_round_trip_leaves_nothing_readable_and_names_the_key() -> None:
    codec = EncryptionCodec(ring())
    original = [payload(), payload("second")]
    encrypted = encode(codec, *original)
    for p in encrypted:
        assert p.metadata["encoding"] == ENCODING
        assert p.metadata[KEY_ID_META] == b"k1"
        assert SECRET.encode() not in p.SerializeToString()
        assert b"json/plain" not in p.SerializeToString()  # the inner metadata is encrypted too
    assert encrypted[0].data != encode(codec, payload())[0].data  # a fresh nonce each time
    assert decode(codec, encrypted) == original


def test_payloads_not_encrypted_pass_through() -> None:
    """History written before encryption was switched on stays readable."""
    assert decode(EncryptionCodec(ring()), [payload()]) == [payload()]


def test_the_active_key_id_encrypts() -> None:
    codec = EncryptionCodec(ring("k2", k1=K1, k2=K2))
    assert encode(codec, payload())[0].metadata[KEY_ID_META] == b"k2"


def test_rotation_old_payloads_stay_readable_until_their_key_is_dropped() -> None:
    old = encode(EncryptionCodec(ring("k1", k1=K1)), payload("old"))
    rotated = EncryptionCodec(ring("k2", k1=K1, k2=K2))
    new = encode(rotated, payload("new"))
    assert new[0].metadata[KEY_ID_META] == b"k2"
    assert decode(rotated, old + new) == [payload("old"), payload("new")]
    dropped = EncryptionCodec(ring("k2", k2=K2))
    assert decode(dropped, new) == [payload("new")]
    with pytest.raises(PayloadKeyError, match="key id 'k1'.*does not have"):
        decode(dropped, old)


def test_tampered_ciphertext_is_refused() -> None:
    codec = EncryptionCodec(ring())
    p = encode(codec, payload())[0]
    data = bytearray(p.data)
    data[-1] ^= 1
    with pytest.raises(PayloadKeyError, match="does not authenticate"):
        decode(codec, [Payload(metadata=p.metadata, data=bytes(data))])
    # Same id, another key (the id was reused for a new key): refused, not garbage.
    with pytest.raises(PayloadKeyError, match="does not authenticate"):
        decode(EncryptionCodec(ring(k1=K2)), [p])


def test_sealed_values_are_bound_to_their_job_and_rotate_like_payloads() -> None:
    job, other = uuid.uuid4(), uuid.uuid4()
    value = {"messages": [{"role": "user", "content": SECRET}]}
    sealed = ring().seal(value, sealed_input_context(job))
    assert SECRET.encode() not in sealed
    assert ring("k2", k1=K1, k2=K2).unseal(sealed, sealed_input_context(job)) == value
    with pytest.raises(PayloadKeyError, match="does not authenticate"):
        ring().unseal(sealed, sealed_input_context(other))  # another row's sealed input
    with pytest.raises(PayloadKeyError, match="does not have"):
        ring("k2", k2=K2).unseal(sealed, sealed_input_context(job))


@pytest.mark.parametrize(("keys", "active", "message"), [
    ({}, "", "no payload encryption key"),
    ({"k1": K1}, "k2", "is not one of"),
    ({"k1": base64.b64encode(os.urandom(16)).decode()}, "k1", "16 bytes"),
    ({"k1": "not base64!"}, "k1", "not valid base64"),
    ({"bad id": K1}, "bad id", "key id"),
])
def test_unusable_keys_are_refused_clearly(keys: dict[str, str], active: str, message: str) -> None:
    with pytest.raises(PayloadKeyError, match=message):
        KeyRing.parse(keys, active)


def test_keys_come_from_the_environment() -> None:
    settings = CommonSettings.model_validate({"payload_keys": {"k1": K1, "k2": K2}, "payload_key_id": "k2"})
    assert KeyRing.from_settings(settings).active == "k2"
    assert K1 not in repr(settings)  # secrets are not printed with the settings


def test_a_process_without_a_key_does_not_start() -> None:
    with pytest.raises(SystemExit) as exited:
        keys_or_exit("proc", CommonSettings.model_validate({"payload_keys": {}, "payload_key_id": ""}))
    assert str(exited.value.code).startswith("proc: no payload encryption key: set SWITCHYARD_PAYLOAD_KEYS")


def test_the_data_converter_encrypts_values_and_failure_messages() -> None:
    conv = data_converter(ring())
    spec = JobSpec(job_id="j", domain="llm", model="m", input={"prompt": SECRET}, priority_key=3, accepted_at_ms=0.0)
    encoded = asyncio.run(conv.encode([spec]))
    assert SECRET.encode() not in encoded[0].SerializeToString()
    assert asyncio.run(conv.decode(encoded, [JobSpec])) == [spec]
    failure = Failure()
    asyncio.run(conv.encode_failure(ApplicationError(f"engine said: {SECRET}", type="EngineError"), failure))
    assert SECRET.encode() not in failure.SerializeToString()
    decoded = asyncio.run(conv.decode_failure(failure))
    assert SECRET in str(decoded)
