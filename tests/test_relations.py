"""Event relationships: the relations table, GET /relations, bundled aggregations (edits,
references, threads) on every path that serves events, reactions, and GET /threads.

Spec: client-server API "Forming relationships between events", "Event replacements",
"Event annotations and reactions", "Threading", "Reference relations";
api/client-server/relations.yaml, threads_list.yaml.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from homeserver.rooms.relations import MAX_RECURSION_DEPTH
from tests.harness import Response, on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q

V1 = "/_matrix/client/v1"


def text(body: str) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body}


def edit_of(event_id: str, body: str) -> dict[str, Any]:
    return {
        "msgtype": "m.text",
        "body": f"* {body}",
        "m.new_content": text(body),
        "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
    }


def reaction(event_id: str, key: str | None) -> dict[str, Any]:
    relates_to: dict[str, Any] = {"rel_type": "m.annotation", "event_id": event_id}
    if key is not None:
        relates_to["key"] = key
    return {"m.relates_to": relates_to}


def in_thread(root_id: str, body: str) -> dict[str, Any]:
    return {**text(body), "m.relates_to": {"rel_type": "m.thread", "event_id": root_id}}


def reference(event_id: str) -> dict[str, Any]:
    return {**text("see"), "m.relates_to": {"rel_type": "m.reference", "event_id": event_id}}


def chunk_ids(response: Response) -> list[str]:
    return [event["event_id"] for event in response.json["chunk"]]


class RelationsTestCase(RoomTestCase):
    async def setUp(self) -> None:
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.carol = await self.user("carol")
        self.room_id = await self.create_room(self.alice, preset="public_chat")
        for user in (self.bob, self.carol):
            r = await self.join(user, self.room_id)
            assert r.code == 200, r

    async def post(
        self, user: User, content: dict[str, Any], event_type: str = "m.room.message",
        room_id: str | None = None,
    ) -> str:
        r = await self.send(user, room_id or self.room_id, content, event_type)
        self.assertEqual(r.code, 200, r)
        return str(r.json["event_id"])

    async def relations(
        self, user: User, event_id: str, *path: str, room_id: str | None = None, **params: Any
    ) -> Response:
        url = f"{V1}/rooms/{q(room_id or self.room_id)}/relations/{q(event_id)}"
        for part in path:
            url += f"/{q(part)}"
        if params:
            url += "?" + urlencode(params)
        return await self.request("GET", url, token=user.token)

    async def get_event(self, user: User, event_id: str) -> dict[str, Any]:
        r = await self.request(
            "GET", f"{API}/rooms/{q(self.room_id)}/event/{q(event_id)}", token=user.token
        )
        self.assertEqual(r.code, 200, r)
        return dict(r.json)

    async def bundle(self, user: User, event_id: str) -> dict[str, Any]:
        event = await self.get_event(user, event_id)
        return dict(event["unsigned"].get("m.relations", {}))

    async def redact(self, user: User, event_id: str) -> None:
        r = await self.request(
            "PUT", f"{API}/rooms/{q(self.room_id)}/redact/{q(event_id)}/r{event_id[1:9]}",
            {}, token=user.token,
        )
        self.assertEqual(r.code, 200, r)

    async def relation_rows(self) -> list[tuple[Any, ...]]:
        return await self.hs.db.run_interaction(
            "test_relation_rows",
            lambda txn: txn.select_all(
                "SELECT event_id, relates_to_id, rel_type, room_id, aggregation_key"
                " FROM event_relations ORDER BY stream_ordering"
            ),
        )


@on_both_engines
class RelationsStorage(RelationsTestCase):
    async def test_every_relation_is_stored_with_its_parent_and_type(self):
        root = await self.post(self.alice, text("root"))
        edit = await self.post(self.alice, edit_of(root, "root!"))
        react = await self.post(self.bob, reaction(root, "👍"), "m.reaction")
        custom = await self.post(
            self.bob, {"m.relates_to": {"rel_type": "org.example.custom", "event_id": root}},
            "org.example.event",
        )
        # A reply without a rel_type is no relationship.
        await self.post(self.bob, {**text("reply"), "m.relates_to": {"m.in_reply_to": {"event_id": root}}})
        self.assertEqual(
            await self.relation_rows(),
            [
                (edit, root, "m.replace", self.room_id, None),
                (react, root, "m.annotation", self.room_id, "👍"),
                (custom, root, "org.example.custom", self.room_id, None),
            ],
        )

    async def test_a_redacted_relation_is_removed(self):
        root = await self.post(self.alice, text("root"))
        react = await self.post(self.bob, reaction(root, "👍"), "m.reaction")
        await self.redact(self.bob, react)
        self.assertEqual(await self.relation_rows(), [])
        r = await self.relations(self.alice, root)
        self.assertEqual(chunk_ids(r), [])

    async def test_a_relation_whose_redaction_came_first_is_not_stored(self):
        root = await self.post(self.alice, text("root"))
        react_id = await self.post(self.bob, reaction(root, "👍"), "m.reaction")
        # As federation can: the redaction is held before its target is stored.
        stored = await self.hs.event_store.get_stored_event(react_id)
        assert stored is not None
        await self.redact(self.bob, react_id)
        await self.hs.db.run_interaction(
            "test_forget_relation",
            lambda txn: txn.execute("DELETE FROM event_relations"),
        )
        from storage.stores.relations import store_relation_txn

        await self.hs.db.run_interaction(
            "test_store_again", store_relation_txn, stored.event, stored.stream_ordering
        )
        self.assertEqual(await self.relation_rows(), [])


@on_both_engines
class RelationsEndpoint(RelationsTestCase):
    async def test_children_newest_first_then_paginated(self):
        root = await self.post(self.alice, text("root"))
        children = [await self.post(self.bob, reference(root)) for _ in range(5)]
        r = await self.relations(self.alice, root, limit=2)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(chunk_ids(r), children[:-3:-1])
        self.assertNotIn("prev_batch", r.json)
        self.assertNotIn("recursion_depth", r.json)
        pages = [chunk_ids(r)]
        while "next_batch" in r.json:
            token = r.json["next_batch"]
            r = await self.relations(self.alice, root, limit=2, **{"from": token})
            self.assertEqual(r.code, 200, r)
            self.assertEqual(r.json["prev_batch"], token)
            pages.append(chunk_ids(r))
        self.assertEqual(sum(pages, []), children[::-1])
        self.assertEqual([len(p) for p in pages], [2, 2, 1])
        # Forwards: oldest first.
        r = await self.relations(self.alice, root, dir="f", limit=3)
        self.assertEqual(chunk_ids(r), children[:3])
        r = await self.relations(self.alice, root, dir="f", limit=3, **{"from": r.json["next_batch"]})
        self.assertEqual(chunk_ids(r), children[3:])
        self.assertNotIn("next_batch", r.json)

    async def test_to_token_stops_the_page(self):
        root = await self.post(self.alice, text("root"))
        children = [await self.post(self.bob, reference(root)) for _ in range(4)]
        first = await self.relations(self.alice, root, dir="f", limit=1)
        token = first.json["next_batch"]
        # Backwards from the newest down to (not including) the first child.
        r = await self.relations(self.alice, root, to=token)
        self.assertEqual(chunk_ids(r), children[:0:-1])

    async def test_filter_by_rel_type_and_event_type(self):
        root = await self.post(self.alice, text("root"))
        react = await self.post(self.bob, reaction(root, "👍"), "m.reaction")
        ref = await self.post(self.bob, reference(root))
        custom = await self.post(
            self.bob, {"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "x"}},
            "org.example.event",
        )
        r = await self.relations(self.alice, root)
        self.assertEqual(chunk_ids(r), [custom, ref, react])
        r = await self.relations(self.alice, root, "m.annotation")
        self.assertEqual(chunk_ids(r), [custom, react])
        r = await self.relations(self.alice, root, "m.annotation", "m.reaction")
        self.assertEqual(chunk_ids(r), [react])
        r = await self.relations(self.alice, root, "m.reference", "m.reaction")
        self.assertEqual(chunk_ids(r), [])

    async def test_recurse_follows_relations_of_relations(self):
        root = await self.post(self.alice, text("root"))
        reply = await self.post(self.bob, in_thread(root, "in thread"))
        edit = await self.post(self.bob, edit_of(reply, "edited"))
        react = await self.post(self.carol, reaction(edit, "👍"), "m.reaction")
        beyond = await self.post(self.carol, reference(react))
        r = await self.relations(self.alice, root)
        self.assertEqual(chunk_ids(r), [reply])
        r = await self.relations(self.alice, root, recurse="false")
        self.assertEqual((chunk_ids(r), r.json["recursion_depth"]), ([reply], 1))
        r = await self.relations(self.alice, root, recurse="true")
        self.assertEqual(r.json["recursion_depth"], MAX_RECURSION_DEPTH)
        # Three hops, not four.
        self.assertEqual(chunk_ids(r), [react, edit, reply])
        self.assertNotIn(beyond, chunk_ids(r))
        # The filters apply at every depth.
        r = await self.relations(self.alice, root, "m.annotation", recurse="true")
        self.assertEqual(chunk_ids(r), [react])

    async def test_bad_input(self):
        root = await self.post(self.alice, text("root"))
        r = await self.relations(self.alice, root, room_id="!nowhere:test.heddle")
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.relations(self.alice, "$unknown")
        self.assertError(r, 404, "M_NOT_FOUND")
        for params in (
            {"from": "garbage"}, {"from": ""}, {"to": "t1"}, {"dir": "x"}, {"dir": ""},
            {"recurse": "yes"},
        ):
            r = await self.relations(self.alice, root, **params)
            self.assertError(r, 400, "M_INVALID_PARAM")
        for limit in ("0", "-1", "many"):
            r = await self.relations(self.alice, root, limit=limit)
            self.assertError(r, 400, "M_INVALID_PARAM")
        # A large limit is capped, not refused.
        r = await self.relations(self.alice, root, limit=100000)
        self.assertEqual(r.code, 200, r)

    async def test_relations_to_unknown_events_are_stored_but_never_served(self):
        unknown = "$notheldyet0000000000000000000000000000000"
        await self.post(self.bob, reaction(unknown, "👍"), "m.reaction")
        self.assertEqual([row[1] for row in await self.relation_rows()], [unknown])
        r = await self.relations(self.alice, unknown)
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_relations_across_rooms(self):
        root = await self.post(self.alice, text("root"))
        other_room = await self.create_room(self.bob, preset="public_chat")
        # A local client is refused.
        r = await self.send(self.bob, other_room, reaction(root, "👍"), "m.reaction")
        self.assertError(r, 400, "M_INVALID_PARAM")
        # One that got in anyway (as another server may send it) is stored for its own room
        # and neither served nor aggregated for the parent's.
        stored = await self.hs.event_creator.send(
            other_room, self.bob.user_id, "m.room.message", reference(root)
        )
        self.assertEqual(
            [(row[0], row[3]) for row in await self.relation_rows()],
            [(stored.event.event_id, other_room)],
        )
        r = await self.relations(self.alice, root)
        self.assertEqual(chunk_ids(r), [])
        self.assertNotIn("m.relations", (await self.get_event(self.alice, root))["unsigned"])
        r = await self.relations(self.bob, root, room_id=other_room)
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_history_visibility_of_parent_and_children(self):
        await self.put_state(self.alice, self.room_id, "m.room.history_visibility",
                             {"history_visibility": "joined"})
        dave = await self.user("dave")
        root = await self.post(self.alice, text("before dave"))
        early = await self.post(self.bob, reference(root))
        r = await self.join(dave, self.room_id)
        self.assertEqual(r.code, 200, r)
        late = await self.post(self.bob, reference(root))
        # Dave cannot see the parent: as if it did not exist.
        r = await self.relations(dave, root)
        self.assertError(r, 404, "M_NOT_FOUND")
        # A parent he can see, with children from before and after his join.
        visible_root = await self.post(self.alice, text("after dave"))
        child = await self.post(self.bob, reference(visible_root))
        r = await self.relations(dave, visible_root)
        self.assertEqual(chunk_ids(r), [child])
        r = await self.relations(self.bob, root)
        self.assertEqual(chunk_ids(r), [late, early])
        # Someone outside the room sees nothing either.
        eve = await self.user("eve")
        r = await self.relations(eve, visible_root)
        self.assertError(r, 404, "M_NOT_FOUND")


@on_both_engines
class Edits(RelationsTestCase):
    async def test_latest_valid_edit_is_bundled_whole(self):
        root = await self.post(self.alice, text("v1"))
        await self.post(self.alice, edit_of(root, "v2"))
        latest = await self.post(self.alice, edit_of(root, "v3"))
        replace = (await self.bundle(self.bob, root))["m.replace"]
        self.assertEqual(replace["event_id"], latest)
        self.assertEqual(replace["content"]["m.new_content"], text("v3"))
        self.assertEqual(replace["sender"], self.alice.user_id)
        self.assertEqual(replace["type"], "m.room.message")
        self.assertIn("origin_server_ts", replace)

    async def test_an_edit_by_another_user_is_ignored(self):
        root = await self.post(self.alice, text("v1"))
        mine = await self.post(self.alice, edit_of(root, "v2"))
        await self.post(self.bob, edit_of(root, "bob's"))
        self.assertEqual((await self.bundle(self.carol, root))["m.replace"]["event_id"], mine)
        root2 = await self.post(self.alice, text("only bob edits"))
        await self.post(self.bob, edit_of(root2, "bob's"))
        self.assertNotIn("m.replace", await self.bundle(self.carol, root2))

    async def test_an_edit_of_an_edit_is_ignored(self):
        root = await self.post(self.alice, text("v1"))
        edit = await self.post(self.alice, edit_of(root, "v2"))
        await self.post(self.alice, edit_of(edit, "v3"))
        self.assertNotIn("m.replace", await self.bundle(self.bob, edit))
        self.assertEqual((await self.bundle(self.bob, root))["m.replace"]["event_id"], edit)

    async def test_invalid_edits_are_ignored(self):
        root = await self.post(self.alice, text("v1"))
        # No m.new_content.
        await self.post(self.alice, {**text("* v2"), "m.relates_to": {"rel_type": "m.replace", "event_id": root}})
        # Another event type.
        await self.post(self.alice, edit_of(root, "v3"), "org.example.other")
        self.assertNotIn("m.replace", await self.bundle(self.bob, root))
        # A state event cannot be edited.
        r = await self.put_state(self.alice, self.room_id, "m.room.topic", {"topic": "t"})
        topic = r.json["event_id"]
        await self.post(self.alice, edit_of(topic, "t2"), "m.room.topic")
        self.assertNotIn("m.replace", await self.bundle(self.bob, topic))

    async def test_redactions_of_edits_and_of_the_original(self):
        root = await self.post(self.alice, text("v1"))
        first = await self.post(self.alice, edit_of(root, "v2"))
        second = await self.post(self.alice, edit_of(root, "v3"))
        await self.redact(self.alice, second)
        self.assertEqual((await self.bundle(self.bob, root))["m.replace"]["event_id"], first)
        await self.redact(self.alice, root)
        self.assertNotIn("m.replace", await self.bundle(self.bob, root))

    async def test_edits_are_bundled_in_messages_context_and_relations(self):
        root = await self.post(self.alice, text("v1"))
        edit = await self.post(self.alice, edit_of(root, "v2"))
        r = await self.request(
            "GET", f"{API}/rooms/{q(self.room_id)}/messages?dir=b&limit=5", token=self.bob.token
        )
        by_id = {e["event_id"]: e for e in r.json["chunk"]}
        self.assertEqual(by_id[root]["unsigned"]["m.relations"]["m.replace"]["event_id"], edit)
        r = await self.request(
            "GET", f"{API}/rooms/{q(self.room_id)}/context/{q(edit)}", token=self.bob.token
        )
        before = {e["event_id"]: e for e in r.json["events_before"]}
        self.assertEqual(before[root]["unsigned"]["m.relations"]["m.replace"]["event_id"], edit)
        r = await self.request(
            "GET", f"{API}/rooms/{q(self.room_id)}/context/{q(root)}", token=self.bob.token
        )
        self.assertEqual(r.json["event"]["unsigned"]["m.relations"]["m.replace"]["event_id"], edit)
        # A thread reply's edit, through /relations of the root.
        reply = await self.post(self.bob, in_thread(root, "reply"))
        reply_edit = await self.post(self.bob, edit_of(reply, "reply!"))
        r = await self.relations(self.alice, root, "m.thread")
        [served] = r.json["chunk"]
        self.assertEqual(served["unsigned"]["m.relations"]["m.replace"]["event_id"], reply_edit)

    async def test_children_a_viewer_may_not_see_are_not_bundled(self):
        root = await self.post(self.alice, text("v1"))
        seen = await self.post(self.alice, edit_of(root, "v2"))
        reply = await self.post(self.alice, in_thread(root, "before bob left"))
        r = await self.membership_action(self.bob, self.room_id, "leave")
        self.assertEqual(r.code, 200, r)
        await self.post(self.alice, edit_of(root, "v3, after bob left"))
        await self.post(self.alice, in_thread(root, "after bob left"))
        # Bob still reads the history up to his leave, without what came after it.
        bundle = await self.bundle(self.bob, root)
        self.assertEqual(bundle["m.replace"]["event_id"], seen)
        self.assertEqual(bundle["m.thread"]["latest_event"]["event_id"], reply)
        self.assertEqual(
            (await self.bundle(self.carol, root))["m.replace"]["content"]["m.new_content"],
            text("v3, after bob left"),
        )

    async def test_edits_are_bundled_in_sync(self):
        root = await self.post(self.alice, text("v1"))
        edit = await self.post(self.alice, edit_of(root, "v2"))
        r = await self.request("GET", f"{API}/sync", token=self.bob.token)
        events = {e["event_id"]: e for e in r.json["rooms"]["join"][self.room_id]["timeline"]["events"]}
        self.assertEqual(events[root]["unsigned"]["m.relations"]["m.replace"]["event_id"], edit)


@on_both_engines
class Reactions(RelationsTestCase):
    async def test_a_second_identical_reaction_is_refused(self):
        root = await self.post(self.alice, text("root"))
        first = await self.post(self.bob, reaction(root, "👍"))
        r = await self.send(self.bob, self.room_id, reaction(root, "👍"), "m.reaction")
        # The first went as m.room.message; this m.reaction is a different annotation.
        self.assertEqual(r.code, 200, r)
        r = await self.send(self.bob, self.room_id, reaction(root, "👍"), "m.reaction")
        self.assertError(r, 400, "M_DUPLICATE_ANNOTATION")
        # Another key, or another user, is fine.
        await self.post(self.bob, reaction(root, "🎉"), "m.reaction")
        await self.post(self.carol, reaction(root, "👍"), "m.reaction")
        # Once redacted, the same reaction may be sent again.
        await self.redact(self.bob, first)
        r = await self.send(self.bob, self.room_id, reaction(root, "👍"))
        self.assertEqual(r.code, 200, r)

    async def test_a_reaction_needs_a_key(self):
        root = await self.post(self.alice, text("root"))
        r = await self.send(self.bob, self.room_id, reaction(root, None), "m.reaction")
        self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertEqual(await self.relation_rows(), [])

    async def test_annotations_and_unknown_types_are_served_but_not_bundled(self):
        root = await self.post(self.alice, text("root"))
        react = await self.post(self.bob, reaction(root, "👍"), "m.reaction")
        custom = await self.post(
            self.bob, {"m.relates_to": {"rel_type": "org.example.custom", "event_id": root}},
            "org.example.event",
        )
        self.assertEqual(await self.bundle(self.alice, root), {})
        r = await self.relations(self.alice, root)
        self.assertEqual(chunk_ids(r), [custom, react])

    async def test_references_are_bundled(self):
        root = await self.post(self.alice, text("root"))
        refs = [await self.post(self.bob, reference(root)) for _ in range(2)]
        self.assertEqual(
            (await self.bundle(self.alice, root))["m.reference"],
            {"chunk": [{"event_id": ref} for ref in refs]},
        )


@on_both_engines
class Threads(RelationsTestCase):
    async def threads(self, user: User, **params: Any) -> Response:
        url = f"{V1}/rooms/{q(self.room_id)}/threads"
        if params:
            url += "?" + urlencode(params)
        return await self.request("GET", url, token=user.token)

    async def test_thread_summary_is_per_viewer(self):
        root = await self.post(self.alice, text("root"))
        await self.post(self.bob, in_thread(root, "one"))
        last = await self.post(self.bob, in_thread(root, "two"))
        for user, participated in ((self.alice, True), (self.bob, True), (self.carol, False)):
            thread = (await self.bundle(user, root))["m.thread"]
            self.assertEqual(thread["count"], 2)
            self.assertEqual(thread["latest_event"]["event_id"], last)
            self.assertEqual(thread["latest_event"]["content"]["body"], "two")
            self.assertEqual(thread["current_user_participated"], participated, user.user_id)
        # In sync too.
        for user, participated in ((self.alice, True), (self.carol, False)):
            r = await self.request("GET", f"{API}/sync", token=user.token)
            events = {
                e["event_id"]: e
                for e in r.json["rooms"]["join"][self.room_id]["timeline"]["events"]
            }
            thread = events[root]["unsigned"]["m.relations"]["m.thread"]
            self.assertEqual(thread["current_user_participated"], participated)

    async def test_a_thread_of_thread_events_is_summarised_one_level_down_only(self):
        root = await self.post(self.alice, text("root"))
        reply = await self.post(self.bob, in_thread(root, "one"))
        reply_edit = await self.post(self.bob, edit_of(reply, "one!"))
        # A local client cannot do this (see below); another server can.
        nested = await self.hs.event_creator.send(
            self.room_id, self.carol.user_id, "m.room.message", in_thread(reply, "nested")
        )
        await self.hs.event_creator.send(
            self.room_id, self.carol.user_id, "m.room.message",
            in_thread(nested.event.event_id, "deeper"),
        )
        latest = (await self.bundle(self.alice, root))["m.thread"]["latest_event"]
        self.assertEqual(latest["event_id"], reply)
        self.assertEqual(set(latest["unsigned"]["m.relations"]), {"m.replace"})
        self.assertEqual(latest["unsigned"]["m.relations"]["m.replace"]["event_id"], reply_edit)
        # The reply, served itself, has its own thread summary.
        thread = (await self.bundle(self.alice, reply))["m.thread"]
        self.assertEqual(thread["latest_event"]["event_id"], nested.event.event_id)
        self.assertNotIn("m.thread", thread["latest_event"]["unsigned"].get("m.relations", {}))

    async def test_a_thread_cannot_start_from_a_relation(self):
        root = await self.post(self.alice, text("root"))
        reply = await self.post(self.bob, in_thread(root, "one"))
        r = await self.send(self.carol, self.room_id, in_thread(reply, "nested"))
        self.assertError(r, 400, "M_INVALID_PARAM")

    async def test_threads_by_latest_activity(self):
        first = await self.post(self.alice, text("first"))
        second = await self.post(self.bob, text("second"))
        third = await self.post(self.carol, text("third"))
        await self.post(self.carol, in_thread(first, "a"))
        await self.post(self.carol, in_thread(second, "b"))
        await self.post(self.bob, in_thread(first, "c"))
        await self.post(self.alice, in_thread(third, "d"))
        r = await self.threads(self.alice)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(chunk_ids(r), [third, first, second])
        thread = r.json["chunk"][0]["unsigned"]["m.relations"]["m.thread"]
        self.assertEqual((thread["count"], thread["current_user_participated"]), (1, True))
        # Paginated.
        r = await self.threads(self.alice, limit=2)
        self.assertEqual(chunk_ids(r), [third, first])
        r = await self.threads(self.alice, limit=2, **{"from": r.json["next_batch"]})
        self.assertEqual(chunk_ids(r), [second])
        self.assertNotIn("next_batch", r.json)
        # Participated: started (the root's sender) or replied in.
        r = await self.threads(self.bob, include="participated")
        self.assertEqual(chunk_ids(r), [first, second])
        r = await self.threads(self.alice, include="participated")
        self.assertEqual(chunk_ids(r), [third, first])

    async def test_participation_is_the_root_or_a_thread_event_only(self):
        """Spec "Threading": the root's sender, or the sender of an event relating to the
        root with `m.thread`. Reactions, references, edits and rich replies do not count."""
        root = await self.post(self.alice, text("root"))
        reply = await self.post(self.bob, in_thread(root, "one"))
        await self.post(self.bob, edit_of(reply, "one!"))
        await self.post(self.carol, reaction(root, "👍"), "m.reaction")
        await self.post(self.carol, reaction(reply, "👀"), "m.reaction")
        await self.post(self.carol, reference(root))
        await self.post(
            self.carol, {**text("a plain reply"), "m.relates_to": {"m.in_reply_to": {"event_id": root}}}
        )
        r = await self.threads(self.carol, include="participated")
        self.assertEqual(chunk_ids(r), [])
        self.assertFalse((await self.bundle(self.carol, root))["m.thread"]["current_user_participated"])
        for user in (self.alice, self.bob):
            r = await self.threads(user, include="participated")
            self.assertEqual(chunk_ids(r), [root])
            self.assertTrue((await self.bundle(user, root))["m.thread"]["current_user_participated"])
        await self.post(self.carol, in_thread(root, "now carol"))
        r = await self.threads(self.carol, include="participated")
        self.assertEqual(chunk_ids(r), [root])
        self.assertTrue((await self.bundle(self.carol, root))["m.thread"]["current_user_participated"])
        # A redacted thread event no longer relates to the root (spec: "Redactions"), so
        # its sender no longer took part.
        dave = await self.user("dave")
        r = await self.join(dave, self.room_id)
        self.assertEqual(r.code, 200, r)
        daves = await self.post(dave, in_thread(root, "dave, briefly"))
        r = await self.threads(dave, include="participated")
        self.assertEqual(chunk_ids(r), [root])
        await self.redact(dave, daves)
        r = await self.threads(dave, include="participated")
        self.assertEqual(chunk_ids(r), [])
        self.assertFalse((await self.bundle(dave, root))["m.thread"]["current_user_participated"])

    async def test_threads_bad_input(self):
        r = await self.threads(self.alice, include="some")
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.threads(self.alice, include="")
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.threads(self.alice, **{"from": "nonsense"})
        self.assertError(r, 400, "M_INVALID_PARAM")
        # A sync token names no place in the room's history; nor does a position too large.
        for token in ("s5", "s5_1_2", "t99999999999999999999-1", "t1-99999999999999999999"):
            r = await self.threads(self.alice, **{"from": token})
            self.assertError(r, 400, "M_INVALID_PARAM")
        for limit in ("0", "-1", "many", "1.5"):
            r = await self.threads(self.alice, limit=limit)
            self.assertError(r, 400, "M_INVALID_PARAM")
        # A large limit is capped, not refused.
        r = await self.threads(self.alice, limit=100000)
        self.assertEqual(r.code, 200, r)
        r = await self.request(
            "GET", f"{V1}/rooms/{q('!nowhere:test.heddle')}/threads", token=self.alice.token
        )
        self.assertError(r, 403, "M_FORBIDDEN")
        # A room one may not read answers the same as one that does not exist.
        outsider_room = await self.create_room(self.bob, preset="private_chat")
        r = await self.request(
            "GET", f"{V1}/rooms/{q(outsider_room)}/threads", token=self.alice.token
        )
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_threaded_receipts_reach_sync(self):
        root = await self.post(self.alice, text("root"))
        reply = await self.post(self.bob, in_thread(root, "one"))
        r = await self.request(
            "POST", f"{API}/rooms/{q(self.room_id)}/receipt/m.read/{q(reply)}",
            {"thread_id": root}, token=self.alice.token,
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{API}/sync", token=self.carol.token)
        ephemeral = r.json["rooms"]["join"][self.room_id]["ephemeral"]["events"]
        [receipt] = [e for e in ephemeral if e["type"] == "m.receipt"]
        self.assertEqual(
            receipt["content"][reply]["m.read"][self.alice.user_id]["thread_id"], root
        )
        r = await self.request(
            "POST", f"{API}/rooms/{q(self.room_id)}/receipt/m.fully_read/{q(reply)}",
            {"thread_id": root}, token=self.alice.token,
        )
        self.assertError(r, 400, "M_INVALID_PARAM")


@on_both_engines
class IgnoredUsers(RelationsTestCase):
    """Spec: "Ignoring Users"; "Aggregations of child events" (servers "must ... not
    consider child events from ignored users"); "Threading" (`count` and `latest_event`
    leave ignored users out); threads_list.yaml (an ignored user's root is served
    redacted)."""

    async def ignore(self, user: User, *ignored: User) -> None:
        r = await self.request(
            "PUT", f"{API}/user/{q(user.user_id)}/account_data/m.ignored_user_list",
            {"ignored_users": {i.user_id: {} for i in ignored}}, token=user.token,
        )
        self.assertEqual(r.code, 200, r)

    async def threads(self, user: User) -> Response:
        return await self.request(
            "GET", f"{V1}/rooms/{q(self.room_id)}/threads", token=user.token
        )

    async def test_relations_leave_out_ignored_senders(self):
        root = await self.post(self.alice, text("root"))
        mine = await self.post(self.bob, reaction(root, "👍"), "m.reaction")
        theirs = await self.post(self.carol, reaction(root, "👍"), "m.reaction")
        reply = await self.post(self.carol, in_thread(root, "from carol"))
        # A state event relating to the root is still served: the spec keeps ignored users'
        # state events.
        r = await self.get_state(self.alice, self.room_id, "m.room.power_levels")
        levels = r.json
        levels["users"][self.carol.user_id] = 50
        r = await self.put_state(self.alice, self.room_id, "m.room.power_levels", levels)
        self.assertEqual(r.code, 200, r)
        r = await self.put_state(
            self.carol, self.room_id, "org.example.state",
            {"m.relates_to": {"rel_type": "org.example.rel", "event_id": root}}, state_key="k",
        )
        self.assertEqual(r.code, 200, r)
        state = r.json["event_id"]
        await self.ignore(self.bob, self.carol)
        r = await self.relations(self.bob, root)
        self.assertEqual(chunk_ids(r), [state, mine])
        r = await self.relations(self.alice, root)
        self.assertEqual(chunk_ids(r), [state, reply, theirs, mine])
        # Un-ignored, they are back.
        await self.ignore(self.bob)
        r = await self.relations(self.bob, root)
        self.assertEqual(chunk_ids(r), [state, reply, theirs, mine])

    async def test_aggregations_leave_out_ignored_senders(self):
        root = await self.post(self.alice, text("root"))
        first = await self.post(self.bob, in_thread(root, "one"))
        await self.post(self.carol, in_thread(root, "two"))
        await self.post(self.carol, in_thread(root, "three"))
        mine = await self.post(self.bob, reference(root))
        await self.post(self.carol, reference(root))
        only_carol = await self.post(self.alice, text("another root"))
        await self.post(self.carol, in_thread(only_carol, "alone"))
        await self.ignore(self.bob, self.carol)
        bundle = await self.bundle(self.bob, root)
        self.assertEqual(bundle["m.thread"]["latest_event"]["event_id"], first)
        self.assertEqual(bundle["m.thread"]["count"], 1)
        self.assertTrue(bundle["m.thread"]["current_user_participated"])
        self.assertEqual(bundle["m.reference"], {"chunk": [{"event_id": mine}]})
        # A thread of ignored replies only has no summary for him.
        self.assertNotIn("m.thread", await self.bundle(self.bob, only_carol))
        # Others see everything.
        bundle = await self.bundle(self.alice, root)
        self.assertEqual(bundle["m.thread"]["count"], 3)
        self.assertEqual(len(bundle["m.reference"]["chunk"]), 2)
        # In /messages and /threads too.
        r = await self.request(
            "GET", f"{API}/rooms/{q(self.room_id)}/messages?dir=b&limit=50", token=self.bob.token
        )
        by_id = {e["event_id"]: e for e in r.json["chunk"]}
        self.assertEqual(by_id[root]["unsigned"]["m.relations"]["m.thread"]["count"], 1)
        r = await self.threads(self.bob)
        by_id = {e["event_id"]: e for e in r.json["chunk"]}
        self.assertEqual(by_id[root]["unsigned"]["m.relations"]["m.thread"]["count"], 1)

    async def test_threads_serve_an_ignored_users_root_redacted(self):
        root = await self.post(self.carol, text("carol's root"))
        reply = await self.post(self.alice, in_thread(root, "alice replies"))
        await self.ignore(self.bob, self.carol)
        r = await self.threads(self.bob)
        self.assertEqual(r.code, 200, r)
        [served] = r.json["chunk"]
        self.assertEqual(served["event_id"], root)
        self.assertEqual(served["content"], {})
        self.assertEqual(
            served["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"], reply
        )
        r = await self.threads(self.alice)
        self.assertEqual(r.json["chunk"][0]["content"]["body"], "carol's root")


@on_both_engines
class ThreadSummaryVisibility(RelationsTestCase):
    """A thread's summary counts and shows only the events the viewer may see (spec:
    "Aggregations of child events": aggregations lack children in history the user
    cannot see). Synapse counts every event it holds."""

    async def threads(self, user: User, **params: Any) -> Response:
        url = f"{V1}/rooms/{q(self.room_id)}/threads"
        if params:
            url += "?" + urlencode(params)
        return await self.request("GET", url, token=user.token)

    async def set_visibility(self, value: str) -> None:
        r = await self.put_state(
            self.alice, self.room_id, "m.room.history_visibility", {"history_visibility": value}
        )
        self.assertEqual(r.code, 200, r)

    async def test_a_late_joiner_counts_only_what_it_may_see(self):
        # Shared when the thread starts: whoever joins later may read that part.
        root = await self.post(self.alice, text("root"))
        await self.post(self.bob, in_thread(root, "shared"))
        await self.set_visibility("joined")
        await self.post(self.bob, in_thread(root, "before dave, joined-only"))
        await self.post(self.bob, in_thread(root, "also before dave"))
        dave = await self.user("dave")
        r = await self.join(dave, self.room_id)
        self.assertEqual(r.code, 200, r)
        after = await self.post(self.bob, in_thread(root, "after dave joined"))
        thread = (await self.bundle(dave, root))["m.thread"]
        self.assertEqual((thread["count"], thread["latest_event"]["event_id"]), (2, after))
        self.assertEqual((await self.bundle(self.carol, root))["m.thread"]["count"], 4)
        r = await self.threads(dave)
        self.assertEqual(chunk_ids(r), [root])
        self.assertEqual(r.json["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"], 2)
        r = await self.relations(dave, root, "m.thread")
        self.assertEqual(len(r.json["chunk"]), 2)

    async def test_replies_a_member_saw_as_they_came_are_counted_unread(self):
        """Counting a long thread for a member joined before it began reads none of its
        replies: those this server made after the join are visible to them by construction.
        Older replies, and those from other servers, are read and checked."""
        root = await self.post(self.alice, text("root"))
        replies = [await self.post(self.carol, in_thread(root, f"r{i}")) for i in range(12)]
        visibility = self.hs.history_visibility
        checked: list[str] = []
        original = visibility.filter_events_for_user

        async def recording(user_id: str, events: Any) -> Any:
            checked.extend(e.event.event_id for e in events)
            return await original(user_id, events)

        visibility.filter_events_for_user = recording  # type: ignore[method-assign]
        self.addCleanup(setattr, visibility, "filter_events_for_user", original)
        thread = (await self.bundle(self.bob, root))["m.thread"]
        self.assertEqual((thread["count"], thread["latest_event"]["event_id"]), (12, replies[-1]))
        self.assertFalse(set(checked) & set(replies))
        # Dave, who joins now, has every earlier reply checked (here `shared`: all seen).
        dave = await self.user("dave")
        r = await self.join(dave, self.room_id)
        self.assertEqual(r.code, 200, r)
        self.assertEqual((await self.bundle(dave, root))["m.thread"]["count"], 12)
        self.assertEqual(set(checked) & set(replies), set(replies))

    async def test_replies_made_while_a_member_was_away_are_not_counted(self):
        await self.set_visibility("joined")
        root = await self.post(self.alice, text("root"))
        await self.post(self.carol, in_thread(root, "before bob left"))
        r = await self.membership_action(self.bob, self.room_id, "leave")
        self.assertEqual(r.code, 200, r)
        for i in range(3):
            await self.post(self.carol, in_thread(root, f"while away {i}"))
        r = await self.join(self.bob, self.room_id)
        self.assertEqual(r.code, 200, r)
        # A new display name moves his member event, not where his membership began.
        r = await self.put_state(
            self.bob, self.room_id, "m.room.member",
            {"membership": "join", "displayname": "Robert"}, state_key=self.bob.user_id,
        )
        self.assertEqual(r.code, 200, r)
        back = await self.post(self.carol, in_thread(root, "after he came back"))
        thread = (await self.bundle(self.bob, root))["m.thread"]
        self.assertEqual((thread["count"], thread["latest_event"]["event_id"]), (2, back))
        self.assertEqual((await self.bundle(self.carol, root))["m.thread"]["count"], 5)

    async def test_a_departed_member_sees_the_thread_as_it_left_it(self):
        await self.set_visibility("joined")
        root = await self.post(self.alice, text("root"))
        seen = await self.post(self.carol, in_thread(root, "before bob left"))
        other = await self.post(self.alice, text("other root"))
        other_reply = await self.post(self.carol, in_thread(other, "later, still seen"))
        r = await self.membership_action(self.bob, self.room_id, "leave")
        self.assertEqual(r.code, 200, r)
        # More replies after he left than a few newest candidates would cover.
        for i in range(7):
            await self.post(self.carol, in_thread(root, f"after {i}"))
        thread = (await self.bundle(self.bob, root))["m.thread"]
        self.assertEqual((thread["count"], thread["latest_event"]["event_id"]), (1, seen))
        # /threads orders by the activity he saw, and counts what he saw.
        r = await self.threads(self.bob)
        self.assertEqual(chunk_ids(r), [other, root])
        self.assertEqual(
            r.json["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"],
            other_reply,
        )
        r = await self.threads(self.bob, limit=1)
        self.assertEqual(chunk_ids(r), [other])
        r = await self.threads(self.bob, limit=1, **{"from": r.json["next_batch"]})
        self.assertEqual(chunk_ids(r), [root])
        self.assertEqual(r.json["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"], 1)
        # Those still in the room see all of it.
        r = await self.threads(self.carol)
        self.assertEqual(chunk_ids(r), [root, other])
        self.assertEqual(r.json["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"], 8)


@on_both_engines
class NioEndToEnd(RelationsTestCase):
    async def test_edit_react_and_reply_in_a_thread(self):
        from nio import RoomMessagesResponse, RoomSendResponse, SyncResponse

        from tests.harness import nio

        sender = self.nio_client(self.alice)
        reader = self.nio_client(self.bob)

        async def send(event_type: str, content: dict[str, Any]) -> str:
            resp = await nio(sender.room_send(self.room_id, event_type, content))
            self.assertIsInstance(resp, RoomSendResponse)
            return str(resp.event_id)

        root = await send("m.room.message", text("v1"))
        await send("m.room.message", edit_of(root, "v2"))
        latest = await send("m.room.message", edit_of(root, "v3"))
        await send("m.reaction", reaction(root, "👍"))
        reply = await send("m.room.message", in_thread(root, "in thread"))

        synced = await nio(reader.sync(full_state=True))
        self.assertIsInstance(synced, SyncResponse)
        timeline = {e.event_id: e for e in synced.rooms.join[self.room_id].timeline.events}
        relations = timeline[root].source["unsigned"]["m.relations"]
        self.assertEqual(relations["m.replace"]["event_id"], latest)
        self.assertEqual(relations["m.replace"]["content"]["m.new_content"]["body"], "v3")
        self.assertEqual(relations["m.thread"]["latest_event"]["event_id"], reply)
        self.assertFalse(relations["m.thread"]["current_user_participated"])
        self.assertNotIn("m.annotation", relations)

        page = await nio(reader.room_messages(self.room_id, synced.next_batch, limit=20))
        self.assertIsInstance(page, RoomMessagesResponse)
        by_id = {e.event_id: e for e in page.chunk}
        self.assertEqual(
            by_id[root].source["unsigned"]["m.relations"]["m.replace"]["event_id"], latest
        )
