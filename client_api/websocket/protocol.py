"""The WebSocket transport (autobahn): the handshake checks (capacity, origin), frames in and
out, and the transport's backpressure, handed to a `WebSocketSession` for everything else.

`ClientRootResource` serves the WebSocket path on the client listener, next to the
`JsonResource` that serves everything else.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import TYPE_CHECKING, Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IPushProducer
from twisted.web import resource, server
from zope.interface import implementer

from client_api.websocket import WEBSOCKET_PATH
from client_api.websocket.session import WebSocketSession
from homeserver.config import ListenerConfig

if TYPE_CHECKING:
    from homeserver.app import HomeServer

logger = logging.getLogger(__name__)


@implementer(IPushProducer)
class SyncWebSocketProtocol(WebSocketServerProtocol):  # type: ignore[misc]
    """One connection. Registered as the transport's producer, so Twisted tells it when the
    socket's send buffer is full and when it has drained."""

    factory: SyncWebSocketFactory
    session: WebSocketSession | None = None
    _client_ip = "unknown"
    _user_agent: str | None = None

    def onConnect(self, request: ConnectionRequest) -> None:
        hs = self.factory.hs
        if not hs.websocket_connections.has_room():
            raise ConnectionDeny(503, "Too many WebSocket connections")
        origin = request.headers.get("origin")
        if origin is not None and not any(
            fnmatch.fnmatchcase(origin, pattern) for pattern in hs.config.websocket.allowed_origins
        ):
            raise ConnectionDeny(403, "Origin not allowed")
        forwarded = request.headers.get("x-forwarded-for")
        if self.factory.listener.x_forwarded and forwarded:
            self._client_ip = forwarded.split(",")[0].strip()
        else:
            transport: Any = self.transport
            self._client_ip = getattr(transport.getPeer(), "host", "unknown")
        self._user_agent = request.headers.get("user-agent")
        return None

    def onOpen(self) -> None:
        transport: Any = self.transport
        if getattr(transport, "producer", None) is not None:
            # The HTTP channel that served the upgrade registered itself; it is done.
            transport.unregisterProducer()
        transport.registerProducer(self, True)
        self.session = WebSocketSession(
            self.factory.hs, self, self._client_ip, self._user_agent
        )

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.session is not None:
            self.session.message_received(payload, isBinary)

    def onPong(self, payload: bytes) -> None:
        if self.session is not None:
            self.session.activity()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        # autobahn leaves this timer running when the connection is lost before the client
        # answers our close frame (a client we dropped for not reading).
        timer = getattr(self, "closeHandshakeTimeoutCall", None)
        if timer is not None:
            timer.cancel()
            self.closeHandshakeTimeoutCall = None
        if self.session is not None:
            self.session.closed()
            self.session = None

    # ----- `Connection`, for the session ----------------------------------------------------

    def send_text(self, data: bytes) -> None:
        # autobahn applies maxMessagePayloadSize to sending too; the limit is for what
        # clients send, and sync responses may be larger.
        options: Any = self
        limit: int = options.maxMessagePayloadSize
        options.maxMessagePayloadSize = 0
        try:
            self.sendMessage(data, isBinary=False)
        finally:
            options.maxMessagePayloadSize = limit

    def close(self, code: int, reason: str) -> None:
        # A close reason is at most 123 bytes.
        reason = reason.encode("utf-8")[:120].decode("utf-8", "ignore")
        if code == 1000 or 3000 <= code <= 4999:
            self.sendClose(int(code), reason)
        else:
            # Protocol-level codes (1003): autobahn sends them only when failing the connection.
            self._fail_connection(int(code), reason)

    def abort(self) -> None:
        self.dropConnection(abort=True)

    # ----- IPushProducer --------------------------------------------------------------------

    def pauseProducing(self) -> None:
        if self.session is not None:
            self.session.pause_writing()

    def resumeProducing(self) -> None:
        if self.session is not None:
            self.session.resume_writing()

    def stopProducing(self) -> None:
        pass


class SyncWebSocketFactory(WebSocketServerFactory):  # type: ignore[misc]
    protocol = SyncWebSocketProtocol  # type: ignore[assignment]

    def __init__(self, hs: HomeServer, listener: ListenerConfig) -> None:
        super().__init__()
        self.hs = hs
        self.listener = listener
        config = hs.config.websocket
        max_bytes = config.max_message_bytes

        def accept_compression(offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
            for offer in offers:
                if isinstance(offer, PerMessageDeflateOffer):
                    return PerMessageDeflateOfferAccept(offer, max_message_size=max_bytes)
            return None

        self.setProtocolOptions(
            maxMessagePayloadSize=max_bytes,
            maxFramePayloadSize=max_bytes,
            autoPingInterval=config.ping_interval_ms / 1000,
            autoPingTimeout=config.ping_timeout_ms / 1000,
            # Origins are checked in `onConnect`, against the Origin header as sent.
            allowedOrigins=["*"],
            perMessageCompressionAccept=accept_compression if config.compression else None,
            openHandshakeTimeout=config.auth_timeout_ms / 1000,
            # A protocol violation (an oversized message) is answered with a close frame
            # saying why (1009), not a silent drop.
            failByDrop=False,
        )


class _UpgradeResource(WebSocketResource):  # type: ignore[misc]
    def render(self, request: server.Request) -> Any:
        # The HTTP channel's idle timeout must not fire on a connection it no longer owns.
        request.channel.setTimeout(None)
        return super().render(request)


def build_websocket_resource(hs: HomeServer, listener: ListenerConfig) -> Any:
    return _UpgradeResource(SyncWebSocketFactory(hs, listener))


class ClientRootResource(resource.Resource):
    """The client listener's root: the WebSocket path goes to `websocket`, every other path
    to `json` (which routes and renders it)."""

    def __init__(self, json: resource.Resource, websocket: Any) -> None:
        super().__init__()
        self._json = json
        self._websocket = websocket
        self._path = WEBSOCKET_PATH.encode("ascii")

    def getChildWithDefault(self, path: bytes, request: server.Request) -> Any:
        if request.path == self._path:
            return self._websocket
        return self._json

    def render(self, request: server.Request) -> Any:
        return self._json.render(request)
