"""GET /rooms/{roomId}/messages, /context/{eventId} and /event/{eventId}, over real HTTP and
with matrix-nio."""

from __future__ import annotations

from nio import (
    AsyncClient,
    MessageDirection,
    RoomContextResponse,
    RoomGetEventError,
    RoomGetEventResponse,
    RoomMessagesError,
    RoomMessagesResponse,
)

from homeserver.rooms import messages as messages_module
from homeserver.sync.tokens import RoomPosition, StreamToken
from storage.stores.events import StoredEvent
from tests.harness import nio, on_both_engines
from tests.history_helpers import ALICE, BOB, CAROL, HistoryTestCase, chunk_ids, ids


@on_both_engines
class Messages(HistoryTestCase):
    async def setUp(self) -> None:
        await super().setUp()
        await self.register_users("alice", "bob", "carol")
        self.room_id = await self.make_room()
        await self.membership(self.room_id, BOB, "join")
        self.sent: list[StoredEvent] = [
            await self.say(self.room_id, ALICE if i % 2 == 0 else BOB, f"m{i}") for i in range(50)
        ]
        # Everything in the room, oldest first: create, alice's join, power levels, join
        # rules, bob's join, then the 50 messages.
        self.history = await self.all_visible(self.room_id, ALICE)
        self.assertEqual(len(self.history), 55)
        self.assertEqual(self.history[5:], ids(self.sent))

    async def nio_client(self, user_id: str) -> AsyncClient:
        client = AsyncClient(self.base_url, user_id)
        client.access_token = self.tokens[user_id]
        client.user_id = user_id
        self.addCleanup(lambda: nio(client.close()))
        return client

    # ----- pagination ------------------------------------------------------------------------

    async def test_paginate_backwards_from_the_latest_event_to_the_start(self):
        pages = []
        token = None
        while True:
            params = {"dir": "b", "limit": 10}
            if token is not None:
                params["from"] = token
            response = await self.messages(self.room_id, ALICE, **params)
            self.assertEqual(response.code, 200, response)
            body = response.json
            if token is not None:
                self.assertEqual(body["start"], token)
            pages.append(chunk_ids(response))
            token = body.get("end")
            if token is None:
                break
        expected = list(reversed(self.history))
        self.assertEqual(pages, [expected[i : i + 10] for i in range(0, 55, 10)])
        self.assertEqual(len(pages), 6)  # the last (short) page carries no `end`

    async def test_paginate_forwards_from_the_start(self):
        pages = []
        token = None
        while True:
            params = {"dir": "f", "limit": 20}
            if token is not None:
                params["from"] = token
            response = await self.messages(self.room_id, BOB, **params)
            self.assertEqual(response.code, 200, response)
            pages.append(chunk_ids(response))
            token = response.json.get("end")
            if token is None:
                break
        # Forwards, the last page with events still has an `end` (new events may follow);
        # the page after it is empty and has none.
        self.assertEqual(pages, [self.history[0:20], self.history[20:40], self.history[40:], []])

    async def test_tokens_round_trip_between_directions(self):
        first = (await self.messages(self.room_id, ALICE, dir="b", limit=10)).json
        self.assertEqual(chunk_ids_of(first), list(reversed(self.history[45:])))
        # `end` of a backwards page sits just before its oldest event: forwards from it
        # starts with that event.
        forwards = (await self.messages(self.room_id, ALICE, dir="f", limit=3, **{"from": first["end"]})).json
        self.assertEqual(chunk_ids_of(forwards), self.history[45:48])
        # ...and backwards from the forwards page's end returns what it just returned.
        back = (await self.messages(self.room_id, ALICE, dir="b", limit=3, **{"from": forwards["end"]})).json
        self.assertEqual(chunk_ids_of(back), list(reversed(self.history[45:48])))
        # `start` of a backwards page from the latest event is a token for the top.
        again = (await self.messages(self.room_id, ALICE, dir="b", limit=2, **{"from": first["start"]})).json
        self.assertEqual(chunk_ids_of(again), [self.history[54], self.history[53]])

    async def test_to_bounds_the_pagination(self):
        first = (await self.messages(self.room_id, ALICE, dir="b", limit=10)).json
        second = (await self.messages(self.room_id, ALICE, dir="b", limit=10, **{"from": first["end"]})).json
        # Backwards from the top down to the end of the first page: exactly the first page,
        # and nothing further within the bound.
        bounded = await self.messages(self.room_id, ALICE, dir="b", limit=50, to=first["end"])
        self.assertEqual(chunk_ids(bounded), chunk_ids_of(first))
        self.assertNotIn("end", bounded.json)
        # Forwards from the second page's end up to the first page's end: the second page.
        forwards = await self.messages(
            self.room_id, ALICE, dir="f", limit=50, to=first["end"], **{"from": second["end"]}
        )
        self.assertEqual(chunk_ids(forwards), list(reversed(chunk_ids_of(second))))

    async def test_limit_defaults_caps_and_zero(self):
        default = await self.messages(self.room_id, ALICE, dir="b")
        self.assertEqual(len(default.json["chunk"]), 10)
        three = await self.messages(self.room_id, ALICE, dir="f", limit=3)
        self.assertEqual(chunk_ids(three), self.history[:3])
        everything = await self.messages(self.room_id, ALICE, dir="b", limit=100000)
        self.assertEqual(len(everything.json["chunk"]), 55)
        self.assertNotIn("end", everything.json)
        zero = await self.messages(self.room_id, ALICE, dir="b", limit=0)
        self.assertEqual(zero.json["chunk"], [])
        self.assertEqual(zero.json["end"], zero.json["start"])

    async def test_sync_token_as_from_means_that_stream_position(self):
        middle = self.sent[24]
        token = str(StreamToken(events=middle.stream_ordering))
        back = await self.messages(self.room_id, ALICE, dir="b", limit=3, **{"from": token})
        self.assertEqual(chunk_ids(back), [e.event.event_id for e in reversed(self.sent[22:25])])
        self.assertEqual(back.json["start"], token)
        forwards = await self.messages(self.room_id, ALICE, dir="f", limit=2, **{"from": token})
        self.assertEqual(chunk_ids(forwards), ids(self.sent[25:27]))
        # A room position token of the same event says the same.
        position = str(RoomPosition(middle.topological_ordering, middle.stream_ordering))
        same = await self.messages(self.room_id, ALICE, dir="b", limit=3, **{"from": position})
        self.assertEqual(chunk_ids(same), chunk_ids(back))

    async def test_events_are_serialized_as_client_events(self):
        response = await self.messages(self.room_id, ALICE, dir="b", limit=1)
        [event] = response.json["chunk"]
        self.assertEqual(event["content"], {"msgtype": "m.text", "body": "m49"})
        self.assertEqual(event["sender"], BOB)
        self.assertEqual(event["room_id"], self.room_id)
        self.assertEqual(event["type"], "m.room.message")
        self.assertIn("age", event["unsigned"])

    async def test_redacted_events_are_served_pruned(self):
        target = self.sent[49]
        await self.hs.event_creator.send(
            self.room_id, ALICE, "m.room.redaction", {"redacts": target.event.event_id}
        )
        response = await self.messages(self.room_id, BOB, dir="b", limit=2)
        redaction, redacted = response.json["chunk"]
        self.assertEqual(redaction["type"], "m.room.redaction")
        self.assertEqual(redacted["event_id"], target.event.event_id)
        self.assertEqual(redacted["content"], {})
        self.assertEqual(redacted["unsigned"]["redacted_because"]["event_id"], redaction["event_id"])

    # ----- filters ---------------------------------------------------------------------------

    async def test_filter_types_and_not_types_with_wildcards(self):
        only_state = await self.messages(
            self.room_id, ALICE, dir="f", limit=50, filter={"types": ["m.room.*"], "not_types": ["m.room.message"]}
        )
        self.assertEqual(chunk_ids(only_state), self.history[:5])
        messages = await self.messages(
            self.room_id, ALICE, dir="b", limit=5, filter={"types": ["m.room.message"]}
        )
        self.assertEqual(chunk_ids(messages), list(reversed(ids(self.sent[45:]))))
        members = await self.messages(
            self.room_id, ALICE, dir="f", limit=50, filter={"types": ["*.member"]}
        )
        self.assertEqual(chunk_ids(members), [self.history[1], self.history[4]])

    async def test_filter_senders_and_not_senders(self):
        bob_only = await self.messages(
            self.room_id, ALICE, dir="b", limit=3, filter={"senders": [BOB], "types": ["m.room.message"]}
        )
        self.assertEqual(chunk_ids(bob_only), [self.sent[i].event.event_id for i in (49, 47, 45)])
        not_bob = await self.messages(
            self.room_id, ALICE, dir="b", limit=2, filter={"not_senders": [BOB], "senders": [ALICE, BOB]}
        )
        self.assertEqual(chunk_ids(not_bob), [self.sent[i].event.event_id for i in (48, 46)])

    async def test_filtered_pagination_continues_where_it_stopped(self):
        bob = {"senders": [BOB], "types": ["m.room.message"]}
        first = (await self.messages(self.room_id, ALICE, dir="b", limit=10, filter=bob)).json
        second = (
            await self.messages(self.room_id, ALICE, dir="b", limit=100, filter=bob, **{"from": first["end"]})
        ).json
        odd = [self.sent[i].event.event_id for i in range(49, 0, -2)]
        self.assertEqual(chunk_ids_of(first) + chunk_ids_of(second), odd)
        self.assertNotIn("end", second)

    async def test_a_bounded_scan_answers_early_and_continues(self):
        # Read at most 7 events per request: a selective filter then yields short (even
        # empty) pages with an `end`, and following them finds everything exactly once.
        self.patch(messages_module, "MAX_SCANNED_EVENTS", 7)
        bob = {"senders": [BOB], "types": ["m.room.message"]}
        for direction, expected in (
            ("b", [self.sent[i].event.event_id for i in range(49, 0, -2)]),
            ("f", [self.sent[i].event.event_id for i in range(1, 50, 2)]),
        ):
            seen, pages, token = [], 0, None
            while True:
                params = {"dir": direction, "limit": 5, "filter": bob}
                if token is not None:
                    params["from"] = token
                body = (await self.messages(self.room_id, ALICE, **params)).json
                pages += 1
                self.assertLessEqual(len(body["chunk"]), 5)
                seen.extend(chunk_ids_of(body))
                token = body.get("end")
                if token is None:
                    break
            self.assertEqual(seen, expected)
            self.assertGreater(pages, 7)
        nothing = (await self.messages(self.room_id, ALICE, dir="b", limit=5, filter={"types": ["none"]})).json
        self.assertEqual(nothing["chunk"], [])
        self.assertIn("end", nothing)

    async def test_filter_contains_url(self):
        with_url = await self.say(self.room_id, ALICE, "pic", url="mxc://test.heddle/abc", msgtype="m.image")
        response = await self.messages(self.room_id, ALICE, dir="b", limit=5, filter={"contains_url": True})
        self.assertEqual(chunk_ids(response), [with_url.event.event_id])
        without = await self.messages(self.room_id, ALICE, dir="b", limit=1, filter={"contains_url": False})
        self.assertEqual(chunk_ids(without), [self.sent[49].event.event_id])
        # Once redacted, the event has no `url` any more.
        await self.hs.event_creator.send(self.room_id, ALICE, "m.room.redaction", {"redacts": with_url.event.event_id})
        after = await self.messages(self.room_id, ALICE, dir="b", limit=5, filter={"contains_url": True})
        self.assertEqual(after.json["chunk"], [])
        redacted = await self.messages(
            self.room_id, ALICE, dir="b", limit=1, filter={"contains_url": False, "types": ["m.room.message"]}
        )
        self.assertEqual(chunk_ids(redacted), [with_url.event.event_id])

    async def test_filter_rooms_and_not_rooms(self):
        excluded = await self.messages(
            self.room_id, ALICE, dir="b", limit=5, filter={"not_rooms": [self.room_id]}
        )
        self.assertEqual(excluded.json["chunk"], [])
        included = await self.messages(
            self.room_id, ALICE, dir="b", limit=5, filter={"rooms": [self.room_id]}
        )
        self.assertEqual(len(included.json["chunk"]), 5)

    async def test_stored_filter_id_as_filter(self):
        response = await self.request(
            "POST", f"/_matrix/client/v3/user/{ALICE}/filter",
            {"room": {"timeline": {"senders": [ALICE], "types": ["m.room.message"]}}},
            token=self.tokens[ALICE],
        )
        filter_id = response.json["filter_id"]
        page = await self.messages(self.room_id, ALICE, dir="b", limit=2, filter=filter_id)
        self.assertEqual(chunk_ids(page), [self.sent[48].event.event_id, self.sent[46].event.event_id])
        # Another user's filter ID is not theirs to use.
        other = await self.messages(self.room_id, BOB, dir="b", limit=2, filter=filter_id)
        self.assertError(other, 400, "M_INVALID_PARAM")

    async def test_lazy_loading_returns_members_of_the_senders(self):
        await self.membership(self.room_id, CAROL, "join")
        lazy = {"lazy_load_members": True}
        # The latest three events: carol's join and two messages... by alice and bob.
        response = await self.messages(self.room_id, ALICE, dir="b", limit=2, filter=lazy)
        [carol_join, m49] = response.json["chunk"]
        self.assertEqual(carol_join["state_key"], CAROL)
        self.assertEqual(m49["sender"], BOB)
        state = response.json["state"]
        self.assertEqual(
            {(e["type"], e["state_key"], e["content"]["membership"]) for e in state},
            {("m.room.member", BOB, "join"), ("m.room.member", CAROL, "join")},
        )
        # Alice only sent messages further back: her member event comes with those.
        older = await self.messages(
            self.room_id, ALICE, dir="b", limit=1, filter={**lazy, "senders": [ALICE]}
        )
        self.assertEqual([e["state_key"] for e in older.json["state"]], [ALICE])
        # Without lazy loading there is no `state`.
        plain = await self.messages(self.room_id, ALICE, dir="b", limit=2)
        self.assertNotIn("state", plain.json)

    async def test_lazy_loaded_member_is_the_one_at_the_time(self):
        await self.hs.event_creator.send(
            self.room_id, BOB, "m.room.member", {"membership": "join", "displayname": "Robert"},
            state_key=BOB,
        )
        later = await self.say(self.room_id, BOB, "as Robert")
        early = await self.messages(
            self.room_id, ALICE, dir="b", limit=1, filter={"lazy_load_members": True},
            **{"from": str(RoomPosition(self.sent[49].topological_ordering, self.sent[49].stream_ordering))},
        )
        [member] = early.json["state"]
        self.assertNotIn("displayname", member["content"])
        recent = await self.messages(self.room_id, ALICE, dir="b", limit=1, filter={"lazy_load_members": True})
        self.assertEqual(chunk_ids(recent), [later.event.event_id])
        self.assertEqual(recent.json["state"][0]["content"]["displayname"], "Robert")

    # ----- bad requests and access -------------------------------------------------------

    async def test_bad_parameters_are_refused(self):
        missing = await self.messages(self.room_id, ALICE)
        self.assertError(missing, 400, "M_MISSING_PARAM")
        cases = [
            {"dir": "x"},
            {"dir": "b", "from": "garbage"},
            {"dir": "b", "from": "t1-"},
            {"dir": "b", "from": "s1_x"},
            {"dir": "f", "to": "nope"},
            {"dir": "b", "limit": "-1"},
            {"dir": "b", "limit": "ten"},
            {"dir": "b", "filter": "{not json"},
            {"dir": "b", "filter": "[1]"},
            {"dir": "b", "filter": {"types": "m.room.message"}},
            {"dir": "b", "filter": {"senders": ["alice"]}},
            {"dir": "b", "filter": {"limit": "5"}},
            {"dir": "b", "filter": {"lazy_load_members": "yes"}},
            {"dir": "b", "filter": "1234"},
        ]
        for params in cases:
            response = await self.messages(self.room_id, ALICE, **params)
            self.assertError(response, 400, "M_INVALID_PARAM")

    async def test_non_members_and_unknown_rooms_are_forbidden(self):
        outsider = await self.messages(self.room_id, CAROL, dir="b")
        self.assertError(outsider, 403, "M_FORBIDDEN")
        unknown = await self.messages("!nowhere:test.heddle", ALICE, dir="b")
        self.assertError(unknown, 403, "M_FORBIDDEN")
        no_token = await self.request(
            "GET", f"/_matrix/client/v3/rooms/{self.room_id}/messages?dir=b"
        )
        self.assertError(no_token, 401, "M_MISSING_TOKEN")

    # ----- /context --------------------------------------------------------------------------

    async def test_context_around_an_event(self):
        target = self.sent[20]
        response = await self.context(self.room_id, target.event.event_id, ALICE, limit=4)
        self.assertEqual(response.code, 200, response)
        body = response.json
        self.assertEqual(body["event"]["event_id"], target.event.event_id)
        self.assertEqual(chunk_ids(response, "events_before"), [self.sent[19].event.event_id, self.sent[18].event.event_id])
        self.assertEqual(chunk_ids(response, "events_after"), ids(self.sent[21:23]))
        # The state at the last event returned: the room's five state events.
        self.assertEqual(sorted(e["event_id"] for e in body["state"]), sorted(self.history[:5]))
        # The tokens continue the pagination on either side.
        before = await self.messages(self.room_id, ALICE, dir="b", limit=2, **{"from": body["start"]})
        self.assertEqual(chunk_ids(before), [self.sent[17].event.event_id, self.sent[16].event.event_id])
        after = await self.messages(self.room_id, ALICE, dir="f", limit=2, **{"from": body["end"]})
        self.assertEqual(chunk_ids(after), ids(self.sent[23:25]))

    async def test_context_limit_and_filter(self):
        target = self.sent[20]
        # The filter applies to the events around the event and to the state, not the event.
        response = await self.context(
            self.room_id, target.event.event_id, ALICE, limit=2,
            filter={"senders": [BOB], "lazy_load_members": True},
        )
        body = response.json
        self.assertEqual(body["event"]["sender"], ALICE)
        self.assertEqual(chunk_ids(response, "events_before"), [self.sent[19].event.event_id])
        self.assertEqual(chunk_ids(response, "events_after"), [self.sent[21].event.event_id])
        self.assertEqual([(e["type"], e["state_key"]) for e in body["state"]], [("m.room.member", BOB)])
        zero = await self.context(self.room_id, target.event.event_id, ALICE, limit=0)
        self.assertEqual((zero.json["events_before"], zero.json["events_after"]), ([], []))
        self.assertEqual(zero.json["event"]["event_id"], target.event.event_id)

    async def test_context_errors(self):
        target = self.sent[0].event.event_id
        self.assertError(await self.context(self.room_id, "$unknown", ALICE), 404, "M_NOT_FOUND")
        other_room = await self.make_room()
        self.assertError(await self.context(other_room, target, ALICE), 404, "M_NOT_FOUND")
        self.assertError(await self.context(self.room_id, target, CAROL), 403, "M_FORBIDDEN")
        self.assertError(await self.context(self.room_id, target, ALICE, limit="x"), 400, "M_INVALID_PARAM")

    # ----- /event ----------------------------------------------------------------------------

    async def test_get_single_event(self):
        target = self.sent[3]
        response = await self.get_event(self.room_id, target.event.event_id, BOB)
        self.assertEqual(response.code, 200, response)
        self.assertEqual(response.json["event_id"], target.event.event_id)
        self.assertEqual(response.json["content"]["body"], "m3")
        self.assertEqual(response.json["room_id"], self.room_id)

    async def test_get_event_is_404_when_unknown_elsewhere_or_not_allowed(self):
        target = self.sent[3].event.event_id
        self.assertError(await self.get_event(self.room_id, "$nope", ALICE), 404, "M_NOT_FOUND")
        other_room = await self.make_room()
        self.assertError(await self.get_event(other_room, target, ALICE), 404, "M_NOT_FOUND")
        self.assertError(await self.get_event(self.room_id, target, CAROL), 404, "M_NOT_FOUND")
        self.assertError(await self.get_event("!nowhere:test.heddle", target, ALICE), 404, "M_NOT_FOUND")

    # ----- matrix-nio --------------------------------------------------------------------------

    async def test_nio_clients_page_through_history(self):
        alice = await self.nio_client(ALICE)
        bob = await self.nio_client(BOB)
        seen: list[str] = []
        token = None
        while True:
            response = await nio(alice.room_messages(self.room_id, start=token, limit=25))
            self.assertIsInstance(response, RoomMessagesResponse)
            seen.extend(e.event_id for e in response.chunk)
            if response.end is None:
                break
            token = response.end
        self.assertEqual(seen, list(reversed(self.history)))
        forwards = await nio(
            bob.room_messages(self.room_id, direction=MessageDirection.front, limit=3)
        )
        self.assertIsInstance(forwards, RoomMessagesResponse)
        self.assertEqual([e.event_id for e in forwards.chunk], self.history[:3])
        filtered = await nio(
            bob.room_messages(self.room_id, limit=4, message_filter={"senders": [ALICE], "types": ["m.room.message"]})
        )
        self.assertEqual([e.event_id for e in filtered.chunk], [self.sent[i].event.event_id for i in (48, 46, 44, 42)])
        self.assertEqual([e.body for e in filtered.chunk], ["m48", "m46", "m44", "m42"])

        carol = AsyncClient(self.base_url, CAROL)
        carol.access_token = self.tokens[CAROL]
        self.addCleanup(lambda: nio(carol.close()))
        refused = await nio(carol.room_messages(self.room_id, limit=4))
        self.assertIsInstance(refused, RoomMessagesError)
        self.assertEqual(refused.status_code, "M_FORBIDDEN")

    async def test_sync_prev_batch_continues_into_messages(self):
        alice = await self.nio_client(ALICE)
        synced = await nio(alice.sync(timeout=0, sync_filter={"room": {"timeline": {"limit": 5}}}))
        timeline = synced.rooms.join[self.room_id].timeline
        self.assertEqual([e.event_id for e in timeline.events], self.history[-5:])
        page = await nio(alice.room_messages(self.room_id, start=timeline.prev_batch, limit=5))
        self.assertEqual([e.event_id for e in page.chunk], list(reversed(self.history[-10:-5])))
        # A `next_batch` sync token works as `from` too: backwards from it is the latest event.
        latest = await nio(alice.room_messages(self.room_id, start=synced.next_batch, limit=1))
        self.assertEqual([e.event_id for e in latest.chunk], [self.history[-1]])

    async def test_nio_context_and_single_event(self):
        alice = await self.nio_client(ALICE)
        bob = await self.nio_client(BOB)
        target = self.sent[10].event.event_id
        context = await nio(bob.room_context(self.room_id, target, limit=2))
        self.assertIsInstance(context, RoomContextResponse)
        self.assertEqual(context.event.event_id, target)
        self.assertEqual([e.event_id for e in context.events_before], [self.sent[9].event.event_id])
        self.assertEqual([e.event_id for e in context.events_after], [self.sent[11].event.event_id])
        event = await nio(alice.room_get_event(self.room_id, target))
        self.assertIsInstance(event, RoomGetEventResponse)
        self.assertEqual(event.event.body, "m10")
        missing = await nio(alice.room_get_event(self.room_id, "$missing"))
        self.assertIsInstance(missing, RoomGetEventError)
        self.assertEqual(missing.status_code, "M_NOT_FOUND")


def chunk_ids_of(body: dict) -> list[str]:
    return [e["event_id"] for e in body["chunk"]]
