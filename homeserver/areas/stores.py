"""Every store, each a small class over the one `Database` (no SQL runs while building)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.replication import (
    CURRENT_STATE_STREAM,
    E2E_KEY_COUNTS_STREAM,
    REDACTIONS_STREAM,
    Replication,
)
from storage.database import Database
from storage.stores.account_data import AccountDataStore
from storage.stores.accounts import AccountStore
from storage.stores.admin_audit import AdminAuditStore
from storage.stores.admin_tasks import AdminTaskStore
from storage.stores.aliases import AliasStore
from storage.stores.device_inbox import DeviceInboxStore
from storage.stores.device_lists import DeviceListStore
from storage.stores.devices import DeviceStore
from storage.stores.directory import RoomDirectoryStore, UserDirectoryStore
from storage.stores.e2e_keys import E2eKeyStore
from storage.stores.events import EventStore
from storage.stores.federation_events import FederationEventStore
from storage.stores.federation_queue import FederationQueueStore
from storage.stores.filters import FilterStore
from storage.stores.login_tokens import LoginTokenStore
from storage.stores.media import MediaStore
from storage.stores.media_admin import MediaAdminStore
from storage.stores.openid_tokens import OpenIdTokenStore
from storage.stores.presence import PresenceStore
from storage.stores.profiles import ProfileStore
from storage.stores.push_actions import PushActionStore
from storage.stores.pushers import PusherStore
from storage.stores.receipts import ReceiptStore
from storage.stores.registration_tokens import RegistrationTokenStore
from storage.stores.relations import RelationStore
from storage.stores.reports import ReportStore
from storage.stores.room_admin import RoomAdminStore
from storage.stores.room_keys import RoomKeysStore
from storage.stores.rooms import RoomStore
from storage.stores.search import SearchStore
from storage.stores.server_keys import ServerKeyStore
from storage.stores.server_notices import ServerNoticeStore
from storage.stores.state import StateStore
from storage.stores.threepids import ThreepidStore
from storage.stores.tokens import TokenStore
from storage.stores.uia import UiaStore
from storage.stores.user_admin import UserAdminStore


@dataclass(frozen=True)
class Stores:
    """Satisfies `homeserver.streams.declarations.StreamStores` (what stream loaders read)."""

    accounts: AccountStore
    device_store: DeviceStore
    token_store: TokenStore
    login_token_store: LoginTokenStore
    uia_store: UiaStore
    threepid_store: ThreepidStore
    profile_store: ProfileStore
    openid_token_store: OpenIdTokenStore
    event_store: EventStore
    state_store: StateStore
    room_store: RoomStore
    alias_store: AliasStore
    room_directory_store: RoomDirectoryStore
    user_directory_store: UserDirectoryStore
    presence_store: PresenceStore
    filter_store: FilterStore
    receipt_store: ReceiptStore
    relation_store: RelationStore
    search_store: SearchStore
    account_data_store: AccountDataStore
    device_inbox_store: DeviceInboxStore
    media_store: MediaStore
    room_keys_store: RoomKeysStore
    federation_event_store: FederationEventStore
    server_key_store: ServerKeyStore
    federation_queue_store: FederationQueueStore
    e2e_key_store: E2eKeyStore
    device_list_store: DeviceListStore
    pusher_store: PusherStore
    push_action_store: PushActionStore
    admin_audit_store: AdminAuditStore
    server_notice_store: ServerNoticeStore
    user_admin_store: UserAdminStore
    room_admin_store: RoomAdminStore
    admin_task_store: AdminTaskStore
    registration_token_store: RegistrationTokenStore
    media_admin_store: MediaAdminStore
    report_store: ReportStore


def build_stores(db: Database, replication: Replication, server_name: str) -> Stores:
    state_store = StateStore(db)
    # Each process caches rooms' current state; a change made here makes the others drop
    # their copy of that room (and a lost Redis connection makes them drop all).
    state_store.current_state_listeners.append(
        lambda room_id: replication.publish(CURRENT_STATE_STREAM, room_id)
    )

    def changed_elsewhere(room_id: Any) -> None:
        if isinstance(room_id, str):
            state_store.invalidate_current_state(room_id)

    replication.subscribe(CURRENT_STATE_STREAM, changed_elsewhere)
    replication.on_resync(state_store.clear_current_state_cache)

    # Likewise each process caches which events are redacted.
    event_store = EventStore(db)
    event_store.redaction_listeners.append(
        lambda redacts, redaction_id: replication.publish(
            REDACTIONS_STREAM, [redacts, redaction_id]
        )
    )

    def redacted_elsewhere(data: Any) -> None:
        if isinstance(data, list) and len(data) == 2 and all(isinstance(d, str) for d in data):
            event_store.redaction_stored_elsewhere(data[0], data[1])

    replication.subscribe(REDACTIONS_STREAM, redacted_elsewhere)
    replication.on_resync(event_store.clear_redactions_cache)

    # Devices' key counts likewise; the device store deletes keys with their devices, and
    # tells the key store after commit.
    e2e_key_store = E2eKeyStore(db)
    e2e_key_store.key_counts_listeners.append(
        lambda devices: replication.publish(E2E_KEY_COUNTS_STREAM, devices)
    )

    def key_counts_changed_elsewhere(devices: Any) -> None:
        if isinstance(devices, list):
            e2e_key_store.forget_key_counts(
                (d[0], d[1])
                for d in devices
                if isinstance(d, list) and len(d) == 2 and all(isinstance(p, str) for p in d)
            )

    replication.subscribe(E2E_KEY_COUNTS_STREAM, key_counts_changed_elsewhere)
    replication.on_resync(e2e_key_store.clear_key_counts)
    return Stores(
        accounts=AccountStore(db),
        device_store=DeviceStore(db, keys_deleted=e2e_key_store.key_counts_changed),
        token_store=TokenStore(db),
        login_token_store=LoginTokenStore(db),
        uia_store=UiaStore(db),
        threepid_store=ThreepidStore(db),
        profile_store=ProfileStore(db),
        openid_token_store=OpenIdTokenStore(db),
        event_store=event_store,
        state_store=state_store,
        room_store=RoomStore(db),
        alias_store=AliasStore(db),
        room_directory_store=RoomDirectoryStore(db),
        user_directory_store=UserDirectoryStore(db),
        presence_store=PresenceStore(db),
        filter_store=FilterStore(db),
        receipt_store=ReceiptStore(db),
        relation_store=RelationStore(db),
        search_store=SearchStore(db),
        account_data_store=AccountDataStore(db),
        device_inbox_store=DeviceInboxStore(db),
        media_store=MediaStore(db),
        room_keys_store=RoomKeysStore(db),
        federation_event_store=FederationEventStore(db),
        server_key_store=ServerKeyStore(db),
        federation_queue_store=FederationQueueStore(db),
        e2e_key_store=e2e_key_store,
        device_list_store=DeviceListStore(db),
        pusher_store=PusherStore(db),
        push_action_store=PushActionStore(db),
        admin_audit_store=AdminAuditStore(db),
        server_notice_store=ServerNoticeStore(db),
        user_admin_store=UserAdminStore(db, server_name),
        room_admin_store=RoomAdminStore(db),
        admin_task_store=AdminTaskStore(db),
        registration_token_store=RegistrationTokenStore(db),
        media_admin_store=MediaAdminStore(db),
        report_store=ReportStore(db),
    )
