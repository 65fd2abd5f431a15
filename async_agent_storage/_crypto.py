"""Encrypted payloads: a `KeyRing` (the current key and older ones), and the one encoding of an
encrypted value every driver stores where it keeps JSON.

What is encrypted: the JSON of `session_data`, `agent_data`, `team_data`, `workflow_data`,
`metadata`, `summary` and of each run, exactly as the codec wrote it (so the exact round-trip
rules of `_codec` hold). Ids, the owner, times, the version and the run ids stay in clear, so
listing, paging and ownership work unchanged.

An encrypted value is a JSON *string* (a payload in clear is always a JSON object, so the two
never mix up)::

    "aas1:<key id>:<base64 of nonce (12 bytes) + AES-GCM ciphertext and tag>"

stored as it is: SQLite TEXT, a PostgreSQL `jsonb` string, a MongoDB string. The key id is in
clear so that a store finds the key of any value, and `rotate_keys` the values of older keys,
without decrypting. The associated data binds each ciphertext to its session id and field
(``session_id NUL field``; runs use the field ``run``): a value moved to another session, or
to another field, does not decrypt (`EncryptionKeyError`), it never reads as another's data.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from . import _codec as codec
from ._encoding import JSON_FIELDS, EncodedAppend, EncodedSession
from .errors import ConfigurationError, EncryptionKeyError, SerializationError
from .models import Session

__all__ = [
    "PAYLOAD_FIELDS",
    "PREFIX",
    "KeyRing",
    "Reseal",
    "ResealRun",
    "aad",
    "key_id_of",
    "open_runs",
    "open_session",
    "open_value",
    "reseal_plan",
    "seal_append",
    "seal_session",
]

PAYLOAD_FIELDS: Final = ("session_data", *JSON_FIELDS)

PREFIX: Final = "aas1:"
_KEY_ID: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_NONCE: Final = 12
RUN_FIELD: Final = "run"


def aad(session_id: str, field: str) -> bytes:
    """The associated data of a value: its session and its field (ids never hold NUL)."""
    return f"{session_id}\x00{field}".encode()


def _check_key(key_id: object, key: object) -> tuple[str, bytes]:
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise ConfigurationError(
            f"key id {key_id!r} must be 1-64 characters of letters, digits, '_', '.' or '-'"
        )
    if not isinstance(key, bytes | bytearray) or len(key) not in (16, 24, 32):
        raise ConfigurationError(
            f"key {key_id!r} must be 16, 24 or 32 random bytes (AES-128/192/256), got "
            f"{type(key).__name__}{f' of {len(key)} bytes' if isinstance(key, bytes) else ''}"
        )
    return key_id, bytes(key)


class KeyRing:
    """The keys of an encrypting store: `current` (key id, key) encrypts every write; `old`
    (key id -> key) only decrypts values written before a rotation.

    ```python
    ring = KeyRing(current=("k2", key2), old={"k1": key1})
    store = SqliteStore(db_file="data.db", encryption=ring)
    ```

    Keys are 16, 24 or 32 random bytes (``os.urandom(32)``, or from a secrets manager); key ids
    are short names stored in clear beside each value. Needs the ``crypto`` extra.
    """

    __slots__ = ("_ciphers", "current_id")

    def __init__(self, current: tuple[str, bytes], old: Mapping[str, bytes] | None = None) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
            raise ConfigurationError(
                "encryption needs the 'crypto' extra (cryptography): "
                f"pip install 'async-agent-storage[crypto]' ({exc})"
            ) from exc
        if not isinstance(current, tuple) or len(current) != 2:
            raise ConfigurationError("current must be a (key id, key) pair")
        current_id, current_key = _check_key(*current)
        keys = {current_id: current_key}
        for key_id, key in (old or {}).items():
            checked_id, checked = _check_key(key_id, key)
            if checked_id in keys and keys[checked_id] != checked:
                raise ConfigurationError(f"key id {checked_id!r} is given two different keys")
            keys[checked_id] = checked
        self.current_id = current_id
        self._ciphers: dict[str, Any] = {kid: AESGCM(key) for kid, key in keys.items()}

    @property
    def key_ids(self) -> list[str]:
        """Every key id this ring decrypts, the current one first."""
        return [self.current_id, *(k for k in self._ciphers if k != self.current_id)]

    def __repr__(self) -> str:  # never the keys
        return f"KeyRing(current={self.current_id!r}, old={self.key_ids[1:]!r})"

    def seal(self, data: bytes, session_id: str, field: str) -> bytes:
        """The stored JSON of an encrypted value: `data` (the codec's JSON) under the current
        key, bound to `session_id` and `field`."""
        nonce = os.urandom(_NONCE)
        sealed = self._ciphers[self.current_id].encrypt(nonce, data, aad(session_id, field))
        text = base64.b64encode(nonce + sealed)
        return b'"' + PREFIX.encode() + self.current_id.encode() + b":" + text + b'"'

    def unseal(self, value: str, session_id: str, field: str) -> bytes:
        """The codec's JSON of an encrypted value (the decoded JSON string `value`)."""
        key_id, payload = _split(value, session_id, field)
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise EncryptionKeyError(
                f"session {session_id!r}: {field} is encrypted with key {key_id!r}, which is not "
                f"in this store's key ring ({', '.join(map(repr, self.key_ids))}); add it to "
                "`old`",
                key_id=key_id,
                session_id=session_id,
            )
        from cryptography.exceptions import InvalidTag

        try:
            # The tag authenticates the bytes: a damaged text fails there, not here.
            raw = binascii.a2b_base64(payload)
            data: bytes = cipher.decrypt(raw[:_NONCE], raw[_NONCE:], aad(session_id, field))
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise EncryptionKeyError(
                f"session {session_id!r}: key {key_id!r} does not decrypt {field}: a wrong key "
                "under that id, or a value altered or moved from another session",
                key_id=key_id,
                session_id=session_id,
            ) from exc
        return data


def _split(value: str, session_id: str, field: str) -> tuple[str, str]:
    if not value.startswith(PREFIX):
        raise SerializationError(
            f"session {session_id!r}: stored {field} is neither a JSON object nor an encrypted "
            "value"
        )
    key_id, sep, payload = value[len(PREFIX) :].partition(":")
    if not sep or not key_id:
        raise SerializationError(f"session {session_id!r}: stored {field} is a damaged envelope")
    return key_id, payload


def key_id_of(value: str) -> str | None:
    """The key id of an encrypted value, None for anything else."""
    if not value.startswith(PREFIX):
        return None
    key_id, sep, _ = value[len(PREFIX) :].partition(":")
    return key_id if sep else None


def open_value(value: str, ring: KeyRing | None, session_id: str, field: str) -> Any:
    """The decoded plaintext of an encrypted value read back (a JSON string), or
    `EncryptionKeyError` naming its key id when the store cannot decrypt it."""
    if ring is None:
        key_id, _ = _split(value, session_id, field)
        raise EncryptionKeyError(
            f"session {session_id!r}: {field} is encrypted with key {key_id!r} and this store "
            "has no key ring; open it with encryption=KeyRing(...)",
            key_id=key_id,
            session_id=session_id,
        )
    return codec.loads(ring.unseal(value, session_id, field), marked=True)


# --- sessions on their way out and back ------------------------------------------------------


def seal_session(enc: EncodedSession, ring: KeyRing) -> None:
    """Encrypt every payload of an encoded session in place (ids, owner and sizes stay). Every
    run is written again under the current key (none is skipped as unchanged)."""
    sid = enc.session_id
    enc.session_data = ring.seal(enc.session_data, sid, "session_data")
    enc.agent_data = (
        None if enc.agent_data is None else ring.seal(enc.agent_data, sid, "agent_data")
    )
    enc.team_data = None if enc.team_data is None else ring.seal(enc.team_data, sid, "team_data")
    enc.workflow_data = (
        None if enc.workflow_data is None else ring.seal(enc.workflow_data, sid, "workflow_data")
    )
    enc.metadata = None if enc.metadata is None else ring.seal(enc.metadata, sid, "metadata")
    enc.summary = None if enc.summary is None else ring.seal(enc.summary, sid, "summary")
    for run in enc.runs:
        run.body = ring.seal(run.body, sid, RUN_FIELD)
        run.unchanged = False


def seal_append(append: EncodedAppend, ring: KeyRing) -> EncodedAppend:
    """An encoded append with its state and runs encrypted (its `state_patch` must be None: the
    store merges patches of encrypted state itself, see `StoreBase.append_runs`)."""
    sid = append.session_id
    for run in append.runs:
        run.body = ring.seal(run.body, sid, RUN_FIELD)
    if append.session_data is None:
        return append
    return append._replace(session_data=ring.seal(append.session_data, sid, "session_data"))


def open_session(session: Session, ring: KeyRing | None) -> Session:
    """A session as a driver read it, with its encrypted values (JSON strings) decrypted in
    place. A session in clear costs a few type checks."""
    values = session.__dict__
    sid: str = values["session_id"]
    for name in PAYLOAD_FIELDS:
        value = values[name]
        if type(value) is str:
            values[name] = open_value(value, ring, sid, name)
    runs = values["runs"]
    if runs and str in map(type, runs):
        values["runs"] = open_runs(runs, ring, sid)
    return session


def open_runs(runs: list[Any], ring: KeyRing | None, session_id: str) -> list[Any]:
    """Runs as read, the encrypted ones decrypted (a plain list: their stored text is not the
    text a write would store, so none may be skipped as unchanged)."""
    return [
        open_value(run, ring, session_id, RUN_FIELD) if type(run) is str else run for run in runs
    ]


# --- key rotation ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResealRun:
    """A run to store again: its id, its value as read (an encrypted JSON string, or the object
    in clear), and the JSON to store instead."""

    run_id: str
    old: Any
    new: bytes


@dataclass(frozen=True, slots=True)
class Reseal:
    """What `rotate_keys` writes for one session (the `_reseal` hook): payload fields (name ->
    new JSON) and runs re-encrypted under the current key, only while the session is still at
    `version`; its version, `updated_at` and expiry do not change."""

    session_id: str
    version: int
    fields: dict[str, bytes]
    runs: list[ResealRun]


def reseal_plan(session: Session, ring: KeyRing) -> Reseal | None:
    """The values of a session as read (not yet opened) that are not under the current key
    (older keys, or in clear), decrypted and encrypted again; None when all are current."""
    values = session.__dict__
    sid: str = values["session_id"]
    fields: dict[str, bytes] = {}
    for name in PAYLOAD_FIELDS:
        value = values[name]
        if value is not None and not _is_current(value, ring):
            fields[name] = ring.seal(_plain(value, ring, sid, name), sid, name)
    runs = [
        ResealRun(run_id, run, ring.seal(_plain(run, ring, sid, RUN_FIELD), sid, RUN_FIELD))
        for run_id, run in zip(values["run_ids"], values["runs"], strict=True)
        if not _is_current(run, ring)
    ]
    if not fields and not runs:
        return None
    return Reseal(sid, values["version"], fields, runs)


def _is_current(value: Any, ring: KeyRing) -> bool:
    return type(value) is str and key_id_of(value) == ring.current_id


def _plain(value: Any, ring: KeyRing, session_id: str, field: str) -> bytes:
    if type(value) is str:
        return ring.unseal(value, session_id, field)
    return codec.dumps(value, path=field)
