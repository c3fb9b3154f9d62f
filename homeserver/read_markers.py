"""Fully read markers (spec: "Read and unread markers"): room account data `m.fully_read`,
which only the server writes, plus the receipts a `/read_markers` or `/receipt` request may
carry. Setting any of them counts as activity for the user's presence."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeserver.account_data import FULLY_READ, AccountDataHandler
from homeserver.errors import Codes, MatrixError
from homeserver.linearizer import Linearizer
from homeserver.presence import PresenceHandler
from homeserver.receipts import READ, READ_PRIVATE, RECEIPT_TYPES, ReceiptsHandler, check_thread_id

# What POST /receipt/{receiptType} takes: a receipt type, or the fully read marker.
RECEIPT_ENDPOINT_TYPES = RECEIPT_TYPES | {FULLY_READ}


class ReadMarkerHandler:
    def __init__(
        self,
        receipts: ReceiptsHandler,
        account_data: AccountDataHandler,
        presence: PresenceHandler,
    ) -> None:
        self._receipts = receipts
        self._account_data = account_data
        self._presence = presence
        self._writers = Linearizer("read_markers")

    async def post_receipt(
        self,
        user_id: str,
        room_id: str,
        receipt_type: str,
        event_id: str,
        body: Mapping[str, Any],
    ) -> None:
        """POST /rooms/{roomId}/receipt/{receiptType}/{eventId}: a receipt, threaded if the
        body has a `thread_id`; for `m.fully_read`, the same as /read_markers with only it.

        400 M_INVALID_PARAM for another type, a malformed `thread_id`, or one given with
        `m.fully_read`.
        """
        if receipt_type not in RECEIPT_ENDPOINT_TYPES:
            raise MatrixError(
                400,
                Codes.INVALID_PARAM,
                f"Receipt type must be one of {', '.join(sorted(RECEIPT_ENDPOINT_TYPES))}",
            )
        thread_id = None
        if "thread_id" in body:
            thread_id = check_thread_id(body["thread_id"])
            if receipt_type == FULLY_READ:
                raise MatrixError(
                    400, Codes.INVALID_PARAM, f"thread_id is not compatible with {FULLY_READ}"
                )
        if receipt_type == FULLY_READ:
            await self.set_fully_read(user_id, room_id, event_id)
        else:
            await self._receipts.send_receipt(user_id, room_id, receipt_type, event_id, thread_id)
        await self._presence.bump_active(user_id)

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
        await self._presence.bump_active(user_id)
