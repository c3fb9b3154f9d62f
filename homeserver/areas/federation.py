"""Federation's handlers: inbound events and transactions, membership across servers,
EDUs; and the seam with rooms, which need federation as much as it needs them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from federation.edus import FederationEdus
from federation.event_handler import FederationEventHandler
from federation.membership import FederationMembership
from federation.outbound import OutboundEvents
from federation.timestamp_lookup import RemoteTimestampLookup, TimestampLookup
from federation.transaction import TransactionHandler
from homeserver.areas.core import Core
from homeserver.areas.e2e import E2e
from homeserver.areas.federation_transport import FederationTransport
from homeserver.areas.rooms import Rooms, RoomsFederation
from homeserver.areas.stores import Stores
from homeserver.areas.streams import Streams
from homeserver.areas.user_data import UserData
from homeserver.e2e.to_device import DIRECT_TO_DEVICE
from homeserver.events.model import Event
from homeserver.rooms.creator import timeline_subscriber
from storage.stores.events import StoredEvent


class LateRoomFederation:
    """Rooms' view of federation, handed to rooms before federation's handlers exist.

    The cycle is real: `FederationMembership` joins rooms through rooms' `EventCreator`,
    `EventPersister` and `MembershipHandler`, while those send invites, joins, leaves and
    knocks of remote rooms (and backfill history) through federation. So rooms are built
    with this adapter (it satisfies `homeserver.rooms.membership.RemoteMembership` and gives
    the invite and backfill callables rooms take), and `build_federation` binds it. Nothing
    calls it between the two: no request is served before the server is built.
    """

    def __init__(self, outbound: OutboundEvents) -> None:
        # Where new local events go needs only the send queue, so it is not late-bound.
        self.outbound = outbound
        self._membership: FederationMembership | None = None
        self._events: FederationEventHandler | None = None

    def bind(self, membership: FederationMembership, events: FederationEventHandler) -> None:
        self._membership = membership
        self._events = events

    def for_rooms(self) -> RoomsFederation:
        return RoomsFederation(
            membership=self,
            remote_invite=self.invite_remote_user,
            backfill=self.backfill,
            outbound_destinations=self.outbound.destinations_for,
        )

    def _bound_membership(self) -> FederationMembership:
        if self._membership is None:
            raise RuntimeError("federation is used before build_federation bound it")
        return self._membership

    async def is_resident(self, room_id: str) -> bool:
        return await self._bound_membership().is_resident(room_id)

    async def remote_join(
        self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]
    ) -> StoredEvent:
        return await self._bound_membership().remote_join(user_id, room_id, servers, content)

    async def remote_leave(
        self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]
    ) -> StoredEvent:
        return await self._bound_membership().remote_leave(user_id, room_id, servers, content)

    async def remote_knock(
        self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]
    ) -> StoredEvent:
        return await self._bound_membership().remote_knock(user_id, room_id, servers, content)

    async def invite_remote_user(self, event: Event) -> Event:
        return await self._bound_membership().invite_remote_user(event)

    async def backfill(self, room_id: str, lowest: int | None, highest: int) -> bool:
        membership = self._bound_membership()
        assert self._events is not None
        return await self._events.backfill(
            room_id,
            lambda: membership.room_servers(room_id),
            cited_between=(lowest, highest),
        )


@dataclass(frozen=True)
class Federation:
    events: FederationEventHandler
    membership: FederationMembership
    transactions: TransactionHandler
    # None when federation is disabled.
    edus: FederationEdus | None
    # Local answers only when federation is disabled.
    timestamp_lookup: TimestampLookup


def build_federation(
    core: Core,
    stores: Stores,
    streams: Streams,
    transport: FederationTransport,
    rooms: Rooms,
    user_data: UserData,
    e2e: E2e,
    late: LateRoomFederation | None,
) -> Federation:
    """`late` is what rooms were given (None when federation is disabled); bound here."""
    bus = streams.bus
    fed = core.config.federation
    events = FederationEventHandler(
        core.server_name,
        transport.keyring,
        transport.client,
        stores.event_store,
        stores.federation_event_store,
        stores.state_store,
        rooms.persister,
        rooms.event_creator,
    )
    membership = FederationMembership(
        core.server_name,
        core.signing_key,
        core.clock,
        transport.client,
        events,
        rooms.event_creator,
        rooms.persister,
        stores.event_store,
        stores.federation_event_store,
        stores.state_store,
        stores.room_store,
        stores.accounts,
        rooms.membership,
        transport.sender,
        fed.max_join_response_bytes,
    )
    # Membership is built from the event handler, which hands it a leave or ban ending a
    # local user's invite or knock in a room we are not in: one package, joined here.
    events.out_of_room_membership = membership.receive_out_of_room_membership
    transactions = TransactionHandler(
        core.clock,
        stores.federation_event_store,
        stores.event_store,
        stores.state_store,
        events,
        transport.sender,
        membership.wait_for_joins,
    )
    local_lookup = TimestampLookup(
        stores.event_store,
        stores.federation_event_store,
        stores.room_admin_store,
        rooms.history_visibility,
    )
    if late is None:
        return Federation(
            events=events,
            membership=membership,
            transactions=transactions,
            edus=None,
            timestamp_lookup=local_lookup,
        )

    late.bind(membership, events)
    # Subscribers run in subscription order: the notifier (streams), then these.
    bus.subscribe(timeline_subscriber(late.outbound.on_event_persisted), streams=["events"])
    edus = FederationEdus(
        core.server_name,
        transport.sender,
        stores.state_store,
        streams.shared_rooms,
        user_data.typing,
        user_data.receipts,
        user_data.presence,
        transactions.origin_allowed,
    )
    transactions.edu_handlers.update(edus.handlers())
    transactions.edu_handlers.update(e2e.device_lists.edu_handlers())
    bus.subscribe(timeline_subscriber(e2e.device_lists.on_event_persisted), streams=["events"])
    transactions.edu_handlers[DIRECT_TO_DEVICE] = e2e.to_device.on_direct_to_device
    # Typing and presence tell federation of changes that take no stream position (a user
    # still typing, presence repeated to keep remote timeouts alive).
    user_data.typing.local_change_listeners.append(edus.local_typing_changed)
    bus.subscribe(edus.on_receipts_update, streams=["receipts"])
    user_data.presence.local_change_listeners.append(edus.local_presence_changed)
    timestamp_lookup = TimestampLookup(
        stores.event_store,
        stores.federation_event_store,
        stores.room_admin_store,
        rooms.history_visibility,
        RemoteTimestampLookup(core.server_name, transport.client, events, stores.room_store),
    )
    return Federation(
        events=events,
        membership=membership,
        transactions=transactions,
        edus=edus,
        timestamp_lookup=timestamp_lookup,
    )
