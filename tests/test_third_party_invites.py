"""Third-party invites: inviting by e-mail address through an identity server, and the
invite becoming a Matrix one when the address is bound (the identity server's onbind call).

Spec: client-server "Third-party invites" (api/client-server/third_party_membership.yaml,
createRoom's invite_3pid), server-server "Third-party invites" (3pid/onbind), the auth rules
for m.room.member invites with third_party_invite, and the Identity Service API v2 (lookup,
store-invite). The identity server is tests/identity_server.py, over https on loopback.
"""

from __future__ import annotations

from typing import Any

from signedjson.key import generate_signing_key

from tests.harness import on_both_engines
from tests.identity_server import ACCESS_TOKEN, IdentityServer
from tests.room_helpers import API, RoomTestCase, User

ONBIND = "/_matrix/federation/v1/3pid/onbind"
ADDRESS = "bob@example.org"


class ThirdPartyInviteTestCase(RoomTestCase):
    config_overrides = {
        "identity_servers": {
            "third_party_invites": True,
            # The test identity server: loopback, a self-signed certificate.
            "ip_range_allowlist": ["127.0.0.1/32"],
            "verify_tls": False,
        }
    }

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.ids = IdentityServer.start(self)
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.room_id = await self.create_room(self.alice, name="Lemurs", preset="private_chat")

    def invite_body(self, address: str = ADDRESS, **overrides: Any) -> dict[str, Any]:
        return {"id_server": self.ids.name, "id_access_token": ACCESS_TOKEN, "medium": "email",
                "address": address, **overrides}

    async def invite_3pid(self, inviter: User | None = None, **overrides: Any) -> Any:
        return await self.membership_action(
            inviter or self.alice, self.room_id, "invite", self.invite_body(**overrides)
        )

    async def onbind(self, body: dict[str, Any]) -> Any:
        return await self.request("POST", ONBIND, body)

    async def member(self, room_id: str, user: User) -> dict[str, Any] | None:
        r = await self.get_state(self.alice, room_id, "m.room.member", user.user_id)
        return r.json if r.code == 200 else None


@on_both_engines
class ThirdPartyInviteTests(ThirdPartyInviteTestCase):
    async def test_a_bound_address_invites_its_account(self):
        self.ids.bindings[("email", ADDRESS)] = self.bob.user_id
        r = await self.invite_3pid()
        self.assertEqual((r.code, r.json), (200, {}))
        self.assertEqual((await self.member(self.room_id, self.bob))["membership"], "invite")
        # Looked up with the client's identity access token and the hashed address.
        hash_details, lookup = self.ids.requests
        self.assertEqual((hash_details.method, hash_details.path), ("GET", "/_matrix/identity/v2/hash_details"))
        self.assertEqual(lookup.authorization, f"Bearer {ACCESS_TOKEN}")
        self.assertEqual(lookup.body["algorithm"], "sha256")
        self.assertNotIn(ADDRESS, str(lookup.body))
        self.assertEqual(self.ids.invites, [])

    async def test_an_unbound_address_gets_an_invite_that_binding_completes(self):
        r = await self.invite_3pid()
        self.assertEqual((r.code, r.json), (200, {}))
        [stored] = self.ids.invites
        self.assertEqual((stored.room_id, stored.sender), (self.room_id, self.alice.user_id))
        store_request = self.ids.requests[-1]
        self.assertEqual(store_request.body["room_name"], "Lemurs")
        r = await self.get_state(self.alice, self.room_id, "m.room.third_party_invite", stored.token)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["display_name"], "b...@example.org")
        self.assertEqual(r.json["public_key"], self.ids.public_key)
        self.assertEqual([k["public_key"] for k in r.json["public_keys"]], [self.ids.public_key])
        self.assertIsNone(await self.member(self.room_id, self.bob))
        # Bob binds the address: the identity server tells the homeserver (at its client
        # listener, where deployments sharing one port are reached), and Alice invites Bob.
        r = await self.onbind(self.ids.bind("email", ADDRESS, self.bob.user_id))
        self.assertEqual((r.code, r.json), (200, {}))
        member = await self.member(self.room_id, self.bob)
        self.assertEqual(member["membership"], "invite")
        self.assertEqual(member["third_party_invite"]["display_name"], "b...@example.org")
        self.assertEqual(member["third_party_invite"]["signed"]["token"], stored.token)
        invite = (await self.current_state(self.room_id))[("m.room.member", self.bob.user_id)]
        self.assertEqual(invite.sender, self.alice.user_id)
        r = await self.join(self.bob, self.room_id)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.membership_of(self.room_id, self.bob), "join")

    async def test_the_invite_holds_after_the_inviter_leaves(self):
        carol = await self.user("carol")
        await self.membership_action(self.alice, self.room_id, "invite", {"user_id": carol.user_id})
        self.assertEqual((await self.join(carol, self.room_id)).code, 200)
        self.assertEqual((await self.invite_3pid()).code, 200)
        self.assertEqual((await self.membership_action(self.alice, self.room_id, "leave")).code, 200)
        r = await self.onbind(self.ids.bind("email", ADDRESS, self.bob.user_id))
        self.assertEqual(r.code, 200, r)
        self.assertEqual((await self.join(self.bob, self.room_id)).code, 200, r)
        self.assertEqual(await self.membership_of(self.room_id, self.bob), "join")

    async def test_a_signature_by_another_key_invites_nobody(self):
        self.assertEqual((await self.invite_3pid()).code, 200)
        body = self.ids.bind("email", ADDRESS, self.bob.user_id)
        [invite] = body["invites"]
        unsigned = {k: v for k, v in invite["signed"].items() if k != "signatures"}
        invite["signed"] = self.ids.sign(unsigned, generate_signing_key("0"))
        # Refused, and the identity server hears it.
        self.assertError(await self.onbind(body), 403, "M_FORBIDDEN")
        self.assertIsNone(await self.member(self.room_id, self.bob))
        # Nor is an invite for another account than the signed one honoured.
        body = self.ids.bind("email", ADDRESS, self.bob.user_id)
        body["invites"][0]["signed"]["mxid"] = "@mallory:" + self.hs.config.server_name
        self.assertError(await self.onbind(body), 403, "M_FORBIDDEN")
        self.assertIsNone(await self.member(self.room_id, self.bob))
        # Joining the invite-only room is still refused.
        self.assertError(await self.join(self.bob, self.room_id), 403, "M_FORBIDDEN")

    async def test_a_revoked_key_invites_nobody(self):
        self.assertEqual((await self.invite_3pid()).code, 200)
        self.ids.revoked.add(self.ids.public_key)
        body = self.ids.bind("email", ADDRESS, self.bob.user_id)
        self.assertError(await self.onbind(body), 403, "M_FORBIDDEN")
        self.assertIsNone(await self.member(self.room_id, self.bob))
        # An identity server that cannot say whether its key is valid honours nothing either.
        self.ids.revoked.clear()
        await self.ids._port.stopListening()
        self.assertError(await self.onbind(body), 403, "M_FORBIDDEN")
        self.assertIsNone(await self.member(self.room_id, self.bob))

    async def test_join_with_the_identity_servers_signature(self):
        # The invitee proves they own the address with the identity server's signature
        # (how a client accepts an invite sent to an address bound to nobody yet).
        self.assertEqual((await self.invite_3pid()).code, 200)
        [stored] = self.ids.invites
        signed = self.ids.sign(
            {"mxid": self.bob.user_id, "sender": self.alice.user_id, "token": stored.token}
        )
        carol = await self.user("carol")
        r = await self.join(carol, self.room_id, {"third_party_signed": signed})
        self.assertError(r, 403, "M_FORBIDDEN")
        forged = self.ids.sign(
            {"mxid": self.bob.user_id, "sender": self.alice.user_id, "token": stored.token},
            generate_signing_key("0"),
        )
        r = await self.join(self.bob, self.room_id, {"third_party_signed": forged})
        self.assertError(r, 403, "M_FORBIDDEN")
        self.assertIsNone(await self.member(self.room_id, self.bob))
        r = await self.request(
            "POST", f"{API}/join/{self.room_id}", {"third_party_signed": signed},
            token=self.bob.token,
        )
        self.assertEqual((r.code, r.json), (200, {"room_id": self.room_id}))
        self.assertEqual(await self.membership_of(self.room_id, self.bob), "join")
        invite, join = [
            e for e in await self.room_events(self.room_id)
            if e.type == "m.room.member" and e.state_key == self.bob.user_id
        ]
        self.assertEqual((invite.sender, invite.content["membership"]), (self.alice.user_id, "invite"))
        self.assertEqual(invite.content["third_party_invite"]["signed"]["token"], stored.token)

    async def test_create_room_with_invite_3pid(self):
        self.ids.bindings[("email", "carol@example.org")] = self.bob.user_id
        r = await self.request(
            "POST", f"{API}/createRoom",
            {"invite_3pid": [self.invite_body("carol@example.org"), self.invite_body()]},
            token=self.alice.token,
        )
        self.assertEqual(r.code, 200, r)
        room_id = r.json["room_id"]
        self.assertEqual((await self.member(room_id, self.bob))["membership"], "invite")
        [stored] = self.ids.invites
        self.assertEqual((stored.address, stored.room_id), (ADDRESS, room_id))

    async def test_bad_requests(self):
        for overrides, code, errcode in (
            ({"id_server": "not a server"}, 400, "M_INVALID_PARAM"),
            ({"medium": "carrier-pigeon"}, 400, "M_INVALID_PARAM"),
            ({"id_access_token": 5}, 400, "M_BAD_JSON"),
            ({"id_access_token": "two words\n"}, 400, "M_INVALID_PARAM"),
            # An identity server that refuses the token.
            ({"id_access_token": "wrong"}, 502, "M_UNKNOWN"),
            # Nobody listens there.
            ({"id_server": "127.0.0.1:1"}, 502, "M_UNKNOWN"),
        ):
            self.assertError(await self.invite_3pid(**overrides), code, errcode)
        body = self.invite_body()
        del body["id_access_token"]
        r = await self.membership_action(self.alice, self.room_id, "invite", body)
        self.assertError(r, 400, "M_BAD_JSON")
        # Only members who may invite can invite an address.
        self.assertError(await self.invite_3pid(inviter=self.bob), 403, "M_FORBIDDEN")
        self.assertEqual(self.ids.invites, [])
        # Garbage on onbind is answered, and changes nothing.
        self.assertEqual((await self.onbind({})).code, 200)
        for garbage in ({"invites": "x"}, {"invites": [1, {"room_id": self.room_id}]}):
            self.assertError(await self.onbind(garbage), 400, "M_BAD_JSON")
        self.assertIsNone(await self.member(self.room_id, self.bob))


@on_both_engines
class ThirdPartyInvitesOffTests(RoomTestCase):
    # Off (the default), with an identity server that could be reached.
    config_overrides = {
        "identity_servers": {
            "third_party_invites": False,
            "ip_range_allowlist": ["127.0.0.1/32"],
            "verify_tls": False,
        }
    }

    async def test_refused_and_no_identity_server_contacted_when_off(self):
        ids = IdentityServer.start(self)
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        body = {"id_server": ids.name, "id_access_token": ACCESS_TOKEN, "medium": "email",
                "address": ADDRESS}
        r = await self.membership_action(alice, room_id, "invite", body)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.request("POST", f"{API}/createRoom", {"invite_3pid": [body]}, token=alice.token)
        self.assertError(r, 403, "M_FORBIDDEN")
        self.assertEqual(ids.requests, [])
