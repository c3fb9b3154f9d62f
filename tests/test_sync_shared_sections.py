"""Shared room sections: viewers woken by the same commit take one computed section of the
room, and what each receives is exactly what it would have computed alone."""

from __future__ import annotations

import copy
import json
from typing import Any
from urllib.parse import quote

from tests.harness import HomeserverTestCase, on_both_engines

API = "/_matrix/client/v3"
MEMBERS = 9  # more than the six hero candidates, so some viewers are not among them


def without_age(value: Any) -> Any:
    """The response without `age` and `last_active_ago`: computed at another moment."""
    value = copy.deepcopy(value)

    def strip(node: Any) -> None:
        if isinstance(node, dict):
            node.pop("age", None)
            node.pop("last_active_ago", None)
            for child in node.values():
                strip(child)
        elif isinstance(node, list):
            for child in node:
                strip(child)

    strip(value)
    return value


@on_both_engines
class SharedSectionsMatchAlone(HomeserverTestCase):
    async def set_up_room(self, **create: Any) -> None:
        self.tokens: dict[str, str] = {}
        for i in range(MEMBERS):
            registered = await self.register(f"member{i}")
            self.tokens[registered["user_id"]] = registered["access_token"]
        self.users = list(self.tokens)
        self.owner = self.users[0]
        r = await self.request(
            "POST", f"{API}/createRoom", {"preset": "public_chat", **create},
            token=self.tokens[self.owner],
        )
        self.assertEqual(r.code, 200, r)
        self.room_id = r.json["room_id"]
        for user in self.users[1:]:
            r = await self.request("POST", f"{API}/join/{quote(self.room_id)}", {}, token=self.tokens[user])
            self.assertEqual(r.code, 200, r)
        # Record who took a shared section, and whether sharing is allowed at all.
        self.took_shared: list[str] = []
        self.sharing = True
        sync = self.hs.sync
        original_may_share, original_takes = sync._may_share, sync._takes_shared

        def may_share(sync_pass: Any, room_id: str, since: Any) -> bool:
            return self.sharing and original_may_share(sync_pass, room_id, since)

        async def takes_shared(user_id: str, section: Any) -> bool:
            taken = await original_takes(user_id, section)
            if taken:
                self.took_shared.append(user_id)
            return taken

        sync._may_share, sync._takes_shared = may_share, takes_shared

    async def since_tokens(self, sync_filter: str) -> dict[str, str]:
        sinces = {}
        for user, token in self.tokens.items():
            r = await self.request(
                "GET", f"{API}/sync?set_presence=offline&filter={quote(sync_filter)}", token=token
            )
            self.assertEqual(r.code, 200, r)
            sinces[user] = r.json["next_batch"]
        return sinces

    async def incremental(self, user: str, since: str, sync_filter: str) -> dict[str, Any]:
        r = await self.request(
            "GET",
            f"{API}/sync?set_presence=offline&since={quote(since)}&filter={quote(sync_filter)}",
            token=self.tokens[user],
        )
        self.assertEqual(r.code, 200, r)
        return r.json

    async def compare(self, sinces: dict[str, str], sync_filter: str) -> dict[str, dict[str, Any]]:
        """Every member's incremental sync, shared and alone: the same, apart from `age`."""
        shared: dict[str, dict[str, Any]] = {}
        self.sharing = True
        for user, since in sinces.items():
            shared[user] = await self.incremental(user, since, sync_filter)
        self.sharing = False
        for user, since in sinces.items():
            alone = await self.incremental(user, since, sync_filter)
            self.assertEqual(
                without_age(shared[user]), without_age(alone),
                f"{user} received something else from the shared section",
            )
        self.sharing = True
        return shared

    async def send(self, user: str, body: str, txn: str) -> str:
        r = await self.request(
            "PUT", f"{API}/rooms/{quote(self.room_id)}/send/m.room.message/{txn}",
            {"msgtype": "m.text", "body": body}, token=self.tokens[user],
        )
        self.assertEqual(r.code, 200, r)
        return str(r.json["event_id"])

    def timeline(self, response: dict[str, Any]) -> list[dict[str, Any]]:
        return list(response["rooms"]["join"][self.room_id]["timeline"]["events"])

    async def test_one_message(self):
        await self.set_up_room()
        sync_filter = json.dumps({"room": {"timeline": {"limit": 10}}})
        sinces = await self.since_tokens(sync_filter)
        sender = self.users[-1]
        await self.send(sender, "hello", "t1")
        responses = await self.compare(sinces, sync_filter)
        # The sender gets its transaction ID; the hero candidates their own heroes: neither
        # shares. The members past the sixth do.
        sharers = set(self.took_shared)
        self.assertNotIn(sender, sharers)
        self.assertTrue(sharers)
        self.assertFalse(sharers & set(self.users[:6]))
        for user in self.users:
            [event] = self.timeline(responses[user])
            self.assertEqual(event["content"]["body"], "hello")
            self.assertEqual("transaction_id" in event["unsigned"], user == sender)
            self.assertGreaterEqual(event["unsigned"]["age"], 0)
            heroes = responses[user]["rooms"]["join"][self.room_id]["summary"]["m.heroes"]
            self.assertNotIn(user, heroes)
            self.assertEqual(len(heroes), 5)

    async def test_limited_timeline_with_state_and_a_redaction(self):
        await self.set_up_room()
        sync_filter = json.dumps({"room": {"timeline": {"limit": 3}}})
        sinces = await self.since_tokens(sync_filter)
        first = await self.send(self.owner, "one", "t1")
        r = await self.request(
            "PUT", f"{API}/rooms/{quote(self.room_id)}/state/m.room.name/",
            {"name": "Lounge"}, token=self.tokens[self.owner],
        )
        self.assertEqual(r.code, 200, r)
        for i in range(4):
            await self.send(self.owner, f"more {i}", f"m{i}")
        r = await self.request(
            "PUT", f"{API}/rooms/{quote(self.room_id)}/redact/{quote(first)}/r1",
            {"reason": "oops"}, token=self.tokens[self.owner],
        )
        self.assertEqual(r.code, 200, r)
        responses = await self.compare(sinces, sync_filter)
        self.assertTrue(self.took_shared)
        reader = self.users[-1]
        room = responses[reader]["rooms"]["join"][self.room_id]
        self.assertTrue(room["timeline"]["limited"])
        self.assertIn("m.room.name", [e["type"] for e in room["state"]["events"]])

    async def test_a_member_changing_its_name_computes_alone(self):
        await self.set_up_room()
        sync_filter = json.dumps({"room": {"timeline": {"limit": 10}}})
        sinces = await self.since_tokens(sync_filter)
        renamed = self.users[-1]
        r = await self.request(
            "PUT", f"{API}/profile/{quote(renamed)}/displayname",
            {"displayname": "New name"}, token=self.tokens[renamed],
        )
        self.assertEqual(r.code, 200, r)
        await self.send(self.owner, "after the rename", "t1")
        await self.compare(sinces, sync_filter)
        self.assertTrue(self.took_shared)
        self.assertNotIn(renamed, self.took_shared)

    async def test_event_fields_and_federation_format(self):
        await self.set_up_room()
        for number, definition in enumerate((
            {"event_fields": ["content.body", "type", "unsigned.age"]},
            {"event_format": "federation"},
        )):
            sync_filter = json.dumps(definition)
            sinces = await self.since_tokens(sync_filter)
            self.took_shared.clear()
            await self.send(self.owner, "filtered", f"t{number}")
            responses = await self.compare(sinces, sync_filter)
            self.assertTrue(self.took_shared, definition)
            # `age` is where the filter keeps it, and only there.
            for user in set(self.took_shared):
                [event] = self.timeline(responses[user])
                alone = await self.incremental(user, sinces[user], sync_filter)
                [event_alone] = self.timeline(alone)
                self.assertEqual(
                    "age" in event.get("unsigned", {}), "age" in event_alone.get("unsigned", {})
                )

    async def test_lazy_loading_members_computes_alone(self):
        await self.set_up_room()
        sync_filter = json.dumps({"room": {"state": {"lazy_load_members": True}}})
        sinces = await self.since_tokens(sync_filter)
        await self.send(self.owner, "lazy", "t1")
        await self.compare(sinces, sync_filter)
        self.assertEqual(self.took_shared, [])

    async def test_joined_history_hides_what_came_before_a_join(self):
        """A member who joins in the window gets the room afresh, not shared: it must not
        see earlier messages of a room whose history is `joined`. (Its join is filtered out
        of the timeline here, so it is not among the senders of what is served either.)"""
        await self.set_up_room(initial_state=[
            {"type": "m.room.history_visibility", "state_key": "",
             "content": {"history_visibility": "joined"}},
        ])
        newcomer = await self.register("newcomer")
        self.tokens[newcomer["user_id"]] = newcomer["access_token"]
        sync_filter = json.dumps({"room": {"timeline": {"types": ["m.room.message"]}}})
        sinces = await self.since_tokens(sync_filter)
        await self.send(self.owner, "before the join", "t1")
        r = await self.request(
            "POST", f"{API}/join/{quote(self.room_id)}", {}, token=newcomer["access_token"]
        )
        self.assertEqual(r.code, 200, r)
        await self.send(self.owner, "after the join", "t2")
        responses = await self.compare(sinces, sync_filter)
        self.assertNotIn(newcomer["user_id"], self.took_shared)
        self.assertTrue(self.took_shared)
        bodies = [e["content"]["body"] for e in self.timeline(responses[newcomer["user_id"]])]
        self.assertEqual(bodies, ["after the join"])

    async def test_a_thread_root_is_shared_only_with_those_not_in_its_thread(self):
        """`current_user_participated` differs per viewer: a member who replied in a thread
        whose root is served computes the section alone, even when its reply is filtered
        out of the timeline (so it is not among the senders of what is served)."""
        await self.set_up_room()
        starter, replier = self.users[-1], self.users[-2]
        sync_filter = json.dumps({"room": {"timeline": {"not_senders": [replier]}}})
        sinces = await self.since_tokens(sync_filter)
        root = await self.send(starter, "a thread", "t1")
        r = await self.request(
            "PUT", f"{API}/rooms/{quote(self.room_id)}/send/m.room.message/t2",
            {"msgtype": "m.text", "body": "in it",
             "m.relates_to": {"rel_type": "m.thread", "event_id": root}},
            token=self.tokens[replier],
        )
        self.assertEqual(r.code, 200, r)
        responses = await self.compare(sinces, sync_filter)
        self.assertTrue(self.took_shared)
        self.assertNotIn(replier, self.took_shared)
        for user in self.users:
            [event] = self.timeline(responses[user])
            thread = event["unsigned"]["m.relations"]["m.thread"]
            self.assertEqual(thread["count"], 1)
            self.assertEqual(
                thread["current_user_participated"], user in (starter, replier), user
            )

    async def test_a_viewer_ignoring_a_childs_sender_computes_alone(self):
        """Children from ignored users are not aggregated: a viewer who ignores the sender
        of a reply or reference under a served event sees another summary than the
        section's, and computes its own."""
        await self.set_up_room()
        # The starter and replier among the hero candidates, so two others may share.
        starter, replier, ignorer = self.users[1], self.users[2], self.users[-1]
        r = await self.request(
            "PUT", f"{API}/user/{quote(ignorer)}/account_data/m.ignored_user_list",
            {"ignored_users": {replier: {}}}, token=self.tokens[ignorer],
        )
        self.assertEqual(r.code, 200, r)
        sync_filter = json.dumps({"room": {"timeline": {"limit": 10}}})
        sinces = await self.since_tokens(sync_filter)
        root = await self.send(starter, "a thread", "t1")
        for txn, relation in (("t2", "m.thread"), ("t3", "m.reference")):
            r = await self.request(
                "PUT", f"{API}/rooms/{quote(self.room_id)}/send/m.room.message/{txn}",
                {"msgtype": "m.text", "body": "child",
                 "m.relates_to": {"rel_type": relation, "event_id": root}},
                token=self.tokens[replier],
            )
            self.assertEqual(r.code, 200, r)
        responses = await self.compare(sinces, sync_filter)
        self.assertTrue(self.took_shared)
        self.assertNotIn(ignorer, self.took_shared)
        for user in self.users:
            relations = self.timeline(responses[user])[0]["unsigned"].get("m.relations", {})
            if user == ignorer:
                self.assertEqual(relations, {})
            else:
                self.assertEqual(relations["m.thread"]["count"], 1, user)
                self.assertEqual(len(relations["m.reference"]["chunk"]), 1, user)
