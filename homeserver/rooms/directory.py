"""Room aliases and the published room directory.

Aliases (client-server API "Room aliases"): this server hosts `#local:our.server` aliases.
Anyone may resolve one; a member of the room may create one; its creator, a room member
with the power to change `m.room.canonical_alias`, or a server admin may delete it.
Aliases on other servers are resolved by asking their server (federation `query/directory`,
through `federation/queries.py`), and other servers' directories are listed through their
federation `publicRooms`.

`DirectoryHandler.validate_canonical_alias` is what the state-sending path calls before an
`m.room.canonical_alias` event is sent: new aliases must be well formed (400
M_INVALID_PARAM) and point to the room (400 M_BAD_ALIAS).

The published room directory ("Published room directory"): rooms are listed by joined
members, most first, then by room ID. Pagination tokens name the last (or first) room of
a page by that sort key, so paging stays in step when rooms are published, unpublished
or change size between requests: nothing is repeated, and at most a room whose size
changed across the boundary is skipped.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import logging
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError
from homeserver.events.auth import server_of
from homeserver.events.model import Event
from homeserver.events.redaction import prune_event_dict
from homeserver.events.types import (
    AVATAR,
    CANONICAL_ALIAS,
    CREATE,
    ENCRYPTION,
    GUEST_ACCESS,
    HISTORY_VISIBILITY,
    JOIN_RULES,
    NAME,
    TOPIC,
)
from homeserver.identifiers import check_room_id, is_valid_server_name, split_room_alias
from homeserver.rooms.creator import EventCreator
from homeserver.rooms.lookup import require_room
from homeserver.rooms.power import RoomPower
from homeserver.rooms.visibility import WORLD_READABLE, HistoryVisibility, visibility_from_content
from storage.stores.aliases import AliasStore
from storage.stores.directory import PublishedRoom, RoomDirectoryStore
from storage.stores.events import EventStore
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore

if TYPE_CHECKING:
    from federation.queries import RemoteQueries

logger = logging.getLogger(__name__)

VISIBILITIES = ("public", "private")
# Join rules under which members of other rooms (the `allow` list) may join.
RESTRICTED_JOIN_RULES = ("restricted", "knock_restricted")
# A page of the room directory holds at most this many rooms, whatever the client asks.
MAX_PUBLIC_ROOMS_LIMIT = 1000


def _not_guest(requester: Requester, action: str) -> None:
    if requester.is_guest:
        raise MatrixError(403, Codes.GUEST_ACCESS_FORBIDDEN, f"Guests cannot {action}")


class StateContents:
    """The contents of state events as clients see them: what the directory shows of a
    room and reads of its canonical alias."""

    def __init__(self, events: EventStore, state: StateStore) -> None:
        self._events = events
        self._state = state

    async def current_contents(
        self, room_id: str, event_types: Iterable[str]
    ) -> dict[str, Mapping[str, Any]]:
        """event type -> content of the current state event with an empty state key."""
        ids = {}
        for event_type in event_types:
            event_id = await self._state.get_current_state_event_id(room_id, event_type, "")
            if event_id is not None:
                ids[event_type] = event_id
        contents = await self.contents_of(ids.values())
        return {t: contents[eid] for t, eid in ids.items() if eid in contents}

    async def contents_of(self, event_ids: Collection[str]) -> dict[str, Mapping[str, Any]]:
        """event ID -> content as clients see it (redacted events lose their content)."""
        loaded = await self._events.get_events(event_ids)
        redacted = await self._events.get_redactions(list(loaded))
        return {eid: _visible_content(event, eid in redacted) for eid, event in loaded.items()}


def _visible_content(event: Event, redacted: bool) -> Mapping[str, Any]:
    if not redacted:
        return event.content
    content = prune_event_dict(event.pdu, event.room_version).get("content", {})
    return content if isinstance(content, dict) else {}


# ----- aliases ------------------------------------------------------------------------------


class DirectoryHandler:
    def __init__(
        self,
        server_name: str,
        aliases: AliasStore,
        events: EventStore,
        state: StateStore,
        rooms: RoomStore,
        contents: StateContents,
        power: RoomPower,
        visibility: HistoryVisibility,
        creator: EventCreator,
        remote: RemoteQueries | None = None,
    ) -> None:
        self._server_name = server_name
        # Other servers' answers (`federation.queries.RemoteQueries`); None: local only.
        self.remote = remote
        self._aliases = aliases
        self._events = events
        self._state = state
        self._rooms = rooms
        self._contents = contents
        self._power = power
        self._visibility = visibility
        self._creator = creator

    def _check_local_alias(self, room_alias: str) -> None:
        _, server = split_room_alias(room_alias)
        if server != self._server_name:
            raise MatrixError(
                400, Codes.INVALID_PARAM, f"Room alias must be on this server ({self._server_name})"
            )

    async def create_association(self, requester: Requester, room_alias: str, room_id: str) -> None:
        """PUT /directory/room/{roomAlias}: point one of our aliases at a room.

        400 M_INVALID_PARAM for a malformed or remote alias or a malformed room ID, 404 for
        an unknown room, 403 unless the user is joined (or a server admin), 409 if taken.
        """
        _not_guest(requester, "create room aliases")
        self._check_local_alias(room_alias)
        check_room_id(room_id)
        await require_room(self._events, room_id)
        if not requester.is_admin and not await self._rooms.is_joined(room_id, requester.user_id):
            raise MatrixError(
                403, Codes.FORBIDDEN, "You must be joined to the room to give it an alias"
            )
        if not await self._aliases.create_alias(room_alias, room_id, requester.user_id):
            raise MatrixError(409, Codes.UNKNOWN, f"Room alias {room_alias} already exists")
        logger.info("alias %s -> %s created by %s", room_alias, room_id, requester.user_id)

    async def resolve_room_alias(self, room_alias: str) -> tuple[str, list[str]]:
        """(room ID, servers that can help join it) for an alias; 404 M_NOT_FOUND if none.
        Another server's alias is asked of that server (502 M_UNKNOWN if it cannot answer)."""
        _, server = split_room_alias(room_alias)
        if server != self._server_name and self.remote is not None:
            return await self.remote.resolve_room_alias(room_alias)
        return await self.resolve_local_alias(room_alias)

    async def resolve_local_alias(self, room_alias: str) -> tuple[str, list[str]]:
        """(room ID, this server then those of joined members) for one of our aliases, as
        the federation directory query answers; 404 M_NOT_FOUND for any other alias."""
        room_id = await self.get_room_id_for_alias(room_alias)
        return room_id, await self._servers_in_room(room_id)

    async def resolve_room(self, room_id_or_alias: str) -> str:
        """A room ID, from a room ID or an alias (as /join and /knock take them): 400
        M_INVALID_PARAM if it is neither, 404 M_NOT_FOUND for an alias that is not ours
        or points nowhere. Whether the room exists is for the caller to check."""
        if room_id_or_alias.startswith("#"):
            return await self.get_room_id_for_alias(room_id_or_alias)
        check_room_id(room_id_or_alias)
        return room_id_or_alias

    async def get_room_id_for_alias(self, room_alias: str) -> str:
        """The room an alias points at: 400 M_INVALID_PARAM if malformed, 404 M_NOT_FOUND
        if unknown or on another server."""
        _, server = split_room_alias(room_alias)
        if server != self._server_name:
            # A federation directory query.
            raise MatrixError(
                404,
                Codes.NOT_FOUND,
                f"Room alias {room_alias} not found: aliases on other servers cannot be"
                " resolved yet",
            )
        room_id = await self._aliases.get_room_id(room_alias)
        if room_id is None:
            raise MatrixError(404, Codes.NOT_FOUND, f"Room alias {room_alias} not found")
        return room_id

    async def _servers_in_room(self, room_id: str) -> list[str]:
        """This server first, then the servers of joined members, most members first."""
        members = await self._state.get_current_members(room_id, "join")
        counts = Counter(server_of(user_id) for user_id in members)
        counts.pop(self._server_name, None)
        others = sorted(counts, key=lambda server: (-counts[server], server))
        return [self._server_name, *others]

    async def delete_association(self, requester: Requester, room_alias: str) -> None:
        """DELETE /directory/room/{roomAlias}, then drop the alias from the room's
        `m.room.canonical_alias` event if it is there and the user may change it."""
        _not_guest(requester, "delete room aliases")
        self._check_local_alias(room_alias)
        mapping = await self._aliases.get_alias(room_alias)
        if mapping is None:
            raise MatrixError(404, Codes.NOT_FOUND, f"Room alias {room_alias} not found")
        allowed = (
            requester.is_admin
            or mapping.creator == requester.user_id
            or await self._power.can_send_state(mapping.room_id, requester.user_id, CANONICAL_ALIAS)
        )
        if not allowed:
            raise MatrixError(403, Codes.FORBIDDEN, "You don't have permission to delete the alias")
        room_id = await self._aliases.delete_alias(room_alias)
        if room_id is None:
            # Deleted by someone else in the meantime.
            raise MatrixError(404, Codes.NOT_FOUND, f"Room alias {room_alias} not found")
        logger.info("alias %s -> %s deleted by %s", room_alias, room_id, requester.user_id)
        await self._remove_from_canonical_alias(requester, room_id, room_alias)

    async def _remove_from_canonical_alias(
        self, requester: Requester, room_id: str, room_alias: str
    ) -> None:
        # The spec lets servers do this and asks that the deletion succeed even when the
        # user may not change the event: so this is best effort.
        content = (await self._contents.current_contents(room_id, [CANONICAL_ALIAS])).get(
            CANONICAL_ALIAS
        )
        if not content:
            return
        new_content = dict(content)
        changed = False
        if new_content.get("alias") == room_alias:
            del new_content["alias"]
            changed = True
        alt = new_content.get("alt_aliases")
        if isinstance(alt, list) and room_alias in alt:
            new_content["alt_aliases"] = [a for a in alt if a != room_alias]
            changed = True
        if not changed:
            return
        try:
            await self._creator.send(
                room_id, requester.user_id, CANONICAL_ALIAS, new_content, state_key=""
            )
        except MatrixError as e:
            logger.info(
                "could not drop deleted alias %s from the canonical alias of %s: %s",
                room_alias,
                room_id,
                e,
            )

    async def get_local_aliases(self, requester: Requester, room_id: str) -> list[str]:
        """GET /rooms/{roomId}/aliases: for members, server admins, or anyone if the
        room is world_readable; 403 otherwise (unknown rooms included)."""
        check_room_id(room_id)
        allowed = (
            requester.is_admin
            or await self._rooms.is_joined(room_id, requester.user_id)
            or await self._visibility.is_world_readable(room_id)
        )
        if not allowed:
            raise MatrixError(403, Codes.FORBIDDEN, "You are not a member of the room")
        return await self._aliases.get_aliases_for_room(room_id)

    async def validate_canonical_alias(self, room_id: str, content: Mapping[str, Any]) -> None:
        """Check the content of an `m.room.canonical_alias` event about to be sent in the room.

        `alias` may be absent, null or empty; otherwise it and every entry of
        `alt_aliases` (a list if present) must be room aliases: 400 M_INVALID_PARAM if not.
        Aliases the current event does not already name must point to this room: 400
        M_BAD_ALIAS if one is missing or points elsewhere. (Ones that drifted since they
        were published do not block other changes to the event.) Other servers' aliases
        need a federation query to check; until then they are refused.
        """
        wanted = _canonical_aliases(content, strict=True)
        previous_content = (await self._contents.current_contents(room_id, [CANONICAL_ALIAS])).get(
            CANONICAL_ALIAS, {}
        )
        previous = set(_canonical_aliases(previous_content, strict=False))
        for room_alias in wanted:
            if room_alias in previous:
                continue
            _, server = split_room_alias(room_alias)
            if server != self._server_name:
                raise MatrixError(
                    400,
                    Codes.BAD_ALIAS,
                    f"Cannot check that {room_alias} points to this room: it is on another server",
                )
            if await self._aliases.get_room_id(room_alias) != room_id:
                raise MatrixError(
                    400, Codes.BAD_ALIAS, f"The alias {room_alias} does not point to this room"
                )


def _canonical_aliases(content: Mapping[str, Any], strict: bool) -> list[str]:
    """The aliases an m.room.canonical_alias content names, in order, without repeats.

    `strict`: 400 M_INVALID_PARAM for anything malformed; otherwise skip it.
    """
    found: list[str] = []

    def add(value: Any, what: str) -> None:
        try:
            if not isinstance(value, str):
                raise MatrixError(400, Codes.INVALID_PARAM, f"{what} must be a room alias")
            split_room_alias(value)
        except MatrixError:
            if strict:
                raise
            return
        if value not in found:
            found.append(value)

    alias = content.get("alias")
    if alias is not None and alias != "":
        add(alias, "'alias'")
    if "alt_aliases" in content:
        alt = content["alt_aliases"]
        if not isinstance(alt, list):
            if strict:
                raise MatrixError(400, Codes.INVALID_PARAM, "'alt_aliases' must be a list")
            return found
        for value in alt:
            add(value, "Every entry of 'alt_aliases'")
    return found


# ----- the published room directory ---------------------------------------------------------


@dataclass(frozen=True)
class PublicRoomsQuery:
    limit: int | None = None
    since: str | None = None
    search_term: str | None = None
    # Room types to include; None in the list stands for rooms without a type.
    room_types: Sequence[str | None] | None = None
    third_party_instance_id: str | None = None


_SortKey = tuple[int, str]


def _sort_key(room: PublishedRoom) -> _SortKey:
    return (-room.joined_members, room.room_id)


def _encode_token(forward: bool, key: _SortKey) -> str:
    raw = json.dumps(["f" if forward else "b", -key[0], key[1]], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode("utf-8")).rstrip(b"=").decode("ascii")


def _decode_token(token: str) -> tuple[bool, _SortKey]:
    """(forward, sort key) from a token `_encode_token` made; 400 M_INVALID_PARAM otherwise."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        direction, joined, room_id = json.loads(raw.decode("utf-8"))
        if direction not in ("f", "b") or type(joined) is not int or not isinstance(room_id, str):
            raise ValueError(token)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid pagination token 'since'") from None
    return direction == "f", (-joined, room_id)


class RoomListHandler:
    def __init__(
        self,
        server_name: str,
        store: RoomDirectoryStore,
        contents: StateContents,
        power: RoomPower,
        remote: RemoteQueries | None = None,
    ) -> None:
        self._server_name = server_name
        # Other servers' answers (`federation.queries.RemoteQueries`); None: local only.
        self.remote = remote
        self._store = store
        self._contents = contents
        self._power = power

    async def get_visibility(self, room_id: str) -> str:
        public = await self._store.get_visibility(room_id)
        if public is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Room not found")
        return "public" if public else "private"

    async def set_visibility(self, requester: Requester, room_id: str, visibility: str) -> None:
        """Publish or unpublish a room: server admins, and members who may change the
        room's canonical alias (the same power that curates how the room is found)."""
        _not_guest(requester, "publish rooms")
        if visibility not in VISIBILITIES:
            raise MatrixError(
                400, Codes.INVALID_PARAM, "'visibility' must be 'public' or 'private'"
            )
        if await self._store.get_visibility(room_id) is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Room not found")
        if not requester.is_admin and not await self._power.can_send_state(
            room_id, requester.user_id, CANONICAL_ALIAS
        ):
            raise MatrixError(
                403,
                Codes.FORBIDDEN,
                "You need the power to change the room's canonical alias to publish it",
            )
        await self._store.set_visibility(room_id, visibility == "public")
        logger.info("room %s made %s in the directory by %s", room_id, visibility, requester.user_id)

    def _remote_for(self, server: str | None) -> RemoteQueries | None:
        """How to reach `server`'s directory if it is another server's, None if it is ours
        (400 M_INVALID_PARAM if it is not a server name; 404 M_NOT_FOUND without
        federation)."""
        if server is None or server == self._server_name:
            return None
        if not is_valid_server_name(server):
            raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid server name: {server[:100]!r}")
        if self.remote is None:
            raise MatrixError(
                404,
                Codes.NOT_FOUND,
                f"Cannot list the room directory of {server}: other servers' directories are"
                " not available",
            )
        return self.remote

    async def get_public_rooms(self, server: str | None, query: PublicRoomsQuery) -> dict[str, Any]:
        """A page of GET/POST /publicRooms: ours, or through federation another server's.

        Every published room is read with its member count (cheap: see the store), then
        filtered here: matching the search term needs each room's name, topic and alias,
        read from their (cached) state events and compared with Unicode case folding,
        which SQL cannot do the same way on both engines. Only the rooms on the page are
        described without a filter.
        """
        if query.limit is not None and query.limit < 0:
            raise MatrixError(400, Codes.INVALID_PARAM, "'limit' must not be negative")
        remote = self._remote_for(server)
        if remote is not None and server is not None:
            return await remote.get_public_rooms(server, query)
        # 0, like no limit, means "as many as you will give".
        limit = min(query.limit or MAX_PUBLIC_ROOMS_LIMIT, MAX_PUBLIC_ROOMS_LIMIT)
        position = _decode_token(query.since) if query.since is not None else None

        rooms = sorted(await self._store.get_published_rooms(), key=_sort_key)
        summaries: dict[str, dict[str, Any]] = {}
        term = (query.search_term or "").strip().casefold()
        room_types = list(query.room_types) if query.room_types else None
        if query.third_party_instance_id is not None:
            # No application service bridges third-party networks into our directory.
            rooms = []
        elif term or room_types is not None:
            summaries = await self._summaries(rooms)
            rooms = [
                room
                for room in rooms
                if _matches(summaries[room.room_id], term, room_types)
            ]

        keys = [_sort_key(room) for room in rooms]
        if position is None:
            start, end = 0, min(limit, len(rooms))
        elif position[0]:
            start = bisect.bisect_right(keys, position[1])
            end = min(start + limit, len(rooms))
        else:
            end = bisect.bisect_left(keys, position[1])
            start = max(0, end - limit)
        page = rooms[start:end]
        missing = [room for room in page if room.room_id not in summaries]
        if missing:
            summaries.update(await self._summaries(missing))

        response: dict[str, Any] = {
            "chunk": [summaries[room.room_id] for room in page],
            "total_room_count_estimate": len(rooms),
        }
        if page and end < len(rooms):
            response["next_batch"] = _encode_token(True, keys[end - 1])
        if page and start > 0:
            response["prev_batch"] = _encode_token(False, keys[start])
        return response

    async def _summaries(self, rooms: Sequence[PublishedRoom]) -> dict[str, dict[str, Any]]:
        state_ids = await self._store.get_summary_state_ids([room.room_id for room in rooms])
        contents = await self._contents.contents_of(
            [eid for ids in state_ids.values() for eid in ids.values()]
        )
        return {
            room.room_id: room_summary(
                room,
                {t: contents[eid] for t, eid in state_ids[room.room_id].items() if eid in contents},
            )
            for room in rooms
        }


def room_summary(room: PublishedRoom, state: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The directory entry ("PublishedRoomsChunk") of a room from its summary state
    (event type -> content)."""
    return describe_room(room.room_id, room.joined_members, state)

def describe_room(
    room_id: str, joined_members: int, state: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The spec's `RoomSummary` of a room from its state (event type -> content)."""

    def value(event_type: str, key: str) -> Any:
        return state.get(event_type, {}).get(key)

    join_rule = value(JOIN_RULES, "join_rule")
    summary: dict[str, Any] = {
        "room_id": room_id,
        "num_joined_members": joined_members,
        "world_readable": visibility_from_content(state.get(HISTORY_VISIBILITY)) == WORLD_READABLE,
        "guest_can_join": value(GUEST_ACCESS, "guest_access") == "can_join",
        "join_rule": join_rule if isinstance(join_rule, str) else "invite",
    }
    optional = {
        "name": value(NAME, "name"),
        "topic": plain_topic(state.get(TOPIC, {})),
        "canonical_alias": value(CANONICAL_ALIAS, "alias"),
        "avatar_url": value(AVATAR, "url"),
        "room_type": value(CREATE, "type"),
        "encryption": value(ENCRYPTION, "algorithm"),
    }
    for key, item in optional.items():
        if isinstance(item, str) and item:
            summary[key] = item
    if join_rule in RESTRICTED_JOIN_RULES:
        allow = value(JOIN_RULES, "allow")
        summary["allowed_room_ids"] = [
            condition["room_id"]
            for condition in (allow if isinstance(allow, list) else [])
            if isinstance(condition, dict)
            and condition.get("type") == "m.room_membership"
            and isinstance(condition.get("room_id"), str)
        ]
    return summary


def plain_topic(content: Mapping[str, Any]) -> str | None:
    """The text/plain topic: from the `m.topic` content block if it has one, else `topic`."""
    block = content.get("m.topic")
    if isinstance(block, dict) and isinstance(block.get("m.text"), list):
        for representation in block["m.text"]:
            if (
                isinstance(representation, dict)
                and representation.get("mimetype", "text/plain") == "text/plain"
                and isinstance(representation.get("body"), str)
            ):
                return representation["body"]
    topic = content.get("topic")
    return topic if isinstance(topic, str) else None


def _matches(
    summary: Mapping[str, Any], term: str, room_types: Sequence[str | None] | None
) -> bool:
    if room_types is not None and summary.get("room_type") not in room_types:
        return False
    if not term:
        return True
    return any(
        term in value.casefold()
        for value in (summary.get("name"), summary.get("topic"), summary.get("canonical_alias"))
        if isinstance(value, str)
    )
