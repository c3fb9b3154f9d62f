"""The streams layer: declarations in token order, the registry, and the bus writers
publish on after commit (homeserver/streams/)."""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.trial import unittest

from homeserver.errors import MatrixError
from homeserver.streams.bus import StreamBus, StreamUpdate
from homeserver.streams.declarations import (
    SYNC_STREAM_NAMES,
    SYNC_STREAMS,
    StreamDeclaration,
    StreamStores,
)
from homeserver.streams.registry import StreamRegistry
from homeserver.sync.tokens import StreamToken
from storage.stores.events import StoredEvent
from tests.harness import on_both_engines
from tests.room_helpers import RoomTestCase


class _MaxId:
    def __init__(self, position: int) -> None:
        self.position = position

    async def get_max_stream_id(self) -> int:
        return self.position

    async def get_max_stream_ordering(self) -> int:
        return self.position


class _Stores:
    """Stores whose highest positions are 10, 20, ... in declaration order."""

    def __init__(self) -> None:
        self.event_store = _MaxId(10)
        self.receipt_store = _MaxId(20)
        self.account_data_store = _MaxId(40)
        self.presence_store = _MaxId(50)
        self.device_inbox_store = _MaxId(60)
        self.device_list_store = _MaxId(70)


def _stores() -> StreamStores:
    stores: Any = _Stores()
    return stores  # the fakes have the one method each declaration calls


class RegistryTests(unittest.TestCase):
    async def test_streams_load_in_declaration_order_and_make_the_sync_token(self) -> None:
        registry = StreamRegistry.build(SYNC_STREAMS, _stores())
        self.assertEqual(registry.names, SYNC_STREAM_NAMES)
        self.assertEqual(registry.names[0], "events")  # pagination tokens rely on it
        await registry.load()
        token = registry.current_token()
        # Typing is held in memory: it starts from 0 whatever the database holds.
        self.assertEqual(str(token), "s10_20_0_40_50_60_70")
        self.assertEqual(registry.parse_token(str(token)), token)
        self.assertEqual((token.events, token.device_lists), (10, 70))
        self.assertEqual(token, StreamToken.parse("s10_20_0_40_50_60_70"))
        # Change indexes know changes from the loaded position on.
        self.assertTrue(registry["events"].rooms_index().knows_since(10))
        self.assertFalse(registry["events"].rooms_index().knows_since(9))

    def test_older_shorter_tokens_parse_with_zero_for_later_streams(self) -> None:
        registry = StreamRegistry.build(SYNC_STREAMS, _stores())
        token = registry.parse_token("s42_3")
        self.assertEqual(str(token), "s42_3_0_0_0_0_0")
        self.assertEqual(token.receipts, 3)
        self.assertEqual(token, StreamToken(events=42, receipts=3))

    def test_a_new_declared_stream_appears_in_tokens(self) -> None:
        async def nine(stores: StreamStores) -> int:
            return 9

        declarations = (*SYNC_STREAMS, StreamDeclaration("pushers", user_index="pushers",
                                                         load_max=nine))
        registry = StreamRegistry.build(declarations, _stores())
        self.assertEqual(registry.names[-1], "pushers")
        token = registry.token(events=5, pushers=7)
        self.assertEqual(str(token), "s5_0_0_0_0_0_0_7")
        self.assertEqual(registry.parse_token(str(token)).pushers, 7)
        # Tokens from before the stream existed still work: 0 for it.
        self.assertEqual(registry.parse_token("s5_0_0_0_0_0_0").pushers, 0)
        # A token of the sync streams has no such part.
        with self.assertRaises(MatrixError):
            StreamToken.parse(str(token))

    def test_garbage_tokens_are_invalid_param(self) -> None:
        registry = StreamRegistry.build(SYNC_STREAMS, _stores())
        for garbage in ("", "s", "s1__2", "s1_2_3_4_5_6_7_8", "t1-2", "s1\n", "s" + "9" * 20):
            with self.assertRaises(MatrixError, msg=repr(garbage)) as caught:
                registry.parse_token(garbage)
            self.assertEqual(caught.exception.errcode, "M_INVALID_PARAM")

    def test_a_stream_declared_twice_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            StreamRegistry.build((*SYNC_STREAMS, SYNC_STREAMS[1]), _stores())

    def test_tokens_are_immutable_values(self) -> None:
        token = StreamToken(events=1)
        with self.assertRaises(AttributeError):
            token.events = 2  # type: ignore[misc]
        self.assertEqual(token.copy_and_replace("typing", 4), StreamToken(events=1, typing=4))
        self.assertEqual(token, StreamToken(events=1))
        self.assertEqual(len({token, StreamToken(events=1)}), 1)
        with self.assertRaises(AttributeError):
            _ = token.nonsense
        with self.assertRaises(TypeError):
            StreamToken(nonsense=1)


class BusTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.registry = StreamRegistry.build(SYNC_STREAMS, _stores())
        self.bus = StreamBus(self.registry, self.clock)
        self.seen: list[tuple[str, str, int]] = []

    def record(self, who: str) -> Any:
        async def on_update(update: StreamUpdate) -> None:
            self.seen.append((who, update.stream, update.position))

        return on_update

    async def write(self, stream: str, rooms: tuple[str, ...] = ("!r:hs",)) -> int:
        async with self.registry[stream].id_generator().next() as position:
            pass
        await self.bus.publish(StreamUpdate.of(stream, position, rooms=rooms))
        return position

    async def test_subscribers_hear_each_update_in_subscription_order(self) -> None:
        self.bus.subscribe(self.record("first"))
        self.bus.subscribe(lambda update: self.seen.append(("plain", update.stream, 0)))
        self.bus.subscribe(self.record("receipts only"), streams=["receipts"])
        await self.write("events")
        await self.write("receipts")
        self.assertEqual(self.seen, [
            ("first", "events", 1), ("plain", "events", 0),
            ("first", "receipts", 1), ("plain", "receipts", 0), ("receipts only", "receipts", 1),
        ])

    async def test_an_update_is_held_until_earlier_positions_have_committed(self) -> None:
        self.bus.subscribe(self.record("s"))
        ids = self.registry["events"].id_generator()
        first, second = ids.next(), ids.next()
        one = await first.__aenter__()
        two = await second.__aenter__()
        await second.__aexit__(None, None, None)
        # Readers never see 2 while 1 is in flight...
        self.assertEqual(self.registry.current_token().events, 0)
        await self.bus.publish(StreamUpdate.of("events", two, rooms=["!b:hs"]))
        # ...nor do subscribers hear of it; but the change index has it already, so a
        # sync that reads position 2 later cannot miss the room.
        self.assertEqual(self.seen, [])
        self.assertEqual(self.registry["events"].rooms_index().changed_since(["!b:hs"], 0),
                         {"!b:hs"})
        await first.__aexit__(None, None, None)
        await self.bus.publish(StreamUpdate.of("events", one, rooms=["!a:hs"]))
        self.assertEqual(self.seen, [("s", "events", 1), ("s", "events", 2)])
        self.assertEqual((one, two), (1, 2))

    async def test_a_write_that_publishes_nothing_releases_what_waited_for_it(self) -> None:
        self.bus.subscribe(self.record("s"))
        ids = self.registry["receipts"].id_generator()
        abandoned, second = ids.next(), ids.next()
        await abandoned.__aenter__()
        position = await second.__aenter__()
        await second.__aexit__(None, None, None)
        await self.bus.publish(StreamUpdate.of("receipts", position, rooms=["!r:hs"]))
        self.assertEqual(self.seen, [])
        await abandoned.__aexit__(None, None, None)  # written, but announces nothing
        self.clock.advance(0)
        self.assertEqual(self.seen, [("s", "receipts", 2)])

    async def test_a_failing_subscriber_does_not_stop_the_others(self) -> None:
        def broken(update: StreamUpdate) -> None:
            raise RuntimeError("boom")

        self.bus.subscribe(broken)
        self.bus.subscribe(self.record("after"))
        with self.assertLogs("homeserver.streams.bus", "ERROR") as logged:
            await self.write("events")
        self.assertEqual(self.seen, [("after", "events", 1)])
        self.assertIn("boom", "\n".join(logged.output))

    async def test_unsubscribed_callbacks_hear_nothing_more(self) -> None:
        unsubscribe = self.bus.subscribe(self.record("s"))
        await self.write("events")
        unsubscribe()
        unsubscribe()  # twice is harmless
        await self.write("events")
        self.assertEqual(self.seen, [("s", "events", 1)])

    def test_subscribing_to_an_unknown_stream_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            self.bus.subscribe(self.record("s"), streams=["nonsense"])

    async def test_typing_positions_are_visible_at_once(self) -> None:
        self.bus.subscribe(self.record("s"))
        typing = self.registry["typing"].memory_ids()
        await self.bus.publish(StreamUpdate.of("typing", typing.advance(), rooms=["!r:hs"]))
        self.assertEqual(self.seen, [("s", "typing", 1)])
        self.assertEqual(self.registry.current_token().typing, 1)


@on_both_engines
class ServerBusTests(RoomTestCase):
    """What the running server's writers publish."""

    async def test_writers_publish_after_commit(self) -> None:
        updates: list[StreamUpdate] = []
        self.hs.stream_bus.subscribe(updates.append)
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        updates.clear()
        await self.send(alice, room_id, {"msgtype": "m.text", "body": "hi"})
        [event] = [u for u in updates if u.stream == "events"]
        self.assertEqual(event.rooms, {room_id})
        self.assertIsInstance(event.detail, StoredEvent)
        self.assertEqual(event.position, self.hs.streams.current_token().events)
        r = await self.request(
            "PUT",
            f"/_matrix/client/v3/user/{alice.user_id}/account_data/org.example",
            {"a": 1},
            token=alice.token,
        )
        self.assertEqual(r.code, 200, r)
        [data] = [u for u in updates if u.stream == "account_data"]
        self.assertEqual((data.users, data.wake), ({alice.user_id}, {alice.user_id}))
        self.assertEqual(data.position, self.hs.streams.current_token().account_data)
