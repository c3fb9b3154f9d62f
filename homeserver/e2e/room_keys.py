"""Server-side key backups (spec: client-server API "Server-side key backups").

A user's backup is a series of versions, each with an `algorithm` and `auth_data` (how the
client encrypts the keys; opaque here apart from its shape), numbered from 1 per user and
never reused. The current version is the newest one not deleted; keys can only be written to
it, and may be read or deleted from any version that exists. Each stored session key is
replaced by an uploaded one only when the spec's rules prefer it (`should_replace`). The
`etag` of a version changes whenever its keys change; `count` is how many it holds.

Error choices, where the spec leaves room:
- An upload to a version that is not the current one is `403 M_WRONG_ROOM_KEYS_VERSION` with
  `current_version`, whether that version is older, deleted or never existed: the issue asks
  for this error for "a backup version that does not exist or is not the current one", and
  the client's remedy is the same (Synapse answers 404 for a version that never existed).
  With no backup at all there is no current version to name: `404 M_NOT_FOUND`.
- Reading or deleting keys of a version that does not exist (or was deleted) is
  `404 M_NOT_FOUND`; of an older version that still exists, allowed (Synapse does the same;
  the spec only restricts writes to the current version).
- A version is an opaque string to clients; ours are decimal numbers, and anything else
  names no version.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import check_room_id
from homeserver.linearizer import Linearizer
from storage.stores.room_keys import BackupKeysState, RoomKey, RoomKeysStore

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]

CURVE25519_AES_SHA2 = "m.megolm_backup.v1.curve25519-aes-sha2"
# The algorithms the spec defines (an enum in key_backup.yaml); others are refused.
ALGORITHMS = frozenset({CURVE25519_AES_SHA2})
# Like every identifier in the spec; megolm session IDs are 43 characters.
MAX_SESSION_ID_BYTES = 255
_VERSION = re.compile(r"[1-9][0-9]{0,17}")


def should_replace(stored: RoomKey, new: RoomKey) -> bool:
    """Whether an uploaded key replaces the stored key of the same session (spec): a
    verified key beats an unverified one; then the lower `first_message_index` wins; then the
    lower `forwarded_count`. On a tie the stored key stays."""
    if stored.is_verified != new.is_verified:
        return new.is_verified
    if stored.first_message_index != new.first_message_index:
        return new.first_message_index < stored.first_message_index
    return new.forwarded_count < stored.forwarded_count


def parse_version(version: str) -> int | None:
    """Our number for a version string, or None if it cannot name one of ours."""
    return int(version) if _VERSION.fullmatch(version) else None


def check_auth_data(algorithm: str, auth_data: JsonDict) -> None:
    """400 unless `algorithm` is one we know and `auth_data` has the shape it requires."""
    if algorithm not in ALGORITHMS:
        raise MatrixError(
            400, Codes.INVALID_PARAM, f"Unsupported backup algorithm: {algorithm[:100]!r}"
        )
    # m.megolm_backup.v1.curve25519-aes-sha2: `public_key` (required) and `signatures`.
    public_key = auth_data.get("public_key")
    if not isinstance(public_key, str) or not public_key:
        raise MatrixError(400, Codes.BAD_JSON, "auth_data.public_key must be a non-empty string")
    signatures = auth_data.get("signatures")
    if signatures is not None and not (
        isinstance(signatures, dict)
        and all(
            isinstance(by_key, dict) and all(isinstance(s, str) for s in by_key.values())
            for by_key in signatures.values()
        )
    ):
        raise MatrixError(
            400, Codes.BAD_JSON, "auth_data.signatures must map user IDs to key IDs to strings"
        )


def check_session_id(session_id: str) -> None:
    if not session_id or len(session_id.encode("utf-8")) > MAX_SESSION_ID_BYTES:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid session ID: {session_id[:100]!r}")


def _state_json(state: BackupKeysState) -> JsonDict:
    return {"etag": str(state.etag), "count": state.count}


def _unknown_version() -> MatrixError:
    return MatrixError(404, Codes.NOT_FOUND, "Unknown backup version")


def _not_current(current_version: int | None) -> MatrixError:
    """The refusal of an upload to a version that is not the current one."""
    if current_version is None:
        return MatrixError(404, Codes.NOT_FOUND, "No current backup version")
    return MatrixError(
        403,
        Codes.WRONG_ROOM_KEYS_VERSION,
        "Wrong backup version.",
        current_version=str(current_version),
    )


class RoomKeysHandler:
    def __init__(self, store: RoomKeysStore) -> None:
        self._store = store
        # One write at a time per user in this process. The store's transactions are correct
        # without it, but on PostgreSQL uploads from all of a user's devices at once would
        # conflict, and enough of them together would run out of retries (a 500).
        self._writers = Linearizer("room_keys")

    # ----- versions ------------------------------------------------------------------------

    async def create_version(self, user_id: str, algorithm: str, auth_data: JsonDict) -> str:
        check_auth_data(algorithm, auth_data)
        async with self._writers.queue(user_id):
            version = await self._store.create_version(user_id, algorithm, auth_data)
        logger.info("created key backup version %d for %s", version, user_id)
        return str(version)

    async def get_version(self, user_id: str, version: str | None = None) -> JsonDict:
        """The current version (`version` None) or a given one: algorithm, auth_data, count,
        etag, version. 404 M_NOT_FOUND if there is none."""
        number = None if version is None else parse_version(version)
        if version is not None and number is None:
            raise _unknown_version()
        info = await self._store.get_version(user_id, number)
        if info is None:
            if version is None:
                raise MatrixError(404, Codes.NOT_FOUND, "No current backup version")
            raise _unknown_version()
        return {
            "algorithm": info.algorithm,
            "auth_data": info.auth_data,
            "count": info.count,
            "etag": str(info.etag),
            "version": str(info.version),
        }

    async def update_version(
        self,
        user_id: str,
        version: str,
        algorithm: str,
        auth_data: JsonDict,
        body_version: str | None = None,
    ) -> None:
        """Replace a version's auth_data. The algorithm cannot change, and a `version` in the
        body must be the one in the path (400 M_INVALID_PARAM)."""
        if body_version is not None and body_version != version:
            raise MatrixError(400, Codes.INVALID_PARAM, "Version in body does not match")
        number = parse_version(version)
        if number is None:
            raise _unknown_version()
        async with self._writers.queue(user_id):
            info = await self._store.get_version(user_id, number)
            if info is None:
                raise _unknown_version()
            if algorithm != info.algorithm:
                raise MatrixError(400, Codes.INVALID_PARAM, "Algorithm does not match")
            check_auth_data(algorithm, auth_data)
            if not await self._store.update_auth_data(user_id, number, auth_data):
                raise _unknown_version()

    async def delete_version(self, user_id: str, version: str) -> None:
        """Delete a version and its keys. Deleting it again succeeds (spec); a version the
        user never had is 404 M_NOT_FOUND."""
        number = parse_version(version)
        if number is None:
            raise _unknown_version()
        async with self._writers.queue(user_id):
            if not await self._store.delete_version(user_id, number):
                raise _unknown_version()
        logger.info("deleted key backup version %d of %s", number, user_id)

    # ----- keys ----------------------------------------------------------------------------

    async def upload_keys(
        self, user_id: str, version: str, rooms: Mapping[str, Mapping[str, RoomKey]]
    ) -> JsonDict:
        """Merge `rooms` ({room_id: {session_id: key}}) into the current version; returns its
        `etag` and `count`."""
        for room_id, sessions in rooms.items():
            check_room_id(room_id)
            for session_id in sessions:
                check_session_id(session_id)
        number = parse_version(version)
        if number is None:
            current = await self._store.get_version(user_id)
            raise _not_current(current.version if current else None)
        async with self._writers.queue(user_id):
            result = await self._store.upload_keys(user_id, number, rooms, should_replace)
        if result.state is None:
            raise _not_current(result.current_version)
        return _state_json(result.state)

    async def get_keys(
        self, user_id: str, version: str, room_id: str | None = None
    ) -> dict[str, dict[str, RoomKey]]:
        """All the version's keys, or one room's ({room_id: {session_id: key}}; empty if
        there are none). 404 M_NOT_FOUND for an unknown version."""
        if room_id is not None:
            check_room_id(room_id)
        number = parse_version(version)
        keys = None if number is None else await self._store.get_keys(user_id, number, room_id)
        if keys is None:
            raise _unknown_version()
        return keys

    async def get_key(self, user_id: str, version: str, room_id: str, session_id: str) -> RoomKey:
        """One session's key. 404 M_NOT_FOUND for an unknown version or session."""
        check_room_id(room_id)
        check_session_id(session_id)
        number = parse_version(version)
        keys = (
            None
            if number is None
            else await self._store.get_keys(user_id, number, room_id, session_id)
        )
        if keys is None:
            raise _unknown_version()
        key = keys.get(room_id, {}).get(session_id)
        if key is None:
            raise MatrixError(404, Codes.NOT_FOUND, "No backed-up key for this session")
        return key

    async def delete_keys(
        self,
        user_id: str,
        version: str,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> JsonDict:
        """Delete the version's keys: all, one room's, or one session's. Returns `etag` and
        `count`; 404 M_NOT_FOUND for an unknown version."""
        if room_id is not None:
            check_room_id(room_id)
        if session_id is not None:
            check_session_id(session_id)
        number = parse_version(version)
        if number is None:
            raise _unknown_version()
        async with self._writers.queue(user_id):
            state = await self._store.delete_keys(user_id, number, room_id, session_id)
        if state is None:
            raise _unknown_version()
        return _state_json(state)
