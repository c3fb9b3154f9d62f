"""The authorisation rules, for every room version (rooms/v1.md ... v12.md).

Pure functions over events; no I/O. The caller supplies the state to check against (the
event's auth events, the state before it, or the current state) as a map of
`(type, state_key) -> Event`. Numbered comments refer to the rules of room version 12,
with the older numbering where it differs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json

from homeserver.events.hashing import decode_unpadded_base64, room_id_from_create_event_id
from homeserver.events.model import Event, StateKey
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.events.types import (
    ALIASES,
    CREATE,
    JOIN_RULES,
    MEMBER,
    POWER_LEVELS,
    REDACTION,
    THIRD_PARTY_INVITE,
)
from homeserver.identifiers import is_valid_server_name

StateMap = Mapping[StateKey, Event]

# Creators in room version 12 outrank any integer power level.
INFINITE_POWER = math.inf

_PL_SCALARS = ("users_default", "events_default", "state_default", "ban", "redact", "kick", "invite")


class AuthError(Exception):
    """The event is not allowed. `str(e)` says which rule refused it."""


def server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


def is_valid_user_id(user_id: Any) -> bool:
    return (
        isinstance(user_id, str)
        and user_id.startswith("@")
        and ":" in user_id
        and len(user_id) > 2
        and is_valid_server_name(server_of(user_id))
    )


# ----- auth event selection --------------------------------------------------------------


def auth_types_for_event(event_type: str, sender: str, state_key: str | None,
                         content: Mapping[str, Any], room_version: RoomVersion) -> list[StateKey]:
    """The state keys whose current events belong in a new event's `auth_events`."""
    if event_type == CREATE:
        return []
    keys: list[StateKey] = []
    if not room_version.room_id_is_create_hash:
        keys.append((CREATE, ""))
    keys.append((POWER_LEVELS, ""))
    keys.append((MEMBER, sender))
    if event_type == MEMBER and state_key is not None:
        membership = content.get("membership")
        if state_key != sender:
            keys.append((MEMBER, state_key))
        if membership in ("join", "invite", "knock"):
            keys.append((JOIN_RULES, ""))
        third_party = content.get("third_party_invite")
        if membership == "invite" and isinstance(third_party, dict):
            signed = third_party.get("signed")
            token = signed.get("token") if isinstance(signed, dict) else None
            if isinstance(token, str):
                keys.append((THIRD_PARTY_INVITE, token))
        via = content.get("join_authorised_via_users_server")
        if membership == "join" and isinstance(via, str) and room_version.restricted_join_rule:
            if (MEMBER, via) not in keys:
                keys.append((MEMBER, via))
    return keys


# ----- power levels ----------------------------------------------------------------------


def parse_power_level(value: Any, room_version: RoomVersion) -> int | None:
    """An integer power level, or None if `value` is not one this room version accepts.

    Before room v10, numeric strings (" +100 ") are tolerated; in v1-v5 floats too
    (truncated). Floats are not valid JSON values from v6 on (canonical JSON), and only the
    v1-v5 pages include "m.room.power_levels events accept values as floats".
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if room_version.integer_power_levels:
        return None
    if isinstance(value, float):
        if room_version.strict_canonical_json or math.isnan(value) or math.isinf(value):
            return None
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        sign = 1
        if text[:1] in ("+", "-"):
            sign = -1 if text[0] == "-" else 1
            text = text[1:]
        if text.isdigit() and text.isascii():
            return sign * int(text)
    return None


def room_creators(create: Event | None) -> set[str]:
    """Room v12: the create event's sender plus `additional_creators`."""
    if create is None:
        return set()
    creators = {create.sender}
    additional = create.content.get("additional_creators")
    if create.room_version.room_id_is_create_hash and isinstance(additional, list):
        creators.update(u for u in additional if isinstance(u, str))
    return creators


def creator_of(create: Event) -> str | None:
    """The room creator as the pre-v12 rules see it (`content.creator` before v11)."""
    if create.room_version.implicit_room_creator:
        return create.sender
    creator = create.content.get("creator")
    return creator if isinstance(creator, str) else None


def _level(content: Mapping[str, Any], key: str, default: int, rv: RoomVersion) -> int:
    if key not in content:
        return default
    parsed = parse_power_level(content[key], rv)
    return default if parsed is None else parsed


def user_power_level(user_id: str, state: StateMap, room_version: RoomVersion) -> float:
    create = state.get((CREATE, ""))
    if room_version.room_id_is_create_hash and user_id in room_creators(create):
        return INFINITE_POWER
    power_levels = state.get((POWER_LEVELS, ""))
    if power_levels is None:
        # No power levels yet: the creator has 100, everyone else 0.
        if create is not None and creator_of(create) == user_id:
            return 100
        return 0
    content = power_levels.content
    users = content.get("users")
    if isinstance(users, dict) and user_id in users:
        parsed = parse_power_level(users[user_id], room_version)
        if parsed is not None:
            return parsed
    return _level(content, "users_default", 0, room_version)


def named_level(name: str, state: StateMap, room_version: RoomVersion) -> int:
    """ban / kick / redact (default 50) and invite (default 0)."""
    power_levels = state.get((POWER_LEVELS, ""))
    default = 0 if name == "invite" else 50
    if power_levels is None:
        return default
    return _level(power_levels.content, name, default, room_version)


def required_power_level(
    event_type: str, is_state: bool, state: StateMap, room_version: RoomVersion
) -> int:
    power_levels = state.get((POWER_LEVELS, ""))
    # "If there is no state_default in the m.room.power_levels event, or there is no
    # m.room.power_levels event, the state_default is 50" (events_default likewise 0).
    content = power_levels.content if power_levels is not None else {}
    events = content.get("events")
    if isinstance(events, dict) and event_type in events:
        parsed = parse_power_level(events[event_type], room_version)
        if parsed is not None:
            return parsed
    if is_state:
        return _level(content, "state_default", 50, room_version)
    return _level(content, "events_default", 0, room_version)


def membership_of(user_id: str, state: StateMap) -> str:
    member = state.get((MEMBER, user_id))
    return (member.membership or "leave") if member is not None else "leave"


# ----- the rules -------------------------------------------------------------------------


def check_auth_events(event: Event, auth_events: Iterable[Event]) -> dict[StateKey, Event]:
    """Rules about the `auth_events` list itself (v12 rule 3; rule 2 before).

    Returns them as a state map. `auth_events` must be the events the event cites.
    """
    rv = event.room_version
    by_key: dict[StateKey, Event] = {}
    allowed = set(auth_types_for_event(event.type, event.sender, event.state_key, event.content, rv))
    for auth_event in auth_events:
        if not auth_event.is_state:
            raise AuthError(f"auth event {auth_event.event_id} is not a state event")
        key = auth_event.state_tuple
        if key in by_key:
            raise AuthError(f"duplicate auth event for {key}")
        if key not in allowed:
            raise AuthError(f"auth event for {key} should not be cited by this event")
        if auth_event.rejected_reason is not None:
            raise AuthError(f"auth event {auth_event.event_id} was rejected")
        if auth_event.room_id != event.room_id:
            raise AuthError(f"auth event {auth_event.event_id} is from another room")
        by_key[key] = auth_event
    if not rv.room_id_is_create_hash and event.type != CREATE and (CREATE, "") not in by_key:
        raise AuthError("no m.room.create event among the auth events")
    return by_key


def check_auth_rules(
    event: Event, state: StateMap, create_event: Event | None = None
) -> None:
    """Raise AuthError unless `event` is allowed against `state`.

    `state` holds (at least) the state the rules consult. In room version 12 the create
    event is not part of auth events; pass it as `create_event` (found from the room ID).
    """
    rv = event.room_version
    if event.type == CREATE:
        _check_create(event)
        return

    create = create_event if create_event is not None else state.get((CREATE, ""))
    if create is None:
        raise AuthError("no create event for this room")
    if rv.room_id_is_create_hash:
        # Rule 2 (v12): the room ID is the create event's ID.
        if create.rejected_reason is not None or event.room_id != room_id_from_create_event_id(
            create.event_id
        ):
            raise AuthError("room ID does not name an accepted create event")
        state = {**state, (CREATE, ""): create}

    # m.federate
    if create.content.get("m.federate", True) is False and server_of(event.sender) != server_of(
        create.sender
    ):
        raise AuthError("room does not federate")

    if rv.aliases_auth_special_case and event.type == ALIASES:
        if event.state_key is None:
            raise AuthError("m.room.aliases needs a state key")
        if event.state_key != server_of(event.sender):
            raise AuthError("m.room.aliases state key must be the sender's server")
        return

    if event.type == MEMBER:
        _check_membership(event, state, create)
        return

    sender_membership = membership_of(event.sender, state)
    if sender_membership != "join":
        raise AuthError(f"{event.sender} is not joined to the room")

    sender_level = user_power_level(event.sender, state, rv)
    if event.type == THIRD_PARTY_INVITE:
        if sender_level < named_level("invite", state, rv):
            raise AuthError("sender cannot invite")
        return

    if required_power_level(event.type, event.is_state, state, rv) > sender_level:
        raise AuthError(f"sender's power level is too low to send {event.type}")

    if event.state_key is not None and event.state_key.startswith("@"):
        if event.state_key != event.sender:
            raise AuthError("state keys starting with @ are reserved for that user")

    if event.type == POWER_LEVELS:
        _check_power_levels(event, state, sender_level, create)
        return

    if rv.redaction_auth_rule and event.type == REDACTION:
        if sender_level >= named_level("redact", state, rv):
            return
        redacts = event.redacts
        if redacts is not None and server_of(redacts) == server_of(event.event_id):
            return
        raise AuthError("sender cannot redact this event")


def _check_create(event: Event) -> None:
    rv = event.room_version
    if event.prev_event_ids:
        raise AuthError("create event has prev_events")
    if rv.room_id_is_create_hash:
        if "room_id" in event.pdu:
            raise AuthError("create event must not have a room_id in this room version")
    elif server_of(event.room_id) != server_of(event.sender):
        raise AuthError("create event's room ID and sender are on different servers")
    version = event.content.get("room_version", "1")
    if not isinstance(version, str) or version not in KNOWN_ROOM_VERSIONS:
        raise AuthError(f"unknown room version {version!r}")
    if rv.room_id_is_create_hash:
        additional = event.content.get("additional_creators")
        if additional is not None and (
            not isinstance(additional, list) or not all(is_valid_user_id(u) for u in additional)
        ):
            raise AuthError("additional_creators must be a list of user IDs")
    elif not rv.implicit_room_creator and "creator" not in event.content:
        raise AuthError("create event has no creator")


def _check_membership(event: Event, state: StateMap, create: Event) -> None:
    rv = event.room_version
    target = event.state_key
    membership = event.membership
    if target is None or membership is None:
        raise AuthError("member event needs a state key and a membership")

    via = event.content.get("join_authorised_via_users_server")
    if rv.restricted_join_rule and via is not None:
        if not isinstance(via, str) or server_of(via) not in event.signatures:
            raise AuthError("not signed by the server of join_authorised_via_users_server")

    sender = event.sender
    sender_membership = membership_of(sender, state)
    target_membership = membership_of(target, state)
    join_rules = state.get((JOIN_RULES, ""))
    join_rule = join_rules.content.get("join_rule") if join_rules is not None else None
    if not isinstance(join_rule, str):
        join_rule = "invite"

    if membership == "join":
        prev = event.prev_event_ids
        creator = create.sender if rv.implicit_room_creator else creator_of(create)
        if len(prev) == 1 and prev[0] == create.event_id and target == creator:
            return
        if sender != target:
            raise AuthError("cannot join on behalf of another user")
        if sender_membership == "ban":
            raise AuthError("sender is banned")
        if join_rule == "invite" or (rv.knock and join_rule == "knock"):
            if sender_membership in ("invite", "join"):
                return
            raise AuthError("room is invite-only")
        restricted = (rv.restricted_join_rule and join_rule == "restricted") or (
            rv.knock_restricted_join_rule and join_rule == "knock_restricted"
        )
        if restricted:
            if sender_membership in ("join", "invite"):
                return
            if not isinstance(via, str):
                raise AuthError("restricted join without an authorising user")
            if membership_of(via, state) != "join" or user_power_level(via, state, rv) < named_level(
                "invite", state, rv
            ):
                raise AuthError("authorising user cannot invite")
            return
        if join_rule == "public":
            return
        raise AuthError(f"cannot join a room with join rule {join_rule!r}")

    if membership == "invite":
        if "third_party_invite" in event.content:
            _check_third_party_invite(event, state, target_membership)
            return
        if sender_membership != "join":
            raise AuthError("inviter is not joined")
        if target_membership in ("join", "ban"):
            raise AuthError(f"invitee is already {target_membership}")
        if user_power_level(sender, state, rv) >= named_level("invite", state, rv):
            return
        raise AuthError("sender cannot invite")

    if membership == "leave":
        if sender == target:
            allowed = ("invite", "join", "knock") if rv.knock else ("invite", "join")
            if sender_membership in allowed:
                return
            raise AuthError("cannot leave a room you are not in")
        if sender_membership != "join":
            raise AuthError("sender is not joined")
        sender_level = user_power_level(sender, state, rv)
        if target_membership == "ban" and sender_level < named_level("ban", state, rv):
            raise AuthError("sender cannot unban")
        if sender_level >= named_level("kick", state, rv) and user_power_level(
            target, state, rv
        ) < sender_level:
            return
        raise AuthError("sender cannot kick this user")

    if membership == "ban":
        if sender_membership != "join":
            raise AuthError("sender is not joined")
        sender_level = user_power_level(sender, state, rv)
        if sender_level >= named_level("ban", state, rv) and user_power_level(
            target, state, rv
        ) < sender_level:
            return
        raise AuthError("sender cannot ban this user")

    if membership == "knock" and rv.knock:
        knock_rules = ("knock", "knock_restricted") if rv.knock_restricted_join_rule else ("knock",)
        if join_rule not in knock_rules:
            raise AuthError("room does not allow knocking")
        if sender != target:
            raise AuthError("cannot knock on behalf of another user")
        if sender_membership not in ("ban", "invite", "join"):
            return
        raise AuthError(f"cannot knock while {sender_membership}")

    raise AuthError(f"unknown membership {membership!r}")


def _check_third_party_invite(event: Event, state: StateMap, target_membership: str) -> None:
    if target_membership == "ban":
        raise AuthError("invitee is banned")
    third_party = event.content.get("third_party_invite")
    signed = third_party.get("signed") if isinstance(third_party, dict) else None
    if not isinstance(signed, dict):
        raise AuthError("third_party_invite has no signed block")
    mxid, token = signed.get("mxid"), signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise AuthError("signed block needs mxid and token")
    if mxid != event.state_key:
        raise AuthError("third-party invite is for another user")
    invite = state.get((THIRD_PARTY_INVITE, token))
    if invite is None:
        raise AuthError("no matching m.room.third_party_invite")
    if invite.sender != event.sender:
        raise AuthError("third-party invite was sent by someone else")
    public_keys: list[str] = []
    if isinstance(invite.content.get("public_key"), str):
        public_keys.append(invite.content["public_key"])
    for entry in invite.content.get("public_keys") or []:
        if isinstance(entry, dict) and isinstance(entry.get("public_key"), str):
            public_keys.append(entry["public_key"])
    if not isinstance(signed.get("signatures"), dict):
        raise AuthError("signed block has no signatures")
    if not any(third_party_signed_with(signed, public_key) for public_key in public_keys):
        raise AuthError("third-party invite signature does not verify")


def third_party_signed_with(signed: dict[str, Any], public_key: str) -> bool:
    """Whether any ed25519 signature on the identity server's `signed` block verifies with
    `public_key` (unpadded base64, as m.room.third_party_invite gives it)."""
    signatures = signed.get("signatures")
    if not isinstance(signatures, dict):
        return False
    for server, keys in signatures.items():
        if not isinstance(keys, dict):
            continue
        for key_id in keys:
            if isinstance(key_id, str) and key_id.startswith("ed25519:") and _signed_with(
                signed, server, key_id, public_key
            ):
                return True
    return False


def _signed_with(signed: dict[str, Any], server: str, key_id: str, public_key: str) -> bool:
    # Identity servers publish keys in either base64 alphabet.
    for urlsafe in (False, True):
        try:
            raw_key = decode_unpadded_base64(public_key, urlsafe=urlsafe)
            verify_signed_json(signed, server, decode_verify_key_bytes(key_id, raw_key))
            return True
        except (SignatureVerifyException, ValueError, TypeError):
            continue
    return False


def _check_power_levels(event: Event, state: StateMap, sender_level: float, create: Event) -> None:
    rv = event.room_version
    content = event.content

    # Shape (rules 10.1-10.3).
    if rv.integer_power_levels:
        for key in _PL_SCALARS:
            if key in content and parse_power_level(content[key], rv) is None:
                raise AuthError(f"power level {key!r} must be an integer")
        for key in ("events", "notifications"):
            if key in content:
                value = content[key]
                if not isinstance(value, dict) or any(
                    parse_power_level(v, rv) is None for v in value.values()
                ):
                    raise AuthError(f"{key!r} must map to integers")
    else:
        # v1-floaty-power-levels: "Infinity, -Infinity and NaN" cause the power levels event
        # to be rejected (only users' values are otherwise validated before v10).
        values = [content.get(key) for key in _PL_SCALARS]
        for key in ("events", "notifications", "users"):
            values.extend(_as_dict(content.get(key)).values())
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise AuthError("power levels must be finite numbers")
    users = content.get("users", {})
    if not isinstance(users, dict) or any(
        not is_valid_user_id(u) or parse_power_level(v, rv) is None for u, v in users.items()
    ):
        raise AuthError("'users' must map user IDs to integers")
    if rv.room_id_is_create_hash and room_creators(create) & set(users):
        raise AuthError("room creators cannot be given a power level")

    previous = state.get((POWER_LEVELS, ""))
    if previous is None:
        return
    old = previous.content

    def level_at(levels: Mapping[str, Any], key: str) -> int | None:
        return parse_power_level(levels[key], rv) if key in levels else None

    for key in _PL_SCALARS:
        old_value, new_value = level_at(old, key), level_at(content, key)
        if old_value == new_value:
            continue
        if old_value is not None and old_value > sender_level:
            raise AuthError(f"cannot change {key!r} from a level above your own")
        if new_value is not None and new_value > sender_level:
            raise AuthError(f"cannot set {key!r} above your own level")

    maps = ["events"] + (["notifications"] if rv.limit_notifications_power_levels else [])
    for name in maps:
        old_map = _as_dict(old.get(name))
        new_map = _as_dict(content.get(name))
        for key in set(old_map) | set(new_map):
            old_value, new_value = level_at(old_map, key), level_at(new_map, key)
            if old_value == new_value:
                continue
            if old_value is not None and old_value > sender_level:
                raise AuthError(f"cannot change {name}.{key} from a level above your own")
            if new_value is not None and new_value > sender_level:
                raise AuthError(f"cannot set {name}.{key} above your own level")

    old_users = _as_dict(old.get("users"))
    for user in set(old_users) | set(users):
        old_value, new_value = level_at(old_users, user), level_at(users, user)
        if old_value == new_value:
            continue
        if user != event.sender and old_value is not None and old_value >= sender_level:
            raise AuthError(f"cannot change the level of {user}, who is not below you")
        if new_value is not None and new_value > sender_level:
            raise AuthError(f"cannot give {user} a level above your own")


def _as_dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}
