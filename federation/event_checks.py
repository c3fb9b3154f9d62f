"""Checks on PDUs received from other servers (server-server API, "Checks performed on
receipt of a PDU", steps 1-3): the event format, signatures, and the content hash.

Format checks are pure; signature checks ask the KeyRing for verify keys.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from homeserver.events.canonical import (
    CanonicalJsonError,
    check_canonical_values,
    encode_canonical_json,
)
from homeserver.events.hashing import check_content_hash
from homeserver.events.model import Event
from homeserver.events.redaction import prune_event_dict
from homeserver.events.room_versions import EventIdFormat, RoomVersion
from homeserver.identifiers import is_valid_server_name

if TYPE_CHECKING:
    from federation.keys import KeyRing

logger = logging.getLogger(__name__)

MAX_PDU_BYTES = 65536
MAX_IDENTIFIER_BYTES = 255
MAX_DEPTH = 2**63 - 1
# Spec: at most 20 prev_events and 10 auth_events per event.
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10


class InvalidPdu(Exception):
    """The PDU does not have the format of its room version: it is dropped."""


def server_of(identifier: str) -> str:
    """The server part of a user ID, event ID (v1/v2) or room ID."""
    return identifier.split(":", 1)[1] if ":" in identifier else ""


def _require_str(pdu: dict[str, Any], key: str, optional: bool = False) -> None:
    value = pdu.get(key)
    if value is None and optional and key not in pdu:
        return
    if not isinstance(value, str):
        raise InvalidPdu(f"'{key}' must be a string")
    if len(value.encode("utf-8")) > MAX_IDENTIFIER_BYTES and key != "event_id":
        raise InvalidPdu(f"'{key}' is longer than {MAX_IDENTIFIER_BYTES} bytes")


def _check_reference_list(value: Any, key: str, room_version: RoomVersion, limit: int) -> None:
    if not isinstance(value, list):
        raise InvalidPdu(f"'{key}' must be a list")
    if len(value) > limit:
        raise InvalidPdu(f"'{key}' has more than {limit} entries")
    for item in value:
        if room_version.event_id_format is EventIdFormat.RANDOM_WITH_DOMAIN:
            # v1/v2: [event_id, {"sha256": hash}] pairs.
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                    and isinstance(item[1], dict)):
                raise InvalidPdu(f"'{key}' entries must be [event_id, hashes] pairs")
        elif not isinstance(item, str) or not item.startswith("$"):
            raise InvalidPdu(f"'{key}' entries must be event IDs")


def parse_pdu(pdu: Any, room_version: RoomVersion, expected_room_id: str | None = None) -> Event:
    """Check the PDU's format for its room version and wrap it as an Event (step 1).

    `unsigned` from another server is not trusted and is dropped, except `age`-style fields
    we never use; the stored PDU is what was signed.
    """
    if not isinstance(pdu, dict):
        raise InvalidPdu("PDU is not a JSON object")
    pdu = {k: v for k, v in pdu.items() if k != "unsigned"}
    for key in ("type", "sender"):
        _require_str(pdu, key)
    _require_str(pdu, "state_key", optional=True)
    is_v12_create = room_version.room_id_is_create_hash and pdu.get("type") == "m.room.create"
    if is_v12_create:
        if "room_id" in pdu:
            raise InvalidPdu("a room version 12 create event has no room_id")
    else:
        _require_str(pdu, "room_id")
        if not pdu["room_id"].startswith("!"):
            raise InvalidPdu("'room_id' is not a room ID")
    sender = pdu["sender"]
    if not sender.startswith("@") or not is_valid_server_name(server_of(sender)):
        raise InvalidPdu("'sender' is not a user ID")
    if not isinstance(pdu.get("content"), dict):
        raise InvalidPdu("'content' must be an object")
    for key in ("origin_server_ts", "depth"):
        value = pdu.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidPdu(f"'{key}' must be an integer")
    if not 0 <= pdu["depth"] <= MAX_DEPTH:
        raise InvalidPdu("'depth' is out of range")
    if not isinstance(pdu.get("hashes"), dict) or not isinstance(pdu["hashes"].get("sha256"), str):
        raise InvalidPdu("'hashes' must hold a sha256 hash")
    if not isinstance(pdu.get("signatures"), dict):
        raise InvalidPdu("'signatures' must be an object")
    _check_reference_list(pdu.get("prev_events"), "prev_events", room_version, MAX_PREV_EVENTS)
    _check_reference_list(pdu.get("auth_events"), "auth_events", room_version, MAX_AUTH_EVENTS)
    if room_version.event_id_format is EventIdFormat.RANDOM_WITH_DOMAIN:
        _require_str(pdu, "event_id")
        if not pdu["event_id"].startswith("$") or not server_of(pdu["event_id"]):
            raise InvalidPdu("'event_id' is not an event ID")
    else:
        # Later versions derive the ID from the content; a carried one is not trusted.
        pdu.pop("event_id", None)
    if room_version.strict_canonical_json:
        try:
            check_canonical_values(pdu)
        except CanonicalJsonError as e:
            raise InvalidPdu(f"not canonical JSON: {e}") from None
    try:
        size = len(encode_canonical_json(pdu))
    except (CanonicalJsonError, ValueError, TypeError) as e:
        raise InvalidPdu(f"cannot be encoded as canonical JSON: {e}") from None
    if size > MAX_PDU_BYTES:
        raise InvalidPdu(f"PDU is larger than {MAX_PDU_BYTES} bytes")
    event = Event(pdu, room_version, event_id=pdu.get("event_id"))
    if expected_room_id is not None and event.room_id != expected_room_id:
        raise InvalidPdu(f"PDU is for room {event.room_id}, not {expected_room_id}")
    return event


def servers_that_must_sign(event: Event) -> set[str]:
    """Spec "Validating hashes and signatures on received events": the sender's server; in
    room versions 1 and 2 also the server named in the event ID; for restricted joins the
    server of the user in `join_authorised_via_users_server`."""
    servers = {server_of(event.sender)}
    if event.room_version.event_id_format is EventIdFormat.RANDOM_WITH_DOMAIN:
        servers.add(server_of(event.event_id))
    if event.room_version.restricted_join_rule and event.type == "m.room.member":
        authoriser = event.content.get("join_authorised_via_users_server")
        if event.membership == "join" and isinstance(authoriser, str) and ":" in authoriser:
            servers.add(server_of(authoriser))
    return servers


async def check_signatures_and_hashes(keyring: KeyRing, event: Event) -> Event:
    """Steps 2 and 3: every required server signed the redacted event, else raise
    `SignatureVerifyError`/`KeyLookupError` (the event is dropped). A content hash mismatch
    returns a redacted copy, which is what gets stored and used from then on."""
    room_version = event.room_version
    redacted = prune_event_dict(event.pdu, room_version)
    redacted.pop("unsigned", None)
    valid_at = event.origin_server_ts if room_version.enforce_key_validity else 0
    for server in sorted(servers_that_must_sign(event)):
        await keyring.verify_json_for_server(server, redacted, valid_at)
    if check_content_hash(event.pdu):
        return event
    logger.warning("content hash mismatch on %s: keeping a redacted copy", event.event_id)
    return Event(redacted, room_version, event_id=event.event_id)
