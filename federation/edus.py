"""Ephemeral data between servers (EDUs): typing notifications, read receipts and presence,
sent for our users to the servers they share rooms with, and applied when other servers
send theirs (server-server API, "Typing Notifications", "Receipts", "Presence")."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any, Protocol

from federation.event_checks import server_of
from homeserver.errors import MatrixError
from storage.stores.receipts import Receipt

if TYPE_CHECKING:
    from federation.sender import FederationSender
    from homeserver.presence import PresenceHandler
    from homeserver.receipts import ReceiptsHandler
    from homeserver.streams.bus import StreamUpdate
    from homeserver.typing import TypingHandler
    from storage.stores.presence import UserPresence
    from storage.stores.state import StateStore

logger = logging.getLogger(__name__)

TYPING = "m.typing"
RECEIPT = "m.receipt"
PRESENCE = "m.presence"
# Typing EDUs carry no timeout; a remote user stops "typing" after this unless renewed
# (the sending server repeats the EDU while the user keeps typing).
REMOTE_TYPING_TIMEOUT_MS = 30_000
# Presence pushes are applied for at most this many users per EDU.
MAX_PRESENCE_PUSHES = 500


class RoomMates(Protocol):
    """Who shares a room with a user (`homeserver.rooms.shared_rooms.SharedRooms`, from
    memory): where our users' presence goes."""

    async def get_users_sharing_rooms(
        self, user_id: str, among: Collection[str] | None = None
    ) -> set[str]: ...


class FederationEdus:
    def __init__(
        self,
        server_name: str,
        sender: FederationSender,
        state: StateStore,
        shared_rooms: RoomMates,
        typing: TypingHandler,
        receipts: ReceiptsHandler,
        presence: PresenceHandler,
        origin_allowed: Callable[[str, str], Awaitable[bool]],
    ) -> None:
        self._server_name = server_name
        self._sender = sender
        self._state = state
        self._shared_rooms = shared_rooms
        self._typing = typing
        self._receipts = receipts
        self._presence = presence
        # (room ID, origin) -> whether the room's server ACL admits the origin: typing and
        # receipts of a denied server are ignored (server-server API, "Server Access Control
        # Lists").
        self._origin_allowed = origin_allowed

    def handlers(self) -> dict[str, Any]:
        """The inbound EDU handlers, by type, for `TransactionHandler.edu_handlers`."""
        return {TYPING: self.on_typing, RECEIPT: self.on_receipt, PRESENCE: self.on_presence}

    def _is_mine(self, user_id: str) -> bool:
        return server_of(user_id) == self._server_name

    async def _room_servers(self, room_id: str) -> list[str]:
        members = await self._state.get_current_members(room_id, "join")
        return sorted({server_of(u) for u in members} - {self._server_name, ""})

    async def _is_joined(self, room_id: str, user_id: str) -> bool:
        members = await self._state.get_current_members(room_id, "join")
        return user_id in members

    # ----- outbound ---------------------------------------------------------------------------

    async def local_typing_changed(self, room_id: str, user_id: str, typing: bool) -> None:
        content = {"room_id": room_id, "user_id": user_id, "typing": typing}
        for destination in await self._room_servers(room_id):
            await self._sender.send_edu(
                destination, TYPING, content, dedupe_key=f"typing {room_id} {user_id}"
            )

    async def on_receipts_update(self, update: StreamUpdate) -> None:
        """A stream-bus subscriber (receipts stream): our users' public receipts go to the
        room's other servers; private ones stay here."""
        if not update.private and isinstance(update.detail, Receipt):
            await self.local_receipt(update.detail)

    async def local_receipt(self, receipt: Receipt) -> None:
        if not self._is_mine(receipt.user_id):
            return
        data: dict[str, Any] = {"ts": receipt.ts}
        if receipt.thread_id is not None:
            data["thread_id"] = receipt.thread_id
        content = {
            receipt.room_id: {
                receipt.receipt_type: {
                    receipt.user_id: {"event_ids": [receipt.event_id], "data": data}
                }
            }
        }
        key = f"receipt {receipt.room_id} {receipt.receipt_type} {receipt.user_id} "
        key += receipt.thread_id or ""
        for destination in await self._room_servers(receipt.room_id):
            await self._sender.send_edu(destination, RECEIPT, content, dedupe_key=key)

    async def local_presence_changed(self, presence: UserPresence) -> None:
        sharing = await self._shared_rooms.get_users_sharing_rooms(presence.user_id)
        destinations = sorted({server_of(u) for u in sharing} - {self._server_name, ""})
        if not destinations:
            return
        content = {"push": [self._presence.format_content(presence) | {
            "user_id": presence.user_id}]}
        for destination in destinations:
            await self._sender.send_edu(
                destination, PRESENCE, content, dedupe_key=f"presence {presence.user_id}"
            )

    # ----- inbound ----------------------------------------------------------------------------

    async def on_typing(self, origin: str, content: dict[str, Any]) -> None:
        room_id, user_id = content.get("room_id"), content.get("user_id")
        if not isinstance(room_id, str) or not isinstance(user_id, str):
            return
        if (
            server_of(user_id) != origin
            or not await self._origin_allowed(room_id, origin)
            or not await self._is_joined(room_id, user_id)
        ):
            logger.info("typing EDU from %s for %s in %s ignored", origin, user_id, room_id)
            return
        if content.get("typing") is True:
            await self._typing.started_typing(room_id, user_id, REMOTE_TYPING_TIMEOUT_MS)
        else:
            await self._typing.stopped_typing(room_id, user_id)

    async def on_receipt(self, origin: str, content: dict[str, Any]) -> None:
        for room_id, by_type in content.items():
            if not isinstance(by_type, dict):
                continue
            if not await self._origin_allowed(room_id, origin):
                logger.info("receipts from %s in %s ignored: denied by ACL", origin, room_id)
                continue
            for receipt_type, by_user in by_type.items():
                if not isinstance(by_user, dict):
                    continue
                for user_id, receipt in by_user.items():
                    if server_of(user_id) != origin or not isinstance(receipt, dict):
                        continue
                    event_ids = receipt.get("event_ids")
                    data = receipt.get("data")
                    thread_id = data.get("thread_id") if isinstance(data, dict) else None
                    if not isinstance(event_ids, list) or not event_ids:
                        continue
                    event_id = event_ids[-1]
                    if not isinstance(event_id, str):
                        continue
                    try:
                        await self._receipts.send_receipt(
                            user_id, room_id, receipt_type, event_id,
                            thread_id if isinstance(thread_id, str) else None,
                        )
                    except MatrixError as e:
                        # Not joined, an event we do not hold, an unknown receipt type.
                        logger.info("receipt of %s in %s ignored: %s", user_id, room_id,
                                    e.message)

    async def on_presence(self, origin: str, content: dict[str, Any]) -> None:
        pushes = content.get("push")
        if not isinstance(pushes, list):
            return
        for push in pushes[:MAX_PRESENCE_PUSHES]:
            if not isinstance(push, dict):
                continue
            user_id = push.get("user_id")
            state = push.get("presence")
            if not isinstance(user_id, str) or server_of(user_id) != origin:
                continue
            if not isinstance(state, str):
                continue
            ago = push.get("last_active_ago")
            status = push.get("status_msg")
            await self._presence.set_remote_presence(
                user_id,
                state,
                ago if isinstance(ago, int) and not isinstance(ago, bool) else None,
                push.get("currently_active") is True,
                status if isinstance(status, str) else None,
            )
