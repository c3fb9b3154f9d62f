"""End-to-end encryption keys (client-server API "Key management API", "Cross-signing";
server-server API "End-to-End Encryption"): device identity keys, one-time and fallback
keys, cross-signing keys and the signatures users add to keys.

The rules, in the order they are checked:

- **Device keys** (`/keys/upload`): `user_id` and `device_id` must be the requester's
  (400 M_BAD_JSON, as Synapse answers); `algorithms`, `keys` and `signatures` must have the
  spec's types (400 M_BAD_JSON, checked by the servlet). The keys themselves and the
  device's signature of them are not checked, and new keys replace the stored ones: the
  spec asks the client to sign its keys and the clients that download them to check them,
  not the server, and Synapse stores what it is given (SyTest uploads placeholder keys).
  Only a real change tells anyone.
- **One-time and fallback keys** are named `<algorithm>:<key_id>` (400 M_BAD_JSON
  otherwise); `signed_*` keys are objects signed by the device's ed25519 key (400
  M_INVALID_SIGNATURE), `curve25519` keys 32 bytes of unpadded base64. A one-time key ID
  already held with other contents is 400 M_INVALID_PARAM (the same key again is fine). A
  new fallback key replaces the device's fallback key for its algorithm and is unused.
  Everything in an upload is checked before anything is stored.
- **Claims** hand each one-time key out once (oldest upload first), then the fallback key
  (marked used, so sync can say so). Unknown users, devices and algorithms are simply
  missing from the answer.
- **Queries** answer local users from the database and remote ones from the device-list
  cache (`DeviceListHandler`) or, failing that, their server's `user/keys/query`, one
  request per server in parallel, bounded by the client's `timeout`; a server that does
  not answer is named in `failures`.
- **Cross-signing keys** must name the user, the right usage and exactly one
  `ed25519:<public key>`; the self-signing and user-signing keys must be signed by the
  master key (the one uploaded with them, else the stored one: 400 M_MISSING_PARAM when
  there is none), and no public key may be one of the user's device IDs (403 M_FORBIDDEN).
  The servlet asks for user-interactive auth unless this is the first master key or
  nothing changes (`cross_signing_upload_needs_auth`).
- **Signatures** (`/keys/signatures/upload`): of the user's own devices by their
  self-signing key, of their own master key by their devices, of other users' master keys
  by their user-signing key. The signed object must be the stored key (plus signatures).
  Each failure is reported per key in `failures`; the others are stored.
- **Who sees which signature**: a signature by the key's owner is public; a signature by
  another user (their user-signing key) is shown to that user only.

Whoever tracks device lists (`device_lists`, joined by `homeserver/areas/e2e.py`) is told after each change.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer

from federation.errors import FederationError, HttpResponseError
from homeserver.clock import Clock
from homeserver.e2e.signatures import (
    ED25519,
    InvalidKey,
    add_signatures,
    cross_signing_public_key,
    decode_public_key,
    is_signed_by,
    signatures_of,
    without_signatures,
)
from homeserver.errors import Codes, MatrixError
from homeserver.events.canonical import encode_canonical_json
from homeserver.identifiers import split_user_id
from homeserver.linearizer import Linearizer
from storage.stores.e2e_keys import (
    MASTER,
    SELF_SIGNING,
    USER_SIGNING,
    CrossSigningKey,
    E2eKeyStore,
    KeySignature,
)

if TYPE_CHECKING:
    from storage.stores.devices import DeviceStore

logger = logging.getLogger(__name__)

FEDERATION_QUERY_PATH = "/_matrix/federation/v1/user/keys/query"
FEDERATION_CLAIM_PATH = "/_matrix/federation/v1/user/keys/claim"
# The spec's recommended default for a client's `timeout`, and our ceiling for it.
DEFAULT_TIMEOUT_MS = 10_000
MAX_TIMEOUT_MS = 60_000
# Clients (Element among them) read a missing count as "unknown": always report this one.
DEFAULT_COUNTED_ALGORITHM = "signed_curve25519"
# Key names and IDs are short; anything longer is not a key.
MAX_KEY_NAME_LENGTH = 255

# Request body field -> key type, for /keys/device_signing/upload.
CROSS_SIGNING_FIELDS = {
    "master_key": MASTER,
    "self_signing_key": SELF_SIGNING,
    "user_signing_key": USER_SIGNING,
}


class DeviceListUpdates(Protocol):
    """What this handler needs of the device-list tracker (`DeviceListHandler`)."""

    async def device_changed(
        self, user_id: str, device_ids: list[str], deleted: bool = False
    ) -> None: ...

    async def signing_keys_changed(self, user_id: str) -> None: ...

    async def get_cached_remote_keys(self, user_id: str, wait_ms: int = ...) -> Any: ...


def _bad_json(message: str) -> MatrixError:
    return MatrixError(400, Codes.BAD_JSON, message)


def _invalid_signature(message: str) -> MatrixError:
    return MatrixError(400, Codes.INVALID_SIGNATURE, message)


def _canonical(obj: Any) -> str:
    return encode_canonical_json(obj).decode("utf-8")


def _failure(e: Exception) -> dict[str, Any]:
    """A `failures` entry for a server that could not be asked (as Synapse reports them)."""
    if isinstance(e, HttpResponseError):
        return {"status": e.code, "message": str(e)}
    return {"status": 503, "message": str(e)}


def _key_failure(e: MatrixError) -> dict[str, Any]:
    return {"errcode": e.errcode, "error": e.message, "status": e.http_code}


def split_key_name(name: str, what: str) -> tuple[str, str]:
    """`<algorithm>:<key_id>` -> (algorithm, key ID), or 400 M_BAD_JSON."""
    algorithm, sep, key_id = name.partition(":")
    if not sep or not algorithm or not key_id or ":" in key_id or len(name) > MAX_KEY_NAME_LENGTH:
        raise _bad_json(f"Invalid {what} name {name[:100]!r}: expected <algorithm>:<key_id>")
    return algorithm, key_id


class E2eKeysHandler:
    def __init__(
        self,
        server_name: str,
        clock: Clock,
        store: E2eKeyStore,
        device_store: DeviceStore,
        federation_client: Any,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._store = store
        self._device_store = device_store
        self._federation = federation_client
        # Joined by `build_e2e` (the tracker needs these keys too); None: nobody to tell.
        self.device_lists: DeviceListUpdates | None = None
        # One upload per device at a time: one-time key conflicts are checked, then stored.
        self._upload_linearizer = Linearizer("e2e_keys_upload")

    def _server_of(self, user_id: object) -> str | None:
        """The server of a well-formed user ID, else None (such users are ignored)."""
        if not isinstance(user_id, str):
            return None
        try:
            return split_user_id(user_id)[1]
        except MatrixError:
            return None

    # ----- telling the device-list tracker -----------------------------------------------

    async def _device_changed(self, user_id: str, device_ids: list[str]) -> None:
        if self.device_lists is not None and device_ids:
            await self.device_lists.device_changed(user_id, device_ids)

    async def _signing_keys_changed(self, user_id: str) -> None:
        if self.device_lists is not None:
            await self.device_lists.signing_keys_changed(user_id)

    # ----- upload -------------------------------------------------------------------------

    async def upload_keys(
        self, user_id: str, device_id: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """POST /keys/upload: device keys, one-time keys and fallback keys of the
        requester's device. Returns `{"one_time_key_counts": {...}}`."""
        async with self._upload_linearizer.queue((user_id, device_id)):
            device_keys = body.get("device_keys")
            new_device_keys = None
            stored_json = await self._store.get_device_keys(user_id, device_id)
            stored = json.loads(stored_json) if stored_json is not None else None
            if device_keys is not None:
                new_device_keys = self._check_device_keys(user_id, device_id, device_keys)
            signing_key = self._device_ed25519(device_id, new_device_keys or stored)

            one_time_keys = self._check_one_time_keys(
                user_id, device_id, body.get("one_time_keys"), signing_key, "one-time key"
            )
            fallback_keys = self._check_one_time_keys(
                user_id, device_id, body.get("fallback_keys"), signing_key, "fallback key"
            )
            algorithms = [algorithm for algorithm, _, _ in fallback_keys]
            if len(set(algorithms)) != len(algorithms):
                raise _bad_json("At most one fallback key per algorithm may be uploaded")
            if one_time_keys:
                existing = await self._store.get_one_time_keys(
                    user_id, device_id, [(a, k) for a, k, _ in one_time_keys]
                )
                for algorithm, key_id, key in one_time_keys:
                    held = existing.get((algorithm, key_id))
                    if held is not None and not _same_one_time_key(json.loads(held), key):
                        raise MatrixError(
                            400,
                            Codes.INVALID_PARAM,
                            f"One-time key {algorithm}:{key_id} already exists with other contents",
                        )

            now = self._clock.time_msec()
            changed = False
            if new_device_keys is not None:
                changed = await self._store.set_device_keys(
                    user_id, device_id, _canonical(new_device_keys), now
                )
            await self._store.add_one_time_keys(
                user_id,
                device_id,
                [(a, k, _canonical(v)) for a, k, v in one_time_keys],
                now,
            )
            for algorithm, key_id, key in fallback_keys:
                await self._store.set_fallback_key(
                    user_id, device_id, algorithm, key_id, _canonical(key)
                )
        if changed:
            logger.info("device keys of %s/%s uploaded", user_id, device_id)
            await self._device_changed(user_id, [device_id])
        return {"one_time_key_counts": await self.count_one_time_keys(user_id, device_id)}

    def _check_device_keys(
        self,
        user_id: str,
        device_id: str,
        device_keys: Any,
    ) -> dict[str, Any]:
        if not isinstance(device_keys, dict):
            raise _bad_json("'device_keys' must be an object")
        if device_keys.get("user_id") != user_id:
            raise _bad_json(
                "Provided `user_id` in `device_keys` does not match that of the authenticated user"
            )
        if device_keys.get("device_id") != device_id:
            raise _bad_json(
                "Provided `device_id` in `device_keys` does not match that of the"
                " authenticated user device"
            )
        # The servlet checked the shape of the spec's DeviceKeys (as Synapse does). The keys
        # and the device's signature of them are the clients' business: the clients that
        # download them check them, and Synapse stores them unchecked (and lets a device's
        # keys change), so we do too.
        keys = device_keys.get("keys")
        if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
            raise _bad_json("'device_keys.keys' must map key IDs to strings")
        return {k: v for k, v in device_keys.items() if k != "unsigned"}

    def _device_ed25519(self, device_id: str, device_keys: dict[str, Any] | None) -> str | None:
        if device_keys is None:
            return None
        key = (device_keys.get("keys") or {}).get(f"{ED25519}:{device_id}")
        return key if isinstance(key, str) else None

    def _check_one_time_keys(
        self,
        user_id: str,
        device_id: str,
        keys: Any,
        signing_key: str | None,
        what: str,
    ) -> list[tuple[str, str, Any]]:
        """(algorithm, key ID, key) of each well-formed key, or 400."""
        if keys is None:
            return []
        if not isinstance(keys, dict):
            raise _bad_json(f"The {what}s must be an object")
        checked = []
        for name, key in keys.items():
            algorithm, key_id = split_key_name(name, what)
            if isinstance(key, str):
                if algorithm.startswith("signed_"):
                    raise _bad_json(f"The {what} {name[:100]!r} must be a signed object")
                public_key: object = key
            elif isinstance(key, dict):
                public_key = key.get("key")
                if not isinstance(public_key, str):
                    raise _bad_json(f"The {what} {name[:100]!r} has no 'key' string")
                if algorithm.startswith("signed_"):
                    if signing_key is None:
                        raise _invalid_signature(
                            f"Cannot check the signature of {what} {name[:100]!r}:"
                            " the device has no keys"
                        )
                    if not is_signed_by(key, user_id, f"{ED25519}:{device_id}", signing_key):
                        raise _invalid_signature(
                            f"The {what} {name[:100]!r} is not signed by the device's key"
                        )
            else:
                raise _bad_json(f"The {what} {name[:100]!r} must be a string or an object")
            if algorithm in ("curve25519", "signed_curve25519"):
                try:
                    decode_public_key(public_key)
                except InvalidKey as e:
                    raise _bad_json(f"The {what} {name[:100]!r}: {e}") from None
            checked.append((algorithm, key_id, key))
        return checked

    async def count_one_time_keys(self, user_id: str, device_id: str) -> dict[str, int]:
        """Unclaimed one-time keys of the device by algorithm (for /keys/upload and sync;
        from memory after the first read, see `E2eKeyStore.get_key_counts`)."""
        counts = await self._store.get_key_counts(user_id, device_id)
        return {DEFAULT_COUNTED_ALGORITHM: 0, **counts.one_time_keys}

    async def unused_fallback_key_types(self, user_id: str, device_id: str) -> list[str]:
        """Algorithms whose fallback key has not been handed out yet (for sync)."""
        counts = await self._store.get_key_counts(user_id, device_id)
        return list(counts.unused_fallback_key_types)

    # ----- query --------------------------------------------------------------------------

    async def query_keys(
        self,
        requester_user_id: str,
        device_keys: Mapping[str, Collection[str]],
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> dict[str, Any]:
        """POST /keys/query: the devices (all of a user's for an empty list) and
        cross-signing keys of these users, as the requester may see them."""
        local: dict[str, list[str]] = {}
        remote: dict[str, dict[str, list[str]]] = {}
        for user_id, device_ids in device_keys.items():
            server = self._server_of(user_id)
            if server is None:
                continue
            if server == self._server_name:
                local[user_id] = list(device_ids)
            else:
                remote.setdefault(server, {})[user_id] = list(device_ids)

        result = await self._local_keys(local, requester_user_id)
        failures: dict[str, Any] = {}

        # The device-list cache first (it may fetch a list it should track, within the
        # timeout), then the users' servers for whatever it cannot answer, in the time left.
        timeout_ms = min(max(timeout_ms, 1), MAX_TIMEOUT_MS)
        start = self._clock.time_msec()
        to_fetch: dict[str, dict[str, list[str]]] = {}

        async def from_cache(server: str, user_id: str, device_ids: list[str]) -> None:
            cached = None
            if self.device_lists is not None:
                cached = await self.device_lists.get_cached_remote_keys(user_id, wait_ms=timeout_ms)
            if cached is None:
                to_fetch.setdefault(server, {})[user_id] = device_ids
            else:
                _merge_remote_user(result, user_id, device_ids, _cached_as_answer(user_id, cached))

        await _all(
            from_cache(server, user_id, device_ids)
            for server, users in remote.items()
            for user_id, device_ids in users.items()
        )
        timeout_ms = max(timeout_ms - (self._clock.time_msec() - start), 1)

        async def fetch(server: str, users: dict[str, list[str]]) -> None:
            try:
                answer = await self._federation.post_json(
                    server, FEDERATION_QUERY_PATH, {"device_keys": users}, timeout_ms=timeout_ms
                )
            except FederationError as e:
                logger.info("keys/query of %d users on %s failed: %s", len(users), server, e)
                failures[server] = _failure(e)
                return
            if not isinstance(answer, dict) or not isinstance(answer.get("device_keys"), dict):
                failures[server] = {"status": 502, "message": f"{server} gave a malformed answer"}
                return
            for user_id, device_ids in users.items():
                _merge_remote_user(result, user_id, device_ids, answer)

        await _all(fetch(server, users) for server, users in to_fetch.items())

        # Our requester's own signatures of remote users' master keys (user-signing key).
        remote_users = [user for users in remote.values() for user in users]
        if remote_users and result["master_keys"]:
            signatures = await self._store.get_signatures(remote_users)
            for user_id in remote_users:
                master = result["master_keys"].get(user_id)
                if master is not None:
                    result["master_keys"][user_id] = self._with_visible_signatures(
                        master, user_id, signatures, requester_user_id, _public_key_of(master)
                    )
        result["failures"] = failures
        return result

    async def query_local_keys(self, query: Mapping[str, Collection[str]]) -> dict[str, Any]:
        """Local users' keys as any server may see them (federation `user/keys/query`):
        device_keys, master_keys, self_signing_keys. Other servers' users are ignored."""
        local = {}
        for user_id, device_ids in query.items():
            if self._server_of(user_id) == self._server_name:
                local[user_id] = list(device_ids)
        result = await self._local_keys(local, None)
        del result["user_signing_keys"]
        return result

    async def get_local_device_keys(self, user_id: str) -> dict[str, dict[str, Any]]:
        """device ID -> device keys (with their public signatures, no `unsigned`) of a
        local user, for the federation `user/devices` answer."""
        result = await self._local_keys({user_id: []}, None)
        devices: dict[str, dict[str, Any]] = result["device_keys"].get(user_id, {})
        return {
            device_id: {k: v for k, v in keys.items() if k != "unsigned"}
            for device_id, keys in devices.items()
        }

    async def get_local_cross_signing_keys(
        self, user_id: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(master key, self-signing key) of a local user, with their public signatures."""
        result = await self._local_keys({user_id: []}, None)
        return result["master_keys"].get(user_id), result["self_signing_keys"].get(user_id)

    async def _local_keys(
        self, query: Mapping[str, list[str]], requester_user_id: str | None
    ) -> dict[str, Any]:
        """Keys of local users; every queried user is in `device_keys`, if only as {}."""
        device_keys: dict[str, dict[str, Any]] = {user_id: {} for user_id in query}
        result: dict[str, Any] = {
            "device_keys": device_keys,
            "master_keys": {},
            "self_signing_keys": {},
            "user_signing_keys": {},
        }
        if not query:
            return result
        stored_devices = await self._store.get_device_keys_for_users(list(query))
        cross_signing = await self._store.get_cross_signing_keys(list(query))
        signatures = await self._store.get_signatures(list(query))
        for user_id, wanted in query.items():
            for device_id, stored in stored_devices.get(user_id, {}).items():
                if wanted and device_id not in wanted:
                    continue
                keys = self._with_visible_signatures(
                    json.loads(stored.key_json), user_id, signatures, requester_user_id, device_id
                )
                unsigned = {}
                if stored.display_name is not None:
                    unsigned["device_display_name"] = stored.display_name
                device_keys[user_id][device_id] = {**keys, "unsigned": unsigned}
            user_keys = cross_signing.get(user_id, {})
            for key_type, field in (
                (MASTER, "master_keys"),
                (SELF_SIGNING, "self_signing_keys"),
                (USER_SIGNING, "user_signing_keys"),
            ):
                key = user_keys.get(key_type)
                if key is None:
                    continue
                if key_type == USER_SIGNING and user_id != requester_user_id:
                    continue
                result[field][user_id] = self._with_visible_signatures(
                    json.loads(key.key_json),
                    user_id,
                    signatures,
                    requester_user_id,
                    key.key_id.partition(":")[2],
                )
        return result

    def _with_visible_signatures(
        self,
        key: dict[str, Any],
        owner: str,
        signatures: list[KeySignature],
        requester_user_id: str | None,
        target_device_id: str | None,
    ) -> dict[str, Any]:
        """`key` with the stored signatures of it that `requester_user_id` may see: the
        owner's, and the requester's own."""
        if target_device_id is None:
            return key
        visible = {owner, requester_user_id}
        return add_signatures(
            key,
            [
                (s.user_id, s.key_id, s.signature)
                for s in signatures
                if s.target_user_id == owner
                and s.target_device_id == target_device_id
                and s.user_id in visible
            ],
        )

    # ----- claim --------------------------------------------------------------------------

    async def claim_keys(
        self,
        one_time_keys: Mapping[str, Mapping[str, str]],
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> dict[str, Any]:
        """POST /keys/claim: one key per (user, device, algorithm), local or remote."""
        local: dict[str, dict[str, str]] = {}
        remote: dict[str, dict[str, dict[str, str]]] = {}
        for user_id, devices in one_time_keys.items():
            server = self._server_of(user_id)
            if server is None:
                continue
            if server == self._server_name:
                local[user_id] = dict(devices)
            else:
                remote.setdefault(server, {})[user_id] = dict(devices)

        claimed = await self.claim_local_keys(local)
        failures: dict[str, Any] = {}
        timeout_ms = min(max(timeout_ms, 1), MAX_TIMEOUT_MS)

        async def claim(server: str, query: dict[str, dict[str, str]]) -> None:
            try:
                answer = await self._federation.post_json(
                    server, FEDERATION_CLAIM_PATH, {"one_time_keys": query}, timeout_ms=timeout_ms
                )
            except FederationError as e:
                logger.info("keys/claim of %d users on %s failed: %s", len(query), server, e)
                failures[server] = _failure(e)
                return
            keys = answer.get("one_time_keys") if isinstance(answer, dict) else None
            if not isinstance(keys, dict):
                failures[server] = {"status": 502, "message": f"{server} gave a malformed answer"}
                return
            for user_id, devices in query.items():
                answered = keys.get(user_id)
                if not isinstance(answered, dict):
                    continue
                for device_id, algorithm in devices.items():
                    device_keys = answered.get(device_id)
                    if not isinstance(device_keys, dict):
                        continue
                    # One key, of the algorithm asked for.
                    for name, key in device_keys.items():
                        if isinstance(name, str) and name.startswith(f"{algorithm}:"):
                            claimed.setdefault(user_id, {})[device_id] = {name: key}
                            break

        await _all(claim(server, query) for server, query in remote.items())
        return {"one_time_keys": claimed, "failures": failures}

    async def claim_local_keys(
        self, query: Mapping[str, Mapping[str, str]]
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """Claim keys of local users (other servers' users are ignored): user -> device ->
        {"<algorithm>:<key_id>": key}. Also serves federation `user/keys/claim`."""
        wanted = [
            (user_id, device_id, algorithm)
            for user_id, devices in query.items()
            if self._server_of(user_id) == self._server_name
            for device_id, algorithm in devices.items()
        ]
        if not wanted:
            return {}
        claimed = await self._store.claim_keys(wanted)
        result: dict[str, dict[str, dict[str, Any]]] = {}
        for (user_id, device_id, _), key in claimed.items():
            result.setdefault(user_id, {})[device_id] = {key.key_id: json.loads(key.key_json)}
        return result

    # ----- cross-signing keys -------------------------------------------------------------

    async def cross_signing_upload_needs_auth(self, user_id: str, body: Mapping[str, Any]) -> bool:
        """Whether this /keys/device_signing/upload must go through user-interactive auth:
        yes once the user has a master key, unless every key uploaded is exactly the one
        stored (a retried upload)."""
        stored = (await self._store.get_cross_signing_keys([user_id])).get(user_id, {})
        if MASTER not in stored:
            return False
        for field, key_type in CROSS_SIGNING_FIELDS.items():
            if field not in body:
                continue
            key = body[field]
            held = stored.get(key_type)
            if held is None or not isinstance(key, dict):
                return True
            if json.loads(held.key_json) != without_unsigned(key):
                return True
        return False

    async def upload_cross_signing_keys(self, user_id: str, body: Mapping[str, Any]) -> None:
        """POST /keys/device_signing/upload, once the servlet has done any auth needed."""
        uploads: dict[str, tuple[dict[str, Any], str]] = {}
        for field, key_type in CROSS_SIGNING_FIELDS.items():
            key = body.get(field)
            if key is None:
                continue
            uploads[key_type] = (key, self._check_cross_signing_key(user_id, key, key_type))

        if MASTER in uploads:
            master_key_id = uploads[MASTER][1]
        else:
            stored = (await self._store.get_cross_signing_keys([user_id])).get(user_id, {})
            if MASTER not in stored:
                raise MatrixError(400, Codes.MISSING_PARAM, "No master key available")
            master_key_id = stored[MASTER].key_id
        master_public = master_key_id.partition(":")[2]
        for key_type in (SELF_SIGNING, USER_SIGNING):
            if key_type in uploads and not is_signed_by(
                uploads[key_type][0], user_id, master_key_id, master_public
            ):
                raise _invalid_signature(f"The {key_type} key must be signed by the master key")

        device_ids = {d.device_id for d in await self._device_store.get_devices(user_id)}
        for _key, key_id in uploads.values():
            if key_id.partition(":")[2] in device_ids:
                raise MatrixError(403, Codes.FORBIDDEN, "Key ID in use: a device has this ID")

        changed = await self._store.set_cross_signing_keys(
            user_id,
            [
                CrossSigningKey(key_type, key_id, _canonical(without_unsigned(key)))
                for key_type, (key, key_id) in uploads.items()
            ],
            self._clock.time_msec(),
        )
        if changed:
            logger.info("cross-signing keys of %s uploaded: %s", user_id, ", ".join(changed))
            await self._signing_keys_changed(user_id)

    def _check_cross_signing_key(self, user_id: str, key: Any, usage: str) -> str:
        """The key ID of a well-formed cross-signing key for `usage`, or 400 M_INVALID_PARAM."""
        if not isinstance(key, dict):
            raise MatrixError(400, Codes.INVALID_PARAM, f"The {usage} key must be an object")
        if key.get("user_id") != user_id:
            raise MatrixError(400, Codes.INVALID_PARAM, f"The {usage} key must belong to {user_id}")
        usages = key.get("usage")
        if not isinstance(usages, list) or usage not in usages:
            raise MatrixError(
                400, Codes.INVALID_PARAM, f"The {usage} key must have usage {usage!r}"
            )
        try:
            key_id, _ = cross_signing_public_key(key)
        except InvalidKey as e:
            raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid {usage} key: {e}") from None
        return key_id

    # ----- signatures ---------------------------------------------------------------------

    async def upload_signatures(
        self, user_id: str, body: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, Any]:
        """POST /keys/signatures/upload; returns `{"failures": {user: {key: error}}}`."""
        failures: dict[str, dict[str, Any]] = {}
        accepted: list[KeySignature] = []
        signed_devices: list[str] = []
        signed_own_master = False
        signed_others = False

        mine = await self._store.get_cross_signing_keys([user_id])
        own_keys = mine.get(user_id, {})

        own = body.get(user_id)
        if own:
            devices = {
                device_id: json.loads(stored.key_json)
                for device_id, stored in (await self._store.get_device_keys_for_users([user_id]))
                .get(user_id, {})
                .items()
            }
            stored_signatures = await self._store.get_signatures([user_id])
            master = own_keys.get(MASTER)
            for target, signed in own.items():
                try:
                    if master is not None and target == master.key_id.partition(":")[2]:
                        new = self._check_master_signatures(
                            user_id,
                            json.loads(master.key_json),
                            target,
                            signed,
                            devices,
                            stored_signatures,
                        )
                        accepted.extend(new)
                        signed_own_master = signed_own_master or bool(new)
                    else:
                        accepted.append(
                            self._check_device_signature(user_id, target, signed, devices, own_keys)
                        )
                        signed_devices.append(target)
                except MatrixError as e:
                    failures.setdefault(user_id, {})[target] = _key_failure(e)

        for target_user, keys in body.items():
            if target_user == user_id or not keys:
                continue
            try:
                user_signing = own_keys.get(USER_SIGNING)
                if user_signing is None:
                    raise MatrixError(404, Codes.NOT_FOUND, "You have no user-signing key")
                target_master = await self._master_key_of(target_user)
            except MatrixError as e:
                failures[target_user] = {target: _key_failure(e) for target in keys}
                continue
            for target, signed in keys.items():
                try:
                    accepted.append(
                        self._check_user_signature(
                            user_id, user_signing, target_user, target_master, target, signed
                        )
                    )
                    signed_others = True
                except MatrixError as e:
                    failures.setdefault(target_user, {})[target] = _key_failure(e)

        await self._store.store_signatures(accepted)
        await self._device_changed(user_id, signed_devices)
        if signed_own_master or signed_others:
            await self._signing_keys_changed(user_id)
        return {"failures": failures}

    def _check_device_signature(
        self,
        user_id: str,
        device_id: str,
        signed: Any,
        devices: dict[str, dict[str, Any]],
        own_keys: dict[str, CrossSigningKey],
    ) -> KeySignature:
        """The self-signing key's signature of one of the user's devices."""
        if not isinstance(signed, dict):
            raise _bad_json("A signed key must be an object")
        stored = devices.get(device_id)
        if stored is None:
            raise MatrixError(404, Codes.NOT_FOUND, f"Unknown device {device_id[:100]!r}")
        self_signing = own_keys.get(SELF_SIGNING)
        if self_signing is None:
            raise MatrixError(404, Codes.NOT_FOUND, "You have no self-signing key")
        signature = signatures_of(signed, user_id).get(self_signing.key_id)
        if signature is None:
            raise _invalid_signature("No signature by your self-signing key")
        if without_signatures(signed) != without_signatures(stored):
            raise MatrixError(400, Codes.INVALID_PARAM, "The signed keys are not the device's keys")
        if not is_signed_by(
            signed, user_id, self_signing.key_id, self_signing.key_id.partition(":")[2]
        ):
            raise _invalid_signature("Invalid signature by your self-signing key")
        return KeySignature(user_id, self_signing.key_id, user_id, device_id, signature)

    def _check_master_signatures(
        self,
        user_id: str,
        master: dict[str, Any],
        master_public: str,
        signed: Any,
        devices: dict[str, dict[str, Any]],
        stored_signatures: list[KeySignature],
    ) -> list[KeySignature]:
        """Signatures of the user's master key by their devices (signatures we hold
        already, such as the ones a query returns, are passed over)."""
        if not isinstance(signed, dict):
            raise _bad_json("A signed key must be an object")
        if without_signatures(signed) != without_signatures(master):
            raise MatrixError(400, Codes.INVALID_PARAM, "The signed key is not your master key")
        held = dict(signatures_of(master, user_id))
        held.update(
            (s.key_id, s.signature)
            for s in stored_signatures
            if s.user_id == user_id and s.target_device_id == master_public
        )
        signatures = signatures_of(signed, user_id)
        if not signatures:
            raise _invalid_signature("No signature of your master key")
        new = []
        for key_id, signature in signatures.items():
            if held.get(key_id) == signature:
                continue
            algorithm, _, device_id = key_id.partition(":")
            public_key = (devices.get(device_id, {}).get("keys") or {}).get(key_id)
            if algorithm != ED25519 or public_key is None:
                raise _invalid_signature(f"{key_id[:100]!r} is not one of your devices' keys")
            if not is_signed_by(signed, user_id, key_id, public_key):
                raise _invalid_signature(f"Invalid signature by {key_id[:100]!r}")
            new.append(KeySignature(user_id, key_id, user_id, master_public, signature))
        return new

    def _check_user_signature(
        self,
        user_id: str,
        user_signing: CrossSigningKey,
        target_user: str,
        target_master: dict[str, Any],
        target: str,
        signed: Any,
    ) -> KeySignature:
        """The user-signing key's signature of another user's master key."""
        if not isinstance(signed, dict):
            raise _bad_json("A signed key must be an object")
        try:
            _, master_public = cross_signing_public_key(target_master)
        except InvalidKey:
            raise MatrixError(
                404, Codes.NOT_FOUND, f"{target_user} has no valid master key"
            ) from None
        if target != master_public:
            raise MatrixError(
                404, Codes.NOT_FOUND, f"{target[:100]!r} is not the master key of {target_user}"
            )
        signature = signatures_of(signed, user_id).get(user_signing.key_id)
        if signature is None:
            raise _invalid_signature("No signature by your user-signing key")
        if without_signatures(signed) != without_signatures(target_master):
            raise MatrixError(
                400, Codes.INVALID_PARAM, f"The signed key is not the master key of {target_user}"
            )
        if not is_signed_by(
            signed, user_id, user_signing.key_id, user_signing.key_id.partition(":")[2]
        ):
            raise _invalid_signature("Invalid signature by your user-signing key")
        return KeySignature(user_id, user_signing.key_id, target_user, master_public, signature)

    async def _master_key_of(self, user_id: str) -> dict[str, Any]:
        """Another user's master key: ours, from the device-list cache, or from their
        server; 404 M_NOT_FOUND when there is none to be had."""
        server = self._server_of(user_id)
        if server is None:
            raise MatrixError(404, Codes.NOT_FOUND, f"Unknown user {user_id[:100]!r}")
        master: Any = None
        if server == self._server_name:
            stored = (await self._store.get_cross_signing_keys([user_id])).get(user_id, {})
            if MASTER in stored:
                master = json.loads(stored[MASTER].key_json)
        else:
            cached = (
                await self.device_lists.get_cached_remote_keys(user_id)
                if self.device_lists is not None
                else None
            )
            if cached is not None:
                master = _cached_as_answer(user_id, cached).get("master_keys", {}).get(user_id)
            else:
                try:
                    answer = await self._federation.post_json(
                        server,
                        FEDERATION_QUERY_PATH,
                        {"device_keys": {user_id: []}},
                        timeout_ms=DEFAULT_TIMEOUT_MS,
                    )
                except FederationError as e:
                    logger.info("master key of %s: query failed: %s", user_id, e)
                    answer = None
                masters = answer.get("master_keys") if isinstance(answer, dict) else None
                master = masters.get(user_id) if isinstance(masters, dict) else None
        if not isinstance(master, dict) or master.get("user_id") != user_id:
            raise MatrixError(404, Codes.NOT_FOUND, f"No master key found for {user_id}")
        return master


def without_unsigned(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "unsigned"}


def _same_one_time_key(held: Any, new: Any) -> bool:
    """Whether a re-uploaded one-time key is the one held: equal, signatures aside (a
    client may sign the same key again)."""
    if isinstance(held, dict) and isinstance(new, dict):
        return without_signatures(held) == without_signatures(new)
    return bool(held == new)


def _public_key_of(key: dict[str, Any]) -> str | None:
    try:
        return cross_signing_public_key(key)[1]
    except InvalidKey:
        return None


def _cached_as_answer(user_id: str, cached: Any) -> dict[str, Any]:
    """A cached remote user (`RemoteUserKeys`) in the shape of a `user/keys/query` answer."""
    devices = getattr(cached, "devices", None) or {}
    answer: dict[str, Any] = {
        "device_keys": {user_id: dict(devices)},
        "master_keys": {},
        "self_signing_keys": {},
    }
    master = getattr(cached, "master_key", None)
    if master is not None:
        answer["master_keys"][user_id] = master
    self_signing = getattr(cached, "self_signing_key", None)
    if self_signing is not None:
        answer["self_signing_keys"][user_id] = self_signing
    return answer


def _merge_remote_user(
    result: dict[str, Any], user_id: str, device_ids: list[str], answer: dict[str, Any]
) -> None:
    """Copy one remote user's keys from a `user/keys/query` answer into `result`, keeping
    the objects that do not name another user or device (and the devices asked for). What
    is inside them is passed on as given, as Synapse does: clients check device keys."""
    devices = answer.get("device_keys", {}).get(user_id)
    if isinstance(devices, dict):
        kept = {
            device_id: keys
            for device_id, keys in devices.items()
            if isinstance(keys, dict)
            and keys
            and keys.get("user_id", user_id) == user_id
            and keys.get("device_id", device_id) == device_id
            and (not device_ids or device_id in device_ids)
        }
        result["device_keys"][user_id] = kept
    for field in ("master_keys", "self_signing_keys"):
        keys = answer.get(field)
        key = keys.get(user_id) if isinstance(keys, dict) else None
        if isinstance(key, dict) and key.get("user_id") == user_id:
            result[field][user_id] = key


async def _all(coroutines: Any) -> None:
    """Run these coroutines concurrently and wait for all of them."""
    deferreds = [defer.ensureDeferred(c) for c in coroutines]
    if deferreds:
        try:
            await defer.gatherResults(deferreds, consumeErrors=True)
        except defer.FirstError as e:
            # The first failure itself, so a MatrixError still reaches the client as one.
            e.subFailure.raiseException()
