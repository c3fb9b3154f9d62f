"""Read receipts (spec: "Receipts"): public `m.read` and private `m.read.private`, threaded
or not.

Each (room, receipt type, user, thread) points at one event and only moves forwards. Every
change takes the next position in the receipts stream. Sync gets, per room, the `m.receipt`
content of what changed; private receipts are only ever shown to their owner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import check_event_id, check_room_id
from homeserver.linearizer import Linearizer
from homeserver.streams.bus import StreamBus, StreamUpdate
from homeserver.streams.registry import Stream
from storage.stores.events import EventStore, StoredEvent
from storage.stores.receipts import Receipt, ReceiptStore
from storage.stores.rooms import RoomStore

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]

READ = "m.read"
READ_PRIVATE = "m.read.private"
RECEIPT_TYPES = frozenset({READ, READ_PRIVATE})
MAIN_TIMELINE = "main"
THREAD_REL = "m.thread"
# Spec: "Implementations should not recurse infinitely ... a maximum of 3 hops is recommended".
MAX_RELATION_HOPS = 3


def _relation(event_content: Mapping[str, Any]) -> tuple[str, str] | None:
    """(rel_type, parent event ID) of an event's `m.relates_to`, if well formed."""
    relates_to = event_content.get("m.relates_to")
    if not isinstance(relates_to, dict):
        return None
    rel_type, parent = relates_to.get("rel_type"), relates_to.get("event_id")
    if not isinstance(rel_type, str) or not isinstance(parent, str):
        return None
    return rel_type, parent


def check_thread_id(thread_id: object) -> str:
    """A `thread_id` a client gave: "main" or a thread root's event ID, so a non-empty string
    (400 M_INVALID_PARAM otherwise; whether the event is in that thread is checked later)."""
    if not isinstance(thread_id, str) or not thread_id:
        raise MatrixError(400, Codes.INVALID_PARAM, "thread_id field must be a non-empty string")
    return thread_id


class ReceiptsHandler:
    def __init__(
        self,
        clock: Clock,
        store: ReceiptStore,
        events: EventStore,
        rooms: RoomStore,
        stream: Stream,
        bus: StreamBus,
    ) -> None:
        self._clock = clock
        self._store = store
        self._events = events
        self._rooms = rooms
        self._stream = stream
        self._ids = stream.id_generator()
        # Keyed by room_id.
        self._changes = stream.rooms_index()
        # Each receipt that moved is published with the `Receipt` as detail (federation sends
        # ours on; a private one is marked `private`).
        self._bus = bus
        # One write per receipt (room, type, user, thread) at a time: concurrent writes of
        # one row would only conflict in the database (and be retried until they fail). The
        # bus delivers in position order, so the last receipt federation sends is the one
        # stored.
        self._writers = Linearizer("receipts")
        # Called with (user_id, room_id) after a receipt of the user moved, before it is
        # published (notification counts are measured from it).
        self.read_listeners: list[Callable[[str, str], None]] = []

    @property
    def current_position(self) -> int:
        return self._stream.current

    async def check_target_event(self, user_id: str, room_id: str, event_id: str) -> StoredEvent:
        """The event a receipt or read marker points at, after checking the user may place one.

        403 M_FORBIDDEN unless the user is joined; 404 M_NOT_FOUND for an event that is
        unknown or belongs to another room.
        """
        check_room_id(room_id)
        check_event_id(event_id)
        if not await self._rooms.is_joined(room_id, user_id):
            raise MatrixError(403, Codes.FORBIDDEN, "You are not joined to this room")
        stored = await self._events.get_stored_event(event_id)
        if stored is None or stored.event.room_id != room_id or stored.outlier:
            raise MatrixError(404, Codes.NOT_FOUND, "Event not found in this room")
        return stored

    async def send_receipt(
        self,
        user_id: str,
        room_id: str,
        receipt_type: str,
        event_id: str,
        thread_id: str | None = None,
    ) -> bool:
        """Move the user's receipt to `event_id`; returns False if it was already there or
        further on (receipts do not move backwards).

        400 M_INVALID_PARAM for an unknown receipt type or a `thread_id` the event is not in.
        """
        if receipt_type not in RECEIPT_TYPES:
            raise MatrixError(
                400, Codes.INVALID_PARAM, f"Receipt type must be one of {sorted(RECEIPT_TYPES)}"
            )
        stored = await self.check_target_event(user_id, room_id, event_id)
        if thread_id is not None:
            check_thread_id(thread_id)
            if not await self._is_in_thread(stored, thread_id):
                raise MatrixError(
                    400,
                    Codes.INVALID_PARAM,
                    f"Event {event_id} is not related to thread {thread_id}",
                )
        async with self._writers.queue((room_id, receipt_type, user_id, thread_id)):
            async with self._ids.next() as stream_id:
                receipt = Receipt(
                    room_id,
                    receipt_type,
                    user_id,
                    thread_id,
                    event_id,
                    self._clock.time_msec(),
                    stream_id,
                )
                written = await self._store.upsert_receipt(receipt, stored.stream_ordering)
                if not written:
                    self._ids.unused(stream_id)
            if not written:
                return False
            for listener in self.read_listeners:
                listener(user_id, room_id)
            await self._bus.publish(
                StreamUpdate.of(
                    "receipts",
                    stream_id,
                    rooms=[room_id],
                    wake=[user_id],
                    private=receipt_type == READ_PRIVATE,
                    detail=receipt,
                )
            )
        logger.debug("%s receipt of %s in %s at %s", receipt_type, user_id, room_id, event_id)
        return True

    async def _is_in_thread(self, stored: StoredEvent, thread_id: str) -> bool:
        """Whether the event belongs to `thread_id` ("main" or a thread root's event ID).

        An event is in a thread if it has an `m.thread` relation, or relates (within
        MAX_RELATION_HOPS) to an event that does. A thread root, and events relating to it,
        belong to the main timeline, and also count for the root's own thread (so a client
        may mark a thread read from its root).
        """
        chain = [stored.event.event_id]
        thread = MAIN_TIMELINE
        content: Mapping[str, Any] = stored.event.content
        for _ in range(MAX_RELATION_HOPS):
            relation = _relation(content)
            if relation is None:
                break
            rel_type, parent_id = relation
            if rel_type == THREAD_REL:
                thread = parent_id
                break
            chain.append(parent_id)
            parent = await self._events.get_event(parent_id)
            if parent is None or parent.room_id != stored.event.room_id:
                break
            content = parent.content
        if thread_id == MAIN_TIMELINE:
            return thread == MAIN_TIMELINE
        return thread == thread_id or (thread == MAIN_TIMELINE and thread_id in chain)

    # ----- for sync --------------------------------------------------------------------------

    async def get_receipt_events(
        self,
        user_id: str,
        room_ids: Collection[str],
        since: int,
        up_to: int | None = None,
    ) -> dict[str, JsonDict]:
        """room_id -> the `m.receipt` event of receipts written after `since` (all for 0).

        Other users' private receipts are left out; rooms with nothing to show are absent.
        """
        # Since 0 too, when the index covers it: rooms nobody ever sent a receipt in cost
        # no read.
        changed = self._changes.changed_since(room_ids, since)
        if changed is not None:
            room_ids = [r for r in room_ids if r in changed]
        if not room_ids:
            return {}
        receipts = await self._store.get_receipts_for_rooms(room_ids, since, up_to)
        by_room: dict[str, JsonDict] = {}
        for receipt in receipts:
            if receipt.receipt_type == READ_PRIVATE and receipt.user_id != user_id:
                continue
            content = by_room.setdefault(receipt.room_id, {})
            data: JsonDict = {"ts": receipt.ts}
            if receipt.thread_id is not None:
                data["thread_id"] = receipt.thread_id
            users = content.setdefault(receipt.event_id, {}).setdefault(receipt.receipt_type, {})
            users[receipt.user_id] = data
        return {
            room_id: {"type": "m.receipt", "content": content}
            for room_id, content in by_room.items()
        }
