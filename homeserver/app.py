"""Composition root: builds stores, handlers and listeners from the config. Nothing else
constructs these singletons; everything receives what it needs from here."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.web import resource, server

from client_api.http import HeddleRequest, HeddleSite, JsonResource, Router
from federation.outbound import OutboundEvents
from homeserver.areas.admin import build_admin
from homeserver.areas.auth import build_auth
from homeserver.areas.core import build_core
from homeserver.areas.e2e import build_e2e
from homeserver.areas.federation import LateRoomFederation, build_federation
from homeserver.areas.federation_transport import build_federation_transport
from homeserver.areas.media import build_media
from homeserver.areas.pushers import build_pushers
from homeserver.areas.rooms import RoomsFederation, build_rooms
from homeserver.areas.stores import build_stores
from homeserver.areas.streams import build_streams
from homeserver.areas.sync import build_sync
from homeserver.areas.user_data import build_user_data
from homeserver.cli import StartupError
from homeserver.config import HomeserverConfig, ListenerConfig
from homeserver.push.to_pushers import PusherBridge
from storage.migrations import apply_migrations

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
        # The areas, in dependency order (see homeserver/areas/): each builder takes only
        # the areas it needs. The attributes after each are the names servlets and tests use.
        core = self.core = build_core(config, reactor)
        self.server_name = core.server_name
        # The spec versions /versions advertises; set when the client routes are registered.
        self.spec_versions: list[str] = []
        self.clock = core.clock
        self.signing_key = core.signing_key
        self.db = core.db
        self.replication = core.replication

        stores = self.stores = build_stores(core.db, core.replication, core.server_name)
        self.accounts = stores.accounts
        self.device_store = stores.device_store
        self.token_store = stores.token_store
        self.event_store = stores.event_store
        self.state_store = stores.state_store
        self.room_store = stores.room_store
        self.alias_store = stores.alias_store
        self.presence_store = stores.presence_store
        self.receipt_store = stores.receipt_store
        self.account_data_store = stores.account_data_store
        self.device_inbox_store = stores.device_inbox_store
        self.media_store = stores.media_store
        self.room_keys_store = stores.room_keys_store
        self.federation_event_store = stores.federation_event_store
        self.server_key_store = stores.server_key_store
        self.federation_queue_store = stores.federation_queue_store
        self.device_list_store = stores.device_list_store
        self.e2e_key_store = stores.e2e_key_store
        self.pusher_store = stores.pusher_store

        streams = build_streams(reactor, stores, stores.state_store, stores.room_store)
        self.streams = streams.registry
        self.stream_bus = streams.bus
        self.notifier = streams.notifier
        self.shared_rooms = streams.shared_rooms
        self.presence_changes = streams.registry["presence"].users_index()

        transport = build_federation_transport(core, stores)
        self.federation_connector = transport.connector
        self.server_resolver = transport.server_resolver
        self.federation_client = transport.client
        self.keyring = transport.keyring
        self.federation_sender = transport.sender

        e2e = build_e2e(core, stores, streams, transport)
        self.e2e_keys = e2e.keys
        self.device_lists = e2e.device_lists
        self.to_device = e2e.to_device
        self.room_keys = e2e.room_keys

        auth = self.auth = build_auth(core, stores, e2e.device_lists)
        self.tokens = auth.tokens
        self.devices = auth.devices
        self.uia = auth.uia
        self.login = auth.login
        self.login_tokens = auth.login_tokens
        self.login_token_limiter = auth.login_token_limiter
        self.registration_limiter = auth.registration_limiter
        self.registration = auth.registration
        self.shared_secret_registration = auth.shared_secret_registration
        self.account = auth.account
        self.openid = auth.openid
        self.threepid_validation = auth.threepid_validation
        self.threepids = auth.threepids
        self.id_server_bindings = auth.id_server_bindings

        user_data = build_user_data(core, stores, streams)
        self.presence = user_data.presence
        self.typing = user_data.typing
        self.receipts = user_data.receipts
        self.account_data = user_data.account_data
        self.read_markers = user_data.read_markers
        self.push_rules = user_data.push_rules

        pushers = build_pushers(core, stores)
        self.pushers = pushers.handler
        self.push_delivery = pushers.delivery

        # Rooms and federation need each other; rooms get a late-bound view of federation
        # that `build_federation` binds (see `LateRoomFederation`).
        late_federation = (
            LateRoomFederation(
                OutboundEvents(core.server_name, stores.state_store, transport.sender)
            )
            if config.federation.enabled
            else None
        )
        rooms = self.rooms = build_rooms(
            core,
            stores,
            streams,
            user_data.presence,
            transport.remote_queries,
            late_federation.for_rooms() if late_federation is not None else RoomsFederation(),
            user_data.account_data,
            user_data.push_rules,
            user_data.notification_counts,
        )
        self.event_stream = rooms.event_stream
        self.persister = rooms.persister
        self.push_actions = rooms.push_actions
        self.notifications = rooms.notifications
        self.notification_counts = user_data.notification_counts
        # New notifications and lowered unread counts go to the user's pushers.
        to_pushers = self.pusher_bridge = PusherBridge(
            user_data.notification_counts, streams.shared_rooms, self.pushers,
            self.push_delivery,
        )
        rooms.push_actions.add_notification_listener(
            to_pushers.on_notification, self.push_delivery.users_with_http_pushers
        )
        user_data.receipts.read_listeners.append(to_pushers.read_moved)
        self.event_creator = rooms.event_creator
        self.event_serializer = rooms.event_serializer
        self.profiles = rooms.profiles
        self.history_visibility = rooms.history_visibility
        self.directory = rooms.directory
        self.room_list = rooms.room_list
        self.spaces = rooms.spaces
        self.user_directory = rooms.user_directory
        self.membership = rooms.membership
        self.event_sender = rooms.event_sender
        self.room_creation = rooms.room_creation
        self.third_party_invites = rooms.third_party_invites
        self.room_upgrades = rooms.room_upgrades
        self.room_state = rooms.room_state
        self.messages = rooms.messages
        self.relations = rooms.relations
        self.mutual_rooms = rooms.mutual_rooms
        self.search = rooms.search

        sync = build_sync(core, stores, streams, rooms, user_data, e2e, auth)
        self.filtering = sync.filtering
        self.sync = sync.handler
        self.websocket_sync = sync.websocket
        self.legacy_events = sync.legacy_events
        self.room_initial_sync = sync.room_initial_sync
        self.websocket_connections = sync.websocket_connections
        self.websocket_request_limiter = sync.websocket_request_limiter

        media = build_media(core, stores, transport)
        self.media = media.repository
        self.media_provider = media.provider
        self.url_previewer = media.url_previewer

        federation = build_federation(
            core, stores, streams, transport, rooms, user_data, e2e, late_federation
        )
        self.federation_events = federation.events
        self.federation_membership = federation.membership
        self.timestamp_lookup = federation.timestamp_lookup
        self.federation_transactions = federation.transactions

        admin = self.admin = build_admin(
            core, stores, auth, rooms, media, user_data.account_data, transport.sender
        )
        self.admin_audit = admin.audit
        self.admin_audit_store = stores.admin_audit_store
        self.admin_users = admin.users
        self.account_deactivation = admin.deactivation
        self.admin_federation = admin.federation
        self.server_notices = admin.server_notices
        self.admin_rooms = admin.rooms
        self.admin_tasks = admin.tasks
        self.room_admin_store = stores.room_admin_store
        self.registration_token_store = stores.registration_token_store
        self.admin_reports = admin.reports
        self.abuse_reports = admin.abuse_reports
        self.report_store = stores.report_store

        self.ports: list[Any] = []
        self._uia_cleanup: task.LoopingCall | None = None
        self._writer_lock_check: task.LoopingCall | None = None
        self._stopped = False
        # Set by `setup`: done once deactivations left half done by a stopped process are
        # finished (see `AccountDeactivation.resume_pending`).
        self.deactivations_resumed: defer.Deferred[None] = defer.succeed(None)

    def client_ip(self, request: HeddleRequest) -> str:
        listener = getattr(request.site, "heddle_listener", None)
        return request.client_ip(trust_forwarded=bool(listener and listener.x_forwarded))

    async def setup(self) -> None:
        """Take the database's writer lock, bring its schema up to date; call before
        `start_listening`."""
        if self._takes_writer_lock:
            await self._take_writer_lock()
        await apply_migrations(self.db)
        if self._takes_writer_lock:
            # Rooms held before the admin room list kept a summary of each get theirs (a
            # no-op once done).
            filled = await self.room_admin_store.fill_room_list_summaries(self.server_name)
            if filled:
                logger.info("wrote the room list summary of %d rooms", filled)
        await self.streams.load()
        self.rooms.state_group_ids.initialise(await self.state_store.get_max_state_group())
        self.rooms.backfill_ids.initialise(await self.event_store.get_min_stream_ordering())
        await self.presence.start()
        await self.replication.start()
        self._uia_cleanup = task.LoopingCall(self._periodic_cleanup)
        self._uia_cleanup.clock = self.reactor
        self._uia_cleanup.start(UIA_CLEANUP_INTERVAL_S, now=False)
        await self.federation_sender.start()
        await self.push_delivery.start()
        self.push_actions.start()
        if self._takes_writer_lock:
            # Only the writer runs admin tasks: those it finds running died with its
            # predecessor.
            await self.admin_rooms.recover_interrupted()
            # Media deletions a stopped process left marked would hold up identical uploads.
            await self.media_store.clear_storage_key_deletions()
            # In the background: leaving many rooms takes a while, and start-up need not wait.
            self.deactivations_resumed = defer.ensureDeferred(
                self.account_deactivation.resume_pending()
            )

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
                await self.threepid_validation.expire_sessions()
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
        from client_api.websocket.root import ClientRootResource

        def build_websocket() -> resource.Resource:
            from client_api.websocket.protocol import build_websocket_resource

            return build_websocket_resource(self, listener)  # type: ignore[no-any-return]

        return ClientRootResource(json_resource, build_websocket)

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
        try:
            # What moved without being written (the last active time of active users), so
            # the next start reads it back.
            await self.presence.save()
        except Exception:
            logger.exception("writing presence on the way down failed")
        self.typing.stop()
        # What is staged stays staged (read back on the next start).
        await self.push_actions.stop()
        for port in self.ports:
            stopped: Any = port.stopListening()
            if stopped is not None:
                await stopped
        self.ports = []
        await self.media.stop()
        # Requests to push gateways are abandoned; what they carried stays queued.
        await self.push_delivery.stop()
        await self.replication.stop()
        # In-flight outbound requests are abandoned before the database goes away.
        await self.federation_client.close()

