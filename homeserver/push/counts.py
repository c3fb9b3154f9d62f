"""Unread notification counts per (user, room), for /sync and pushers.

Counts are read from the database once (`PushActionStore.get_counts`) and then kept in
memory and moved by the commits that change them: each committed event adds its actions
to the counts held for its room's users (`actions_committed`, called by the persister after
the commit and before the event is published, so the sync that serves the event serves its
count too), and a receipt, or an event sent by the user, forgets the user's counts in that
room (`forget`), to be read again once. So one message fanned out to a thousand
listeners costs no read per listener for its counts.

A read that was in flight while such a change committed is answered but not cached, as in
the state store's current-state cache, so the cache never goes back in time.

In the database, counts are a per-(user, room, thread) summary kept up to date by rotation
(`SummaryRotator`, here; the SQL in `storage.stores.push_actions`): an event's actions wait
in a queue, written with the event, and are counted into the summary a batch of events at a
time, half a second after the first, so a big room's members have their row written once
per batch rather than once per event.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection
from typing import Any

from twisted.internet import defer

from homeserver.caches import LruCache
from storage.stores.push_actions import (
    MAIN_THREAD,
    ROTATE_BATCH,
    PushActionBatch,
    PushActionStore,
    RoomCounts,
)

logger = logging.getLogger(__name__)

# (user, room) pairs held: a thousand users in a hundred rooms each.
COUNTS_CACHE_SIZE = 100_000
# How long an event's push actions wait to be counted into the summary with those that
# follow (see `PushActionStore.rotate`).
ROTATE_DELAY_S = 0.5

JsonDict = dict[str, Any]


class NotificationCounts:
    def __init__(self, store: PushActionStore) -> None:
        self._store = store
        self._cache: LruCache[tuple[str, str], RoomCounts] = LruCache(
            "notification_counts", COUNTS_CACHE_SIZE
        )
        # Keys with reads in flight, and how often they changed meanwhile (entries exist
        # only while reads are in flight).
        self._loads: Counter[tuple[str, str]] = Counter()
        self._changes: Counter[tuple[str, str]] = Counter()
        # room_id -> users whose counts there may be held (entries the cache evicted are
        # dropped when next found missing): an event in a room where nobody's counts are
        # held (nobody syncing) moves nothing, without a lookup per member.
        self._held_in_room: dict[str, set[str]] = {}
        # Users added to that index since it was last rebuilt from the cache's keys: evicted
        # entries of quiet rooms are never found missing, so it is rebuilt now and then.
        self._held_added = 0

    async def get(self, user_id: str, room_id: str) -> RoomCounts:
        return (await self.get_many(user_id, [room_id]))[room_id]

    async def get_many(self, user_id: str, room_ids: Collection[str]) -> dict[str, RoomCounts]:
        """room_id -> the user's counts, reading the rooms not held in one transaction."""
        found, missing = self._cache.get_many((user_id, r) for r in room_ids)
        result = {room_id: counts for (_, room_id), counts in found.items()}
        if not missing:
            return result
        before = {key: self._changes[key] for key in missing}
        for key in missing:
            self._loads[key] += 1
        try:
            loaded = await self._store.get_counts(missing)
        finally:
            unchanged = {key for key in missing if self._changes[key] == before[key]}
            for key in missing:
                self._loads[key] -= 1
                if self._loads[key] <= 0:
                    del self._loads[key]
                    self._changes.pop(key, None)
        for key, counts in loaded.items():
            if key in unchanged and key not in self._cache:
                self._cache.set(key, counts)
                self._hold(key)
            result[key[1]] = counts
        return result

    def _hold(self, key: tuple[str, str]) -> None:
        self._held_added += 1
        if self._held_added > 2 * COUNTS_CACHE_SIZE:
            self._held_added = 0
            self._held_in_room = {}
            for user_id, room_id in self._cache.keys():
                self._held_in_room.setdefault(room_id, set()).add(user_id)
        self._held_in_room.setdefault(key[1], set()).add(key[0])

    def held(self, user_id: str, room_id: str) -> RoomCounts | None:
        """The user's counts in the room if held in memory (no read)."""
        return self._cache.peek((user_id, room_id))

    def _changed(self, key: tuple[str, str]) -> None:
        if key in self._loads:
            self._changes[key] += 1

    # ----- after commits -----------------------------------------------------------------

    def actions_committed(
        self, room_id: str, stream_ordering: int, batch: PushActionBatch
    ) -> None:
        """An event's actions were committed: add them to the counts held."""
        thread_id = batch.thread_id
        held = self._held_in_room.get(room_id)
        loads, peek = self._loads, self._cache.peek
        for group in batch.groups:
            if not held and not loads:
                break
            notify, highlight = group.notify, group.highlight
            for user_id in group.users:
                key = (user_id, room_id)
                if loads and key in loads:
                    self._changes[key] += 1
                if not held or user_id not in held:
                    continue
                cached = peek(key)
                if cached is None:
                    held.discard(user_id)
                else:
                    self._cache.replace(
                        key, cached.with_action(thread_id, stream_ordering, notify, highlight)
                    )
        if held is not None and not held:
            del self._held_in_room[room_id]
        if batch.local_sender is not None:
            # Sending reads the thread up to the new event, which is past every action held.
            key = (batch.local_sender, room_id)
            self._changed(key)
            cached = self._cache.peek(key)
            if cached is not None:
                self._cache.replace(key, cached.with_read(batch.thread_id, stream_ordering))

    def forget(self, user_id: str, room_id: str) -> None:
        """Forget what is held of the user's counts in the room: their read position moved
        (a receipt), or a commit that may have changed them failed."""
        key = (user_id, room_id)
        self._changed(key)
        self._cache.pop(key, None)
        held = self._held_in_room.get(room_id)
        if held is not None:
            held.discard(user_id)
            if not held:
                del self._held_in_room[room_id]

    # ----- for sync ----------------------------------------------------------------------

    @staticmethod
    def sync_fields(counts: RoomCounts, per_thread: bool) -> JsonDict:
        """`unread_notifications` and, when the filter asks, `unread_thread_notifications`
        (then the room's counts are the main timeline's alone)."""
        if not per_thread:
            notifications, highlights = counts.totals()
            return {
                "unread_notifications": {
                    "notification_count": notifications,
                    "highlight_count": highlights,
                }
            }
        notifications, highlights = counts.totals(MAIN_THREAD)
        threads = {
            thread_id: {"notification_count": c[0], "highlight_count": c[1]}
            for thread_id, c in counts.threads.items()
            if thread_id != MAIN_THREAD and (c[0] or c[1])
        }
        fields: JsonDict = {
            "unread_notifications": {
                "notification_count": notifications,
                "highlight_count": highlights,
            }
        }
        if threads:
            fields["unread_thread_notifications"] = threads
        return fields



class SummaryRotator:
    """Counts queued push actions (one row per event, written with the event) into the
    per-(user, room, thread) summary, a batch of events at a time, half a second after the
    first one waiting, so a busy room's members have their summary rows written once per
    batch. Readers of counts count what is still queued themselves, so this keeps the
    queue short (and readers quick), it does not make counts right."""

    def __init__(self, reactor: Any, store: PushActionStore) -> None:
        self._reactor = reactor
        self._store = store
        self._pending: Any = None  # an IDelayedCall
        self._running: defer.Deferred[None] | None = None
        self._stopped = False

    def queued(self) -> None:
        if self._stopped or self._pending is not None:
            return
        self._pending = self._reactor.callLater(ROTATE_DELAY_S, self._fire)

    def _fire(self) -> None:
        self._pending = None
        if self._running is None:
            self._running = defer.ensureDeferred(self._rotate())

    async def _rotate(self) -> None:
        try:
            # A short batch means nothing was left.
            while not self._stopped and await self._store.rotate() >= ROTATE_BATCH:
                pass
        except Exception:
            logger.exception("Rotating push actions failed (retried on the next event)")
        finally:
            self._running = None

    async def stop(self) -> None:
        self._stopped = True
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        if self._running is not None:
            await self._running
