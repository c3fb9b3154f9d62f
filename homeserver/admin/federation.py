"""The admin API for federation: which servers this one sends to, how each delivery is
going (its backoff), and ending a backoff at once when the admin knows the server is back.
"""

from __future__ import annotations

from typing import Protocol

from homeserver.admin.audit import AdminAudit
from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError
from storage.stores.federation_queue import DestinationRow, FederationQueueStore, RetryState


class DestinationWaker(Protocol):
    """What resetting a destination needs from the federation sender."""

    def wake_destination(self, destination: str) -> None: ...


class AdminFederationHandler:
    def __init__(
        self, store: FederationQueueStore, sender: DestinationWaker, audit: AdminAudit
    ) -> None:
        self._store = store
        self._sender = sender
        self._audit = audit

    async def list_destinations(
        self, offset: int, limit: int, order_by: str, descending: bool
    ) -> tuple[list[DestinationRow], int]:
        return await self._store.list_destinations(offset, limit, order_by, descending)

    async def get_destination(self, destination: str) -> RetryState:
        state = await self._store.get_retry_state(destination)
        if state is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown destination")
        return state

    async def destination_rooms(
        self, destination: str, offset: int, limit: int, descending: bool
    ) -> tuple[list[str], int]:
        """The rooms shared with a known destination (404 for one never sent to)."""
        await self.get_destination(destination)
        return await self._store.destination_rooms(destination, offset, limit, descending)

    async def reset_connection(self, admin: Requester, destination: str) -> None:
        """End the destination's backoff and send what waits for it now (in the background),
        as if it had just been heard from. 400, as Synapse answers, when it is not backing
        off: there is nothing to reset."""
        state = await self.get_destination(destination)
        if state.retry_last_ts == 0:
            raise MatrixError(
                400,
                Codes.UNKNOWN,
                "The retry timing does not need to be reset for this destination",
            )
        # Written here as well as by the sender, which writes it only when it next runs (and
        # does not run when federation sending is off).
        await self._store.set_retry_state(
            destination, RetryState(0, 0, state.failure_ts)
        )
        self._sender.wake_destination(destination)
        await self._audit.record(admin.user_id, "reset_destination", destination)
