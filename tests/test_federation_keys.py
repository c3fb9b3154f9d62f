"""Server signing keys: publishing ours, fetching and caching other servers' (directly and via
notaries), the notary endpoints, and X-Matrix request authentication."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any, cast

from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json, verify_signed_json
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from federation.errors import KeyLookupError, RequestSendFailed, SignatureVerifyError
from federation.keys import KeyRing, parse_key_response
from federation.transport.auth import authenticate_request, federation_json_body_and_origin
from federation.xmatrix import sign_request
from homeserver.app import HomeServer
from homeserver.clock import Clock
from homeserver.config import FederationConfig
from homeserver.errors import MatrixError
from tests.harness import SERVER_NAME, HomeserverTestCase, make_config, on_both_engines

LISTENERS = [
    {"type": "client", "bind_address": "127.0.0.1", "port": 0},
    {"type": "metrics", "bind_address": "127.0.0.1", "port": 0},
    {"type": "federation", "bind_address": "127.0.0.1", "port": 0},
]
REMOTE = "remote.example"
NOTARY = "notary.example"
HOUR = 3600 * 1000


def key_id_of(signing_key: Any) -> str:
    return f"{signing_key.alg}:{signing_key.version}"


def b64(signing_key: Any) -> str:
    return encode_verify_key_base64(get_verify_key(signing_key))


def key_response(
    server_name: str,
    signing_key: Any,
    valid_until_ts: int,
    old_keys: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A self-signed key response as a remote server would publish it."""
    response = {
        "server_name": server_name,
        "valid_until_ts": valid_until_ts,
        "verify_keys": {key_id_of(signing_key): {"key": b64(signing_key)}},
        "old_verify_keys": old_keys or {},
    }
    return sign_json(response, server_name, signing_key)


class FakeFederationClient:
    """Serves key responses of fake remote servers and notaries; counts the requests."""

    def __init__(self) -> None:
        # destination -> the body of its GET /_matrix/key/v2/server (or a callable making it)
        self.server_keys: dict[str, Any] = {}
        # notary -> callable(query) -> answer of its POST /_matrix/key/v2/query
        self.notaries: dict[str, Any] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.pending: defer.Deferred[None] | None = None

    async def get_json(
        self,
        destination: str,
        path: str,
        args: dict[str, list[str]] | None = None,
        *,
        signed: bool = True,
        timeout_ms: int | None = None,
    ) -> Any:
        assert not signed
        self.calls.append(("GET", destination, path))
        if self.pending is not None:
            await self.pending
        if path != "/_matrix/key/v2/server" or destination not in self.server_keys:
            raise RequestSendFailed(destination, "connection refused")
        body = self.server_keys[destination]
        return body() if callable(body) else body

    async def post_json(
        self,
        destination: str,
        path: str,
        data: Any,
        *,
        signed: bool = True,
        timeout_ms: int | None = None,
    ) -> Any:
        assert not signed
        self.calls.append(("POST", destination, path))
        if path != "/_matrix/key/v2/query" or destination not in self.notaries:
            raise RequestSendFailed(destination, "connection refused")
        return self.notaries[destination](data["server_keys"])

    def count(self, destination: str) -> int:
        return sum(1 for call in self.calls if call[1] == destination)


if TYPE_CHECKING:
    _TestCase = unittest.TestCase
else:
    _TestCase = object


class FederationKeysCase(HomeserverTestCase, _TestCase):  # type: ignore[misc]
    """A homeserver with a federation listener (`fed_url`)."""

    fed_url: str

    async def start_server(self, **overrides: Any) -> HomeServer:
        data_dir = self.make_data_dir()
        overrides = {"listeners": LISTENERS, **self.config_overrides, **overrides}
        config = make_config(self.engine, data_dir, **overrides)
        hs = HomeServer(config, reactor)
        await hs.setup()
        hs.start_listening()
        self.addCleanup(lambda: defer.ensureDeferred(hs.stop()))  # type: ignore[attr-defined]
        client_port, metrics_port, fed_port = (p.getHost().port for p in hs.ports)
        self.hs = hs
        self.base_url = f"http://127.0.0.1:{client_port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}"
        self.fed_url = f"http://127.0.0.1:{fed_port}"
        return hs

    serve_remote = False

    def setUp(self) -> Any:  # trial waits for the returned Deferred
        self.remote_key = generate_signing_key("r1")
        self.client = FakeFederationClient()
        return defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        hs = await self.start_server()
        if self.serve_remote:
            now = hs.clock.time_msec()
            self.client.server_keys[REMOTE] = key_response(REMOTE, self.remote_key, now + HOUR)
            hs.keyring.set_client(self.client)

    def keyring(self, clock: task.Clock, **federation: Any) -> KeyRing:
        """A KeyRing of our server over the test database, with a controllable clock."""
        return KeyRing(
            SERVER_NAME,
            self.hs.signing_key,
            FederationConfig.model_validate(federation),
            Clock(clock),
            self.hs.server_key_store,
            self.client,
        )


def _clock(at_ms: int = 1_000_000_000) -> task.Clock:
    clock = task.Clock()
    clock.advance(at_ms / 1000)
    return clock


# ----- our own keys ----------------------------------------------------------------------


class OwnKeysTests(FederationKeysCase, unittest.TestCase):  # type: ignore[misc]
    async def test_key_response_shape_and_self_signature_verifies(self) -> None:
        response = await self.request("GET", "/_matrix/key/v2/server", base_url=self.fed_url)
        assert response.code == 200, response
        body = response.json
        key_id = key_id_of(self.hs.signing_key)
        assert body["server_name"] == SERVER_NAME
        assert body["verify_keys"] == {key_id: {"key": b64(self.hs.signing_key)}}
        assert body["old_verify_keys"] == {}
        now = self.hs.clock.time_msec()
        assert now + 23 * HOUR < body["valid_until_ts"] <= now + 25 * HOUR
        verify_signed_json(body, SERVER_NAME, get_verify_key(self.hs.signing_key))
        keys = parse_key_response(SERVER_NAME, body, now)
        assert [k.key_id for k in keys] == [key_id]

    async def test_deprecated_key_id_path_gives_the_same_response(self) -> None:
        key_id = key_id_of(self.hs.signing_key)
        response = await self.request(
            "GET", f"/_matrix/key/v2/server/{key_id}", base_url=self.fed_url
        )
        assert response.code == 200, response
        assert key_id in response.json["verify_keys"]

    async def test_key_endpoints_are_not_on_the_client_listener(self) -> None:
        response = await self.request("GET", "/_matrix/key/v2/server")
        assert response.code == 404, response


class OldKeysTests(FederationKeysCase, unittest.TestCase):  # type: ignore[misc]
    old_key = generate_signing_key("old")
    config_overrides = {
        "federation": {
            "old_signing_keys": [
                {"key_id": "ed25519:old", "verify_key": b64(old_key), "expired_ts": 5000}
            ]
        }
    }

    async def test_old_keys_are_published(self) -> None:
        response = await self.request("GET", "/_matrix/key/v2/server", base_url=self.fed_url)
        assert response.code == 200, response
        assert response.json["old_verify_keys"] == {
            "ed25519:old": {"key": b64(self.old_key), "expired_ts": 5000}
        }
        # Signed with the current key only.
        assert list(response.json["signatures"][SERVER_NAME]) == [key_id_of(self.hs.signing_key)]

    async def test_own_old_key_is_valid_only_until_it_expired(self) -> None:
        keyring = self.hs.keyring
        key = await keyring.get_verify_key(SERVER_NAME, "ed25519:old", 4000)
        assert encode_verify_key_base64(key) == b64(self.old_key)
        with self.assertRaises(KeyLookupError):
            await keyring.get_verify_key(SERVER_NAME, "ed25519:old", 6000)
        current = await keyring.get_verify_key(SERVER_NAME, key_id_of(self.hs.signing_key), 10**15)
        assert encode_verify_key_base64(current) == b64(self.hs.signing_key)


class DisabledFederationTests(FederationKeysCase, unittest.TestCase):  # type: ignore[misc]
    config_overrides = {"federation": {"enabled": False}}

    async def test_key_endpoint_and_request_auth_are_forbidden(self) -> None:
        response = await self.request("GET", "/_matrix/key/v2/server", base_url=self.fed_url)
        self.assertError(response, 403, "M_FORBIDDEN")
        with self.assertRaises(MatrixError) as cm:
            await authenticate_request(self.hs, fake_request("GET", "/x", []), None)
        assert cm.exception.http_code == 403


# ----- fetching other servers' keys --------------------------------------------------------


@on_both_engines
class FetchKeysTests(FederationKeysCase):
    async def test_remote_key_is_fetched_then_served_from_the_cache(self) -> None:
        clock = _clock()
        now = int(clock.seconds() * 1000)
        self.client.server_keys[REMOTE] = key_response(REMOTE, self.remote_key, now + HOUR)
        keyring = self.keyring(clock)
        key = await keyring.get_verify_key(REMOTE, "ed25519:r1", now)
        assert encode_verify_key_base64(key) == b64(self.remote_key)
        await keyring.get_verify_key(REMOTE, "ed25519:r1", now + HOUR)
        assert self.client.count(REMOTE) == 1
        # The cache is in the database: a fresh KeyRing does not fetch either.
        await self.keyring(clock).get_verify_key(REMOTE, "ed25519:r1", now)
        assert self.client.count(REMOTE) == 1

    async def test_concurrent_lookups_share_one_fetch(self) -> None:
        clock = _clock()
        now = int(clock.seconds() * 1000)
        self.client.server_keys[REMOTE] = key_response(REMOTE, self.remote_key, now + HOUR)
        self.client.pending = defer.Deferred()
        keyring = self.keyring(clock)
        lookups = [
            defer.ensureDeferred(keyring.get_verify_key(REMOTE, "ed25519:r1", now)) for _ in range(3)
        ]
        # Let the first lookup's cache miss reach the client, and the others queue behind it.
        for _ in range(400):
            if len(keyring._in_flight.get(REMOTE, [])) == 2:
                break
            await deferLater(0.005)
        assert not any(d.called for d in lookups)
        pending, self.client.pending = self.client.pending, None
        pending.callback(None)
        keys = await defer.gatherResults(lookups)
        assert {encode_verify_key_base64(k) for k in keys} == {b64(self.remote_key)}
        assert self.client.count(REMOTE) == 1

    async def test_key_expired_before_the_time_needed_is_refused(self) -> None:
        clock = _clock()
        now = int(clock.seconds() * 1000)
        self.client.server_keys[REMOTE] = key_response(REMOTE, self.remote_key, now + 1000)
        keyring = self.keyring(clock)
        await keyring.get_verify_key(REMOTE, "ed25519:r1", now + 1000)
        with self.assertRaises(KeyLookupError):
            await keyring.get_verify_key(REMOTE, "ed25519:r1", now + 5000)
        # The cached key was too old, so the server was asked again (and still said 1000).
        assert self.client.count(REMOTE) == 2

    async def test_remote_old_key_is_valid_until_its_expiry(self) -> None:
        clock = _clock()
        now = int(clock.seconds() * 1000)
        old_key = generate_signing_key("o1")
        old = {"ed25519:o1": {"key": b64(old_key), "expired_ts": now - 1000}}
        self.client.server_keys[REMOTE] = key_response(REMOTE, self.remote_key, now + HOUR, old)
        keyring = self.keyring(clock)
        key = await keyring.get_verify_key(REMOTE, "ed25519:o1", now - 2000)
        assert encode_verify_key_base64(key) == b64(old_key)
        with self.assertRaises(KeyLookupError):
            await keyring.get_verify_key(REMOTE, "ed25519:o1", now)

    async def test_unknown_key_is_refused_and_not_refetched_within_a_minute(self) -> None:
        clock = _clock()
        now = int(clock.seconds() * 1000)
        self.client.server_keys[REMOTE] = key_response(REMOTE, self.remote_key, now + HOUR)
        keyring = self.keyring(clock)
        with self.assertRaises(KeyLookupError):
            await keyring.get_verify_key(REMOTE, "ed25519:nope", now)
        with self.assertRaises(KeyLookupError):
            await keyring.get_verify_key(REMOTE, "ed25519:nope2", now)
        assert self.client.count(REMOTE) == 1
        # Keys already cached are still found meanwhile.
        await keyring.get_verify_key(REMOTE, "ed25519:r1", now)
        clock.advance(61)
        with self.assertRaises(KeyLookupError):
            await keyring.get_verify_key(REMOTE, "ed25519:nope", now)
        assert self.client.count(REMOTE) == 2

    async def test_unreachable_server_is_a_key_lookup_error(self) -> None:
        keyring = self.keyring(_clock())
        with self.assertRaises(KeyLookupError):
            await keyring.get_verify_key("gone.example", "ed25519:a", 0)

    async def test_no_client_is_a_key_lookup_error(self) -> None:
        keyring = KeyRing(
            SERVER_NAME, self.hs.signing_key, FederationConfig(), Clock(_clock()),
            self.hs.server_key_store, None,
        )
        with self.assertRaises(KeyLookupError):
            await keyring.get_verify_key(REMOTE, "ed25519:r1", 0)

    async def test_bad_self_signature_is_rejected(self) -> None:
        clock = _clock()
        now = int(clock.seconds() * 1000)
        response = key_response(REMOTE, self.remote_key, now + HOUR)
        response["valid_until_ts"] += 1  # changed after signing
        self.client.server_keys[REMOTE] = response
        with self.assertRaises(KeyLookupError):
            await self.keyring(clock).get_verify_key(REMOTE, "ed25519:r1", now)
        assert await self.hs.server_key_store.get_verify_key(REMOTE, "ed25519:r1") is None

    async def test_response_for_another_server_is_rejected(self) -> None:
        clock = _clock()
        now = int(clock.seconds() * 1000)
        self.client.server_keys[REMOTE] = key_response("evil.example", self.remote_key, now + HOUR)
        with self.assertRaises(KeyLookupError):
            await self.keyring(clock).get_verify_key(REMOTE, "ed25519:r1", now)

    async def test_response_signed_by_another_key_is_rejected(self) -> None:
        clock = _clock()
        now = int(clock.seconds() * 1000)
        response = key_response(REMOTE, self.remote_key, now + HOUR)
        # The listed key did not sign it: another key (same ID) did.
        response["verify_keys"]["ed25519:r1"]["key"] = b64(generate_signing_key("r1"))
        self.client.server_keys[REMOTE] = response
        with self.assertRaises(KeyLookupError):
            await self.keyring(clock).get_verify_key(REMOTE, "ed25519:r1", now)

    # ----- via a notary ---------------------------------------------------------------------

    def _serve_notary(self, notary_key: Any, origin_response: dict[str, Any]) -> None:
        def answer(query: dict[str, Any]) -> dict[str, Any]:
            assert REMOTE in query
            return {"server_keys": [sign_json(json.loads(json.dumps(origin_response)), NOTARY, notary_key)]}

        self.client.notaries[NOTARY] = answer

    async def test_key_is_fetched_from_a_pinned_notary(self) -> None:
        clock = _clock()
        now = int(clock.seconds() * 1000)
        notary_key = generate_signing_key("n1")
        self._serve_notary(notary_key, key_response(REMOTE, self.remote_key, now + HOUR))
        keyring = self.keyring(
            clock,
            trusted_key_servers=[{"server_name": NOTARY, "verify_keys": {"ed25519:n1": b64(notary_key)}}],
        )
        key = await keyring.get_verify_key(REMOTE, "ed25519:r1", now)
        assert encode_verify_key_base64(key) == b64(self.remote_key)
        assert self.client.count(REMOTE) == 0
        assert self.client.count(NOTARY) == 1

    async def test_unpinned_notary_key_is_fetched_from_the_notary(self) -> None:
        clock = _clock()
        now = int(clock.seconds() * 1000)
        notary_key = generate_signing_key("n1")
        self._serve_notary(notary_key, key_response(REMOTE, self.remote_key, now + HOUR))
        self.client.server_keys[NOTARY] = key_response(NOTARY, notary_key, now + HOUR)
        keyring = self.keyring(clock, trusted_key_servers=[{"server_name": NOTARY}])
        await keyring.get_verify_key(REMOTE, "ed25519:r1", now)
        assert ("GET", NOTARY, "/_matrix/key/v2/server") in self.client.calls
        assert self.client.count(REMOTE) == 0

    async def test_notary_with_a_wrong_signature_is_not_trusted(self) -> None:
        clock = _clock()
        now = int(clock.seconds() * 1000)
        pinned = generate_signing_key("n1")
        impostor = generate_signing_key("n1")
        self._serve_notary(impostor, key_response(REMOTE, self.remote_key, now + HOUR))
        keyring = self.keyring(
            clock, trusted_key_servers=[{"server_name": NOTARY, "verify_keys": {"ed25519:n1": b64(pinned)}}]
        )
        with self.assertRaises(KeyLookupError):
            await keyring.get_verify_key(REMOTE, "ed25519:r1", now)
        # It fell back to the server itself (unreachable here).
        assert self.client.count(REMOTE) == 1
        assert await self.hs.server_key_store.get_verify_key(REMOTE, "ed25519:r1") is None

    async def test_notary_serving_a_forged_origin_response_is_not_trusted(self) -> None:
        clock = _clock()
        now = int(clock.seconds() * 1000)
        notary_key = generate_signing_key("n1")
        forged = key_response(REMOTE, generate_signing_key("x"), now + HOUR)
        forged["verify_keys"] = {"ed25519:r1": {"key": b64(generate_signing_key("r1"))}}
        self._serve_notary(notary_key, forged)
        self.client.server_keys[REMOTE] = key_response(REMOTE, self.remote_key, now + HOUR)
        keyring = self.keyring(
            clock, trusted_key_servers=[{"server_name": NOTARY, "verify_keys": {"ed25519:n1": b64(notary_key)}}]
        )
        key = await keyring.get_verify_key(REMOTE, "ed25519:r1", now)
        # The notary's answer was refused; the key came from the server itself.
        assert encode_verify_key_base64(key) == b64(self.remote_key)

    # ----- verifying ----------------------------------------------------------------------

    async def test_verify_json_for_server(self) -> None:
        clock = _clock()
        now = int(clock.seconds() * 1000)
        self.client.server_keys[REMOTE] = key_response(REMOTE, self.remote_key, now + HOUR)
        keyring = self.keyring(clock)
        signed = sign_json({"a": 1}, REMOTE, self.remote_key)
        await keyring.verify_json_for_server(REMOTE, signed, now)
        with self.assertRaises(SignatureVerifyError):
            await keyring.verify_json_for_server(REMOTE, {**signed, "a": 2}, now)
        with self.assertRaises(SignatureVerifyError):
            await keyring.verify_json_for_server(REMOTE, {"a": 1}, now)
        with self.assertRaises(SignatureVerifyError):
            await keyring.verify_json_for_server(REMOTE, signed, now + 2 * HOUR)


# ----- the notary endpoints ------------------------------------------------------------------


@on_both_engines
class NotaryEndpointTests(FederationKeysCase):
    # The server's keyring fetches from the fake client, which serves REMOTE's keys.
    serve_remote = True

    def assert_signed_by_origin_and_us(self, response: dict[str, Any]) -> None:
        assert response["server_name"] == REMOTE
        verify_signed_json(response, REMOTE, get_verify_key(self.remote_key))
        verify_signed_json(response, SERVER_NAME, get_verify_key(self.hs.signing_key))

    async def test_get_query_returns_the_origin_response_cosigned(self) -> None:
        response = await self.request("GET", f"/_matrix/key/v2/query/{REMOTE}", base_url=self.fed_url)
        assert response.code == 200, response
        [served] = response.json["server_keys"]
        self.assert_signed_by_origin_and_us(served)
        assert served["verify_keys"] == {"ed25519:r1": {"key": b64(self.remote_key)}}
        # A second query is answered from the cache.
        response = await self.request(
            "GET", f"/_matrix/key/v2/query/{REMOTE}?minimum_valid_until_ts=0", base_url=self.fed_url
        )
        assert len(response.json["server_keys"]) == 1
        assert self.client.count(REMOTE) == 1

    async def test_stale_answer_is_served_and_does_not_back_off_the_origin(self) -> None:
        # Nothing the origin has is valid as long as asked: each query asks it again, and
        # what it has is served anyway; its keys can still be fetched afterwards.
        path = f"/_matrix/key/v2/query/{REMOTE}?minimum_valid_until_ts={2**52}"
        for expected_fetches in (1, 2):
            response = await self.request("GET", path, base_url=self.fed_url)
            assert response.code == 200, response
            [served] = response.json["server_keys"]
            self.assert_signed_by_origin_and_us(served)
            assert self.client.count(REMOTE) == expected_fetches, self.client.calls
        # The origin moves to a new key: it is fetched when an event needs it.
        new_key = generate_signing_key("r2")
        now = self.hs.clock.time_msec()
        self.client.server_keys[REMOTE] = key_response(REMOTE, new_key, now + HOUR)
        key = await self.hs.keyring.get_verify_key(REMOTE, "ed25519:r2", now)
        assert encode_verify_key_base64(key) == b64(new_key)

    async def test_post_query_for_several_servers(self) -> None:
        body = {
            "server_keys": {
                REMOTE: {"ed25519:r1": {"minimum_valid_until_ts": self.hs.clock.time_msec()}},
                SERVER_NAME: {},
                "gone.example": {},
            }
        }
        response = await self.request("POST", "/_matrix/key/v2/query", body, base_url=self.fed_url)
        assert response.code == 200, response
        by_server = {r["server_name"]: r for r in response.json["server_keys"]}
        assert set(by_server) == {REMOTE, SERVER_NAME}
        self.assert_signed_by_origin_and_us(by_server[REMOTE])
        verify_signed_json(by_server[SERVER_NAME], SERVER_NAME, get_verify_key(self.hs.signing_key))

    async def test_post_query_with_no_servers_is_empty(self) -> None:
        response = await self.request(
            "POST", "/_matrix/key/v2/query", {"server_keys": {}}, base_url=self.fed_url
        )
        assert response.code == 200, response
        assert response.json == {"server_keys": []}

    async def test_post_query_bad_bodies(self) -> None:
        response = await self.request("POST", "/_matrix/key/v2/query", raw=b"{nope", base_url=self.fed_url)
        self.assertError(response, 400, "M_NOT_JSON")
        bodies: list[dict[str, Any]] = [
            {},
            {"server_keys": 3},
            {"server_keys": {REMOTE: []}},
            {"server_keys": {REMOTE: {"ed25519:r1": {"minimum_valid_until_ts": "1"}}}},
        ]
        for body in bodies:
            response = await self.request("POST", "/_matrix/key/v2/query", body, base_url=self.fed_url)
            self.assertError(response, 400, "M_BAD_JSON")

    async def test_get_query_bad_minimum_is_400(self) -> None:
        response = await self.request(
            "GET", f"/_matrix/key/v2/query/{REMOTE}?minimum_valid_until_ts=x", base_url=self.fed_url
        )
        self.assertError(response, 400, "M_INVALID_PARAM")


# ----- X-Matrix request authentication ---------------------------------------------------------


class FakeRequest:
    def __init__(self, method: str, uri: str, authorization: list[str], body: bytes = b"") -> None:
        self.method = method.encode()
        self.uri = uri.encode()
        self.requestHeaders = Headers()
        if authorization:
            self.requestHeaders.setRawHeaders(b"authorization", [a.encode() for a in authorization])
        self.content = io.BytesIO(body)


def fake_request(method: str, uri: str, authorization: list[str], body: bytes = b"") -> Any:
    return cast(Any, FakeRequest(method, uri, authorization, body))


def deferLater(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


@on_both_engines
class RequestAuthTests(FederationKeysCase):
    URI = "/_matrix/federation/v1/send/txn1?x=%20y"

    # The server's keyring fetches from the fake client, which serves REMOTE's keys.
    serve_remote = True

    def header(self, *, destination: str = SERVER_NAME, uri: str | None = None, content: Any = None,
               key: Any = None) -> str:
        return sign_request(
            key or self.remote_key, REMOTE, destination, "PUT", uri or self.URI, content
        )

    async def assert_unauthorized(self, request: Any, content: Any = None) -> None:
        with self.assertRaises(MatrixError) as cm:
            await authenticate_request(self.hs, request, content)
        assert (cm.exception.http_code, cm.exception.errcode) == (401, "M_UNAUTHORIZED")

    async def test_valid_request_is_accepted(self) -> None:
        content: dict[str, Any] = {"pdus": [], "edus": []}
        request = fake_request("PUT", self.URI, [self.header(content=content)])
        assert await authenticate_request(self.hs, request, content) == REMOTE

    async def test_json_body_helper_parses_and_authenticates(self) -> None:
        content: dict[str, Any] = {"pdus": [], "n": 1}
        request = fake_request("PUT", self.URI, [self.header(content=content)], json.dumps(content).encode())
        assert await federation_json_body_and_origin(self.hs, request) == (REMOTE, content)
        request = fake_request("PUT", self.URI, [self.header(content={"other": 1})], json.dumps(content).encode())
        with self.assertRaises(MatrixError) as cm:
            await federation_json_body_and_origin(self.hs, request)
        assert cm.exception.http_code == 401

    async def test_header_without_destination_is_accepted(self) -> None:
        header = self.header()
        legacy = ",".join(p for p in header.split(",") if not p.startswith("destination="))
        await self.assert_unauthorized(fake_request("PUT", self.URI, [legacy]))  # signed with it
        # Signed without a destination, as old servers do.
        from federation.xmatrix import request_json

        signed = sign_json(request_json("PUT", self.URI, REMOTE, None, None), REMOTE, self.remote_key)
        sig = signed["signatures"][REMOTE]["ed25519:r1"]
        old_style = f'X-Matrix origin={REMOTE},key="ed25519:r1",sig="{sig}"'
        assert await authenticate_request(self.hs, fake_request("PUT", self.URI, [old_style]), None) == REMOTE

    async def test_wrong_destination_is_401(self) -> None:
        await self.assert_unauthorized(fake_request("PUT", self.URI, [self.header(destination="other.example")]))

    async def test_bad_signature_is_401(self) -> None:
        await self.assert_unauthorized(fake_request("PUT", self.URI, [self.header(uri="/elsewhere")]))
        await self.assert_unauthorized(
            fake_request("PUT", self.URI, [self.header(content={"a": 1})]), {"a": 2}
        )

    async def test_missing_header_is_401_malformed_is_400(self) -> None:
        await self.assert_unauthorized(fake_request("PUT", self.URI, []))
        await self.assert_unauthorized(fake_request("PUT", self.URI, ["Bearer abc"]))
        # A malformed header, or an origin that is no server name (a non-numeric port):
        # 400, as Synapse answers.
        bad_origin = self.header().replace(f'origin="{REMOTE}"', 'origin="localhost:http"')
        assert "localhost:http" in bad_origin
        for header in ('X-Matrix origin="x"', bad_origin):
            with self.assertRaises(MatrixError) as cm:
                await authenticate_request(self.hs, fake_request("PUT", self.URI, [header]), None)
            assert (cm.exception.http_code, cm.exception.errcode) == (400, "M_UNAUTHORIZED")

    async def test_unknown_key_is_401(self) -> None:
        header = self.header(key=generate_signing_key("unknown"))
        await self.assert_unauthorized(fake_request("PUT", self.URI, [header]))

    async def test_key_of_another_server_is_401(self) -> None:
        # Signed by us, claiming to be the remote server.
        header = self.header(key=self.hs.signing_key)
        await self.assert_unauthorized(fake_request("PUT", self.URI, [header]))
