"""Filters and /sync: reads every stream, the rooms' timelines and state, and the e2e
sections; and sync pushed over WebSockets (client_api/websocket/)."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.areas.auth import Auth
from homeserver.areas.core import Core
from homeserver.areas.e2e import E2e
from homeserver.areas.rooms import Rooms
from homeserver.areas.stores import Stores
from homeserver.areas.streams import Streams
from homeserver.areas.user_data import UserData
from homeserver.filtering import Filtering
from homeserver.ratelimit import RateLimiter
from homeserver.rooms.initial_sync import RoomInitialSyncHandler
from homeserver.sync.events_stream import EventStreamHandler
from homeserver.sync.handler import SyncHandler
from homeserver.sync.websocket import (
    ConnectionRegistry,
    ConnectionTimeouts,
    WebSocketSyncHandler,
)


@dataclass(frozen=True)
class Sync:
    filtering: Filtering
    handler: SyncHandler
    # The deprecated GET /events (and peeking with it) and GET /rooms/{roomId}/initialSync.
    legacy_events: EventStreamHandler
    room_initial_sync: RoomInitialSyncHandler
    # The WebSocket transport's push loops, its open connections (which a token revocation
    # closes) and the per-connection limit on requests sent over a socket.
    websocket: WebSocketSyncHandler
    websocket_connections: ConnectionRegistry
    websocket_request_limiter: RateLimiter


def build_sync(
    core: Core,
    stores: Stores,
    streams: Streams,
    rooms: Rooms,
    user_data: UserData,
    e2e: E2e,
    auth: Auth,
) -> Sync:
    handler = SyncHandler(
        core.server_name,
        core.clock,
        stores.event_store,
        stores.state_store,
        stores.room_store,
        streams.shared_rooms,
        rooms.event_serializer,
        streams.notifier,
        streams.registry,
        rooms.history_visibility,
        user_data.typing,
        user_data.receipts,
        user_data.account_data,
        user_data.presence,
        device_lists=e2e.device_lists,
        to_device=e2e.to_device,
        e2e_keys=e2e.keys,
        counts=user_data.notification_counts,
        ignored_by=rooms.ignored_users.of,
        blocks_invites=rooms.invite_permissions.blocks_invites,
    )
    websocket_config = core.config.websocket
    connections = ConnectionRegistry(
        websocket_config.max_connections,
        core.reactor,
        ConnectionTimeouts.from_config(websocket_config),
    )
    auth.tokens.add_revocation_listener(connections.revoked)
    return Sync(
        filtering=Filtering(stores.filter_store),
        handler=handler,
        legacy_events=EventStreamHandler(
            core.clock,
            stores.event_store,
            streams.shared_rooms,
            rooms.history_visibility,
            rooms.event_serializer,
            streams.notifier,
            streams.registry,
            user_data.account_data,
            user_data.receipts,
            user_data.typing,
            user_data.presence,
            stores.state_store,
        ),
        room_initial_sync=RoomInitialSyncHandler(
            stores.event_store,
            stores.state_store,
            stores.room_store,
            stores.room_directory_store,
            rooms.history_visibility,
            rooms.messages,
            rooms.event_serializer,
            streams.registry,
            user_data.receipts,
            user_data.presence,
            user_data.account_data,
            streams.shared_rooms,
        ),
        websocket=WebSocketSyncHandler(handler, streams.notifier, user_data.presence, core.clock),
        websocket_connections=connections,
        websocket_request_limiter=core.limiter(
            "websocket_requests", core.config.websocket.request_rate
        ),
    )
