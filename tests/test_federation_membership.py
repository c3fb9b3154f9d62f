"""Membership flows between Heddle servers over TLS on loopback: knocking, rejecting an
invite, restricted joins authorised by the resident server, bans, redactions, a room on
three servers, and concurrent sends from two servers (forks resolved by state resolution)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from homeserver.errors import Codes, MatrixError
from tests.federation_helpers import API, FederationTestCase, FedUser, Server, q
from tests.harness import ensure_deferred, on_both_engines
from tests.synapse_peer import SynapsePeer


@on_both_engines
class FederatedMembership(FederationTestCase):
    async def _two(self) -> tuple[Server, Server, FedUser, FedUser]:
        return await self.two_peers()

    async def _create(self, user: FedUser, **body: Any) -> str:
        r = await self.user_call(user, "POST", f"{API}/createRoom", body)
        assert r.code == 200, r
        return str(r.json["room_id"])

    async def _join(self, user: FedUser, room_id: str, via: Server) -> Any:
        return await self.user_call(
            user, "POST", f"{API}/join/{q(room_id)}?via={q(via.server_name)}", {}
        )

    async def _sync_rooms(self, user: FedUser) -> dict[str, Any]:
        r = await self.user_call(user, "GET", f"{API}/sync")
        assert r.code == 200, r
        return dict(r.json.get("rooms", {}))

    async def _membership_is(self, user: FedUser, room_id: str, member: str, want: str) -> bool:
        return await self.membership(user, room_id, member) == want

    async def _wait_membership(
        self, user: FedUser, room_id: str, member: str, want: str, what: str, timeout: float = 30
    ) -> None:
        await self.wait_for(
            lambda: self._membership_is(user, room_id, member, want), timeout=timeout, what=what
        )

    async def _wait_body(self, user: FedUser, room_id: str, body: str, what: str) -> None:
        async def seen() -> bool:
            return body in await self.timeline_bodies(user, room_id)

        await self.wait_for(seen, what=what)

    async def _state(self, user: FedUser, room_id: str) -> dict[tuple[str, str], str]:
        r = await self.user_call(user, "GET", f"{API}/rooms/{q(room_id)}/state")
        assert r.code == 200, r
        return {(e["type"], e["state_key"]): e["event_id"] for e in r.json}

    # ----- knocking ------------------------------------------------------------------------

    @ensure_deferred
    async def test_knock_then_invite_then_join(self) -> None:
        a, b, alice, bob = await self._two()
        room_id = await self._create(alice, preset="private_chat", room_version="11",
                                     name="knock here")
        r = await self.user_call(alice, "PUT", f"{API}/rooms/{q(room_id)}/state/m.room.join_rules",
                                 {"join_rule": "knock"})
        self.assertEqual(r.code, 200, r)
        r = await self.user_call(
            bob, "POST", f"{API}/knock/{q(room_id)}?via={q(a.server_name)}", {"reason": "let me in"}
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["room_id"], room_id)
        await self._wait_membership(alice, room_id, bob.user_id, "knock", "bob's knock on A")
        rooms = await self._sync_rooms(bob)
        self.assertIn(room_id, rooms.get("knock", {}))
        knock_state = rooms["knock"][room_id]["knock_state"]["events"]
        types = {e["type"] for e in knock_state}
        self.assertIn("m.room.join_rules", types)
        self.assertIn("m.room.name", types)
        # Accepted by an invite; then bob joins.
        r = await self.user_call(alice, "POST", f"{API}/rooms/{q(room_id)}/invite",
                                 {"user_id": bob.user_id})
        self.assertEqual(r.code, 200, r)

        async def invited() -> bool:
            return room_id in (await self._sync_rooms(bob)).get("invite", {})

        await self.wait_for(invited, what="bob's invite after the knock")
        r = await self.user_call(bob, "POST", f"{API}/join/{q(room_id)}", {})
        self.assertEqual(r.code, 200, r)
        await self._wait_membership(alice, room_id, bob.user_id, "join", "bob's join on A")
        await self.send_text(bob, room_id, "in after knocking", "k1")
        await self._wait_body(alice, room_id, "in after knocking", "bob's message on A")

    @ensure_deferred
    async def test_knock_refused_when_room_is_not_knockable(self) -> None:
        a, b, alice, bob = await self._two()
        room_id = await self._create(alice, preset="private_chat", room_version="11")
        r = await self.user_call(bob, "POST", f"{API}/knock/{q(room_id)}?via={q(a.server_name)}",
                                 {})
        self.assertEqual(r.code, 403, r)
        self.assertIsNone(await self.membership(alice, room_id, bob.user_id))

    @ensure_deferred
    async def test_join_refused_for_room_version_passes_the_version_on(self) -> None:
        """A resident server that answers make_join with M_INCOMPATIBLE_ROOM_VERSION names the
        room's version; the joining client gets that error with `room_version` (as SyTest's
        "Outbound federation correctly handles unsupported room versions" checks)."""
        a, b, alice, bob = await self._two()
        room_id = await self._create(alice, preset="public_chat")

        async def incompatible(*args: Any, **kwargs: Any) -> dict[str, Any]:
            raise MatrixError(400, Codes.INCOMPATIBLE_ROOM_VERSION, "y u no upgrade",
                              room_version="org.example.future")

        a.hs.federation_membership.make_membership = incompatible  # type: ignore[method-assign]
        r = await self._join(bob, room_id, a)
        self.assertEqual(r.code, 400, r)
        self.assertEqual(r.json["errcode"], "M_INCOMPATIBLE_ROOM_VERSION", r)
        self.assertEqual(r.json["room_version"], "org.example.future", r)
        self.assertIsNone(await self.membership(alice, room_id, bob.user_id))

    # ----- rejecting an invite -------------------------------------------------------------

    @ensure_deferred
    async def test_reject_remote_invite(self) -> None:
        a, b, alice, bob = await self._two()
        room_id = await self._create(alice, preset="private_chat")
        r = await self.user_call(alice, "POST", f"{API}/rooms/{q(room_id)}/invite",
                                 {"user_id": bob.user_id})
        self.assertEqual(r.code, 200, r)

        async def invited() -> bool:
            return room_id in (await self._sync_rooms(bob)).get("invite", {})

        await self.wait_for(invited, what="invite in B's sync")
        r = await self.user_call(bob, "GET", f"{API}/sync")
        since = r.json["next_batch"]
        r = await self.user_call(bob, "POST", f"{API}/rooms/{q(room_id)}/leave", {})
        self.assertEqual(r.code, 200, r)
        await self._wait_membership(alice, room_id, bob.user_id, "leave", "rejection on A")
        # Left rooms show up in an incremental sync (an initial one leaves them out).
        r = await self.user_call(bob, "GET", f"{API}/sync?since={q(since)}")
        rooms = r.json.get("rooms", {})
        self.assertNotIn(room_id, rooms.get("invite", {}))
        self.assertIn(room_id, rooms.get("leave", {}))
        self.assertNotIn(room_id, (await self._sync_rooms(bob)).get("invite", {}))
        # A second leave changes nothing.
        r = await self.user_call(bob, "POST", f"{API}/rooms/{q(room_id)}/leave", {})
        self.assertEqual(r.code, 200, r)
        # Alice can invite again, and this time bob accepts.
        r = await self.user_call(alice, "POST", f"{API}/rooms/{q(room_id)}/invite",
                                 {"user_id": bob.user_id})
        self.assertEqual(r.code, 200, r)
        await self.wait_for(invited, what="second invite in B's sync")
        r = await self.user_call(bob, "POST", f"{API}/join/{q(room_id)}", {})
        self.assertEqual(r.code, 200, r)
        await self._wait_membership(alice, room_id, bob.user_id, "join", "bob's join on A")

    @ensure_deferred
    async def test_reject_invite_when_the_inviting_server_is_gone(self) -> None:
        # Nobody takes the rejection: it is made here, and bob is out of the room.
        a, b, alice, bob = await self._two()
        room_id = await self._create(alice, preset="private_chat")
        r = await self.user_call(alice, "POST", f"{API}/rooms/{q(room_id)}/invite",
                                 {"user_id": bob.user_id})
        self.assertEqual(r.code, 200, r)

        async def invited() -> bool:
            return room_id in (await self._sync_rooms(bob)).get("invite", {})

        await self.wait_for(invited, what="invite in B's sync")
        r = await self.user_call(bob, "GET", f"{API}/sync")
        since = r.json["next_batch"]
        await self.stop_peer(a)
        r = await self.user_call(bob, "POST", f"{API}/rooms/{q(room_id)}/leave",
                                 {"reason": "no thanks"})
        self.assertEqual(r.code, 200, r)
        r = await self.user_call(bob, "GET", f"{API}/sync?since={q(since)}")
        rooms = r.json.get("rooms", {})
        self.assertNotIn(room_id, rooms.get("invite", {}))
        self.assertIn(room_id, rooms.get("leave", {}))
        # The leave is the left room's timeline (no other timeline is held here).
        (leave_event,) = rooms["leave"][room_id]["timeline"]["events"]
        self.assertEqual(
            (leave_event["type"], leave_event["state_key"], leave_event["content"]),
            ("m.room.member", bob.user_id, {"membership": "leave", "reason": "no thanks"}),
        )
        current = await b.hs.room_store.get_membership(room_id, bob.user_id)
        assert current is not None
        leave = await b.hs.event_store.get_event(current.event_id)
        assert leave is not None
        self.assertEqual(current.membership, "leave")
        self.assertEqual(dict(leave.content), {"membership": "leave", "reason": "no thanks"})
        self.assertNotIn(room_id, (await self._sync_rooms(bob)).get("invite", {}))

    @ensure_deferred
    async def test_join_through_a_server_without_the_v2_api(self) -> None:
        # The resident server answers 404 M_UNRECOGNIZED to the v2 send_join (and
        # send_leave): the join goes through the v1 API instead.
        from federation.errors import HttpResponseError

        a, b, alice, bob = await self._two()
        room_id = await self._create(alice, preset="public_chat")
        membership = b.hs.federation_membership
        real_client = membership._client
        sent: list[str] = []

        class OnlyV1:
            def __getattr__(self, name: str) -> Any:
                return getattr(real_client, name)

            async def put_json(self, destination: str, path: str, data: Any, **kw: Any) -> Any:
                sent.append(path)
                if path.startswith("/_matrix/federation/v2/send_"):
                    raise HttpResponseError(
                        destination, 404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized"}
                    )
                return await real_client.put_json(destination, path, data, **kw)

        membership._client = OnlyV1()
        self.addCleanup(setattr, membership, "_client", real_client)
        r = await self._join(bob, room_id, a)
        self.assertEqual(r.code, 200, r)
        await self._wait_membership(alice, room_id, bob.user_id, "join", "bob's join on A")
        self.assertTrue(any(p.startswith("/_matrix/federation/v1/send_join/") for p in sent), sent)
        await self.send_text(alice, room_id, "joined through v1", "v1-1")
        await self._wait_body(bob, room_id, "joined through v1", "A's message on B")

    @ensure_deferred
    async def test_invite_into_a_room_blocked_here_is_refused(self) -> None:
        a, b, alice, bob = await self._two()
        room_id = await self._create(alice, preset="private_chat")
        # B's admin blocks the room before B ever hears of it.
        root = await self.fed_user(b, "root")
        await b.hs.accounts.set_admin(root.user_id, True)
        b.hs.tokens.forget_user(root.user_id)
        r = await self.user_call(root, "PUT", f"/_synapse/admin/v1/rooms/{q(room_id)}/block",
                                 {"block": True})
        self.assertEqual(r.code, 200, r)
        r = await self.user_call(alice, "POST", f"{API}/rooms/{q(room_id)}/invite",
                                 {"user_id": bob.user_id})
        self.assertEqual(r.code, 403, r)
        self.assertEqual(r.json["errcode"], "M_FORBIDDEN", r)
        self.assertNotIn(room_id, (await self._sync_rooms(bob)).get("invite", {}))
        self.assertIsNone(await self.membership(alice, room_id, bob.user_id))

    # ----- restricted rooms ----------------------------------------------------------------

    @ensure_deferred
    async def test_restricted_join_authorised_by_resident_server(self) -> None:
        a, b, alice, bob = await self._two()
        carol = await self.fed_user(b, "carol")
        space = await self._create(alice, preset="public_chat", room_version="10")
        r = await self._join(bob, space, a)
        self.assertEqual(r.code, 200, r)
        room = await self._create(
            alice, preset="private_chat", room_version="10",
            initial_state=[{
                "type": "m.room.join_rules", "state_key": "",
                "content": {"join_rule": "restricted",
                            "allow": [{"type": "m.room_membership", "room_id": space}]},
            }],
        )
        r = await self._join(bob, room, a)
        self.assertEqual(r.code, 200, r)
        await self._wait_membership(alice, room, bob.user_id, "join", "bob's join on A")
        r = await self.user_call(
            alice, "GET", f"{API}/rooms/{q(room)}/state/m.room.member/{q(bob.user_id)}"
        )
        self.assertEqual(r.json.get("join_authorised_via_users_server"), alice.user_id)
        # Carol (same server as bob) is in no allowed room.
        r = await self._join(carol, room, a)
        self.assertEqual(r.code, 403, r)
        self.assertIsNone(await self.membership(alice, room, carol.user_id))
        # Bob talks in the restricted room.
        await self.send_text(bob, room, "restricted hello", "r1")
        await self._wait_body(alice, room, "restricted hello", "bob's message on A")

    @ensure_deferred
    async def test_restricted_join_only_another_server_can_authorise(self) -> None:
        # B is already in the room (dave) but none of its members may invite: B asks A.
        a, b, alice, bob = await self._two()
        dave = await self.fed_user(b, "dave")
        space = await self._create(alice, preset="public_chat", room_version="10")
        r = await self._join(bob, space, a)
        self.assertEqual(r.code, 200, r)
        room = await self._create(
            alice, preset="private_chat", room_version="10",
            power_level_content_override={"invite": 50},
            initial_state=[{
                "type": "m.room.join_rules", "state_key": "",
                "content": {"join_rule": "restricted",
                            "allow": [{"type": "m.room_membership", "room_id": space}]},
            }],
        )
        r = await self.user_call(alice, "POST", f"{API}/rooms/{q(room)}/invite",
                                 {"user_id": dave.user_id})
        self.assertEqual(r.code, 200, r)
        r = await self._join(dave, room, a)
        self.assertEqual(r.code, 200, r)
        await self._wait_membership(alice, room, dave.user_id, "join", "dave's join on A")
        r = await self._join(bob, room, a)
        self.assertEqual(r.code, 200, r)
        r = await self.user_call(
            bob, "GET", f"{API}/rooms/{q(room)}/state/m.room.member/{q(bob.user_id)}"
        )
        self.assertEqual(r.json.get("join_authorised_via_users_server"), alice.user_id)
        await self._wait_membership(alice, room, bob.user_id, "join", "bob's join on A")
        await self.send_text(bob, room, "let in by A", "ra1")
        await self._wait_body(alice, room, "let in by A", "bob's message on A")

    # ----- bans and redactions -------------------------------------------------------------

    @ensure_deferred
    async def test_ban_over_federation(self) -> None:
        a, b, alice, bob = await self._two()
        room_id = await self._create(alice, preset="public_chat")
        r = await self._join(bob, room_id, a)
        self.assertEqual(r.code, 200, r)
        await self._wait_membership(alice, room_id, bob.user_id, "join", "bob's join on A")
        r = await self.user_call(alice, "POST", f"{API}/rooms/{q(room_id)}/ban",
                                 {"user_id": bob.user_id, "reason": "spam"})
        self.assertEqual(r.code, 200, r)
        await self._wait_membership(bob, room_id, bob.user_id, "ban", "bob's ban on B")
        rooms = await self._sync_rooms(bob)
        self.assertNotIn(room_id, rooms.get("join", {}))
        r = await self._join(bob, room_id, a)
        self.assertEqual(r.code, 403, r)
        # Bob's server is out of the room: A no longer sends it anything.
        await self.send_text(alice, room_id, "after the ban", "b1")
        r = await self.user_call(alice, "POST", f"{API}/rooms/{q(room_id)}/unban",
                                 {"user_id": bob.user_id})
        self.assertEqual(r.code, 200, r)
        r = await self._join(bob, room_id, a)
        self.assertEqual(r.code, 200, r)
        await self._wait_membership(alice, room_id, bob.user_id, "join", "bob's rejoin on A")

    @ensure_deferred
    async def test_redaction_over_federation(self) -> None:
        a, b, alice, bob = await self._two()
        room_id = await self._create(alice, preset="public_chat")
        r = await self._join(bob, room_id, a)
        self.assertEqual(r.code, 200, r)
        await self._wait_membership(alice, room_id, bob.user_id, "join", "bob's join on A")
        event_id = await self.send_text(bob, room_id, "regrettable", "m1")
        await self._wait_body(alice, room_id, "regrettable", "bob's message on A")
        r = await self.user_call(alice, "PUT",
                                 f"{API}/rooms/{q(room_id)}/redact/{q(event_id)}/red1",
                                 {"reason": "moderation"})
        self.assertEqual(r.code, 200, r)
        redaction_id = r.json["event_id"]

        async def redacted_on_b() -> bool:
            r = await self.user_call(bob, "GET",
                                     f"{API}/rooms/{q(room_id)}/event/{q(event_id)}")
            return r.code == 200 and r.json.get("content") == {}

        await self.wait_for(redacted_on_b, what="the redaction on B")
        r = await self.user_call(bob, "GET", f"{API}/rooms/{q(room_id)}/event/{q(event_id)}")
        self.assertEqual(r.json["unsigned"]["redacted_because"]["event_id"], redaction_id)
        self.assertNotIn("regrettable", await self.timeline_bodies(bob, room_id))
        # Bob cannot redact alice's messages (power levels), and the refusal is local.
        alice_event = await self.send_text(alice, room_id, "alice says", "m2")
        await self._wait_body(bob, room_id, "alice says", "alice's message on B")
        r = await self.user_call(bob, "PUT",
                                 f"{API}/rooms/{q(room_id)}/redact/{q(alice_event)}/red2", {})
        self.assertEqual(r.code, 403, r)

    # ----- three servers -------------------------------------------------------------------

    @ensure_deferred
    async def test_three_servers(self) -> None:
        a, b, alice, bob = await self._two()
        c = await self.start_peer(2)
        carol = await self.fed_user(c, "carol")
        room_id = await self._create(alice, preset="public_chat")
        for user in (bob, carol):
            r = await self._join(user, room_id, a)
            self.assertEqual(r.code, 200, r)
        # B learns of carol's join (A forwards joins it received to the other servers).
        await self._wait_membership(bob, room_id, carol.user_id, "join", "carol's join on B")
        await self.send_text(carol, room_id, "from C", "c1")
        await self._wait_body(alice, room_id, "from C", "C's message on A")
        await self._wait_body(bob, room_id, "from C", "C's message on B")
        await self.send_text(bob, room_id, "from B", "b1")
        await self._wait_body(carol, room_id, "from B", "B's message on C")
        r = await self.user_call(bob, "POST", f"{API}/rooms/{q(room_id)}/leave", {})
        self.assertEqual(r.code, 200, r)
        await self._wait_membership(alice, room_id, bob.user_id, "leave", "bob's leave on A")
        await self._wait_membership(carol, room_id, bob.user_id, "leave", "bob's leave on C")
        await self.send_text(alice, room_id, "after bob left", "a1")
        await self._wait_body(carol, room_id, "after bob left", "A's message on C")

    # ----- forks ---------------------------------------------------------------------------

    @ensure_deferred
    async def test_concurrent_sends_converge(self) -> None:
        a, b, alice, bob = await self._two()
        room_id = await self._create(alice, preset="public_chat")
        r = await self._join(bob, room_id, a)
        self.assertEqual(r.code, 200, r)
        await self._wait_membership(alice, room_id, bob.user_id, "join", "bob's join on A")
        sends = []
        for i in range(5):
            sends.append(defer.ensureDeferred(self.send_text(alice, room_id, f"a{i}", f"ta{i}")))
            sends.append(defer.ensureDeferred(self.send_text(bob, room_id, f"b{i}", f"tb{i}")))
        # State changes on both sides at once as well.
        sends.append(defer.ensureDeferred(self.user_call(
            alice, "PUT", f"{API}/rooms/{q(room_id)}/state/m.room.topic", {"topic": "from A"})))
        sends.append(defer.ensureDeferred(self.user_call(
            bob, "PUT", f"{API}/rooms/{q(room_id)}/state/m.room.member/{q(bob.user_id)}",
            {"membership": "join", "displayname": "Bob B"})))
        await defer.gatherResults(sends, consumeErrors=True)
        expected = {f"a{i}" for i in range(5)} | {f"b{i}" for i in range(5)}

        async def all_seen(user: FedUser) -> bool:
            return expected <= set(await self.timeline_bodies(user, room_id))

        await self.wait_for(lambda: all_seen(alice), what="all messages on A")
        await self.wait_for(lambda: all_seen(bob), what="all messages on B")

        async def same_state() -> bool:
            return await self._state(alice, room_id) == await self._state(bob, room_id)

        await self.wait_for(same_state, what="the same current state on A and B")
        state = await self._state(alice, room_id)
        self.assertIn(("m.room.topic", ""), state)
        r = await self.user_call(
            alice, "GET", f"{API}/rooms/{q(room_id)}/state/m.room.member/{q(bob.user_id)}"
        )
        self.assertEqual(r.json.get("displayname"), "Bob B")
        # And the room still works afterwards, from both sides.
        await self.send_text(alice, room_id, "after the fork A", "fa")
        await self.send_text(bob, room_id, "after the fork B", "fb")
        await self._wait_body(bob, room_id, "after the fork A", "A's message after the fork")
        await self._wait_body(alice, room_id, "after the fork B", "B's message after the fork")

    @ensure_deferred
    async def test_fork_closing_state_event_counts(self) -> None:
        # A state event from B whose prev_events miss A's newest event forks the room on A:
        # the resolved state must include the new event itself (it was left out, being not
        # yet stored when the branches were resolved, so A kept bob's old member event).
        a, b, alice, bob = await self._two()
        room_id = await self._create(alice, preset="public_chat")
        r = await self._join(bob, room_id, a)
        self.assertEqual(r.code, 200, r)
        await self._wait_membership(alice, room_id, bob.user_id, "join", "bob's join on A")
        join_id = (await self._state(bob, room_id))[("m.room.member", bob.user_id)]
        await self.send_text(alice, room_id, "A moves on", "f1")
        hs = b.hs
        rv = await hs.event_store.get_room_version(room_id)
        current = await hs.state_store.get_current_state_ids(room_id)
        join = await hs.event_store.get_event(join_id)
        pdu = await hs.event_creator.build_pdu(
            room_id, rv, bob.user_id, "m.room.member",
            {"membership": "join", "displayname": "Forked Bob"}, bob.user_id, current,
        )
        pdu.update(prev_events=[join_id], depth=join.depth + 1)
        event = hs.event_creator.finish_event(pdu, rv)
        result = await hs.federation_client.put_json(
            a.server_name, "/_matrix/federation/v1/send/fork1",
            {"origin": b.server_name, "origin_server_ts": 1, "pdus": [event.pdu], "edus": []},
        )
        self.assertEqual(result, {"pdus": {event.event_id: {}}})
        state = await self._state(alice, room_id)
        self.assertEqual(state[("m.room.member", bob.user_id)], event.event_id)
        r = await self.user_call(
            alice, "GET", f"{API}/rooms/{q(room_id)}/state/m.room.member/{q(bob.user_id)}"
        )
        self.assertEqual(r.json.get("displayname"), "Forked Bob")

    async def _knockable_room(self, alice: FedUser) -> str:
        room_id = await self._create(alice, preset="private_chat", room_version="11")
        r = await self.user_call(alice, "PUT", f"{API}/rooms/{q(room_id)}/state/m.room.join_rules",
                                 {"join_rule": "knock"})
        assert r.code == 200, r
        return room_id

    @ensure_deferred
    async def test_knock_withdrawn(self) -> None:
        a, b, alice, bob = await self._two()
        room_id = await self._knockable_room(alice)
        r = await self.user_call(bob, "POST", f"{API}/knock/{q(room_id)}?via={q(a.server_name)}",
                                 {})
        self.assertEqual(r.code, 200, r)
        await self._wait_membership(alice, room_id, bob.user_id, "knock", "bob's knock on A")
        r = await self.user_call(bob, "POST", f"{API}/rooms/{q(room_id)}/leave", {})
        self.assertEqual(r.code, 200, r)
        await self._wait_membership(alice, room_id, bob.user_id, "leave", "withdrawal on A")
        self.assertNotIn(room_id, (await self._sync_rooms(bob)).get("knock", {}))

    @ensure_deferred
    async def test_knock_denied_reaches_knocker(self) -> None:
        a, b, alice, bob = await self._two()
        room_id = await self._knockable_room(alice)
        r = await self.user_call(bob, "POST", f"{API}/knock/{q(room_id)}?via={q(a.server_name)}",
                                 {})
        self.assertEqual(r.code, 200, r)
        await self._wait_membership(alice, room_id, bob.user_id, "knock", "bob's knock on A")
        r = await self.user_call(alice, "POST", f"{API}/rooms/{q(room_id)}/kick",
                                 {"user_id": bob.user_id, "reason": "no"})
        self.assertEqual(r.code, 200, r)

        async def no_longer_knocking() -> bool:
            return room_id not in (await self._sync_rooms(bob)).get("knock", {})

        await self.wait_for(no_longer_knocking, what="the denied knock on B")

    @ensure_deferred
    async def test_invite_rescinded_reaches_invitee(self) -> None:
        a, b, alice, bob = await self._two()
        room_id = await self._create(alice, preset="private_chat")
        r = await self.user_call(alice, "POST", f"{API}/rooms/{q(room_id)}/invite",
                                 {"user_id": bob.user_id})
        self.assertEqual(r.code, 200, r)

        async def invited() -> bool:
            return room_id in (await self._sync_rooms(bob)).get("invite", {})

        await self.wait_for(invited, what="invite in B's sync")
        r = await self.user_call(alice, "POST", f"{API}/rooms/{q(room_id)}/kick",
                                 {"user_id": bob.user_id})
        self.assertEqual(r.code, 200, r)

        async def not_invited() -> bool:
            return not await invited()

        await self.wait_for(not_invited, what="the rescinded invite on B")
        r = await self.user_call(bob, "POST", f"{API}/join/{q(room_id)}", {})
        self.assertEqual(r.code, 403, r)


@on_both_engines
class MembershipWithSynapse(FederationTestCase):
    """The same flows with a real Synapse on the other side."""

    timeout = 300

    async def _setup(self) -> tuple[Server, SynapsePeer, FedUser, dict[str, Any]]:
        return await self.heddle_and_synapse("synapse-membership-pw")

    async def _synapse(self, peer: SynapsePeer, user: dict[str, Any], method: str, path: str,
                       body: Any = None) -> Any:
        return await peer.request(method, path, body, token=user["access_token"])

    @ensure_deferred
    async def test_synapse_user_knocks_on_heddle_room(self) -> None:
        heddle, peer, alice, bob = await self._setup()
        r = await self.user_call(alice, "POST", f"{API}/createRoom",
                                 {"preset": "private_chat", "room_version": "11"})
        room_id = r.json["room_id"]
        r = await self.user_call(alice, "PUT", f"{API}/rooms/{q(room_id)}/state/m.room.join_rules",
                                 {"join_rule": "knock"})
        self.assertEqual(r.code, 200, r)
        r = await self._synapse(peer, bob, "POST",
                                f"{API}/knock/{q(room_id)}?via={q(heddle.server_name)}", {})
        self.assertEqual(r.code, 200, r)

        async def knocked() -> bool:
            return await self.membership(alice, room_id, bob["user_id"]) == "knock"

        await self.wait_for(knocked, timeout=60, what="Synapse's knock on Heddle")
        r = await self.user_call(alice, "POST", f"{API}/rooms/{q(room_id)}/invite",
                                 {"user_id": bob["user_id"]})
        self.assertEqual(r.code, 200, r)

        async def invited_on_synapse() -> bool:
            r = await self._synapse(peer, bob, "GET", f"{API}/sync?timeout=0")
            return room_id in r.json.get("rooms", {}).get("invite", {})

        await self.wait_for(invited_on_synapse, timeout=60, what="the invite on Synapse")
        r = await self._synapse(peer, bob, "POST",
                                f"{API}/join/{q(room_id)}?via={q(heddle.server_name)}", {})
        self.assertEqual(r.code, 200, r)

        async def joined() -> bool:
            return await self.membership(alice, room_id, bob["user_id"]) == "join"

        await self.wait_for(joined, timeout=60, what="Synapse's join on Heddle")

    @ensure_deferred
    async def test_invite_from_synapse_rescinded(self) -> None:
        heddle, peer, alice, bob = await self._setup()
        r = await self._synapse(peer, bob, "POST", f"{API}/createRoom",
                                {"preset": "private_chat", "invite": [alice.user_id]})
        self.assertEqual(r.code, 200, r)
        room_id = r.json["room_id"]

        async def invited() -> bool:
            r = await self.user_call(alice, "GET", f"{API}/sync")
            return room_id in r.json.get("rooms", {}).get("invite", {})

        await self.wait_for(invited, timeout=60, what="Synapse's invite on Heddle")
        r = await self._synapse(peer, bob, "POST", f"{API}/rooms/{q(room_id)}/kick",
                                {"user_id": alice.user_id})
        self.assertEqual(r.code, 200, r)

        async def not_invited() -> bool:
            return not await invited()

        await self.wait_for(not_invited, timeout=60, what="the rescinded invite on Heddle")

    @ensure_deferred
    async def test_heddle_user_rejects_synapse_invite(self) -> None:
        heddle, peer, alice, bob = await self._setup()
        r = await self._synapse(peer, bob, "POST", f"{API}/createRoom",
                                {"preset": "private_chat", "invite": [alice.user_id]})
        room_id = r.json["room_id"]

        async def invited() -> bool:
            r = await self.user_call(alice, "GET", f"{API}/sync")
            return room_id in r.json.get("rooms", {}).get("invite", {})

        await self.wait_for(invited, timeout=60, what="Synapse's invite on Heddle")
        r = await self.user_call(alice, "POST", f"{API}/rooms/{q(room_id)}/leave", {})
        self.assertEqual(r.code, 200, r)

        async def left_on_synapse() -> bool:
            r = await self._synapse(
                peer, bob, "GET",
                f"{API}/rooms/{q(room_id)}/state/m.room.member/{q(alice.user_id)}")
            return r.code == 200 and r.json.get("membership") == "leave"

        await self.wait_for(left_on_synapse, timeout=60, what="the rejection on Synapse")
        self.assertFalse(await invited())
