"""One bus on which writers say, after they commit, "stream S advanced to P for these rooms
and users"; everything that reacts to new data subscribes to it.

Publishing (`await bus.publish(StreamUpdate(...))`, right after the write commits):

1. The stream's change indexes move at once, before anything can yield: a sync that reads
   the new position must find the change in the index.
2. Subscribers are then called with the update, each awaited in turn, in the order they
   subscribed. They hear of a stream's updates in position order, and only once readers can
   see the position: two writes may commit out of order (11 before 10), and an update for
   11 is held until 10 has finished (and been published, if it is). So a subscriber that
   reads the stream up to `update.position` finds everything up to it.
3. `publish` returns once its update has been delivered, or at once when it is held (the
   write that delivers it is then the one that lets it be seen).

Subscribers are `async def on_update(update) -> None` or plain functions returning None.
One that raises is logged and the others still run: the write has committed and the
writer cannot undo it. Subscribers should be quick and not publish on the same stream
(deliveries of one stream run one at a time, in order). `subscribe` returns a function that
unsubscribes (a WebSocket connection closing, say).
"""

from __future__ import annotations

import functools
import heapq
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from homeserver.streams.registry import StreamRegistry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamUpdate:
    """Stream `stream` advanced to `position`.

    `rooms` and `users` are the entities that changed: the stream's change indexes move for
    them. Who is woken is said separately: the joined members of `rooms`, and `wake` (the
    owner of changed account data, a user's room-mates for their presence, the target of a
    membership who may have left). `private`: the rooms' members are not woken, only `wake`
    (a private read receipt).
    `detail` is the written row, for subscribers that forward it (a `StoredEvent` on the
    events stream, a `Receipt` on receipts), None when there is nothing more to say.
    """

    stream: str
    position: int
    rooms: frozenset[str] = field(default_factory=frozenset)
    users: frozenset[str] = field(default_factory=frozenset)
    wake: frozenset[str] = field(default_factory=frozenset)
    private: bool = False
    detail: Any = None

    @classmethod
    def of(
        cls,
        stream: str,
        position: int,
        *,
        rooms: Iterable[str] = (),
        users: Iterable[str] = (),
        wake: Iterable[str] = (),
        private: bool = False,
        detail: Any = None,
    ) -> StreamUpdate:
        return cls(
            stream, position, frozenset(rooms), frozenset(users), frozenset(wake), private,
            detail,
        )


Subscriber = Callable[[StreamUpdate], Awaitable[None] | None]


@dataclass(order=True)
class _Held:
    position: int
    sequence: int
    update: StreamUpdate = field(compare=False)
    delivered: defer.Deferred[None] = field(compare=False)


@dataclass
class _Subscription:
    callback: Subscriber
    streams: frozenset[str] | None


class StreamBus:
    def __init__(self, registry: StreamRegistry, reactor: Any) -> None:
        self._registry = registry
        self._reactor = reactor
        self._subscriptions: list[_Subscription] = []
        self._held: dict[str, list[_Held]] = {stream.name: [] for stream in registry}
        self._delivering: set[str] = set()
        self._sequence = itertools.count()
        for stream in registry:
            # A write that publishes nothing (a retry, a rejected event) can be what an
            # update waits for: look again once the stream has moved. Later, not now: the
            # writer that just finished publishes next and must be delivered in order.
            stream.ids.on_advance(functools.partial(self._look_again_later, stream.name))

    def subscribe(
        self, callback: Subscriber, streams: Collection[str] | None = None
    ) -> Callable[[], None]:
        """Call `callback(update)` for every update (of `streams` only, if given), once its
        position is visible; returns the function that unsubscribes."""
        unknown = set(streams or ()) - set(self._registry.names)
        if unknown:
            raise ValueError(f"unknown streams: {sorted(unknown)}")
        subscription = _Subscription(callback, frozenset(streams) if streams else None)
        self._subscriptions.append(subscription)

        def unsubscribe() -> None:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

        return unsubscribe

    async def publish(self, update: StreamUpdate) -> None:
        """Announce a committed write (see the module docstring)."""
        stream = self._registry[update.stream]
        stream.record_changes(update.position, update.rooms, update.users)
        held = _Held(update.position, next(self._sequence), update, defer.Deferred())
        heapq.heappush(self._held[update.stream], held)
        visible = update.position <= stream.current
        self._deliver_visible(update.stream)
        if visible:
            await held.delivered

    def _look_again_later(self, name: str) -> None:
        if self._held[name]:
            self._reactor.callLater(0, self._deliver_visible, name)

    def _deliver_visible(self, name: str) -> None:
        if name not in self._delivering:
            defer.ensureDeferred(self._deliver_loop(name))

    async def _deliver_loop(self, name: str) -> None:
        self._delivering.add(name)
        try:
            stream, held = self._registry[name], self._held[name]
            while held and held[0].position <= stream.current:
                item = heapq.heappop(held)
                await self._deliver(item.update)
                item.delivered.callback(None)
        finally:
            self._delivering.discard(name)

    async def _deliver(self, update: StreamUpdate) -> None:
        for subscription in list(self._subscriptions):
            if subscription.streams is not None and update.stream not in subscription.streams:
                continue
            try:
                result = subscription.callback(update)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception(
                    "stream subscriber %r failed on %s at %d",
                    subscription.callback, update.stream, update.position,
                )
