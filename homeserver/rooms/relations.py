"""Event relationships for clients: GET /relations, GET /threads, and the checks made on a
relationship a local user sends (spec: "Forming relationships between events", "Threading",
"Event annotations and reactions").

Who may see what follows the room's history visibility: the requester must be able to see
the parent (404 otherwise, the answer for an event that does not exist), and every child
served passes `HistoryVisibility.filter_events_for_user`. Children are the rows of the
relations table, which only holds events of the parent's own room.

Users the requester ignores (spec: "Ignoring Users"): their children are not served by
/relations (state events excepted, which the spec says are still sent), nor aggregated
(see `EventSerializer._aggregations`); /threads serves a root they sent redacted, as
threads_list.yaml says ("to simulate the same behaviour of a client doing aggregation
locally on the thread"), where Synapse leaves it out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError
from homeserver.events.redaction import prune_event_dict
from homeserver.events.relations import ANNOTATION, THREAD, relation_of
from homeserver.events.serialize import EventSerializer, IgnoredBy
from homeserver.rooms.lookup import require_room
from homeserver.rooms.messages import readable_event, resolve_position
from homeserver.rooms.visibility import HistoryVisibility, Position
from homeserver.sync.tokens import RoomPosition
from storage.stores.events import EventStore, StoredEvent
from storage.stores.relations import RelationRow, RelationStore

DEFAULT_LIMIT = 5
MAX_LIMIT = 100
# Spec: homeservers "SHOULD traverse at least 3 levels of relationships" for `recurse`.
MAX_RECURSION_DEPTH = 3
THREADS_DEFAULT_LIMIT = 10
INCLUDE_ALL = "all"
INCLUDE_PARTICIPATED = "participated"


def _token(position: Position) -> str:
    return str(RoomPosition(position[0], position[1]))


def _continue_after(row: RelationRow, direction: str) -> Position:
    """The gap a page in `direction` continues from, past `row` (as /messages does)."""
    if direction == "b":
        return (row.topological_ordering, row.stream_ordering - 1)
    return row.position


class RelationsHandler:
    def __init__(
        self,
        events: EventStore,
        relations: RelationStore,
        visibility: HistoryVisibility,
        serializer: EventSerializer,
        ignored_by: IgnoredBy,
    ) -> None:
        self._events = events
        self._relations = relations
        self._visibility = visibility
        self._serializer = serializer
        self._ignored_by = ignored_by

    # ----- GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]] ---------------

    async def get_relations(
        self,
        requester: Requester,
        room_id: str,
        parent_id: str,
        rel_type: str | None,
        event_type: str | None,
        from_token: str | None,
        to_token: str | None,
        limit: int,
        direction: str,
        recurse: bool | None,
    ) -> dict[str, Any]:
        """One page of the parent's children. 404 M_NOT_FOUND for an unknown room, or a
        parent that is not in the room or not visible to the requester; 400 M_INVALID_PARAM
        for a malformed token."""
        from_parsed = RoomPosition.parse(from_token) if from_token is not None else None
        to_parsed = RoomPosition.parse(to_token) if to_token is not None else None
        await require_room(self._events, room_id)
        await self._visible_event(requester.user_id, room_id, parent_id)
        from_position = (
            await self._resolve(room_id, from_parsed) if from_parsed is not None else None
        )
        to_position = await self._resolve(room_id, to_parsed) if to_parsed is not None else None
        depth = MAX_RECURSION_DEPTH if recurse else 1
        # One more than asked for, to know whether another page follows.
        rows = await self._relations.get_children(
            room_id, parent_id, rel_type, event_type, direction, limit + 1,
            from_position, to_position, depth,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        loaded = await self._events.get_stored_events(row.event_id for row in rows)
        children = [loaded[row.event_id] for row in rows if row.event_id in loaded]
        visible = await self._visibility.filter_events_for_user(requester.user_id, children)
        if visible:
            # Like the visibility filter, this may make a page shorter than `limit`; the
            # token still continues after the last row read (as Synapse does).
            ignored = await self._ignored_by(requester.user_id)
            visible = [
                s for s in visible if s.event.is_state or s.event.sender not in ignored
            ]
        response: dict[str, Any] = {
            "chunk": await self._serializer.serialize(
                visible,
                requester_device=(requester.user_id, requester.device_id),
                bundle_aggregations=True,
            ),
        }
        if more:
            response["next_batch"] = _token(_continue_after(rows[-1], direction))
        if from_token is not None:
            response["prev_batch"] = from_token
        if recurse is not None:
            # Spec: present whenever the client gave `recurse`, absent otherwise.
            response["recursion_depth"] = depth
        return response

    # ----- GET /rooms/{roomId}/threads -----------------------------------------------------

    async def get_threads(
        self,
        requester: Requester,
        room_id: str,
        include: str,
        from_token: str | None,
        limit: int,
    ) -> dict[str, Any]:
        """The room's thread roots the requester can see, latest activity first (spec:
        "Fetching all threads in a room"). 403 M_FORBIDDEN for a room the requester may not
        read, or that does not exist (the spec's one answer for both); 400 M_INVALID_PARAM
        for a malformed token."""
        before = self._parse_threads_token(from_token) if from_token is not None else None
        access = await self._visibility.get_room_access(requester.user_id, room_id)
        if access is None:
            raise MatrixError(403, Codes.FORBIDDEN, "You are not allowed to view this room")
        participant = requester.user_id if include == INCLUDE_PARTICIPATED else None
        # A user who left sees threads as they were when they left: ordered by activity up
        # to then, and paginated from there (spec: "from the most recent event visible to
        # the user"), so neither the order nor the tokens tell of replies made since.
        roots = await self._relations.get_thread_roots(
            room_id, limit + 1, before, participant, until=access.until
        )
        more = len(roots) > limit
        roots = roots[:limit]
        loaded = await self._events.get_stored_events(root_id for root_id, _ in roots)
        candidates = [
            loaded[root_id]
            for root_id, _ in roots
            if root_id in loaded and loaded[root_id].event.room_id == room_id
        ]
        visible = await self._visibility.filter_events_for_user(requester.user_id, candidates)
        chunk = await self._serializer.serialize(
            visible,
            requester_device=(requester.user_id, requester.device_id),
            bundle_aggregations=True,
        )
        ignored = await self._ignored_by(requester.user_id) if visible else frozenset()
        for stored, served in zip(visible, chunk, strict=True):
            if stored.event.sender in ignored:
                served["content"] = prune_event_dict(
                    stored.event.pdu, stored.event.room_version
                ).get("content", {})
        response: dict[str, Any] = {"chunk": chunk}
        if more:
            response["next_batch"] = _token(roots[-1][1])
        return response

    @staticmethod
    def _parse_threads_token(token: str) -> Position:
        """A /threads `next_batch`: the latest activity of the last thread served."""
        parsed = RoomPosition.parse(token)
        if parsed.topological is None:
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid from token")
        return (parsed.topological, parsed.stream)

    # ----- relationships local users send --------------------------------------------------

    async def check_new_relation(
        self, room_id: str, sender: str, event_type: str, content: Mapping[str, Any]
    ) -> None:
        """Refuse what no valid relationship can be: 400 M_INVALID_PARAM for a relationship
        to an event of another room, an annotation without a key, or a thread started from
        an event that itself relates to another; 400 M_DUPLICATE_ANNOTATION for a second
        identical annotation by the same user (as Synapse does). An unknown parent is
        allowed (it may be history this server has not fetched); it is not aggregated."""
        relates_to = content.get("m.relates_to")
        if not isinstance(relates_to, dict):
            return
        rel_type, parent_id = relates_to.get("rel_type"), relates_to.get("event_id")
        if not isinstance(rel_type, str) or not isinstance(parent_id, str):
            return
        parent = await self._events.get_stored_event(parent_id)
        if parent is not None and parent.event.room_id != room_id:
            raise MatrixError(400, Codes.INVALID_PARAM, "Relations must be in the same room")
        if rel_type == ANNOTATION:
            key = relates_to.get("key")
            if not isinstance(key, str):
                raise MatrixError(400, Codes.INVALID_PARAM, "An annotation needs a string 'key'")
            if await self._relations.has_annotation(room_id, parent_id, sender, event_type, key):
                raise MatrixError(
                    400, Codes.DUPLICATE_ANNOTATION, "Can't send same reaction twice"
                )
        elif rel_type == THREAD and parent is not None and relation_of(parent.event) is not None:
            raise MatrixError(
                    400, Codes.INVALID_PARAM, "Cannot start threads from an event with a relation"
                )

    # ----- the parts -----------------------------------------------------------------------

    async def _visible_event(self, user_id: str, room_id: str, event_id: str) -> StoredEvent:
        return await readable_event(self._events, self._visibility, user_id, room_id, event_id)

    async def _resolve(self, room_id: str, position: RoomPosition) -> Position:
        return await resolve_position(self._events, room_id, position)
