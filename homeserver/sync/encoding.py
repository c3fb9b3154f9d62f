"""Sync responses as JSON text, with the shared part of a joined room encoded once.

One commit wakes every listener of its room, and each is sent the same room section (see
`_SharedRoomSection` in `handler.py`) inside a response of its own. Encoding that section
again for every listener was the largest single cost of a push; `SharedJoinedRoom` carries
its text, computed by the first listener that needs it, and `dumps_sync` splices it into
each response. The result is byte for byte what `json.dumps` gives for the same response.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# Stands in for a shared room while the rest of a response is encoded, then is replaced by
# the room's text. Secret and random, so that no string a user sends can be taken for it.
_PLACEHOLDER = "heddle-shared-room-" + secrets.token_hex(16) + "-"


class SharedPart:
    """Values shared by many viewers' room sections (never changed once made), and their
    JSON text (the object's members, without braces), encoded on first use."""

    __slots__ = ("_text", "values")

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self._text: str | None = None

    def text(self) -> str:
        if self._text is None:
            self._text = _encode(self.values)[1:-1]
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
            return _encode(self)  # a shared value was replaced: encode what is there now
        own = _encode({key: value for key, value in self.items() if key not in shared})
        text = self.shared.text()
        if own == "{}":
            return "{" + text + "}"
        return "{" + text + ("," if text else "") + own[1:]


def dumps_sync(response: dict[str, Any]) -> str:
    """`json.dumps(response)` (compact, not ASCII-escaped), taking the shared rooms' text."""
    rooms = response.get("rooms")
    if not isinstance(rooms, dict):
        return _encode(response)
    joined = rooms.get("join")
    if not isinstance(joined, dict):
        return _encode(response)
    texts: dict[str, str] = {}
    placed: dict[str, Any] = {}
    for room_id, room in joined.items():
        if isinstance(room, SharedJoinedRoom):
            placeholder = f"{_PLACEHOLDER}{len(texts)}"
            texts[placeholder] = room.to_json()
            placed[room_id] = placeholder
        else:
            placed[room_id] = room
    if not texts:
        return _encode(response)
    text = _encode({**response, "rooms": {**rooms, "join": placed}})
    for placeholder, room_text in texts.items():
        text = text.replace(f'"{placeholder}"', room_text, 1)
    return text
