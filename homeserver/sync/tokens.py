"""Sync tokens and pagination tokens, as strings clients hold.

A sync token (`next_batch`, `since`) is the tuple of positions in every stream a client
syncs on, in the order the streams are declared (`homeserver/streams/declarations.py`):
today `s{events}_{receipts}_{typing}_{account_data}_{presence}_{to_device}_{device_lists}`.
A new stream is declared last, so older tokens, which have fewer parts, parse with 0 for
the rest. The events stream always comes first (pagination tokens rely on it).

A pagination token (`prev_batch`, `/messages` `from`/`to`/`start`/`end`) is a position in one
room's history: `t{topological}-{stream}` means "just after the event at (depth, stream)".
A sync token is also accepted where a pagination token is expected (the spec allows
`next_batch` as `/messages` `from`): it means "after everything up to that stream position".
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from homeserver.errors import Codes, MatrixError
from homeserver.streams.declarations import SYNC_STREAM_NAMES

# Positions are BIGINT columns: anything larger cannot be one of ours (and would overflow SQL).
MAX_POSITION = 2**63 - 1
_ROOM_TOKEN = re.compile(r"t(-?[0-9]{1,19})-(-?[0-9]{1,19})")
# The events position of any sync token, whatever its streams (for pagination).
_ANY_SYNC_TOKEN = re.compile(r"s([0-9]{1,19})(?:_[0-9]{1,19}){0,63}")


@lru_cache(maxsize=16)
def _sync_token_pattern(parts: int) -> re.Pattern[str]:
    # ASCII digits only, and nothing after them (not even the newline `$` would let through).
    return re.compile(rf"s([0-9]{{1,19}}(?:_[0-9]{{1,19}}){{0,{parts - 1}}})")


@lru_cache(maxsize=16)
def _index_of(streams: tuple[str, ...]) -> dict[str, int]:
    # Shared by every token of these streams: never modified.
    return {stream: place for place, stream in enumerate(streams)}


def _invalid(kind: str, token: str) -> MatrixError:
    return MatrixError(400, Codes.INVALID_PARAM, f"Invalid {kind} token: {token[:100]!r}")


class StreamToken:
    """A position in each of `streams` (immutable). `token.events`, `token.receipts` and so on
    read one stream's position; `StreamToken(events=5)` builds a token of the sync streams.
    A registry with other streams makes its tokens with `StreamToken.of`."""

    __slots__ = ("_index", "_positions", "_streams")
    _streams: tuple[str, ...]
    _positions: tuple[int, ...]
    # Stream name -> its place in `_positions`: one dict shared by every token of the same
    # streams, not one per token (a WebSocket subscription holds its token while idle).
    _index: dict[str, int]

    def __init__(self, **positions: int) -> None:
        self._set(SYNC_STREAM_NAMES, positions)

    @classmethod
    def of(cls, streams: Sequence[str], positions: Mapping[str, int]) -> StreamToken:
        token = cls.__new__(cls)
        token._set(tuple(streams), positions)
        return token

    @classmethod
    def from_positions(cls, streams: tuple[str, ...], positions: tuple[int, ...]) -> StreamToken:
        """The token with `positions[i]` in `streams[i]`, one for each stream. Sync makes
        a few tokens per pass for every woken listener, so this skips `of`'s checks."""
        if len(positions) != len(streams):
            raise TypeError(f"{len(streams)} streams but {len(positions)} positions")
        token = cls.__new__(cls)
        object.__setattr__(token, "_streams", streams)
        object.__setattr__(token, "_positions", positions)
        object.__setattr__(token, "_index", _index_of(streams))
        return token

    def _set(self, streams: tuple[str, ...], positions: Mapping[str, int]) -> None:
        unknown = set(positions) - set(streams)
        if unknown:
            raise TypeError(f"not streams of this token: {sorted(unknown)}")
        object.__setattr__(self, "_streams", streams)
        object.__setattr__(self, "_positions", tuple(positions.get(s, 0) for s in streams))
        object.__setattr__(self, "_index", _index_of(streams))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("StreamToken is immutable")

    def __getattr__(self, stream: str) -> int:
        # Only called for names that are not slots or methods: a stream's position.
        try:
            return self.get(stream)
        except KeyError:
            raise AttributeError(stream) from None

    def get(self, stream: str) -> int:
        """The position in `stream`; KeyError if the token has no such stream."""
        return self._positions[self._index[stream]]

    @property
    def streams(self) -> tuple[str, ...]:
        return self._streams

    def items(self) -> Iterator[tuple[str, int]]:
        return zip(self._streams, self._positions, strict=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StreamToken):
            return NotImplemented
        return self._streams == other._streams and self._positions == other._positions

    def __hash__(self) -> int:
        return hash((self._streams, self._positions))

    def __repr__(self) -> str:
        inner = ", ".join(f"{s}={p}" for s, p in self.items())
        return f"StreamToken({inner})"

    def __str__(self) -> str:
        return "s" + "_".join(map(str, self._positions))

    @classmethod
    def parse(cls, token: str, streams: Sequence[str] = SYNC_STREAM_NAMES) -> StreamToken:
        """Parse a client-supplied token; 400 M_INVALID_PARAM if it is not one of ours."""
        match = _sync_token_pattern(len(streams)).fullmatch(token)
        if match is None:
            raise _invalid("sync", token)
        parts = [int(part) for part in match.group(1).split("_")]
        if any(part > MAX_POSITION for part in parts):
            raise _invalid("sync", token)
        streams = tuple(streams)
        return cls.from_positions(streams, (*parts, *(0,) * (len(streams) - len(parts))))

    def copy_and_replace(self, stream: str, position: int) -> StreamToken:
        index = self._index[stream]
        if self._positions[index] == position:
            return self
        positions = self._positions
        return StreamToken.from_positions(
            self._streams, (*positions[:index], position, *positions[index + 1 :])
        )


def _position_of(stream: str) -> property:
    def position(token: StreamToken) -> int:
        try:
            return token._positions[token._index[stream]]
        except KeyError:
            raise AttributeError(stream) from None

    return property(position, doc=f"The {stream} position.")


# The sync streams read as attributes directly (`token.events`), which sync does many times
# per pass; other registries' streams go through `__getattr__`.
for _stream in SYNC_STREAM_NAMES:
    setattr(StreamToken, _stream, _position_of(_stream))


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
        match = _ANY_SYNC_TOKEN.fullmatch(token)
        if match is not None and int(match.group(1)) <= MAX_POSITION:
            return cls(None, int(match.group(1)))
        raise _invalid("pagination", token)
