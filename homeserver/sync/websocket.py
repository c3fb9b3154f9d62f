"""Sync pushed over a long-lived connection (the WebSocket transport, `client_api/websocket/`).

One push loop per subscribed connection: compute an incremental sync from the connection's
current token, send it if it holds anything, wait for news, and again. The loop computes a
response only when the connection can take one: a slow reader never has more than one
response computed for it, and when it catches up it gets one response covering everything
since its token (coalescing), never a queue of them.

Waiting for news is `wait_for_news`, the one place that knows how (today the `Notifier`, as
long-polls do).

`ConnectionRegistry` counts the open connections and finds those of a revoked token or a
deactivated user, so they close at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram
from twisted.internet import defer

from homeserver.clock import Clock
from homeserver.presence import PresenceHandler
from homeserver.sync.handler import SyncHandler, SyncRequest
from homeserver.sync.notifier import Notifier
from homeserver.sync.tokens import StreamToken

logger = logging.getLogger(__name__)

CONNECTED = Gauge("heddle_websocket_connections", "Open WebSocket sync connections")
FRAMES = Counter(
    "heddle_websocket_frames_total", "WebSocket messages, by direction (in, out)", ["direction"]
)
FRAMES_IN, FRAMES_OUT = FRAMES.labels("in"), FRAMES.labels("out")
PUSH_SECONDS = Histogram(
    "heddle_websocket_push_latency_seconds",
    "From the notification after a commit to the sync frame written to the socket",
    buckets=(
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
        1.0, 2.5, 5.0, 10.0,
    ),
)


class PushTarget(Protocol):
    """What the push loop needs from a connection."""

    async def wait_writable(self) -> None:
        """Return when the connection can take another response (at once if it can)."""

    def push_sync(self, response: dict[str, Any], woken_at: float) -> None:
        """Send one sync response; `woken_at` is when the news it carries was announced."""


@dataclass
class PushPosition:
    """Where a connection's pushes have got to.

    `token` is the `next_batch` of the last response pushed (or the `since` the client
    subscribed with): the next response starts there. `acknowledged_to_device` is the
    to-device position the client has confirmed (its `since`, or a later `ack`): to-device
    messages are deleted only up to it, since a pushed frame may never be read."""

    token: StreamToken | None
    acknowledged_to_device: int


class WebSocketSyncHandler:
    def __init__(
        self, sync: SyncHandler, notifier: Notifier, presence: PresenceHandler, clock: Clock
    ) -> None:
        self._sync = sync
        self._notifier = notifier
        self._presence = presence
        self._clock = clock

    def wait_for_news(self, user_id: str, since_position: int) -> defer.Deferred[float]:
        """Fired when `user_id` is notified after `since_position`, with the time of that
        notification. A Deferred and not a coroutine, with no timer: every idle connection
        waits on one (cancelled with the connection)."""
        return self._notifier.wake_after(user_id, since_position)

    async def push_loop(
        self,
        target: PushTarget,
        request: SyncRequest,
        position: PushPosition,
        set_presence: str,
    ) -> None:
        """Push sync responses to `target` until cancelled (the connection closed).

        The first response is always sent (the client learns its `next_batch`); later ones
        only when they hold something, as a long-poll returns only then. `position` is
        updated after every push, so the connection can tell where it stands."""
        user_id = request.user_id
        # `presence.syncing` in two halves: its context manager would be held by every
        # connection for as long as it is open.
        counted = await self._presence.start_syncing(user_id, set_presence)
        try:
            woken_at = self._clock.time()
            first = True
            while True:
                await target.wait_writable()
                notified_at = self._notifier.position(user_id)
                await self._push_once(target, request, position, first, woken_at)
                first = False
                # Latency is counted from the notification, not from when this loop got
                # to run: one commit wakes every listener of the room, one after another.
                woken_at = await self.wait_for_news(user_id, notified_at)
        finally:
            if counted:
                self._presence.stop_syncing(user_id)

    async def _push_once(
        self,
        target: PushTarget,
        request: SyncRequest,
        position: PushPosition,
        first: bool,
        woken_at: float,
    ) -> None:
        """Compute one response from `position`; push it if it holds anything (the first
        always). A function of its own so that the response, once sent, is not kept alive
        in the loop's frame while the connection waits for news."""
        this_pass = replace(
            request,
            since=position.token,
            full_state=request.full_state and first,
            to_device_acknowledged=position.acknowledged_to_device,
        )
        response, empty, next_batch = await self._sync.sync(this_pass)
        if first or not empty:
            position.token = next_batch
            target.push_sync(response, woken_at)


class RevocableConnection(Protocol):
    def token_revoked(self) -> None:
        """The connection's token may have been revoked: check it again, close if so."""

    def server_stopping(self) -> None:
        """The server is stopping: close."""


class ConnectionRegistry:
    """The open connections of this process, by access token and by user."""

    def __init__(self, max_connections: int) -> None:
        self._max_connections = max_connections
        # connection -> the (token ID, user ID) it is indexed under, once authenticated.
        self._open: dict[RevocableConnection, tuple[str, str] | None] = {}
        # Token ID / user ID -> its connections. Tuples: nearly always of one connection,
        # which a tuple holds in 48 bytes and a set in 216.
        self._by_token: dict[str, tuple[RevocableConnection, ...]] = {}
        self._by_user: dict[str, tuple[RevocableConnection, ...]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def indexed_sizes(self) -> tuple[int, int]:
        """(tokens, users) held in the indexes: for tests that nothing leaks."""
        return len(self._by_token), len(self._by_user)

    def has_room(self) -> bool:
        return len(self._open) < self._max_connections

    def opened(self, connection: RevocableConnection) -> None:
        self._open[connection] = None
        CONNECTED.set(len(self._open))

    def authenticated(self, connection: RevocableConnection, token_id: str, user_id: str) -> None:
        """Index `connection` under its (new) token and user."""
        if connection not in self._open:
            return
        self._unindex(connection)
        self._open[connection] = (token_id, user_id)
        self._by_token[token_id] = self._by_token.get(token_id, ()) + (connection,)
        self._by_user[user_id] = self._by_user.get(user_id, ()) + (connection,)

    def closed(self, connection: RevocableConnection) -> None:
        if connection in self._open:
            self._unindex(connection)
            del self._open[connection]
        CONNECTED.set(len(self._open))

    def _unindex(self, connection: RevocableConnection) -> None:
        keys = self._open.get(connection)
        if keys is None:
            return
        for index, key in zip((self._by_token, self._by_user), keys, strict=True):
            remaining = tuple(held for held in index.get(key, ()) if held is not connection)
            if remaining:
                index[key] = remaining
            else:
                index.pop(key, None)

    def close_all(self) -> None:
        for connection in list(self._open):
            connection.server_stopping()

    def revoked(self, token_ids: list[str], user_id: str | None) -> None:
        """A `TokenHandler` revocation listener."""
        affected: set[RevocableConnection] = set()
        for token_id in token_ids:
            affected.update(self._by_token.get(token_id, ()))
        if user_id is not None:
            affected.update(self._by_user.get(user_id, ()))
        for connection in affected:
            connection.token_revoked()
