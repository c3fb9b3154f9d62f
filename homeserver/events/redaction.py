"""The redaction algorithm, per room version (rooms/fragments/v*-redactions.md)."""

from __future__ import annotations

from typing import Any

from homeserver.events.room_versions import RedactionRules, RoomVersion

_TOP_LEVEL_PRE_V11 = frozenset(
    {
        "event_id", "type", "room_id", "sender", "state_key", "content", "hashes",
        "signatures", "depth", "prev_events", "prev_state", "auth_events", "origin",
        "origin_server_ts", "membership",
    }
)
# v11 drops `origin`, `membership` and `prev_state` from the protected top-level keys.
_TOP_LEVEL_V11 = frozenset(
    {
        "event_id", "type", "room_id", "sender", "state_key", "content", "hashes",
        "signatures", "depth", "prev_events", "auth_events", "origin_server_ts",
    }
)

_POWER_LEVELS = frozenset(
    {"ban", "events", "events_default", "kick", "redact", "state_default", "users", "users_default"}
)

# content keys kept, by event type, for each rule set (ALL = keep everything).
ALL = None
_CONTENT_KEYS: dict[RedactionRules, dict[str, frozenset[str] | None]] = {
    RedactionRules.V1: {
        "m.room.member": frozenset({"membership"}),
        "m.room.create": frozenset({"creator"}),
        "m.room.join_rules": frozenset({"join_rule"}),
        "m.room.power_levels": _POWER_LEVELS,
        "m.room.aliases": frozenset({"aliases"}),
        "m.room.history_visibility": frozenset({"history_visibility"}),
    },
    RedactionRules.V6: {
        "m.room.member": frozenset({"membership"}),
        "m.room.create": frozenset({"creator"}),
        "m.room.join_rules": frozenset({"join_rule"}),
        "m.room.power_levels": _POWER_LEVELS,
        "m.room.history_visibility": frozenset({"history_visibility"}),
    },
    RedactionRules.V8: {
        "m.room.member": frozenset({"membership"}),
        "m.room.create": frozenset({"creator"}),
        "m.room.join_rules": frozenset({"join_rule", "allow"}),
        "m.room.power_levels": _POWER_LEVELS,
        "m.room.history_visibility": frozenset({"history_visibility"}),
    },
    RedactionRules.V9: {
        "m.room.member": frozenset({"membership", "join_authorised_via_users_server"}),
        "m.room.create": frozenset({"creator"}),
        "m.room.join_rules": frozenset({"join_rule", "allow"}),
        "m.room.power_levels": _POWER_LEVELS,
        "m.room.history_visibility": frozenset({"history_visibility"}),
    },
    RedactionRules.V11: {
        "m.room.member": frozenset({"membership", "join_authorised_via_users_server"}),
        "m.room.create": ALL,
        "m.room.join_rules": frozenset({"join_rule", "allow"}),
        "m.room.power_levels": _POWER_LEVELS | {"invite"},
        "m.room.history_visibility": frozenset({"history_visibility"}),
        "m.room.redaction": frozenset({"redacts"}),
    },
}


def prune_event_dict(event: dict[str, Any], room_version: RoomVersion) -> dict[str, Any]:
    """A redacted copy of `event` (which is not modified).

    `unsigned` is dropped except for the keys servers must keep across redaction
    (`age_ts`, `replaces_state` and the `redacted_because` a caller may add afterwards).
    """
    rules = room_version.redaction_rules
    top_level = _TOP_LEVEL_V11 if rules is RedactionRules.V11 else _TOP_LEVEL_PRE_V11
    pruned = {k: v for k, v in event.items() if k in top_level}

    event_type = event.get("type")
    content = event.get("content")
    kept: dict[str, Any] = {}
    if isinstance(content, dict) and isinstance(event_type, str):
        allowed = _CONTENT_KEYS[rules].get(event_type, frozenset())
        if allowed is ALL:
            kept = dict(content)
        else:
            kept = {k: v for k, v in content.items() if k in allowed}
        if (
            rules is RedactionRules.V11
            and event_type == "m.room.member"
            and isinstance(content.get("third_party_invite"), dict)
            and "signed" in content["third_party_invite"]
        ):
            kept["third_party_invite"] = {"signed": content["third_party_invite"]["signed"]}
    pruned["content"] = kept

    unsigned = event.get("unsigned")
    if isinstance(unsigned, dict):
        kept_unsigned = {k: unsigned[k] for k in ("age_ts", "replaces_state") if k in unsigned}
        if kept_unsigned:
            pruned["unsigned"] = kept_unsigned
    return pruned
