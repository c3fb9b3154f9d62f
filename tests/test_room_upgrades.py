"""Room upgrades: POST /rooms/{roomId}/upgrade.

Spec: api/client-server/room_upgrades.yaml; client-server API "Room Upgrades" (server
behaviour). What goes beyond the spec follows Synapse (`RoomCreationHandler.upgrade_room`).
"""

from __future__ import annotations

from typing import Any

from nio import RoomGetStateEventResponse
from twisted.internet import defer
from twisted.trial import unittest

from homeserver.events.hashing import room_id_from_create_event_id
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.rooms.upgrade import (
    normalised_power_levels,
    restricted_power_levels,
    split_canonical_alias,
)
from tests.federation_helpers import FederationTestCase
from tests.harness import Response, ensure_deferred, nio, on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q

PL = "m.room.power_levels"
TOMBSTONE = "m.room.tombstone"


class UpgradeTestCase(RoomTestCase):
    async def upgrade(self, user: User, room_id: str, body: Any = None, **kwargs: Any) -> Response:
        return await self.request(
            "POST",
            f"{API}/rooms/{q(room_id)}/upgrade",
            {"new_version": "11"} if body is None else body,
            token=user.token,
            **kwargs,
        )

    async def upgraded(self, user: User, room_id: str, version: str = "11", **body: Any) -> str:
        r = await self.upgrade(user, room_id, {"new_version": version, **body})
        self.assertEqual(r.code, 200, r)
        return str(r.json["replacement_room"])

    async def state_content(self, user: User, room_id: str, event_type: str, key: str = "") -> Any:
        r = await self.get_state(user, room_id, event_type, key)
        self.assertEqual(r.code, 200, r)
        return r.json

    async def state_event(self, user: User, room_id: str, event_type: str) -> Any:
        r = await self.get_state(user, room_id, event_type, "", format="event")
        self.assertEqual(r.code, 200, r)
        return r.json


@on_both_engines
class RoomUpgradeTests(UpgradeTestCase):
    async def setUp(self) -> None:
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.carol = await self.user("carol")

    async def test_upgrade_tombstones_the_old_room_and_names_it_as_predecessor(self) -> None:
        old = await self.create_room(self.alice, room_version="10", preset="public_chat")
        new = await self.upgraded(self.alice, old, "11")
        self.assertNotEqual(new, old)
        tombstone = await self.state_event(self.alice, old, TOMBSTONE)
        self.assertEqual(tombstone["sender"], self.alice.user_id)
        self.assertEqual(tombstone["content"]["replacement_room"], new)
        self.assertIsInstance(tombstone["content"]["body"], str)
        create = await self.state_event(self.alice, new, "m.room.create")
        self.assertEqual(create["sender"], self.alice.user_id)
        # Room v11: the creator is the sender; `predecessor` names the tombstone.
        self.assertEqual(
            create["content"],
            {"room_version": "11",
             "predecessor": {"room_id": old, "event_id": tombstone["event_id"]}},
        )
        # The tombstone is the old room's last word before its power levels are locked.
        events = await self.room_events(old)
        self.assertEqual([e.type for e in events[-2:]], [TOMBSTONE, PL])
        # The upgrader is in the new room; nobody else was moved.
        self.assertEqual(await self.membership_of(new, self.alice), "join")

    async def test_every_creatable_version_upgrades_to_every_other(self) -> None:
        for old_version in ("10", "11", "12"):
            for new_version in ("10", "11", "12"):
                old = await self.create_room(self.alice, room_version=old_version, name="r")
                new = await self.upgraded(self.alice, old, new_version)
                create = await self.state_event(self.alice, new, "m.room.create")
                content = create["content"]
                self.assertEqual(content["room_version"], new_version)
                self.assertEqual(content["predecessor"]["room_id"], old)
                tombstone = await self.state_event(self.alice, old, TOMBSTONE)
                self.assertEqual(tombstone["content"]["replacement_room"], new)
                if new_version == "12":
                    # The room ID is the create event's hash, so the create event cannot
                    # name the tombstone (spec: `event_id` MAY be omitted).
                    self.assertEqual(new, room_id_from_create_event_id(create["event_id"]))
                    self.assertNotIn("event_id", content["predecessor"])
                else:
                    self.assertEqual(content["predecessor"]["event_id"], tombstone["event_id"])
                self.assertEqual(
                    ("creator" in content), new_version == "10", (old_version, new_version)
                )
                self.assertEqual(await self.state_content(self.alice, new, "m.room.name"),
                                 {"name": "r"})
                levels = await self.state_content(self.alice, new, PL)
                # v12: creators have infinite power and are not listed.
                self.assertEqual(
                    self.alice.user_id in levels["users"], new_version != "12",
                    (old_version, new_version),
                )
                if new_version != "12":
                    # Including a creator of a v12 room: enough power to upgrade again.
                    self.assertGreaterEqual(
                        levels["users"][self.alice.user_id], levels["events"][TOMBSTONE],
                        (old_version, new_version),
                    )
                # The upgrader can still act in the new room.
                r = await self.put_state(self.alice, new, "m.room.topic", {"topic": "t"})
                self.assertEqual(r.code, 200, (old_version, new_version, r))

    async def test_recommended_state_is_copied_and_memberships_are_not(self) -> None:
        old = await self.create_room(self.alice, room_version="11", preset="private_chat")
        state: list[tuple[str, dict[str, Any]]] = [
            ("m.room.name", {"name": "Tea"}),
            ("m.room.topic", {"topic": "Unbirthdays"}),
            ("m.room.avatar", {"url": "mxc://test.heddle/cup"}),
            ("m.room.join_rules", {"join_rule": "invite"}),
            ("m.room.guest_access", {"guest_access": "forbidden"}),
            ("m.room.history_visibility", {"history_visibility": "joined"}),
            ("m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"}),
            ("m.room.server_acl", {"allow": ["*"], "deny": ["evil.example"],
                                   "allow_ip_literals": False}),
        ]
        for event_type, content in state:
            self.assertEqual((await self.put_state(self.alice, old, event_type, content)).code, 200)
        # Not a recommended type: stays behind (clients may rely on who sent it).
        self.assertEqual(
            (await self.put_state(self.alice, old, "org.example.custom", {"x": 1})).code, 200
        )
        await self.membership_action(self.alice, old, "invite", {"user_id": self.bob.user_id})
        self.assertEqual((await self.join(self.bob, old)).code, 200)
        await self.membership_action(self.alice, old, "invite", {"user_id": self.carol.user_id})
        await self.membership_action(
            self.alice, old, "ban", {"user_id": "@troll:test.heddle", "reason": "trolling"}
        )
        old_levels = await self.state_content(self.alice, old, PL)

        new = await self.upgraded(self.alice, old, "11")
        for event_type, content in state:
            self.assertEqual(await self.state_content(self.alice, new, event_type), content)
        self.assertEqual((await self.get_state(self.alice, new, "org.example.custom")).code, 404)
        # Power levels as they were (the upgrader's temporary power is gone again).
        self.assertEqual(await self.state_content(self.alice, new, PL), old_levels)
        # Bans are carried over (Synapse), sent by the upgrader with the original reason.
        ban = await self.state_content(self.alice, new, "m.room.member", "@troll:test.heddle")
        self.assertEqual(ban, {"membership": "ban", "reason": "trolling"})
        # Joins and invites are not (spec: memberships are not transferred).
        self.assertIsNone(await self.membership_of(new, self.bob))
        self.assertIsNone(await self.membership_of(new, self.carol))
        self.assertEqual(await self.membership_of(old, self.carol), "invite")

    async def test_a_space_keeps_its_type_children_and_federation_setting(self) -> None:
        old = await self.create_room(
            self.alice, room_version="11",
            creation_content={"type": "m.space", "m.federate": False},
        )
        child = await self.create_room(self.alice)
        removed = await self.create_room(self.alice)
        for room_id, content in ((child, {"via": ["test.heddle"]}), (removed, {})):
            r = await self.put_state(self.alice, old, "m.space.child", content, room_id)
            self.assertEqual(r.code, 200, r)
        new = await self.upgraded(self.alice, old, "12")
        create = await self.state_content(self.alice, new, "m.room.create")
        self.assertEqual((create["type"], create["m.federate"]), ("m.space", False))
        self.assertEqual(
            await self.state_content(self.alice, new, "m.space.child", child),
            {"via": ["test.heddle"]},
        )
        # A removed child (empty content) is not carried over.
        self.assertEqual((await self.get_state(self.alice, new, "m.space.child", removed)).code,
                         404)

    async def test_the_old_room_is_restricted(self) -> None:
        old = await self.create_room(self.alice, room_version="11", preset="public_chat")
        self.assertEqual((await self.join(self.bob, old)).code, 200)
        self.assertEqual((await self.send(self.bob, old)).code, 200)
        await self.upgraded(self.alice, old)
        levels = await self.state_content(self.alice, old, PL)
        self.assertEqual((levels["events_default"], levels["invite"]), (50, 50))
        # An ordinary member can no longer talk or invite in the old room.
        self.assertError(await self.send(self.bob, old), 403, "M_FORBIDDEN")
        self.assertError(
            await self.membership_action(self.bob, old, "invite", {"user_id": self.carol.user_id}),
            403,
            "M_FORBIDDEN",
        )

    async def test_power_is_raised_only_while_the_room_is_set_up(self) -> None:
        """A moderator allowed to upgrade, but not to send every state event: Synapse gives
        them the power to copy the state over, then puts the copied levels back."""
        old = await self.create_room(
            self.alice,
            room_version="11",
            preset="public_chat",
            power_level_content_override={
                "users": {self.alice.user_id: 100, self.bob.user_id: 60},
                "events": {TOMBSTONE: 60, "m.room.server_acl": 100, PL: 100},
            },
        )
        self.assertEqual(
            (await self.put_state(self.alice, old, "m.room.server_acl", {"allow": ["*"]})).code,
            200,
        )
        self.assertEqual((await self.join(self.bob, old)).code, 200)
        old_levels = await self.state_content(self.alice, old, PL)
        new = await self.upgraded(self.bob, old)
        self.assertEqual(await self.state_content(self.bob, new, "m.room.server_acl"),
                         {"allow": ["*"]})
        self.assertEqual(await self.state_content(self.bob, new, PL), old_levels)
        power_events = [
            e for e in await self.room_events(new) if e.type == PL
        ]
        self.assertEqual(power_events[0].content["users"][self.bob.user_id], 100)
        self.assertEqual(power_events[-1].content["users"][self.bob.user_id], 60)

    async def test_to_v12_with_additional_creators(self) -> None:
        old = await self.create_room(
            self.alice,
            room_version="11",
            power_level_content_override={
                "users": {self.alice.user_id: 100, self.bob.user_id: 100,
                          self.carol.user_id: 50},
            },
        )
        new = await self.upgraded(
            self.alice, old, "12", additional_creators=[self.bob.user_id]
        )
        create = await self.state_event(self.alice, new, "m.room.create")
        self.assertEqual(create["content"]["additional_creators"], [self.bob.user_id])
        self.assertEqual(create["content"]["predecessor"], {"room_id": old})
        levels = await self.state_content(self.alice, new, PL)
        # Creators are not listed; everyone else keeps their level.
        self.assertEqual(levels["users"], {self.carol.user_id: 50})
        # v12 -> v12: earlier additional creators are not carried over unless named again.
        newer = await self.upgraded(self.alice, new, "12")
        create = await self.state_event(self.alice, newer, "m.room.create")
        self.assertNotIn("additional_creators", create["content"])

    async def test_aliases_canonical_alias_and_directory_move(self) -> None:
        old = await self.create_room(
            self.alice, room_version="11", preset="public_chat", visibility="public",
            room_alias_name="tea",
        )
        r = await self.request("PUT", f"{API}/directory/room/{q('#cakes:test.heddle')}",
                               {"room_id": old}, token=self.alice.token)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(
            (await self.put_state(self.alice, old, "m.room.canonical_alias", {
                "alias": "#tea:test.heddle", "alt_aliases": ["#cakes:test.heddle"],
            })).code,
            200,
        )
        new = await self.upgraded(self.alice, old)
        for alias in ("#tea:test.heddle", "#cakes:test.heddle"):
            r = await self.request("GET", f"{API}/directory/room/{q(alias)}")
            self.assertEqual(r.json["room_id"], new)
        self.assertEqual(
            await self.state_content(self.alice, new, "m.room.canonical_alias"),
            {"alias": "#tea:test.heddle", "alt_aliases": ["#cakes:test.heddle"]},
        )
        self.assertEqual(await self.state_content(self.alice, old, "m.room.canonical_alias"), {})
        r = await self.request("GET", f"{API}/rooms/{q(new)}/aliases", token=self.alice.token)
        self.assertEqual(sorted(r.json["aliases"]), ["#cakes:test.heddle", "#tea:test.heddle"])
        # The directory lists the new room instead of the old.
        for room_id, visibility in ((old, "private"), (new, "public")):
            r = await self.request("GET", f"{API}/directory/list/room/{q(room_id)}")
            self.assertEqual(r.json, {"visibility": visibility})
        r = await self.request("GET", f"{API}/publicRooms", token=self.alice.token)
        self.assertEqual([c["room_id"] for c in r.json["chunk"]], [new])

    async def test_members_tags_direct_chats_and_push_rules_follow(self) -> None:
        old = await self.create_room(self.alice, room_version="11", preset="public_chat")
        self.assertEqual((await self.join(self.bob, old)).code, 200)
        user_path = f"{API}/user/{q(self.bob.user_id)}"
        r = await self.request("PUT", f"{user_path}/rooms/{q(old)}/tags/m.favourite",
                               {"order": 0.5}, token=self.bob.token)
        self.assertEqual(r.code, 200, r)
        direct = {self.alice.user_id: [old]}
        r = await self.request("PUT", f"{user_path}/account_data/m.direct", direct,
                               token=self.bob.token)
        self.assertEqual(r.code, 200, r)
        rules = f"{API}/pushrules/global"
        r = await self.request("PUT", f"{rules}/room/{q(old)}", {"actions": []},
                               token=self.bob.token)
        self.assertEqual(r.code, 200, r)
        r = await self.request("PUT", f"{rules}/override/quiet", {
            "actions": [],
            "conditions": [{"kind": "event_match", "key": "room_id", "pattern": old}],
        }, token=self.bob.token)
        self.assertEqual(r.code, 200, r)

        new = await self.upgraded(self.alice, old)
        r = await self.request("GET", f"{user_path}/rooms/{q(new)}/tags", token=self.bob.token)
        self.assertEqual(r.json, {"tags": {"m.favourite": {"order": 0.5}}})
        r = await self.request("GET", f"{user_path}/account_data/m.direct", token=self.bob.token)
        self.assertEqual(r.json, {self.alice.user_id: [old, new]})
        r = await self.request("GET", f"{rules}/room/{q(new)}", token=self.bob.token)
        self.assertEqual((r.code, r.json.get("actions")), (200, []))
        r = await self.request("GET", f"{rules}/override/{q(new)}", token=self.bob.token)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(
            r.json["conditions"], [{"kind": "event_match", "key": "room_id", "pattern": new}]
        )
        # The old rules stay: the old room still exists.
        r = await self.request("GET", f"{rules}/override/quiet", token=self.bob.token)
        self.assertEqual(r.code, 200, r)

    async def test_concurrent_upgrades_make_one_room(self) -> None:
        old = await self.create_room(
            self.alice,
            room_version="11",
            power_level_content_override={
                "users": {self.alice.user_id: 100, self.bob.user_id: 100},
            },
        )
        self.assertEqual((await self.membership_action(
            self.alice, old, "invite", {"user_id": self.bob.user_id})).code, 200)
        self.assertEqual((await self.join(self.bob, old)).code, 200)
        same_user = await defer.gatherResults([
            defer.ensureDeferred(self.upgrade(self.alice, old)) for _ in range(3)
        ])
        self.assertEqual([r.code for r in same_user], [200, 200, 200], same_user)
        self.assertEqual(len({r.json["replacement_room"] for r in same_user}), 1)
        # Another user, at once or soon after: refused, as Synapse does.
        self.assertError(await self.upgrade(self.bob, old), 400, "M_UNKNOWN")
        tombstones = [e for e in await self.room_events(old) if e.type == TOMBSTONE]
        self.assertEqual(len(tombstones), 1)
        creates = await self.rooms_with_predecessor(old)
        self.assertEqual(creates, [same_user[0].json["replacement_room"]])

    async def test_two_users_at_once_make_one_room(self) -> None:
        old = await self.create_room(
            self.alice,
            room_version="11",
            power_level_content_override={
                "users": {self.alice.user_id: 100, self.bob.user_id: 100},
            },
        )
        await self.membership_action(self.alice, old, "invite", {"user_id": self.bob.user_id})
        self.assertEqual((await self.join(self.bob, old)).code, 200)
        answers = await defer.gatherResults([
            defer.ensureDeferred(self.upgrade(self.alice, old)),
            defer.ensureDeferred(self.upgrade(self.bob, old)),
        ])
        self.assertEqual(sorted(r.code for r in answers), [200, 400], answers)
        self.assertEqual(len(await self.rooms_with_predecessor(old)), 1)

    async def rooms_with_predecessor(self, room_id: str) -> list[str]:
        rows = await self.hs.db.run_interaction(
            "rooms", lambda txn: txn.select_all("SELECT room_id FROM rooms", ())
        )
        found = []
        for (candidate,) in rows:
            create_id = await self.hs.state_store.get_current_state_event_id(
                candidate, "m.room.create", ""
            )
            create = await self.hs.event_store.get_event(create_id) if create_id else None
            if create and create.content.get("predecessor", {}).get("room_id") == room_id:
                found.append(candidate)
        return found

    async def test_an_already_upgraded_room(self) -> None:
        old = await self.create_room(self.alice, room_version="11")
        first = await self.upgraded(self.alice, old)
        # Synapse answers a repeat with the room the first upgrade made.
        self.assertEqual(await self.upgraded(self.alice, old), first)
        self.assertEqual(len(await self.rooms_with_predecessor(old)), 1)
        # The new room can be upgraded in turn.
        second = await self.upgraded(self.alice, first, "12")
        create = await self.state_event(self.alice, second, "m.room.create")
        self.assertEqual(create["content"]["predecessor"], {"room_id": first})

    async def test_bad_requests(self) -> None:
        room_id = await self.create_room(self.alice, room_version="11")
        path = f"{API}/rooms/{q(room_id)}/upgrade"
        for version in ("999", "0", "13", ""):
            self.assertError(
                await self.upgrade(self.alice, room_id, {"new_version": version}),
                400,
                "M_UNSUPPORTED_ROOM_VERSION",
            )
        self.assertError(await self.upgrade(self.alice, room_id, {}), 400, "M_BAD_JSON")
        self.assertError(await self.upgrade(self.alice, room_id, {"new_version": 11}), 400,
                         "M_BAD_JSON")
        self.assertError(await self.upgrade(self.alice, room_id, ["11"]), 400, "M_BAD_JSON")
        self.assertError(
            await self.upgrade(self.alice, room_id, {"new_version": "12",
                                                     "additional_creators": "bob"}),
            400,
            "M_BAD_JSON",
        )
        self.assertError(
            await self.upgrade(self.alice, room_id, {"new_version": "12",
                                                     "additional_creators": ["bob"]}),
            400,
            "M_INVALID_PARAM",
        )
        r = await self.request("POST", path, raw=b"{not json", token=self.alice.token)
        self.assertError(r, 400, "M_NOT_JSON")
        self.assertError(
            await self.request("POST", path, {"new_version": "11"}), 401, "M_MISSING_TOKEN"
        )
        # Nothing happened to the room.
        self.assertEqual((await self.get_state(self.alice, room_id, TOMBSTONE)).code, 404)

    async def test_permission(self) -> None:
        room_id = await self.create_room(self.alice, room_version="11", preset="public_chat")
        self.assertEqual((await self.join(self.bob, room_id)).code, 200)
        # A member without the power to send the tombstone.
        self.assertError(await self.upgrade(self.bob, room_id), 403, "M_FORBIDDEN")
        # Someone not in the room.
        self.assertError(await self.upgrade(self.carol, room_id), 403, "M_FORBIDDEN")
        # A room this server does not know: 404, as Synapse.
        self.assertError(
            await self.upgrade(self.alice, "!nowhere:test.heddle"), 404, "M_NOT_FOUND"
        )
        self.assertError(await self.upgrade(self.alice, "not-a-room"), 400, "M_INVALID_PARAM")
        self.assertEqual((await self.get_state(self.alice, room_id, TOMBSTONE)).code, 404)
        self.assertEqual(await self.rooms_with_predecessor(room_id), [])
        # Given the power, the member may.
        levels = await self.state_content(self.alice, room_id, PL)
        levels["users"][self.bob.user_id] = 100
        self.assertEqual((await self.put_state(self.alice, room_id, PL, levels)).code, 200)
        self.assertEqual((await self.upgrade(self.bob, room_id)).code, 200)

    async def test_a_version_1_room_with_string_power_levels(self) -> None:
        """Rooms of old versions reach us over federation; build one directly."""
        creator = self.hs.event_creator
        v1 = KNOWN_ROOM_VERSIONS["1"]
        alice = self.alice.user_id
        old, _ = await creator.create_room(
            v1, alice, {"creator": alice, "room_version": "1"}, is_public=False
        )
        await creator.send(old, alice, "m.room.member", {"membership": "join"}, state_key=alice)
        await creator.send(old, alice, PL, {
            "users": {alice: "100"}, "state_default": " 50", "events_default": "0",
            "events": {TOMBSTONE: "100"}, "invite": 0,
        }, state_key="")
        await creator.send(old, alice, "m.room.name", {"name": "Old"}, state_key="")
        new = await self.upgraded(self.alice, old, "11")
        create = await self.state_event(self.alice, new, "m.room.create")
        tombstone = await self.state_event(self.alice, old, TOMBSTONE)
        # v1 event IDs carry the server name.
        self.assertTrue(tombstone["event_id"].endswith(":test.heddle"))
        self.assertEqual(create["content"]["predecessor"],
                         {"room_id": old, "event_id": tombstone["event_id"]})
        levels = await self.state_content(self.alice, new, PL)
        self.assertEqual(levels["users"], {alice: 100})
        self.assertEqual((levels["state_default"], levels["events"][TOMBSTONE]), (50, 100))
        self.assertEqual(await self.state_content(self.alice, new, "m.room.name"),
                         {"name": "Old"})
        old_levels = await self.state_content(self.alice, old, PL)
        self.assertEqual((old_levels["events_default"], old_levels["invite"]), (50, 50))

    async def test_nio_sees_the_tombstone_and_follows_it(self) -> None:
        old = await self.create_room(self.alice, room_version="10", preset="public_chat",
                                     name="Before")
        self.assertEqual((await self.join(self.bob, old)).code, 200)
        bob = self.nio_client(self.bob)
        await nio(bob.sync(timeout=0, full_state=True))
        self.assertIsNone(bob.rooms[old].replacement_room)
        new = await self.upgraded(self.alice, old, "11")
        await nio(bob.sync(timeout=0))
        self.assertEqual(bob.rooms[old].replacement_room, new)
        # Join by the tombstone's room ID, through its sender's server (spec).
        joined = await nio(bob.join(bob.rooms[old].replacement_room))
        self.assertEqual(getattr(joined, "room_id", None), new, joined)
        await nio(bob.sync(timeout=0))
        self.assertEqual(bob.rooms[new].room_version, "11")
        self.assertEqual(bob.rooms[new].name, "Before")
        create = await nio(bob.room_get_state_event(new, "m.room.create"))
        self.assertIsInstance(create, RoomGetStateEventResponse)
        self.assertEqual(create.content["predecessor"]["room_id"], old)


@on_both_engines
class FederatedRoomUpgrade(FederationTestCase):
    @ensure_deferred
    async def test_a_remote_member_sees_the_tombstone_and_joins_the_new_room(self) -> None:
        a, b, alice, bob = await self.two_peers()
        r = await self.user_call(alice, "POST", f"{API}/createRoom",
                                 {"preset": "public_chat", "room_version": "11", "name": "Fed"})
        old = r.json["room_id"]
        r = await self.user_call(bob, "POST", f"{API}/join/{q(old)}?via={q(a.server_name)}", {})
        self.assertEqual(r.code, 200, r)
        await self.wait_for(
            lambda: self._is(self.membership(alice, old, bob.user_id), "join"),
            what="bob's join on A",
        )
        # What B keeps of the old room: bob's tag, and an alias on B.
        r = await self.user_call(
            bob, "PUT", f"{API}/user/{q(bob.user_id)}/rooms/{q(old)}/tags/u.work", {}
        )
        self.assertEqual(r.code, 200, r)
        b_alias = f"#fed:{b.server_name}"
        r = await self.user_call(bob, "PUT", f"{API}/directory/room/{q(b_alias)}",
                                 {"room_id": old})
        self.assertEqual(r.code, 200, r)
        r = await self.user_call(alice, "POST", f"{API}/rooms/{q(old)}/upgrade",
                                 {"new_version": "12"})
        self.assertEqual(r.code, 200, r)
        new = r.json["replacement_room"]

        async def tombstone_on_b() -> bool:
            r = await self.user_call(bob, "GET", f"{API}/rooms/{q(old)}/state/{TOMBSTONE}")
            return r.code == 200 and r.json.get("replacement_room") == new

        await self.wait_for(tombstone_on_b, what="the tombstone on B")
        r = await self.user_call(bob, "POST", f"{API}/join/{q(new)}?via={q(a.server_name)}", {})
        self.assertEqual(r.code, 200, r)
        r = await self.user_call(bob, "GET", f"{API}/rooms/{q(new)}/state/m.room.create")
        self.assertEqual(r.json["predecessor"], {"room_id": old})
        r = await self.user_call(bob, "GET", f"{API}/rooms/{q(new)}/state/m.room.name")
        self.assertEqual(r.json, {"name": "Fed"})
        # B carried its own side over when it joined the new room (as Synapse does).
        r = await self.user_call(bob, "GET", f"{API}/user/{q(bob.user_id)}/rooms/{q(new)}/tags")
        self.assertEqual(r.json, {"tags": {"u.work": {}}})
        r = await self.user_call(bob, "GET", f"{API}/directory/room/{q(b_alias)}")
        self.assertEqual(r.json["room_id"], new)
        await self.wait_for(
            lambda: self._is(self.membership(alice, new, bob.user_id), "join"),
            what="bob's join of the new room on A",
        )
        # The old room is locked on B too: bob may no longer talk there.
        async def locked_on_b() -> bool:
            r = await self.user_call(bob, "GET", f"{API}/rooms/{q(old)}/state/{PL}")
            return r.code == 200 and r.json.get("events_default") == 50

        await self.wait_for(locked_on_b, what="the old room's new power levels on B")
        r = await self.user_call(bob, "PUT", f"{API}/rooms/{q(old)}/send/m.room.message/late",
                                 {"msgtype": "m.text", "body": "too late"})
        self.assertEqual(r.code, 403, r)


class UpgradeContentRules(unittest.TestCase):
    """The pure rules, for what HTTP cannot easily reach."""

    def test_numeric_strings_become_integers(self) -> None:
        v5 = KNOWN_ROOM_VERSIONS["5"]
        levels = normalised_power_levels(
            {"ban": "+50", "kick": 50.0, "users": {"@a:x": " 100 ", "@b:x": "lots"},
             "events": {"m.room.name": "25"}, "notifications": {"room": "20"},
             "redact": True, "org.example": {"kept": "as is"}},
            v5,
        )
        self.assertEqual(levels, {
            "ban": 50, "kick": 50, "users": {"@a:x": 100}, "events": {"m.room.name": 25},
            "notifications": {"room": 20}, "org.example": {"kept": "as is"},
        })

    def test_restriction_respects_users_default(self) -> None:
        v11 = KNOWN_ROOM_VERSIONS["11"]
        self.assertEqual(
            restricted_power_levels({"users_default": 60, "invite": 0}, v11),
            {"users_default": 60, "invite": 61, "events_default": 61},
        )
        self.assertIsNone(restricted_power_levels({"events_default": 50, "invite": 70}, v11))

    def test_only_our_aliases_move(self) -> None:
        old, new = split_canonical_alias(
            {"alias": "#a:here", "alt_aliases": ["#b:here", "#c:there"], "extra": 1}, "here"
        )
        self.assertEqual(old, {"alt_aliases": ["#c:there"], "extra": 1})
        self.assertEqual(new, {"alias": "#a:here", "alt_aliases": ["#b:here"]})
        old, new = split_canonical_alias({"alias": "#a:there"}, "here")
        self.assertEqual((old, new), ({"alias": "#a:there"}, {}))
