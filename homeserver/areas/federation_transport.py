"""Reaching other servers: discovery, TLS, signed requests, server keys, the persisted send
queue and remote lookups. Needs nothing from rooms, so everything else can take it at
construction (built even when federation is disabled: its handlers then refuse)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from federation.client import FederationClient
from federation.discovery import HttpsWellKnownFetcher, IPRangeFilter, ServerResolver, TlsConnector
from federation.keys import KeyRing
from federation.queries import RemoteQueries
from federation.sender import FederationSender, LoadPdus
from homeserver.areas.core import Core
from homeserver.areas.stores import Stores
from storage.stores.events import EventStore


@dataclass(frozen=True)
class FederationTransport:
    connector: TlsConnector
    server_resolver: ServerResolver
    client: FederationClient
    keyring: KeyRing
    sender: FederationSender
    remote_queries: RemoteQueries


def build_federation_transport(core: Core, stores: Stores) -> FederationTransport:
    fed = core.config.federation
    connector = TlsConnector(
        core.reactor, IPRangeFilter(fed.ip_range_blocklist, fed.ip_range_allowlist)
    )
    resolver = ServerResolver(
        core.clock,
        fetch_well_known=HttpsWellKnownFetcher(core.reactor, fed, connector),
    )
    client = FederationClient(
        core.reactor, core.clock, core.server_name, core.signing_key, fed, resolver, connector
    )
    keyring = KeyRing(
        core.server_name, core.signing_key, fed, core.clock, stores.server_key_store, client
    )
    sender = FederationSender(
        core.reactor,
        core.clock,
        core.server_name,
        fed,
        stores.federation_queue_store,
        client,
        _pdu_loader(stores.event_store),
    )
    client.add_answer_listener(sender.peer_is_up)
    return FederationTransport(
        connector=connector,
        server_resolver=resolver,
        client=client,
        keyring=keyring,
        sender=sender,
        remote_queries=RemoteQueries(core.clock, client, fed.enabled),
    )


def _pdu_loader(event_store: EventStore) -> LoadPdus:
    async def load_pdus(event_ids: list[str]) -> list[dict[str, Any]]:
        """The PDUs of queued events, in order, for the federation sender."""
        events = await event_store.get_events(event_ids)
        return [events[e].pdu for e in event_ids if e in events]

    return load_pdus
