"""Which servers get each event this server creates: every server with a joined member in
the room, and the target's server of a membership change (a kicked or invited user's)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from federation.event_checks import server_of
from homeserver.events.types import MEMBER

if TYPE_CHECKING:
    from federation.sender import FederationSender
    from storage.stores.events import StoredEvent
    from storage.stores.state import StateStore

logger = logging.getLogger(__name__)


class OutboundEvents:
    def __init__(self, server_name: str, state: StateStore, sender: FederationSender) -> None:
        self._server_name = server_name
        self._state = state
        self._sender = sender

    async def on_event_persisted(self, stored: StoredEvent) -> None:
        """Queue a timeline event for the room's other servers. Only events our users sent:
        other servers' events reached everyone from their own origin."""
        event = stored.event
        if server_of(event.sender) != self._server_name or stored.outlier:
            return
        members = await self._state.get_current_members(event.room_id, "join")
        destinations = {server_of(user) for user in members}
        if event.type == MEMBER and event.state_key is not None:
            destinations.add(server_of(event.state_key))
        destinations.discard(self._server_name)
        destinations.discard("")
        if destinations:
            await self._sender.send_pdu(
                event.event_id, event.room_id, stored.stream_ordering, sorted(destinations)
            )
