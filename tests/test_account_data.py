"""Account data and room tags: /user/{userId}/account_data/{type},
/user/{userId}/rooms/{roomId}/account_data/{type}, /user/{userId}/rooms/{roomId}/tags[/{tag}],
and the changes sync reads.

Spec: api/client-server/account-data.yaml, tags.yaml; client-server API "Client Config" and
"Room Tagging".
"""

from __future__ import annotations

from tests.harness import on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q

ROOM = "!someroom:test.heddle"


def global_path(user_id: str, data_type: str) -> str:
    return f"{API}/user/{q(user_id)}/account_data/{q(data_type)}"


def room_path(user_id: str, room_id: str, data_type: str) -> str:
    return f"{API}/user/{q(user_id)}/rooms/{q(room_id)}/account_data/{q(data_type)}"


def tags_path(user_id: str, room_id: str, tag: str | None = None) -> str:
    path = f"{API}/user/{q(user_id)}/rooms/{q(room_id)}/tags"
    return f"{path}/{q(tag)}" if tag is not None else path


@on_both_engines
class AccountDataTests(RoomTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")

    async def put(self, path: str, body: object, user: User | None = None):
        return await self.request("PUT", path, body, token=(user or self.alice).token)

    async def get(self, path: str, user: User | None = None):
        return await self.request("GET", path, token=(user or self.alice).token)

    async def test_global_account_data_round_trip(self):
        path = global_path(self.alice.user_id, "org.example.config")
        r = await self.put(path, {"theme": "dark", "nested": {"a": [1, 2]}})
        self.assertEqual((r.code, r.json), (200, {}))
        r = await self.get(path)
        self.assertEqual((r.code, r.json), (200, {"theme": "dark", "nested": {"a": [1, 2]}}))
        # Replaced wholesale, not merged.
        await self.put(path, {"font": "large"})
        self.assertEqual((await self.get(path)).json, {"font": "large"})

    async def test_room_account_data_is_separate_from_global(self):
        await self.put(global_path(self.alice.user_id, "org.example.x"), {"scope": "global"})
        r = await self.put(room_path(self.alice.user_id, ROOM, "org.example.x"), {"scope": "room"})
        self.assertEqual(r.code, 200, r)
        r = await self.get(room_path(self.alice.user_id, ROOM, "org.example.x"))
        self.assertEqual(r.json, {"scope": "room"})
        r = await self.get(global_path(self.alice.user_id, "org.example.x"))
        self.assertEqual(r.json, {"scope": "global"})
        # No fallback from a room to the global data of the same type (spec).
        r = await self.get(room_path(self.alice.user_id, "!other:test.heddle", "org.example.x"))
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_unset_account_data_is_not_found(self):
        r = await self.get(global_path(self.alice.user_id, "org.example.unset"))
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.get(room_path(self.alice.user_id, ROOM, "org.example.unset"))
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_other_users_account_data_is_forbidden(self):
        await self.put(global_path(self.alice.user_id, "org.example.secret"), {"k": 1})
        for path in (
            global_path(self.alice.user_id, "org.example.secret"),
            room_path(self.alice.user_id, ROOM, "org.example.secret"),
        ):
            self.assertError(await self.get(path, self.bob), 403, "M_FORBIDDEN")
            self.assertError(await self.put(path, {"k": 2}, self.bob), 403, "M_FORBIDDEN")
        r = await self.get(global_path(self.alice.user_id, "org.example.secret"))
        self.assertEqual(r.json, {"k": 1})

    async def test_server_managed_types_cannot_be_set(self):
        for data_type in ("m.fully_read", "m.push_rules"):
            r = await self.put(global_path(self.alice.user_id, data_type), {"event_id": "$x"})
            self.assertError(r, 405, "M_BAD_JSON")
            r = await self.put(room_path(self.alice.user_id, ROOM, data_type), {"event_id": "$x"})
            self.assertError(r, 405, "M_BAD_JSON")

    async def test_bad_bodies_and_room_ids(self):
        path = global_path(self.alice.user_id, "org.example.x")
        r = await self.request("PUT", path, raw=b"{nope", token=self.alice.token)
        self.assertError(r, 400, "M_NOT_JSON")
        r = await self.request("PUT", path, raw=b"[1, 2]", token=self.alice.token)
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.put(room_path(self.alice.user_id, "@notaroom:test.heddle", "org.example.x"), {})
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.get(room_path(self.alice.user_id, "notaroom", "org.example.x"))
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.request("GET", path)
        self.assertError(r, 401, "M_MISSING_TOKEN")

    async def test_sync_api_reports_changes_since_a_position(self):
        handler = self.hs.account_data
        await self.put(global_path(self.alice.user_id, "org.example.a"), {"v": 1})
        await self.put(room_path(self.alice.user_id, ROOM, "org.example.b"), {"v": 2})
        everything = await handler.get_changes(self.alice.user_id, 0)
        self.assertEqual(everything.global_events, [{"type": "org.example.a", "content": {"v": 1}}])
        self.assertEqual(
            everything.room_events, {ROOM: [{"type": "org.example.b", "content": {"v": 2}}]}
        )
        position = handler.current_position
        nothing = await handler.get_changes(self.alice.user_id, position)
        self.assertEqual((nothing.global_events, nothing.room_events), ([], {}))
        await self.put(global_path(self.alice.user_id, "org.example.a"), {"v": 3})
        later = await handler.get_changes(self.alice.user_id, position)
        self.assertEqual(later.global_events, [{"type": "org.example.a", "content": {"v": 3}}])
        self.assertEqual(later.room_events, {})
        # Other users' writes are not Alice's changes.
        await self.put(global_path(self.bob.user_id, "org.example.a"), {"bob": True}, self.bob)
        again = await handler.get_changes(self.alice.user_id, handler.current_position - 1)
        self.assertEqual((again.global_events, again.room_events), ([], {}))
        # Bounded by up_to, as sync reads to the position in its new token: the rewritten
        # type is past it (and will come in the next sync), the room data is not.
        bounded = await handler.get_changes(self.alice.user_id, 0, up_to=position)
        self.assertEqual(bounded.global_events, [])
        self.assertEqual(list(bounded.room_events), [ROOM])

    async def test_writes_wake_only_the_owner(self):
        notifier = self.hs.notifier
        alice_before = notifier.position(self.alice.user_id)
        bob_before = notifier.position(self.bob.user_id)
        await self.put(global_path(self.alice.user_id, "org.example.a"), {})
        self.assertGreater(notifier.position(self.alice.user_id), alice_before)
        self.assertEqual(notifier.position(self.bob.user_id), bob_before)

    async def test_account_data_survives_restart_positions(self):
        await self.put(global_path(self.alice.user_id, "org.example.a"), {"v": 1})
        position = self.hs.account_data.current_position
        self.assertGreater(position, 0)
        max_id = await self.hs.account_data_store.get_max_stream_id()
        self.assertEqual(max_id, position)


@on_both_engines
class TagTests(RoomTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.room_id = await self.create_room(self.alice)

    async def test_add_list_and_remove_tags(self):
        token = self.alice.token
        me = self.alice.user_id
        r = await self.request("GET", tags_path(me, self.room_id), token=token)
        self.assertEqual((r.code, r.json), (200, {"tags": {}}))
        r = await self.request("PUT", tags_path(me, self.room_id, "m.favourite"), {"order": 0.25}, token=token)
        self.assertEqual((r.code, r.json), (200, {}))
        r = await self.request("PUT", tags_path(me, self.room_id, "u.work"), {}, token=token)
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", tags_path(me, self.room_id), token=token)
        self.assertEqual(r.json, {"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}})
        # Tags are the room account data event m.tag.
        r = await self.request("GET", room_path(me, self.room_id, "m.tag"), token=token)
        self.assertEqual(r.json, {"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}})
        changes = await self.hs.account_data.get_changes(me, 0)
        self.assertEqual(
            changes.room_events[self.room_id],
            [{"type": "m.tag", "content": {"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}}}],
        )

        r = await self.request("DELETE", tags_path(me, self.room_id, "m.favourite"), token=token)
        self.assertEqual((r.code, r.json), (200, {}))
        r = await self.request("GET", tags_path(me, self.room_id), token=token)
        self.assertEqual(r.json, {"tags": {"u.work": {}}})
        # Removing a tag the room does not have succeeds and changes nothing.
        position = self.hs.account_data.current_position
        r = await self.request("DELETE", tags_path(me, self.room_id, "m.lowpriority"), token=token)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(self.hs.account_data.current_position, position)

    async def test_integer_order_and_replacing_a_tag(self):
        me, token = self.alice.user_id, self.alice.token
        await self.request("PUT", tags_path(me, self.room_id, "u.x"), {"order": 1}, token=token)
        await self.request("PUT", tags_path(me, self.room_id, "u.x"), {"order": 0.5}, token=token)
        r = await self.request("GET", tags_path(me, self.room_id), token=token)
        self.assertEqual(r.json, {"tags": {"u.x": {"order": 0.5}}})

    async def test_bad_tags(self):
        me, token = self.alice.user_id, self.alice.token
        r = await self.request("PUT", tags_path(me, self.room_id, "u.x"), {"order": "first"}, token=token)
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request("PUT", tags_path(me, self.room_id, "u.x"), {"order": True}, token=token)
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request("PUT", tags_path(me, self.room_id, "u." + "x" * 254), {}, token=token)
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.request("PUT", tags_path(me, self.room_id, "u.x"), raw=b"nope", token=token)
        self.assertError(r, 400, "M_NOT_JSON")
        r = await self.request("PUT", tags_path(me, "nope", "u.x"), {}, token=token)
        self.assertError(r, 400, "M_INVALID_PARAM")

    async def test_other_users_tags_are_forbidden(self):
        me = self.alice.user_id
        await self.request("PUT", tags_path(me, self.room_id, "u.x"), {}, token=self.alice.token)
        bob = self.bob.token
        r = await self.request("GET", tags_path(me, self.room_id), token=bob)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.request("PUT", tags_path(me, self.room_id, "u.y"), {}, token=bob)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.request("DELETE", tags_path(me, self.room_id, "u.x"), token=bob)
        self.assertError(r, 403, "M_FORBIDDEN")
