"""The streams a client syncs on, declared once.

Each declaration names the stream, says which change indexes it keeps (by room, by user)
and where its highest position is read back from at start-up. The order of declaration is
the order of the positions in a sync token, so a new stream goes at the end (older tokens
then parse with 0 for it). `StreamRegistry.build` turns these into live `Stream` objects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from storage.stores.account_data import AccountDataStore
    from storage.stores.device_inbox import DeviceInboxStore
    from storage.stores.device_lists import DeviceListStore
    from storage.stores.events import EventStore
    from storage.stores.presence import PresenceStore
    from storage.stores.receipts import ReceiptStore


class StreamStores(Protocol):
    """The stores the declared streams read their highest positions from
    (`homeserver.areas.stores.Stores`)."""

    @property
    def event_store(self) -> EventStore: ...
    @property
    def receipt_store(self) -> ReceiptStore: ...
    @property
    def account_data_store(self) -> AccountDataStore: ...
    @property
    def presence_store(self) -> PresenceStore: ...
    @property
    def device_inbox_store(self) -> DeviceInboxStore: ...
    @property
    def device_list_store(self) -> DeviceListStore: ...


@dataclass(frozen=True)
class StreamDeclaration:
    name: str
    # Names of the change indexes (`StreamChangeCache`) kept for rooms and for users that
    # changed, None for none; the names label the `heddle_cache_size` metric.
    room_index: str | None = None
    user_index: str | None = None
    # Where the highest position written is read back from at start-up; None for a stream
    # held in memory only (it restarts from 0 with the process).
    load_max: Callable[[StreamStores], Awaitable[int]] | None = None


SYNC_STREAMS: tuple[StreamDeclaration, ...] = (
    # Timeline events: the rooms they are in, and users whose membership changed.
    StreamDeclaration(
        "events",
        room_index="room_events",
        user_index="memberships",
        load_max=lambda s: s.event_store.get_max_stream_ordering(),
    ),
    StreamDeclaration(
        "receipts", room_index="receipts", load_max=lambda s: s.receipt_store.get_max_stream_id()
    ),
    StreamDeclaration("typing", room_index="typing"),
    StreamDeclaration(
        "account_data",
        user_index="account_data",
        load_max=lambda s: s.account_data_store.get_max_stream_id(),
    ),
    StreamDeclaration(
        "presence", user_index="presence", load_max=lambda s: s.presence_store.get_max_stream_id()
    ),
    # Per-device inboxes: sync asks the database, so no change index.
    StreamDeclaration("to_device", load_max=lambda s: s.device_inbox_store.get_max_stream_id()),
    StreamDeclaration(
        "device_lists",
        user_index="device_lists",
        load_max=lambda s: s.device_list_store.get_max_stream_id(),
    ),
)

SYNC_STREAM_NAMES: tuple[str, ...] = tuple(d.name for d in SYNC_STREAMS)
