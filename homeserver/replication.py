"""Fan-out between Heddle processes that share one database, over Redis pub/sub.

Each process publishes what others must react to at once (revoked access tokens, so a
logout is effective everywhere; rooms whose current state changed and devices whose key
counts changed, so cached copies are dropped; redactions stored, so no cache keeps serving
the redacted event whole) and subscribes to the same channels. Messages are JSON
`{"from": <process id>, "data": ...}`; a process ignores its own. When the subscription
connection is lost and comes back, messages may have been missed, so subscribers are told
to drop whatever they cache (`on_resync`).

With `redis.enabled: false` (the single-process default) nothing is sent anywhere.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from homeserver.config import RedisConfig

logger = logging.getLogger(__name__)

Handler = Callable[[Any], None]

# A room_id: its current state changed; other processes drop their cached copy.
CURRENT_STATE_STREAM = "current_state"
# [redacted event ID, redaction event ID]: a redaction was stored; other processes stop
# answering "not redacted" for that event from their cache.
REDACTIONS_STREAM = "redactions"
# A list of [user_id, device_id]: those devices' one-time or fallback keys changed; other
# processes drop their cached key counts.
E2E_KEY_COUNTS_STREAM = "e2e_key_counts"


class Replication:
    def __init__(self, config: RedisConfig, server_name: str) -> None:
        self._config = config
        self._prefix = f"{config.channel_prefix}.{server_name}."
        self.process_id = uuid.uuid4().hex
        self._handlers: dict[str, Handler] = {}
        self._resync_handlers: list[Callable[[], None]] = []
        self._publisher: Any = None
        self._subscriber_factory: Any = None
        self._connected_once = False
        self._subscribed: defer.Deferred[None] = defer.Deferred()

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    def subscribe(self, stream: str, handler: Handler) -> None:
        """Call `handler(data)` for every message other processes publish on `stream`."""
        self._handlers[self._prefix + stream] = handler

    def on_resync(self, callback: Callable[[], None]) -> None:
        """Call `callback()` after reconnecting, when messages may have been missed."""
        self._resync_handlers.append(callback)

    def publish(self, stream: str, data: Any) -> None:
        if self._publisher is None:
            return
        message = json.dumps({"from": self.process_id, "data": data})
        d = self._publisher.publish(self._prefix + stream, message)
        d.addErrback(lambda f: logger.warning("redis publish on %s failed: %s", stream, f.value))

    async def start(self) -> None:
        """Connect the publisher and subscriber; returns once subscribed."""
        if not self.enabled:
            return
        # Imported only when replicating: txredisapi costs a lone process 2.6 MB of memory.
        import txredisapi

        host, port = self._config.host, self._config.port
        self._publisher = txredisapi.lazyConnection(host, port)
        factory = txredisapi.SubscriberFactory()
        factory.protocol = _subscriber_protocol(txredisapi.SubscriberProtocol)
        factory.replication = self
        factory.startConnecting(txredisapi._makeEndpoint(host, port))
        self._subscriber_factory = factory
        await self._subscribed
        logger.info("replication connected to redis at %s:%d", host, port)

    def _connected(self) -> list[str]:
        if self._connected_once:
            logger.info("redis subscription re-established; dropping caches")
            for callback in self._resync_handlers:
                callback()
        self._connected_once = True
        return list(self._handlers)

    def _subscription_ready(self) -> None:
        if not self._subscribed.called:
            self._subscribed.callback(None)

    def _received(self, channel: str | bytes, message: str | bytes) -> None:
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8")
        handler = self._handlers.get(channel)
        if handler is None:
            return
        try:
            decoded = json.loads(message)
            if decoded.get("from") == self.process_id:
                return
            handler(decoded["data"])
        except Exception:
            logger.exception("bad replication message on %s", channel)

    async def stop(self) -> None:
        if self._publisher is not None:
            await self._publisher.disconnect()
            self._publisher = None
        if self._subscriber_factory is not None:
            await self._subscriber_factory.disconnect()
            self._subscriber_factory = None


def _subscriber_protocol(base: type) -> type:
    """The redis subscriber protocol, made once txredisapi is imported."""

    class _Subscriber(base):  # type: ignore[valid-type,misc]
        @defer.inlineCallbacks
        def connectionMade(self) -> Any:
            yield super().connectionMade()
            replication: Replication = self.factory.replication
            channels = replication._connected()
            if channels:
                yield self.subscribe(channels)
            replication._subscription_ready()

        def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
            self.factory.replication._received(channel, message)

    return _Subscriber
