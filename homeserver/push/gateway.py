"""The Push Gateway API's request and response (spec: push-gateway-api), as pure functions.

A notification is built when it is queued (what the event said, who sent it, the room's
name, the counts then) and stored without its `devices`; the device entry is added when it
is sent, from the pusher as it is then, and `event_id_only` pushers get the short form.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from homeserver.events.model import Event
from homeserver.events.types import MEMBER

JsonDict = dict[str, Any]

EVENT_ID_ONLY = "event_id_only"
# What an `event_id_only` pusher is sent of a notification (besides `devices`).
_EVENT_ID_ONLY_FIELDS = ("event_id", "room_id", "counts", "prio")


def should_notify(actions: Sequence[Any]) -> bool:
    """Only a rule whose actions say `notify` makes a push (the historical `dont_notify`
    and `coalesce` mean nothing)."""
    return "notify" in actions


def tweaks_from_actions(actions: Sequence[Any]) -> JsonDict:
    """The `set_tweak` actions as the device entry's `tweaks` (a highlight without a value
    is true, as the spec defines)."""
    tweaks: JsonDict = {}
    for action in actions:
        if isinstance(action, Mapping) and isinstance(action.get("set_tweak"), str):
            name = action["set_tweak"]
            if "value" in action:
                tweaks[name] = action["value"]
            elif name == "highlight":
                tweaks[name] = True
    return tweaks


def priority(tweaks: Mapping[str, Any]) -> str:
    """`high` for what should alert at once (a highlight, or a sound to play); the gateway
    may deliver `low` ones lazily to save battery."""
    return "high" if tweaks.get("highlight") is True or tweaks.get("sound") else "low"


def event_counts(counts: Mapping[str, int]) -> JsonDict:
    """Counts sent with an event: the spec says zero counts should be omitted."""
    return {name: n for name, n in counts.items() if isinstance(n, int) and n > 0}


def badge_counts(counts: Mapping[str, int]) -> JsonDict:
    """Counts of a badge-only update: `unread` even at zero, since clearing the badge is
    the point of the update (gateways leave the badge alone when it is missing)."""
    kept = event_counts(counts)
    kept["unread"] = max(0, int(counts.get("unread", 0)))
    return kept


def event_notification(
    user_id: str,
    event: Event,
    counts: Mapping[str, int],
    tweaks: Mapping[str, Any],
    sender_display_name: str | None,
    room_name: str | None,
    room_alias: str | None,
) -> JsonDict:
    """The notification about `event` for `user_id`, without `devices`.

    Besides the spec's fields, two that gateways written for Synapse read: `id` (the event
    ID under its old name) and, for member events, `membership` (Sygnal passes it on to the
    device)."""
    notification: JsonDict = {
        "id": event.event_id,
        "event_id": event.event_id,
        "room_id": event.room_id,
        "type": event.type,
        "sender": event.sender,
        "prio": priority(tweaks),
        "counts": event_counts(counts),
    }
    if event.content:
        notification["content"] = dict(event.content)
    if sender_display_name is not None:
        notification["sender_display_name"] = sender_display_name
    if room_name is not None:
        notification["room_name"] = room_name
    if room_alias is not None:
        notification["room_alias"] = room_alias
    if event.type == MEMBER:
        notification["user_is_target"] = event.state_key == user_id
        membership = event.content.get("membership")
        if isinstance(membership, str):
            notification["membership"] = membership
    return notification


def badge_notification(counts: Mapping[str, int]) -> JsonDict:
    """A badge-only update: counts and nothing about any event."""
    return {"counts": badge_counts(counts)}


def device_entry(
    app_id: str, pushkey: str, pushkey_ts_ms: int, data: Mapping[str, Any], tweaks: JsonDict
) -> JsonDict:
    """The pusher's entry in `devices`: its data without the URL (the spec: everything
    else the client gave, `format` and custom keys included) and the tweaks."""
    return {
        "app_id": app_id,
        "pushkey": pushkey,
        # Seconds, as the gateway API counts them.
        "pushkey_ts": pushkey_ts_ms // 1000,
        "data": {key: value for key, value in data.items() if key != "url"},
        "tweaks": tweaks,
    }


def request_body(notification: Mapping[str, Any], device: JsonDict, data: Mapping[str, Any]) -> JsonDict:
    """The body of `POST <url>` for one pusher."""
    if data.get("format") == EVENT_ID_ONLY:
        kept = {k: notification[k] for k in _EVENT_ID_ONLY_FIELDS if k in notification}
    else:
        kept = dict(notification)
    kept["devices"] = [device]
    return {"notification": kept}


class GatewayResponseError(ValueError):
    """A 2xx answer that is not the API's response object."""


def rejected_pushkeys(body: bytes) -> list[str]:
    """The pushkeys a gateway's 200 answer rejects. A body that is not a JSON object is
    GatewayResponseError (the attempt failed: something that is not a push gateway, or
    one that is broken, answered); a missing or malformed `rejected` rejects nothing."""
    try:
        parsed = json.loads(body.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included
        raise GatewayResponseError("the answer is not JSON") from None
    if not isinstance(parsed, dict):
        raise GatewayResponseError("the answer is not a JSON object")
    rejected = parsed.get("rejected")
    if not isinstance(rejected, list):
        return []
    return [key for key in rejected if isinstance(key, str)]
