"""Push actions kept as one row per event and counts in a per-(user, room, thread) summary
brought up to date in batches ("rotation"), on both engines: counts read with events both
counted and still queued, receipts landing between the two, threads, members who join and
leave, a rotation that fails, GET /notifications across both, and 0015's migration of
0013's rows.

Spec: client-server API "Receiving notifications", "Marking notifications as read",
"Threaded read receipts".
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor, task
from twisted.trial import unittest

import homeserver.push.counts as push_counts
from storage import migrations
from storage.migrations import SCHEMA_DIR, apply_migrations
from storage.stores import push_actions
from storage.stores.push_actions import (
    ActionGroup,
    PushActionBatch,
    PushActionStore,
    RoomCounts,
    decode_groups,
)
from tests.harness import on_both_engines
from tests.test_push_counts import THREADED_FILTER, PushCountsTestCase
from tests.test_storage import DatabaseCase


class RotationTestCase(PushCountsTestCase):
    async def setUp(self) -> None:
        await super().setUp()
        # Nothing rotates in the background: each test says when.
        self.patch(push_counts, "ROTATE_DELAY_S", 3600.0)

    async def rotate(self) -> None:
        store = self.hs.stores.push_action_store
        while await store.rotate():
            pass

    async def select(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return await self.hs.db.run_interaction(
            "test_select", lambda txn: txn.select_all(sql, args)
        )

    async def queued(self) -> int:
        return (await self.select("SELECT COUNT(*) FROM event_push_rotation_queue"))[0][0]

    async def unrotated_counts(self, user_id: str) -> RoomCounts:
        """The database's counts without rotating first: the summary plus queued events."""
        return await self.hs.db.run_interaction(
            "test_counts", push_actions._counts_txn, user_id, self.room_id
        )

    async def check(self, user: Any, expected: tuple[int, int]) -> None:
        """The same counts from the summary with the queue, from a cold /sync, and once
        everything queued is rotated."""
        self.assertEqual((await self.unrotated_counts(user.user_id)).totals(), expected)
        self.hs.notification_counts.forget(user.user_id, self.room_id)
        self.assertEqual(self.counts(await self.sync(user)), expected)
        await self.rotate()
        self.assertEqual(await self.queued(), 0)
        stored = await self.hs.stores.push_action_store.get_counts(
            [(user.user_id, self.room_id)]
        )
        self.assertEqual(stored[(user.user_id, self.room_id)].totals(), expected)


@on_both_engines
class RotationTests(RotationTestCase):
    async def test_actions_are_written_with_the_event_then_rotated(self) -> None:
        self.patch(push_counts, "ROTATE_DELAY_S", 30.0)
        await self.message(self.alice)
        # Written with the event: one row for its two recipients, queued for rotation.
        [(groups,)] = await self.select("SELECT groups FROM event_push_actions")
        self.assertEqual(
            [(n, h, sorted(users)) for _, n, h, users in decode_groups(groups)],
            [(True, False, sorted([self.bob.user_id, self.carol.user_id]))],
        )
        self.assertEqual(await self.queued(), 1)
        self.assertEqual(await self.select("SELECT * FROM event_push_summary"), [])
        rotator = self.hs.push_actions._rotator
        assert rotator is not None and rotator._pending is not None
        rotator._pending.reset(0)
        for _ in range(50):
            if await self.queued() == 0:
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(await self.queued(), 0)
        rows = await self.select(
            "SELECT user_id, thread_id, notif_count, highlight_count FROM event_push_summary"
            " ORDER BY user_id"
        )
        self.assertEqual(
            [tuple(r) for r in rows],
            [(self.bob.user_id, "main", 1, 0), (self.carol.user_id, "main", 1, 0)],
        )

    async def test_a_batch_writes_each_member_once(self) -> None:
        for i in range(5):
            await self.message(self.alice, f"m{i}")
        await self.rotate()
        rows = await self.select(
            "SELECT user_id, notif_count, stream_ordering FROM event_push_summary"
            " WHERE user_id = ?", self.bob.user_id,
        )
        [(last,)] = await self.select("SELECT MAX(stream_ordering) FROM event_push_actions")
        self.assertEqual([tuple(r) for r in rows], [(self.bob.user_id, 5, last)])

    async def test_receipt_between_the_summary_and_newer_events(self) -> None:
        first = await self.message(self.alice, "1")
        await self.message(self.alice, "2")
        await self.rotate()  # 1 and 2 are in the summary
        third = await self.message(self.alice, "3")
        await self.message(self.alice, "4")
        # Bob reads up to an event newer than the summary, carol to one it counted.
        await self.receipt(self.bob, third)
        await self.receipt(self.carol, first)
        self.assertEqual((await self.unrotated_counts(self.bob.user_id)).totals(), (1, 0))
        self.assertEqual((await self.unrotated_counts(self.carol.user_id)).totals(), (3, 0))
        await self.rotate()
        await self.check(self.bob, (1, 0))
        await self.check(self.carol, (3, 0))
        # A later batch counts on from the row brought up to date.
        await self.message(self.alice, "5")
        await self.check(self.bob, (2, 0))
        await self.check(self.carol, (4, 0))

    async def test_receipt_behind_the_summary_counts_again(self) -> None:
        first = await self.message(self.alice, "1")
        mention = {"m.mentions": {"user_ids": [self.bob.user_id]}}
        await self.message(self.alice, "2", **mention)
        third = await self.message(self.alice, "3", **mention)
        await self.rotate()
        await self.receipt(self.bob, first)
        # The row was counted after no receipt: counted again from the per-event rows.
        await self.check(self.bob, (2, 2))
        # The next rotation touching the row writes it counted after the receipt.
        await self.message(self.alice, "4")
        await self.rotate()
        [(read_position, notifs, highlights)] = await self.select(
            "SELECT read_position, notif_count, highlight_count FROM event_push_summary"
            " WHERE user_id = ?", self.bob.user_id,
        )
        stored = await self.hs.event_store.get_stored_event(first)
        assert stored is not None
        self.assertEqual((read_position, notifs, highlights), (stored.stream_ordering, 3, 2))
        await self.receipt(self.bob, third)
        await self.check(self.bob, (1, 0))

    async def test_thread_receipts_across_rotation(self) -> None:
        root = await self.message(self.alice, "root")
        thread = {"m.relates_to": {"rel_type": "m.thread", "event_id": root}}
        t1 = await self.message(self.alice, "t1", **thread)
        t2 = await self.message(self.alice, "t2", **thread)
        await self.rotate()
        await self.message(self.alice, "t3", **thread)
        after = await self.message(self.alice, "main again")
        await self.receipt(self.bob, t1, thread_id=root)
        counts = await self.unrotated_counts(self.bob.user_id)
        self.assertEqual((counts.totals("main"), counts.totals(root)), ((2, 0), (2, 0)))
        await self.rotate()
        await self.check(self.bob, (4, 0))
        response = await self.sync(self.bob, filter=THREADED_FILTER)
        room = response["rooms"]["join"][self.room_id]
        self.assertEqual(self.counts(response), (2, 0))
        self.assertEqual(room["unread_thread_notifications"],
                         {root: {"notification_count": 2, "highlight_count": 0}})
        # An unthreaded receipt reads every thread up to it.
        await self.receipt(self.bob, t2)
        await self.check(self.bob, (2, 0))
        counts = await self.unrotated_counts(self.bob.user_id)
        self.assertEqual((counts.totals("main"), counts.totals(root)), ((1, 0), (1, 0)))
        await self.receipt(self.bob, after, thread_id="main")
        await self.check(self.bob, (1, 0))

    async def test_members_who_join_and_leave(self) -> None:
        await self.message(self.alice, "before d")
        await self.rotate()
        dave = await self.user("dave")
        r = await self.join(dave, self.room_id)
        assert r.code == 200, r
        await self.message(self.alice, "with d")
        await self.check(dave, (1, 0))
        await self.rotate()
        r = await self.membership_action(dave, self.room_id, "leave", {})
        self.assertEqual(r.code, 200, r)
        await self.message(self.alice, "after d")
        rows = await self.select(
            "SELECT groups FROM event_push_actions ORDER BY stream_ordering DESC"
        )
        self.assertNotIn(dave.user_id, decode_groups(rows[0][0])[0][3])
        r = await self.join(dave, self.room_id)
        assert r.code == 200, r
        await self.message(self.alice, "d is back")
        # Joining is sending: it read what came before.
        await self.check(dave, (1, 0))
        await self.check(self.bob, (4, 0))

    async def test_a_failed_rotation_loses_nothing(self) -> None:
        await self.message(self.alice)
        await self.rotate()
        await self.message(self.alice, "hey", **{"m.mentions": {"user_ids": [self.bob.user_id]}})

        def broken(*args: Any) -> None:
            raise RuntimeError("crash in the middle of a rotation")

        self.patch(push_actions, "_rotate_room_txn", broken)
        with self.assertRaises(RuntimeError):
            await self.hs.stores.push_action_store.rotate()
        self.assertEqual(await self.queued(), 1)
        self.assertEqual((await self.unrotated_counts(self.bob.user_id)).totals(), (2, 1))
        self.patch(push_actions, "_rotate_room_txn", self.real_rotate_room)
        await self.check(self.bob, (2, 1))

    real_rotate_room = staticmethod(push_actions._rotate_room_txn)

    async def test_notifications_list_counted_and_queued_events(self) -> None:
        first = await self.message(self.alice, "1")
        mention = await self.message(
            self.alice, "2", **{"m.mentions": {"user_ids": [self.bob.user_id]}}
        )
        await self.rotate()
        third = await self.message(self.alice, "3")
        r = await self.notifications(self.bob)
        self.assertEqual([n["event"]["event_id"] for n in r.json["notifications"]],
                         [third, mention, first])
        r = await self.notifications(self.bob, only="highlight")
        self.assertEqual([n["event"]["event_id"] for n in r.json["notifications"]], [mention])
        r = await self.notifications(self.bob, limit=1, **{"from": r.json.get("next_token", "")})
        self.assertEqual([n["event"]["event_id"] for n in r.json["notifications"]], [third])
        # Leaving keeps what one was notified of.
        r = await self.membership_action(self.bob, self.room_id, "leave", {})
        self.assertEqual(r.code, 200, r)
        await self.message(self.alice, "4")
        r = await self.notifications(self.bob)
        self.assertEqual([n["event"]["event_id"] for n in r.json["notifications"]],
                         [third, mention, first])

    async def test_listener_hears_only_the_users_it_wants(self) -> None:
        heard: list[str] = []

        async def listener(user_id: str, *args: Any) -> None:
            heard.append(user_id)

        self.hs.push_actions.add_notification_listener(listener, lambda: {self.carol.user_id})
        await self.message(self.alice)
        for _ in range(20):
            if heard:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(heard, [self.carol.user_id])


OLD_ROWS = [
    # user_id, room_id, event_id, stream_ordering, thread_id, notify, highlight, actions, ts
    ("@bob:old", "!r:old", "$e1", 1, "main", True, False, '["notify"]', 10),
    ("@carol:old", "!r:old", "$e1", 1, "main", True, False, '["notify"]', 10),
    ("@bob:old", "!r:old", "$e2", 2, "main", True, True,
     '["notify", {"set_tweak": "highlight"}]', 20),
    ("@carol:old", "!r:old", "$e2", 2, "main", True, False, '["notify"]', 20),
    ("@carol:old", "!r:old", "$e3", 3, "$e1", True, False, '["notify"]', 30),
]
# 0013's staging form: one event not yet moved to its per-user table.
OLD_STAGED = (
    4, "$e4", "!r:old", "main", 40,
    '{"actions": ["[\\"notify\\"]"], "users": [["@bob:old", 0, 1, 0], ["@carol:old", 0, 1, 0]]}',
)


@on_both_engines
class MigrationFrom0013Tests(DatabaseCase):
    async def test_per_user_and_staged_rows_move_into_the_new_shape(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="heddle-schema-"))
        self.addCleanup(shutil.rmtree, directory, True)
        for path in SCHEMA_DIR.glob("*.sql"):
            if int(path.name[:4]) <= 14:
                shutil.copy(path, directory / path.name)
        real = migrations.migrations_for
        self.patch(migrations, "migrations_for", lambda engine: real(engine, directory))
        db = self.make_database(self.fresh_url())
        await apply_migrations(db)

        def fill(txn: Any) -> None:
            txn.execute_many(
                "INSERT INTO event_push_actions (user_id, room_id, event_id, stream_ordering,"
                " thread_id, notify, highlight, actions, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                OLD_ROWS,
            )
            txn.execute(
                "INSERT INTO event_push_actions_staging (stream_ordering, event_id, room_id,"
                " thread_id, ts, users) VALUES (?, ?, ?, ?, ?, ?)",
                OLD_STAGED,
            )

        await db.run_interaction("fill", fill)
        for path in SCHEMA_DIR.glob("0015_*.sql"):
            shutil.copy(path, directory / path.name)
        self.assertEqual(await apply_migrations(db), [15])

        store = PushActionStore(db)
        keys = [("@bob:old", "!r:old"), ("@carol:old", "!r:old")]
        # Every moved event waits in the queue; counted from there, then once rotated.
        for rotated in (False, True):
            if rotated:
                self.assertEqual(await store.rotate(), 4)
            counts = await store.get_counts(keys)
            self.assertEqual(counts[keys[0]].threads, {"main": [3, 1]})
            self.assertEqual(counts[keys[1]].threads, {"main": [3, 0], "$e1": [1, 0]})
        notes = await store.get_notifications("@bob:old", None, 10, False)
        self.assertEqual([(n.event_id, n.highlight, n.actions, n.ts) for n in notes], [
            ("$e4", False, ["notify"], 40),
            ("$e2", True, ["notify", {"set_tweak": "highlight"}], 20),
            ("$e1", False, ["notify"], 10),
        ])
        highlights = await store.get_notifications("@bob:old", None, 10, True)
        self.assertEqual([n.event_id for n in highlights], ["$e2"])
        self.assertEqual(
            [n.event_id for n in await store.get_notifications("@carol:old", 3, 10, False)],
            ["$e2", "$e1"],
        )


class _CountsStore:
    """Counts of nothing for every key asked."""

    async def get_counts(self, keys: Any) -> dict[tuple[str, str], RoomCounts]:
        return {key: RoomCounts() for key in keys}


class HeldCountsTests(unittest.TestCase):
    async def test_commits_move_only_counts_still_held_and_the_index_stays_bounded(
        self,
    ) -> None:
        self.patch(push_counts, "COUNTS_CACHE_SIZE", 3)
        counts = push_counts.NotificationCounts(_CountsStore())  # type: ignore[arg-type]
        for user_id in ("@a:t", "@b:t", "@c:t", "@d:t"):
            await counts.get(user_id, "!r:t")  # @d evicts @a
        everyone = ActionGroup('["notify"]', True, False, ("@a:t", "@b:t", "@c:t", "@d:t"))
        counts.actions_committed("!r:t", 5, PushActionBatch((everyone,), "main", None, 0))
        self.assertIsNone(counts.held("@a:t", "!r:t"))
        held_b = counts.held("@b:t", "!r:t")
        assert held_b is not None
        self.assertEqual(held_b.totals(), (1, 0))
        self.assertEqual(counts._held_in_room["!r:t"], {"@b:t", "@c:t", "@d:t"})
        # A room where nobody's counts are held has no entry; quiet rooms' evicted users
        # are dropped when the index is rebuilt.
        self.assertNotIn("!other:t", counts._held_in_room)
        for i in range(10):
            await counts.get("@x:t", f"!q{i}:t")
        self.assertLessEqual(sum(len(users) for users in counts._held_in_room.values()), 4)
