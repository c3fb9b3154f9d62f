"""Third-party identifiers bound at identity servers through the homeserver: /account/3pid/bind,
/account/3pid/unbind, the unbinding /account/3pid/delete and deactivation do.

Spec: client-server "Adding Account Administrative Contact Information"
(api/client-server/administrative_contact.yaml, account deactivation's id_server), the
Identity Service API v2 (3pid/bind, 3pid/unbind). The identity servers are
tests/identity_server.py, over https on loopback.
"""

from __future__ import annotations

from typing import Any

from signedjson.key import get_verify_key
from signedjson.sign import verify_signed_json

from federation.xmatrix import parse_authorization
from tests.harness import HomeserverTestCase, Response, on_both_engines, password_auth
from tests.identity_server import ACCESS_TOKEN, IdentityServer

V3 = "/_matrix/client/v3"
BIND = f"{V3}/account/3pid/bind"
UNBIND = f"{V3}/account/3pid/unbind"
DELETE = f"{V3}/account/3pid/delete"
DEACTIVATE = f"{V3}/account/deactivate"
SECRET = "monkeys_are_GREAT"
ADDRESS = "alice@example.org"
UNBIND_PATH = "/_matrix/identity/v2/3pid/unbind"

IDENTITY_SERVERS = {
    "threepid_binding": True,
    # The test identity servers: loopback, self-signed certificates.
    "ip_range_allowlist": ["127.0.0.1/32"],
    "verify_tls": False,
}


class BindingTestCase(HomeserverTestCase):
    config_overrides = {"identity_servers": IDENTITY_SERVERS}

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.ids = IdentityServer.start(self)
        alice = await self.register("alice")
        self.alice = alice["user_id"]
        self.token = alice["access_token"]

    async def bind(self, ids: IdentityServer, address: str = ADDRESS, **overrides: Any) -> Response:
        body = {
            "id_server": ids.name,
            "id_access_token": ACCESS_TOKEN,
            "sid": ids.validated_session("email", address, SECRET),
            "client_secret": SECRET,
            **overrides,
        }
        return await self.request("POST", BIND, body, token=self.token)

    async def recorded(self) -> list[tuple[str, str, str]]:
        rows = await self.hs.db.run_interaction(
            "recorded",
            lambda txn: txn.select_all(
                "SELECT medium, address, id_server FROM user_threepid_id_servers"
                " WHERE user_id = ? ORDER BY address, id_server",
                (self.alice,),
            ),
        )
        return [tuple(row) for row in rows]

    def unbind_requests(self, ids: IdentityServer) -> list[Any]:
        return [r for r in ids.requests if r.path == UNBIND_PATH]

    def assertSignedByHomeserver(self, ids: IdentityServer, request: Any) -> None:
        """The unbind request carries this server's X-Matrix signature over the request, with
        the identity server as `destination_is`."""
        auth = parse_authorization(request.authorization)
        server_name = self.hs.config.server_name
        self.assertEqual(auth.origin, server_name)
        signed = {
            "method": "POST",
            "uri": UNBIND_PATH,
            "origin": server_name,
            "destination_is": ids.name,
            "content": request.body,
            "signatures": {server_name: {auth.key_id: auth.signature}},
        }
        verify_key = get_verify_key(self.hs.signing_key)
        verify_signed_json(signed, server_name, verify_key)  # raises if it is not


@on_both_engines
class BindTests(BindingTestCase):
    async def test_bind_then_delete_unbinds_where_it_was_bound(self) -> None:
        r = await self.bind(self.ids)
        self.assertEqual((r.code, r.json), (200, {}))
        self.assertEqual(self.ids.bindings, {("email", ADDRESS): self.alice})
        [bind] = self.ids.requests
        self.assertEqual(bind.authorization, f"Bearer {ACCESS_TOKEN}")
        self.assertEqual(bind.body["mxid"], self.alice)
        self.assertEqual(bind.body["client_secret"], SECRET)
        self.assertEqual(await self.recorded(), [("email", ADDRESS, self.ids.name)])

        r = await self.request(
            "POST", DELETE, {"medium": "email", "address": ADDRESS}, token=self.token
        )
        self.assertEqual((r.code, r.json), (200, {"id_server_unbind_result": "success"}))
        self.assertEqual(self.ids.bindings, {})
        [unbind] = self.unbind_requests(self.ids)
        self.assertEqual(
            unbind.body, {"mxid": self.alice, "threepid": {"medium": "email", "address": ADDRESS}}
        )
        self.assertSignedByHomeserver(self.ids, unbind)
        self.assertEqual(await self.recorded(), [])

    async def test_unstable_path_binds_too(self) -> None:
        body = {
            "id_server": self.ids.name,
            "id_access_token": ACCESS_TOKEN,
            "sid": self.ids.validated_session("email", ADDRESS, SECRET),
            "client_secret": SECRET,
        }
        r = await self.request(
            "POST", "/_matrix/client/unstable/account/3pid/bind", body, token=self.token
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(self.ids.bindings, {("email", ADDRESS): self.alice})

    async def test_unbind_without_id_server_goes_to_every_recorded_server(self) -> None:
        other = IdentityServer.start(self)
        for ids in (self.ids, other):
            self.assertEqual((await self.bind(ids)).code, 200)
        self.assertEqual((await self.bind(self.ids, "second@example.org")).code, 200)
        r = await self.request(
            "POST", UNBIND, {"medium": "email", "address": ADDRESS}, token=self.token
        )
        self.assertEqual((r.code, r.json), (200, {"id_server_unbind_result": "success"}))
        self.assertEqual(other.bindings, {})
        # The other address stays bound.
        self.assertEqual(self.ids.bindings, {("email", "second@example.org"): self.alice})
        self.assertEqual(await self.recorded(), [("email", "second@example.org", self.ids.name)])

        # Nothing recorded any more for the address: nothing to ask, nothing unbound.
        requests = len(self.ids.requests) + len(other.requests)
        r = await self.request(
            "POST", UNBIND, {"medium": "email", "address": ADDRESS}, token=self.token
        )
        self.assertEqual((r.code, r.json), (200, {"id_server_unbind_result": "no-support"}))
        self.assertEqual(len(self.ids.requests) + len(other.requests), requests)

    async def test_unbind_at_a_named_server_only(self) -> None:
        other = IdentityServer.start(self)
        for ids in (self.ids, other):
            self.assertEqual((await self.bind(ids)).code, 200)
        r = await self.request(
            "POST",
            UNBIND,
            {"medium": "email", "address": ADDRESS, "id_server": other.name},
            token=self.token,
        )
        self.assertEqual((r.code, r.json), (200, {"id_server_unbind_result": "success"}))
        self.assertEqual(other.bindings, {})
        self.assertEqual(self.ids.bindings, {("email", ADDRESS): self.alice})
        self.assertEqual(await self.recorded(), [("email", ADDRESS, self.ids.name)])

    async def test_delete_naming_a_server_unbinds_an_address_bound_out_of_band(self) -> None:
        self.ids.bindings[("email", ADDRESS)] = self.alice
        r = await self.request(
            "POST",
            DELETE,
            {"medium": "email", "address": ADDRESS, "id_server": self.ids.name},
            token=self.token,
        )
        self.assertEqual((r.code, r.json), (200, {"id_server_unbind_result": "success"}))
        self.assertEqual(self.ids.bindings, {})
        self.assertSignedByHomeserver(self.ids, self.unbind_requests(self.ids)[0])

    async def test_deactivation_unbinds_every_recorded_address(self) -> None:
        other = IdentityServer.start(self)
        self.assertEqual((await self.bind(self.ids)).code, 200)
        self.assertEqual((await self.bind(other, "second@example.org")).code, 200)
        r = await self.request("POST", DEACTIVATE, {"auth": password_auth()}, token=self.token)
        self.assertEqual((r.code, r.json), (200, {"id_server_unbind_result": "success"}))
        self.assertEqual((self.ids.bindings, other.bindings), ({}, {}))
        self.assertEqual(await self.recorded(), [])

    async def test_identity_server_not_knowing_the_binding_is_no_support(self) -> None:
        self.assertEqual((await self.bind(self.ids)).code, 200)
        del self.ids.bindings[("email", ADDRESS)]  # forgotten there: unbind answers 404
        r = await self.request(
            "POST", DELETE, {"medium": "email", "address": ADDRESS}, token=self.token
        )
        self.assertEqual((r.code, r.json), (200, {"id_server_unbind_result": "no-support"}))
        self.assertEqual(await self.recorded(), [])

    async def test_identity_server_refusing_to_unbind(self) -> None:
        self.assertEqual((await self.bind(self.ids)).code, 200)
        body = {"medium": "email", "address": ADDRESS}
        # Its own error is passed on; the binding stays recorded, to try again.
        self.ids.unbind_failure = (403, {"errcode": "M_FORBIDDEN", "error": "No"})
        self.assertError(await self.request("POST", UNBIND, body, token=self.token), 403,
                         "M_FORBIDDEN")
        # A failure that is no Matrix error is a 502, never a 500.
        self.ids.unbind_failure = (500, {})
        self.assertError(await self.request("POST", DELETE, body, token=self.token), 502,
                         "M_UNKNOWN")
        self.assertEqual(await self.recorded(), [("email", ADDRESS, self.ids.name)])
        # Deactivation stops too: the account stays usable.
        r = await self.request("POST", DEACTIVATE, {"auth": password_auth()}, token=self.token)
        self.assertError(r, 502, "M_UNKNOWN")
        r = await self.request("GET", f"{V3}/account/whoami", token=self.token)
        self.assertEqual(r.code, 200, r)

    async def test_identity_server_refusing_to_bind(self) -> None:
        r = await self.bind(self.ids, sid="no-such-session")
        self.assertError(r, 400, "M_NO_VALID_SESSION")
        r = await self.bind(self.ids, id_access_token="not-the-token")
        # The identity server's 401 is not passed on as one: the client's own token is fine.
        self.assertError(r, 403, "M_UNAUTHORIZED")
        self.ids.bind_failure = (500, "oops")
        self.assertError(await self.bind(self.ids), 502, "M_UNKNOWN")
        self.assertEqual(self.ids.bindings, {})
        self.assertEqual(await self.recorded(), [])

    async def test_bad_input(self) -> None:
        good = {
            "id_server": self.ids.name,
            "id_access_token": ACCESS_TOKEN,
            "sid": "sid",
            "client_secret": SECRET,
        }
        cases: list[tuple[str, dict[str, Any], str]] = [
            (BIND, {k: v for k, v in good.items() if k != "sid"}, "M_BAD_JSON"),
            (BIND, {**good, "id_server": 5}, "M_BAD_JSON"),
            (BIND, {**good, "id_server": "evil.example/path?x"}, "M_INVALID_PARAM"),
            (BIND, {**good, "id_access_token": "two words"}, "M_INVALID_PARAM"),
            (BIND, {**good, "client_secret": "bad secret!"}, "M_INVALID_PARAM"),
            (UNBIND, {"medium": "email"}, "M_BAD_JSON"),
            (UNBIND, {"medium": "pigeon", "address": ADDRESS}, "M_INVALID_PARAM"),
            (UNBIND, {"medium": "email", "address": ADDRESS, "id_server": "a b"},
             "M_INVALID_PARAM"),
            (DELETE, {"medium": "email", "address": ADDRESS, "id_server": "a/b"},
             "M_INVALID_PARAM"),
            (DEACTIVATE, {"auth": password_auth(), "id_server": "a/b"}, "M_INVALID_PARAM"),
        ]
        for path, body, errcode in cases:
            r = await self.request("POST", path, body, token=self.token)
            self.assertError(r, 400, errcode)
        r = await self.request("POST", BIND, raw=b"{not json", token=self.token)
        self.assertEqual(r.code, 400, r)
        self.assertEqual(self.ids.requests, [])
        r = await self.request("GET", f"{V3}/account/whoami", token=self.token)
        self.assertEqual(r.code, 200, r)


@on_both_engines
class BlockedIdentityServerTests(BindingTestCase):
    # The identity server's address (loopback) is on the default block list.
    config_overrides = {
        "identity_servers": {"threepid_binding": True, "verify_tls": False}
    }

    async def test_a_blocked_address_is_never_contacted(self) -> None:
        self.assertError(await self.bind(self.ids), 502, "M_UNKNOWN")
        r = await self.request(
            "POST",
            DELETE,
            {"medium": "email", "address": ADDRESS, "id_server": self.ids.name},
            token=self.token,
        )
        self.assertError(r, 502, "M_UNKNOWN")
        self.assertEqual(self.ids.requests, [])


@on_both_engines
class BindingDisabledTests(BindingTestCase):
    config_overrides = {
        "identity_servers": {**IDENTITY_SERVERS, "threepid_binding": False}
    }

    async def test_nothing_is_bound_or_unbound(self) -> None:
        self.assertError(await self.bind(self.ids), 400, "M_SERVER_NOT_TRUSTED")
        self.ids.bindings[("email", ADDRESS)] = self.alice
        r = await self.request(
            "POST",
            DELETE,
            {"medium": "email", "address": ADDRESS, "id_server": self.ids.name},
            token=self.token,
        )
        self.assertEqual((r.code, r.json), (200, {"id_server_unbind_result": "no-support"}))
        self.assertEqual(self.ids.requests, [])
        self.assertEqual(self.ids.bindings, {("email", ADDRESS): self.alice})
