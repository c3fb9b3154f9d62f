"""Device lists (spec: client-server "Tracking the device list for a user", server-server
"Device Management", `m.device_list_update` and `m.signing_key_update`).

Every change of a user's devices (a new device, a rename, a deletion, new device keys or
signatures on them) or cross-signing keys takes a position in the device-list stream. Sync
and `/keys/changes` report, from that stream and from membership changes, which users the
client should query again (`changed`) and which it shares no room with any more (`left`).

Our users' device changes go to every server sharing a room with them as
`m.device_list_update` EDUs, numbered by stream position, each naming the previous one
(`prev_id`); cross-signing key changes as `m.signing_key_update`. Other servers' EDUs keep a
cached copy of their users' device lists up to date, for `/keys/query`: an EDU applies when
its `prev_id` is the last update we hold; otherwise one was missed, and the whole list is
fetched again with `GET /_matrix/federation/v1/user/devices/{userId}` (in the background,
one fetch per user at a time, EDUs arriving meanwhile applied after it). A remote user's
list is tracked while some local user shares a room with them: from the first time it is
asked for (or an EDU about them arrives) until no local user shares a room with them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from twisted.internet import defer

from federation.errors import FederationError
from homeserver.events.types import MEMBER
from homeserver.linearizer import Linearizer
from homeserver.streams.bus import StreamBus, StreamUpdate
from storage.stores.device_lists import DeviceListStore, RemoteDevice

if TYPE_CHECKING:
    from federation.client import FederationClient
    from federation.sender import FederationSender
    from homeserver.rooms.shared_rooms import SharedRooms
    from homeserver.streams.registry import Stream
    from homeserver.sync.change_cache import StreamChangeCache
    from storage.stores.devices import DeviceStore
    from storage.stores.events import StoredEvent
    from storage.stores.state import StateStore

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]

DEVICE_LIST_UPDATE = "m.device_list_update"
SIGNING_KEY_UPDATE = "m.signing_key_update"
USER_DEVICES_PATH = "/_matrix/federation/v1/user/devices/%s"
# A remote server's answer about one user: at most this many devices are kept.
MAX_REMOTE_DEVICES = 1000
MAX_DEVICE_ID_LENGTH = 255
# Updates held for a user while their list is being fetched again.
MAX_PENDING_UPDATES = 100
# Fetches in a row for one user when updates arriving during a fetch still do not fit.
MAX_RESYNC_ROUNDS = 3
RESYNC_TIMEOUT_MS = 30_000
# How long `/keys/query` waits for a first fetch of a remote user's list.
DEFAULT_WAIT_MS = 10_000
# After a fetch from a server fails (or is slower than a query waits), queries neither start
# nor wait for fetches from it for this long: the keys handler asks the server itself, and
# reports it in `failures` if it is down.
UNREACHABLE_MS = 60_000
MAX_STREAM_ID = 2**63 - 1


class LocalKeys(Protocol):
    """What this handler reads of our users' keys (E2eKeysHandler)."""

    async def get_local_device_keys(self, user_id: str) -> dict[str, JsonDict]: ...

    async def get_local_cross_signing_keys(
        self, user_id: str
    ) -> tuple[JsonDict | None, JsonDict | None]: ...


@dataclass(frozen=True)
class RemoteUserKeys:
    """A remote user's keys as cached here: device keys (display names in `unsigned`) and
    cross-signing keys."""

    user_id: str
    devices: dict[str, JsonDict]
    master_key: JsonDict | None
    self_signing_key: JsonDict | None


@dataclass(frozen=True)
class _DeviceUpdate:
    """One m.device_list_update, checked."""

    user_id: str
    stream_id: int
    prev_ids: tuple[int, ...]
    device: RemoteDevice
    deleted: bool


@dataclass(frozen=True)
class _SigningKeyUpdate:
    user_id: str
    master_key: JsonDict | None
    self_signing_key: JsonDict | None


@dataclass(frozen=True)
class _UserDevices:
    """A user/devices answer, checked."""

    stream_id: int
    devices: list[RemoteDevice]
    master_key: JsonDict | None
    self_signing_key: JsonDict | None


class DeviceListHandler:
    def __init__(
        self,
        server_name: str,
        reactor: Any,
        store: DeviceListStore,
        devices: DeviceStore,
        shared_rooms: SharedRooms,
        state: StateStore,
        stream: Stream,
        room_changes: StreamChangeCache,
        membership_changes: StreamChangeCache,
        bus: StreamBus,
        federation_client: FederationClient,
        federation_sender: FederationSender,
        federation_enabled: bool,
    ) -> None:
        self._server_name = server_name
        self._reactor = reactor
        self._store = store
        self._devices = devices
        self._shared_rooms = shared_rooms
        self._state = state
        self._stream = stream
        self._ids = stream.id_generator()
        # Keyed by user_id: the latest position of each user's device-list change.
        self._changes = stream.users_index()
        self._room_changes = room_changes
        self._membership_changes = membership_changes
        self._bus = bus
        self._client = federation_client
        self._sender = federation_sender
        self._federation = federation_enabled
        # Our users' keys, set once the keys handler exists (it also calls this one).
        self.e2e_keys: LocalKeys | None = None
        # One change of a local user at a time, so their EDUs go out in stream order.
        self._local_writers = Linearizer("device_list_local")
        # One reader-writer of a remote user's cached list at a time.
        self._remote_writers = Linearizer("device_list_remote")
        # Remote users whose list is being fetched: the waiters for the fetch to end.
        self._resyncing: dict[str, list[defer.Deferred[bool]]] = {}
        # Updates that arrived during a fetch, applied after it.
        self._pending: dict[str, list[_DeviceUpdate | _SigningKeyUpdate]] = {}
        # server -> until when (reactor seconds) nobody waits for fetches from it.
        self._unreachable: dict[str, float] = {}

    @property
    def current_position(self) -> int:
        return self._stream.current

    def _is_mine(self, user_id: str) -> bool:
        return _server_of(user_id) == self._server_name

    # ----- local changes ---------------------------------------------------------------------

    async def device_changed(
        self, user_id: str, device_ids: Collection[str], deleted: bool = False
    ) -> None:
        """Devices of a local user were created, changed (keys, signatures, display name) or
        `deleted`: tell their syncs, their room-mates' syncs and the servers sharing a room
        with them."""
        if not device_ids:
            return
        async with self._local_writers.queue(user_id):
            sharing = await self._shared_rooms.get_users_sharing_rooms(user_id)
            positions: list[tuple[str, int, int | None]] = []
            for device_id in device_ids:
                async with self._ids.next() as stream_id:
                    prev_id = await self._store.add_change(user_id, stream_id, True)
                positions.append((device_id, stream_id, prev_id))
                await self._publish(user_id, stream_id, sharing)
            destinations = self._destinations(user_id, sharing)
            if not destinations:
                return
            keys: dict[str, JsonDict] = {}
            names: dict[str, str | None] = {}
            if not deleted:
                if self.e2e_keys is not None:
                    keys = await self.e2e_keys.get_local_device_keys(user_id)
                names = {d.device_id: d.display_name for d in await self._devices.get_devices(user_id)}
            for device_id, stream_id, prev_id in positions:
                content: JsonDict = {
                    "user_id": user_id,
                    "device_id": device_id,
                    "stream_id": stream_id,
                    "prev_id": [] if prev_id is None else [prev_id],
                    "deleted": deleted,
                }
                if device_id in keys:
                    content["keys"] = keys[device_id]
                if names.get(device_id):
                    content["device_display_name"] = names[device_id]
                for destination in destinations:
                    await self._sender.send_edu(destination, DEVICE_LIST_UPDATE, content)
        logger.debug("device list of %s changed: %s%s", user_id, list(device_ids),
                     " (deleted)" if deleted else "")

    async def signing_keys_changed(self, user_id: str) -> None:
        """A local user's cross-signing keys (or signatures they made with them) changed."""
        async with self._local_writers.queue(user_id):
            sharing = await self._shared_rooms.get_users_sharing_rooms(user_id)
            async with self._ids.next() as stream_id:
                await self._store.add_change(user_id, stream_id, False)
            await self._publish(user_id, stream_id, sharing)
            destinations = self._destinations(user_id, sharing)
            if not destinations or self.e2e_keys is None:
                return
            master, self_signing = await self.e2e_keys.get_local_cross_signing_keys(user_id)
            if master is None and self_signing is None:
                return
            content: JsonDict = {"user_id": user_id}
            if master is not None:
                content["master_key"] = master
            if self_signing is not None:
                content["self_signing_key"] = self_signing
            for destination in destinations:
                await self._sender.send_edu(destination, SIGNING_KEY_UPDATE, content)

    async def _publish(self, user_id: str, stream_id: int, sharing: Collection[str]) -> None:
        """Announce a change of the user's devices: it wakes the syncs of the user and of our
        users sharing a room with them. `sharing` is read before the write: nothing may
        yield between the write ending and its publication (see `StreamBus`)."""
        await self._bus.publish(
            StreamUpdate.of(
                "device_lists",
                stream_id,
                users=[user_id],
                wake=[u for u in [*sharing, user_id] if self._is_mine(u)],
            )
        )

    def _destinations(self, user_id: str, sharing: Collection[str]) -> list[str]:
        """The other servers sharing a room with the user (none when federation is off)."""
        if not self._federation or not self._is_mine(user_id):
            return []
        return sorted({_server_of(u) for u in sharing} - {self._server_name, ""})

    # ----- sync and /keys/changes ------------------------------------------------------------

    def may_have_changes(self, since: int, up_to: int, since_events: int) -> bool:
        """False when `get_changes` would find nothing for anyone between these positions:
        no device list moved and nobody's membership changed (what every listener woken by
        a message asks, so it is answered without the user's rooms)."""
        return since < up_to or self._membership_changes.any_changed_since(since_events)

    async def get_changes(
        self,
        user_id: str,
        since: int,
        up_to: int,
        since_events: int,
        now_events: int,
        joined_room_ids: Collection[str] | None = None,
    ) -> tuple[set[str], set[str]]:
        """(changed, left) between two sync tokens: device-list positions (since, up_to] and
        events positions (since_events, now_events].

        `changed`: the user, if their own devices changed; users sharing a room with them
        whose devices or cross-signing keys changed; users who started sharing a room with
        them (joined one of their rooms, or are in a room they joined). `left`: users who
        left one of their rooms (or were in one they left) and share none with them now.
        `joined_room_ids`, the user's joined rooms when the caller knows them, lets a quiet
        sync skip the database.
        """
        device_changed: set[str] = set()
        if since < up_to:
            from_cache = self._changes.all_changed_since(since)
            if from_cache is None:
                device_changed = await self._store.get_users_changed(since, up_to)
            else:
                device_changed = {str(u) for u in from_cache}

        changed: set[str] = set()
        left_candidates: set[str] = set()
        if since_events < now_events:
            own_changes = self._membership_changes.has_changed_since(user_id, since_events)
            rooms: set[str] | None = None
            if joined_room_ids is not None:
                from_cache = self._room_changes.changed_since(joined_room_ids, since_events)
                rooms = None if from_cache is None else {str(r) for r in from_cache}
            # Only other members' membership changes matter here: when nobody's membership
            # changed in the window (a message), the index says so without a read.
            anyone = self._membership_changes.any_changed_since(since_events)
            if anyone and (own_changes or rooms is None or rooms):
                for row in await self._store.get_membership_changes(
                    user_id, since_events, now_events, rooms, own_changes
                ):
                    if row.mine == "join" and row.other_membership == "join":
                        changed.add(row.other_user_id)
                    else:
                        # They left a room we are in, or we left (or never joined) theirs.
                        left_candidates.add(row.other_user_id)

        others = (device_changed | left_candidates) - changed - {user_id}
        sharing = (
            await self._shared_rooms.get_users_sharing_rooms(user_id, among=others) if others else set()
        )
        changed |= device_changed & sharing
        if user_id in device_changed:
            changed.add(user_id)
        left = left_candidates - sharing - changed - {user_id}
        return changed, left

    # ----- serving other servers -------------------------------------------------------------

    async def get_user_devices_for_federation(self, user_id: str) -> JsonDict:
        """The `user/devices` answer for a local user: their devices with keys, and their
        cross-signing keys."""
        # The position first: keys read after it are at least that new, so an EDU the
        # asker later gets with this position as `prev_id` never undoes what it read.
        stream_id = await self._store.get_edu_stream_id(user_id) or 0
        keys: dict[str, JsonDict] = {}
        master = self_signing = None
        if self.e2e_keys is not None:
            keys = await self.e2e_keys.get_local_device_keys(user_id)
            master, self_signing = await self.e2e_keys.get_local_cross_signing_keys(user_id)
        devices = []
        for device in await self._devices.get_devices(user_id):
            if device.device_id not in keys:
                continue
            entry: JsonDict = {"device_id": device.device_id, "keys": keys[device.device_id]}
            if device.display_name:
                entry["device_display_name"] = device.display_name
            devices.append(entry)
        answer: JsonDict = {"user_id": user_id, "stream_id": stream_id, "devices": devices}
        if master is not None:
            answer["master_key"] = master
        if self_signing is not None:
            answer["self_signing_key"] = self_signing
        return answer

    # ----- remote users ----------------------------------------------------------------------

    async def get_cached_remote_keys(
        self, user_id: str, wait_ms: int = DEFAULT_WAIT_MS
    ) -> RemoteUserKeys | None:
        """A remote user's keys from the cache, None if we do not hold an up-to-date list.

        A user not tracked yet but sharing a room with a local user is fetched now (and
        tracked from then on), waiting up to `wait_ms` for it; so is a stale list. Not from a
        server whose last fetch failed or timed out within UNREACHABLE_MS.
        """
        if not self._federation or self._is_mine(user_id) or not _server_of(user_id):
            return None
        remote = await self._store.get_remote_user(user_id)
        if remote is None or remote.stale or user_id in self._resyncing:
            server = _server_of(user_id)
            if self._unreachable.get(server, 0) > self._reactor.seconds():
                return None
            if user_id not in self._resyncing:
                if remote is None and not await self._shares_room_with_local_user(user_id):
                    return None
                self._start_resync(user_id)
            if not await self._wait_for_resync(user_id, wait_ms):
                # Too slow to wait for: the next queries do not wait for it either.
                self._mark_unreachable(server)
                return None
            remote = await self._store.get_remote_user(user_id)
            if remote is None or remote.stale:
                return None
        devices = await self._store.get_remote_devices(user_id)
        return RemoteUserKeys(
            user_id,
            {d.device_id: _with_display_name(d) for d in devices if d.keys is not None},
            remote.master_key,
            remote.self_signing_key,
        )

    async def _shares_room_with_local_user(self, user_id: str) -> bool:
        return user_id in await self._store.get_users_sharing_with_local_users([user_id])

    async def on_device_list_update(self, origin: str, content: JsonDict) -> None:
        """An inbound m.device_list_update EDU."""
        update = _parse_device_update(content)
        if update is None or _server_of(update.user_id) != origin:
            logger.info("m.device_list_update from %s dropped: malformed or not its user", origin)
            return
        user_id = update.user_id
        if not await self._shares_room_with_local_user(user_id):
            logger.debug("m.device_list_update for %s ignored: no shared room", user_id)
            return
        async with self._remote_writers.queue(user_id):
            if user_id in self._resyncing:
                self._hold_pending(update)
                return
            outcome = await self._apply_device_update(update)
        if outcome == "applied":
            await self._remote_user_changed(user_id)
        elif outcome == "gap":
            logger.info("device list of %s missed an update (prev_id %s): fetching it",
                        user_id, list(update.prev_ids))
            self._start_resync(user_id)

    async def on_signing_key_update(self, origin: str, content: JsonDict) -> None:
        """An inbound m.signing_key_update EDU."""
        update = _parse_signing_key_update(content)
        if update is None or _server_of(update.user_id) != origin:
            logger.info("m.signing_key_update from %s dropped: malformed or not its user", origin)
            return
        if not await self._shares_room_with_local_user(update.user_id):
            return
        async with self._remote_writers.queue(update.user_id):
            if update.user_id in self._resyncing:
                self._hold_pending(update)
                return
            await self._store.set_remote_signing_keys(
                update.user_id, update.master_key, update.self_signing_key
            )
        await self._remote_user_changed(update.user_id)

    def _hold_pending(self, update: _DeviceUpdate | _SigningKeyUpdate) -> None:
        pending = self._pending.setdefault(update.user_id, [])
        if len(pending) < MAX_PENDING_UPDATES:
            pending.append(update)

    async def _apply_device_update(self, update: _DeviceUpdate) -> str:
        """'applied', 'duplicate' (already held) or 'gap' (the list must be fetched again).
        Called with the user's writer lock held."""
        remote = await self._store.get_remote_user(update.user_id)
        if remote is None or remote.stale:
            return "gap"
        if update.stream_id <= remote.stream_id:
            return "duplicate"
        if not update.prev_ids or any(p != remote.stream_id for p in update.prev_ids):
            await self._store.mark_remote_stale(update.user_id)
            return "gap"
        await self._store.update_remote_device(
            update.user_id, update.stream_id, update.device, update.deleted
        )
        return "applied"

    def _start_resync(self, user_id: str) -> None:
        if user_id in self._resyncing:
            return
        self._resyncing[user_id] = []
        defer.ensureDeferred(self._resync(user_id))

    async def _wait_for_resync(self, user_id: str, wait_ms: int) -> bool:
        """Wait for the user's fetch to end; False if it did not within `wait_ms`."""
        waiters = self._resyncing.get(user_id)
        if waiters is None:
            return True
        waiter: defer.Deferred[bool] = defer.Deferred()
        waiters.append(waiter)

        def expire() -> None:
            if not waiter.called:
                waiter.callback(False)

        timer = self._reactor.callLater(wait_ms / 1000.0, expire)
        try:
            return await waiter
        finally:
            if timer.active():
                timer.cancel()

    async def _resync(self, user_id: str) -> None:
        """Fetch the user's whole list, store it, then apply the updates that arrived
        meanwhile (fetching again if they still do not fit). Never raises."""
        waiters = self._resyncing[user_id]
        try:
            for round_number in range(1, MAX_RESYNC_ROUNDS + 1):
                fetched = await self._fetch_user_devices(user_id)
                async with self._remote_writers.queue(user_id):
                    again = await self._store_resync(user_id, fetched)
                    if not again or round_number == MAX_RESYNC_ROUNDS:
                        # Under the lock: from here on, updates apply directly.
                        del self._resyncing[user_id]
                        break
        except Exception:
            logger.exception("fetching the device list of %s failed", user_id)
        finally:
            if self._resyncing.get(user_id) is waiters:
                del self._resyncing[user_id]
                self._pending.pop(user_id, None)
        try:
            await self._remote_user_changed(user_id)
        except Exception:
            logger.exception("announcing the device list of %s failed", user_id)
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(True)

    async def _store_resync(self, user_id: str, fetched: _UserDevices | None) -> bool:
        """Store a fetched list and apply the held updates; True if another fetch is due."""
        pending = self._pending.pop(user_id, [])
        if fetched is None:
            if await self._store.get_remote_user(user_id) is not None:
                await self._store.mark_remote_stale(user_id)
            return False
        await self._store.replace_remote_user(
            user_id, fetched.stream_id, fetched.devices, fetched.master_key,
            fetched.self_signing_key,
        )
        again = False
        for update in pending:
            if isinstance(update, _SigningKeyUpdate):
                await self._store.set_remote_signing_keys(
                    user_id, update.master_key, update.self_signing_key
                )
            elif await self._apply_device_update(update) == "gap":
                again = True
        return again

    async def _fetch_user_devices(self, user_id: str) -> _UserDevices | None:
        server = _server_of(user_id)
        try:
            answer = await self._client.get_json(
                server, USER_DEVICES_PATH % quote(user_id, safe=""), timeout_ms=RESYNC_TIMEOUT_MS
            )
        except FederationError as e:
            logger.info("could not fetch the device list of %s: %s", user_id, e)
            self._mark_unreachable(server)
            return None
        self._unreachable.pop(server, None)
        parsed = _parse_user_devices(user_id, answer)
        if parsed is None:
            logger.info("%s sent a malformed device list for %s", server, user_id)
        return parsed

    def _mark_unreachable(self, server: str) -> None:
        self._unreachable[server] = self._reactor.seconds() + UNREACHABLE_MS / 1000
        if len(self._unreachable) > 10_000:
            self._unreachable.clear()

    async def _remote_user_changed(self, user_id: str) -> None:
        """A remote user's list changed: a stream position, and wake local room-mates."""
        sharing = await self._shared_rooms.get_users_sharing_rooms(user_id)
        async with self._ids.next() as stream_id:
            await self._store.add_change(user_id, stream_id, False)
        await self._publish(user_id, stream_id, sharing)

    async def on_event_persisted(self, stored: StoredEvent) -> None:
        """After a membership change: stop tracking remote users no local user shares a room
        with any more (their server stops sending us updates)."""
        event = stored.event
        if event.type != MEMBER or event.state_key is None:
            return
        if event.content.get("membership") == "join" or not self._federation:
            return
        try:
            target = event.state_key
            if self._is_mine(target):
                members = await self._state.get_current_members(event.room_id, "join")
                candidates = {u for u in members if not self._is_mine(u)}
            else:
                candidates = {target}
            if not candidates:
                return
            tracked = await self._store.get_tracked_remote_users(candidates)
            if not tracked:
                return
            gone = tracked - await self._store.get_users_sharing_with_local_users(tracked)
            if gone:
                await self._store.forget_remote_users(gone)
                logger.debug("stopped tracking the device lists of %s", sorted(gone))
        except Exception:
            logger.exception("device-list tracking after %s failed", event.event_id)

    def edu_handlers(self) -> dict[str, Any]:
        """Inbound EDU handlers, by type, for `TransactionHandler.edu_handlers`."""
        return {
            DEVICE_LIST_UPDATE: self.on_device_list_update,
            SIGNING_KEY_UPDATE: self.on_signing_key_update,
        }


# ----- checking what other servers send ------------------------------------------------------


def _server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1] if user_id.startswith("@") and ":" in user_id else ""


def _is_stream_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_STREAM_ID


def _is_device_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_DEVICE_ID_LENGTH


def _device_keys(value: Any, user_id: str, device_id: str) -> JsonDict | None:
    """The keys a remote server gives for (user_id, device_id); None if there are none
    (the device is still a device) or they name another user or device.

    Kept as the server sent them, as Synapse keeps them: the device's signature, and the
    keys themselves, are for the clients that download them to check (a test suite's
    placeholder keys included). Keys that say they belong to someone else are dropped."""
    if not isinstance(value, dict) or not value:
        return None
    if value.get("user_id", user_id) != user_id or value.get("device_id", device_id) != device_id:
        return None
    return value


def _cross_signing_key(value: Any, user_id: str, usage: str) -> JsonDict | None:
    if not isinstance(value, dict) or value.get("user_id") != user_id:
        return None
    usages = value.get("usage")
    if not isinstance(usages, list) or usage not in usages:
        return None
    return value


def _display_name(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _parse_device_update(content: JsonDict) -> _DeviceUpdate | None:
    user_id, device_id = content.get("user_id"), content.get("device_id")
    stream_id = content.get("stream_id")
    if not isinstance(user_id, str) or not _is_device_id(device_id) or not _is_stream_id(stream_id):
        return None
    assert isinstance(device_id, str) and isinstance(stream_id, int)
    raw_prev = content.get("prev_id", [])
    if raw_prev is None:
        raw_prev = []
    if not isinstance(raw_prev, list) or not all(_is_stream_id(p) for p in raw_prev):
        return None
    deleted = content.get("deleted", False) is True
    device = RemoteDevice(
        device_id,
        _display_name(content.get("device_display_name")),
        None if deleted else _device_keys(content.get("keys"), user_id, device_id),
    )
    return _DeviceUpdate(user_id, stream_id, tuple(raw_prev), device, deleted)


def _parse_signing_key_update(content: JsonDict) -> _SigningKeyUpdate | None:
    user_id = content.get("user_id")
    if not isinstance(user_id, str):
        return None
    master = _cross_signing_key(content.get("master_key"), user_id, "master")
    self_signing = _cross_signing_key(content.get("self_signing_key"), user_id, "self_signing")
    if master is None and self_signing is None:
        return None
    return _SigningKeyUpdate(user_id, master, self_signing)


def _parse_user_devices(user_id: str, answer: Any) -> _UserDevices | None:
    if not isinstance(answer, dict) or answer.get("user_id", user_id) != user_id:
        return None
    stream_id, raw_devices = answer.get("stream_id"), answer.get("devices")
    if not _is_stream_id(stream_id) or not isinstance(raw_devices, list):
        return None
    assert isinstance(stream_id, int)
    devices: dict[str, RemoteDevice] = {}
    for raw in raw_devices:
        if len(devices) >= MAX_REMOTE_DEVICES:
            break
        if not isinstance(raw, dict) or not _is_device_id(raw.get("device_id")):
            continue
        device_id = raw["device_id"]
        devices[device_id] = RemoteDevice(
            device_id,
            _display_name(raw.get("device_display_name")),
            _device_keys(raw.get("keys"), user_id, device_id),
        )
    return _UserDevices(
        stream_id,
        list(devices.values()),
        _cross_signing_key(answer.get("master_key"), user_id, "master"),
        _cross_signing_key(answer.get("self_signing_key"), user_id, "self_signing"),
    )


def _with_display_name(device: RemoteDevice) -> JsonDict:
    assert device.keys is not None
    keys = dict(device.keys)
    unsigned = dict(keys.get("unsigned") or {}) if isinstance(keys.get("unsigned"), dict) else {}
    if device.display_name:
        unsigned["device_display_name"] = device.display_name
    if unsigned:
        keys["unsigned"] = unsigned
    return keys

