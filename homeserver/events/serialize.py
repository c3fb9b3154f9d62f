"""Events as clients see them (client-server API "ClientEvent")."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from homeserver.caches import LruCache
from homeserver.clock import Clock
from homeserver.events.redaction import prune_event_dict
from homeserver.events.relations import BUNDLED_REL_TYPES, REFERENCE, REPLACE, THREAD, latest_edit
from storage.stores.events import EVENT_CACHE_SIZE, EventStore, StoredEvent
from storage.stores.relations import RelationRow, RelationStore

# In the internal metadata of an event pruned for one viewer because its sender was erased
# (homeserver/rooms/visibility.py).
ERASED_VIEW = "erased_view"

# (user_id, events) -> those of the events the user may see, in order.
VisibleTo = Callable[[str, Sequence[StoredEvent]], Awaitable[list[StoredEvent]]]
# (user_id, relation rows) -> those whose events the user may see, in order.
RowsVisibleTo = Callable[[str, Sequence[RelationRow]], Awaitable[list[RelationRow]]]
# user_id -> the users they ignore (`homeserver.account_data.IgnoredUsers.of`).
IgnoredBy = Callable[[str], Awaitable[frozenset[str]]]


@dataclass
class _Aggregation:
    """What is bundled under one event's `unsigned.m.relations`, before serializing."""

    edit: StoredEvent | None = None
    references: list[str] = field(default_factory=list)
    thread_latest: StoredEvent | None = None
    thread_count: int = 0
    thread_participants: set[str] = field(default_factory=set)


class EventSerializer:
    def __init__(
        self,
        clock: Clock,
        events: EventStore,
        relations: RelationStore | None = None,
        visible_to: VisibleTo | None = None,
        ignored_by: IgnoredBy | None = None,
        rows_visible_to: RowsVisibleTo | None = None,
    ) -> None:
        self._clock = clock
        self._events = events
        self._relations = relations
        # History visibility (`HistoryVisibility.filter_events_for_user`), for the children
        # bundled with an event.
        self._visible_to = visible_to
        # The same for a thread's events, which are counted: without reading them all
        # (`HistoryVisibility.filter_relations_for_user`).
        self._rows_visible_to = rows_visible_to
        # Children sent by users the viewer ignores are left out of its aggregations.
        self._ignored_by = ignored_by
        # (event_id, include_room_id, pruned for an erased sender) -> ((its redaction, whether the state it replaced is
        # held, and redacted), its serialized form but for `age` and `transaction_id`): see
        # `_serialize_one`. Shared, never changed: each response gets its own copy.
        self._serialized: LruCache[
            tuple[str, bool, bool], tuple[tuple[str | None, bool, bool], dict[str, Any]]
        ] = LruCache("serialized_events", EVENT_CACHE_SIZE)

    async def serialize(
        self,
        stored_events: Iterable[StoredEvent],
        requester_device: tuple[str, str] | None = None,
        include_room_id: bool = True,
        bundle_aggregations: bool = False,
        viewer: str | None = None,
    ) -> list[dict[str, Any]]:
        """Serialize in order, applying redactions and adding `unsigned` data.

        `requester_device` (user_id, device_id) gets `transaction_id` on its own events.
        With `bundle_aggregations`, each event carries its children's aggregations in
        `unsigned.m.relations` (spec: "Aggregations of child events"), as seen by `viewer`
        (default: the requester; None: nobody, so `current_user_participated` is false).
        """
        stored_list = list(stored_events)
        ids = [s.event.event_id for s in stored_list]
        replaced_ids = [
            s.internal_metadata["replaces_state"]
            for s in stored_list
            if "replaces_state" in s.internal_metadata
        ]
        redactions = await self._events.get_redactions(ids + replaced_ids)
        related = await self._events.get_stored_events(list(redactions.values()) + replaced_ids)
        now = self._clock.time_msec()
        serialized = [
            self._serialize_one(s, redactions, related, requester_device, include_room_id, now)
            for s in stored_list
        ]
        if bundle_aggregations and self._relations is not None:
            if viewer is None and requester_device is not None:
                viewer = requester_device[0]
            await self._bundle(
                stored_list, serialized, redactions, viewer, requester_device, include_room_id,
                with_threads=True,
            )
        return serialized

    async def _serialize_bundled(
        self,
        stored_list: list[StoredEvent],
        viewer: str | None,
        requester_device: tuple[str, str] | None,
        include_room_id: bool,
    ) -> list[dict[str, Any]]:
        """A thread's latest event, with its own edit but no thread summary: other servers
        can send threads of thread events, a chain of any length, not to be followed."""
        serialized = await self.serialize(stored_list, requester_device, include_room_id)
        redactions = await self._events.get_redactions([s.event.event_id for s in stored_list])
        await self._bundle(
            stored_list, serialized, redactions, viewer, requester_device, include_room_id,
            with_threads=False,
        )
        return serialized

    async def _bundle(
        self,
        stored_list: list[StoredEvent],
        serialized: list[dict[str, Any]],
        redactions: dict[str, str],
        viewer: str | None,
        requester_device: tuple[str, str] | None,
        include_room_id: bool,
        with_threads: bool,
    ) -> None:
        """Add `unsigned.m.relations` to the serialized events that have children."""
        aggregations = await self._aggregations(stored_list, redactions, viewer, with_threads)
        if not aggregations:
            return
        edits = [a.edit for a in aggregations.values() if a.edit is not None]
        latest = [a.thread_latest for a in aggregations.values() if a.thread_latest is not None]
        edits_json = dict(zip(
            (e.event.event_id for e in edits),
            await self.serialize(edits, requester_device, include_room_id),
            strict=True,
        ))
        latest_json = dict(zip(
            (e.event.event_id for e in latest),
            await self._serialize_bundled(latest, viewer, requester_device, include_room_id)
            if latest else [],
            strict=True,
        ))
        for stored, body in zip(stored_list, serialized, strict=True):
            aggregation = aggregations.get(stored.event.event_id)
            if aggregation is None:
                continue
            bundle: dict[str, Any] = {}
            if aggregation.edit is not None:
                bundle[REPLACE] = edits_json[aggregation.edit.event.event_id]
            if aggregation.references:
                bundle[REFERENCE] = {"chunk": [{"event_id": e} for e in aggregation.references]}
            if aggregation.thread_latest is not None:
                bundle[THREAD] = {
                    "latest_event": latest_json[aggregation.thread_latest.event.event_id],
                    "count": aggregation.thread_count,
                    "current_user_participated": viewer is not None
                    and viewer in aggregation.thread_participants,
                }
            if bundle:
                body["unsigned"]["m.relations"] = bundle

    async def _aggregations(
        self,
        stored_list: list[StoredEvent],
        redactions: dict[str, str],
        viewer: str | None,
        with_threads: bool,
    ) -> dict[str, _Aggregation]:
        """event_id -> its children's aggregations, for the events that have any.

        With a viewer, only children it may see count, and none sent by a user it ignores
        (spec: "Aggregations of child events": children in history the user cannot see
        are lacking from aggregations, and servers "must ... not consider child events from
        ignored users"; "Threading": `count` leaves out ignored users and `latest_event` is
        the latest sent by an un-ignored user). A thread's `count` is therefore the number
        of its events the viewer may see, where Synapse counts every event it holds: the
        spec says the aggregation lacks what the user cannot see, and a count of hidden
        replies tells a user who joined later how much was said before.
        Without a viewer (a shared sync section, which a viewer takes only when it would
        aggregate the same children: see `bundled_children`), all."""
        assert self._relations is not None
        by_room: dict[str, list[str]] = {}
        for stored in stored_list:
            if not stored.outlier:
                by_room.setdefault(stored.event.room_id, []).append(stored.event.event_id)
        rel_types = BUNDLED_REL_TYPES if with_threads else (REPLACE, REFERENCE)
        # One read for every room's events (a sync serializes many rooms at once).
        rows = await self._relations.get_children_in_rooms(by_room, rel_types)
        if not rows:
            return {}
        parents = {s.event.event_id: s for s in stored_list}
        # Participation is about the viewer's own events: every thread event counts.
        participants: dict[str, set[str]] = {}
        for row in rows:
            if row.rel_type == THREAD:
                participants.setdefault(row.parent_id, {parents[row.parent_id].event.sender})
                participants[row.parent_id].add(row.sender)
        if viewer is not None and self._ignored_by is not None:
            ignored = await self._ignored_by(viewer)
            if ignored:
                rows = [r for r in rows if r.sender not in ignored]
        # The original's edits stop applying once it is redacted (spec: "Redactions of
        # the original event").
        edit_rows = [r for r in rows if r.rel_type == REPLACE and r.parent_id not in redactions]
        reference_rows = [r for r in rows if r.rel_type == REFERENCE]
        thread_rows = [r for r in rows if r.rel_type == THREAD]
        if viewer is not None and self._rows_visible_to is not None and thread_rows:
            thread_rows = await self._rows_visible_to(viewer, thread_rows)
        # Of a thread's events only the latest shown is served; the others are counted.
        latest_rows = list({r.parent_id: r for r in thread_rows}.values())
        loaded = await self._events.get_stored_events(
            r.event_id for r in (*edit_rows, *reference_rows)
        )
        if viewer is not None and self._visible_to is not None:
            visible = await self._visible_to(viewer, list(loaded.values()))
            loaded = {s.event.event_id: s for s in visible}
        loaded_latest = await self._events.get_stored_events(r.event_id for r in latest_rows)

        aggregations: dict[str, _Aggregation] = {}
        edits_by_parent: dict[str, list[StoredEvent]] = {}
        for row in edit_rows:
            if row.event_id in loaded:
                edits_by_parent.setdefault(row.parent_id, []).append(loaded[row.event_id])
        for parent_id, candidates in edits_by_parent.items():
            edit = latest_edit(parents[parent_id].event, [c.event for c in candidates])
            if edit is not None:
                aggregations.setdefault(parent_id, _Aggregation()).edit = next(
                    c for c in candidates if c.event.event_id == edit.event_id
                )
        for row in reference_rows:
            if row.event_id in loaded:
                aggregations.setdefault(row.parent_id, _Aggregation()).references.append(
                    row.event_id
                )
        # Rows are in history order: a thread's latest event is the last one shown.
        counts = Counter(r.parent_id for r in thread_rows)
        for row in latest_rows:
            if row.event_id in loaded_latest:
                aggregation = aggregations.setdefault(row.parent_id, _Aggregation())
                aggregation.thread_latest = loaded_latest[row.event_id]
                aggregation.thread_count = counts[row.parent_id]
                aggregation.thread_participants = participants[row.parent_id]
        return aggregations

    async def bundled_children(
        self, stored_list: list[StoredEvent]
    ) -> tuple[set[str], list[StoredEvent]]:
        """What the aggregations of these events are made of when computed for nobody:
        (everyone for whom `current_user_participated` is true on one of them, the children
        counted or bundled, with the edits of each thread's latest event). A viewer for
        whom all those children are visible, and none sent by a user it ignores, computes
        the same aggregations for itself; a shared sync section relies on that."""
        if self._relations is None:
            return set(), []
        by_room: dict[str, list[str]] = {}
        for stored in stored_list:
            if not stored.outlier:
                by_room.setdefault(stored.event.room_id, []).append(stored.event.event_id)
        parents = {s.event.event_id: s for s in stored_list}
        participants: set[str] = set()
        rows: list[RelationRow] = []
        for room_id, parent_ids in by_room.items():
            children = await self._relations.get_children_of_many(
                room_id, parent_ids, BUNDLED_REL_TYPES
            )
            latest = {r.parent_id: r.event_id for r in children if r.rel_type == THREAD}
            for row in children:
                if row.rel_type == THREAD:
                    participants.add(row.sender)
                    participants.add(parents[row.parent_id].event.sender)
            rows += children
            rows += await self._relations.get_children_of_many(
                room_id, list(latest.values()), (REPLACE, REFERENCE)
            )
        loaded = await self._events.get_stored_events(r.event_id for r in rows)
        return participants, [loaded[r.event_id] for r in rows if r.event_id in loaded]

    async def federation_forms(self, stored_events: Iterable[StoredEvent]) -> list[dict[str, Any]]:
        """The PDUs as signed (for `event_format: federation`), pruned where redacted."""
        stored_list = list(stored_events)
        redactions = await self._events.get_redactions([s.event.event_id for s in stored_list])
        redaction_events = await self._events.get_events(redactions.values())
        forms = []
        for stored in stored_list:
            event = stored.event
            redaction = redaction_events.get(redactions.get(event.event_id, ""))
            if redaction is not None and redaction.room_id == event.room_id:
                forms.append(prune_event_dict(event.pdu, event.room_version))
            else:
                forms.append(dict(event.pdu))
        return forms

    def _serialize_one(
        self,
        stored: StoredEvent,
        redactions: dict[str, str],
        related: dict[str, StoredEvent],
        requester_device: tuple[str, str] | None,
        include_room_id: bool,
        now: int,
    ) -> dict[str, Any]:
        """The event as a client sees it. What does not depend on the moment or the
        requester is kept per event (`_serialized`) and reused while what it was made from
        is unchanged: whether the event, and the state event it replaced, are redacted (and
        whether that one is held)."""
        event = stored.event
        metadata = stored.internal_metadata
        replaced_id = metadata.get("replaces_state", "")
        # An erased sender's event pruned for this viewer is a form of its own.
        key = (event.event_id, include_room_id, ERASED_VIEW in metadata)
        made_from = (
            redactions.get(event.event_id), replaced_id in related, replaced_id in redactions
        )
        held = self._serialized.peek(key)
        if held is None or held[0] != made_from:
            if made_from[0] is not None:
                # Redacted: `redacted_because` carries its own age, so nothing is kept.
                return self._serialize_fresh(
                    stored, redactions, related, requester_device, include_room_id, now
                )
            fresh = self._serialize_fresh(stored, redactions, related, None, include_room_id, 0)
            held = (made_from, fresh)
            self._serialized.set(key, held)
        base: dict[str, Any] = held[1]
        unsigned: dict[str, Any] = {"age": max(0, now - event.origin_server_ts)}
        if _sent_by(stored, requester_device):
            unsigned["transaction_id"] = metadata["txn_id"]
        base_unsigned: dict[str, Any] = base["unsigned"]
        if len(base_unsigned) > 1:
            unsigned.update((k, v) for k, v in base_unsigned.items() if k != "age")
        result = dict(base)
        result["unsigned"] = unsigned
        return result

    def _serialize_fresh(
        self,
        stored: StoredEvent,
        redactions: dict[str, str],
        related: dict[str, StoredEvent],
        requester_device: tuple[str, str] | None,
        include_room_id: bool,
        now: int,
    ) -> dict[str, Any]:
        event = stored.event
        pdu = event.pdu
        redaction = related.get(redactions.get(event.event_id, ""))
        if redaction is not None and redaction.event.room_id != event.room_id:
            # A redaction only ever applies within its own room.
            redaction = None
        if redaction is not None:
            pdu = prune_event_dict(pdu, event.room_version)
        content = pdu.get("content", {})
        result: dict[str, Any] = {
            "content": content,
            "event_id": event.event_id,
            "origin_server_ts": event.origin_server_ts,
            "sender": event.sender,
            "type": event.type,
        }
        if include_room_id:
            result["room_id"] = event.room_id
        if event.is_state:
            result["state_key"] = event.state_key
        if event.type == "m.room.redaction" and event.redacts is not None:
            # Room v11 moved `redacts` into content; keep the top-level copy older clients read.
            result["redacts"] = event.redacts
            if event.room_version.redacts_in_content and redaction is None:
                result["content"] = {**content, "redacts": event.redacts}

        unsigned: dict[str, Any] = {"age": max(0, now - event.origin_server_ts)}
        metadata = stored.internal_metadata
        if _sent_by(stored, requester_device):
            unsigned["transaction_id"] = metadata["txn_id"]
        replaced = related.get(metadata.get("replaces_state", ""))
        if replaced is not None:
            unsigned["replaces_state"] = replaced.event.event_id
            unsigned["prev_sender"] = replaced.event.sender
            previous = replaced.event.pdu
            if replaced.event.event_id in redactions:
                previous = prune_event_dict(previous, replaced.event.room_version)
            unsigned["prev_content"] = previous.get("content", {})
        if redaction is not None:
            unsigned["redacted_because"] = self._serialize_fresh(
                redaction, {}, {}, None, include_room_id, now
            )
        result["unsigned"] = unsigned
        return result


def _sent_by(stored: StoredEvent, requester_device: tuple[str, str] | None) -> bool:
    """Whether the event was sent, with a transaction ID, from this (user, device): only its
    sender's device is told the `transaction_id` (spec: `unsigned.transaction_id`)."""
    metadata = stored.internal_metadata
    return (
        requester_device is not None
        and "txn_id" in metadata
        and stored.event.sender == requester_device[0]
        and metadata.get("device_id") == requester_device[1]
    )
