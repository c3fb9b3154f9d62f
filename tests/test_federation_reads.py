"""The read-only federation endpoints (event, state, state_ids, event_auth, backfill,
get_missing_events), the query endpoints (profile, directory, publicRooms), and the client
API's lookups of remote profiles, aliases and directories through federation.

Requests come over real HTTP from a fake remote server: it signs them with its own key,
which the test puts in our key store beforehand (so nothing is fetched). Positive cases use
a world_readable room, which any server may read; the 403 cases a private room.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from twisted.internet import defer, reactor
from twisted.trial import unittest

from federation.errors import HttpResponseError, RequestSendFailed
from federation.queries import RemoteQueries
from federation.transport.events import require_server_in_room
from federation.xmatrix import sign_request
from homeserver.app import HomeServer
from homeserver.errors import MatrixError
from storage.stores.server_keys import StoredVerifyKey
from tests.harness import SERVER_NAME, Response, make_config, on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q

LISTENERS = [
    {"type": "client", "bind_address": "127.0.0.1", "port": 0},
    {"type": "metrics", "bind_address": "127.0.0.1", "port": 0},
    {"type": "federation", "bind_address": "127.0.0.1", "port": 0},
]
FED = "/_matrix/federation/v1"
REMOTE = "remote.example"
OTHER_REMOTE = "other.example"
FAR_FUTURE = 2**53

# `on_both_engines` adds the TestCase base; this tells the type checker about it.
if TYPE_CHECKING:
    _TestCase = unittest.TestCase
else:
    _TestCase = object


class FederationReadsCase(RoomTestCase, _TestCase):  # type: ignore[misc]
    fed_url: str

    async def start_server(self, **overrides: Any) -> HomeServer:
        data_dir = self.make_data_dir()
        config = make_config(self.engine, data_dir, listeners=LISTENERS, **overrides)
        hs = HomeServer(config, reactor)
        await hs.setup()
        hs.start_listening()
        self.addCleanup(lambda: defer.ensureDeferred(hs.stop()))  # type: ignore[attr-defined]
        client_port, metrics_port, fed_port = (p.getHost().port for p in hs.ports)
        self.hs = hs
        self.base_url = f"http://127.0.0.1:{client_port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}"
        self.fed_url = f"http://127.0.0.1:{fed_port}"
        self.keys = {REMOTE: generate_signing_key("r1"), OTHER_REMOTE: generate_signing_key("o1")}
        for server, key in self.keys.items():
            await self.trust(server, key)
        return hs

    async def trust(self, server: str, signing_key: Any) -> None:
        """Make our server know `server`'s verify key, valid for ever."""
        key_id = f"{signing_key.alg}:{signing_key.version}"
        b64 = encode_verify_key_base64(get_verify_key(signing_key))
        now = self.hs.clock.time_msec()
        response = {
            "server_name": server,
            "valid_until_ts": FAR_FUTURE,
            "verify_keys": {key_id: {"key": b64}},
            "old_verify_keys": {},
        }
        stored = StoredVerifyKey(server, key_id, b64, FAR_FUTURE, None, now)
        await self.hs.server_key_store.store_key_response(server, server, response, [stored], now)

    async def fed(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        origin: str = REMOTE,
        signed: bool = True,
        **params: Any,
    ) -> Response:
        """A request to our federation listener, signed by `origin`. `params` become the
        query string (a list value repeats the parameter)."""
        if params:
            path += "?" + urlencode(params, doseq=True, quote_via=quote)
        headers = {}
        if signed:
            headers["Authorization"] = sign_request(
                self.keys[origin], origin, SERVER_NAME, method, path, body
            )
        return await self.request(method, path, body, headers=headers, base_url=self.fed_url)

    # ----- rooms ---------------------------------------------------------------------------

    async def world_readable_room(self, user: User, **body: Any) -> str:
        return await self.create_room(
            user,
            initial_state=[
                {
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": {"history_visibility": "world_readable"},
                }
            ],
            **body,
        )

    async def send_text(self, user: User, room_id: str, body: str) -> str:
        r = await self.send(user, room_id, {"msgtype": "m.text", "body": body})
        assert r.code == 200, r
        return r.json["event_id"]

    async def pdu(self, event_id: str) -> dict[str, Any]:
        event = await self.hs.event_store.get_event(event_id)
        assert event is not None
        return dict(event.pdu)


# ----- events and state ------------------------------------------------------------------------


@on_both_engines
class EventReadTests(FederationReadsCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = await self.user("alice")
        self.room_id = await self.world_readable_room(self.alice, name="Readable")
        self.messages = [await self.send_text(self.alice, self.room_id, f"m{i}") for i in range(3)]
        self.private_room = await self.create_room(self.alice, preset="private_chat")
        self.private_event = await self.send_text(self.alice, self.private_room, "secret")

    async def test_get_event(self) -> None:
        event_id = self.messages[0]
        r = await self.fed("GET", f"{FED}/event/{q(event_id)}")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["origin"], SERVER_NAME)
        self.assertIsInstance(r.json["origin_server_ts"], int)
        self.assertEqual(r.json["pdus"], [await self.pdu(event_id)])

        self.assertError(await self.fed("GET", f"{FED}/event/{q('$nope')}"), 404, "M_NOT_FOUND")
        self.assertError(
            await self.fed("GET", f"{FED}/event/{q(event_id)}", signed=False), 401, "M_UNAUTHORIZED"
        )
        # An event of a room the server may not see.
        self.assertError(
            await self.fed("GET", f"{FED}/event/{q(self.private_event)}"), 403, "M_FORBIDDEN"
        )

    async def test_redacted_event_is_served_redacted(self) -> None:
        event_id = self.messages[1]
        r = await self.request(
            "PUT", f"{API}/rooms/{q(self.room_id)}/redact/{q(event_id)}/t1", {}, token=self.alice.token
        )
        self.assertEqual(r.code, 200, r)
        r = await self.fed("GET", f"{FED}/event/{q(event_id)}")
        self.assertEqual(r.code, 200, r)
        (pdu,) = r.json["pdus"]
        self.assertEqual(pdu["content"], {})
        self.assertEqual(pdu["hashes"], (await self.pdu(event_id))["hashes"])

    async def test_state_ids_is_the_state_before_the_event(self) -> None:
        current = dict(await self.hs.state_store.get_current_state_ids(self.room_id))
        r = await self.fed("GET", f"{FED}/state_ids/{q(self.room_id)}", event_id=self.messages[2])
        self.assertEqual(r.code, 200, r)
        self.assertEqual(sorted(r.json["pdu_ids"]), sorted(current.values()))
        chain = await self.hs.federation_event_store.get_auth_chain_ids(list(current.values()))
        self.assertEqual(sorted(r.json["auth_chain_ids"]), sorted(chain))
        create_id = current[("m.room.create", "")]
        self.assertIn(create_id, r.json["auth_chain_ids"])

        # At a state event: the state before it, without it.
        name_id = current[("m.room.name", "")]
        r = await self.fed("GET", f"{FED}/state_ids/{q(self.room_id)}", event_id=name_id)
        self.assertEqual(r.code, 200, r)
        self.assertNotIn(name_id, r.json["pdu_ids"])
        self.assertIn(create_id, r.json["pdu_ids"])
        self.assertEqual(len(r.json["pdu_ids"]), len(current) - 1)

    async def test_state_gives_the_pdus(self) -> None:
        r = await self.fed("GET", f"{FED}/state_ids/{q(self.room_id)}", event_id=self.messages[0])
        ids = r.json
        r = await self.fed("GET", f"{FED}/state/{q(self.room_id)}", event_id=self.messages[0])
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["pdus"], [await self.pdu(e) for e in ids["pdu_ids"]])
        self.assertEqual(r.json["auth_chain"], [await self.pdu(e) for e in ids["auth_chain_ids"]])

    async def test_state_bad_requests(self) -> None:
        for endpoint in ("state", "state_ids"):
            path = f"{FED}/{endpoint}/{q(self.room_id)}"
            self.assertError(await self.fed("GET", path), 400, "M_MISSING_PARAM")
            # The missing parameter is reported before the room is looked up.
            self.assertError(
                await self.fed("GET", f"{FED}/{endpoint}/notaroom"), 400, "M_MISSING_PARAM"
            )
            self.assertError(await self.fed("GET", path, event_id="$nope"), 404, "M_NOT_FOUND")
            # An event of another room.
            self.assertError(
                await self.fed("GET", path, event_id=self.private_event), 404, "M_NOT_FOUND"
            )
            self.assertError(
                await self.fed("GET", f"{FED}/{endpoint}/{q('!unknown:test.heddle')}", event_id="$x"),
                404,
                "M_NOT_FOUND",
            )
            self.assertError(
                await self.fed("GET", path, event_id=self.messages[0], signed=False),
                401,
                "M_UNAUTHORIZED",
            )
            self.assertError(
                await self.fed(
                    "GET", f"{FED}/{endpoint}/{q(self.private_room)}", event_id=self.private_event
                ),
                403,
                "M_FORBIDDEN",
            )

    async def test_event_auth(self) -> None:
        event_id = self.messages[0]
        r = await self.fed("GET", f"{FED}/event_auth/{q(self.room_id)}/{q(event_id)}")
        self.assertEqual(r.code, 200, r)
        chain = sorted(await self.hs.federation_event_store.get_auth_chain_ids([event_id]))
        self.assertEqual(r.json["auth_chain"], [await self.pdu(e) for e in chain])
        current = await self.hs.state_store.get_current_state_ids(self.room_id)
        for key in (("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", self.alice.user_id)):
            self.assertIn(current[key], chain)

        path = f"{FED}/event_auth/{q(self.room_id)}/{q('$nope')}"
        self.assertError(await self.fed("GET", path), 404, "M_NOT_FOUND")
        path = f"{FED}/event_auth/{q(self.room_id)}/{q(self.private_event)}"
        self.assertError(await self.fed("GET", path), 404, "M_NOT_FOUND")
        path = f"{FED}/event_auth/{q(self.private_room)}/{q(self.private_event)}"
        self.assertError(await self.fed("GET", path), 403, "M_FORBIDDEN")
        self.assertError(await self.fed("GET", path, signed=False), 401, "M_UNAUTHORIZED")

    async def test_backfill(self) -> None:
        path = f"{FED}/backfill/{q(self.room_id)}"
        r = await self.fed("GET", path, v=[self.messages[2]], limit="3")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["origin"], SERVER_NAME)
        self.assertIsInstance(r.json["origin_server_ts"], int)
        # The given event first, then back through prev_events.
        self.assertEqual(
            r.json["pdus"], [await self.pdu(e) for e in reversed(self.messages)]
        )
        r = await self.fed("GET", path, v=[self.messages[2]], limit="1000")
        self.assertEqual(r.code, 200, r)
        events = await self.room_events(self.room_id)
        self.assertEqual(len(r.json["pdus"]), len(events))
        self.assertEqual(r.json["pdus"][-1]["type"], "m.room.create")
        r = await self.fed("GET", path, v=[self.messages[2]], limit="0")
        self.assertEqual(r.json["pdus"], [])

        self.assertError(await self.fed("GET", path, limit="3"), 400, "M_MISSING_PARAM")
        self.assertError(await self.fed("GET", path, v=self.messages[2]), 400, "M_MISSING_PARAM")
        self.assertError(
            await self.fed("GET", path, v=self.messages[2], limit="many"), 400, "M_INVALID_PARAM"
        )
        self.assertError(
            await self.fed("GET", path, v=self.messages[2], limit="3", signed=False),
            401,
            "M_UNAUTHORIZED",
        )
        self.assertError(
            await self.fed("GET", f"{FED}/backfill/{q(self.private_room)}", v=self.private_event, limit="3"),
            403,
            "M_FORBIDDEN",
        )
        self.assertError(
            await self.fed("GET", f"{FED}/backfill/{q('!nope:test.heddle')}", v="$x", limit="3"),
            404,
            "M_NOT_FOUND",
        )

    async def test_get_missing_events(self) -> None:
        path = f"{FED}/get_missing_events/{q(self.room_id)}"
        body: dict[str, Any] = {
            "earliest_events": [self.messages[0]], "latest_events": [self.messages[2]]
        }
        r = await self.fed("POST", path, body)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"events": [await self.pdu(self.messages[1])]})

        # Oldest first, cut at the limit (the most recent are kept), above min_depth.
        body = {"earliest_events": [], "latest_events": [self.messages[2]], "limit": 2}
        r = await self.fed("POST", path, body)
        self.assertEqual(r.json["events"], [await self.pdu(e) for e in self.messages[:2]])
        depth = (await self.pdu(self.messages[1]))["depth"]
        body = {"earliest_events": [], "latest_events": [self.messages[2]], "min_depth": depth}
        r = await self.fed("POST", path, body)
        self.assertEqual(r.json["events"], [await self.pdu(self.messages[1])])

        # An absent list is an empty one (Synapse's reading): nothing to walk back from.
        r = await self.fed("POST", path, {})
        self.assertEqual((r.code, r.json), (200, {"events": []}), r)
        r = await self.fed("POST", path, {"latest_events": [self.messages[2]], "limit": 1})
        self.assertEqual(r.json["events"], [await self.pdu(self.messages[1])])
        for bad in (
            {"earliest_events": "x", "latest_events": [self.messages[2]]},
            {"earliest_events": [], "latest_events": "x"},
            {"earliest_events": [], "latest_events": [], "limit": "5"},
        ):
            self.assertError(await self.fed("POST", path, bad), 400, "M_BAD_JSON")
        body = {"earliest_events": [], "latest_events": [self.private_event]}
        self.assertError(
            await self.fed("POST", f"{FED}/get_missing_events/{q(self.private_room)}", body),
            403,
            "M_FORBIDDEN",
        )
        self.assertError(await self.fed("POST", path, body, signed=False), 401, "M_UNAUTHORIZED")

    async def test_server_with_a_joined_member_may_see_a_private_room(self) -> None:
        # Remote joins are not part of these endpoints: check the rule with our own server,
        # which has a joined member (alice) in the private room.
        await require_server_in_room(self.hs, self.private_room, SERVER_NAME)
        with self.assertRaises(MatrixError) as cm:
            await require_server_in_room(self.hs, self.private_room, REMOTE)
        self.assertEqual((cm.exception.http_code, cm.exception.errcode), (403, "M_FORBIDDEN"))
        with self.assertRaises(MatrixError) as cm:
            await require_server_in_room(self.hs, "!nope:test.heddle", REMOTE)
        self.assertEqual((cm.exception.http_code, cm.exception.errcode), (404, "M_NOT_FOUND"))
        # Anyone may see a world_readable room.
        await require_server_in_room(self.hs, self.room_id, REMOTE)


@on_both_engines
class AclTests(FederationReadsCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = await self.user("alice")
        self.room_id = await self.world_readable_room(self.alice)
        r = await self.put_state(
            self.alice, self.room_id, "m.room.server_acl", {"allow": ["*"], "deny": ["REMOTE.*"]}
        )
        self.assertEqual(r.code, 200, r)
        self.event_id = await self.send_text(self.alice, self.room_id, "hi")

    async def test_denied_server_is_forbidden_everywhere(self) -> None:
        room = q(self.room_id)
        event = q(self.event_id)
        requests: list[tuple[str, str, Any, dict[str, Any]]] = [
            ("GET", f"{FED}/event/{event}", None, {}),
            ("GET", f"{FED}/state/{room}", None, {"event_id": self.event_id}),
            ("GET", f"{FED}/state_ids/{room}", None, {"event_id": self.event_id}),
            ("GET", f"{FED}/event_auth/{room}/{event}", None, {}),
            ("GET", f"{FED}/backfill/{room}", None, {"v": self.event_id, "limit": "5"}),
            (
                "POST",
                f"{FED}/get_missing_events/{room}",
                {"earliest_events": [], "latest_events": [self.event_id]},
                {},
            ),
            # The ACL is checked before the body is.
            ("POST", f"{FED}/get_missing_events/{room}", {}, {}),
        ]
        for method, path, body, params in requests:
            r = await self.fed(method, path, body, **params)
            self.assertError(r, 403, "M_FORBIDDEN")
            self.assertIn("ACL", r.json["error"])
            r = await self.fed(method, path, body, origin=OTHER_REMOTE, **params)
            self.assertEqual(r.code, 200, (path, r))


# ----- queries ---------------------------------------------------------------------------------


@on_both_engines
class QueryTests(FederationReadsCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = await self.user("alice")
        r = await self.request(
            "PUT", f"{API}/profile/{q(self.alice.user_id)}/avatar_url",
            {"avatar_url": "mxc://test.heddle/a"}, token=self.alice.token,
        )
        self.assertEqual(r.code, 200, r)

    async def test_query_profile(self) -> None:
        path = f"{FED}/query/profile"
        r = await self.fed("GET", path, user_id=self.alice.user_id)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"displayname": "alice", "avatar_url": "mxc://test.heddle/a"})
        r = await self.fed("GET", path, user_id=self.alice.user_id, field="displayname")
        self.assertEqual(r.json, {"displayname": "alice"})
        r = await self.fed("GET", path, user_id=self.alice.user_id, field="avatar_url")
        self.assertEqual(r.json, {"avatar_url": "mxc://test.heddle/a"})

        self.assertError(await self.fed("GET", path, user_id="@nobody:test.heddle"), 404, "M_NOT_FOUND")
        self.assertError(
            await self.fed("GET", path, user_id=self.alice.user_id, field="m.tz"), 404, "M_NOT_FOUND"
        )
        self.assertError(await self.fed("GET", path, user_id="@bob:remote.example"), 400, "M_INVALID_PARAM")
        self.assertError(await self.fed("GET", path, user_id="not-a-user"), 400, "M_INVALID_PARAM")
        self.assertError(await self.fed("GET", path), 400, "M_MISSING_PARAM")
        self.assertError(
            await self.fed("GET", path, user_id=self.alice.user_id, signed=False), 401, "M_UNAUTHORIZED"
        )

    async def test_query_directory(self) -> None:
        room_id = await self.create_room(self.alice, room_alias_name="lobby")
        path = f"{FED}/query/directory"
        r = await self.fed("GET", path, room_alias="#lobby:test.heddle")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"room_id": room_id, "servers": [SERVER_NAME]})
        self.assertError(await self.fed("GET", path, room_alias="#nope:test.heddle"), 404, "M_NOT_FOUND")
        self.assertError(await self.fed("GET", path, room_alias="#a:remote.example"), 404, "M_NOT_FOUND")
        self.assertError(await self.fed("GET", path, room_alias="lobby"), 400, "M_INVALID_PARAM")
        self.assertError(await self.fed("GET", path), 400, "M_MISSING_PARAM")
        self.assertError(
            await self.fed("GET", path, room_alias="#lobby:test.heddle", signed=False),
            401,
            "M_UNAUTHORIZED",
        )
        self.assertError(await self.fed("GET", f"{FED}/query/m.tea"), 404, "M_UNRECOGNIZED")

    async def test_public_rooms(self) -> None:
        cheese = await self.create_room(self.alice, visibility="public", name="Cheese lovers")
        await self.create_room(self.alice, visibility="public", name="Wine")
        await self.create_room(self.alice, name="Unlisted")
        path = f"{FED}/publicRooms"
        r = await self.fed("GET", path)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["total_room_count_estimate"], 2)
        self.assertEqual(sorted(room["name"] for room in r.json["chunk"]), ["Cheese lovers", "Wine"])
        # The same page as the client API gives.
        client = await self.request("GET", f"{API}/publicRooms")
        self.assertEqual(r.json, client.json)

        r = await self.fed("GET", path, limit="1")
        self.assertEqual(len(r.json["chunk"]), 1)
        r2 = await self.fed("GET", path, limit="1", since=r.json["next_batch"])
        self.assertEqual(len(r2.json["chunk"]), 1)
        self.assertNotEqual(r.json["chunk"], r2.json["chunk"])
        r = await self.fed("GET", path, include_all_networks="true")
        self.assertEqual(len(r.json["chunk"]), 2)

        r = await self.fed("POST", path, {"filter": {"generic_search_term": "cheese"}})
        self.assertEqual(r.code, 200, r)
        self.assertEqual([room["room_id"] for room in r.json["chunk"]], [cheese])

        self.assertError(await self.fed("GET", path, limit="x"), 400, "M_INVALID_PARAM")
        self.assertError(await self.fed("GET", path, include_all_networks="yes"), 400, "M_INVALID_PARAM")
        self.assertError(await self.fed("POST", path, {"limit": "1"}), 400, "M_BAD_JSON")
        self.assertError(await self.fed("GET", path, signed=False), 401, "M_UNAUTHORIZED")
        self.assertError(await self.fed("POST", path, {}, signed=False), 401, "M_UNAUTHORIZED")


# ----- remote lookups from the client API --------------------------------------------------------


class FakeFederationClient:
    """Answers as other servers would: `answers[(destination, path)]` is a body, or an
    exception to raise. Records every request."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], Any] = {}
        self.calls: list[tuple[str, str, str, Any]] = []

    def _answer(self, method: str, destination: str, path: str, sent: Any) -> Any:
        self.calls.append((method, destination, path, sent))
        answer = self.answers.get((destination, path))
        if answer is None:
            raise RequestSendFailed(destination, "connection refused")
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def get_json(
        self, destination: str, path: str, args: dict[str, list[str]] | None = None, **kw: Any
    ) -> Any:
        return self._answer("GET", destination, path, args)

    async def post_json(self, destination: str, path: str, data: Any, **kw: Any) -> Any:
        return self._answer("POST", destination, path, data)


@on_both_engines
class RemoteLookupTests(FederationReadsCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = await self.user("alice")
        self.client = FakeFederationClient()
        remote = RemoteQueries(self.hs.clock, self.client)
        self.hs.profiles.remote = remote
        self.hs.directory.remote = remote
        self.hs.room_list.remote = remote

    async def test_remote_profile_is_asked_of_its_server_and_cached(self) -> None:
        self.client.answers[(REMOTE, f"{FED}/query/profile")] = {
            "displayname": "Bob", "avatar_url": "mxc://remote.example/b", "m.tz": "x",
        }
        path = f"{API}/profile/{q('@bob:remote.example')}"
        r = await self.request("GET", path)
        self.assertEqual(r.code, 200, r)
        # Extended fields (spec v1.16) come through as the remote server gave them.
        self.assertEqual(
            r.json, {"displayname": "Bob", "avatar_url": "mxc://remote.example/b", "m.tz": "x"}
        )
        r = await self.request("GET", f"{path}/displayname")
        self.assertEqual(r.json, {"displayname": "Bob"})
        self.assertEqual(
            self.client.calls,
            [("GET", REMOTE, f"{FED}/query/profile", {"user_id": ["@bob:remote.example"]})],
        )

    async def test_remote_profile_errors(self) -> None:
        self.client.answers[(REMOTE, f"{FED}/query/profile")] = HttpResponseError(
            REMOTE, 404, {"errcode": "M_NOT_FOUND", "error": "no"}
        )
        self.assertError(
            await self.request("GET", f"{API}/profile/{q('@bob:remote.example')}"), 404, "M_NOT_FOUND"
        )
        # Unreachable, or a malformed answer.
        self.assertError(
            await self.request("GET", f"{API}/profile/{q('@bob:' + OTHER_REMOTE)}"), 502, "M_UNKNOWN"
        )
        self.client.answers[(REMOTE, f"{FED}/query/profile")] = ["not", "an", "object"]
        self.assertError(
            await self.request("GET", f"{API}/profile/{q('@carol:remote.example')}"), 502, "M_UNKNOWN"
        )

    async def test_remote_alias_is_asked_of_its_server(self) -> None:
        answer = {"room_id": "!room:remote.example", "servers": ["remote.example", "third.example"]}
        self.client.answers[(REMOTE, f"{FED}/query/directory")] = answer
        r = await self.request("GET", f"{API}/directory/room/{q('#lobby:remote.example')}")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, answer)
        self.assertEqual(self.client.calls[-1][3], {"room_alias": ["#lobby:remote.example"]})

        self.client.answers[(REMOTE, f"{FED}/query/directory")] = HttpResponseError(REMOTE, 404, {})
        self.assertError(
            await self.request("GET", f"{API}/directory/room/{q('#gone:remote.example')}"),
            404,
            "M_NOT_FOUND",
        )
        self.client.answers[(REMOTE, f"{FED}/query/directory")] = {"room_id": 5, "servers": []}
        self.assertError(
            await self.request("GET", f"{API}/directory/room/{q('#bad:remote.example')}"),
            502,
            "M_UNKNOWN",
        )
        self.assertError(
            await self.request("GET", f"{API}/directory/room/{q('#x:' + OTHER_REMOTE)}"),
            502,
            "M_UNKNOWN",
        )

    async def test_remote_room_directory(self) -> None:
        page = {"chunk": [{"room_id": "!r:remote.example", "num_joined_members": 3,
                           "world_readable": False, "guest_can_join": False}],
                "total_room_count_estimate": 1}
        self.client.answers[(REMOTE, f"{FED}/publicRooms")] = page
        r = await self.request("GET", f"{API}/publicRooms?server={REMOTE}&limit=5&since=abc")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, page)
        self.assertEqual(
            self.client.calls[-1], ("GET", REMOTE, f"{FED}/publicRooms", {"limit": ["5"], "since": ["abc"]})
        )
        r = await self.request(
            "POST",
            f"{API}/publicRooms?server={REMOTE}",
            {"limit": 2, "filter": {"generic_search_term": "cheese"}},
            token=self.alice.token,
        )
        self.assertEqual(r.json, page)
        self.assertEqual(
            self.client.calls[-1],
            ("POST", REMOTE, f"{FED}/publicRooms", {"filter": {"generic_search_term": "cheese"}, "limit": 2}),
        )
        self.assertError(
            await self.request("GET", f"{API}/publicRooms?server={OTHER_REMOTE}"), 502, "M_UNKNOWN"
        )
