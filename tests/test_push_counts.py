"""Push rules evaluated for every event, notification counts in /sync, and
GET /notifications, over real HTTP on both engines.

Spec: client-server API "Push Notifications" ("Receiving notifications", "Marking
notifications as read", "Server behaviour"), api/client-server/notifications.yaml,
sync_events.yaml (`unread_notifications`, `unread_thread_notifications`).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from twisted.internet import defer

from homeserver.account_data import PUSH_RULES
from storage.persister import EventContext
from tests.harness import on_both_engines, transactions_recorded
from tests.push_gateway import PushGateway
from tests.room_helpers import API, RoomTestCase, User, q

THREADED_FILTER = json.dumps({"room": {"timeline": {"unread_thread_notifications": True}}})


class PushCountsTestCase(RoomTestCase):
    async def setUp(self) -> None:
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.carol = await self.user("carol")
        self.room_id = await self.create_room(self.alice, preset="public_chat")
        for user in (self.bob, self.carol):
            r = await self.join(user, self.room_id)
            assert r.code == 200, r

    async def sync(self, user: User, since: str | None = None, **params: Any) -> dict[str, Any]:
        if since is not None:
            params["since"] = since
        r = await self.request("GET", f"{API}/sync?{urlencode(params)}", token=user.token)
        self.assertEqual(r.code, 200, r)
        return r.json

    async def message(
        self, user: User, body: str = "hello", **content: Any
    ) -> str:
        r = await self.send(user, self.room_id, {"msgtype": "m.text", "body": body, **content})
        assert r.code == 200, r
        return r.json["event_id"]

    async def receipt(
        self, user: User, event_id: str, receipt_type: str = "m.read", thread_id: str | None = None
    ) -> None:
        body = {"thread_id": thread_id} if thread_id is not None else {}
        r = await self.request(
            "POST",
            f"{API}/rooms/{q(self.room_id)}/receipt/{receipt_type}/{q(event_id)}",
            body,
            token=user.token,
        )
        assert r.code == 200, r

    def counts(self, response: dict[str, Any], room_id: str | None = None) -> tuple[int, int]:
        room = response["rooms"]["join"][room_id or self.room_id]
        unread = room["unread_notifications"]
        return unread["notification_count"], unread["highlight_count"]

    async def notifications(self, user: User | None, **params: Any) -> Any:
        path = f"{API}/notifications"
        if params:
            path += "?" + urlencode(params)
        return await self.request("GET", path, token=user.token if user else None)


@on_both_engines
class NotificationCountTests(PushCountsTestCase):
    async def test_messages_count_and_mentions_highlight(self) -> None:
        await self.message(self.alice)
        await self.message(self.alice, "hey bob", **{"m.mentions": {"user_ids": [self.bob.user_id]}})
        self.assertEqual(self.counts(await self.sync(self.bob)), (2, 1))
        self.assertEqual(self.counts(await self.sync(self.carol)), (2, 0))
        # The sender is never notified of its own events.
        self.assertEqual(self.counts(await self.sync(self.alice)), (0, 0))

    async def test_count_arrives_with_the_event_and_receipts_reset_it(self) -> None:
        since = (await self.sync(self.bob))["next_batch"]
        event_id = await self.message(self.alice)
        response = await self.sync(self.bob, since)
        room = response["rooms"]["join"][self.room_id]
        self.assertEqual([e["event_id"] for e in room["timeline"]["events"]], [event_id])
        self.assertEqual(self.counts(response), (1, 0))
        await self.receipt(self.bob, event_id)
        # The receipt makes the next sync return the room, with the new counts.
        response = await self.sync(self.bob, response["next_batch"])
        self.assertEqual(self.counts(response), (0, 0))
        # Carol's counts are hers.
        self.assertEqual(self.counts(await self.sync(self.carol)), (1, 0))

    async def test_room_returned_for_its_account_data_has_counts(self) -> None:
        await self.message(self.alice)
        since = (await self.sync(self.bob))["next_batch"]
        r = await self.request(
            "PUT", f"{API}/user/{q(self.bob.user_id)}/rooms/{q(self.room_id)}/tags/u.work", {},
            token=self.bob.token,
        )
        self.assertEqual(r.code, 200, r)
        response = await self.sync(self.bob, since)
        self.assertEqual(self.counts(response), (1, 0))

    async def test_later_of_public_and_private_receipts_counts(self) -> None:
        first = await self.message(self.alice, "1")
        second = await self.message(self.alice, "2")
        await self.message(self.alice, "3")
        await self.receipt(self.bob, second, "m.read.private")
        self.assertEqual(self.counts(await self.sync(self.bob)), (1, 0))
        # A public receipt behind the private one changes nothing.
        await self.receipt(self.bob, first, "m.read")
        self.assertEqual(self.counts(await self.sync(self.bob)), (1, 0))

    async def test_sending_marks_read(self) -> None:
        await self.message(self.alice)
        await self.message(self.alice)
        self.assertEqual(self.counts(await self.sync(self.bob)), (2, 0))
        await self.message(self.bob, "reply")
        self.assertEqual(self.counts(await self.sync(self.bob)), (0, 0))
        # What the database says agrees (a restart reads it).
        stored = await self.hs.stores.push_action_store.get_counts([(self.bob.user_id, self.room_id)])
        self.assertEqual(stored[(self.bob.user_id, self.room_id)].totals(), (0, 0))
        await self.message(self.alice)
        self.assertEqual(self.counts(await self.sync(self.bob)), (1, 0))

    async def test_counts_survive_a_cold_cache(self) -> None:
        """What is counted in memory is what the database holds (a restart reads it)."""
        mention = {"m.mentions": {"user_ids": [self.bob.user_id]}}
        event_id = await self.message(self.alice)
        self.assertEqual(self.counts(await self.sync(self.bob)), (1, 0))  # now cached
        await self.message(self.alice, "x", **mention)
        await self.receipt(self.bob, event_id)
        await self.message(self.alice, "y", **mention)
        cached = self.counts(await self.sync(self.bob))
        stored = await self.hs.stores.push_action_store.get_counts([(self.bob.user_id, self.room_id)])
        self.assertEqual(cached, (2, 2))
        self.assertEqual(stored[(self.bob.user_id, self.room_id)].totals(), (2, 2))

    async def test_notices_reactions_and_edits_do_not_count(self) -> None:
        target = await self.message(self.alice)
        await self.message(self.bob, "read it")  # bob reads up to here
        r = await self.send(self.alice, self.room_id, {"msgtype": "m.notice", "body": "bot"})
        assert r.code == 200, r
        r = await self.send(
            self.alice, self.room_id,
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": "👍"}},
            event_type="m.reaction",
        )
        assert r.code == 200, r
        self.assertEqual(self.counts(await self.sync(self.bob)), (0, 0))

    async def test_room_mention_needs_power(self) -> None:
        # Alice (creator, 100) may notify the room; carol (0) may not.
        await self.message(self.alice, "all", **{"m.mentions": {"room": True}})
        await self.message(self.carol, "all", **{"m.mentions": {"room": True}})
        self.assertEqual(self.counts(await self.sync(self.bob)), (2, 1))

    async def test_one_to_one_and_master_rule(self) -> None:
        dm = await self.create_room(self.alice, preset="trusted_private_chat",
                                    invite=[self.bob.user_id])
        r = await self.join(self.bob, dm)
        assert r.code == 200, r
        r = await self.send(self.alice, dm, {"msgtype": "m.text", "body": "psst"})
        assert r.code == 200, r
        actions = await self.hs.stores.push_action_store.get_notifications(
            self.bob.user_id, None, 10, False
        )
        self.assertEqual(actions[0].actions, ["notify", {"set_tweak": "sound", "value": "default"}])
        r = await self.request(
            "PUT", f"{API}/pushrules/global/override/.m.rule.master/enabled", {"enabled": True},
            token=self.bob.token,
        )
        self.assertEqual(r.code, 200, r)
        r = await self.send(self.alice, dm, {"msgtype": "m.text", "body": "again"})
        assert r.code == 200, r
        response = await self.sync(self.bob)
        self.assertEqual(self.counts(response, dm), (1, 0))

    async def test_malformed_rules_in_account_data_never_stop_others(self) -> None:
        bad = {"global": {"override": [
            {"rule_id": "bad1", "conditions": [{"kind": "event_match", "key": 5}],
             "actions": ["notify", {"set_tweak": "highlight"}]},
            {"rule_id": "bad2", "conditions": "nope", "actions": ["notify"]},
            {"rule_id": "bad3", "conditions": [{"kind": "room_member_count", "is": "x"}],
             "actions": ["notify"]},
            {"rule_id": "bad4", "conditions": [], "actions": {"not": "a list"}},
            {"rule_id": "bad5", "conditions": [None], "actions": ["notify"]},
        ], "content": [{"rule_id": "badc", "pattern": ["x"], "actions": ["notify"]}]}}
        await self.hs.account_data.write(self.bob.user_id, None, PUSH_RULES, bad)
        # And one stored through the API: a kind the spec does not define never matches.
        r = await self.request(
            "PUT", f"{API}/pushrules/global/override/future",
            {"conditions": [{"kind": "org.example.future"}], "actions": ["notify",
                                                                      {"set_tweak": "highlight"}]},
            token=self.carol.token,
        )
        self.assertEqual(r.code, 200, r)
        await self.message(self.alice)
        # Bob's broken rules are skipped, his defaults apply; carol's unknown kind never
        # matches.
        self.assertEqual(self.counts(await self.sync(self.bob)), (1, 0))
        self.assertEqual(self.counts(await self.sync(self.carol)), (1, 0))

    async def test_push_rule_change_applies_to_the_next_event(self) -> None:
        await self.message(self.alice)  # bob's rules are compiled and cached
        r = await self.request(
            "PUT", f"{API}/pushrules/global/room/{q(self.room_id)}", {"actions": []},
            token=self.bob.token,
        )
        self.assertEqual(r.code, 200, r)
        await self.message(self.alice)
        self.assertEqual(self.counts(await self.sync(self.bob)), (1, 0))


@on_both_engines
class ThreadCountTests(PushCountsTestCase):
    async def test_thread_counts_when_asked(self) -> None:
        root = await self.message(self.alice, "root")
        thread = {"m.relates_to": {"rel_type": "m.thread", "event_id": root}}
        in_thread = await self.message(self.alice, "in thread", **thread)
        await self.message(self.alice, "in thread 2", **thread)
        rows = await self.hs.stores.push_action_store.get_notifications(
            self.bob.user_id, None, 10, False
        )
        self.assertEqual([n.thread_id for n in rows], [root, root, "main"])
        # Unthreaded: everything in the room's counts.
        self.assertEqual(self.counts(await self.sync(self.bob)), (3, 0))
        response = await self.sync(self.bob, filter=THREADED_FILTER)
        room = response["rooms"]["join"][self.room_id]
        self.assertEqual(self.counts(response), (1, 0))
        self.assertEqual(
            room["unread_thread_notifications"],
            {root: {"notification_count": 2, "highlight_count": 0}},
        )
        # A threaded receipt reads that thread only.
        await self.receipt(self.bob, in_thread, thread_id=root)
        response = await self.sync(self.bob, filter=THREADED_FILTER)
        room = response["rooms"]["join"][self.room_id]
        self.assertEqual(self.counts(response), (1, 0))
        self.assertEqual(
            room["unread_thread_notifications"],
            {root: {"notification_count": 1, "highlight_count": 0}},
        )
        await self.receipt(self.bob, root, thread_id="main")
        response = await self.sync(self.bob, filter=THREADED_FILTER)
        self.assertEqual(self.counts(response), (0, 0))
        self.assertEqual(self.counts(await self.sync(self.bob)), (1, 0))


@on_both_engines
class NotificationsApiTests(PushCountsTestCase):
    async def test_list_read_flags_highlight_and_paging(self) -> None:
        first = await self.message(self.alice, "one")
        mention = await self.message(self.alice, "two", **{"m.mentions": {"user_ids": [self.bob.user_id]}})
        third = await self.message(self.alice, "three")
        await self.receipt(self.bob, first)
        r = await self.notifications(self.bob)
        self.assertEqual(r.code, 200, r)
        notes = r.json["notifications"]
        self.assertEqual([n["event"]["event_id"] for n in notes], [third, mention, first])
        self.assertEqual([n["read"] for n in notes], [False, False, True])
        self.assertEqual({n["room_id"] for n in notes}, {self.room_id})
        self.assertEqual(notes[1]["actions"][0], "notify")
        self.assertIn({"set_tweak": "highlight"}, notes[1]["actions"])
        self.assertTrue(all(isinstance(n["ts"], int) for n in notes))
        self.assertNotIn("next_token", r.json)

        r = await self.notifications(self.bob, only="highlight")
        self.assertEqual([n["event"]["event_id"] for n in r.json["notifications"]], [mention])

        r = await self.notifications(self.bob, limit=2)
        self.assertEqual([n["event"]["event_id"] for n in r.json["notifications"]],
                         [third, mention])
        r = await self.notifications(self.bob, limit=2, **{"from": r.json["next_token"]})
        self.assertEqual([n["event"]["event_id"] for n in r.json["notifications"]], [first])
        self.assertNotIn("next_token", r.json)

        # The sender has none.
        r = await self.notifications(self.alice)
        self.assertEqual(r.json["notifications"], [])

    async def test_bad_parameters(self) -> None:
        for params in ({"from": "nonsense"}, {"from": "-3"}, {"limit": "x"}, {"limit": "-1"}):
            r = await self.notifications(self.bob, **params)
            self.assertEqual(r.code, 400, (params, r))
            self.assertEqual(r.json["errcode"], "M_INVALID_PARAM", params)
        r = await self.notifications(None)
        self.assertEqual(r.code, 401)


@on_both_engines
class CountsCostTests(PushCountsTestCase):
    async def test_a_woken_pass_reads_no_counts(self) -> None:
        since = (await self.sync(self.bob))["next_batch"]  # counts now held
        await self.message(self.alice)
        with transactions_recorded(self.hs) as calls:
            response = await self.sync(self.bob, since)
        self.assertEqual(self.counts(response), (1, 0))
        self.assertNotIn("get_notification_counts", calls)


@on_both_engines
class ListenerTests(PushCountsTestCase):
    async def test_notification_listeners_hear_of_new_actions(self) -> None:
        heard: list[tuple[str, str, str, tuple[Any, ...], tuple[int, int]]] = []
        done = defer.Deferred()

        async def listener(user_id: str, room_id: str, event: Any, actions: Any,
                           counts: Any) -> None:
            heard.append((user_id, room_id, event.event_id, actions, counts.totals()))
            if len(heard) == 2:
                done.callback(None)

        async def broken(*args: Any) -> None:
            raise RuntimeError("a pusher failing must not stop the others")

        self.hs.push_actions.notification_listeners.extend([broken, listener])
        for user in (self.bob, self.carol):
            await self.sync(user)  # their counts are now held
        event_id = await self.message(
            self.alice, "hi", **{"m.mentions": {"user_ids": [self.bob.user_id]}}
        )
        await done
        by_user = {h[0]: h for h in heard}
        self.assertEqual(set(by_user), {self.bob.user_id, self.carol.user_id})
        bob = by_user[self.bob.user_id]
        self.assertEqual(bob[1:3], (self.room_id, event_id))
        self.assertIn({"set_tweak": "highlight"}, bob[3])
        self.assertEqual(bob[4], (1, 1))
        self.assertEqual(by_user[self.carol.user_id][4], (1, 0))
        self.flushLoggedErrors(RuntimeError)


@on_both_engines
class WhichEventsTests(PushCountsTestCase):
    async def test_hidden_events_get_no_actions(self) -> None:
        event_id = await self.message(self.alice)
        event = await self.hs.event_store.get_event(event_id)
        assert event is not None
        generator = self.hs.push_actions
        visible = await generator.for_event(event, EventContext(state_group_before=None))
        assert visible is not None
        self.assertEqual({r.user_id for r in visible.rows},
                         {self.bob.user_id, self.carol.user_id})
        for hidden in (
            EventContext(state_group_before=None, outlier=True),
            EventContext(state_group_before=None, backfilled=True),
            EventContext(state_group_before=None, soft_failed=True),
        ):
            self.assertIsNone(await generator.for_event(event, hidden))

    async def test_invitee_gets_invite_for_me(self) -> None:
        dave = await self.user("dave")
        r = await self.membership_action(self.alice, self.room_id, "invite",
                                         {"user_id": dave.user_id})
        self.assertEqual(r.code, 200, r)
        notes = await self.hs.stores.push_action_store.get_notifications(
            dave.user_id, None, 10, False
        )
        self.assertEqual(len(notes), 1)
        self.assertEqual(notes[0].actions, ["notify", {"set_tweak": "sound", "value": "default"}])
        # The room's members are not notified of the invite (member events are suppressed).
        bob = await self.hs.stores.push_action_store.get_notifications(
            self.bob.user_id, None, 10, False
        )
        self.assertEqual(bob, [])


@on_both_engines
class PushersTests(PushCountsTestCase):
    """Push evaluation hands notifications and lowered counts to the pushers
    (tests/test_pushers.py tests their delivery)."""

    config_overrides = {"pushers": {"ip_range_allowlist": ["127.0.0.1/32"]}}

    async def test_notifications_and_badge_updates_reach_the_gateway(self) -> None:
        gateway = PushGateway.start(self)
        r = await self.request("POST", f"{API}/pushers/set", {
            "kind": "http", "app_id": "org.example.app", "pushkey": "key-1",
            "app_display_name": "Example", "device_display_name": "Bob's phone",
            "lang": "en", "data": {"url": gateway.url},
        }, token=self.bob.token)
        self.assertEqual(r.code, 200, r)
        first = await self.message(self.alice, "one")
        await self.message(self.alice, "two")
        received = await gateway.wait_for(2)
        self.assertEqual([n.notification["event_id"] for n in received][:1], [first])
        self.assertEqual([n.notification["counts"]["unread"] for n in received], [1, 2])
        # Carol has no pusher: nothing for her.
        self.assertTrue(all(n.notification["devices"][0]["pushkey"] == "key-1" for n in received))
        await self.receipt(self.bob, first)
        [*_, badge] = await gateway.wait_for(3)
        self.assertNotIn("event_id", badge.notification)
        self.assertEqual(badge.notification["counts"]["unread"], 1)
