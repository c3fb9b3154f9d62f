"""Every stream a client syncs on (see homeserver/streams/): allocators, visible positions
and change indexes, loaded in `HomeServer.setup()` from the stores named in the
declarations. Writers publish on the bus after commit; the notifier wakes syncs. Who shares
a room with whom is answered from the events stream's membership index and the state
store's member lists (`SharedRooms`), for presence, device lists, federation and sync."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.rooms.shared_rooms import SharedRooms
from homeserver.streams.bus import StreamBus
from homeserver.streams.declarations import SYNC_STREAMS, StreamStores
from homeserver.streams.registry import StreamRegistry
from homeserver.sync.notifier import Notifier
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore


@dataclass(frozen=True)
class Streams:
    registry: StreamRegistry
    bus: StreamBus
    notifier: Notifier
    shared_rooms: SharedRooms


def build_streams(
    reactor: Any, stores: StreamStores, state_store: StateStore, room_store: RoomStore
) -> Streams:
    registry = StreamRegistry.build(SYNC_STREAMS, stores)
    bus = StreamBus(registry, reactor)
    notifier = Notifier(reactor, state_store)
    bus.subscribe(notifier.on_stream_update)
    return Streams(
        registry=registry,
        bus=bus,
        notifier=notifier,
        shared_rooms=SharedRooms(room_store, state_store, registry["events"]),
    )
