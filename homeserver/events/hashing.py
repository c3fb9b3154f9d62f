"""Content hashes, reference hashes and event IDs (server-server API, "Calculating the
content hash / reference hash for an event")."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from homeserver.events.canonical import encode_canonical_json
from homeserver.events.redaction import prune_event_dict
from homeserver.events.room_versions import EventIdFormat, RoomVersion


def unpadded_base64(data: bytes, urlsafe: bool = False) -> str:
    encoded = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    return encoded.decode("ascii").rstrip("=")


def decode_unpadded_base64(text: str, urlsafe: bool = False) -> bytes:
    """Decode strictly; raise ValueError (binascii.Error) on anything else."""
    padded = text + "=" * (-len(text) % 4)
    if urlsafe:
        padded = padded.replace("-", "+").replace("_", "/")
    return base64.b64decode(padded, validate=True)


def compute_content_hash(event: dict[str, Any]) -> bytes:
    stripped = {k: v for k, v in event.items() if k not in ("unsigned", "signatures", "hashes")}
    return hashlib.sha256(encode_canonical_json(stripped)).digest()


def add_content_hash(event: dict[str, Any]) -> None:
    event["hashes"] = {"sha256": unpadded_base64(compute_content_hash(event))}


def check_content_hash(event: dict[str, Any]) -> bool:
    hashes = event.get("hashes")
    if not isinstance(hashes, dict) or not isinstance(hashes.get("sha256"), str):
        return False
    try:
        expected = decode_unpadded_base64(hashes["sha256"])
    except ValueError:
        return False
    return expected == compute_content_hash(event)


def compute_reference_hash(event: dict[str, Any], room_version: RoomVersion) -> bytes:
    pruned = prune_event_dict(event, room_version)
    pruned.pop("signatures", None)
    pruned.pop("unsigned", None)
    # Event IDs never cover themselves (v1/v2 events carry one; later ones must not).
    pruned.pop("event_id", None)
    return hashlib.sha256(encode_canonical_json(pruned)).digest()


def compute_event_id(event: dict[str, Any], room_version: RoomVersion) -> str:
    """The event ID of a v3+ event; v1/v2 events carry theirs in `event_id`."""
    fmt = room_version.event_id_format
    if fmt is EventIdFormat.RANDOM_WITH_DOMAIN:
        event_id = event.get("event_id")
        if not isinstance(event_id, str):
            raise ValueError("room versions 1 and 2 need an explicit event_id")
        return event_id
    urlsafe = fmt is EventIdFormat.REFERENCE_HASH_URLSAFE
    return "$" + unpadded_base64(compute_reference_hash(event, room_version), urlsafe=urlsafe)


def room_id_from_create_event_id(event_id: str) -> str:
    """Room version 12: the room ID is the create event's ID with `!` for `$`."""
    return "!" + event_id[1:]
