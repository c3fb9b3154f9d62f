"""Events local clients send: messages (/send), state (/state) and redactions (/redact).

Policy that the auth rules do not cover lives here: transaction-ID idempotency, the
per-user message rate limit, content checks (power levels, canonical aliases) and who may
redact whose events. Building, authorising and persisting is `EventCreator.send`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from homeserver.auth.restrictions import (
    check_message_rate,
    check_not_suspended,
    fake_event_id,
)
from homeserver.auth.tokens import Requester
from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from homeserver.events.types import (
    CANONICAL_ALIAS,
    GUEST_ACCESS,
    MEMBER,
    POWER_LEVELS,
    REDACTION,
)
from homeserver.presence import PresenceHandler
from homeserver.ratelimit import RateLimiter
from homeserver.rooms.creator import EventCreator
from homeserver.rooms.directory import DirectoryHandler
from homeserver.rooms.lookup import require_room
from homeserver.rooms.membership import MembershipHandler
from homeserver.rooms.power import RoomPower
from homeserver.rooms.relations import RelationsHandler
from homeserver.rooms.validation import check_power_levels_content
from storage.persister import ClientTransaction
from storage.stores.events import EventStore
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore

logger = logging.getLogger(__name__)


class EventSendHandler:
    def __init__(
        self,
        server_name: str,
        creator: EventCreator,
        events: EventStore,
        state: StateStore,
        rooms: RoomStore,
        directory: DirectoryHandler,
        membership: MembershipHandler,
        power: RoomPower,
        message_limiter: RateLimiter,
        presence: PresenceHandler,
        relations: RelationsHandler,
        clock: Clock,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._creator = creator
        self._events = events
        self._state = state
        self._rooms = rooms
        self._directory = directory
        self._membership = membership
        self._power = power
        self._limiter = message_limiter
        self._presence = presence
        self._relations = relations

    # ----- messages ------------------------------------------------------------------------

    async def send_message(
        self,
        requester: Requester,
        room_id: str,
        event_type: str,
        content: Mapping[str, Any],
        txn_id: str,
    ) -> str:
        txn = ClientTransaction(
            requester.user_id, requester.device_id, f"send/{room_id}/{event_type}/{txn_id}", txn_id
        )
        if (previous := await self._previous(txn)) is not None:
            return previous
        if event_type == REDACTION:
            # Spec v1.18: /send must accept redactions in every room version.
            return await self._redact(requester, room_id, content.get("redacts"), content, txn)
        check_not_suspended(requester)
        self._ratelimit(requester)
        if requester.shadow_banned:
            return await self._dropped_txn(requester, room_id, event_type, txn)
        await self._relations.check_new_relation(room_id, requester.user_id, event_type, content)
        stored = await self._creator.send(
            room_id, requester.user_id, event_type, content, txn=txn
        )
        await self._presence.bump_active(requester.user_id)
        return stored.event.event_id

    async def redact(
        self,
        requester: Requester,
        room_id: str,
        event_id: str,
        reason: str | None,
        txn_id: str,
    ) -> str:
        txn = ClientTransaction(
            requester.user_id, requester.device_id, f"redact/{room_id}/{event_id}/{txn_id}", txn_id
        )
        if (previous := await self._previous(txn)) is not None:
            return previous
        content = {"reason": reason} if reason is not None else {}
        return await self._redact(requester, room_id, event_id, content, txn)

    async def _previous(self, txn: ClientTransaction) -> str | None:
        """The event an earlier request with this transaction created (a retry is not
        rate limited and changes nothing)."""
        found = await self._events.get_event_for_txn(txn.user_id, txn.device_id, txn.path_key)
        return found[1] if found else None

    def _ratelimit(self, requester: Requester) -> None:
        check_message_rate(self._limiter, requester)

    @staticmethod
    def _dropped(requester: Requester, room_id: str, event_type: str) -> str:
        """A shadow-banned user's event: an ID for the client, nothing for anyone else."""
        logger.info(
            "%s: dropped %s from shadow-banned %s", room_id, event_type, requester.user_id
        )
        return fake_event_id()

    async def _dropped_txn(
        self, requester: Requester, room_id: str, event_type: str, txn: ClientTransaction
    ) -> str:
        """A shadow-banned user's event sent with a transaction ID: the made-up ID is kept
        with the transaction, so a retry gets it back (without being rate limited), as a
        retry of a real send does; another answer would give the ban away."""
        return await self._events.record_txn_event(
            txn.user_id,
            txn.device_id,
            txn.path_key,
            room_id,
            self._dropped(requester, room_id, event_type),
            self._clock.time_msec(),
        )

    # ----- redactions ----------------------------------------------------------------------

    async def _redact(
        self,
        requester: Requester,
        room_id: str,
        redacts: Any,
        content: Mapping[str, Any],
        txn: ClientTransaction,
    ) -> str:
        if not isinstance(redacts, str) or not redacts.startswith("$"):
            raise MatrixError(400, Codes.BAD_JSON, "'redacts' must be an event ID")
        room_version = await require_room(self._events, room_id)
        if not await self._rooms.is_joined(room_id, requester.user_id):
            # Before looking the event up, so outsiders learn nothing about the room.
            raise MatrixError(403, Codes.FORBIDDEN, "You are not in the room")
        target = await self._events.get_stored_event(redacts)
        if (
            target is None
            or target.event.room_id != room_id
            or target.outlier
            or target.event.rejected_reason is not None
        ):
            raise MatrixError(404, Codes.NOT_FOUND, "Event not found")
        if target.event.sender != requester.user_id:
            # Redacting one's own events is allowed while suspended; others' is not.
            check_not_suspended(requester)
        if target.event.sender != requester.user_id and not (
            # Spec: "Server administrators may redact events sent by users on their server."
            requester.is_admin and self._membership.is_mine(target.event.sender)
        ):
            if not await self._power.has_named_level(room_id, requester.user_id, "redact"):
                raise MatrixError(
                    403, Codes.FORBIDDEN, "You don't have permission to redact other users' events"
                )
        self._ratelimit(requester)
        if requester.shadow_banned:
            return await self._dropped_txn(requester, room_id, REDACTION, txn)
        body = dict(content)
        extra = None
        if room_version.redacts_in_content:
            body["redacts"] = redacts
        else:
            # Before room v11 `redacts` is a top-level key of the event.
            body.pop("redacts", None)
            extra = {"redacts": redacts}
        stored = await self._creator.send(
            room_id, requester.user_id, REDACTION, body, txn=txn, extra=extra
        )
        logger.info("%s: %s redacted %s", room_id, requester.user_id, redacts)
        return stored.event.event_id

    # ----- state ---------------------------------------------------------------------------

    async def set_state(
        self,
        requester: Requester,
        room_id: str,
        event_type: str,
        state_key: str,
        content: Mapping[str, Any],
    ) -> str:
        if event_type == MEMBER:
            if requester.shadow_banned and content.get("membership") == "invite":
                # Invites are what a shadow ban drops (as `MembershipHandler.invite`).
                check_not_suspended(requester)
                return self._dropped(requester, room_id, event_type)
            stored = await self._membership.set_member_state(requester, room_id, state_key, content)
            return stored.event.event_id
        check_not_suspended(requester)
        await require_room(self._events, room_id)
        if event_type == POWER_LEVELS:
            check_power_levels_content(content)
        elif event_type == CANONICAL_ALIAS:
            await self._directory.validate_canonical_alias(room_id, content)
        # Setting state to what it already is, by the same sender, changes nothing.
        current_id = await self._state.get_current_state_event_id(room_id, event_type, state_key)
        if current_id is not None:
            current = await self._events.get_event(current_id)
            if (
                current is not None
                and current.sender == requester.user_id
                and dict(current.content) == dict(content)
            ):
                return current_id
        self._ratelimit(requester)
        if requester.shadow_banned:
            return self._dropped(requester, room_id, event_type)
        stored = await self._creator.send(
            room_id, requester.user_id, event_type, content, state_key=state_key
        )
        if event_type == GUEST_ACCESS and content.get("guest_access") != "can_join":
            await self._membership.remove_guests(room_id)
        return stored.event.event_id

