"""Ephemeral and per-user data, each handler writing its own stream: presence, typing (in
memory only), receipts, account data, read markers and push rules. Built before rooms:
sending an event counts as presence activity."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.account_data import AccountDataHandler
from homeserver.areas.core import Core
from homeserver.areas.stores import Stores
from homeserver.areas.streams import Streams
from homeserver.presence import PresenceHandler
from homeserver.push.counts import NotificationCounts
from homeserver.push.handler import PushRulesHandler
from homeserver.read_markers import ReadMarkerHandler
from homeserver.receipts import ReceiptsHandler
from homeserver.typing import TypingHandler


@dataclass(frozen=True)
class UserData:
    presence: PresenceHandler
    typing: TypingHandler
    receipts: ReceiptsHandler
    account_data: AccountDataHandler
    read_markers: ReadMarkerHandler
    push_rules: PushRulesHandler
    notification_counts: NotificationCounts


def build_user_data(core: Core, stores: Stores, streams: Streams) -> UserData:
    registry, bus = streams.registry, streams.bus
    presence = PresenceHandler(
        core.config.presence,
        core.server_name,
        core.clock,
        core.reactor,
        stores.presence_store,
        streams.shared_rooms,
        registry["presence"],
        bus,
    )
    typing = TypingHandler(core.reactor, stores.room_store, registry["typing"], bus)
    account_data = AccountDataHandler(stores.account_data_store, registry["account_data"], bus)
    receipts = ReceiptsHandler(
        core.clock,
        stores.receipt_store,
        stores.event_store,
        stores.room_store,
        registry["receipts"],
        bus,
    )
    # Unread notification counts, measured from each user's receipts.
    counts = NotificationCounts(stores.push_action_store)
    receipts.read_listeners.append(counts.forget)
    return UserData(
        presence=presence,
        typing=typing,
        receipts=receipts,
        account_data=account_data,
        read_markers=ReadMarkerHandler(receipts, account_data, presence),
        # Push rules live in the user's m.push_rules account data (pushers: `build_pushers`).
        push_rules=PushRulesHandler(account_data),
        notification_counts=counts,
    )
