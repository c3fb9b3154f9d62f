"""Sync tokens and pagination tokens, as strings clients hold.

A sync token (`next_batch`, `since`) is the tuple of positions in every stream a client
syncs on: `s{events}_{receipts}_{typing}_{account_data}_{presence}_{to_device}_{device_lists}`.
Streams that do not exist yet are 0. Older tokens with fewer parts parse with 0 for the rest.

A pagination token (`prev_batch`, `/messages` `from`/`to`/`start`/`end`) is a position in one
room's history: `t{topological}-{stream}` means "just after the event at (depth, stream)".
A sync token is also accepted where a pagination token is expected (the spec allows
`next_batch` as `/messages` `from`): it means "after everything up to that stream position".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

from homeserver.errors import Codes, MatrixError

# Positions are BIGINT columns: anything larger cannot be one of ours (and would overflow SQL).
MAX_POSITION = 2**63 - 1
# ASCII digits only, and nothing after them (not even the newline `$` would let through).
_SYNC_TOKEN = re.compile(r"s([0-9]{1,19}(?:_[0-9]{1,19}){0,6})")
_ROOM_TOKEN = re.compile(r"t(-?[0-9]{1,19})-(-?[0-9]{1,19})")


def _invalid(kind: str, token: str) -> MatrixError:
    return MatrixError(400, Codes.INVALID_PARAM, f"Invalid {kind} token: {token[:100]!r}")


@dataclass(frozen=True)
class StreamToken:
    events: int = 0
    receipts: int = 0
    typing: int = 0
    account_data: int = 0
    presence: int = 0
    to_device: int = 0
    device_lists: int = 0

    def __str__(self) -> str:
        return "s" + "_".join(str(getattr(self, f.name)) for f in fields(self))

    @classmethod
    def parse(cls, token: str) -> StreamToken:
        """Parse a client-supplied token; 400 M_INVALID_PARAM if it is not one of ours."""
        match = _SYNC_TOKEN.fullmatch(token)
        if match is None:
            raise _invalid("sync", token)
        parts = [int(part) for part in match.group(1).split("_")]
        if any(part > MAX_POSITION for part in parts):
            raise _invalid("sync", token)
        return cls(*parts)

    def copy_and_replace(self, stream: str, position: int) -> StreamToken:
        return replace(self, **{stream: position})


@dataclass(frozen=True)
class RoomPosition:
    """A position in a room's history (between events), for pagination."""

    topological: int | None
    stream: int

    def __str__(self) -> str:
        if self.topological is None:
            return str(StreamToken(events=self.stream))
        return f"t{self.topological}-{self.stream}"

    @classmethod
    def parse(cls, token: str) -> RoomPosition:
        match = _ROOM_TOKEN.fullmatch(token)
        if match is not None:
            topological, stream = int(match.group(1)), int(match.group(2))
            if abs(topological) > MAX_POSITION or abs(stream) > MAX_POSITION:
                raise _invalid("pagination", token)
            return cls(topological, stream)
        if token.startswith("s"):
            return cls(None, StreamToken.parse(token).events)
        raise _invalid("pagination", token)
