"""Fully read markers (spec: "Read and unread markers"): room account data `m.fully_read`,
which only the server writes, plus the receipts a `/read_markers` request may carry."""

from __future__ import annotations

from homeserver.account_data import FULLY_READ, AccountDataHandler
from homeserver.linearizer import Linearizer
from homeserver.receipts import READ, READ_PRIVATE, ReceiptsHandler


class ReadMarkerHandler:
    def __init__(self, receipts: ReceiptsHandler, account_data: AccountDataHandler) -> None:
        self._receipts = receipts
        self._account_data = account_data
        self._writers = Linearizer("read_markers")

    async def set_fully_read(self, user_id: str, room_id: str, event_id: str) -> None:
        """Move the fully read marker. Unlike receipts it may move backwards: a user may
        have marked messages read by mistake (as Synapse allows)."""
        await self._receipts.check_target_event(user_id, room_id, event_id)
        async with self._writers.queue((user_id, room_id)):
            existing = await self._account_data.get(user_id, room_id, FULLY_READ)
            if existing is not None and existing.get("event_id") == event_id:
                return
            await self._account_data.write(user_id, room_id, FULLY_READ, {"event_id": event_id})

    async def set_read_markers(
        self,
        user_id: str,
        room_id: str,
        fully_read: str | None,
        read: str | None,
        read_private: str | None,
    ) -> None:
        """POST /read_markers: each given marker as its own endpoint would set it."""
        # Check every target before changing anything, so a bad one changes nothing.
        for event_id in (fully_read, read, read_private):
            if event_id is not None:
                await self._receipts.check_target_event(user_id, room_id, event_id)
        if fully_read is not None:
            await self.set_fully_read(user_id, room_id, fully_read)
        if read is not None:
            await self._receipts.send_receipt(user_id, room_id, READ, read)
        if read_private is not None:
            await self._receipts.send_receipt(user_id, room_id, READ_PRIVATE, read_private)
