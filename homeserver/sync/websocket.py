"""Sync pushed over a long-lived connection (the WebSocket transport, `client_api/websocket/`).

One `PushSubscription` per subscribed connection: compute an incremental sync from the
connection's current token, send it if it holds anything, wait for news, and again. It
computes a response only when the connection can take one: a slow reader never has more than
one response computed for it, and when it catches up it gets one response covering
everything since its token (coalescing), never a queue of them. While it waits for news it
is only a callback held by the `Notifier`.

`ConnectionRegistry` counts the open connections, finds those of a revoked token or a
deactivated user so they close at once, and checks every connection's timeouts in one
periodic sweep.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram
from twisted.internet import defer, task
from twisted.python.failure import Failure

from homeserver.clock import Clock
from homeserver.config import WebSocketConfig
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


@dataclass(slots=True)
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

    def subscribe(
        self,
        target: PushTarget,
        request: SyncRequest,
        position: PushPosition,
        set_presence: str,
        on_failure: Callable[[Failure], None],
    ) -> PushSubscription:
        """Start pushing sync responses to `target`; `stop` the subscription when the
        connection closes. A push that fails (an error computing the response) ends it and
        is passed to `on_failure`."""
        subscription = PushSubscription(self, target, request, position, on_failure)
        subscription.start(set_presence)
        return subscription


class PushSubscription:
    """One connection's sync subscription: compute an incremental sync from its position,
    push it if it holds anything (the first always: the client learns its `next_batch`),
    and again whenever the connection's user is notified.

    Between pushes it is parked: the notifier holds one bound method of it (`_news`), and
    nothing else runs or waits for it: no coroutine, Deferred or timer per idle connection,
    thousands of which sit idle at once. A pass (a coroutine) exists only while a response
    is computed or waits for the connection to drain."""

    __slots__ = (
        "_handler", "_target", "_request", "position", "_on_failure", "_user_id",
        "_first", "_running", "_parked", "_stopped", "_presence_counted",
    )

    def __init__(
        self,
        handler: WebSocketSyncHandler,
        target: PushTarget,
        request: SyncRequest,
        position: PushPosition,
        on_failure: Callable[[Failure], None],
    ) -> None:
        self._handler = handler
        self._target = target
        self._request = request
        self.position = position
        self._on_failure = on_failure
        self._user_id = request.user_id
        self._first = True
        # The pass under way, if any; whether the notifier holds `_news`.
        self._running: defer.Deferred[None] | None = None
        self._parked = False
        self._stopped = False
        self._presence_counted = False

    def start(self, set_presence: str) -> None:
        self._begin(self._run(self._handler._clock.time(), set_presence))

    def stop(self) -> None:
        """The connection is gone: withdraw from the notifier, cancel a pass under way,
        and stop counting the user as syncing."""
        if self._stopped:
            return
        self._stopped = True
        if self._parked:
            self._parked = False
            self._handler._notifier.withdraw(self._user_id, self._news)
        running, self._running = self._running, None
        if running is not None:
            running.cancel()
        if self._presence_counted:
            self._presence_counted = False
            self._handler._presence.stop_syncing(self._user_id)

    def _news(self, notified_at: float) -> None:
        """The notifier's callback: the user was notified at `notified_at`."""
        self._parked = False
        if not self._stopped:
            self._begin(self._run(notified_at))

    def _begin(self, run: Coroutine[Any, Any, None]) -> None:
        running = defer.ensureDeferred(run)
        running.addBoth(self._pass_ended)
        if not running.called:
            self._running = running

    def _pass_ended(self, result: None | Failure) -> None:
        self._running = None
        if isinstance(result, Failure) and not result.check(defer.CancelledError):
            self.stop()
            self._on_failure(result)

    async def _run(self, woken_at: float, set_presence: str | None = None) -> None:
        """Push until there is no news left, then park. Latency is counted from the
        notification (`woken_at`), not from when this pass got to run: one commit wakes
        every listener of the room, one after another."""
        handler = self._handler
        if set_presence is not None:
            # `presence.syncing` in two halves: its context manager would be held by every
            # subscription for as long as it is open.
            counted = await handler._presence.start_syncing(self._user_id, set_presence)
            if self._stopped:
                if counted:
                    handler._presence.stop_syncing(self._user_id)
                return
            self._presence_counted = counted
        notifier = handler._notifier
        while not self._stopped:
            await self._target.wait_writable()
            notified = notifier.position(self._user_id)
            await self._push_once(woken_at)
            if self._stopped:
                return
            at = notifier.call_on_news(self._user_id, notified, self._news)
            if at is None:
                self._parked = True
                return
            woken_at = at

    async def _push_once(self, woken_at: float) -> None:
        """Compute one response from the position; push it if it holds anything (the first
        always). A function of its own so that the response, once sent, is not kept alive
        in the pass's frame."""
        position = self.position
        first, self._first = self._first, False
        request = self._request
        this_pass = replace(
            request,
            since=position.token,
            full_state=request.full_state and first,
            to_device_acknowledged=position.acknowledged_to_device,
        )
        response, empty, next_batch = await self._handler._sync.sync(this_pass)
        if (first or not empty) and not self._stopped:
            position.token = next_batch
            self._target.push_sync(response, woken_at)


class RevocableConnection(Protocol):
    def token_revoked(self) -> None:
        """The connection's token may have been revoked: check it again, close if so."""

    def server_stopping(self) -> None:
        """The server is stopping: close."""

    def check_deadlines(self, now: float) -> None:
        """Act on any of the connection's timeouts that has passed by `now` (reactor time)."""


@dataclass(frozen=True, slots=True)
class ConnectionTimeouts:
    """The WebSocket timeouts in seconds, shared by every connection (which checks them
    many times a second between them all)."""

    auth_s: float
    idle_s: float
    ping_interval_s: float
    ping_timeout_s: float
    slow_reader_s: float

    @classmethod
    def from_config(cls, config: WebSocketConfig) -> ConnectionTimeouts:
        return cls(
            auth_s=config.auth_timeout_ms / 1000,
            idle_s=config.idle_timeout_ms / 1000,
            ping_interval_s=config.ping_interval_ms / 1000,
            ping_timeout_s=config.ping_timeout_ms / 1000,
            slow_reader_s=config.slow_reader_timeout_ms / 1000,
        )

    def sweep_interval_s(self) -> float:
        """How often deadlines are checked: a quarter of the shortest timeout, so each acts
        at most a quarter late, but never less often than once a second nor more often
        than twenty times."""
        shortest = min(
            self.auth_s, self.idle_s, self.ping_interval_s, self.ping_timeout_s,
            self.slow_reader_s,
        )
        return min(max(shortest / 4, 0.05), 1.0)


class ConnectionRegistry:
    """The open connections of this process, by access token and by user; and the one
    sweep that checks their timeouts while any is open (a timer per connection would cost
    each idle connection a few hundred bytes)."""

    def __init__(self, max_connections: int, reactor: Any, timeouts: ConnectionTimeouts) -> None:
        self._max_connections = max_connections
        self._reactor = reactor
        self.timeouts = timeouts
        self._sweep_interval_s = timeouts.sweep_interval_s()
        self._sweep: task.LoopingCall | None = None
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
        if self._sweep is None:
            self._sweep = task.LoopingCall(self._check_deadlines)
            self._sweep.clock = self._reactor
            self._sweep.start(self._sweep_interval_s, now=False).addErrback(
                lambda failure: logger.error(
                    "the WebSocket deadline sweep failed:\n%s", failure.getTraceback()
                )
            )

    def _check_deadlines(self) -> None:
        now = self._reactor.seconds()
        for connection in list(self._open):
            try:
                connection.check_deadlines(now)
            except Exception:
                logger.exception("checking a WebSocket connection's deadlines failed")
        if not self._open:
            self._stop_sweeping()

    def _stop_sweeping(self) -> None:
        sweep, self._sweep = self._sweep, None
        if sweep is not None and sweep.running:
            sweep.stop()

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
        self._stop_sweeping()

    def revoked(self, token_ids: list[str], user_id: str | None) -> None:
        """A `TokenHandler` revocation listener."""
        affected: set[RevocableConnection] = set()
        for token_id in token_ids:
            affected.update(self._by_token.get(token_id, ()))
        if user_id is not None:
            affected.update(self._by_user.get(user_id, ()))
        for connection in affected:
            connection.token_revoked()

