"""Sync responses as JSON text, with the shared part of a joined room encoded once.

One commit wakes every listener of its room, and each is sent the same room section (see
`_SharedRoomSection` in `handler.py`) inside a response of its own. Encoding that section
again for every listener was the largest single cost of a push; `SharedJoinedRoom` carries
its text, computed by the first listener that needs it, and `dumps_sync` splices it into
each response. The result is byte for byte what `json.dumps` gives for the same response.
"""

from __future__ import annotations

import functools
import json
from typing import Any

_dumps = functools.partial(json.dumps, ensure_ascii=False, separators=(",", ":"))


class SharedPart:
    """Values shared by many viewers' room sections (never changed once made), and their
    JSON text (the object's members, without braces), encoded on first use."""

    __slots__ = ("_text", "values")

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self._text: str | None = None

    def text(self) -> str:
        if self._text is None:
            self._text = _dumps(self.values)[1:-1]
        return self._text


class SharedJoinedRoom(dict[str, Any]):
    """A viewer's joined-room section: the shared part's keys first, then the viewer's own
    (ephemeral, account data). A plain dict to every reader."""

    __slots__ = ("shared",)

    def __init__(self, shared: SharedPart, own: dict[str, Any]) -> None:
        super().__init__(shared.values)
        self.update(own)
        self.shared = shared

    def to_json(self) -> str:
        shared = self.shared.values
        if any(self.get(key) is not value for key, value in shared.items()):
            return _dumps(self)  # a shared value was replaced: encode what is there now
        own = ",".join(
            f"{_dumps(key)}:{_dumps(value)}" for key, value in self.items() if key not in shared
        )
        text = self.shared.text()
        if not own:
            return "{" + text + "}"
        return "{" + text + ("," if text else "") + own + "}"


def dumps_sync(response: dict[str, Any]) -> str:
    """`json.dumps(response)` (compact, not ASCII-escaped), taking the shared rooms' text."""
    rooms = response.get("rooms")
    if not isinstance(rooms, dict):
        return _dumps(response)
    joined = rooms.get("join")
    if not isinstance(joined, dict) or not any(
        isinstance(room, SharedJoinedRoom) for room in joined.values()
    ):
        return _dumps(response)
    return _object_text(
        response,
        {"rooms": lambda: _object_text(rooms, {"join": lambda: _rooms_text(joined)})},
    )


def _rooms_text(joined: dict[str, Any]) -> str:
    return "{" + ",".join(
        f"{_dumps(room_id)}:"
        + (room.to_json() if isinstance(room, SharedJoinedRoom) else _dumps(room))
        for room_id, room in joined.items()
    ) + "}"


def _object_text(value: dict[str, Any], special: dict[str, Any]) -> str:
    return "{" + ",".join(
        f"{_dumps(key)}:" + (special[key]() if key in special else _dumps(item))
        for key, item in value.items()
    ) + "}"
