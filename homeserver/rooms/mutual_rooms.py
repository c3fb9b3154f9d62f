"""The rooms two users are both joined to (spec v1.19: GET /_matrix/client/v1/mutual_rooms).

Answered from `SharedRooms` (the requester's joined rooms and each room's joined members, both
held in memory), in batches of room IDs in sorted order. A batch token is the last room ID
of the batch, as unpadded URL-safe base64 (room IDs of old room versions may hold any
character), cut to the spec's 255 characters for opaque tokens: the next batch starts after
it, whatever joined or left meanwhile. This is Synapse's scheme, so a client paginating
against either sees the same pages.
"""

from __future__ import annotations

import base64
import binascii
import re
from bisect import bisect_right
from typing import Any

from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import MAX_USER_ID_BYTES, split_user_id
from homeserver.rooms.shared_rooms import SharedRooms

MUTUAL_ROOMS_BATCH_SIZE = 100
MAX_TOKEN_LENGTH = 255
# The historical user ID grammar: any printable ASCII but the colon (spec appendices,
# "Historical User IDs"); what the spec calls non-compliant is refused.
_HISTORICAL_LOCALPART = re.compile(r"[\x21-\x39\x3b-\x7e]+")


def _room_id_after(token: str) -> str:
    """The room ID a batch token names; 400 M_INVALID_PARAM if it names none."""
    try:
        padded = token + "=" * (-len(token) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise MatrixError(400, Codes.INVALID_PARAM, "Malformed 'from' token") from None


def _token_after(room_id: str) -> str:
    encoded = base64.urlsafe_b64encode(room_id.encode("utf-8")).decode("ascii").rstrip("=")
    return encoded[:MAX_TOKEN_LENGTH]


class MutualRooms:
    def __init__(self, shared_rooms: SharedRooms) -> None:
        self._shared_rooms = shared_rooms

    async def mutual_rooms(
        self, requester: Requester, user_id: str, from_token: str | None
    ) -> dict[str, Any]:
        localpart, _ = split_user_id(user_id)
        if not _HISTORICAL_LOCALPART.fullmatch(localpart) or (
            len(user_id.encode("utf-8")) > MAX_USER_ID_BYTES
        ):
            raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid user ID: {user_id[:300]!r}")
        if user_id == requester.user_id:
            raise MatrixError(
                400, Codes.INVALID_PARAM, "You cannot ask which rooms you share with yourself"
            )
        after = _room_id_after(from_token) if from_token else None
        rooms = sorted(await self._shared_rooms.joined_rooms_in_common(requester.user_id, user_id))
        count = len(rooms)
        if after is not None:
            rooms = rooms[bisect_right(rooms, after) :]
        body: dict[str, Any] = {"joined": rooms[:MUTUAL_ROOMS_BATCH_SIZE], "count": count}
        if len(rooms) > MUTUAL_ROOMS_BATCH_SIZE:
            next_batch = _token_after(rooms[MUTUAL_ROOMS_BATCH_SIZE - 1])
            # A token cut short can name the batch it came from (hundreds of room IDs sharing
            # a 190-character prefix): end there rather than return the same batch forever.
            if next_batch != from_token:
                body["next_batch"] = next_batch
        return body
