"""One WebSocket connection's conversation: authentication, the sync subscription, requests,
timeouts and closing. The transport (`protocol.py`) only moves frames; the push loop is
`homeserver.sync.websocket.PushSubscription`. The protocol is described in docs/websocket.md.
"""

from __future__ import annotations

import itertools
import json
import logging
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import Field
from twisted.internet import defer
from twisted.python.failure import Failure

from client_api.http import error_response, parse_json_bytes
from client_api.servlets.sync import check_set_presence
from client_api.validation import RequestBody, parse_body
from client_api.websocket.requests import WebSocketRequests
from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError
from homeserver.sync.encoding import dumps_sync
from homeserver.sync.handler import SyncRequest
from homeserver.sync.tokens import StreamToken
from homeserver.sync.websocket import (
    FRAMES_IN,
    FRAMES_OUT,
    PUSH_SECONDS,
    PushPosition,
    PushSubscription,
)

if TYPE_CHECKING:
    from homeserver.app import HomeServer

logger = logging.getLogger(__name__)

# Messages received but not yet handled (they are handled one at a time, in order); past
# this, a message is refused with 429 at once rather than queued.
MAX_QUEUED_MESSAGES = 32

_session_ids = itertools.count(1)


class CloseCode(IntEnum):
    """WebSocket close codes the server uses (docs/websocket.md)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003  # a binary message
    TOO_BIG = 1009  # sent by autobahn for a message over websocket.max_message_bytes
    INTERNAL_ERROR = 1011
    IDLE_TIMEOUT = 4000
    UNAUTHORIZED = 4001  # no, bad, expired or revoked token; the error frame says which
    AUTH_TIMEOUT = 4002
    SLOW_READER = 4003


class Connection(Protocol):
    """What a session needs from its transport."""

    def send_text(self, data: bytes) -> None: ...

    def close(self, code: int, reason: str) -> None: ...

    def abort(self) -> None:
        """Drop the connection at once, without waiting for the client's close frame."""

    def ping(self) -> None:
        """Send a ping; the client's pong comes back as `pong_received`."""


class AuthMessage(RequestBody):
    type: str
    request_id: str | None = Field(None, max_length=255)
    access_token: str = Field(max_length=4096)


class SubscribeMessage(RequestBody):
    type: str
    request_id: str | None = Field(None, max_length=255)
    # A filter ID, a filter as JSON text, or the filter object itself.
    filter: str | dict[str, Any] | None = None
    since: str | None = None
    full_state: bool = False
    set_presence: str | None = None
    use_state_after: bool = False


class AckMessage(RequestBody):
    type: str
    request_id: str | None = Field(None, max_length=255)
    next_batch: str


class WebSocketSession:
    """One connection's state. Thousands of these sit idle at once, so what one holds while
    idle is kept small: its attributes are slots; what every connection uses alike
    (`requests`) is shared; what only an early part of the conversation needs is let go
    after it; and its timeouts are deadlines (times, not timers) that the
    `ConnectionRegistry`'s one sweep checks (`check_deadlines`)."""

    __slots__ = (
        "_hs", "_timeouts", "_connection", "_client_ip", "_user_agent", "session_id",
        "_requests", "_requester", "_access_token", "_closed", "_queue", "_draining",
        "_position", "_subscription", "_paused", "_writable", "_opened_at", "_last_received",
        "_expires_at", "_paused_at", "_next_ping_at", "_ping_sent_at",
    )

    def __init__(
        self,
        hs: HomeServer,
        requests: WebSocketRequests,
        connection: Connection,
        client_ip: str,
        user_agent: str | None,
    ) -> None:
        self._hs = hs
        self._timeouts = hs.websocket_connections.timeouts
        self._connection = connection
        self._client_ip = client_ip
        self._user_agent = user_agent
        self.session_id = f"ws{next(_session_ids)}"
        self._requests = requests
        self._requester: Requester | None = None
        self._access_token: str | None = None
        self._closed = False
        # A list, not a deque: it is nearly always empty, and an empty deque takes 760 bytes.
        self._queue: list[bytes] = []
        self._draining = False
        # The sync subscription: where it stands, and what pushes to it.
        self._position: PushPosition | None = None
        self._subscription: PushSubscription | None = None
        # Backpressure: the transport says when its buffer is full (`pause_writing`) and
        # when it has drained (`resume_writing`); a push waits in between.
        self._paused = False
        self._writable: defer.Deferred[None] | None = None
        # Deadlines, as reactor times (0: none): see `check_deadlines`.
        now = hs.clock.time()
        self._opened_at = now
        self._last_received = now
        self._expires_at = 0.0
        self._paused_at = 0.0
        self._next_ping_at = now + self._timeouts.ping_interval_s
        self._ping_sent_at = 0.0
        hs.websocket_connections.opened(self)

    # ----- from the transport --------------------------------------------------------------

    def message_received(self, payload: bytes, is_binary: bool) -> None:
        FRAMES_IN.inc()
        self.activity()
        if self._closed:
            return
        if is_binary:
            self.close(CloseCode.UNSUPPORTED_DATA, "Binary messages are not supported")
            return
        if len(self._queue) >= MAX_QUEUED_MESSAGES:
            self._send_error(None, MatrixError(429, Codes.LIMIT_EXCEEDED, "Too many requests waiting"))
            return
        self._queue.append(payload)
        if not self._draining:
            defer.ensureDeferred(self._drain())

    def activity(self) -> None:
        """Something (a message, a pong) arrived: the connection is not idle."""
        self._last_received = self._hs.clock.time()

    def pong_received(self) -> None:
        self._ping_sent_at = 0.0
        self.activity()

    def pause_writing(self) -> None:
        if self._paused:
            return
        self._paused = True
        self._paused_at = self._hs.clock.time()

    def resume_writing(self) -> None:
        self._paused = False
        waiter, self._writable = self._writable, None
        if waiter is not None:
            waiter.callback(None)

    def closed(self) -> None:
        """The connection is gone: stop everything and forget it."""
        self._closed = True
        self._queue.clear()
        if self._subscription is not None:
            self._subscription.stop()
            self._subscription = None
        if self._writable is not None:
            self._writable.cancel()
            self._writable = None
        self._hs.websocket_connections.closed(self)
        self._hs.websocket_request_limiter.forget(self.session_id)

    # ----- for the push loop (`PushTarget`) -------------------------------------------------

    async def wait_writable(self) -> None:
        while self._paused:
            if self._writable is None:
                self._writable = defer.Deferred()
            await self._writable

    def push_sync(self, response: dict[str, Any], woken_at: float) -> None:
        if self._closed:
            return
        FRAMES_OUT.inc()
        self._connection.send_text(
            ('{"type":"sync","body":' + dumps_sync(response) + "}").encode("utf-8")
        )
        PUSH_SECONDS.observe(max(self._hs.clock.time() - woken_at, 0.0))

    # ----- for the registry (`RevocableConnection`) -----------------------------------------

    def check_deadlines(self, now: float) -> None:
        """Act on whichever of the connection's deadlines has passed: no `auth` in time,
        nothing received for too long, a ping unanswered, a client reading nothing while
        data waits, or its token's expiry. Called by the registry's sweep about once a
        second (more often when a timeout is shorter), so each acts within one sweep of
        its time."""
        if self._closed:
            return
        timeouts = self._timeouts
        if self._requester is None and now >= self._opened_at + timeouts.auth_s:
            self._auth_timed_out()
        elif self._paused and now >= self._paused_at + timeouts.slow_reader_s:
            self._too_slow()
        elif now >= self._last_received + timeouts.idle_s:
            self._idle_timed_out()
        elif self._ping_sent_at and now >= self._ping_sent_at + timeouts.ping_timeout_s:
            logger.info("%s: no pong in time; dropping the connection", self.session_id)
            self._connection.abort()
            self.closed()
        else:
            if self._expires_at and now >= self._expires_at:
                self._expires_at = 0.0
                self.token_revoked()
            if now >= self._next_ping_at:
                self._next_ping_at = now + timeouts.ping_interval_s
                if not self._ping_sent_at:
                    self._ping_sent_at = now
                self._connection.ping()

    def token_revoked(self) -> None:
        defer.ensureDeferred(self._check_token())

    def server_stopping(self) -> None:
        self.close(CloseCode.GOING_AWAY, "Server shutting down")

    async def _check_token(self) -> None:
        token = self._access_token
        if token is None or self._closed:
            return
        try:
            await self._hs.tokens.validate(token)
        except MatrixError as e:
            if token != self._access_token:
                # Replaced meanwhile by a new `auth` (a refreshed token revokes the old).
                return
            self._send_error(None, e)
            self.close(CloseCode.UNAUTHORIZED, e.errcode)
        except Exception:
            logger.exception("%s: checking the access token failed", self.session_id)

    # ----- messages ------------------------------------------------------------------------

    async def _drain(self) -> None:
        self._draining = True
        try:
            while self._queue and not self._closed:
                await self._handle(self._queue.pop(0))
        finally:
            self._draining = False

    async def _handle(self, payload: bytes) -> None:
        request_id: str | None = None
        kind = "?"
        try:
            message = parse_json_bytes(payload)
            raw_id = message.get("request_id")
            request_id = raw_id if isinstance(raw_id, str) else None
            kind = str(message.get("type"))[:50]
            if self._requester is None and kind != "auth":
                raise MatrixError(
                    401, Codes.MISSING_TOKEN, "The first message must be 'auth' with an access token"
                )
            if kind == "auth":
                await self._authenticate(message)
                return
            if kind == "subscribe":
                await self._subscribe(message)
                return
            requester = await self._current_requester()
            if kind == "ack":
                body = self._acknowledge(message)
            else:
                self._hs.websocket_request_limiter.check(self.session_id)
                body = await self._requests.handle(requester, message)
            self._send_response(request_id, body)
        except Exception as e:
            status = self._send_error(request_id, e, kind)
            if status == 401 or self._requester is None:
                # Nothing but a good `auth` is accepted first; a token that has stopped
                # working ends the connection.
                self.close(CloseCode.UNAUTHORIZED, "Authentication failed")

    async def _authenticate(self, message: dict[str, Any]) -> None:
        auth = parse_body(message, AuthMessage)
        requester = await self._hs.tokens.validate(auth.access_token)
        previous = self._requester
        if previous is not None and (previous.user_id, previous.device_id) != (
            requester.user_id,
            requester.device_id,
        ):
            raise MatrixError(
                403, Codes.FORBIDDEN, "A connection stays with the user and device it began with"
            )
        if self._closed:
            return
        # Taken at once: the new token's first use may revoke the old one (a refresh), and
        # the check that revocation starts must find the new token in place.
        self._requester, self._access_token = requester, auth.access_token
        self._expires_at = (
            requester.expires_ts / 1000 if requester.expires_ts is not None else 0.0
        )
        self._hs.websocket_connections.authenticated(self, requester.token_id, requester.user_id)
        await self._hs.devices.record_activity(
            requester.user_id, requester.device_id, self._client_ip, self._user_agent
        )
        if previous is None:
            logger.info(
                "%s: %s/%s connected from %s",
                self.session_id, requester.user_id, requester.device_id, self._client_ip,
            )
        self._send_response(
            auth.request_id, {"user_id": requester.user_id, "device_id": requester.device_id}
        )

    async def _current_requester(self) -> Requester:
        """The requester, with the token checked again (expiry, revocation): a request over
        the socket is refused whenever the same request over HTTP would be."""
        assert self._access_token is not None
        return await self._hs.tokens.validate(self._access_token)

    async def _subscribe(self, message: dict[str, Any]) -> None:
        subscribe = parse_body(message, SubscribeMessage)
        requester = await self._current_requester()
        if self._subscription is not None:
            raise MatrixError(400, Codes.INVALID_PARAM, "Already subscribed")
        since = StreamToken.parse(subscribe.since) if subscribe.since is not None else None
        set_presence = check_set_presence(subscribe.set_presence)
        raw_filter = subscribe.filter
        if isinstance(raw_filter, dict):
            raw_filter = json.dumps(raw_filter)
        sync_filter = await self._hs.filtering.resolve_filter(requester.user_id, raw_filter)
        if self._closed or self._subscription is not None:
            return
        request = SyncRequest(
            user_id=requester.user_id,
            device_id=requester.device_id,
            since=since,
            full_state=subscribe.full_state,
            filter=sync_filter,
            use_state_after=subscribe.use_state_after,
        )
        # Without `since` the client has acknowledged no to-device message yet (0), which is
        # not the same as leaving it to the token (None).
        self._position = PushPosition(since, since.to_device if since is not None else 0)
        # Answered before the first push, so the client sees its subscription accepted first.
        self._send_response(subscribe.request_id, {})
        self._subscription = self._hs.websocket_sync.subscribe(
            self, request, self._position, set_presence, self._push_failed
        )

    def _acknowledge(self, message: dict[str, Any]) -> dict[str, Any]:
        """The client has the responses up to `next_batch`: to-device messages up to there
        may be deleted (by the next push)."""
        ack = parse_body(message, AckMessage)
        token = StreamToken.parse(ack.next_batch)
        position = self._position
        if position is None or position.token is None:
            raise MatrixError(400, Codes.INVALID_PARAM, "Nothing has been sent to acknowledge")
        if token.to_device > position.token.to_device:
            raise MatrixError(400, Codes.INVALID_PARAM, "'next_batch' was never sent")
        position.acknowledged_to_device = max(
            position.acknowledged_to_device, token.to_device
        )
        return {}

    def _push_failed(self, failure: Failure) -> None:
        self._subscription = None
        if self._closed:
            return None
        error = failure.value
        if isinstance(error, MatrixError):
            self._send_error(None, error, "sync")
            self.close(
                CloseCode.UNAUTHORIZED if error.http_code == 401 else CloseCode.INTERNAL_ERROR,
                error.errcode,
            )
            return None
        logger.error("%s: sync push failed", self.session_id, exc_info=failure.value)
        self.close(CloseCode.INTERNAL_ERROR, "Internal server error")
        return None

    # ----- deadlines -----------------------------------------------------------------------

    def _auth_timed_out(self) -> None:
        if self._requester is None:
            self._send_error(None, MatrixError(401, Codes.MISSING_TOKEN, "No 'auth' message in time"))
            self.close(CloseCode.AUTH_TIMEOUT, "No auth message in time")

    def _idle_timed_out(self) -> None:
        self.close(CloseCode.IDLE_TIMEOUT, "Idle for too long")

    def _too_slow(self) -> None:
        logger.info("%s: the client has read nothing for too long; closing", self.session_id)
        # The close frame goes into the full buffer in case the client reads again; waiting
        # for its answer would keep the buffer (and the connection) held for nothing.
        self.close(CloseCode.SLOW_READER, "Client too slow reading")
        self._connection.abort()

    # ----- sending -------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        if self._closed:
            return
        FRAMES_OUT.inc()
        self._connection.send_text(
            json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        )

    def _send_response(self, request_id: str | None, body: dict[str, Any]) -> None:
        self._send({"type": "response", "request_id": request_id, "body": body})

    def _send_error(self, request_id: str | None, error: Exception, kind: str = "?") -> int:
        """Send the error frame HTTP's answer would carry; return its status."""
        status, body, _headers = error_response(error, f"{self.session_id} {kind}")
        self._send({"type": "error", "request_id": request_id, "status": status, "body": body})
        return status

    def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._connection.close(code, reason)
        self.closed()
