"""Delivery of push notifications to the push gateways of HTTP pushers.

Each notification is queued in the database (`pusher_queue`) for every HTTP pusher of its
user, in the transaction `on_notification` runs, so neither a gateway that is down nor a
restart loses it. Every pusher with something queued has one delivery loop: it posts the
oldest notification to the pusher's URL, deletes it once the gateway answered 2xx with a
JSON object, and otherwise waits (1 s, doubling up to an hour, by default) and tries the
same notification again: a pusher's notifications go out in order, and a pusher whose
gateway is slow or down holds up no other. A gateway that names the pusher's pushkey in
`rejected` gets the pusher deleted. A notification not taken within a day is dropped.
`start` resumes the loops of pushers with anything queued; `stop` abandons requests in
flight (their notifications stay queued, and go after the restart).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import Counter
from twisted.internet import defer

from homeserver.clock import Clock
from homeserver.config import PushersConfig
from homeserver.events.model import Event
from homeserver.events.types import CANONICAL_ALIAS, MEMBER, NAME
from homeserver.push.gateway import (
    GatewayResponseError,
    badge_notification,
    device_entry,
    event_notification,
    rejected_pushkeys,
    request_body,
    should_notify,
    tweaks_from_actions,
)
from homeserver.push.gateway_client import GatewayHttpError, PushGatewayClient
from storage.stores.events import EventStore
from storage.stores.pushers import HTTP, Pusher, PusherStore, QueuedNotification
from storage.stores.state import StateStore

logger = logging.getLogger(__name__)

# A pusher's queue holds at most this many notifications; beyond, the oldest are dropped
# (a gateway down for hours while its user is in busy rooms).
MAX_QUEUED_PER_PUSHER = 1000
# After an unexpected error in a loop (the database unreachable, say), wait this long.
LOOP_ERROR_RETRY_S = 10.0

PUSH_ATTEMPTS = Counter(
    "heddle_push_gateway_requests_total",
    "Notifications posted to push gateways, by outcome (delivered, rejected, http_error,"
    " bad_response, failed, dropped)",
    ["outcome"],
)


def _gateway_host(url: str) -> str:
    """For logs: where the gateway is, not the whole URL."""
    try:
        return urlsplit(url).netloc
    except ValueError:
        return "?"


class PushDelivery:
    def __init__(
        self,
        config: PushersConfig,
        reactor: Any,
        clock: Clock,
        store: PusherStore,
        state_store: StateStore,
        event_store: EventStore,
        client: PushGatewayClient,
    ) -> None:
        self._config = config
        self._reactor = reactor
        self._clock = clock
        self._store = store
        self._state_store = state_store
        self._event_store = event_store
        self._client = client
        # pusher ID -> its running delivery loop.
        self._loops: dict[int, defer.Deferred[None]] = {}
        # Pushers given something new since their loop last looked at the queue: a loop
        # that just found it empty looks again instead of ending.
        self._pending: set[int] = set()
        # The loops' waits (backoff), so `stop` can end them.
        self._waits: dict[int, defer.Deferred[None]] = {}
        self._stopping = False
        # Users with an HTTP pusher, so that a notification for anyone else costs nothing:
        # read at start, added to when a pusher is set here, and a user whose notification
        # found no pusher (one deleted since) leaves it. Bounded by the pushers table.
        self._users_with_pushers: set[str] = set()

    # ----- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume delivery of whatever was queued before the last stop."""
        if not self._config.enabled:
            return
        self._users_with_pushers = await self._store.users_with_http_pushers()
        for pusher_id in await self._store.pushers_with_queued():
            self._wake(pusher_id)

    async def stop(self) -> None:
        """Abandon waits and requests in flight (what they were for stays queued), end
        the loops, drop pooled connections."""
        self._stopping = True
        for wait in list(self._waits.values()):
            wait.cancel()
        self._client.cancel_requests()
        await self.idle()
        await self._client.close()

    async def idle(self) -> None:
        """Wait until no delivery loop runs (one waiting to retry counts as running)."""
        while self._loops:
            await defer.gatherResults(list(self._loops.values()))

    # ----- queueing --------------------------------------------------------------------------

    async def on_notification(
        self,
        user_id: str,
        room_id: str,
        event: Event,
        actions: Sequence[Any],
        counts: Mapping[str, int],
    ) -> None:
        if (
            not self._config.enabled
            or user_id not in self._users_with_pushers
            or not should_notify(actions)
            or event.sender == user_id
        ):
            return
        tweaks = tweaks_from_actions(actions)
        sender_name, room_name, room_alias = await self._describe(room_id, event.sender)
        notification = event_notification(
            user_id, event, counts, tweaks, sender_name, room_name, room_alias
        )
        await self._enqueue(user_id, notification, tweaks, badge_only=False)

    async def on_counts_changed(self, user_id: str, counts: Mapping[str, int]) -> None:
        if not self._config.enabled or user_id not in self._users_with_pushers:
            return
        await self._enqueue(user_id, badge_notification(counts), {}, badge_only=True)

    async def _enqueue(
        self, user_id: str, notification: dict[str, Any], tweaks: dict[str, Any], badge_only: bool
    ) -> None:
        pusher_ids = await self._store.enqueue(
            user_id,
            notification,
            tweaks,
            badge_only,
            self._clock.time_msec(),
            keep_at_most=MAX_QUEUED_PER_PUSHER,
        )
        if not pusher_ids:
            self._users_with_pushers.discard(user_id)
        for pusher_id in pusher_ids:
            self._wake(pusher_id)

    def has_http_pusher(self, user_id: str) -> bool:
        """Whether anything sent for this user would be delivered (push evaluation skips
        reading the user's unread count otherwise)."""
        return self._config.enabled and user_id in self._users_with_pushers

    def users_with_http_pushers(self) -> Collection[str]:
        """Every user `has_http_pusher` is true of (none while pushing is disabled)."""
        return self._users_with_pushers if self._config.enabled else ()

    def pusher_set(self, user_id: str, kind: str) -> None:
        """A pusher was set for the user (after commit)."""
        if kind == HTTP:
            self._users_with_pushers.add(user_id)

    async def _describe(
        self, room_id: str, sender: str
    ) -> tuple[str | None, str | None, str | None]:
        """The sender's display name in the room, the room's name and canonical alias, as
        the room's current state has them."""
        found: list[str | None] = []
        for event_type, state_key, field in (
            (MEMBER, sender, "displayname"),
            (NAME, "", "name"),
            (CANONICAL_ALIAS, "", "alias"),
        ):
            event_id = await self._state_store.get_current_state_event_id(
                room_id, event_type, state_key
            )
            state_event = await self._event_store.get_event(event_id) if event_id else None
            value = state_event.content.get(field) if state_event is not None else None
            found.append(value if isinstance(value, str) and value else None)
        return found[0], found[1], found[2]

    # ----- delivery loops --------------------------------------------------------------------

    def _wake(self, pusher_id: int) -> None:
        """Make sure the pusher's loop runs and looks at the queue again. A loop waiting to
        retry keeps waiting: its oldest notification goes first."""
        if self._stopping:
            return
        self._pending.add(pusher_id)
        if pusher_id not in self._loops:
            loop = defer.ensureDeferred(self._run(pusher_id))
            if not loop.called:
                self._loops[pusher_id] = loop

    async def _run(self, pusher_id: int) -> None:
        try:
            while not self._stopping:
                self._pending.discard(pusher_id)
                try:
                    more = await self._deliver_next(pusher_id)
                except defer.CancelledError:
                    if self._stopping:
                        return
                    raise
                except Exception:
                    logger.exception("push delivery for pusher %d failed", pusher_id)
                    await self._wait(pusher_id, LOOP_ERROR_RETRY_S)
                    continue
                if not more and pusher_id not in self._pending:
                    return
        except defer.CancelledError:
            return
        finally:
            self._loops.pop(pusher_id, None)

    async def _deliver_next(self, pusher_id: int) -> bool:
        """Try the pusher's oldest notification once (or wait until it is due); False when
        nothing is left to do."""
        found = await self._store.next_queued(pusher_id)
        if found is None or self._stopping:
            return False
        pusher, queued = found
        if pusher.kind != HTTP or not pusher.enabled:
            # Set again as another kind (or disabled) since this was queued.
            await self._store.delete_queued(queued.id)
            return True
        now = self._clock.time_msec()
        if now - queued.queued_ts > self._config.max_notification_age_ms:
            logger.warning(
                "dropping a push notification for %s (app_id %s) after %d attempts:"
                " its gateway did not take it in time",
                pusher.user_id, pusher.app_id, queued.attempts,
            )
            PUSH_ATTEMPTS.labels("dropped").inc()
            await self._store.delete_queued(queued.id)
            return True
        if queued.next_attempt_ts > now:
            await self._wait(pusher_id, (queued.next_attempt_ts - now) / 1000)
            return True
        await self._attempt(pusher, queued)
        return True

    async def _attempt(self, pusher: Pusher, queued: QueuedNotification) -> None:
        url = pusher.data.get("url")
        device = device_entry(
            pusher.app_id, pusher.pushkey, pusher.pushkey_ts, pusher.data, queued.tweaks
        )
        body = request_body(queued.notification, device, pusher.data)
        try:
            if not isinstance(url, str):
                raise ValueError("the pusher has no URL")
            answer = await self._client.post_json(url, body)
            rejected = rejected_pushkeys(answer)
        except defer.CancelledError:
            raise
        except Exception as e:
            if self._stopping:
                # Cut short by `stop`: not the gateway's failure; it stays queued as it was.
                return
            outcome = (
                "http_error" if isinstance(e, GatewayHttpError)
                else "bad_response" if isinstance(e, GatewayResponseError)
                else "failed"
            )
            PUSH_ATTEMPTS.labels(outcome).inc()
            await self._failed(pusher, queued, e)
            return
        if pusher.pushkey in rejected:
            PUSH_ATTEMPTS.labels("rejected").inc()
            logger.info(
                "push gateway %s rejected the pushkey of %s (app_id %s): pusher deleted",
                _gateway_host(url), pusher.user_id, pusher.app_id,
            )
            await self._store.delete_pusher_by_id(pusher.id)
            return
        PUSH_ATTEMPTS.labels("delivered").inc()
        await self._store.delete_queued(queued.id)

    async def _failed(self, pusher: Pusher, queued: QueuedNotification, error: Exception) -> None:
        attempts = queued.attempts + 1
        delay_ms = min(
            self._config.initial_backoff_ms * 2 ** min(attempts - 1, 32),
            self._config.max_backoff_ms,
        )
        logger.warning(
            "push to %s for %s (app_id %s) failed (attempt %d, next in %d ms): %s",
            _gateway_host(str(pusher.data.get("url"))), pusher.user_id, pusher.app_id,
            attempts, delay_ms, error,
        )
        await self._store.reschedule(queued.id, attempts, self._clock.time_msec() + delay_ms)

    async def _wait(self, pusher_id: int, seconds: float) -> None:
        if self._stopping:
            # `stop` has already cancelled the waits it saw; this one must not outlast it.
            raise defer.CancelledError()
        wait: defer.Deferred[None] = defer.Deferred()
        call = self._reactor.callLater(max(0.0, seconds), wait.callback, None)

        def cancelled(failure: Any) -> Any:
            if call.active():
                call.cancel()
            return failure

        wait.addErrback(cancelled)
        self._waits[pusher_id] = wait
        try:
            await wait
        finally:
            self._waits.pop(pusher_id, None)

