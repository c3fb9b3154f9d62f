"""Pagination tokens in rooms holding backfilled events (negative stream orderings), outliers
and soft-failed events next to local ones: every token the server hands out (`/messages`
`start`/`end`, `/context` `start`/`end`, `/sync` `prev_batch`) is accepted back, and paging
either way yields every visible event exactly once, in (depth, stream) order.

Backfilled events, outliers and soft-failed events are stored through the persister's own
modes (as the federation event handler does), forking off events of a local room; the last
class gets them the real way, by backfill between two Heddles.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, threads
from twisted.internet.threads import blockingCallFromThread
from twisted.trial import unittest

from homeserver.errors import MatrixError
from homeserver.events.model import Event
from homeserver.sync.tokens import MAX_POSITION, RoomPosition, StreamToken
from storage.persister import EventContext
from storage.stores.events import StoredEvent
from tests.federation_helpers import API, FederationTestCase, FedUser, q
from tests.harness import ensure_deferred, on_both_engines
from tests.history_helpers import ALICE, BOB, HistoryTestCase, chunk_ids

# A walk that takes more pages than this is going round in circles.
MAX_PAGES = 200

positions = st.integers(min_value=-MAX_POSITION, max_value=MAX_POSITION)


class RoomPositionFormat(unittest.TestCase):
    """The token format alone: what is written parses back to the same position, and
    anything else is a 400 M_INVALID_PARAM."""

    @settings(max_examples=200, deadline=None, database=None)
    @given(topological=positions, stream=positions)
    def test_every_position_round_trips(self, topological: int, stream: int) -> None:
        position = RoomPosition(topological, stream)
        self.assertEqual(RoomPosition.parse(str(position)), position)

    def test_negative_stream_parts(self) -> None:
        self.assertEqual(str(RoomPosition(109, -27)), "t109--27")
        self.assertEqual(RoomPosition.parse("t109--27"), RoomPosition(109, -27))
        self.assertEqual(RoomPosition.parse("t-5--3"), RoomPosition(-5, -3))
        self.assertEqual(RoomPosition.parse("t-5-3"), RoomPosition(-5, 3))
        self.assertEqual(RoomPosition.parse("t0--1"), RoomPosition(0, -1))

    def test_forms_handed_out_before_stay_accepted(self) -> None:
        self.assertEqual(RoomPosition.parse("t12-34"), RoomPosition(12, 34))
        self.assertEqual(RoomPosition.parse("t0-0"), RoomPosition(0, 0))
        self.assertEqual(RoomPosition.parse("s42_1_0_3_0_0_0"), RoomPosition(None, 42))
        self.assertEqual(RoomPosition.parse("s42"), RoomPosition(None, 42))
        self.assertEqual(str(RoomPosition(None, 42)), str(StreamToken(events=42)))
        self.assertEqual(
            RoomPosition.parse(f"t{MAX_POSITION}--{MAX_POSITION}"),
            RoomPosition(MAX_POSITION, -MAX_POSITION),
        )

    def test_garbage_is_invalid_param(self) -> None:
        for garbage in (
            "", "t", "t1", "t1-", "t-", "t-1", "t--1", "t1--", "t1---2", "t1-2-3", "t1-2--3",
            "t 1-2", "t1 -2", "t1-2 ", "t1-2\n", "\nt1-2", "t+1-2", "t1-+2", "t1.5-2",
            "t0x1-2", "t1_2", "T1-2", "x1-2", "t\u0661-2", "t1-\u0662", "t1-2\x00",
            f"t{MAX_POSITION + 1}-0", f"t0--{MAX_POSITION + 1}", f"t0-{MAX_POSITION + 1}",
            "t" + "9" * 20 + "-1", "t1-" + "9" * 20, "s", "s-1", "s1_-2", "s1\n", "s\u0661",
        ):
            with self.assertRaises(MatrixError, msg=repr(garbage)) as caught:
                RoomPosition.parse(garbage)
            self.assertEqual((caught.exception.http_code, caught.exception.errcode),
                             (400, "M_INVALID_PARAM"), repr(garbage))

    @settings(max_examples=300, deadline=None, database=None)
    @given(token=st.one_of(
        st.text(max_size=40),
        st.from_regex(r"[ts][-0-9_]{0,45}", fullmatch=True),
    ))
    def test_any_string_parses_or_is_invalid_param(self, token: str) -> None:
        try:
            position = RoomPosition.parse(token)
        except MatrixError as e:
            self.assertEqual((e.http_code, e.errcode), (400, "M_INVALID_PARAM"))
            return
        # Whatever parses is a position an SQL BIGINT holds, and reads back the same.
        self.assertLessEqual(abs(position.stream), MAX_POSITION)
        if position.topological is not None:
            self.assertLessEqual(abs(position.topological), MAX_POSITION)
            self.assertEqual(RoomPosition.parse(str(position)), position)


class _Paging(HistoryTestCase):
    """Rooms with events in every persistence mode, and walks through them over HTTP."""

    async def setUp(self) -> None:
        await super().setUp()
        await self.register_users("alice", "bob")

    async def timeline_of(self, room_id: str) -> list[StoredEvent]:
        """The room's events as a purely local room serves them (before any fork is added)."""
        event_ids = await self.all_visible(room_id, ALICE)
        loaded = await self.hs.event_store.get_stored_events(event_ids)
        return [loaded[event_id] for event_id in event_ids]

    async def _fork(self, parent: StoredEvent, body: str, depth: int | None) -> tuple[Event, int]:
        """A message from alice citing `parent` as its only prev_event, at `parent`'s depth
        plus one unless told otherwise, and the state group after `parent`."""
        room_id = parent.event.room_id
        creator = self.hs.event_creator
        version = await self.hs.event_store.get_room_version(room_id)
        assert version is not None
        current = await self.hs.state_store.get_current_state_ids(room_id)
        pdu = await creator.build_pdu(
            room_id, version, ALICE, "m.room.message", {"msgtype": "m.text", "body": body},
            None, current,
        )
        pdu["prev_events"] = [parent.event.event_id]
        pdu["depth"] = parent.topological_ordering + 1 if depth is None else depth
        groups = await self.hs.event_store.get_state_groups_for_events([parent.event.event_id])
        before, after = groups[parent.event.event_id]
        group = after if after is not None else before
        assert group is not None
        return creator.finish_event(pdu, version), group

    async def add_backfilled(
        self, parent: StoredEvent, body: str, depth: int | None = None
    ) -> StoredEvent:
        event, group = await self._fork(parent, body, depth)
        return await self.hs.persister.persist(
            event,
            EventContext(state_group_before=group, backfilled=True, updates_current_state=False),
        )

    async def add_outlier(self, parent: StoredEvent, body: str) -> str:
        event, _ = await self._fork(parent, body, None)
        await self.hs.persister.persist_outliers([event])
        return event.event_id

    async def add_soft_failed(self, parent: StoredEvent, body: str) -> str:
        event, group = await self._fork(parent, body, None)
        await self.hs.persister.persist(
            event,
            EventContext(state_group_before=group, soft_failed=True, updates_current_state=False),
        )
        return event.event_id

    async def walk(
        self, room_id: str, direction: str, limit: int, from_token: str | None = None,
        to_token: str | None = None,
    ) -> tuple[list[str], list[dict[str, Any]]]:
        """Page until the server hands out no `end`; every `end` is the next `from`, so each
        must be accepted. Returns the event IDs in the order served, and the pages."""
        served: list[str] = []
        pages: list[dict[str, Any]] = []
        token = from_token
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {"dir": direction, "limit": limit}
            if token is not None:
                params["from"] = token
            if to_token is not None:
                params["to"] = to_token
            response = await self.messages(room_id, ALICE, **params)
            self.assertEqual(response.code, 200, f"{params}: {response!r}")
            body = response.json
            if token is not None:
                self.assertEqual(body["start"], token)
            RoomPosition.parse(body["start"])
            served.extend(chunk_ids(response))
            pages.append(body)
            if "end" not in body:
                return served, pages
            token = body["end"]
        raise AssertionError(f"no end to paging {direction} with limit {limit}")

    async def check_walks(self, room_id: str, expected: list[str], limit: int) -> None:
        """Both directions yield `expected` exactly, and every token joins up: forwards from
        a backwards page's `end` serves that page again, oldest first."""
        backwards, pages = await self.walk(room_id, "b", limit)
        self.assertEqual(backwards, list(reversed(expected)), f"dir=b limit={limit}")
        for page in pages:
            if "end" not in page:
                continue
            again = await self.messages(
                room_id, ALICE, dir="f", limit=len(page["chunk"]), **{"from": page["end"]}
            )
            self.assertEqual(again.code, 200, again)
            self.assertEqual(
                chunk_ids(again), [e["event_id"] for e in reversed(page["chunk"])],
                f"forwards from {page['end']}",
            )
        forwards, pages = await self.walk(room_id, "f", limit)
        self.assertEqual(forwards, expected, f"dir=f limit={limit}")
        # The first forwards page's `start` (not a client's token) is accepted too.
        restart = await self.messages(room_id, ALICE, dir="f", limit=1, **{"from": pages[0]["start"]})
        self.assertEqual(chunk_ids(restart), expected[:1])


def _history_order(events: list[StoredEvent]) -> list[str]:
    ordered = sorted(events, key=lambda s: (s.topological_ordering, s.stream_ordering))
    return [s.event.event_id for s in ordered]


@on_both_engines
class PagingThroughBackfilledHistory(_Paging):
    async def setUp(self) -> None:
        await super().setUp()
        self.room_id = await self.make_room()
        await self.membership(self.room_id, BOB, "join")
        # create (depth 1), alice's join, power levels, join rules, bob's join (5), then local
        # messages at depths 6-10.
        base = await self.timeline_of(self.room_id)
        local = [await self.say(self.room_id, BOB, f"local {i}") for i in range(5)]
        # Backfilled history forking off the join rules (depth 4): a chain at depths 5-11,
        # level with the local events and one beyond them, all at negative stream positions.
        backfilled: list[StoredEvent] = []
        parent = base[3]
        for i in range(7):
            parent = await self.add_backfilled(parent, f"backfilled {i}")
            backfilled.append(parent)
        # A second backfilled branch off a local message.
        backfilled.append(await self.add_backfilled(local[1], "backfilled off local"))
        # Events with no place in the timeline, among the same depths.
        self.hidden = [
            await self.add_outlier(base[4], "outlier at 6"),
            await self.add_outlier(backfilled[3], "outlier at 9"),
            await self.add_outlier(local[4], "outlier at 11"),
            await self.add_soft_failed(local[2], "soft-failed at 9"),
        ]
        later = [await self.say(self.room_id, ALICE, f"later {i}") for i in range(3)]
        self.backfilled = backfilled
        self.events = [*base, *local, *backfilled, *later]
        self.expected = _history_order(self.events)
        self.assertTrue(all(s.stream_ordering < 0 for s in backfilled))
        self.assertEqual(len(self.expected), 5 + 5 + 8 + 3)

    async def test_paging_both_ways_with_any_limit(self):
        for limit in (1, 2, 3, 5, 7, 100):
            await self.check_walks(self.room_id, self.expected, limit)

    async def test_a_page_ending_on_a_backfilled_event_continues(self):
        # The reported case: backwards from the top, a page ending on a backfilled event
        # hands out a token with a negative stream part, which must be accepted back.
        position = self.expected.index(self.backfilled[4].event.event_id)
        limit = len(self.expected) - position
        first = await self.messages(self.room_id, ALICE, dir="b", limit=limit)
        end = first.json["end"]
        self.assertEqual(end, f"t{self.backfilled[4].topological_ordering}--"
                              f"{-self.backfilled[4].stream_ordering + 1}")
        rest = await self.messages(self.room_id, ALICE, dir="b", limit=100, **{"from": end})
        self.assertEqual(rest.code, 200, rest)
        self.assertEqual(chunk_ids(rest), list(reversed(self.expected[:position])))

    async def test_to_token_with_a_negative_stream_part_bounds_the_walk(self):
        middle = self.expected.index(self.backfilled[5].event.event_id)
        first = await self.messages(self.room_id, ALICE, dir="b", limit=len(self.expected) - middle)
        bound = first.json["end"]
        self.assertLess(RoomPosition.parse(bound).stream, 0)
        served, _ = await self.walk(self.room_id, "f", 3, to_token=bound)
        self.assertEqual(served, self.expected[:middle])
        served, _ = await self.walk(self.room_id, "b", 2, to_token=bound)
        self.assertEqual(served, list(reversed(self.expected[middle:])))

    async def test_context_around_a_backfilled_event(self):
        target = self.backfilled[2]
        at = self.expected.index(target.event.event_id)
        response = await self.context(self.room_id, target.event.event_id, ALICE, limit=4)
        self.assertEqual(response.code, 200, response)
        body = response.json
        self.assertEqual(chunk_ids(response, "events_before"),
                         list(reversed(self.expected[at - 2 : at])))
        self.assertEqual(chunk_ids(response, "events_after"), self.expected[at + 1 : at + 3])
        before, _ = await self.walk(self.room_id, "b", 3, from_token=body["start"])
        self.assertEqual(before, list(reversed(self.expected[: at - 2])))
        after, _ = await self.walk(self.room_id, "f", 3, from_token=body["end"])
        self.assertEqual(after, self.expected[at + 3 :])

    async def test_members_at_a_backfilled_position(self):
        target = self.backfilled[2]
        at = str(RoomPosition(target.topological_ordering, target.stream_ordering - 1))
        response = await self.request(
            "GET", f"{API}/rooms/{q(self.room_id)}/members?at={q(at)}", token=self.tokens[ALICE]
        )
        self.assertEqual(response.code, 200, response)
        self.assertEqual(
            sorted(e["state_key"] for e in response.json["chunk"]), sorted([ALICE, BOB])
        )

    async def test_sync_prev_batch_leads_through_backfilled_history(self):
        response = await self.request(
            "GET",
            f"{API}/sync?filter=" + q(json.dumps({"room": {"timeline": {"limit": 2}}})),
            token=self.tokens[ALICE],
        )
        self.assertEqual(response.code, 200, response)
        timeline = response.json["rooms"]["join"][self.room_id]["timeline"]
        self.assertEqual([e["event_id"] for e in timeline["events"]], self.expected[-2:])
        served, _ = await self.walk(self.room_id, "b", 2, from_token=timeline["prev_batch"])
        self.assertEqual(served, list(reversed(self.expected[:-2])))

    async def test_outliers_and_soft_failed_events_stay_out(self):
        served, pages = await self.walk(self.room_id, "b", 1)
        self.assertFalse(set(self.hidden) & set(served))
        for event_id in self.hidden:
            self.assertError(await self.context(self.room_id, event_id, ALICE), 404, "M_NOT_FOUND")

    async def test_a_backfilled_event_at_depth_zero_is_reached_from_the_start(self):
        # Federation accepts depths from 0, so another server's room may start there.
        create = await self.hs.event_store.get_stored_event(self.expected[0])
        assert create is not None
        earliest = await self.add_backfilled(create, "at depth 0", depth=0)
        expected = _history_order([*self.events, earliest])
        self.assertEqual(expected[0], earliest.event.event_id)
        await self.check_walks(self.room_id, expected, 4)


KINDS = ("local", "backfilled", "outlier", "soft_failed")
steps = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(min_value=0, max_value=1000)),
    min_size=1,
    max_size=10,
).filter(lambda chosen: any(kind == "backfilled" for kind, _ in chosen))


@on_both_engines
class PagingProperty(_Paging):
    def test_paging_yields_every_visible_event_once_in_order(self) -> defer.Deferred[None]:
        """Random rooms of local, backfilled, outlier and soft-failed events (each fork off a
        random timeline event), paged both ways with a random limit. Hypothesis runs on a
        worker thread; each example's HTTP calls run on the reactor."""

        @settings(
            max_examples=6, deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(chosen=steps, limit=st.integers(min_value=1, max_value=4))
        def paging(chosen: list[tuple[str, int]], limit: int) -> None:
            blockingCallFromThread(
                reactor, lambda: defer.ensureDeferred(self._one_room(chosen, limit))
            )

        return threads.deferToThread(paging)

    async def _one_room(self, chosen: list[tuple[str, int]], limit: int) -> None:
        room_id = await self.make_room()
        timeline = await self.timeline_of(room_id)
        for n, (kind, anchor) in enumerate(chosen):
            parent = timeline[anchor % len(timeline)]
            if kind == "local":
                timeline.append(await self.say(room_id, ALICE, f"local {n}"))
            elif kind == "backfilled":
                timeline.append(await self.add_backfilled(parent, f"backfilled {n}"))
            elif kind == "outlier":
                await self.add_outlier(parent, f"outlier {n}")
            else:
                await self.add_soft_failed(parent, f"soft-failed {n}")
        await self.check_walks(room_id, _history_order(timeline), limit)


@on_both_engines
class PagingAfterRealBackfill(FederationTestCase):
    """B joins a room with history on A; paging back on B backfills from A, page by page."""

    async def page(
        self, user: FedUser, room_id: str, direction: str, limit: int
    ) -> tuple[list[str], list[RoomPosition]]:
        """Every event served, in order, and every `end` handed out (each one used)."""
        served: list[str] = []
        ends: list[RoomPosition] = []
        token: str | None = None
        for _ in range(MAX_PAGES):
            path = f"{API}/rooms/{q(room_id)}/messages?dir={direction}&limit={limit}"
            if token is not None:
                path += f"&from={q(token)}"
            response = await self.user_call(user, "GET", path)
            self.assertEqual(response.code, 200, f"from={token}: {response!r}")
            served.extend(e["event_id"] for e in response.json["chunk"])
            if "end" not in response.json:
                return served, ends
            token = response.json["end"]
            ends.append(RoomPosition.parse(token))
        raise AssertionError("paging did not end")

    @ensure_deferred
    async def test_paging_back_through_backfilled_history(self):
        a, b, alice, bob = await self.two_peers()
        room_id = await self.history_then_join(alice, bob, 12)
        await self.wait_for(
            lambda: self._is(self.membership(alice, room_id, bob.user_id), "join"),
            what="bob's join on A",
        )
        on_a, _ = await self.page(alice, room_id, "b", 1000)
        # B holds the join and the room's state; scrolling back a few at a time backfills
        # the rest, and the pages end on backfilled events (negative stream positions).
        on_b, ends = await self.page(bob, room_id, "b", 4)
        self.assertEqual(on_b, on_a)
        self.assertTrue(any(end.stream < 0 for end in ends), ends)
        forwards, ends = await self.page(bob, room_id, "f", 3)
        self.assertEqual(forwards, list(reversed(on_a)))
        self.assertTrue(any(end.stream < 0 for end in ends), ends)
