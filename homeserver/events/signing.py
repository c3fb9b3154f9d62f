"""Signing events and JSON objects, and verifying their signatures (appendices: "Signing
JSON"; server-server API: "Adding hashes and signatures to outgoing events")."""

from __future__ import annotations

from typing import Any

from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json

from homeserver.events.hashing import add_content_hash, decode_unpadded_base64
from homeserver.events.redaction import prune_event_dict
from homeserver.events.room_versions import RoomVersion


def sign_event(
    event: dict[str, Any], server_name: str, signing_key: Any, room_version: RoomVersion
) -> None:
    """Add the content hash, then sign the redacted form and copy the signature back."""
    add_content_hash(event)
    redacted = prune_event_dict(event, room_version)
    redacted.pop("unsigned", None)
    signed = sign_json(redacted, server_name, signing_key)
    event.setdefault("signatures", {}).setdefault(server_name, {}).update(
        signed["signatures"][server_name]
    )


def verify_event_signature(
    event: dict[str, Any],
    server_name: str,
    key_id: str,
    verify_key_base64: str,
    room_version: RoomVersion,
) -> bool:
    """Whether `server_name` signed (the redacted form of) `event` with this key."""
    algorithm, _, version = key_id.partition(":")
    try:
        verify_key = decode_verify_key_bytes(key_id, decode_unpadded_base64(verify_key_base64))
    except Exception:
        return False
    if algorithm != "ed25519" or not version:
        return False
    redacted = prune_event_dict(event, room_version)
    try:
        verify_signed_json(redacted, server_name, verify_key)
    except SignatureVerifyException:
        return False
    return True
