"""End-to-end encryption: device, one-time, fallback and cross-signing keys; device lists;
send-to-device messages; server-side key backups. Other servers' users are reached over
federation."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.areas.core import Core
from homeserver.areas.federation_transport import FederationTransport
from homeserver.areas.stores import Stores
from homeserver.areas.streams import Streams
from homeserver.e2e.device_lists import DeviceListHandler
from homeserver.e2e.keys import E2eKeysHandler
from homeserver.e2e.room_keys import RoomKeysHandler
from homeserver.e2e.to_device import ToDeviceHandler


@dataclass(frozen=True)
class E2e:
    keys: E2eKeysHandler
    device_lists: DeviceListHandler
    to_device: ToDeviceHandler
    room_keys: RoomKeysHandler


def build_e2e(
    core: Core,
    stores: Stores,
    streams: Streams,
    federation: FederationTransport,
) -> E2e:
    registry, bus = streams.registry, streams.bus
    enabled = core.config.federation.enabled
    keys = E2eKeysHandler(
        core.server_name, core.clock, stores.e2e_key_store, stores.device_store, federation.client
    )
    # Who changed devices or cross-signing keys, for sync and /keys/changes; our users'
    # changes go out as EDUs, other servers' are cached.
    device_lists = DeviceListHandler(
        core.server_name,
        core.reactor,
        stores.device_list_store,
        stores.device_store,
        streams.shared_rooms,
        stores.state_store,
        registry["device_lists"],
        registry["events"].rooms_index(),
        registry["events"].users_index(),
        bus,
        federation.client,
        federation.sender,
        enabled,
    )
    # Keys and device lists need each other (an upload changes the device list; an outgoing
    # device-list update carries the keys): one package, so they are joined here.
    device_lists.e2e_keys = keys
    keys.device_lists = device_lists
    to_device = ToDeviceHandler(
        core.server_name,
        core.clock,
        stores.device_inbox_store,
        registry["to_device"],
        bus,
        federation.sender if enabled else None,
    )
    return E2e(
        keys=keys,
        device_lists=device_lists,
        to_device=to_device,
        room_keys=RoomKeysHandler(stores.room_keys_store),
    )
