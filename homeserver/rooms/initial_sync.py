"""GET /rooms/{roomId}/initialSync: one room's state and latest messages in one response;
and the deprecated GET /initialSync: the same for every room of the user at once.

The spec keeps the room one for peeking into rooms the user may read without being in them
(a world-readable room). A member gets the current state, the latest messages, the members'
presence, the room's receipts and the user's account data for the room. A user who left or
was banned gets the room as it was when they left, as Synapse answers (no presence or
receipts then). Anyone else gets 403 M_FORBIDDEN.

The global one (spec: "deprecated in r0", in favour of /sync without `since`) lists the
rooms the user is joined or invited to (and, with `archived`, those it left), each as the
room one describes it, with the presence, receipts and global account data once for all of
them at the top, as Synapse answers.
"""

from __future__ import annotations

import logging
from typing import Any

from homeserver.account_data import AccountDataChanges, AccountDataHandler
from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError
from homeserver.events.serialize import EventSerializer
from homeserver.filtering import RoomEventFilter
from homeserver.presence import PresenceHandler, with_user_id
from homeserver.receipts import ReceiptsHandler
from homeserver.rooms.messages import MessagesHandler
from homeserver.rooms.shared_rooms import SharedRooms
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.streams.registry import StreamRegistry
from homeserver.sync.tokens import RoomPosition, StreamToken
from storage.stores.directory import RoomDirectoryStore
from storage.stores.events import EventStore, StoredEvent
from storage.stores.rooms import Membership, RoomStore
from storage.stores.state import StateStore

logger = logging.getLogger(__name__)

_EVERYTHING = RoomEventFilter()


class RoomInitialSyncHandler:
    def __init__(
        self,
        events: EventStore,
        state: StateStore,
        rooms: RoomStore,
        directory: RoomDirectoryStore,
        visibility: HistoryVisibility,
        messages: MessagesHandler,
        serializer: EventSerializer,
        streams: StreamRegistry,
        receipts: ReceiptsHandler,
        presence: PresenceHandler,
        account_data: AccountDataHandler,
        shared_rooms: SharedRooms,
    ) -> None:
        self._shared_rooms = shared_rooms
        self._events = events
        self._state = state
        self._rooms = rooms
        self._directory = directory
        self._visibility = visibility
        self._messages = messages
        self._serializer = serializer
        self._streams = streams
        self._receipts = receipts
        self._presence = presence
        self._account_data = account_data

    async def room_initial_sync(
        self, requester: Requester, room_id: str, limit: int
    ) -> dict[str, Any]:
        user_id = requester.user_id
        if await self._visibility.get_room_access(user_id, room_id) is None:
            # The same answer for rooms that do not exist, so their existence does not leak.
            raise MatrixError(403, Codes.FORBIDDEN, "You are not allowed to read this room")
        member = await self._rooms.get_membership(room_id, user_id)
        if member is not None and member.forgotten:
            member = None
        now = self._streams.current_token()
        changes = await self._account_data.get_changes(user_id, 0)
        result = await self._snapshot(requester, room_id, member, limit, now, changes)
        if member is None or member.membership not in ("leave", "ban"):
            joined = await self._state.get_current_members(room_id, "join")
            result["presence"] = with_user_id(
                await self._presence.get_presence_events_for_users(joined)
            )
            receipts = await self._receipts.get_receipt_events(user_id, [room_id], 0, now.receipts)
            result["receipts"] = list(receipts.values())
        else:
            result["presence"] = []
            result["receipts"] = []
        return result

    async def initial_sync(
        self, requester: Requester, limit: int, archived: bool
    ) -> dict[str, Any]:
        user_id = requester.user_id
        wanted = {"join", "invite"} | ({"leave", "ban"} if archived else set())
        memberships = [
            m for m in await self._shared_rooms.memberships_of(user_id) if m.membership in wanted
        ]
        now = self._streams.current_token()
        changes = await self._account_data.get_changes(user_id, 0)
        rooms: list[dict[str, Any]] = []
        for member in memberships:
            if member.membership == "invite":
                rooms.append(await self._invite(requester, member))
            else:
                try:
                    snapshot = await self._snapshot(
                        requester, member.room_id, member, limit, now, changes
                    )
                except MatrixError as e:
                    # One unreadable room (its history gone) does not fail the others.
                    logger.warning(
                        "initialSync: %s in %s: %s", user_id, member.room_id, e.message
                    )
                    snapshot = {"room_id": member.room_id, "membership": member.membership}
                rooms.append(snapshot)
        joined = [m.room_id for m in memberships if m.membership == "join"]
        receipts = await self._receipts.get_receipt_events(user_id, joined, 0, now.receipts)
        # Everyone the user shares a room with who is not offline, and the user itself
        # whatever its state (a client starting up shows its own).
        presence = await self._presence.get_presence_events(user_id, None)
        if not any(e["sender"] == user_id for e in presence):
            presence += await self._presence.get_presence_events_for_users([user_id])
        return {
            "rooms": rooms,
            "presence": with_user_id(presence),
            "account_data": changes.global_events,
            # One list for every room: each event says which room it is for.
            "receipts": [{**event, "room_id": room_id} for room_id, event in receipts.items()],
            "end": str(now),
        }

    async def _invite(self, requester: Requester, member: Membership) -> dict[str, Any]:
        result: dict[str, Any] = {
            "room_id": member.room_id,
            "membership": "invite",
            "visibility": await self._visibility_of(member.room_id),
        }
        invite = await self._events.get_stored_event(member.event_id)
        if invite is not None:
            result["inviter"] = invite.event.sender
            (result["invite"],) = await self._serializer.serialize(
                [invite], requester_device=(requester.user_id, requester.device_id)
            )
        return result

    async def _snapshot(
        self,
        requester: Requester,
        room_id: str,
        member: Membership | None,
        limit: int,
        now: StreamToken,
        changes: AccountDataChanges,
    ) -> dict[str, Any]:
        """The room as the user sees it (as it was when it left, if it did), without
        presence or receipts."""
        user_id = requester.user_id
        membership = member.membership if member is not None else None
        result: dict[str, Any] = {"room_id": room_id}
        if member is not None and membership in ("leave", "ban"):
            departure = await self._events.get_stored_event(member.event_id)
            if departure is None:
                raise MatrixError(403, Codes.FORBIDDEN, "You are not allowed to read this room")
            state = await self._messages.state_after(departure)
            end = str(RoomPosition(departure.topological_ordering, departure.stream_ordering))
        else:
            state = await self._current_state(room_id)
            end = str(now)
        if membership is not None:
            # A world-readable room's peeker has none to tell (Synapse says "join").
            result["membership"] = membership
        # The latest messages, read backwards from `end` and given oldest first.
        page = await self._messages.get_messages(
            requester, room_id, "b", end, None, limit, _EVERYTHING
        )
        # `start`, where /messages carries on backwards, is there even at the start of the
        # history (the spec lets it go then; clients and SyTest look for it): /messages
        # then answers with nothing more.
        messages: dict[str, Any] = {
            "chunk": page["chunk"][::-1], "start": page.get("end", end), "end": end
        }
        if "end" not in page and page["chunk"]:
            oldest = await self._events.get_stored_event(page["chunk"][-1]["event_id"])
            if oldest is not None:
                messages["start"] = str(
                    RoomPosition(oldest.topological_ordering, oldest.stream_ordering - 1)
                )
        result["messages"] = messages
        result["state"] = await self._serializer.serialize(
            state, requester_device=(user_id, requester.device_id)
        )
        result["visibility"] = await self._visibility_of(room_id)
        result["account_data"] = changes.room_events.get(room_id, [])
        return result

    async def _visibility_of(self, room_id: str) -> str:
        return "public" if await self._directory.get_visibility(room_id) else "private"

    async def _current_state(self, room_id: str) -> list[StoredEvent]:
        state_ids = await self._state.get_current_state_ids(room_id)
        loaded = await self._events.get_stored_events(state_ids.values())
        return sorted(
            (loaded[eid] for eid in state_ids.values() if eid in loaded),
            key=lambda e: e.stream_ordering,
        )
