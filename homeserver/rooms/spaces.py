"""Spaces: walking a space's tree of rooms (client-server `GET /v1/rooms/{roomId}/hierarchy`,
federation `GET /v1/hierarchy/{roomId}`) and summarising one room (`GET /v1/room_summary`).

The walk is depth first from the requested space. A room's children are its
`m.space.child` state events whose `via` is a non-empty list, in the spec's order (a valid
`order` first, compared by code point; then the event's `origin_server_ts`; then the room
ID), at most MAX_CHILDREN_PER_SPACE of them. Each room is visited once, so a space that
contains itself, or a loop of spaces, ends. Only spaces (`m.space` rooms) have their
children walked and listed in `children_state`.

A room this server is in is described from its current state. A room it is not in is
asked of the servers in the child event's `via`, one after another, through the
federation hierarchy endpoint (`RemoteQueries.get_space_hierarchy`, which caches answers
briefly); a room none of them describes is left out, the request does not fail. A remote
space's answer also describes its children, which the walk then uses instead of asking
again (a child that is itself a space is asked for its own children when the walk goes
into it).

Who sees what (the spec's list for the `rooms` of the client hierarchy): a room is shown
to a user who is joined or invited, when its join rule is `public`, `knock` or
`knock_restricted`, when its history is `world_readable`, or when it is `restricted` (or
`knock_restricted`) and the user is joined to one of its allowed rooms. Another server
sees the same with "a user of that server" for "the user" (its users' join or invite in
the room, or a join in an allowed room); the children it may not see are named in
`inaccessible_children`.

Pagination: the walk's remaining queue is kept in memory under a random `next_batch`
token for PAGINATION_TTL_S, with who asked, for which room and with which
`suggested_only`/`max_depth`; a `from` that is unknown, expired, another user's, for
another room or with other parameters is 400 M_INVALID_PARAM. Keeping the queue (as
Synapse does, in its database) rather than walking again from the root makes each page
cost what it shows. Tokens do not survive a restart and are known only to the process
that made them.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from homeserver.auth.tokens import Requester
from homeserver.caches import LruCache
from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from homeserver.events.auth import server_of
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.events.types import ENCRYPTION, SPACE_CHILD
from homeserver.identifiers import check_room_id
from homeserver.rooms.directory import RESTRICTED_JOIN_RULES, StateContents, describe_room
from storage.stores.directory import ROOM_SUMMARY_STATE_TYPES
from storage.stores.events import EventStore
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore

if TYPE_CHECKING:
    from federation.queries import RemoteQueries

logger = logging.getLogger(__name__)

SPACE_ROOM_TYPE = "m.space"
# The client hierarchy's page size when the client names none, and the most it gets.
DEFAULT_LIMIT = 50
MAX_LIMIT = 50
# How deep a walk goes when the client names no depth, and the deepest it may ask for.
DEFAULT_MAX_DEPTH = 50
MAX_DEPTH = 50
# Children beyond this many (in the spec's order) of one space are not walked.
MAX_CHILDREN_PER_SPACE = 50
PAGINATION_TTL_S = 5 * 60.0
PAGINATION_SESSIONS = 10_000
# A valid `order`: at most this many characters, each printable ASCII.
MAX_ORDER_LENGTH = 50
# Join rules under which anyone may join or knock.
OPEN_JOIN_RULES = ("public", "knock", "knock_restricted")
# The state a summary is read from: the directory's, and whether the room is encrypted.
SUMMARY_TYPES = (*ROOM_SUMMARY_STATE_TYPES, ENCRYPTION)


def valid_order(order: object) -> str | None:
    """The child's `order` if it is valid (a string of at most 50 printable ASCII
    characters), else None."""
    if not isinstance(order, str) or len(order) > MAX_ORDER_LENGTH:
        return None
    if any(not 0x20 <= ord(c) <= 0x7E for c in order):
        return None
    return order


def child_sort_key(child: Mapping[str, Any]) -> tuple[int, str, int, str]:
    """The spec's order of a space's children, for stripped `m.space.child` events with
    `origin_server_ts`: valid `order`s first by code point, then timestamp, then room ID."""
    content = child.get("content")
    order = valid_order(content.get("order") if isinstance(content, dict) else None)
    ts = child.get("origin_server_ts")
    return (
        0 if order is not None else 1,
        order or "",
        ts if isinstance(ts, int) else 0,
        str(child.get("state_key", "")),
    )


def child_via(child: Mapping[str, Any]) -> list[str]:
    """The servers of a child event's `via`; empty for an invalid child (to be ignored)."""
    content = child.get("content")
    via = content.get("via") if isinstance(content, dict) else None
    if not isinstance(via, list):
        return []
    return [server for server in via if isinstance(server, str) and server]


def ordered_children(
    children_state: Sequence[Mapping[str, Any]], suggested_only: bool
) -> list[dict[str, Any]]:
    """The children to walk: valid ones (a room ID and a `via`), suggested ones only if
    asked, in the spec's order, at most MAX_CHILDREN_PER_SPACE."""
    children = [
        child
        for child in children_state
        if isinstance(child, dict)
        and child.get("type") == SPACE_CHILD
        and isinstance(child.get("state_key"), str)
        and child["state_key"].startswith("!")
        and child_via(child)
        and (not suggested_only or child["content"].get("suggested") is True)
    ]
    return sorted(children, key=child_sort_key)[:MAX_CHILDREN_PER_SPACE]


def _join_rule(summary: Mapping[str, Any]) -> object:
    """The room's join rule, or None when its room version (if we know it) has no such
    rule: the spec counts knock rules only "in a room version that supports those
    settings", and the auth rules treat the others as unusable too."""
    rule = summary.get("join_rule")
    version = KNOWN_ROOM_VERSIONS.get(str(summary.get("room_version")))
    if version is None:
        return rule
    supported = {
        "knock": version.knock,
        "restricted": version.restricted_join_rule,
        "knock_restricted": version.knock_restricted_join_rule,
    }
    return rule if supported.get(str(rule), True) else None


def open_to_anyone(summary: Mapping[str, Any]) -> bool:
    return _join_rule(summary) in OPEN_JOIN_RULES or summary.get("world_readable") is True


def _allowed_rooms(summary: Mapping[str, Any]) -> list[str]:
    if _join_rule(summary) not in RESTRICTED_JOIN_RULES:
        return []
    allowed = summary.get("allowed_room_ids")
    return [r for r in allowed if isinstance(r, str)] if isinstance(allowed, list) else []


@dataclass
class _QueueEntry:
    room_id: str
    via: list[str]
    depth: int
    # The room's summary as another server gave it (with its parent's answer), if any.
    remote: dict[str, Any] | None = None
    # The parent's server named it in `inaccessible_children`: not to be asked again.
    inaccessible: bool = False


@dataclass
class _Described:
    """A room as the walk found it: its summary (None if nobody could describe it), and
    what another server's answer said of its children."""

    summary: dict[str, Any] | None
    remote_children: dict[str, dict[str, Any]] = field(default_factory=dict)
    inaccessible_children: frozenset[str] = frozenset()


@dataclass
class _Walk:
    """A client hierarchy walk between pages."""

    user_id: str
    room_id: str
    suggested_only: bool
    max_depth: int
    queue: list[_QueueEntry]
    visited: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class HierarchyQuery:
    suggested_only: bool = False
    limit: int | None = None
    max_depth: int | None = None
    from_token: str | None = None


class SpaceHierarchyHandler:
    def __init__(
        self,
        server_name: str,
        clock: Clock,
        events: EventStore,
        state: StateStore,
        rooms: RoomStore,
        contents: StateContents,
        remote: RemoteQueries | None,
        resolve_alias: Callable[[str], Awaitable[tuple[str, list[str]]]],
    ) -> None:
        self._server_name = server_name
        self._events = events
        self._state = state
        self._rooms = rooms
        self._contents = contents
        # None: federation is off and only rooms this server is in are described.
        self._remote = remote
        # Room alias -> (room ID, servers that know the room): `DirectoryHandler`'s.
        self._resolve_alias = resolve_alias
        self._walks: LruCache[str, _Walk] = LruCache(
            "space_hierarchy_walks", PAGINATION_SESSIONS, ttl_s=PAGINATION_TTL_S, clock=clock
        )

    # ----- client hierarchy -----------------------------------------------------------------

    async def get_hierarchy(
        self, requester: Requester, room_id: str, query: HierarchyQuery
    ) -> dict[str, Any]:
        """A page of the space tree under `room_id` for the requester; 403 M_FORBIDDEN when
        the requester may not see the space (or this server is not in it)."""
        check_room_id(room_id)
        user_id = requester.user_id
        limit = min(query.limit or DEFAULT_LIMIT, MAX_LIMIT)
        max_depth = DEFAULT_MAX_DEPTH if query.max_depth is None else query.max_depth
        max_depth = min(max_depth, MAX_DEPTH)
        root = await self._local_summary(room_id)
        if root is None or not await self._user_may_see(user_id, root):
            raise MatrixError(
                403, Codes.FORBIDDEN, f"You cannot view or peek on the space {room_id}"
            )
        if query.from_token is not None:
            walk = self._walks.get(query.from_token)
            if (
                walk is None
                or walk.user_id != user_id
                or walk.room_id != room_id
                or walk.suggested_only != query.suggested_only
                or walk.max_depth != max_depth
            ):
                raise MatrixError(
                    400,
                    Codes.INVALID_PARAM,
                    "Unknown 'from' token, or suggested_only or max_depth changed while paging",
                )
            # A token is good for one page: its walk moves on.
            self._walks.pop(query.from_token)
        else:
            walk = _Walk(
                user_id, room_id, query.suggested_only, max_depth, [_QueueEntry(room_id, [], 0)]
            )

        rooms: list[dict[str, Any]] = []
        while walk.queue and len(rooms) < limit:
            entry = walk.queue.pop(0)
            if entry.room_id in walk.visited:
                continue
            walk.visited.add(entry.room_id)
            described = await self._describe_for_walk(entry, walk.suggested_only)
            summary = described.summary
            if summary is None or not await self._user_may_see(user_id, summary):
                continue
            rooms.append(summary)
            if entry.depth >= walk.max_depth:
                continue
            children = ordered_children(summary.get("children_state", []), walk.suggested_only)
            walk.queue[0:0] = [
                _QueueEntry(
                    child["state_key"],
                    child_via(child),
                    entry.depth + 1,
                    described.remote_children.get(child["state_key"]),
                    child["state_key"] in described.inaccessible_children,
                )
                for child in children
                if child["state_key"] not in walk.visited
            ]

        response: dict[str, Any] = {"rooms": rooms}
        if walk.queue:
            token = secrets.token_urlsafe(16)
            self._walks.set(token, walk)
            response["next_batch"] = token
        return response

    async def _describe_for_walk(self, entry: _QueueEntry, suggested_only: bool) -> _Described:
        """The room's summary with its `children_state`: from our state if we are in the
        room, else from what another server says of it."""
        local = await self._local_summary(entry.room_id)
        if local is not None:
            return _Described(local)
        if entry.inaccessible:
            return _Described(None)
        known = {**entry.remote, "children_state": []} if entry.remote is not None else None
        if known is not None and known.get("room_type") != SPACE_ROOM_TYPE:
            return _Described(known)
        servers = [server for server in entry.via if server != self._server_name]
        if self._remote is None or not servers:
            return _Described(known)
        answer = await self._remote.get_space_hierarchy(entry.room_id, servers, suggested_only)
        if answer is None:
            return _Described(known)
        inaccessible = answer.get("inaccessible_children")
        return _Described(
            {"children_state": [], **answer["room"]},
            {
                child["room_id"]: child
                for child in answer.get("children", [])
                if isinstance(child, dict) and isinstance(child.get("room_id"), str)
            },
            frozenset(r for r in inaccessible if isinstance(r, str))
            if isinstance(inaccessible, list)
            else frozenset(),
        )

    async def _user_may_see(self, user_id: str, summary: Mapping[str, Any]) -> bool:
        if open_to_anyone(summary):
            return True
        membership = await self._rooms.get_membership(summary["room_id"], user_id)
        if membership is not None and membership.membership in ("join", "invite"):
            return True
        for allowed in _allowed_rooms(summary):
            if await self._rooms.is_joined(allowed, user_id):
                return True
        return False

    # ----- room summary ------------------------------------------------------------------

    async def get_room_summary(
        self, requester: Requester | None, room_id_or_alias: str, via: Sequence[str]
    ) -> dict[str, Any]:
        """The summary of one room (by ID or alias) with the requester's `membership`;
        404 M_NOT_FOUND when the room is unknown (here and at `via`, or the servers its
        alias names) or the requester may not see it. Unauthenticated requests see only
        rooms open to anyone."""
        if room_id_or_alias.startswith("#"):
            room_id, alias_servers = await self._resolve_alias(room_id_or_alias)
            via = [*via, *alias_servers]
        else:
            room_id = room_id_or_alias
            check_room_id(room_id)
        summary = await self._local_summary(room_id)
        servers = [server for server in via if server != self._server_name]
        if summary is None and self._remote is not None and servers:
            answer = await self._remote.get_space_hierarchy(room_id, servers, False)
            summary = dict(answer["room"]) if answer is not None else None
        if summary is not None:
            summary.pop("children_state", None)
        membership = None
        if requester is not None:
            own = await self._rooms.get_membership(room_id, requester.user_id)
            membership = own.membership if own is not None else "leave"
        visible = summary is not None and (
            open_to_anyone(summary)
            or (
                requester is not None
                and (
                    membership in ("join", "invite", "knock")
                    or await self._user_may_see(requester.user_id, summary)
                )
            )
        )
        if summary is None or not visible:
            raise MatrixError(404, Codes.NOT_FOUND, f"Room {room_id} not found")
        if membership is not None:
            summary["membership"] = membership
        return summary

    # ----- federation --------------------------------------------------------------------

    async def get_federation_hierarchy(
        self, origin: str, room_id: str, suggested_only: bool
    ) -> dict[str, Any]:
        """The federation hierarchy answer for `origin`: the room and the children of it we
        know, those `origin` may not see as `inaccessible_children`. 404 M_NOT_FOUND when we
        are not in the room or `origin` may not see it."""
        check_room_id(room_id)
        summary = await self._local_summary(room_id)
        if summary is None or not await self._server_may_see(origin, summary):
            raise MatrixError(404, Codes.NOT_FOUND, f"Room {room_id} not found")
        children: list[dict[str, Any]] = []
        inaccessible: list[str] = []
        for child in ordered_children(summary["children_state"], suggested_only):
            child_summary = await self._local_summary(child["state_key"])
            if child_summary is None:
                continue
            if await self._server_may_see(origin, child_summary):
                child_summary.pop("children_state")
                children.append(child_summary)
            else:
                inaccessible.append(child["state_key"])
        return {"room": summary, "children": children, "inaccessible_children": inaccessible}

    async def _server_may_see(self, server: str, summary: Mapping[str, Any]) -> bool:
        if open_to_anyone(summary):
            return True
        for membership in ("join", "invite"):
            members = await self._state.get_current_members(summary["room_id"], membership)
            if any(server_of(user_id) == server for user_id in members):
                return True
        for allowed in _allowed_rooms(summary):
            joined = await self._state.get_current_members(allowed, "join")
            if any(server_of(user_id) == server for user_id in joined):
                return True
        return False

    # ----- summaries of rooms we are in ------------------------------------------------

    async def _local_summary(self, room_id: str) -> dict[str, Any] | None:
        """The room's summary with `children_state`, if a user of ours is joined to it."""
        joined = await self._state.get_current_members(room_id, "join")
        if not any(server_of(user_id) == self._server_name for user_id in joined):
            return None
        state = await self._contents.current_contents(room_id, SUMMARY_TYPES)
        summary = describe_room(room_id, len(joined), state)
        version = await self._events.get_room_version(room_id)
        if version is not None:
            summary["room_version"] = version.identifier
        summary["children_state"] = (
            await self._children_state(room_id)
            if summary.get("room_type") == SPACE_ROOM_TYPE
            else []
        )
        return summary

    async def _children_state(self, room_id: str) -> list[dict[str, Any]]:
        """The space's `m.space.child` events with a `via`, stripped, with their timestamp."""
        ids = {
            key[1]: event_id
            for key, event_id in (await self._state.get_current_state_ids(room_id)).items()
            if key[0] == SPACE_CHILD
        }
        events = await self._events.get_events(ids.values())
        contents = await self._contents.contents_of(list(events))
        children = []
        for state_key, event_id in ids.items():
            event = events.get(event_id)
            content = contents.get(event_id)
            if event is None or content is None:
                continue
            child = {
                "type": SPACE_CHILD,
                "state_key": state_key,
                "content": dict(content),
                "sender": event.sender,
                "origin_server_ts": event.origin_server_ts,
            }
            if child_via(child):
                children.append(child)
        return sorted(children, key=child_sort_key)
