"""The event object: a PDU dict (as signed and sent over federation) plus its room version."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeserver.events.canonical import encode_canonical_json
from homeserver.events.hashing import compute_event_id
from homeserver.events.room_versions import EventIdFormat, RoomVersion

StateKey = tuple[str, str]


class Event:
    """An immutable view of one PDU. `pdu` is never modified after construction."""

    __slots__ = ("pdu", "room_version", "event_id", "rejected_reason", "_canonical")

    def __init__(
        self,
        pdu: dict[str, Any],
        room_version: RoomVersion,
        event_id: str | None = None,
        rejected_reason: str | None = None,
        canonical: bytes | None = None,
    ) -> None:
        self.pdu = pdu
        # The PDU's canonical JSON, once encoded (`canonical` when the caller has it).
        self._canonical = canonical
        self.room_version = room_version
        self.event_id = event_id or compute_event_id(pdu, room_version)
        # Set when the event failed the auth rules; rejected events are kept (so they are
        # not fetched again) but never become state or reach clients.
        self.rejected_reason = rejected_reason

    def canonical_json(self) -> str:
        """The PDU as canonical JSON (what is stored), encoded once."""
        if self._canonical is None:
            self._canonical = encode_canonical_json(self.pdu)
        return self._canonical.decode("utf-8")

    # ----- wire fields ---------------------------------------------------------------------

    @property
    def type(self) -> str:
        return self.pdu["type"]

    @property
    def state_key(self) -> str | None:
        return self.pdu.get("state_key")

    @property
    def is_state(self) -> bool:
        return "state_key" in self.pdu

    @property
    def state_tuple(self) -> StateKey:
        assert self.state_key is not None
        return (self.type, self.state_key)

    @property
    def sender(self) -> str:
        return self.pdu["sender"]

    @property
    def room_id(self) -> str:
        room_id = self.pdu.get("room_id")
        if room_id is None and self.room_version.room_id_is_create_hash and self.type == "m.room.create":
            # Room version 12: the create event has no room_id; the room is named after it.
            return "!" + self.event_id[1:]
        return room_id if isinstance(room_id, str) else ""

    @property
    def content(self) -> Mapping[str, Any]:
        content = self.pdu.get("content")
        return content if isinstance(content, dict) else {}

    @property
    def origin_server_ts(self) -> int:
        return int(self.pdu.get("origin_server_ts", 0))

    @property
    def depth(self) -> int:
        return int(self.pdu.get("depth", 0))

    @property
    def prev_event_ids(self) -> list[str]:
        return _event_id_list(self.pdu.get("prev_events", []), self.room_version)

    @property
    def auth_event_ids(self) -> list[str]:
        return _event_id_list(self.pdu.get("auth_events", []), self.room_version)

    @property
    def membership(self) -> str | None:
        membership = self.content.get("membership")
        return membership if isinstance(membership, str) else None

    @property
    def redacts(self) -> str | None:
        """The event a redaction redacts (in `content` from room v11, top level before)."""
        if self.room_version.redacts_in_content:
            redacts = self.content.get("redacts")
        else:
            redacts = self.pdu.get("redacts")
        return redacts if isinstance(redacts, str) else None

    @property
    def signatures(self) -> Mapping[str, Any]:
        signatures = self.pdu.get("signatures")
        return signatures if isinstance(signatures, dict) else {}

    def __repr__(self) -> str:
        return f"<Event {self.event_id} {self.type} {self.state_key!r} from {self.sender}>"


def _event_id_list(value: Any, room_version: RoomVersion) -> list[str]:
    """prev_events/auth_events: IDs, or `[id, hashes]` pairs in room versions 1 and 2."""
    if not isinstance(value, list):
        return []
    if room_version.event_id_format is EventIdFormat.RANDOM_WITH_DOMAIN:
        return [item[0] for item in value if isinstance(item, list) and item]
    return [item for item in value if isinstance(item, str)]
