"""Rooms: /createRoom, sending messages and state, redactions, reading state and members.

Spec: api/client-server/create_room.yaml, room_send.yaml, room_state.yaml, redaction.yaml,
rooms.yaml; client-server API "Creation", "Sending events to a room", "Redactions".
"""

from __future__ import annotations

from nio import (
    JoinedMembersResponse,
    JoinedRoomsResponse,
    JoinResponse,
    RoomCreateResponse,
    RoomGetStateEventError,
    RoomGetStateEventResponse,
    RoomGetStateResponse,
    RoomPutStateError,
    RoomPutStateResponse,
    RoomRedactResponse,
    RoomSendError,
    RoomSendResponse,
    RoomVisibility,
)
from twisted.internet import defer

from homeserver.events.hashing import room_id_from_create_event_id
from homeserver.sync.tokens import StreamToken
from tests.harness import nio, on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q

PL = "m.room.power_levels"


@on_both_engines
class CreateRoomTests(RoomTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")

    async def test_nio_two_users_talk_in_a_new_room(self):
        alice = self.nio_client(self.alice)
        bob = self.nio_client(self.bob)
        created = await nio(alice.room_create(
            visibility=RoomVisibility.public, name="Tea party", topic="Unbirthdays",
            alias="teaparty",
        ))
        self.assertIsInstance(created, RoomCreateResponse)
        room_id = created.room_id
        joined = await nio(bob.join("#teaparty:test.heddle"))
        self.assertIsInstance(joined, JoinResponse)
        self.assertEqual(joined.room_id, room_id)

        sent = await nio(alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "Tea?"}))
        self.assertIsInstance(sent, RoomSendResponse)
        reply = await nio(bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "Yes"}))
        self.assertIsInstance(reply, RoomSendResponse)
        events = await self.room_events(room_id)
        self.assertEqual(
            [(e.sender, e.content["body"]) for e in events if e.type == "m.room.message"],
            [(self.alice.user_id, "Tea?"), (self.bob.user_id, "Yes")],
        )

        members = await nio(bob.joined_members(room_id))
        self.assertIsInstance(members, JoinedMembersResponse)
        self.assertEqual(
            {(m.user_id, m.display_name) for m in members.members},
            {(self.alice.user_id, "alice"), (self.bob.user_id, "bob")},
        )
        rooms = await nio(bob.joined_rooms())
        self.assertIsInstance(rooms, JoinedRoomsResponse)
        self.assertEqual(rooms.rooms, [room_id])

        name = await nio(bob.room_get_state_event(room_id, "m.room.name"))
        self.assertIsInstance(name, RoomGetStateEventResponse)
        self.assertEqual(name.content, {"name": "Tea party"})
        state = await nio(alice.room_get_state(room_id))
        self.assertIsInstance(state, RoomGetStateResponse)
        types = {(e["type"], e["state_key"]) for e in state.events}
        self.assertIn(("m.room.topic", ""), types)
        self.assertIn(("m.room.canonical_alias", ""), types)
        self.assertIn(("m.room.member", self.bob.user_id), types)

        put = await nio(alice.room_put_state(room_id, "m.room.topic", {"topic": "Riddles"}))
        self.assertIsInstance(put, RoomPutStateResponse)
        topic = await nio(bob.room_get_state_event(room_id, "m.room.topic"))
        self.assertEqual(topic.content, {"topic": "Riddles"})
        # Bob has power 0: state needs 50.
        refused = await nio(bob.room_put_state(room_id, "m.room.topic", {"topic": "Mine"}))
        self.assertIsInstance(refused, RoomPutStateError)
        self.assertEqual(refused.status_code, "M_FORBIDDEN")

        redacted = await nio(alice.room_redact(room_id, reply.event_id, reason="rude"))
        self.assertIsInstance(redacted, RoomRedactResponse)

    async def test_events_are_sent_in_the_spec_order(self):
        room_id = await self.create_room(
            self.alice,
            name="Name",
            topic="Topic",
            room_alias_name="ordered",
            invite=[self.bob.user_id],
            is_direct=True,
            initial_state=[
                {"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
                {"type": "m.room.name", "content": {"name": "overridden by name"}},
                {"type": "org.example.custom", "state_key": "k", "content": {"a": 1}},
            ],
        )
        events = await self.room_events(room_id)
        self.assertEqual(
            [(e.type, e.state_key) for e in events],
            [
                ("m.room.create", ""),
                ("m.room.member", self.alice.user_id),
                (PL, ""),
                ("m.room.canonical_alias", ""),
                ("m.room.join_rules", ""),
                ("m.room.history_visibility", ""),
                ("m.room.guest_access", ""),
                ("m.room.encryption", ""),
                ("org.example.custom", "k"),
                ("m.room.name", ""),
                ("m.room.topic", ""),
                ("m.room.member", self.bob.user_id),
            ],
        )
        by_key = {(e.type, e.state_key): e for e in events}
        self.assertEqual(by_key[("m.room.name", "")].content, {"name": "Name"})
        self.assertEqual(by_key[("m.room.topic", "")].content["topic"], "Topic")
        self.assertEqual(
            by_key[("m.room.topic", "")].content["m.topic"],
            {"m.text": [{"body": "Topic", "mimetype": "text/plain"}]},
        )
        self.assertEqual(by_key[("m.room.canonical_alias", "")].content, {"alias": "#ordered:test.heddle"})
        invite = by_key[("m.room.member", self.bob.user_id)]
        self.assertEqual(
            dict(invite.content), {"membership": "invite", "is_direct": True, "displayname": "bob"}
        )
        creator_join = by_key[("m.room.member", self.alice.user_id)]
        self.assertEqual(dict(creator_join.content), {"membership": "join", "displayname": "alice"})
        # The alias resolves to the room.
        self.assertEqual(await self.hs.alias_store.get_room_id("#ordered:test.heddle"), room_id)
        # One chain: every event's only parent is the one before.
        for before, after in zip(events, events[1:], strict=False):
            self.assertEqual(after.prev_event_ids, [before.event_id])

    async def test_private_chat_is_the_default(self):
        room_id = await self.create_room(self.alice)
        state = await self.current_state(room_id)
        self.assertEqual(state[("m.room.join_rules", "")].content, {"join_rule": "invite"})
        self.assertEqual(state[("m.room.history_visibility", "")].content, {"history_visibility": "shared"})
        self.assertEqual(state[("m.room.guest_access", "")].content, {"guest_access": "can_join"})
        levels = state[(PL, "")].content
        self.assertEqual(levels["users"], {self.alice.user_id: 100})
        self.assertEqual(levels["invite"], 0)
        self.assertEqual(levels["events"]["m.room.power_levels"], 100)
        self.assertEqual(state[("m.room.create", "")].content, {"room_version": "11"})
        self.assertFalse(await self._is_public(room_id))

    async def test_public_visibility_means_public_chat_and_published(self):
        room_id = await self.create_room(self.alice, visibility="public")
        state = await self.current_state(room_id)
        self.assertEqual(state[("m.room.join_rules", "")].content, {"join_rule": "public"})
        self.assertEqual(state[("m.room.guest_access", "")].content, {"guest_access": "forbidden"})
        self.assertEqual(state[(PL, "")].content["invite"], 50)
        self.assertTrue(await self._is_public(room_id))
        # An explicit preset wins over visibility.
        room_id = await self.create_room(self.alice, visibility="public", preset="private_chat")
        state = await self.current_state(room_id)
        self.assertEqual(state[("m.room.join_rules", "")].content, {"join_rule": "invite"})
        self.assertTrue(await self._is_public(room_id))

    async def _is_public(self, room_id: str) -> bool:
        row = await self.hs.db.run_interaction(
            "t", lambda txn: txn.select_one("SELECT is_public FROM rooms WHERE room_id = ?", (room_id,))
        )
        return bool(row[0])

    async def test_trusted_private_chat_gives_invitees_the_creators_power(self):
        room_id = await self.create_room(
            self.alice, preset="trusted_private_chat", invite=[self.bob.user_id]
        )
        levels = (await self.current_state(room_id))[(PL, "")].content
        self.assertEqual(levels["users"], {self.alice.user_id: 100, self.bob.user_id: 100})
        # Room v12: invitees become additional creators instead.
        room_id = await self.create_room(
            self.alice, preset="trusted_private_chat", invite=[self.bob.user_id],
            room_version="12", creation_content={"additional_creators": [self.bob.user_id]},
        )
        state = await self.current_state(room_id)
        self.assertEqual(
            state[("m.room.create", "")].content,
            {"room_version": "12", "additional_creators": [self.bob.user_id]},
        )
        self.assertEqual(state[(PL, "")].content["users"], {})

    async def test_room_versions_10_11_12(self):
        for version in ("10", "11", "12"):
            room_id = await self.create_room(self.alice, room_version=version)
            state = await self.current_state(room_id)
            create = state[("m.room.create", "")]
            self.assertEqual(create.content["room_version"], version)
            self.assertEqual((await self.hs.event_store.get_room_version(room_id)).identifier, version)
            if version == "10":
                self.assertEqual(create.content["creator"], self.alice.user_id)
            else:
                self.assertNotIn("creator", create.content)
            levels = state[(PL, "")].content
            if version == "12":
                self.assertEqual(room_id, room_id_from_create_event_id(create.event_id))
                self.assertEqual(levels["users"], {})
                self.assertEqual(levels["events"]["m.room.tombstone"], 150)
            else:
                self.assertEqual(levels["users"], {self.alice.user_id: 100})
            r = await self.send(self.alice, room_id)
            self.assertEqual(r.code, 200, r)

    async def test_room_versions_1_to_9(self):
        """Every older stable version can be created too (SyTest's room-version tests): the
        create event names the creator, v1/v2 events carry `$random:server` IDs and cite
        their prev/auth events with hashes, and a second user can join and talk."""
        for version in map(str, range(1, 10)):
            room_id = await self.create_room(
                self.alice, room_version=version, preset="public_chat",
                room_alias_name=f"v{version}",
            )
            self.assertEqual((await self.hs.event_store.get_room_version(room_id)).identifier,
                             version)
            create = (await self.current_state(room_id))[("m.room.create", "")]
            self.assertEqual(
                dict(create.content), {"room_version": version, "creator": self.alice.user_id}
            )
            r = await self.join(self.bob, f"#v{version}:{self.hs.config.server_name}")
            self.assertEqual(r.code, 200, r)
            r = await self.send(self.bob, room_id, {"msgtype": "m.text", "body": f"v{version}"})
            self.assertEqual(r.code, 200, r)
            event_id = r.json["event_id"]
            message = (await self.hs.event_store.get_events([event_id]))[event_id]
            self.assertEqual(message.sender, self.bob.user_id)
            if version in ("1", "2"):
                self.assertTrue(event_id.endswith(":" + self.hs.config.server_name), event_id)
                self.assertEqual(message.pdu["event_id"], event_id)
                self.assertTrue(all(
                    isinstance(ref, list) and len(ref) == 2 and "sha256" in ref[1]
                    for ref in message.pdu["prev_events"] + message.pdu["auth_events"]
                ), message.pdu)
            else:
                self.assertNotIn("event_id", message.pdu)
            r = await self.request(
                "GET", f"{API}/rooms/{q(room_id)}/event/{q(event_id)}", token=self.alice.token
            )
            self.assertEqual((r.code, r.json["content"]["body"]), (200, f"v{version}"), r)

    async def test_unsupported_room_versions(self):
        for version in ("13", "0", "foo", ""):
            r = await self.request(
                "POST", f"{API}/createRoom", {"room_version": version}, token=self.alice.token
            )
            self.assertError(r, 400, "M_UNSUPPORTED_ROOM_VERSION")
        r = await self.request("POST", f"{API}/createRoom", {"room_version": 11}, token=self.alice.token)
        self.assertError(r, 400, "M_BAD_JSON")

    async def test_creation_content_cannot_override_server_keys(self):
        room_id = await self.create_room(
            self.alice,
            room_version="10",
            creation_content={
                "room_version": "1", "creator": "@mallory:test.heddle", "m.federate": False,
                "type": "m.space",
            },
        )
        create = (await self.current_state(room_id))[("m.room.create", "")]
        self.assertEqual(
            dict(create.content),
            {"room_version": "10", "creator": self.alice.user_id, "m.federate": False, "type": "m.space"},
        )

    async def test_power_level_content_override(self):
        room_id = await self.create_room(
            self.alice,
            invite=[self.bob.user_id],
            power_level_content_override={
                "users": {self.alice.user_id: 100, self.bob.user_id: 50}, "events_default": 10,
            },
        )
        levels = (await self.current_state(room_id))[(PL, "")].content
        self.assertEqual(levels["users"], {self.alice.user_id: 100, self.bob.user_id: 50})
        self.assertEqual(levels["events_default"], 10)
        self.assertEqual(levels["ban"], 50)
        # Leaving the creator out of `users` would lock them out of their own room.
        r = await self.request(
            "POST", f"{API}/createRoom",
            {"power_level_content_override": {"users": {self.bob.user_id: 100}}},
            token=self.alice.token,
        )
        self.assertError(r, 400, "M_INVALID_ROOM_STATE")
        # Room v12 creators have infinite power and cannot be listed.
        r = await self.request(
            "POST", f"{API}/createRoom",
            {"room_version": "12", "power_level_content_override": {"users": {self.alice.user_id: 100}}},
            token=self.alice.token,
        )
        self.assertError(r, 400, "M_INVALID_ROOM_STATE")
        r = await self.request(
            "POST", f"{API}/createRoom",
            {"power_level_content_override": {"ban": "50"}},
            token=self.alice.token,
        )
        self.assertError(r, 400, "M_BAD_JSON")

    async def test_initial_state_overrides_the_preset(self):
        room_id = await self.create_room(
            self.alice,
            preset="public_chat",
            initial_state=[
                {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}},
                {"type": PL, "content": {"users": {self.alice.user_id: 100}, "state_default": 60}},
            ],
        )
        state = await self.current_state(room_id)
        self.assertEqual(state[("m.room.history_visibility", "")].content, {"history_visibility": "joined"})
        # Power levels from initial_state replace the defaults entirely.
        self.assertEqual(
            dict(state[(PL, "")].content), {"users": {self.alice.user_id: 100}, "state_default": 60}
        )
        events = await self.room_events(room_id)
        self.assertEqual([e.type for e in events][:3], ["m.room.create", "m.room.member", PL])

    async def test_initial_state_the_creator_may_not_send_is_invalid_room_state(self):
        r = await self.request(
            "POST", f"{API}/createRoom",
            {
                "power_level_content_override": {"events": {"m.room.name": 101}},
                "initial_state": [{"type": "m.room.name", "content": {"name": "x"}}],
            },
            token=self.alice.token,
        )
        self.assertError(r, 400, "M_INVALID_ROOM_STATE")

    async def test_create_room_bad_input(self):
        async def create(body: object, token: str | None = self.alice.token):
            return await self.request("POST", f"{API}/createRoom", body, token=token)

        self.assertError(await create({}, token=None), 401, "M_MISSING_TOKEN")
        self.assertError(await create({"preset": "party"}), 400, "M_BAD_JSON")
        self.assertError(await create({"visibility": "secret"}), 400, "M_BAD_JSON")
        self.assertError(await create({"invite": "@bob:test.heddle"}), 400, "M_BAD_JSON")
        self.assertError(await create({"invite": ["bob"]}), 400, "M_INVALID_PARAM")
        self.assertError(await create({"invite": ["@nobody:test.heddle"]}), 404, "M_NOT_FOUND")
        self.assertError(
            await create({"invite_3pid": [
                {"id_server": "id.example", "id_access_token": "t", "medium": "email", "address": "a@b.c"}
            ]}),
            403, "M_FORBIDDEN",
        )
        self.assertError(await create({"initial_state": [{"type": "x"}]}), 400, "M_BAD_JSON")
        self.assertError(
            await create({"initial_state": [{"type": "m.room.create", "content": {}}]}),
            400, "M_INVALID_ROOM_STATE",
        )
        self.assertError(await create({"creation_content": {"m.federate": 1.5}}), 400, "M_BAD_JSON")
        self.assertError(await create({"name": "x" * 70000}), 413, "M_TOO_LARGE")
        self.assertError(
            await self.request("POST", f"{API}/createRoom", raw=b"{nope", token=self.alice.token),
            400, "M_NOT_JSON",
        )
        for bad in ("a:b", "#full:test.heddle", "has space", ""):
            self.assertError(await create({"room_alias_name": bad}), 400, "M_INVALID_PARAM")
        # None of the refused requests left a room behind.
        self.assertEqual(await self.hs.membership.joined_rooms(self.alice.user_id), [])
        # An invitee whose server cannot be reached: the room exists by the time the invite
        # is sent (as with Synapse), and the request reports the failed invite.
        r = await create({"invite": ["@carol:elsewhere.example"]})
        self.assertEqual(r.code, 502, r)

    async def test_alias_already_taken(self):
        await self.create_room(self.alice, room_alias_name="taken")
        r = await self.request(
            "POST", f"{API}/createRoom", {"room_alias_name": "taken"}, token=self.bob.token
        )
        self.assertError(r, 400, "M_ROOM_IN_USE")

    async def test_capabilities_advertise_room_versions(self):
        r = await self.request("GET", f"{API}/capabilities", token=self.alice.token)
        self.assertEqual(r.code, 200, r)
        versions = r.json["capabilities"]["m.room_versions"]
        self.assertEqual(versions["default"], "11")
        self.assertEqual(versions["available"], {str(v): "stable" for v in range(1, 13)})


@on_both_engines
class DefaultRoomVersionTests(RoomTestCase):
    config_overrides = {"rooms": {"default_room_version": "12"}}

    async def test_configured_default_room_version(self):
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        create = (await self.current_state(room_id))[("m.room.create", "")]
        self.assertEqual(create.content["room_version"], "12")
        r = await self.request("GET", f"{API}/capabilities", token=alice.token)
        self.assertEqual(r.json["capabilities"]["m.room_versions"]["default"], "12")


@on_both_engines
class SendTests(RoomTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.room = await self.create_room(self.alice, preset="public_chat")
        r = await self.join(self.bob, self.room)
        self.assertEqual(r.code, 200, r)

    async def test_transaction_ids_make_sends_idempotent(self):
        first = await self.send(self.alice, self.room, {"body": "once"}, txn_id="abc")
        again = await self.send(self.alice, self.room, {"body": "once"}, txn_id="abc")
        self.assertEqual(first.code, 200, first)
        self.assertEqual(again.json, first.json)
        # Another device of the same user is another request.
        other = await self.login("alice")
        other_device = User(self.alice.user_id, other["access_token"], other["device_id"])
        third = await self.send(other_device, self.room, {"body": "once"}, txn_id="abc")
        self.assertNotEqual(third.json["event_id"], first.json["event_id"])
        # The same transaction ID in another room, or for another type, is another request.
        fourth = await self.send(self.alice, self.room, {"body": "once"}, event_type="m.other", txn_id="abc")
        self.assertNotEqual(fourth.json["event_id"], first.json["event_id"])
        bodies = [e.content.get("body") for e in await self.room_events(self.room) if e.sender == self.alice.user_id and e.type in ("m.room.message", "m.other")]
        self.assertEqual(bodies, ["once", "once", "once"])

    async def test_send_to_unknown_room(self):
        r = await self.send(self.alice, "!nowhere:test.heddle")
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.send(self.alice, "not-a-room")
        self.assertError(r, 400, "M_INVALID_PARAM")

    async def test_send_to_room_you_are_not_in(self):
        carol = await self.user("carol")
        r = await self.send(carol, self.room)
        self.assertError(r, 403, "M_FORBIDDEN")
        client = self.nio_client(carol)
        refused = await nio(client.room_send(self.room, "m.room.message", {"body": "x"}))
        self.assertIsInstance(refused, RoomSendError)
        self.assertEqual(refused.status_code, "M_FORBIDDEN")

    async def test_oversized_event(self):
        r = await self.send(self.alice, self.room, {"body": "x" * 65536})
        self.assertError(r, 413, "M_TOO_LARGE")
        r = await self.put_state(self.alice, self.room, "org.example.big", {"body": "x" * 65536})
        self.assertError(r, 413, "M_TOO_LARGE")

    async def test_content_must_be_canonical_json(self):
        r = await self.send(self.alice, self.room, {"body": "x", "n": 1.5})
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.send(self.alice, self.room, {"body": "x", "n": 2**60})
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.send(self.alice, self.room, [1, 2])
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request(
            "PUT", f"{API}/rooms/{q(self.room)}/send/m.room.message/t1", raw=b"not json",
            token=self.alice.token,
        )
        self.assertError(r, 400, "M_NOT_JSON")
        r = await self.put_state(self.alice, self.room, "m.room.topic", {"topic": "x", "f": 0.5})
        self.assertError(r, 400, "M_BAD_JSON")

    async def test_concurrent_sends_and_joins_keep_one_chain(self):
        users = [await self.user(f"user{i}") for i in range(10)]
        requests = [self.send(self.alice, self.room, {"body": str(i)}) for i in range(20)]
        requests += [self.join(u, self.room) for u in users]
        requests += [self.send(self.bob, self.room, {"body": f"b{i}"}) for i in range(10)]
        responses = await defer.gatherResults([defer.ensureDeferred(r) for r in requests])
        for response in responses:
            self.assertEqual(response.code, 200, response)

        extremities = await self.hs.event_store.get_forward_extremities(self.room)
        self.assertEqual(len(extremities), 1)
        events = await self.room_events(self.room)
        for before, after in zip(events, events[1:], strict=False):
            self.assertEqual(after.prev_event_ids, [before.event_id])
            self.assertEqual(after.depth, before.depth + 1)
        self.assertEqual(extremities[0][0], events[-1].event_id)
        members = await self.hs.state_store.get_current_members(self.room)
        self.assertEqual(set(members), {self.alice.user_id, self.bob.user_id} | {u.user_id for u in users})
        # The current state table and the state group agree.
        group = await self.hs.event_store.get_current_state_group(self.room)
        self.assertEqual(
            await self.hs.state_store.get_state_group(group),
            await self.hs.state_store.get_current_state_ids(self.room),
        )
        bodies = {e.content.get("body") for e in events if e.type == "m.room.message"}
        self.assertTrue({str(i) for i in range(20)} <= bodies)


@on_both_engines
class StateTests(RoomTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.room = await self.create_room(self.alice, preset="public_chat", name="Start")
        r = await self.join(self.bob, self.room)
        self.assertEqual(r.code, 200, r)

    async def test_unsigned_replaces_state_names_the_replaced_event(self):
        # Spec (v1.19): client-formatted state events carry `unsigned.replaces_state`, the
        # event ID of the state they replaced.
        first = await self.put_state(self.alice, self.room, "m.room.topic", {"topic": "a"})
        second = await self.put_state(self.alice, self.room, "m.room.topic", {"topic": "b"})
        self.assertEqual((first.code, second.code), (200, 200), (first, second))
        r = await self.request(
            "GET", f"{API}/rooms/{q(self.room)}/event/{q(second.json['event_id'])}",
            token=self.bob.token,
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["unsigned"].get("replaces_state"), first.json["event_id"], r)

    async def test_put_and_get_state(self):
        r = await self.put_state(self.alice, self.room, "m.room.topic", {"topic": "t"})
        self.assertEqual(r.code, 200, r)
        event_id = r.json["event_id"]
        r = await self.get_state(self.bob, self.room, "m.room.topic")
        self.assertEqual((r.code, r.json), (200, {"topic": "t"}))
        r = await self.get_state(self.bob, self.room, "m.room.topic", format="event")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["event_id"], event_id)
        self.assertEqual(r.json["state_key"], "")
        self.assertEqual(r.json["sender"], self.alice.user_id)
        self.assertEqual(r.json["room_id"], self.room)
        r = await self.get_state(self.bob, self.room, "m.room.topic", format="full")
        self.assertError(r, 400, "M_INVALID_PARAM")
        # Without the trailing slash, the state key is empty too.
        r = await self.request(
            "GET", f"{API}/rooms/{q(self.room)}/state/m.room.topic", token=self.bob.token
        )
        self.assertEqual((r.code, r.json), (200, {"topic": "t"}))
        r = await self.request(
            "PUT", f"{API}/rooms/{q(self.room)}/state/m.room.topic", {"topic": "u"},
            token=self.alice.token,
        )
        self.assertEqual(r.code, 200, r)
        # Setting the same state again changes nothing.
        again = await self.request(
            "PUT", f"{API}/rooms/{q(self.room)}/state/m.room.topic", {"topic": "u"},
            token=self.alice.token,
        )
        self.assertEqual(again.json, r.json)
        # State keys with slashes and user IDs.
        r = await self.put_state(self.alice, self.room, "org.example.s", {"k": 1}, state_key="a/b c")
        self.assertEqual(r.code, 200, r)
        r = await self.get_state(self.bob, self.room, "org.example.s", state_key="a/b c")
        self.assertEqual(r.json, {"k": 1})
        full = await self.get_state(self.bob, self.room)
        self.assertEqual(full.code, 200, full)
        keys = {(e["type"], e["state_key"]) for e in full.json}
        self.assertIn(("org.example.s", "a/b c"), keys)
        self.assertIn(("m.room.create", ""), keys)

    async def test_missing_state_is_404(self):
        r = await self.get_state(self.bob, self.room, "m.room.avatar")
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.get_state(self.bob, self.room, "m.room.name", state_key="other")
        self.assertError(r, 404, "M_NOT_FOUND")
        client = self.nio_client(self.bob)
        missing = await nio(client.room_get_state_event(self.room, "m.room.avatar"))
        self.assertIsInstance(missing, RoomGetStateEventError)

    async def test_state_of_unknown_room_and_outsiders(self):
        # The spec lists only 403 for GET /state: an unknown room looks like a room you
        # cannot see.
        r = await self.get_state(self.bob, "!nowhere:test.heddle")
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.members(self.bob, "!nowhere:test.heddle")
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.request("GET", f"{API}/rooms/{q('!nowhere:test.heddle')}/joined_members", token=self.bob.token)
        self.assertError(r, 403, "M_FORBIDDEN")
        carol = await self.user("carol")
        self.assertError(await self.get_state(carol, self.room), 403, "M_FORBIDDEN")
        self.assertError(await self.get_state(carol, self.room, "m.room.name"), 403, "M_FORBIDDEN")
        self.assertError(await self.members(carol, self.room), 403, "M_FORBIDDEN")
        r = await self.request("GET", f"{API}/rooms/{q(self.room)}/joined_members", token=carol.token)
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_world_readable_rooms_are_readable_by_anyone(self):
        r = await self.put_state(
            self.alice, self.room, "m.room.history_visibility", {"history_visibility": "world_readable"}
        )
        self.assertEqual(r.code, 200, r)
        carol = await self.user("carol")
        r = await self.get_state(carol, self.room, "m.room.name")
        self.assertEqual((r.code, r.json), (200, {"name": "Start"}))

    async def test_after_leaving_you_see_the_state_when_you_left(self):
        r = await self.membership_action(self.bob, self.room, "leave")
        self.assertEqual(r.code, 200, r)
        r = await self.put_state(self.alice, self.room, "m.room.name", {"name": "After"})
        self.assertEqual(r.code, 200, r)
        r = await self.get_state(self.bob, self.room, "m.room.name")
        self.assertEqual((r.code, r.json), (200, {"name": "Start"}))
        state = await self.get_state(self.bob, self.room)
        member = [e for e in state.json if e["type"] == "m.room.member" and e["state_key"] == self.bob.user_id]
        self.assertEqual(member[0]["content"]["membership"], "leave")
        r = await self.get_state(self.alice, self.room, "m.room.name")
        self.assertEqual(r.json, {"name": "After"})
        # After forgetting the room, nothing.
        r = await self.membership_action(self.bob, self.room, "forget")
        self.assertEqual(r.code, 200, r)
        self.assertError(await self.get_state(self.bob, self.room), 403, "M_FORBIDDEN")

    async def test_state_above_your_power_level(self):
        r = await self.put_state(self.bob, self.room, "m.room.name", {"name": "Bob's"})
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.put_state(
            self.bob, self.room, PL, {"users": {self.alice.user_id: 100, self.bob.user_id: 100}}
        )
        self.assertError(r, 403, "M_FORBIDDEN")
        # Alice may not give anyone more than her own 100.
        r = await self.put_state(
            self.alice, self.room, PL, {"users": {self.alice.user_id: 100, self.bob.user_id: 101}}
        )
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_invalid_power_levels_content(self):
        bad_contents = [
            {"users": {self.alice.user_id: "100"}},
            {"users": {self.alice.user_id: 100}, "ban": "50"},
            {"users": {self.alice.user_id: 100}, "kick": True},
            {"users": {self.alice.user_id: 100}, "events": {"m.room.name": "50"}},
            {"users": {self.alice.user_id: 100}, "events": []},
            {"users": {"not-a-user": 100, self.alice.user_id: 100}},
            {"users": {self.alice.user_id: 100}, "notifications": {"room": None}},
        ]
        for content in bad_contents:
            r = await self.put_state(self.alice, self.room, PL, content)
            self.assertError(r, 400, "M_BAD_JSON")
        r = await self.put_state(self.alice, self.room, PL, {"users": {self.alice.user_id: 100}, "ban": 50.5})
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.put_state(
            self.alice, self.room, PL, {"users": {self.alice.user_id: 100, self.bob.user_id: 50}}
        )
        self.assertEqual(r.code, 200, r)

    async def test_second_create_event_is_refused(self):
        r = await self.put_state(
            self.alice, self.room, "m.room.create", {"room_version": "11", "m.federate": False}
        )
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.put_state(self.alice, self.room, "m.room.create", {"room_version": "12"})
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.send(self.alice, self.room, {"room_version": "11"}, event_type="m.room.create")
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_state_keys_naming_other_users_are_theirs(self):
        r = await self.put_state(self.alice, self.room, "org.example.s", {}, state_key=self.bob.user_id)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.put_state(self.alice, self.room, "org.example.s", {}, state_key=self.alice.user_id)
        self.assertEqual(r.code, 200, r)

    async def test_canonical_alias_must_point_to_the_room(self):
        other = await self.create_room(self.alice, room_alias_name="other")
        r = await self.put_state(self.alice, self.room, "m.room.canonical_alias", {"alias": "#missing:test.heddle"})
        self.assertError(r, 400, "M_BAD_ALIAS")
        r = await self.put_state(self.alice, self.room, "m.room.canonical_alias", {"alias": "#other:test.heddle"})
        self.assertError(r, 400, "M_BAD_ALIAS")
        r = await self.put_state(self.alice, self.room, "m.room.canonical_alias", {"alt_aliases": ["nope"]})
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.put_state(self.alice, self.room, "m.room.canonical_alias", {"alias": 5})
        self.assertError(r, 400, "M_INVALID_PARAM")
        await self.hs.alias_store.create_alias("#mine:test.heddle", self.room, self.alice.user_id)
        r = await self.put_state(
            self.alice, self.room, "m.room.canonical_alias",
            {"alias": "#mine:test.heddle", "alt_aliases": ["#mine:test.heddle"]},
        )
        self.assertEqual(r.code, 200, r)
        # The other room's alias event (set at creation) can be re-sent unchanged.
        r = await self.put_state(
            self.alice, other, "m.room.canonical_alias", {"alias": "#other:test.heddle", "alt_aliases": []}
        )
        self.assertEqual(r.code, 200, r)

    async def test_members(self):
        carol = await self.user("carol")
        r = await self.membership_action(self.alice, self.room, "invite", {"user_id": carol.user_id})
        self.assertEqual(r.code, 200, r)
        before_ban = str(StreamToken(events=self.hs.event_stream.current))
        dave = await self.user("dave")
        r = await self.membership_action(self.alice, self.room, "ban", {"user_id": dave.user_id})
        self.assertEqual(r.code, 200, r)

        def memberships(response):
            self.assertEqual(response.code, 200, response)
            return {e["state_key"]: e["content"]["membership"] for e in response.json["chunk"]}

        everyone = {
            self.alice.user_id: "join", self.bob.user_id: "join",
            carol.user_id: "invite", dave.user_id: "ban",
        }
        self.assertEqual(memberships(await self.members(self.bob, self.room)), everyone)
        self.assertEqual(
            memberships(await self.members(self.bob, self.room, membership="join")),
            {self.alice.user_id: "join", self.bob.user_id: "join"},
        )
        self.assertEqual(
            memberships(await self.members(self.bob, self.room, not_membership="join")),
            {carol.user_id: "invite", dave.user_id: "ban"},
        )
        # Both filters: "either the membership is `membership` or is not `not_membership`".
        self.assertEqual(
            memberships(await self.members(self.bob, self.room, membership="invite", not_membership="join")),
            {carol.user_id: "invite", dave.user_id: "ban"},
        )
        self.assertEqual(
            memberships(await self.members(self.bob, self.room, at=before_ban)),
            {k: v for k, v in everyone.items() if k != dave.user_id},
        )
        # A pagination token: just after the creator's join.
        join = [e for e in await self.room_events(self.room) if e.type == "m.room.member"][0]
        stored = await self.hs.event_store.get_stored_event(join.event_id)
        token = f"t{stored.topological_ordering}-{stored.stream_ordering}"
        self.assertEqual(
            memberships(await self.members(self.bob, self.room, at=token)),
            {self.alice.user_id: "join"},
        )
        self.assertError(await self.members(self.bob, self.room, at="garbage"), 400, "M_INVALID_PARAM")
        self.assertError(await self.members(self.bob, self.room, membership="joined"), 400, "M_INVALID_PARAM")
        # A member who left sees the members as they were then, whatever `at` says.
        r = await self.membership_action(self.bob, self.room, "leave")
        self.assertEqual(r.code, 200, r)
        erin = await self.user("erin")
        self.assertEqual((await self.join(erin, self.room)).code, 200)
        now = str(StreamToken(events=self.hs.event_stream.current))
        for params in ({}, {"at": now}):
            seen = memberships(await self.members(self.bob, self.room, **params))
            self.assertNotIn(erin.user_id, seen)
            self.assertEqual(seen[self.bob.user_id], "leave")

    async def test_joined_members_show_room_profiles(self):
        r = await self.request(
            "PUT", f"{API}/profile/{q(self.bob.user_id)}/avatar_url",
            {"avatar_url": "mxc://test.heddle/bob"}, token=self.bob.token,
        )
        self.assertEqual(r.code, 200, r)
        r = await self.join(self.bob, self.room)
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{API}/rooms/{q(self.room)}/joined_members", token=self.alice.token)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(
            r.json,
            {"joined": {
                self.alice.user_id: {"display_name": "alice", "avatar_url": None},
                self.bob.user_id: {"display_name": "bob", "avatar_url": "mxc://test.heddle/bob"},
            }},
        )


@on_both_engines
class RedactionTests(RoomTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")

    async def make_room(self, version: str = "11") -> str:
        room_id = await self.create_room(self.alice, preset="public_chat", room_version=version)
        r = await self.join(self.bob, room_id)
        self.assertEqual(r.code, 200, r)
        return room_id

    async def redact(self, user: User, room_id: str, event_id: str, body=None, txn: str = "r1"):
        return await self.request(
            "PUT", f"{API}/rooms/{q(room_id)}/redact/{q(event_id)}/{txn}",
            body if body is not None else {}, token=user.token,
        )

    async def serialized(self, event_id: str) -> dict:
        stored = await self.hs.event_store.get_stored_event(event_id)
        [event] = await self.hs.event_serializer.serialize([stored])
        return event

    async def test_redact_own_and_others_events(self):
        room = await self.make_room()
        mine = (await self.send(self.bob, room, {"msgtype": "m.text", "body": "oops"})).json["event_id"]
        r = await self.redact(self.bob, room, mine, {"reason": "typo"})
        self.assertEqual(r.code, 200, r)
        redaction = await self.hs.event_store.get_event(r.json["event_id"])
        self.assertEqual(dict(redaction.content), {"reason": "typo", "redacts": mine})
        self.assertEqual((await self.serialized(mine))["content"], {})
        # Retrying the same transaction returns the same redaction.
        again = await self.redact(self.bob, room, mine, {"reason": "typo"})
        self.assertEqual(again.json, r.json)

        alices = (await self.send(self.alice, room)).json["event_id"]
        r = await self.redact(self.bob, room, alices, txn="r2")
        self.assertError(r, 403, "M_FORBIDDEN")
        self.assertNotEqual((await self.serialized(alices))["content"], {})
        # The same through /send.
        r = await self.send(self.bob, room, {"redacts": alices}, event_type="m.room.redaction")
        self.assertError(r, 403, "M_FORBIDDEN")
        # Alice has the redact level (50).
        bobs = (await self.send(self.bob, room)).json["event_id"]
        r = await self.redact(self.alice, room, bobs)
        self.assertEqual(r.code, 200, r)
        self.assertEqual((await self.serialized(bobs))["content"], {})

    async def test_redaction_errors(self):
        room = await self.make_room()
        r = await self.redact(self.alice, room, "$unknown")
        self.assertError(r, 404, "M_NOT_FOUND")
        other_room = await self.create_room(self.alice)
        elsewhere = (await self.send(self.alice, other_room)).json["event_id"]
        r = await self.redact(self.alice, room, elsewhere)
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.redact(self.alice, "!nowhere:test.heddle", elsewhere)
        self.assertError(r, 404, "M_NOT_FOUND")
        carol = await self.user("carol")
        r = await self.redact(carol, room, elsewhere)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.redact(self.alice, room, elsewhere, {"reason": 5})
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.send(self.alice, room, {"redacts": 5}, event_type="m.room.redaction")
        self.assertError(r, 400, "M_BAD_JSON")

    async def test_redaction_through_send_in_v10_moves_redacts_to_the_top(self):
        room = await self.make_room("10")
        target = (await self.send(self.bob, room)).json["event_id"]
        r = await self.send(self.bob, room, {"redacts": target, "reason": "r"}, event_type="m.room.redaction")
        self.assertEqual(r.code, 200, r)
        redaction = await self.hs.event_store.get_event(r.json["event_id"])
        self.assertEqual(redaction.pdu["redacts"], target)
        self.assertEqual(dict(redaction.content), {"reason": "r"})
        self.assertEqual((await self.serialized(target))["content"], {})
        # And through /redact.
        other = (await self.send(self.bob, room)).json["event_id"]
        r = await self.redact(self.alice, room, other)
        self.assertEqual(r.code, 200, r)
        redaction = await self.hs.event_store.get_event(r.json["event_id"])
        self.assertEqual(redaction.pdu["redacts"], other)
        self.assertNotIn("redacts", redaction.content)

    async def test_server_admins_may_redact_local_users_events(self):
        carol = await self.user("carol")
        await self.hs.accounts.set_admin(carol.user_id, True)
        session = await self.login("carol")
        admin = User(carol.user_id, session["access_token"], session["device_id"])
        room = await self.make_room()
        self.assertEqual((await self.join(admin, room)).code, 200)
        target = (await self.send(self.alice, room)).json["event_id"]
        r = await self.redact(admin, room, target)
        self.assertEqual(r.code, 200, r)
        self.assertEqual((await self.serialized(target))["content"], {})


@on_both_engines
class MessageRateLimitTests(RoomTestCase):
    config_overrides = {
        "rate_limits": {
            "enabled": True,
            "message_per_user": {"per_second": 0.001, "burst_count": 3},
        }
    }

    async def test_message_rate_limit(self):
        alice = await self.user("alice")
        # The room's creation takes one of the three.
        room = await self.create_room(alice)
        for i in range(2):
            r = await self.send(alice, room, txn_id=f"t{i}")
            self.assertEqual(r.code, 200, r)
        r = await self.send(alice, room, txn_id="t2")
        body = self.assertError(r, 429, "M_LIMIT_EXCEEDED")
        self.assertGreater(body["retry_after_ms"], 0)
        r = await self.put_state(alice, room, "m.room.topic", {"topic": "t"})
        self.assertError(r, 429, "M_LIMIT_EXCEEDED")
        # A retry of a request that went through is not another message.
        r = await self.send(alice, room, txn_id="t1")
        self.assertEqual(r.code, 200, r)
        # Creating a room counts as one message, however many events it makes.
        r = await self.request("POST", f"{API}/createRoom", {"name": "x"}, token=alice.token)
        self.assertError(r, 429, "M_LIMIT_EXCEEDED")

    async def test_admins_are_exempt(self):
        await self.user("root")
        await self.hs.accounts.set_admin("@root:test.heddle", True)
        session = await self.login("root")
        root = User(session["user_id"], session["access_token"], session["device_id"])
        for _ in range(4):
            room = await self.create_room(root, name="many events")
        for i in range(6):
            r = await self.send(root, room, txn_id=f"t{i}")
            self.assertEqual(r.code, 200, r)
