"""Pushers: the client API's handler and the delivery of notifications to push gateways.
Push-rule evaluation hands notifications to `PusherHandler.on_notification` and
`on_counts_changed`; `HomeServer.setup` starts delivery (resuming what was queued) and
`stop` stops it."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.areas.core import Core
from homeserver.areas.stores import Stores
from homeserver.push.delivery import PushDelivery
from homeserver.push.gateway_client import PushGatewayClient
from homeserver.push.pushers import PusherHandler


@dataclass(frozen=True)
class Pushers:
    handler: PusherHandler
    delivery: PushDelivery


def build_pushers(core: Core, stores: Stores) -> Pushers:
    delivery = PushDelivery(
        core.config.pushers,
        core.reactor,
        core.clock,
        stores.pusher_store,
        stores.state_store,
        stores.event_store,
        PushGatewayClient(core.reactor, core.config.pushers),
    )
    return Pushers(
        handler=PusherHandler(core.clock, stores.pusher_store, delivery), delivery=delivery
    )
