"""Event relationships (client-server API "Forming relationships between events"): reading
an event's `m.relates_to`, and which replacements count as valid edits. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.events.model import Event

ANNOTATION = "m.annotation"
REFERENCE = "m.reference"
REPLACE = "m.replace"
THREAD = "m.thread"
# The relationships bundled under `unsigned.m.relations` (annotations stopped being bundled
# in spec v1.7; other and unknown rel_types are stored and served by /relations only).
BUNDLED_REL_TYPES = (REPLACE, REFERENCE, THREAD)


@dataclass(frozen=True)
class Relation:
    rel_type: str
    parent_id: str
    # `key` of an annotation; None for other rel_types (or an annotation without one).
    aggregation_key: str | None


def relation_of(event: Event) -> Relation | None:
    """The event's relationship, if its `m.relates_to` is well formed: a string `rel_type`
    and a string `event_id`. Anything else (a rich reply's `m.in_reply_to` alone, for
    instance) is not a relationship."""
    relates_to = event.content.get("m.relates_to")
    if not isinstance(relates_to, dict):
        return None
    rel_type, parent = relates_to.get("rel_type"), relates_to.get("event_id")
    if not isinstance(rel_type, str) or not isinstance(parent, str) or not parent:
        return None
    key = relates_to.get("key") if rel_type == ANNOTATION else None
    return Relation(rel_type, parent, key if isinstance(key, str) else None)


def is_valid_edit(original: Event, edit: Event) -> bool:
    """Whether `edit` may replace `original` (spec: "Validity of replacement events"): same
    room, sender and type, the original not a state event nor itself an edit, and the edit
    carrying `m.new_content` (an object; encrypted edits carry it inside the ciphertext)."""
    if edit.room_id != original.room_id or edit.sender != original.sender:
        return False
    if edit.type != original.type or original.is_state or edit.is_state:
        return False
    original_relation = relation_of(original)
    if original_relation is not None and original_relation.rel_type == REPLACE:
        return False
    if edit.type == "m.room.encrypted":
        return True
    return isinstance(edit.content.get("m.new_content"), dict)


def latest_edit(original: Event, edits: list[Event]) -> Event | None:
    """The edit that applies: the most recent valid one by `origin_server_ts`, ties broken
    by the lexicographically greatest event ID (spec: "Applying m.new_content")."""
    valid = [edit for edit in edits if is_valid_edit(original, edit)]
    if not valid:
        return None
    return max(valid, key=lambda edit: (edit.origin_server_ts, edit.event_id))
