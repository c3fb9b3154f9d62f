"""Room versions as data: each version is a set of switches the algorithms read.

Every difference between versions 1-12 that the spec defines lives here, so supporting an
old version (to join existing public rooms over federation) never means forking code.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class EventIdFormat(enum.Enum):
    # v1, v2: `$opaque:domain`, chosen by the origin server and carried in the event.
    RANDOM_WITH_DOMAIN = 1
    # v3: `$` + the reference hash in standard unpadded base64.
    REFERENCE_HASH_BASE64 = 2
    # v4+: `$` + the reference hash in URL-safe unpadded base64.
    REFERENCE_HASH_URLSAFE = 3


class RedactionRules(enum.Enum):
    V1 = 1  # rooms 1-5
    V6 = 6  # rooms 6-7: m.room.aliases no longer protected
    V8 = 8  # room 8: join_rules keeps `allow`
    V9 = 9  # rooms 9-10: member keeps `join_authorised_via_users_server`
    V11 = 11  # rooms 11+


class StateResAlgorithm(enum.Enum):
    V1 = 1
    V2 = 2
    # Room version 12: iterative auth checks start from an empty map; conflicted subgraph.
    V2_1 = 3


@dataclass(frozen=True)
class RoomVersion:
    identifier: str
    event_id_format: EventIdFormat
    redaction_rules: RedactionRules
    state_res: StateResAlgorithm
    # v1-2: redactions are checked by auth rule 11 (sender domain / redact level).
    redaction_auth_rule: bool
    # v1-5: m.room.aliases auth special case (state_key must be the sender's domain).
    aliases_auth_special_case: bool
    # v5+: signing keys' valid_until_ts is enforced against origin_server_ts.
    enforce_key_validity: bool
    # v6+: canonical JSON is enforced strictly (integers in range, no floats).
    strict_canonical_json: bool
    # v6+: `notifications` in power levels is subject to the power-level rules.
    limit_notifications_power_levels: bool
    # v7+: the `knock` join rule and membership.
    knock: bool
    # v8+: the `restricted` join rule (`allow` conditions, authorising server).
    restricted_join_rule: bool
    # v10+: `knock_restricted`.
    knock_restricted_join_rule: bool
    # v10+: power level values must be integers (no numeric strings).
    integer_power_levels: bool
    # v11+: the creator is the create event's sender (no `content.creator`); `redacts` moves
    # into `content` of m.room.redaction.
    implicit_room_creator: bool
    redacts_in_content: bool
    # v12: room ID is the create event's reference hash; creators have infinite power and
    # are not listed in power levels; m.room.create is not an auth event.
    room_id_is_create_hash: bool
    # Room versions the spec marks stable (others are unstable / unsupported for creation).
    stable: bool = True


def _version(identifier: str, **overrides: object) -> RoomVersion:
    defaults: dict[str, object] = {
        "identifier": identifier,
        "event_id_format": EventIdFormat.REFERENCE_HASH_URLSAFE,
        "redaction_rules": RedactionRules.V1,
        "state_res": StateResAlgorithm.V2,
        "redaction_auth_rule": False,
        "aliases_auth_special_case": False,
        "enforce_key_validity": True,
        "strict_canonical_json": True,
        "limit_notifications_power_levels": True,
        "knock": True,
        "restricted_join_rule": True,
        "knock_restricted_join_rule": True,
        "integer_power_levels": True,
        "implicit_room_creator": False,
        "redacts_in_content": False,
        "room_id_is_create_hash": False,
    }
    defaults.update(overrides)
    return RoomVersion(**defaults)  # type: ignore[arg-type]


_PRE_V6 = {
    "strict_canonical_json": False,
    "limit_notifications_power_levels": False,
    "aliases_auth_special_case": True,
    "knock": False,
    "restricted_join_rule": False,
    "knock_restricted_join_rule": False,
    "integer_power_levels": False,
}

V1 = _version(
    "1",
    **_PRE_V6,
    event_id_format=EventIdFormat.RANDOM_WITH_DOMAIN,
    state_res=StateResAlgorithm.V1,
    redaction_auth_rule=True,
    enforce_key_validity=False,
)
V2 = _version(
    "2",
    **_PRE_V6,
    event_id_format=EventIdFormat.RANDOM_WITH_DOMAIN,
    redaction_auth_rule=True,
    enforce_key_validity=False,
)
V3 = _version(
    "3", **_PRE_V6, event_id_format=EventIdFormat.REFERENCE_HASH_BASE64, enforce_key_validity=False
)
V4 = _version("4", **_PRE_V6, enforce_key_validity=False)
V5 = _version("5", **_PRE_V6)
_V6_BASE = {
    "redaction_rules": RedactionRules.V6,
    "knock": False,
    "restricted_join_rule": False,
    "knock_restricted_join_rule": False,
    "integer_power_levels": False,
}
V6 = _version("6", **_V6_BASE)
V7 = _version("7", **{**_V6_BASE, "knock": True})
V8 = _version(
    "8",
    redaction_rules=RedactionRules.V8,
    knock_restricted_join_rule=False,
    integer_power_levels=False,
)
V9 = _version(
    "9",
    redaction_rules=RedactionRules.V9,
    knock_restricted_join_rule=False,
    integer_power_levels=False,
)
V10 = _version("10", redaction_rules=RedactionRules.V9)
V11 = _version(
    "11",
    redaction_rules=RedactionRules.V11,
    implicit_room_creator=True,
    redacts_in_content=True,
)
V12 = _version(
    "12",
    redaction_rules=RedactionRules.V11,
    state_res=StateResAlgorithm.V2_1,
    implicit_room_creator=True,
    redacts_in_content=True,
    room_id_is_create_hash=True,
)

KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {
    v.identifier: v for v in (V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12)
}
# Versions a local user may create (or upgrade) a room in: every stable version, 1-12, as
# the spec's m.room_versions capability lists them and Synapse creates them. The old ones
# use the same event builder, auth rules and state resolution as rooms joined over
# federation, each switched by its RoomVersion.
CREATABLE_ROOM_VERSIONS = tuple(KNOWN_ROOM_VERSIONS)
DEFAULT_ROOM_VERSION = "11"
