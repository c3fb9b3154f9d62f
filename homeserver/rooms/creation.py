"""POST /createRoom: a new room and its initial events, in the order the spec gives.

1. m.room.create  2. the creator's join  3. m.room.power_levels  4. m.room.canonical_alias
5. the preset's join_rules / history_visibility / guest_access  6. `initial_state`
7. m.room.name and m.room.topic  8. invites.

Everything that can be checked before the room exists is checked first, so a bad request
leaves no half-made room behind. If one of the initial events is still refused by the auth
rules (say `initial_state` needs more power than the creator has), the answer is 400
M_INVALID_ROOM_STATE.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from homeserver.auth.restrictions import check_message_rate, check_not_suspended
from homeserver.auth.tokens import Requester
from homeserver.config import RoomsConfig
from homeserver.errors import Codes, MatrixError
from homeserver.events.canonical import (
    CanonicalJsonError,
    check_canonical_values,
    encode_canonical_json,
)
from homeserver.events.room_versions import (
    CREATABLE_ROOM_VERSIONS,
    KNOWN_ROOM_VERSIONS,
    RoomVersion,
)
from homeserver.events.types import (
    CANONICAL_ALIAS,
    CREATE,
    GUEST_ACCESS,
    HISTORY_VISIBILITY,
    JOIN_RULES,
    MEMBER,
    NAME,
    POWER_LEVELS,
    TOPIC,
)
from homeserver.identifiers import MAX_ROOM_ALIAS_BYTES, split_user_id
from homeserver.ratelimit import RateLimiter
from homeserver.rooms.creator import MAX_EVENT_BYTES, EventCreator
from homeserver.rooms.membership import MembershipHandler
from homeserver.rooms.validation import check_power_levels_content
from homeserver.threepids.identity_client import check_id_server
from homeserver.threepids.invites import ThirdPartyInvites
from storage.stores.aliases import AliasStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    join_rule: str
    history_visibility: str
    guest_access: str
    # trusted_private_chat: invitees get the creator's power (v12: become creators).
    invitees_are_admins: bool
    power_levels: Mapping[str, Any]


PRESETS: dict[str, Preset] = {
    "private_chat": Preset("invite", "shared", "can_join", False, {"invite": 0}),
    "trusted_private_chat": Preset("invite", "shared", "can_join", True, {"invite": 0}),
    "public_chat": Preset("public", "shared", "forbidden", False, {}),
}


@dataclass
class RoomSpec:
    """A /createRoom request body, already type-checked by the servlet."""

    visibility: str | None = None
    preset: str | None = None
    room_version: str | None = None
    room_alias_name: str | None = None
    name: str | None = None
    topic: str | None = None
    invite: list[str] = field(default_factory=list)
    invite_3pid: list[Mapping[str, Any]] = field(default_factory=list)
    creation_content: Mapping[str, Any] = field(default_factory=dict)
    # (type, state_key, content), in request order.
    initial_state: list[tuple[str, str, Mapping[str, Any]]] = field(default_factory=list)
    is_direct: bool = False
    power_level_content_override: Mapping[str, Any] | None = None


def default_power_levels(creator: str, room_version: RoomVersion) -> dict[str, Any]:
    """Synapse's defaults, which clients have come to expect."""
    v12 = room_version.room_id_is_create_hash
    return {
        # Room v12: creators have infinite power and may not be listed.
        "users": {} if v12 else {creator: 100},
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            # v12: "MUST explicitly be higher than state_default"; above admins, as only
            # creators should be able to upgrade the room.
            "m.room.tombstone": 150 if v12 else 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 50,
    }


class RoomCreationHandler:
    def __init__(
        self,
        server_name: str,
        config: RoomsConfig,
        creator: EventCreator,
        membership: MembershipHandler,
        aliases: AliasStore,
        message_limiter: RateLimiter,
        third_party_invites: ThirdPartyInvites,
    ) -> None:
        self._third_party_invites = third_party_invites
        self._server_name = server_name
        self._config = config
        self._creator = creator
        self._membership = membership
        self._aliases = aliases
        self._limiter = message_limiter

    async def create_room(self, requester: Requester, spec: RoomSpec) -> str:
        user_id = requester.user_id
        if requester.is_guest:
            raise MatrixError(403, Codes.GUEST_ACCESS_FORBIDDEN, "Guests cannot create rooms")
        # Creating a room is joining one.
        check_not_suspended(requester)
        # Once for the whole room, as Synapse does: its initial events are not counted
        # one by one, so a room is never left half-made by the limit.
        check_message_rate(self._limiter, requester)
        room_version = self._room_version(spec.room_version)
        preset = PRESETS[spec.preset or ("public_chat" if spec.visibility == "public" else "private_chat")]
        alias = await self._check_alias(spec.room_alias_name)
        invitees = list(dict.fromkeys(spec.invite))
        for invitee in invitees:
            await self._membership.check_invitee(invitee)
        if spec.invite_3pid and not self._third_party_invites.enabled:
            # Third-party invites need an identity server; like Synapse with lookups off.
            raise MatrixError(
                403, Codes.FORBIDDEN, "Inviting by third-party identifier is not supported"
            )
        for invite in spec.invite_3pid:
            check_id_server(invite["id_server"])
        create_content = self._create_content(user_id, room_version, spec, preset, invitees)
        initial_state = self._initial_state(spec)
        power_levels = self._power_levels(
            user_id, room_version, spec, preset, invitees, initial_state
        )
        _check_content("creation_content", create_content)
        _check_content("power levels", power_levels)
        for (event_type, _), content in initial_state.items():
            _check_content(f"initial_state {event_type}", content)
        if spec.name is not None:
            _check_content("name", {"name": spec.name})
        if spec.topic is not None:
            _check_content("topic", topic_content(spec.topic))

        room_id, _ = await self._creator.create_room(
            room_version, user_id, create_content, is_public=spec.visibility == "public"
        )
        logger.info("%s created room %s (version %s)", user_id, room_id, room_version.identifier)
        try:
            await self._membership.join(requester, room_id)
            await self._send_state(room_id, user_id, POWER_LEVELS, power_levels)
            if alias is not None:
                if not await self._aliases.create_alias(alias, room_id, user_id):
                    raise MatrixError(400, Codes.ROOM_IN_USE, "Room alias already taken")
                if (CANONICAL_ALIAS, "") not in initial_state:
                    await self._send_state(room_id, user_id, CANONICAL_ALIAS, {"alias": alias})
            preset_state: list[tuple[str, Mapping[str, Any]]] = [
                (JOIN_RULES, {"join_rule": preset.join_rule}),
                (HISTORY_VISIBILITY, {"history_visibility": preset.history_visibility}),
                (GUEST_ACCESS, {"guest_access": preset.guest_access}),
            ]
            for event_type, content in preset_state:
                if (event_type, "") not in initial_state:
                    await self._send_state(room_id, user_id, event_type, content)
            for (event_type, state_key), content in initial_state.items():
                await self._send_state(room_id, user_id, event_type, content, state_key)
            if spec.name is not None:
                await self._send_state(room_id, user_id, NAME, {"name": spec.name})
            if spec.topic is not None:
                await self._send_state(room_id, user_id, TOPIC, topic_content(spec.topic))
            refused: MatrixError | None = None
            for invitee in invitees:
                try:
                    await self._membership.invite(
                        requester, room_id, invitee, is_direct=spec.is_direct
                    )
                except MatrixError as e:
                    # The others are still invited; the client hears of the refusal.
                    if e.errcode != Codes.INVITE_BLOCKED:
                        raise
                    refused = refused or e
            for invite in spec.invite_3pid:
                await self._third_party_invites.invite(
                    requester, room_id, invite["id_server"], invite.get("id_access_token"),
                    invite["medium"], invite["address"],
                )
            if refused is not None:
                raise refused
        except MatrixError as e:
            # An invitee's server refusing (spec: "Invite permission"): the room stays made,
            # the client hears why (local invitees were checked before anything was made).
            if e.http_code == 403 and e.errcode != Codes.INVITE_BLOCKED:
                raise MatrixError(
                    400, Codes.INVALID_ROOM_STATE, f"Invalid initial room state: {e.message}"
                ) from None
            raise
        return room_id

    async def _send_state(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: Mapping[str, Any],
        state_key: str = "",
    ) -> None:
        await self._creator.send(room_id, sender, event_type, content, state_key=state_key)

    # ----- checking the request ------------------------------------------------------------

    def _room_version(self, requested: str | None) -> RoomVersion:
        return creatable_room_version(
            requested if requested is not None else self._config.default_room_version
        )

    async def _check_alias(self, localpart: str | None) -> str | None:
        if localpart is None:
            return None
        if not localpart or any(c.isspace() for c in localpart) or any(
            c in localpart for c in ":#\x00"
        ):
            raise MatrixError(
                400,
                Codes.INVALID_PARAM,
                "room_alias_name must be the local part of an alias ('wombat', not"
                " '#wombat:example.com') without whitespace",
            )
        alias = f"#{localpart}:{self._server_name}"
        if len(alias.encode("utf-8")) > MAX_ROOM_ALIAS_BYTES:
            raise MatrixError(400, Codes.INVALID_PARAM, "Room alias is too long")
        if await self._aliases.get_room_id(alias) is not None:
            raise MatrixError(400, Codes.ROOM_IN_USE, "Room alias already taken")
        return alias

    def _create_content(
        self,
        creator: str,
        room_version: RoomVersion,
        spec: RoomSpec,
        preset: Preset,
        invitees: list[str],
    ) -> dict[str, Any]:
        content = dict(spec.creation_content)
        # The server decides these, whatever the client sent (spec: creation_content).
        content.pop("creator", None)
        content["room_version"] = room_version.identifier
        if not room_version.implicit_room_creator:
            content["creator"] = creator
        if "m.federate" in content and not isinstance(content["m.federate"], bool):
            raise MatrixError(400, Codes.BAD_JSON, "'m.federate' must be a boolean")
        if room_version.room_id_is_create_hash:
            additional = content.get("additional_creators", [])
            if not isinstance(additional, list) or not all(isinstance(u, str) for u in additional):
                raise MatrixError(
                    400, Codes.BAD_JSON, "'additional_creators' must be a list of user IDs"
                )
            for user in additional:
                split_user_id(user)
            if preset.invitees_are_admins:
                # Spec: trusted_private_chat invitees join additional_creators (deduplicated).
                additional = list(dict.fromkeys([*additional, *invitees]))
            if additional:
                content["additional_creators"] = additional
        return content

    def _initial_state(self, spec: RoomSpec) -> dict[tuple[str, str], Mapping[str, Any]]:
        """initial_state by state key (a later entry for the same key wins), leaving out
        what `name` and `topic` override."""
        state: dict[tuple[str, str], Mapping[str, Any]] = {}
        for event_type, state_key, content in spec.initial_state:
            if event_type in (CREATE, MEMBER):
                raise MatrixError(
                    400,
                    Codes.INVALID_ROOM_STATE,
                    f"{event_type} cannot be set through initial_state",
                )
            if event_type == POWER_LEVELS:
                check_power_levels_content(content)
            state[(event_type, state_key)] = content
        if spec.name is not None:
            state.pop((NAME, ""), None)
        if spec.topic is not None:
            state.pop((TOPIC, ""), None)
        return state

    def _power_levels(
        self,
        creator: str,
        room_version: RoomVersion,
        spec: RoomSpec,
        preset: Preset,
        invitees: list[str],
        initial_state: dict[tuple[str, str], Mapping[str, Any]],
    ) -> Mapping[str, Any]:
        # Power levels in initial_state replace the defaults entirely (as in Synapse); they
        # are sent third, where the spec puts power levels, not with the rest.
        from_initial = initial_state.pop((POWER_LEVELS, ""), None)
        if from_initial is not None:
            content: Mapping[str, Any] = from_initial
        else:
            levels = default_power_levels(creator, room_version)
            if preset.invitees_are_admins and not room_version.room_id_is_create_hash:
                for invitee in invitees:
                    levels["users"][invitee] = 100
            levels.update(preset.power_levels)
            if spec.power_level_content_override:
                levels.update(spec.power_level_content_override)
            content = levels
        check_power_levels_content(content)
        users = content.get("users", {})
        if room_version.room_id_is_create_hash:
            if creator in users:
                raise MatrixError(
                    400,
                    Codes.INVALID_ROOM_STATE,
                    "Room creators have infinite power in this room version and may not be"
                    " listed in power levels",
                )
        elif "users" in content and creator not in users:
            raise MatrixError(
                400,
                Codes.INVALID_ROOM_STATE,
                f"Power levels would leave the room creator {creator} without power",
            )
        return content


def creatable_room_version(identifier: str) -> RoomVersion:
    """The room version a new room (created or upgraded to) would have; 400
    M_UNSUPPORTED_ROOM_VERSION for one this server does not create rooms in."""
    if identifier not in CREATABLE_ROOM_VERSIONS:
        raise MatrixError(
            400,
            Codes.UNSUPPORTED_ROOM_VERSION,
            f"This server does not create rooms of version {identifier[:20]!r}",
        )
    return KNOWN_ROOM_VERSIONS[identifier]


def _check_content(what: str, content: Mapping[str, Any]) -> None:
    """Catch content that could never become an event before the room exists."""
    try:
        check_canonical_values(content)
    except CanonicalJsonError as e:
        raise MatrixError(400, Codes.BAD_JSON, f"{what} is not canonical JSON: {e}") from None
    if len(encode_canonical_json(content)) > MAX_EVENT_BYTES:
        raise MatrixError(413, Codes.TOO_LARGE, f"{what} is larger than {MAX_EVENT_BYTES} bytes")


def topic_content(topic: str) -> dict[str, Any]:
    """`topic` plus its `m.topic` text block (spec v1.15)."""
    return {"topic": topic, "m.topic": {"m.text": [{"body": topic, "mimetype": "text/plain"}]}}
