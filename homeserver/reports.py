"""Abuse reports: users report an event, a room or a user to the server's admins, who read
and delete them through the admin API (`homeserver/admin/reports.py`).

What each report requires is the spec's ("Reporting content"): an event report only from
a user joined to the room who can see the event; a room report from anyone, joined or not,
about a room this server knows; a user report from anyone, and its answer never says
whether the user exists."""

from __future__ import annotations

import logging

from homeserver.auth.tokens import Requester
from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import check_event_id, check_room_id, split_user_id
from homeserver.ratelimit import RateLimiter
from homeserver.rooms.lookup import require_room
from homeserver.rooms.messages import readable_event
from homeserver.rooms.visibility import HistoryVisibility
from storage.stores.accounts import AccountStore
from storage.stores.events import EventStore
from storage.stores.reports import EVENT_REPORTS, ROOM_REPORTS, USER_REPORTS, ReportStore
from storage.stores.rooms import RoomStore

logger = logging.getLogger(__name__)

# The answer for every event that may not be reported, whatever the reason, so a report
# reveals nothing about events the reporter cannot see (the spec's wording).
EVENT_NOT_FOUND = "The event was not found or you are not joined to the room."


class ReportsHandler:
    def __init__(
        self,
        server_name: str,
        clock: Clock,
        store: ReportStore,
        events: EventStore,
        rooms: RoomStore,
        accounts: AccountStore,
        visibility: HistoryVisibility,
        limiter: RateLimiter,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._store = store
        self._events = events
        self._rooms = rooms
        self._accounts = accounts
        self._visibility = visibility
        self._limiter = limiter

    def _check_rate(self, requester: Requester) -> None:
        # Before any lookup, so flooding costs the server no database reads either.
        self._limiter.check(requester.user_id)

    async def report_event(
        self,
        requester: Requester,
        room_id: str,
        event_id: str,
        reason: str | None,
        score: int | None,
    ) -> int:
        """File a report about an event; its ID. 404 unless the reporter is joined to the
        room and may see the event, and for redacted events (the spec allows it: what was
        reported is gone)."""
        check_room_id(room_id)
        check_event_id(event_id)
        self._check_rate(requester)
        if not await self._rooms.is_joined(room_id, requester.user_id):
            raise MatrixError(404, Codes.NOT_FOUND, EVENT_NOT_FOUND)
        try:
            stored = await readable_event(
                self._events, self._visibility, requester.user_id, room_id, event_id
            )
        except MatrixError as e:
            raise MatrixError(404, Codes.NOT_FOUND, EVENT_NOT_FOUND) from e
        if event_id in await self._events.get_redactions([event_id]):
            raise MatrixError(404, Codes.NOT_FOUND, EVENT_NOT_FOUND)
        report_id = await self._store.add_report(
            EVENT_REPORTS,
            self._clock.time_msec(),
            requester.user_id,
            reason,
            room_id=room_id,
            event_id=event_id,
            event_sender=stored.event.sender,
            score=score,
        )
        logger.info(
            "event report %d by %s on %s in %s", report_id, requester.user_id, event_id, room_id
        )
        return report_id

    async def report_room(self, requester: Requester, room_id: str, reason: str) -> int:
        """File a report about a room this server knows (404 otherwise); its ID. The
        reporter need not be joined: rooms harm through directories and invites too."""
        check_room_id(room_id)
        self._check_rate(requester)
        await require_room(self._events, room_id, "The room was not found.")
        report_id = await self._store.add_report(
            ROOM_REPORTS, self._clock.time_msec(), requester.user_id, reason, room_id=room_id
        )
        logger.info("room report %d by %s on %s", report_id, requester.user_id, room_id)
        return report_id

    async def report_user(
        self, requester: Requester, target_user_id: str, reason: str
    ) -> int | None:
        """File a report about a user; its ID, or None when it was dropped. Reports about
        users of other servers (whom this server's admins cannot act on) and about users
        who do not exist are dropped without a word: the answer is the same either way, so
        reporting is no way to find out which users exist (as the spec lets servers do)."""
        _, server = split_user_id(target_user_id)
        self._check_rate(requester)
        if server != self._server_name:
            return None
        if await self._accounts.get_account(target_user_id) is None:
            return None
        report_id = await self._store.add_report(
            USER_REPORTS,
            self._clock.time_msec(),
            requester.user_id,
            reason,
            target_user_id=target_user_id,
        )
        logger.info("user report %d by %s on %s", report_id, requester.user_id, target_user_id)
        return report_id
