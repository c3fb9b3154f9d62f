"""Send-to-device messaging (client-server API "Send-to-Device messaging", server-server API
"Send-to-device messaging").

A message for a local device waits in its inbox until the device's next /sync after the one
that delivered it: the client acknowledges messages by using the `next_batch` token. A
message for another server's users goes there in an `m.direct_to_device` EDU, one per
destination (split if it would exceed `MAX_EDU_BYTES`), and the receiving server does the
same with it.

Limits. The spec gives none for to-device messages. Heddle refuses, with 413 M_TOO_LARGE,
a request in which any single message, carried alone in an `m.direct_to_device` EDU, would
exceed 65536 bytes of canonical JSON: the size limit the spec sets for events, which
MSC4514 proposes for EDUs, and what Synapse checks per message since it started splitting
to-device EDUs (element-hq/synapse#19617, "EventSizeError"). Messages under it always fit in
one EDU, so every destination can be sent what was accepted.

Idempotency: a client's retry (same device, event type and transaction ID) changes nothing;
an EDU repeated by the origin (same `message_id`) is stored once.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from homeserver.events.auth import server_of
from homeserver.events.canonical import encode_canonical_json
from homeserver.identifiers import split_user_id
from homeserver.streams.bus import StreamBus, StreamUpdate
from homeserver.streams.registry import Stream
from storage.stores.device_inbox import (
    ClientTxnKey,
    DeviceInboxStore,
    FederationMessageKey,
)

if TYPE_CHECKING:
    from federation.sender import FederationSender

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
# user_id -> device_id (or "*") -> content
Messages = Mapping[str, Mapping[str, JsonDict]]

DIRECT_TO_DEVICE = "m.direct_to_device"
MAX_EDU_BYTES = 65536
# Spec: message_id is "of maximum length 32 codepoints".
MAX_MESSAGE_ID_LENGTH = 32
# Longer inbound message IDs are refused (more than the spec's 32, for lax senders; less than
# what a database index can hold).
MAX_INBOUND_MESSAGE_ID_LENGTH = 255
# Event types and transaction IDs (path segments), as for events (spec: "Size limits").
MAX_IDENTIFIER_BYTES = 255
# Our message IDs: 16 URL-safe random characters.
MESSAGE_ID_BYTES = 12
DEFAULT_SYNC_LIMIT = 100
# How long client transaction IDs and inbound message IDs are remembered (as for inbound
# federation transactions: no sender retries after that).
KEY_MEMORY_MS = 24 * 3600 * 1000


def _new_message_id() -> str:
    return secrets.token_urlsafe(MESSAGE_ID_BYTES)


def _edu(sender: str, event_type: str, message_id: str, messages: JsonDict) -> JsonDict:
    return {
        "edu_type": DIRECT_TO_DEVICE,
        "content": {
            "sender": sender,
            "type": event_type,
            "message_id": message_id,
            "messages": messages,
        },
    }


def _size(value: Any) -> int:
    return len(encode_canonical_json(value))


class ToDeviceHandler:
    def __init__(
        self,
        server_name: str,
        clock: Clock,
        store: DeviceInboxStore,
        stream: Stream,
        bus: StreamBus,
        federation: FederationSender | None = None,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._store = store
        self._stream = stream
        self._ids = stream.id_generator()
        self._bus = bus
        # None when federation is disabled: messages for other servers' users are dropped.
        self.federation = federation

    @property
    def current_position(self) -> int:
        return self._stream.current

    # ----- sending (PUT /sendToDevice) -------------------------------------------------------

    async def send_to_device(
        self,
        sender_user_id: str,
        sender_device_id: str,
        event_type: str,
        txn_id: str,
        messages: Messages,
    ) -> None:
        """Deliver `messages` to local devices and queue them for remote servers.

        400 M_INVALID_PARAM for a key of `messages` that is not a user ID, or an event type
        or transaction ID over 255 bytes; 413 M_TOO_LARGE for a message over the limit (see
        the module docstring). Unknown local users and devices are skipped. A retry of the
        same transaction does nothing.
        """
        for name, value in (("Event type", event_type), ("Transaction ID", txn_id)):
            if len(value.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
                raise MatrixError(
                    400, Codes.INVALID_PARAM, f"{name} is longer than {MAX_IDENTIFIER_BYTES} bytes"
                )
        local: dict[str, Mapping[str, JsonDict]] = {}
        remote: dict[str, dict[str, Mapping[str, JsonDict]]] = {}
        for user_id, by_device in messages.items():
            _, server = split_user_id(user_id)
            if server == self._server_name:
                local[user_id] = by_device
            else:
                remote.setdefault(server, {})[user_id] = by_device
        self._check_sizes(sender_user_id, event_type, messages)

        key = ClientTxnKey(sender_user_id, sender_device_id, event_type, txn_id)
        async with self._ids.next() as stream_id:
            delivered = await self._store.add_messages(
                stream_id, sender_user_id, event_type, local, key, self._clock.time_msec()
            )
        if delivered is None:
            logger.debug("sendToDevice %s from %s/%s: a retry", txn_id, sender_user_id,
                         sender_device_id)
            return
        if delivered:
            await self._bus.publish(StreamUpdate.of("to_device", stream_id, wake=delivered))
        for destination, by_user in sorted(remote.items()):
            await self._send_remote(destination, sender_user_id, event_type, by_user)
        logger.info(
            "to-device %s from %s: %d local devices of %d users, %d servers",
            event_type,
            sender_user_id,
            sum(len(d) for d in delivered.values()),
            len(delivered),
            len(remote),
        )

    def _check_sizes(self, sender: str, event_type: str, messages: Messages) -> None:
        placeholder_id = "x" * MAX_MESSAGE_ID_LENGTH
        for user_id, by_device in messages.items():
            for device_id, content in by_device.items():
                edu = _edu(sender, event_type, placeholder_id, {user_id: {device_id: content}})
                if _size(edu) > MAX_EDU_BYTES:
                    raise MatrixError(
                        413,
                        Codes.TOO_LARGE,
                        f"The message for {user_id} device {device_id} is too large: a"
                        f" to-device message may take at most {MAX_EDU_BYTES} bytes",
                    )

    async def _send_remote(
        self,
        destination: str,
        sender: str,
        event_type: str,
        by_user: Mapping[str, Mapping[str, JsonDict]],
    ) -> None:
        if self.federation is None:
            logger.info("to-device %s for %s dropped: federation is disabled", event_type,
                        destination)
            return
        for chunk in self._edu_chunks(sender, event_type, by_user):
            edu = _edu(sender, event_type, _new_message_id(), chunk)
            await self.federation.send_edu(destination, DIRECT_TO_DEVICE, edu["content"])

    def _edu_chunks(
        self, sender: str, event_type: str, by_user: Mapping[str, Mapping[str, JsonDict]]
    ) -> list[JsonDict]:
        """The messages for one server as `messages` maps of EDUs of at most MAX_EDU_BYTES
        each: one, unless that would be too large (many devices, large messages). Sizes are
        over-estimated by counting separators for every entry."""
        base = _size(_edu(sender, event_type, "x" * MAX_MESSAGE_ID_LENGTH, {}))
        chunks: list[JsonDict] = []
        current: JsonDict = {}
        size = base
        for user_id, by_device in by_user.items():
            for device_id, content in by_device.items():
                # "user":{ ... },  and  "device":content,
                user_cost = 0 if user_id in current else _size(user_id) + 3
                cost = user_cost + _size(device_id) + 2 + _size(content)
                if current and size + cost > MAX_EDU_BYTES:
                    chunks.append(current)
                    current, size = {}, base
                    user_cost = _size(user_id) + 3
                    cost = user_cost + _size(device_id) + 2 + _size(content)
                current.setdefault(user_id, {})[device_id] = content
                size += cost
        if current:
            chunks.append(current)
        return chunks

    # ----- receiving (m.direct_to_device EDUs) -----------------------------------------------

    async def on_direct_to_device(self, origin: str, content: JsonDict) -> None:
        """An `m.direct_to_device` EDU from `origin`: its sender must be one of origin's
        users; messages for our users' devices are stored once per `message_id`."""
        sender = content.get("sender")
        event_type = content.get("type")
        message_id = content.get("message_id")
        messages = content.get("messages")
        if (
            not isinstance(sender, str)
            or not isinstance(event_type, str)
            or not isinstance(message_id, str)
            or not 0 < len(message_id) <= MAX_INBOUND_MESSAGE_ID_LENGTH
            or not isinstance(messages, dict)
        ):
            logger.info("malformed m.direct_to_device EDU from %s dropped", origin)
            return
        if server_of(sender) != origin:
            logger.info("m.direct_to_device EDU from %s for sender %s dropped", origin, sender)
            return
        local: dict[str, dict[str, JsonDict]] = {}
        for user_id, by_device in messages.items():
            if server_of(user_id) != self._server_name or not isinstance(by_device, dict):
                continue
            wanted = {d: c for d, c in by_device.items() if isinstance(c, dict)}
            if wanted:
                local[user_id] = wanted
        if not local:
            return
        key = FederationMessageKey(origin, message_id)
        async with self._ids.next() as stream_id:
            delivered = await self._store.add_messages(
                stream_id, sender, event_type, local, key, self._clock.time_msec()
            )
        if delivered is None:
            logger.info("m.direct_to_device %s from %s: already received", message_id, origin)
            return
        if delivered:
            await self._bus.publish(StreamUpdate.of("to_device", stream_id, wake=delivered))
        logger.debug(
            "to-device %s from %s (%s): %d local users", event_type, sender, origin,
            len(delivered),
        )

    # ----- for sync --------------------------------------------------------------------------

    async def get_for_sync(
        self,
        user_id: str,
        device_id: str,
        since: int,
        up_to: int,
        limit: int = DEFAULT_SYNC_LIMIT,
        acknowledged: int | None = None,
    ) -> tuple[list[JsonDict], int]:
        """The device's to-device events after `since` up to `up_to`, oldest first, and the
        to-device position for `next_batch`.

        Messages at or before `acknowledged` (by default `since`) are deleted first: a sync
        token that far means the client received them. A WebSocket pushes from a position
        the client has not confirmed yet, so it passes what the client last confirmed. At
        most `limit` events are returned; then the position is that of the last one
        returned, so the rest come with the next sync. Otherwise it is `up_to`.
        """
        if since > up_to:
            # A token from beyond this stream (a restored database): it acknowledges
            # nothing that is here, so everything is sent again.
            since = 0
        if acknowledged is None or acknowledged > since:
            acknowledged = since
        limit = max(limit, 1)
        rows = await self._store.take_messages(
            user_id, device_id, acknowledged, up_to, limit, after=since
        )
        if len(rows) > limit:
            rows = rows[:limit]
            return [row.event for row in rows], rows[-1].stream_id
        return [row.event for row in rows], up_to

    async def prune(self) -> None:
        """Forget transaction and message IDs no sender will retry (periodic cleanup)."""
        await self._store.prune(self._clock.time_msec() - KEY_MEMORY_MS)
