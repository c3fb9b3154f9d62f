"""Server signing keys: publishing ours, fetching and caching other servers', verifying
signatures with them, and serving them on as a notary (spec: "Retrieving server keys")."""

from __future__ import annotations

import json
import logging
from typing import Any

from signedjson.key import (
    decode_verify_key_bytes,
    encode_verify_key_base64,
    get_verify_key,
)
from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json
from twisted.internet import defer
from unpaddedbase64 import decode_base64

from federation.errors import FederationError, KeyLookupError, SignatureVerifyError
from homeserver.caches import LruCache
from homeserver.clock import Clock
from homeserver.config import FederationConfig
from homeserver.identifiers import is_valid_server_name
from storage.stores.server_keys import ServerKeyStore, StoredVerifyKey

logger = logging.getLogger(__name__)

SERVER_KEYS_PATH = "/_matrix/key/v2/server"
QUERY_KEYS_PATH = "/_matrix/key/v2/query"
# After a fetch from a server fails (or does not give the key wanted), no new fetch from it
# is made for this long, so a bad peer cannot make us hammer it (or anyone it names).
FETCH_FAILURE_BACKOFF_MS = 60 * 1000
DECODED_KEY_CACHE_SIZE = 10_000
# Servers whose last key fetch failed, remembered for FETCH_FAILURE_BACKOFF_MS. Notary queries
# name any server they like, so this is bounded too.
FAILED_FETCH_CACHE_SIZE = 10_000


class InvalidKeyResponse(ValueError):
    """A key response that is malformed, for the wrong server, or not properly signed."""


def decode_verify_key(key_id: str, key_b64: Any) -> Any:
    """A signedjson VerifyKey (with .alg and .version) from a key ID and unpadded base64."""
    if not isinstance(key_b64, str):
        raise InvalidKeyResponse(f"key {key_id} is not a string")
    try:
        return decode_verify_key_bytes(key_id, decode_base64(key_b64))
    except Exception:
        raise InvalidKeyResponse(f"key {key_id} is not a valid ed25519 key") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_key_response(
    server_name: str, response: Any, fetched_ts: int
) -> list[StoredVerifyKey]:
    """Check one key response (GET /_matrix/key/v2/server, or one entry of a notary's answer)
    and return the keys it vouches for. It must be for `server_name`, carry a valid_until_ts,
    and be signed by every ed25519 key it lists under verify_keys. Keys of other algorithms
    are ignored. Raises InvalidKeyResponse."""
    if not isinstance(response, dict):
        raise InvalidKeyResponse("key response is not an object")
    if response.get("server_name") != server_name:
        raise InvalidKeyResponse(f"key response is for {response.get('server_name')!r}")
    valid_until_ts = response.get("valid_until_ts")
    if not isinstance(valid_until_ts, int) or isinstance(valid_until_ts, bool):
        raise InvalidKeyResponse("key response has no integer valid_until_ts")
    verify_keys = response.get("verify_keys")
    old_verify_keys = response.get("old_verify_keys", {})
    if not isinstance(verify_keys, dict) or not isinstance(old_verify_keys, dict):
        raise InvalidKeyResponse("verify_keys and old_verify_keys must be objects")

    keys: list[StoredVerifyKey] = []
    current: list[tuple[str, Any]] = []
    for key_id, entry in verify_keys.items():
        if not key_id.startswith("ed25519:"):
            continue
        if not isinstance(entry, dict):
            raise InvalidKeyResponse(f"verify key {key_id} is not an object")
        verify_key = decode_verify_key(key_id, entry.get("key"))
        current.append((key_id, verify_key))
        keys.append(
            StoredVerifyKey(server_name, key_id, entry["key"], valid_until_ts, None, fetched_ts)
        )
    if not current:
        raise InvalidKeyResponse("key response lists no ed25519 verify key")
    for key_id, verify_key in current:
        try:
            verify_signed_json(response, server_name, verify_key)
        except SignatureVerifyException:
            raise InvalidKeyResponse(f"key response is not signed with {key_id}") from None

    for key_id, entry in old_verify_keys.items():
        if not key_id.startswith("ed25519:") or key_id in verify_keys:
            continue
        if not isinstance(entry, dict) or not _is_int(entry.get("expired_ts")):
            raise InvalidKeyResponse(f"old verify key {key_id} is malformed")
        decode_verify_key(key_id, entry.get("key"))
        expired_ts = entry["expired_ts"]
        keys.append(StoredVerifyKey(server_name, key_id, entry["key"], expired_ts, expired_ts, fetched_ts))
    return keys


class KeyRing:
    """Our own keys, and every other server's, with the rules for trusting them.

    `client` is the outbound federation client (`get_json`/`post_json`); without one, keys
    not already known cannot be fetched (KeyLookupError)."""

    def __init__(
        self,
        server_name: str,
        signing_key: Any,
        config: FederationConfig,
        clock: Clock,
        store: ServerKeyStore,
        client: Any | None,
    ) -> None:
        self._server_name = server_name
        self._signing_key = signing_key
        self._config = config
        self._clock = clock
        self._store = store
        self._client = client
        self._own_key_id = f"{signing_key.alg}:{signing_key.version}"
        self._own_verify_key = get_verify_key(signing_key)
        # key ID -> (verify key, expired_ts) for the keys we signed with before.
        self._old_keys = {
            old.key_id: (decode_verify_key(old.key_id, old.verify_key), old.expired_ts)
            for old in config.old_signing_keys
        }
        # One fetch per server at a time: later callers wait for the one in flight.
        self._in_flight: dict[str, list[defer.Deferred[dict[str, StoredVerifyKey]]]] = {}
        # server name -> when a fetch from it last failed (forgotten after the backoff).
        self._failed_fetches: LruCache[str, int] = LruCache(
            "key_fetch_failures",
            FAILED_FETCH_CACHE_SIZE,
            ttl_s=FETCH_FAILURE_BACKOFF_MS / 1000,
            clock=clock,
        )
        # (server, key ID) -> (decoded verify key, valid until).
        self._decoded: LruCache[tuple[str, str], tuple[Any, int]] = LruCache(
            "decoded_verify_keys", DECODED_KEY_CACHE_SIZE
        )

    def set_client(self, client: Any) -> None:
        self._client = client

    # Our own keys

    def own_key_response(self) -> dict[str, Any]:
        """The body of GET /_matrix/key/v2/server, signed with our current key."""
        response = {
            "server_name": self._server_name,
            "valid_until_ts": self._clock.time_msec() + self._config.key_validity_period_ms,
            "verify_keys": {
                self._own_key_id: {"key": encode_verify_key_base64(self._own_verify_key)}
            },
            "old_verify_keys": {
                old.key_id: {"key": old.verify_key, "expired_ts": old.expired_ts}
                for old in self._config.old_signing_keys
            },
        }
        return sign_json(response, self._server_name, self._signing_key)

    def _own_key(self, key_id: str, valid_at_ts: int) -> Any:
        if key_id == self._own_key_id:
            return self._own_verify_key
        old = self._old_keys.get(key_id)
        if old is not None and old[1] >= valid_at_ts:
            return old[0]
        raise KeyLookupError(f"{self._server_name} has no key {key_id} valid at {valid_at_ts}")

    # Other servers' keys

    async def get_verify_key(self, server_name: str, key_id: str, valid_at_ts: int) -> Any:
        """The verify key `server_name` calls `key_id`, if it is valid at `valid_at_ts`: ours,
        from the cache, or fetched (trusted notaries first, then the server itself).
        Raises KeyLookupError."""
        return await self._get_key(server_name, key_id, valid_at_ts, use_notaries=True)

    async def _get_key(
        self, server_name: str, key_id: str, valid_at_ts: int, use_notaries: bool
    ) -> Any:
        if server_name == self._server_name:
            return self._own_key(key_id, valid_at_ts)
        # Verifying a big room's state checks thousands of signatures by a few keys: keep
        # decoded keys in memory rather than reading the database for each.
        remembered = self._decoded.get((server_name, key_id))
        if remembered is not None and remembered[1] >= valid_at_ts:
            return remembered[0]
        cached = await self._store.get_verify_key(server_name, key_id)
        if cached is not None and cached.valid_until_ts >= valid_at_ts:
            return self._remember(server_name, key_id, cached)
        keys = await self._fetch(server_name, key_id, valid_at_ts, use_notaries)
        found = keys.get(key_id)
        if found is None or found.valid_until_ts < valid_at_ts:
            self._failed_fetches.set(server_name, self._clock.time_msec())
            raise KeyLookupError(f"{server_name} has no key {key_id} valid at {valid_at_ts}")
        return self._remember(server_name, key_id, found)

    def _remember(self, server_name: str, key_id: str, stored: StoredVerifyKey) -> Any:
        key = decode_verify_key(key_id, stored.verify_key)
        self._decoded.set((server_name, key_id), (key, stored.valid_until_ts))
        return key

    async def _fetch(
        self, server_name: str, key_id: str, valid_at_ts: int, use_notaries: bool
    ) -> dict[str, StoredVerifyKey]:
        """Fetch a server's keys, once at a time per server, unless a fetch from it failed
        within the last minute. Returns the keys learned (possibly none)."""
        if self._client is None:
            raise KeyLookupError(f"cannot fetch keys of {server_name}: federation is not set up")
        if self._failed_fetches.get(server_name) is not None:
            raise KeyLookupError(f"not fetching keys of {server_name} again so soon")
        waiters = self._in_flight.get(server_name)
        if waiters is not None:
            waiter: defer.Deferred[dict[str, StoredVerifyKey]] = defer.Deferred()
            waiters.append(waiter)
            return await waiter
        self._in_flight[server_name] = waiters = []
        try:
            keys = await self._fetch_from_sources(server_name, key_id, valid_at_ts, use_notaries)
        except BaseException as e:
            del self._in_flight[server_name]
            self._failed_fetches.set(server_name, self._clock.time_msec())
            for waiter in waiters:
                waiter.errback(e)
            raise
        del self._in_flight[server_name]
        for waiter in waiters:
            waiter.callback(keys)
        return keys

    async def _fetch_from_sources(
        self, server_name: str, key_id: str, valid_at_ts: int, use_notaries: bool
    ) -> dict[str, StoredVerifyKey]:
        learned: dict[str, StoredVerifyKey] = {}

        def satisfied() -> bool:
            key = learned.get(key_id)
            return key is not None and key.valid_until_ts >= valid_at_ts

        if use_notaries:
            for notary in self._config.trusted_key_servers:
                if notary.server_name in (server_name, self._server_name):
                    continue
                try:
                    learned.update(
                        await self._fetch_via_notary(
                            notary.server_name, notary.verify_keys, server_name, key_id, valid_at_ts
                        )
                    )
                except (FederationError, InvalidKeyResponse) as e:
                    logger.info(
                        "Fetching keys of %s from notary %s failed: %s", server_name, notary.server_name, e
                    )
                if satisfied():
                    return learned
        try:
            learned.update(await self._fetch_direct(server_name))
        except (FederationError, InvalidKeyResponse) as e:
            logger.info("Fetching keys of %s failed: %s", server_name, e)
        return learned

    async def _fetch_direct(self, server_name: str) -> dict[str, StoredVerifyKey]:
        assert self._client is not None
        response = await self._client.get_json(server_name, SERVER_KEYS_PATH, signed=False)
        now = self._clock.time_msec()
        keys = parse_key_response(server_name, response, now)
        await self._store.store_key_response(server_name, server_name, response, keys, now)
        return {key.key_id: key for key in keys}

    async def _fetch_via_notary(
        self,
        notary: str,
        pinned_keys: dict[str, str],
        server_name: str,
        key_id: str,
        valid_at_ts: int,
    ) -> dict[str, StoredVerifyKey]:
        assert self._client is not None
        body = {"server_keys": {server_name: {key_id: {"minimum_valid_until_ts": valid_at_ts}}}}
        answer = await self._client.post_json(notary, QUERY_KEYS_PATH, body, signed=False)
        responses = answer.get("server_keys") if isinstance(answer, dict) else None
        if not isinstance(responses, list):
            raise InvalidKeyResponse(f"notary {notary} sent no server_keys list")
        now = self._clock.time_msec()
        learned: dict[str, StoredVerifyKey] = {}
        for response in responses:
            if not isinstance(response, dict) or response.get("server_name") != server_name:
                continue
            await self._check_notary_signature(notary, pinned_keys, response)
            keys = parse_key_response(server_name, response, now)
            await self._store.store_key_response(server_name, notary, response, keys, now)
            learned.update((key.key_id, key) for key in keys)
        return learned

    async def _check_notary_signature(
        self, notary: str, pinned_keys: dict[str, str], response: dict[str, Any]
    ) -> None:
        """The response must carry a valid signature of the notary: with one of its pinned keys
        if the configuration pins any, else with a key fetched from the notary itself."""
        signatures = response.get("signatures")
        notary_sigs = signatures.get(notary) if isinstance(signatures, dict) else None
        if not isinstance(notary_sigs, dict):
            raise InvalidKeyResponse(f"notary {notary} did not sign its answer")
        now = self._clock.time_msec()
        for sig_key_id in notary_sigs:
            if not isinstance(sig_key_id, str) or not sig_key_id.startswith("ed25519:"):
                continue
            if pinned_keys:
                if sig_key_id not in pinned_keys:
                    continue
                verify_key = decode_verify_key(sig_key_id, pinned_keys[sig_key_id])
            else:
                try:
                    verify_key = await self._get_key(notary, sig_key_id, now, use_notaries=False)
                except KeyLookupError:
                    continue
            try:
                verify_signed_json(response, notary, verify_key)
                return
            except SignatureVerifyException:
                continue
        raise InvalidKeyResponse(f"notary {notary}'s signature does not verify")

    # Verifying

    async def verify_json_for_server(
        self, server_name: str, json_obj: dict[str, Any], valid_at_ts: int
    ) -> None:
        """Check that `json_obj` carries a signature of `server_name` that verifies with a key
        valid at `valid_at_ts`. Raises SignatureVerifyError."""
        signatures = json_obj.get("signatures")
        server_sigs = signatures.get(server_name) if isinstance(signatures, dict) else None
        if not isinstance(server_sigs, dict) or not server_sigs:
            raise SignatureVerifyError(f"not signed by {server_name}")
        problems = []
        for key_id in server_sigs:
            if not isinstance(key_id, str) or not key_id.startswith("ed25519:"):
                continue
            try:
                verify_key = await self.get_verify_key(server_name, key_id, valid_at_ts)
            except KeyLookupError as e:
                problems.append(str(e))
                continue
            try:
                verify_signed_json(json_obj, server_name, verify_key)
                return
            except SignatureVerifyException:
                problems.append(f"signature with {key_id} does not verify")
        raise SignatureVerifyError(
            f"no valid signature of {server_name}: {'; '.join(problems) or 'no ed25519 signature'}"
        )

    # Notary

    async def query_keys(self, query: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
        """Answer POST /_matrix/key/v2/query: for each server, the key responses we hold,
        fetched when none is fresh enough, co-signed by us. A server named with no key IDs
        gets its latest response. Servers we know nothing about and cannot reach are left out."""
        now = self._clock.time_msec()
        server_keys: list[dict[str, Any]] = []
        for server_name, criteria in query.items():
            minimums = {key_id: _minimum(c, now) for key_id, c in criteria.items()}
            server_keys.extend(await self._served_responses(server_name, minimums, now))
        return {"server_keys": server_keys}

    async def query_server_keys(
        self, server_name: str, minimum_valid_until_ts: int | None
    ) -> dict[str, Any]:
        """Answer GET /_matrix/key/v2/query/{serverName}."""
        now = self._clock.time_msec()
        minimum = now if minimum_valid_until_ts is None else minimum_valid_until_ts
        return {"server_keys": await self._served_responses(server_name, {}, minimum)}

    async def _served_responses(
        self, server_name: str, minimums: dict[str, int], any_minimum: int
    ) -> list[dict[str, Any]]:
        """One server's responses as a notary serves them. `minimums` maps the key IDs asked
        for to the valid_until_ts wanted; with none, any response valid until `any_minimum`
        will do."""
        if server_name == self._server_name:
            return [self.own_key_response()]
        if not is_valid_server_name(server_name):
            return []
        wanted_ids = list(minimums) or None
        responses = await self._store.get_key_responses(server_name, wanted_ids)
        if not _fresh_enough(responses, minimums, any_minimum):
            key_id = next(iter(minimums), "")
            min_ts = max(minimums.values(), default=any_minimum)
            try:
                learned = await self._fetch(server_name, key_id, min_ts, use_notaries=True)
            except KeyLookupError as e:
                logger.info("Notary: no fresh keys for %s: %s", server_name, e)
                learned = {}
            responses = await self._store.get_key_responses(server_name, wanted_ids)
            if not learned and not _fresh_enough(responses, minimums, any_minimum):
                # It could not be reached: not asked again for a while. (A server that
                # answered with keys not valid as long as asked is not backed off: anyone
                # may ask us for any minimum, and that must not keep us from fetching its
                # keys to verify its events.)
                self._failed_fetches.set(server_name, self._clock.time_msec())
        served: list[dict[str, Any]] = []
        seen: set[str] = set()
        for stored in _latest_per_key(responses, wanted_ids):
            response = _copy_json(stored.response)
            # Keep the origin's own signatures (not those of a notary we got it from).
            origin_sigs = response.get("signatures", {}).get(server_name, {})
            response["signatures"] = {server_name: origin_sigs}
            signed = sign_json(response, self._server_name, self._signing_key)
            text = json.dumps(signed, sort_keys=True)
            if text not in seen:
                seen.add(text)
                served.append(signed)
        return served


def _minimum(criteria: Any, now: int) -> int:
    value = criteria.get("minimum_valid_until_ts") if isinstance(criteria, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else now


def _fresh_enough(responses: list[Any], minimums: dict[str, int], any_minimum: int) -> bool:
    if not minimums:
        return any(r.valid_until_ts >= any_minimum for r in responses)
    for key_id, minimum in minimums.items():
        if not any(r.valid_until_ts >= minimum and _lists_key(r.response, key_id) for r in responses):
            return False
    return True


def _lists_key(response: dict[str, Any], key_id: str) -> bool:
    return key_id in response.get("verify_keys", {}) or key_id in response.get("old_verify_keys", {})


def _latest_per_key(responses: list[Any], wanted_ids: list[str] | None) -> list[Any]:
    """The latest response (they come latest first) for each wanted key, or the latest one
    overall when no key is named."""
    if wanted_ids is None:
        return responses[:1]
    chosen = []
    for key_id in wanted_ids:
        for r in responses:
            if _lists_key(r.response, key_id):
                if r not in chosen:
                    chosen.append(r)
                break
    return chosen


def _copy_json(value: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(value))
    return copied
