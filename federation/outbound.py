"""Which servers get each event this server creates: every server with a joined member in
the room, and the target's server of a membership change (a kicked or invited user's).
The rows are queued in the transaction that persists the event (`EventContext.
outbound_destinations`); once it commits, the sender is told to start."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from federation.event_checks import server_of
from homeserver.caches import LruCache
from homeserver.events.types import MEMBER

if TYPE_CHECKING:
    from federation.sender import FederationSender
    from homeserver.events.model import Event
    from storage.stores.events import StoredEvent
    from storage.stores.state import StateStore

logger = logging.getLogger(__name__)

# Rooms whose members' servers are remembered.
ROOM_DESTINATIONS_CACHE_SIZE = 10_000


class OutboundEvents:
    def __init__(self, server_name: str, state: StateStore, sender: FederationSender) -> None:
        self._server_name = server_name
        self._state = state
        self._sender = sender
        # room -> (the joined-member mapping the state store gave, their servers but ours).
        self._servers: LruCache[str, tuple[Mapping[str, str], frozenset[str]]] = LruCache(
            "room_destinations", ROOM_DESTINATIONS_CACHE_SIZE
        )

    async def destinations_for(self, event: Event) -> list[str]:
        """Where a new local event goes: servers with joined members in the room as it is
        before the event, plus the target's server of a membership change."""
        members = await self._state.get_current_members(event.room_id, "join")
        known = self._servers.get(event.room_id)
        if known is not None and known[0] is members:
            # The same (read-only, shared) member list as last time: the same servers.
            servers = known[1]
        else:
            servers = frozenset(server_of(user) for user in members) - {self._server_name, ""}
            self._servers.set(event.room_id, (members, servers))
        if event.type == MEMBER and event.state_key is not None:
            target = server_of(event.state_key)
            if target not in servers and target not in (self._server_name, ""):
                return sorted(servers | {target})
        return sorted(servers)

    async def on_event_persisted(self, stored: StoredEvent) -> None:
        """The event and its queue rows are committed: start sending to those servers."""
        event = stored.event
        if server_of(event.sender) != self._server_name or stored.outlier:
            return
        destinations = await self.destinations_for(event)
        if destinations:
            self._sender.on_queued(destinations)
