"""The WebSocket transport (autobahn): the handshake checks (capacity, origin), frames in and
out, and the transport's backpressure, handed to a `WebSocketSession` for everything else.

`ClientRootResource` serves the WebSocket path on the client listener, next to the
`JsonResource` that serves everything else.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import TYPE_CHECKING, Any, cast

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import (
    PerMessageDeflate,
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet.interfaces import IPushProducer
from twisted.web import server
from zope.interface import implementer

from client_api.websocket.requests import WebSocketRequests
from client_api.websocket.session import WebSocketSession
from homeserver.config import ListenerConfig

if TYPE_CHECKING:
    from homeserver.app import HomeServer

logger = logging.getLogger(__name__)

# permessage-deflate. Messages shorter than this go uncompressed: they fit in one packet
# either way, and compressing costs CPU for every listener a push goes to.
COMPRESS_FROM_BYTES = 1024
# The server's side of the stream: a zlib compressor with these settings exists only while
# one message is compressed (no context is kept between messages), so an idle connection
# holds none; 32 KiB while it lasts instead of 256 KiB at zlib's defaults (15, 8), for
# JSON compressed nearly as well.
SERVER_WINDOW_BITS = 12
SERVER_MEM_LEVEL = 5
# The window the client is asked to compress within, when it lets the server choose: the
# server's decompressor for one message needs 2 ** bits bytes.
CLIENT_WINDOW_BITS = 12


class _DeflateAccept(PerMessageDeflateOfferAccept):  # type: ignore[misc]
    """Accepts a permessage-deflate offer without context takeover in either direction,
    and says so: autobahn announces `server_no_context_takeover` only when the client asked
    for it, though a server may always add it."""

    def get_extension_string(self) -> str:
        extension: str = super().get_extension_string()
        if not self.offer.request_no_context_takeover:
            extension += "; server_no_context_takeover"
        return extension


def accept_deflate(offer: PerMessageDeflateOffer, max_message_bytes: int) -> _DeflateAccept:
    """How the server takes a client's permessage-deflate offer: no context kept between
    messages in either direction, so that nothing of zlib's needs keeping between them."""
    window_bits = SERVER_WINDOW_BITS
    if offer.request_max_window_bits:
        window_bits = min(window_bits, offer.request_max_window_bits)
    return _DeflateAccept(
        offer,
        request_no_context_takeover=offer.accept_no_context_takeover,
        request_max_window_bits=CLIENT_WINDOW_BITS if offer.accept_max_window_bits else 0,
        no_context_takeover=True,
        window_bits=window_bits,
        mem_level=SERVER_MEM_LEVEL,
        max_message_size=max_message_bytes,
    )


class MessageScopedDeflate(PerMessageDeflate):  # type: ignore[misc]
    """permessage-deflate that holds its zlib streams only while a message is compressed or
    decompressed. Without context takeover each message starts a new stream anyway; autobahn
    would keep the last one until the next message, which on an idle connection is never."""

    @classmethod
    def replacing(cls, negotiated: PerMessageDeflate) -> MessageScopedDeflate:
        return cls(
            True,
            negotiated.server_no_context_takeover,
            negotiated.client_no_context_takeover,
            negotiated.server_max_window_bits,
            negotiated.client_max_window_bits,
            negotiated.mem_level,
            negotiated.max_message_size,
        )

    def end_compress_message(self) -> bytes:
        data: bytes = super().end_compress_message()
        if self.server_no_context_takeover:
            self._compressor = None
        return data

    def end_decompress_message(self) -> None:
        super().end_decompress_message()
        if self.client_no_context_takeover:
            self._decompressor = None


_HANDSHAKE_ATTRIBUTES = (
    "http_request_data",
    "http_status_line",
    "http_headers",
    "http_request_uri",
    "http_request_host",
    "http_request_path",
    "http_request_params",
    "http_response_data",
    "websocket_origin",
    "websocket_extensions",
    "_wskey",
    "_transport_details",
)


# What autobahn keeps per connection, as slots of `SyncWebSocketProtocol` rather than entries
# of its instance dict: about 60 of them, which in a dict take 1.5 KiB a connection and as
# slots 0.5. Only names autobahn always assigns before reading (none has a class-level
# default that a read could fall back to); any name not listed still works, in the dict.
_AUTOBAHN_STATE = (
    "_isMessageCompressed", "_perMessageCompress", "_transport_details", "_wskey",
    "autoPingPending", "autoPingPendingCall", "autoPingPendingSent", "autoPingPendingSeq",
    "autoPingTimeoutCall", "closeHandshakeTimeoutCall", "closedByMe", "control_frame_data",
    "current_frame", "current_frame_masker", "data", "droppedByMe", "failedByMe",
    "frame_data", "frame_length", "http_headers", "http_request_data", "http_request_host",
    "http_request_params", "http_request_path", "http_request_uri", "http_response_data",
    "http_status_line", "inside_message", "localCloseCode", "localCloseReason",
    "maxMessagePayloadSize", "message_data", "message_data_total_length",
    "message_is_binary", "openHandshakeTimeoutCall", "remoteCloseCode", "remoteCloseReason",
    "send_queue", "send_state", "serverConnectionDropTimeoutCall", "state", "trackedTimings",
    "triggered", "utf8validateIncomingCurrentMessage", "utf8validateLast", "wasClean",
    "wasCloseHandshakeTimeout", "wasMaxFramePayloadSizeExceeded",
    "wasMaxMessagePayloadSizeExceeded", "wasNotCleanReason", "wasOpenHandshakeTimeout",
    "wasServerConnectionDropTimeout", "wasServingFlashSocketPolicyFile",
    "websocket_extensions", "websocket_extensions_in_use", "websocket_origin",
    "websocket_protocol_in_use", "websocket_protocols", "websocket_version",
)


class _UncountedTraffic:
    """Stands in for autobahn's per-connection `TrafficStats` (twelve counters, 344 bytes a
    connection), which this server never reads: every counter reads 0 and takes no write."""

    __slots__ = ()

    def __getattr__(self, name: str) -> int:
        return 0

    def __setattr__(self, name: str, value: object) -> None:
        pass


class _Unwatched:
    """Stands in for autobahn's `is_open` and `is_closed` Deferreds, which only a client
    (or a caller of autobahn's own API) waits on: two Deferreds a connection, for nothing."""

    __slots__ = ()

    def callback(self, result: object) -> None:
        pass


_UNCOUNTED_TRAFFIC = _UncountedTraffic()
_UNWATCHED = _Unwatched()


class _SendQueue(list):  # type: ignore[type-arg]
    """autobahn's queue of chopped or synchronous writes, which this server never makes.
    autobahn uses only append, popleft and len of it: as a list it takes 56 bytes empty, as
    autobahn's deque 760."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


@implementer(IPushProducer)
class SyncWebSocketProtocol(WebSocketServerProtocol):  # type: ignore[misc]
    """One connection. Registered as the transport's producer, so Twisted tells it when the
    socket's send buffer is full and when it has drained.

    Thousands of these sit idle at once, so what each holds is kept small: autobahn's
    options are class attributes (`SyncWebSocketFactory`), and what it keeps only for the
    handshake, or could share, is let go in `onOpen`."""

    __slots__ = _AUTOBAHN_STATE + ("session", "_client_ip", "_user_agent", "_utf8validator")

    factory: SyncWebSocketFactory

    # autobahn's attributes this server replaces with something smaller (see the classes).
    trafficStats = property(lambda self: _UNCOUNTED_TRAFFIC, lambda self, value: None)
    is_open = property(lambda self: _UNWATCHED, lambda self, value: None)
    is_closed = property(lambda self: _UNWATCHED, lambda self, value: None)

    def _connectionMade(self) -> None:
        self.session: WebSocketSession | None = None
        self._client_ip = "unknown"
        self._user_agent: str | None = None
        self._utf8validator: Utf8Validator | None = None
        super()._connectionMade()
        self.send_queue = _SendQueue()  # type: ignore[assignment]

    def set_valid_events(self, valid_events: Any = None) -> None:
        """autobahn's observable events (`on("message", ...)`), which this server does not
        use: without them, the list and dict of them each connection would keep."""

    @property
    def utf8validator(self) -> Utf8Validator:
        """The incoming text message's UTF-8 validator, made when a message starts and let go
        when it ends (`onMessage`): an idle connection holds none (autobahn keeps one
        per connection for its lifetime, a few hundred bytes)."""
        validator = self._utf8validator
        if validator is None:
            validator = self._utf8validator = Utf8Validator()
        return validator

    @utf8validator.setter
    def utf8validator(self, value: Utf8Validator) -> None:
        # autobahn assigns one when the connection is made; it is made again when needed.
        self._utf8validator = None

    def _frame_ended(self) -> None:
        # The last frame's unmasker is not read again: the next frame makes its own. The
        # validator lasts until the message ends: a control frame can come between two
        # fragments of one message.
        self.current_frame_masker = None
        if not self.inside_message:
            self._utf8validator = None

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
        # What autobahn keeps of the handshake and never reads after it (the request as
        # received, its headers parsed, the response sent, the transport's details): 1.5
        # KiB a connection.
        for name in _HANDSHAKE_ATTRIBUTES:
            setattr(self, name, None)
        negotiated = self._perMessageCompress
        if isinstance(negotiated, PerMessageDeflate):
            # Nothing has been compressed or decompressed yet: the handshake has just ended.
            scoped = MessageScopedDeflate.replacing(negotiated)
            self._perMessageCompress = scoped
            self.websocket_extensions_in_use = [
                scoped if extension is negotiated else extension
                for extension in self.websocket_extensions_in_use
            ]
        transport: Any = self.transport
        if getattr(transport, "producer", None) is not None:
            # The HTTP channel that served the upgrade registered itself; it is done.
            transport.unregisterProducer()
        transport.registerProducer(self, True)
        factory = self.factory
        self.session = WebSocketSession(
            factory.hs, factory.requests, self, self._client_ip, self._user_agent
        )

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.current_frame_masker = None
        self._utf8validator = None
        if self.session is not None:
            self.session.message_received(payload, isBinary)

    def onPing(self, payload: bytes) -> None:
        self._frame_ended()
        super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        self._frame_ended()
        if self.session is not None:
            self.session.pong_received()

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
        if self.state != WebSocketProtocol.STATE_OPEN:
            # Closing (the client's close frame or ours has been sent): nothing more can go
            # out, and the session hears of the close when the connection is gone.
            return
        # autobahn applies maxMessagePayloadSize to sending too; the limit is for what
        # clients send, and sync responses may be larger.
        options: Any = self
        limit: int = options.maxMessagePayloadSize
        options.maxMessagePayloadSize = 0
        try:
            self.sendMessage(
                data, isBinary=False, doNotCompress=len(data) < COMPRESS_FROM_BYTES
            )
        finally:
            options.maxMessagePayloadSize = limit

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """autobahn's, without its debug log line: the log's arguments (colouring with
        click) are built for every frame even with debug logging off, a fifth of what a
        frame costs to send, and one commit sends a frame to every listener of a room."""
        me: Any = self  # autobahn's attributes are untyped
        if sync or chopsize or me.send_queue or me.logOctets:
            super().sendData(data, sync, chopsize)
            return
        me.transport.write(data)

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

    def ping(self) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendPing()

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
        # Shared by every connection: it holds nothing of any one of them.
        self.requests = WebSocketRequests(hs)
        config = hs.config.websocket
        max_bytes = config.max_message_bytes

        def accept_compression(offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
            for offer in offers:
                if isinstance(offer, PerMessageDeflateOffer):
                    return accept_deflate(offer, max_bytes)
            return None

        self.setProtocolOptions(
            maxMessagePayloadSize=max_bytes,
            maxFramePayloadSize=max_bytes,
            # Pings are sent and their pongs awaited by the sessions' deadlines, checked by
            # one sweep (`ConnectionRegistry`): autobahn's own keep a timer per connection.
            autoPingInterval=0,
            # Origins are checked in `onConnect`, against the Origin header as sent.
            allowedOrigins=["*"],
            perMessageCompressionAccept=accept_compression if config.compression else None,
            openHandshakeTimeout=config.auth_timeout_ms / 1000,
            # A protocol violation (an oversized message) is answered with a close frame
            # saying why (1009), not a silent drop.
            failByDrop=False,
        )
        # autobahn copies each of these options into every connection's own attributes,
        # unless its class has them: 40 entries a connection, in a dict that then needs
        # twice the room. As class attributes of this factory's protocol they are shared.
        # Not the message size limit, which `send_text` sets on the connection and back: a
        # key added to the dict later would make it grow again.
        options = {
            name: _as_class_attribute(getattr(self, name))
            for name in SyncWebSocketProtocol.CONFIG_ATTRS
            if name != "maxMessagePayloadSize"
        }
        self.protocol = cast(
            type[SyncWebSocketProtocol],
            type("SyncWebSocketProtocol", (SyncWebSocketProtocol,), options),
        )


def _as_class_attribute(value: Any) -> Any:
    # A function in a class is a method; the option (a callback) must stay a plain function.
    return staticmethod(value) if callable(value) else value


class _UpgradeResource(WebSocketResource):  # type: ignore[misc]
    def render(self, request: server.Request) -> Any:
        channel = request.channel
        # The HTTP channel's idle timeout must not fire on a connection it no longer owns.
        channel.setTimeout(None)
        result = super().render(request)
        if result is server.NOT_DONE_YET and request in channel.requests:
            # Upgraded: the connection is the WebSocket's now, and the request is never
            # finished. The channel would keep it in its list of requests, and the two (with
            # the request's headers and body) would wait for a full garbage collection,
            # which with thousands of long-lived objects comes seldom; unlinked, both go at
            # once.
            channel.requests.remove(request)
        return result


def build_websocket_resource(hs: HomeServer, listener: ListenerConfig) -> Any:
    return _UpgradeResource(SyncWebSocketFactory(hs, listener))
