"""POST /rooms/{roomId}/upgrade: replace a room with a new room of another room version.

What the spec's server behaviour asks ("Room Upgrades"), in order: the upgrader must have
the power to send `m.room.tombstone`; a new room whose `m.room.create` names its
`predecessor` and copies the old room's `type`; the recommended state copied over (never
memberships); local aliases moved; the tombstone sent; the old room's power levels raised so
ordinary members can no longer talk or invite. Beyond that we follow Synapse: bans copied,
the canonical alias event rewritten in both rooms, the directory entry moved, each local
member's tags, `m.direct` entry and room push rules copied, and a repeated upgrade answered
with the room the first one made (see docs/architecture.md, "Room upgrades").

The tombstone is built first (so a v1-v11 successor's `predecessor.event_id` can name it) and
persisted last, after the new room is ready: a client that follows it always finds a room
with its name, rules and power levels in place.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.account_data import AccountDataHandler
from homeserver.auth.restrictions import check_message_rate, check_not_suspended
from homeserver.auth.tokens import Requester
from homeserver.caches import LruCache
from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from homeserver.events.auth import INFINITE_POWER, parse_power_level, user_power_level
from homeserver.events.model import Event
from homeserver.events.room_versions import RoomVersion
from homeserver.events.types import (
    AVATAR,
    CANONICAL_ALIAS,
    CREATE,
    ENCRYPTION,
    GUEST_ACCESS,
    HISTORY_VISIBILITY,
    JOIN_RULES,
    MEMBER,
    NAME,
    POWER_LEVELS,
    SERVER_ACL,
    SPACE_CHILD,
    TOMBSTONE,
    TOPIC,
)
from homeserver.identifiers import split_room_alias, split_user_id
from homeserver.linearizer import Linearizer
from homeserver.push.handler import PushRulesHandler
from homeserver.ratelimit import RateLimiter
from homeserver.rooms.creation import creatable_room_version, default_power_levels
from homeserver.rooms.creator import EventCreator
from homeserver.rooms.directory import StateContents
from homeserver.rooms.lookup import require_room
from homeserver.rooms.membership import MembershipHandler
from homeserver.rooms.validation import POWER_LEVEL_SCALARS
from storage.stores.aliases import AliasStore
from storage.stores.directory import RoomDirectoryStore
from storage.stores.events import EventStore
from storage.stores.state import StateStore

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]

# The spec's recommended state to carry over (power levels are handled on their own).
COPIED_STATE = (SERVER_ACL, ENCRYPTION, NAME, AVATAR, TOPIC, GUEST_ACCESS, HISTORY_VISIBILITY,
                JOIN_RULES)
SPACE = "m.space"
TOMBSTONE_BODY = "This room has been replaced"
# Synapse answers a repeated upgrade of a room with the first one's new room for 5 minutes.
UPGRADE_REMEMBERED_S = 300.0
UPGRADES_REMEMBERED = 10_000
# Spec: restricting the old room sets events_default and invite to at least this.
RESTRICTED_LEVEL = 50


@dataclass(frozen=True)
class _Upgrade:
    user_id: str
    replacement_room: str


# ----- pure content rules -----------------------------------------------------------------------


def upgraded_create_content(
    old_create: Event,
    new_version: RoomVersion,
    upgrader: str,
    tombstone_event_id: str | None,
    additional_creators: Sequence[str],
) -> JsonDict:
    """The new room's m.room.create content: its version, its `predecessor`, the old room's
    `type` and (as Synapse) `m.federate: false`; v12 names additional creators here."""
    predecessor: JsonDict = {"room_id": old_create.room_id}
    if tombstone_event_id is not None:
        predecessor["event_id"] = tombstone_event_id
    content: JsonDict = {"room_version": new_version.identifier, "predecessor": predecessor}
    if not new_version.implicit_room_creator:
        content["creator"] = upgrader
    if new_version.room_id_is_create_hash and additional_creators:
        content["additional_creators"] = list(additional_creators)
    if old_create.content.get("m.federate", True) is False:
        content["m.federate"] = False
    room_type = old_create.content.get("type")
    if room_type is not None:
        content["type"] = room_type
    return content


def normalised_power_levels(content: Mapping[str, Any], room_version: RoomVersion) -> JsonDict:
    """Power levels as integers (older room versions allow numeric strings and floats, the
    versions we upgrade to do not); values no version accepts are left out."""
    levels: JsonDict = {}
    for key, value in content.items():
        if key in POWER_LEVEL_SCALARS:
            parsed = parse_power_level(value, room_version)
            if parsed is not None:
                levels[key] = parsed
        elif key in ("events", "notifications", "users"):
            if isinstance(value, Mapping):
                parsed_map = {k: parse_power_level(v, room_version) for k, v in value.items()}
                levels[key] = {k: v for k, v in parsed_map.items() if v is not None}
        else:
            levels[key] = copy.deepcopy(value)
    return levels


def level_to_set_up(levels: Mapping[str, Any]) -> int:
    """The power the upgrader needs to copy the state and bans over (as Synapse reckons it):
    the highest of state_default, ban and every per-event level."""
    events = levels.get("events", {})
    return max(
        levels.get("state_default", 50), levels.get("ban", 50), *events.values(), 0
    )


def restricted_power_levels(
    content: Mapping[str, Any], room_version: RoomVersion
) -> JsonDict | None:
    """The old room's power levels with events_default and invite raised to the greater of
    50 and users_default + 1 (spec); None if they are already that high."""
    users_default = parse_power_level(content.get("users_default", 0), room_version) or 0
    wanted = max(RESTRICTED_LEVEL, users_default + 1)
    restricted = dict(content)
    for key in ("events_default", "invite"):
        current = parse_power_level(content.get(key, 0), room_version)
        if current is None or current < wanted:
            restricted[key] = wanted
    return restricted if restricted != dict(content) else None


def split_canonical_alias(
    content: Mapping[str, Any], server_name: str
) -> tuple[JsonDict, JsonDict]:
    """(old room's, new room's) m.room.canonical_alias after this server's aliases moved: ours
    go to the new room, other servers' stay (they still point at the old room)."""

    def ours(alias: Any) -> bool:
        try:
            return isinstance(alias, str) and split_room_alias(alias)[1] == server_name
        except MatrixError:
            return False

    old = dict(content)
    new: JsonDict = {}
    if ours(content.get("alias")):
        new["alias"] = old.pop("alias")
    alt = content.get("alt_aliases")
    if isinstance(alt, list) and alt:
        new["alt_aliases"] = [a for a in alt if ours(a)]
        old["alt_aliases"] = [a for a in alt if not ours(a)]
        if not old["alt_aliases"]:
            del old["alt_aliases"]
    return old, new


# ----- the handler ------------------------------------------------------------------------------


class RoomUpgradeHandler:
    def __init__(
        self,
        server_name: str,
        clock: Clock,
        creator: EventCreator,
        membership: MembershipHandler,
        events: EventStore,
        state: StateStore,
        contents: StateContents,
        aliases: AliasStore,
        room_directory: RoomDirectoryStore,
        account_data: AccountDataHandler,
        push_rules: PushRulesHandler,
        message_limiter: RateLimiter,
    ) -> None:
        self._server_name = server_name
        self._creator = creator
        self._membership = membership
        self._events = events
        self._state = state
        self._contents = contents
        self._aliases = aliases
        self._room_directory = room_directory
        self._account_data = account_data
        self._push_rules = push_rules
        self._limiter = message_limiter
        # One upgrade of a room at a time in this process; a request arriving during or
        # shortly after one gets that one's answer (see `upgrade_room`).
        self._upgrading = Linearizer("room_upgrades")
        self._recent: LruCache[str, _Upgrade] = LruCache(
            "room_upgrades", UPGRADES_REMEMBERED, ttl_s=UPGRADE_REMEMBERED_S, clock=clock
        )

    async def upgrade_room(
        self,
        requester: Requester,
        room_id: str,
        new_version_id: str,
        additional_creators: Sequence[str] | None,
    ) -> str:
        """The replacement room's ID.

        400 M_UNSUPPORTED_ROOM_VERSION for a version we do not create rooms in; 404 for a room
        we do not know; 403 unless the user may send the tombstone. A second request for the
        same room while (or within 5 minutes after) an upgrade runs gets the same new room if
        it is the same user's, 400 if another's: never two replacement rooms (as Synapse).
        """
        if requester.is_guest:
            raise MatrixError(403, Codes.GUEST_ACCESS_FORBIDDEN, "Guests cannot upgrade rooms")
        check_not_suspended(requester)
        new_version = creatable_room_version(new_version_id)
        creators = _additional_creators(new_version, additional_creators)
        old_version = await require_room(self._events, room_id)
        user_id = requester.user_id
        # 403 unless they are in the room with the power to send the tombstone (spec).
        await self._creator.check_allowed(
            room_id,
            user_id,
            TOMBSTONE,
            {"body": TOMBSTONE_BODY, "replacement_room": room_id},
            state_key="",
        )
        if requester.shadow_banned:
            # As Synapse: answered with a room ID that names nothing, and nothing happens.
            logger.info("%s: dropped upgrade by shadow-banned %s", room_id, user_id)
            return self._creator.new_room_id()
        async with self._upgrading.queue(room_id):
            done = self._recent.get(room_id)
            if done is not None:
                if done.user_id == user_id:
                    return done.replacement_room
                raise MatrixError(
                    400, Codes.UNKNOWN, "An upgrade for this room is currently in progress"
                )
            # Once for the whole upgrade, as for /createRoom.
            check_message_rate(self._limiter, requester)
            new_room_id = await self._upgrade(requester, room_id, old_version, new_version,
                                              creators)
            self._recent.set(room_id, _Upgrade(user_id, new_room_id))
        logger.info("%s upgraded %s (version %s) to %s (version %s)", user_id, room_id,
                    old_version.identifier, new_room_id, new_version.identifier)
        return new_room_id

    async def _upgrade(
        self,
        requester: Requester,
        old_room_id: str,
        old_version: RoomVersion,
        new_version: RoomVersion,
        creators: Sequence[str],
    ) -> str:
        user_id = requester.user_id
        old_create = await self._current_event(old_room_id, CREATE)
        if old_create is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
        if new_version.room_id_is_create_hash:
            # The room ID is the create event's hash: it must exist before the tombstone can
            # name it, and its `predecessor` cannot name the tombstone (spec: MAY be omitted).
            content = upgraded_create_content(old_create, new_version, user_id, None, creators)
            new_room_id, _ = await self._creator.create_room(
                new_version, user_id, content, is_public=False
            )
        else:
            new_room_id = self._creator.new_room_id()
        final_levels: list[JsonDict | None] = []

        async def set_up_new_room(tombstone: Event) -> None:
            # With the old room's writer held: its state cannot change under us.
            if not new_version.room_id_is_create_hash:
                content = upgraded_create_content(
                    old_create, new_version, user_id, tombstone.event_id, creators
                )
                await self._creator.create_room(
                    new_version, user_id, content, is_public=False, room_id=new_room_id
                )
            final_levels.append(
                await self._copy_state(requester, old_room_id, old_version, new_room_id,
                                       new_version, creators)
            )

        await self._creator.send(
            old_room_id,
            user_id,
            TOMBSTONE,
            {"body": TOMBSTONE_BODY, "replacement_room": new_room_id},
            state_key="",
            before_persist=set_up_new_room,
        )
        await self._move_aliases(user_id, old_room_id, new_room_id)
        await self._transfer_room_state(old_room_id, new_room_id)
        await self._restrict_old_room(user_id, old_room_id, old_version)
        if final_levels[0] is not None:
            # The upgrader's temporary power goes last, as in Synapse.
            await self._creator.send(new_room_id, user_id, POWER_LEVELS, final_levels[0],
                                     state_key="")
        return new_room_id

    async def _copy_state(
        self,
        requester: Requester,
        old_room_id: str,
        old_version: RoomVersion,
        new_room_id: str,
        new_version: RoomVersion,
        creators: Sequence[str],
    ) -> JsonDict | None:
        """Join the upgrader to the new room and copy the old room's state and bans over;
        returns the power levels the new room should end with, or None if it already has
        them."""
        user_id = requester.user_id
        old_ids = await self._state.get_current_state_ids(old_room_id)
        old_events = await self._events.get_events(old_ids.values())
        old_state = {key: old_events[eid] for key, eid in old_ids.items() if eid in old_events}
        old_levels_event = old_state.get((POWER_LEVELS, ""))
        levels = (
            normalised_power_levels(old_levels_event.content, old_version)
            if old_levels_event is not None
            else default_power_levels(user_id, new_version)
        )
        users: JsonDict = levels.setdefault("users", {})
        if new_version.room_id_is_create_hash:
            # Creators have infinite power and may not be listed (room v12).
            for creator in (user_id, *creators):
                users.pop(creator, None)
            setup_levels = levels
        else:
            own = user_power_level(user_id, old_state, old_version)
            if own == INFINITE_POWER:
                # A creator of a v12 room moving to an older version: they could do anything
                # there, so the most power the room names or any of its events needs.
                own = max([100, *users.values(), level_to_set_up(levels)])
                users[user_id] = own
            setup_levels = copy.deepcopy(levels)
            setup_levels["users"][user_id] = max(int(own), level_to_set_up(levels))

        await self._membership.join(requester, new_room_id)
        await self._creator.send(new_room_id, user_id, POWER_LEVELS, setup_levels, state_key="")
        copied = [key for key in old_state if key[0] in COPIED_STATE and key[1] == ""]
        if old_state[(CREATE, "")].content.get("type") == SPACE:
            # As Synapse: a space keeps its children (an emptied one is a removed child).
            copied += [key for key in old_state if key[0] == SPACE_CHILD]
        contents = await self._contents.contents_of([old_ids[key] for key in copied])
        for event_type, state_key in copied:
            content = contents.get(old_ids[(event_type, state_key)])
            if not content:
                # Redacted, or (a space child) removed: nothing to carry over.
                continue
            await self._send_best_effort(new_room_id, user_id, event_type, content, state_key)
        bans = await self._state.get_current_members(old_room_id, "ban")
        ban_contents = await self._contents.contents_of(list(bans.values()))
        for banned, event_id in sorted(bans.items()):
            await self._send_best_effort(new_room_id, user_id, MEMBER,
                                         {**ban_contents.get(event_id, {}), "membership": "ban"},
                                         banned)
        return levels if levels != setup_levels else None

    async def _move_aliases(self, user_id: str, old_room_id: str, new_room_id: str) -> None:
        moved = await self._aliases.move_aliases(old_room_id, new_room_id)
        if moved:
            logger.info("moved aliases %s from %s to %s", moved, old_room_id, new_room_id)
        canonical = (await self._contents.current_contents(old_room_id, [CANONICAL_ALIAS])).get(
            CANONICAL_ALIAS
        )
        if canonical is None:
            return
        old_content, new_content = split_canonical_alias(canonical, self._server_name)
        await self._send_best_effort(old_room_id, user_id, CANONICAL_ALIAS, old_content, "")
        await self._send_best_effort(new_room_id, user_id, CANONICAL_ALIAS, new_content, "")

    async def joined_remote_room(self, room_id: str) -> None:
        """This server just joined `room_id`, held elsewhere: if it replaces a room we know,
        what our side kept of the old room moves to it, as after an upgrade made here (as
        Synapse does on a remote join)."""
        create = await self._current_event(room_id, CREATE)
        predecessor = create.content.get("predecessor") if create is not None else None
        old_room_id = predecessor.get("room_id") if isinstance(predecessor, dict) else None
        if not isinstance(old_room_id, str) or await self._events.get_room_version(
            old_room_id
        ) is None:
            return
        logger.info("%s replaces %s: carrying local state over", room_id, old_room_id)
        await self._transfer_room_state(old_room_id, room_id)
        moved = await self._aliases.move_aliases(old_room_id, room_id)
        if moved:
            logger.info("moved aliases %s from %s to %s", moved, old_room_id, room_id)

    async def _transfer_room_state(self, old_room_id: str, new_room_id: str) -> None:
        """Each local member's tags, direct chat entry and push rules follow the room (spec:
        "the server should automatically transfer ... notifications, tags"), and so does
        the room's entry in our directory (Synapse)."""
        joined = await self._state.get_current_members(old_room_id, "join")
        for member in sorted(joined):
            if split_user_id(member)[1] != self._server_name:
                continue
            await self._account_data.copy_to_upgraded_room(member, old_room_id, new_room_id)
            await self._push_rules.copy_room_rules(member, old_room_id, new_room_id)
        if await self._room_directory.get_visibility(old_room_id):
            await self._room_directory.set_visibility(old_room_id, False)
            await self._room_directory.set_visibility(new_room_id, True)

    async def _restrict_old_room(
        self, user_id: str, old_room_id: str, old_version: RoomVersion
    ) -> None:
        levels = await self._current_event(old_room_id, POWER_LEVELS)
        if levels is None:
            return
        restricted = restricted_power_levels(levels.content, old_version)
        if restricted is not None:
            await self._send_best_effort(old_room_id, user_id, POWER_LEVELS, restricted, "")

    async def _send_best_effort(
        self, room_id: str, sender: str, event_type: str, content: Mapping[str, Any],
        state_key: str,
    ) -> None:
        """Send state the upgrade would like but does not depend on: a refusal (the auth
        rules, odd old content) is logged, and the upgrade goes on, as in Synapse."""
        try:
            await self._creator.send(room_id, sender, event_type, content, state_key=state_key)
        except MatrixError as e:
            logger.warning("room upgrade: could not send %s/%s in %s: %s", event_type,
                           state_key, room_id, e)

    async def _current_event(self, room_id: str, event_type: str) -> Event | None:
        event_id = await self._state.get_current_state_event_id(room_id, event_type, "")
        return await self._events.get_event(event_id) if event_id is not None else None


def _additional_creators(
    new_version: RoomVersion, additional_creators: Sequence[str] | None
) -> list[str]:
    """The `additional_creators` of the request, for a version that has them; ignored for
    others (spec)."""
    if not new_version.room_id_is_create_hash or not additional_creators:
        return []
    for user_id in additional_creators:
        split_user_id(user_id)
    return list(dict.fromkeys(additional_creators))
