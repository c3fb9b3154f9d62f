"""Events as clients see them (client-server API "ClientEvent")."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from homeserver.clock import Clock
from homeserver.events.redaction import prune_event_dict
from storage.stores.events import EventStore, StoredEvent


class EventSerializer:
    def __init__(self, clock: Clock, events: EventStore) -> None:
        self._clock = clock
        self._events = events

    async def serialize(
        self,
        stored_events: Iterable[StoredEvent],
        requester_device: tuple[str, str] | None = None,
        include_room_id: bool = True,
    ) -> list[dict[str, Any]]:
        """Serialize in order, applying redactions and adding `unsigned` data.

        `requester_device` (user_id, device_id) gets `transaction_id` on its own events.
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
        return [
            self._serialize_one(s, redactions, related, requester_device, include_room_id, now)
            for s in stored_list
        ]

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
        if (
            requester_device is not None
            and "txn_id" in metadata
            and event.sender == requester_device[0]
            and metadata.get("device_id") == requester_device[1]
        ):
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
            unsigned["redacted_because"] = self._serialize_one(
                redaction, {}, {}, None, include_room_id, now
            )
        result["unsigned"] = unsigned
        return result
