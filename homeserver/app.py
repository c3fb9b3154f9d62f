"""Composition root: builds stores, handlers and listeners from the config. Nothing else
constructs these singletons; everything receives what it needs from here."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.web import resource, server

from client_api.http import HeddleRequest, HeddleSite, JsonResource, Router
from federation.client import FederationClient
from federation.discovery import HttpsWellKnownFetcher, IPRangeFilter, ServerResolver, TlsConnector
from federation.edus import FederationEdus
from federation.event_handler import FederationEventHandler
from federation.keys import KeyRing
from federation.membership import FederationMembership
from federation.outbound import OutboundEvents
from federation.queries import RemoteQueries
from federation.sender import FederationSender
from federation.transaction import TransactionHandler
from homeserver.account_data import AccountDataHandler
from homeserver.auth.account import AccountHandler
from homeserver.auth.credentials import CredentialChecker
from homeserver.auth.devices import DeviceHandler
from homeserver.auth.login import LoginHandler
from homeserver.auth.passwords import PasswordHasher
from homeserver.auth.registration import RegistrationHandler
from homeserver.auth.shared_secret import SharedSecretRegistration
from homeserver.auth.tokens import TokenHandler
from homeserver.auth.uia import UserInteractiveAuth
from homeserver.cli import StartupError
from homeserver.clock import Clock
from homeserver.config import HomeserverConfig, ListenerConfig
from homeserver.e2e.device_lists import DeviceListHandler
from homeserver.e2e.keys import E2eKeysHandler
from homeserver.e2e.room_keys import RoomKeysHandler
from homeserver.e2e.to_device import DIRECT_TO_DEVICE, ToDeviceHandler
from homeserver.events.serialize import EventSerializer
from homeserver.filtering import Filtering
from homeserver.presence import PresenceHandler
from homeserver.profile import ProfileHandler
from homeserver.push.handler import PushRulesHandler
from homeserver.ratelimit import RateLimiter
from homeserver.read_markers import ReadMarkerHandler
from homeserver.receipts import ReceiptsHandler
from homeserver.replication import CURRENT_STATE_STREAM, Replication
from homeserver.rooms.creation import RoomCreationHandler
from homeserver.rooms.creator import EventCreator, timeline_subscriber
from homeserver.rooms.directory import DirectoryHandler, RoomListHandler, StateContents
from homeserver.rooms.membership import MembershipHandler
from homeserver.rooms.messages import MessagesHandler
from homeserver.rooms.power import RoomPower
from homeserver.rooms.sending import EventSendHandler
from homeserver.rooms.state import RoomStateHandler
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.signing_key import load_signing_key
from homeserver.streams.bus import StreamBus
from homeserver.streams.declarations import SYNC_STREAMS
from homeserver.streams.registry import StreamRegistry
from homeserver.sync.handler import SyncHandler
from homeserver.sync.notifier import Notifier
from homeserver.sync.websocket import ConnectionRegistry, WebSocketSyncHandler
from homeserver.typing import TypingHandler
from homeserver.user_directory import UserDirectoryHandler
from media_repo.preview import UrlPreviewer
from media_repo.providers.base import StorageProvider
from media_repo.providers.filesystem import FilesystemProvider
from media_repo.providers.s3 import S3Provider
from media_repo.remote import LocationFetcher, RemoteMedia
from media_repo.repository import MediaRepository
from storage.database import Database
from storage.engines import create_engine
from storage.migrations import apply_migrations
from storage.persister import EventPersister, IdAllocator
from storage.stores.account_data import AccountDataStore
from storage.stores.accounts import AccountStore
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
from storage.stores.media import MediaStore
from storage.stores.presence import PresenceStore
from storage.stores.profiles import ProfileStore
from storage.stores.receipts import ReceiptStore
from storage.stores.room_keys import RoomKeysStore
from storage.stores.rooms import RoomStore
from storage.stores.server_keys import ServerKeyStore
from storage.stores.state import StateStore
from storage.stores.tokens import TokenStore
from storage.stores.uia import UiaStore

logger = logging.getLogger(__name__)

UIA_CLEANUP_INTERVAL_S = 15 * 60
# How often a running server makes sure it still holds the database's writer lock. A pool
# connection found broken is a reason to check at once; this catches the lock's connection
# failing alone.
WRITER_LOCK_CHECK_INTERVAL_S = 5.0


class DatabaseInUseError(StartupError):
    """Another process holds the database's writer lock."""


class HomeServer:
    def __init__(
        self, config: HomeserverConfig, reactor: Any, *, writer_lock: bool = True
    ) -> None:
        """`writer_lock=False` is for processes that share the database with the running
        server without taking its writer lock: `heddle register-user` (it writes accounts,
        which no per-process allocator numbers) and tests that run a second server on one
        database on purpose. A server that writes events must hold it."""
        self.config = config
        self.reactor = reactor
        self._takes_writer_lock = writer_lock
        # Why the server stopped itself, when carrying on could have corrupted data (the
        # CLI then exits non-zero, so a supervisor restarts it).
        self.fatal_error: str | None = None
        # What to do then: stop the process. Tests record the call instead.
        self.on_fatal_error: Callable[[], None] = self._stop_reactor
        self.server_name = config.server_name
        self.clock = Clock(reactor)
        self.signing_key = load_signing_key(config.resolve_path(config.signing_key_path))

        self.db = Database(
            create_engine(config.database_url, config.database.max_connections), reactor
        )
        self.accounts = AccountStore(self.db)
        self.device_store = DeviceStore(self.db)
        self.token_store = TokenStore(self.db)
        self.uia_store = UiaStore(self.db)
        self.profile_store = ProfileStore(self.db)

        limits = config.rate_limits

        def limiter(name: str, limit: Any) -> RateLimiter:
            return RateLimiter(name, self.clock, limit, enabled=limits.enabled)

        self.replication = Replication(config.redis, self.server_name)
        self.hasher = PasswordHasher(config.auth.bcrypt_rounds)
        self.tokens = TokenHandler(
            config.auth,
            self.server_name,
            self.clock,
            self.token_store,
            self.accounts,
            self.replication,
        )
        self.devices = DeviceHandler(self.clock, self.device_store, self.tokens)
        self.credentials = CredentialChecker(
            self.server_name,
            self.accounts,
            self.hasher,
            limiter("login_failures_per_account", limits.login_failures_per_account),
        )
        self.uia = UserInteractiveAuth(
            self.server_name, self.clock, self.uia_store, self.credentials, config.registration
        )
        self.login = LoginHandler(
            self.server_name,
            self.credentials,
            self.devices,
            self.tokens,
            limiter("login_per_address", limits.login_per_address),
            limiter("login_per_account", limits.login_per_account),
        )
        self.registration_limiter = limiter(
            "registration_per_address", limits.registration_per_address
        )
        self.registration = RegistrationHandler(
            self.server_name,
            self.clock,
            config.registration,
            self.accounts,
            self.hasher,
            self.uia,
            self.login,
            self.registration_limiter,
            limiter(
                "registration_sessions_per_address", limits.registration_sessions_per_address
            ),
        )
        self.shared_secret_registration = SharedSecretRegistration(
            self.clock,
            config.registration,
            self.registration,
            self.login,
            self.registration_limiter,
        )
        self.account = AccountHandler(
            config.registration, self.accounts, self.hasher, self.devices, self.tokens
        )

        # Rooms and events.
        self.event_store = EventStore(self.db)
        self.state_store = StateStore(self.db)
        # Each process caches rooms' current state; a change made here makes the others
        # drop their copy of that room (and a lost Redis connection makes them drop all).
        self.state_store.current_state_listeners.append(
            lambda room_id: self.replication.publish(CURRENT_STATE_STREAM, room_id)
        )
        self.replication.subscribe(CURRENT_STATE_STREAM, self._current_state_changed_elsewhere)
        self.replication.on_resync(self.state_store.clear_current_state_cache)
        self.room_store = RoomStore(self.db)
        # Every stream a client syncs on (see homeserver/streams/): allocators, visible
        # positions and change indexes, loaded in `setup()` from the stores named in the
        # declarations. Writers publish on the bus after commit; the notifier wakes syncs.
        self.streams = StreamRegistry.build(SYNC_STREAMS, self)
        self.stream_bus = StreamBus(self.streams, reactor)
        self.notifier = Notifier(reactor, self.state_store)
        self.stream_bus.subscribe(self.notifier.on_stream_update)
        self.event_stream = self.streams["events"].id_generator()
        self.room_changes = self.streams["events"].rooms_index()
        self.membership_changes = self.streams["events"].users_index()
        self.state_group_ids = IdAllocator()
        # Outliers and backfilled events take positions below zero, counting down.
        self.backfill_ids = IdAllocator(0, step=-1)
        self.persister = EventPersister(
            self.db, self.state_store, self.event_stream, self.state_group_ids, self.backfill_ids
        )
        self.event_creator = EventCreator(
            self.server_name,
            self.signing_key,
            self.clock,
            self.event_store,
            self.state_store,
            self.room_store,
            self.persister,
            self.stream_bus,
        )
        self.event_serializer = EventSerializer(self.clock, self.event_store)
        self.profiles = ProfileHandler(
            self.server_name,
            self.profile_store,
            self.room_store,
            self.state_store,
            self.event_store,
            self.event_creator,
        )
        # Who may read a room (history visibility) and who has the power to act in it.
        self.history_visibility = HistoryVisibility(
            self.event_store, self.state_store, self.room_store
        )
        self.room_power = RoomPower(self.event_store, self.state_store, self.room_store)
        self.state_contents = StateContents(self.event_store, self.state_store)
        # Aliases, the published room directory and the user directory.
        self.alias_store = AliasStore(self.db)
        self.directory = DirectoryHandler(
            self.server_name,
            self.alias_store,
            self.event_store,
            self.state_store,
            self.room_store,
            self.state_contents,
            self.room_power,
            self.history_visibility,
            self.event_creator,
        )
        self.room_directory_store = RoomDirectoryStore(self.db)
        self.room_list = RoomListHandler(
            self.server_name, self.room_directory_store, self.state_contents, self.room_power
        )
        self.user_directory_store = UserDirectoryStore(self.db)
        self.user_directory = UserDirectoryHandler(self.user_directory_store)
        # Presence comes first among the per-user streams: sending events counts as activity.
        self.presence_store = PresenceStore(self.db)
        self.presence_changes = self.streams["presence"].users_index()
        self.presence = PresenceHandler(
            config.presence,
            self.server_name,
            self.clock,
            reactor,
            self.presence_store,
            self.room_store,
            self.streams["presence"],
            self.stream_bus,
        )
        self.membership = MembershipHandler(
            self.server_name,
            self.event_creator,
            self.event_store,
            self.state_store,
            self.room_store,
            self.directory,
            self.profile_store,
            self.accounts,
            self.room_power,
        )
        self.message_limiter = limiter("message_per_user", limits.message_per_user)
        self.event_sender = EventSendHandler(
            self.server_name,
            self.event_creator,
            self.event_store,
            self.state_store,
            self.room_store,
            self.directory,
            self.membership,
            self.room_power,
            self.message_limiter,
            self.presence,
        )
        self.room_creation = RoomCreationHandler(
            self.server_name,
            config.rooms,
            self.event_creator,
            self.membership,
            self.alias_store,
            self.message_limiter,
        )
        # Filters and reading history (/messages, /context, /event).
        self.filter_store = FilterStore(self.db)
        self.filtering = Filtering(self.filter_store)
        self.room_state = RoomStateHandler(
            self.event_store, self.state_store, self.room_store, self.history_visibility
        )
        self.messages = MessagesHandler(
            self.event_store, self.state_store, self.history_visibility, self.event_serializer
        )
        # Ephemeral and per-user data: each handler writes its stream (typing in memory only).
        self.receipt_store = ReceiptStore(self.db)
        self.account_data_store = AccountDataStore(self.db)
        self.typing = TypingHandler(
            reactor, self.room_store, self.streams["typing"], self.stream_bus
        )
        self.account_data = AccountDataHandler(
            self.account_data_store, self.streams["account_data"], self.stream_bus
        )
        self.receipts = ReceiptsHandler(
            self.clock,
            self.receipt_store,
            self.event_store,
            self.room_store,
            self.streams["receipts"],
            self.stream_bus,
        )
        self.read_markers = ReadMarkerHandler(self.receipts, self.account_data, self.presence)
        # Send-to-device messages (issue 6): per-device inboxes, acknowledged by /sync.
        self.device_inbox_store = DeviceInboxStore(self.db)
        self.to_device = ToDeviceHandler(
            self.server_name,
            self.clock,
            self.device_inbox_store,
            self.streams["to_device"],
            self.stream_bus,
        )
        # Push rules live in the user's m.push_rules account data (no pushers yet).
        self.push_rules = PushRulesHandler(self.account_data)
        self.sync = SyncHandler(
            self.server_name,
            self.clock,
            self.event_store,
            self.state_store,
            self.room_store,
            self.event_serializer,
            self.notifier,
            self.streams,
            self.history_visibility,
            self.typing,
            self.receipts,
            self.account_data,
            self.presence,
        )
        self.membership.forget_listeners.append(self.sync.forget_memberships)
        # Sync pushed over WebSockets (client_api/websocket/): the push loops, and the open
        # connections, which a token revocation closes.
        self.websocket_sync = WebSocketSyncHandler(
            self.sync, self.notifier, self.presence, self.clock
        )
        self.websocket_connections: ConnectionRegistry = ConnectionRegistry(config.websocket.max_connections)
        self.tokens.add_revocation_listener(self.websocket_connections.revoked)
        self.websocket_request_limiter = limiter(
            "websocket_requests", config.websocket.request_rate
        )

        # Media (issue 5): metadata in the database, bytes with the storage provider.
        self.media_store = MediaStore(self.db)
        self.media_provider = self._media_provider()
        self.media = MediaRepository(
            self.server_name,
            self.clock,
            reactor,
            config.media,
            self.media_store,
            self.media_provider,
            limiter("media_upload_per_user", limits.media_upload_per_user),
        )
        self.url_previewer = UrlPreviewer(reactor, self.clock, config.media.url_preview, self.media)

        # Server-side key backups (issue 6).
        self.room_keys_store = RoomKeysStore(self.db)
        self.room_keys = RoomKeysHandler(self.room_keys_store)

        # Federation (issue 4): outbound requests (discovery, TLS, signing), keys, the
        # persisted send queue, inbound events and membership, remote lookups.
        fed = config.federation
        self.federation_event_store = FederationEventStore(self.db)
        self.federation_connector = TlsConnector(
            reactor, IPRangeFilter(fed.ip_range_blocklist, fed.ip_range_allowlist)
        )
        self.server_resolver = ServerResolver(
            self.clock,
            fetch_well_known=HttpsWellKnownFetcher(reactor, fed, self.federation_connector),
        )
        self.federation_client = FederationClient(
            reactor,
            self.clock,
            self.server_name,
            self.signing_key,
            fed,
            self.server_resolver,
            self.federation_connector,
        )
        self.server_key_store = ServerKeyStore(self.db)
        self.keyring = KeyRing(
            self.server_name,
            self.signing_key,
            fed,
            self.clock,
            self.server_key_store,
            self.federation_client,
        )
        self.federation_queue_store = FederationQueueStore(self.db)
        self.federation_sender = FederationSender(
            reactor,
            self.clock,
            self.server_name,
            fed,
            self.federation_queue_store,
            self.federation_client,
            self._load_pdus,
        )
        self.federation_client.add_answer_listener(self.federation_sender.peer_is_up)
        self.federation_events = FederationEventHandler(
            self.server_name,
            self.keyring,
            self.federation_client,
            self.event_store,
            self.federation_event_store,
            self.state_store,
            self.persister,
            self.event_creator,
        )
        self.federation_membership = FederationMembership(
            self.server_name,
            self.signing_key,
            self.clock,
            self.federation_client,
            self.federation_events,
            self.event_creator,
            self.persister,
            self.event_store,
            self.federation_event_store,
            self.state_store,
            self.room_store,
            self.accounts,
            self.membership,
            self.federation_sender,
            fed.max_join_response_bytes,
        )
        self.federation_transactions = TransactionHandler(
            self.clock,
            self.federation_event_store,
            self.event_store,
            self.state_store,
            self.federation_events,
            self.federation_sender,
        )
        self.remote_queries = RemoteQueries(self.clock, self.federation_client, fed.enabled)
        self.profiles.remote = self.remote_queries
        self.directory.remote = self.remote_queries
        self.room_list.remote = self.remote_queries
        # End-to-end encryption keys (issue 6): device, one-time, fallback and cross-signing
        # keys; other servers' users are asked over federation.
        self.e2e_key_store = E2eKeyStore(self.db)
        self.e2e_keys = E2eKeysHandler(
            self.server_name,
            self.clock,
            self.e2e_key_store,
            self.device_store,
            self.federation_client,
        )
        # Device lists (issue 6): who changed devices or cross-signing keys, for sync and
        # /keys/changes; our users' changes go out as EDUs, other servers' are cached.
        self.device_list_store = DeviceListStore(self.db)
        self.device_lists = DeviceListHandler(
            self.server_name,
            reactor,
            self.device_list_store,
            self.device_store,
            self.room_store,
            self.state_store,
            self.streams["device_lists"],
            self.room_changes,
            self.membership_changes,
            self.stream_bus,
            self.federation_client,
            self.federation_sender,
            fed.enabled,
        )
        self.device_lists.e2e_keys = self.e2e_keys
        self.e2e_keys.device_lists = self.device_lists
        self.devices.device_lists = self.device_lists
        self.sync.device_lists = self.device_lists
        self.sync.to_device = self.to_device
        self.sync.e2e_keys = self.e2e_keys
        # Other servers' media, fetched over federation and kept with ours.
        self.media.remote = RemoteMedia(
            self.server_name,
            self.clock,
            self.federation_client,
            self.media_store,
            self.media_provider,
            config.media,
            LocationFetcher(
                reactor,
                IPRangeFilter(fed.ip_range_blocklist, fed.ip_range_allowlist),
                self.federation_connector,
                fed.verify_tls,
            ),
            fed.request_timeout_ms,
        )
        self.federation_transactions.wait_for_joins = self.federation_membership.wait_for_joins
        # A leave or ban ending a local user's invite or knock in a room we are not in.
        self.federation_events.out_of_room_membership = (
            self.federation_membership.receive_out_of_room_membership
        )
        if fed.enabled:
            self.membership.federation = self.federation_membership
            self.event_creator.remote_invite = self.federation_membership.invite_remote_user
            outbound = OutboundEvents(self.server_name, self.state_store, self.federation_sender)
            self.event_creator.outbound_destinations = outbound.destinations_for
            self.stream_bus.subscribe(
                timeline_subscriber(outbound.on_event_persisted), streams=["events"]
            )
            self.messages.backfill = self._backfill
            self.federation_edus = FederationEdus(
                self.server_name,
                self.federation_sender,
                self.state_store,
                self.room_store,
                self.typing,
                self.receipts,
                self.presence,
            )
            self.federation_transactions.edu_handlers.update(self.federation_edus.handlers())
            self.federation_transactions.edu_handlers.update(self.device_lists.edu_handlers())
            self.stream_bus.subscribe(
                timeline_subscriber(self.device_lists.on_event_persisted), streams=["events"]
            )
            self.to_device.federation = self.federation_sender
            self.federation_transactions.edu_handlers[DIRECT_TO_DEVICE] = (
                self.to_device.on_direct_to_device
            )
            self.typing.local_change_listeners.append(self.federation_edus.local_typing_changed)
            self.stream_bus.subscribe(
                self.federation_edus.on_receipts_update, streams=["receipts"]
            )
            self.presence.local_change_listeners.append(
                self.federation_edus.local_presence_changed
            )

        self.ports: list[Any] = []
        self._uia_cleanup: task.LoopingCall | None = None
        self._writer_lock_check: task.LoopingCall | None = None
        self._stopped = False

    def _media_provider(self) -> StorageProvider:
        s3 = self.config.media.s3
        if s3 is None:
            return FilesystemProvider(
                self.config.resolve_path(self.config.media.store_path), self.reactor
            )
        return S3Provider(
            s3.bucket,
            s3.endpoint_url,
            s3.region,
            s3.access_key_id,
            s3.secret_access_key,
            self.reactor,
            timeout_s=s3.timeout_ms / 1000,
            key_prefix=s3.key_prefix,
        )

    async def _backfill(self, room_id: str, lowest: int | None, highest: int) -> bool:
        return await self.federation_events.backfill(
            room_id,
            lambda: self.federation_membership.room_servers(room_id),
            cited_between=(lowest, highest),
        )

    async def _load_pdus(self, event_ids: list[str]) -> list[dict[str, Any]]:
        """The PDUs of queued events, in order, for the federation sender."""
        events = await self.event_store.get_events(event_ids)
        return [events[e].pdu for e in event_ids if e in events]

    def _current_state_changed_elsewhere(self, room_id: Any) -> None:
        if isinstance(room_id, str):
            self.state_store.invalidate_current_state(room_id)

    def client_ip(self, request: HeddleRequest) -> str:
        listener = getattr(request.site, "heddle_listener", None)
        return request.client_ip(trust_forwarded=bool(listener and listener.x_forwarded))

    async def setup(self) -> None:
        """Take the database's writer lock, bring its schema up to date; call before
        `start_listening`."""
        if self._takes_writer_lock:
            await self._take_writer_lock()
        await apply_migrations(self.db)
        await self.streams.load()
        self.state_group_ids.initialise(await self.state_store.get_max_state_group())
        self.backfill_ids.initialise(await self.event_store.get_min_stream_ordering())
        await self.presence.start()
        await self.replication.start()
        self._uia_cleanup = task.LoopingCall(self._periodic_cleanup)
        self._uia_cleanup.clock = self.reactor
        self._uia_cleanup.start(UIA_CLEANUP_INTERVAL_S, now=False)
        await self.federation_sender.start()

    async def _take_writer_lock(self) -> None:
        """Refuse to start next to another writing process (see `WriterLock`); once started,
        stop rather than write without the lock. Reconnecting and taking the lock again is
        not safe: another process may have taken it and written in between, which this
        process's stream positions and caches know nothing about. A fresh start reads them
        back from the database (or is refused while the other process runs)."""
        if not await self.db.take_writer_lock(on_lost=self._writer_lock_lost):
            raise DatabaseInUseError(
                "another Heddle process is already writing to this database"
                f" ({self.db.engine.location()}); stop it first"
            )
        self._writer_lock_check = task.LoopingCall(
            lambda: defer.ensureDeferred(self.db.check_writer_lock())
        )
        self._writer_lock_check.clock = self.reactor
        self._writer_lock_check.start(WRITER_LOCK_CHECK_INTERVAL_S, now=False).addErrback(
            lambda failure: logger.error(
                "checking the database writer lock failed:\n%s", failure.getTraceback()
            )
        )

    def _writer_lock_lost(self) -> None:
        # The database already refuses every transaction; what is left is to stop.
        self.fatal_error = (
            f"lost the writer lock on the database ({self.db.engine.location()});"
            " stopping, since another process may be writing to it"
        )
        logger.critical("%s", self.fatal_error)
        self.on_fatal_error()

    def _stop_reactor(self) -> None:
        if self.reactor.running:
            self.reactor.stop()

    def _periodic_cleanup(self) -> Any:
        """Expired UIA sessions, inbound transaction IDs old enough that no server will
        retry them, media IDs whose upload never came, and to-device transaction and
        message IDs no sender will retry."""

        async def cleanup() -> None:
            try:
                await self.uia.expire_sessions()
                await self.federation_transactions.prune()
                await self.media_store.delete_expired_pending(self.clock.time_msec())
                await self.to_device.prune()
            except Exception:
                logger.exception("periodic cleanup failed")

        return defer.ensureDeferred(cleanup())

    def build_client_resource(self, listener: ListenerConfig) -> resource.Resource:
        from client_api.routes import register_client_servlets

        router = Router()
        register_client_servlets(router, self)
        json_resource = JsonResource(router)
        if not self.config.websocket.enabled:
            return json_resource
        from client_api.websocket.protocol import ClientRootResource, build_websocket_resource

        return ClientRootResource(json_resource, build_websocket_resource(self, listener))

    def build_federation_resource(self) -> resource.Resource:
        from federation.transport.routes import register_federation_servlets

        router = Router()
        register_federation_servlets(router, self)
        return JsonResource(router, cors_prefixes=())

    def build_metrics_resource(self) -> resource.Resource:
        from homeserver.health import build_metrics_root

        return build_metrics_root()

    def start_listening(self) -> None:
        for listener in self.config.listeners:
            self.ports.append(self._listen(listener))

    def _listen(self, listener: ListenerConfig) -> Any:
        if listener.type == "client":
            root = self.build_client_resource(listener)
        elif listener.type == "federation":
            root = self.build_federation_resource()
        else:
            root = self.build_metrics_resource()
        site: server.Site = HeddleSite(
            root, self.config.limits.max_request_body_bytes, self.config.media.max_upload_bytes
        )
        site.heddle_listener = listener  # type: ignore[attr-defined]
        if listener.tls:
            from homeserver.tls import server_context_factory

            context = server_context_factory(
                self.config.resolve_path(listener.tls_certificate_path or ""),
                self.config.resolve_path(listener.tls_private_key_path or ""),
            )
            port = self.reactor.listenSSL(
                listener.port, site, context, interface=listener.bind_address
            )
        else:
            port = self.reactor.listenTCP(listener.port, site, interface=listener.bind_address)
        logger.info(
            "listening for %s on %s:%d%s",
            listener.type,
            listener.bind_address,
            port.getHost().port,
            " (TLS)" if listener.tls else "",
        )
        return port

    async def stop(self) -> None:
        """Undo `setup` and `start_listening`; calling it again does nothing."""
        if self._stopped:
            return
        self._stopped = True
        if self._writer_lock_check is not None and self._writer_lock_check.running:
            self._writer_lock_check.stop()
        try:
            await self._stop_services()
        finally:
            # Whatever failed above, the database closes and the writer lock is let go, so the
            # next server (a restart, the next test) can start.
            self.db.close()

    async def _stop_services(self) -> None:
        # Open WebSockets stop pushing (their loops read the database) and are told why.
        self.websocket_connections.close_all()
        self.federation_sender.stop()
        if self._uia_cleanup is not None and self._uia_cleanup.running:
            self._uia_cleanup.stop()
        self.presence.stop()
        self.typing.stop()
        for port in self.ports:
            stopped: Any = port.stopListening()
            if stopped is not None:
                await stopped
        self.ports = []
        await self.media.stop()
        await self.replication.stop()
        # In-flight outbound requests are abandoned before the database goes away.
        await self.federation_client.close()

