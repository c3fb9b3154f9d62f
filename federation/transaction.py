"""Inbound transactions (`PUT /_matrix/federation/v1/send/{txnId}`): deduplicated per
origin, each PDU checked and handled in order with its own result, EDUs dispatched by type.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from federation.acl import server_allowed_by_acl
from federation.errors import FederationError
from federation.event_checks import InvalidPdu, parse_pdu
from homeserver.errors import Codes, MatrixError
from homeserver.linearizer import Linearizer

if TYPE_CHECKING:
    from federation.event_handler import FederationEventHandler
    from federation.sender import FederationSender
    from homeserver.clock import Clock
    from storage.stores.events import EventStore
    from storage.stores.federation_events import FederationEventStore
    from storage.stores.state import StateStore

logger = logging.getLogger(__name__)

MAX_PDUS = 50
MAX_EDUS = 100
# How long a processed transaction's answer is kept for a retrying sender.
TRANSACTION_MEMORY_MS = 24 * 3600 * 1000

EduHandler = Callable[[str, dict[str, Any]], Awaitable[None]]


class TransactionHandler:
    def __init__(
        self,
        clock: Clock,
        fed_events: FederationEventStore,
        events: EventStore,
        state: StateStore,
        event_handler: FederationEventHandler,
        sender: FederationSender | None,
        wait_for_joins: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._clock = clock
        self._fed_events = fed_events
        self._events = events
        self._state = state
        self._handler = event_handler
        self._sender = sender
        self._per_origin = Linearizer("federation_transactions")
        self.edu_handlers: dict[str, EduHandler] = {}
        # Waits until no join of a room through another server is in progress.
        self.wait_for_joins = wait_for_joins

    async def on_transaction(
        self, origin: str, transaction_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        pdus = body.get("pdus", [])
        edus = body.get("edus", [])
        if not isinstance(pdus, list) or not isinstance(edus, list):
            raise MatrixError(400, Codes.BAD_JSON, "'pdus' and 'edus' must be lists")
        if len(pdus) > MAX_PDUS or len(edus) > MAX_EDUS:
            raise MatrixError(
                400, Codes.BAD_JSON,
                f"A transaction holds at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs",
            )
        claimed = body.get("origin")
        if claimed is not None and claimed != origin:
            raise MatrixError(400, Codes.BAD_JSON, "The transaction's origin is not the sender")
        if self._sender is not None:
            # It is up: anything we hold for it can go now.
            self._sender.wake_destination(origin)
        # One transaction per origin at a time, so a retry waits for the first attempt and
        # then gets its stored answer instead of processing the PDUs twice.
        async with self._per_origin.queue(origin):
            stored = await self._fed_events.get_transaction_response(origin, transaction_id)
            if stored is not None:
                return stored
            results: dict[str, Any] = {}
            for pdu in pdus:
                event_id, result = await self._handle_pdu(origin, pdu)
                if event_id is not None:
                    results[event_id] = result
            for edu in edus:
                await self._handle_edu(origin, edu)
            response = {"pdus": results}
            await self._fed_events.store_transaction_response(
                origin, transaction_id, response, self._clock.time_msec()
            )
            return response

    async def prune(self) -> None:
        """Forget transactions older than any sender would still retry."""
        await self._fed_events.delete_old_transactions(
            self._clock.time_msec() - TRANSACTION_MEMORY_MS
        )

    async def _handle_pdu(self, origin: str, pdu: Any) -> tuple[str | None, dict[str, Any]]:
        room_id = pdu.get("room_id") if isinstance(pdu, dict) else None
        if not isinstance(room_id, str):
            logger.info("PDU from %s without a room ID dropped", origin)
            return None, {}
        if self.wait_for_joins is not None:
            # A join of this room in progress: its state is not stored yet.
            await self.wait_for_joins(room_id)
        room_version = await self._events.get_room_version(room_id)
        if room_version is None:
            # A room we are not in: nothing to check it against.
            logger.info("PDU from %s for unknown room %s dropped", origin, room_id)
            return None, {}
        try:
            event = parse_pdu(pdu, room_version, expected_room_id=room_id)
        except InvalidPdu as e:
            logger.info("invalid PDU from %s dropped: %s", origin, e)
            return None, {}
        event_id = event.event_id
        try:
            if not await self.origin_allowed(room_id, origin):
                return event_id, {"error": "Server is denied by the room's server ACL"}
            checked = await self._handler.check_pdu(pdu, room_version, room_id)
            await self._handler.on_receive_pdu(origin, checked)
        except InvalidPdu as e:
            return event_id, {"error": f"Invalid PDU: {e}"}
        except FederationError as e:
            return event_id, {"error": f"Signature check failed: {e}"}
        except MatrixError as e:
            return event_id, {"error": e.message}
        except Exception:
            logger.exception("failed to handle PDU %s from %s", event_id, origin)
            return event_id, {"error": "Internal error"}
        return event_id, {}

    async def origin_allowed(self, room_id: str, origin: str) -> bool:
        """Whether the room's current server ACL lets `origin` take part (no ACL: yes)."""
        acl_id = await self._state.get_current_state_event_id(room_id, "m.room.server_acl", "")
        if acl_id is None:
            return True
        acl = await self._events.get_event(acl_id)
        return acl is None or server_allowed_by_acl(origin, acl.content)

    async def _handle_edu(self, origin: str, edu: Any) -> None:
        if not isinstance(edu, dict):
            return
        edu_type = edu.get("edu_type")
        content = edu.get("content")
        if not isinstance(edu_type, str) or not isinstance(content, dict):
            return
        handler = self.edu_handlers.get(edu_type)
        if handler is None:
            logger.debug("ignoring EDU %s from %s", edu_type, origin)
            return
        try:
            await handler(origin, content)
        except MatrixError as e:
            logger.info("EDU %s from %s refused: %s", edu_type, origin, e.message)
        except Exception:
            logger.exception("failed to handle EDU %s from %s", edu_type, origin)
