"""What server-side search indexes of an event (client-server API "Server Side Search",
`room_events`): pure, so the persister, the migration's rules and the tests agree.

- `content.body` of `m.room.message`;
- `content.name` of `m.room.name`;
- `content.topic` of `m.room.topic`, and the `body` of each `text/plain` representation in
  its `m.topic` (extensible topics).

Anything else, `m.room.encrypted` included (it has no plaintext), is not indexed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeserver.events.model import Event
from homeserver.events.types import MESSAGE, NAME, TOPIC

BODY = "content.body"
NAME_KEY = "content.name"
TOPIC_KEY = "content.topic"
SEARCH_KEYS = (BODY, NAME_KEY, TOPIC_KEY)
# The event type each key is read from.
TYPE_OF_KEY = {BODY: MESSAGE, NAME_KEY: NAME, TOPIC_KEY: TOPIC}


def _string(content: Mapping[str, Any], key: str) -> str | None:
    value = content.get(key)
    return value if isinstance(value, str) and value.strip() else None


def _plain_topic_bodies(content: Mapping[str, Any]) -> list[str]:
    representations = content.get("m.topic")
    if isinstance(representations, dict):
        # Extensible topics: {"m.text": [{"mimetype": ..., "body": ...}, ...]}
        representations = representations.get("m.text")
    if not isinstance(representations, list):
        return []
    bodies: list[str] = []
    for item in representations:
        if not isinstance(item, dict):
            continue
        mimetype = item.get("mimetype", "text/plain")
        body = item.get("body")
        if mimetype == "text/plain" and isinstance(body, str) and body.strip():
            bodies.append(body)
    return bodies


def searchable_text(event: Event) -> tuple[str, str] | None:
    """(key, text) to index for the event, or None when it has nothing searchable. NUL
    characters become spaces: PostgreSQL text cannot hold them and no word contains one."""
    content = event.content
    found: str | None = None
    key: str
    if event.type == MESSAGE and not event.is_state:
        key, found = BODY, _string(content, "body")
    elif event.type == NAME and event.state_key == "":
        key, found = NAME_KEY, _string(content, "name")
    elif event.type == TOPIC and event.state_key == "":
        parts = [p for p in [_string(content, "topic"), *_plain_topic_bodies(content)] if p]
        key, found = TOPIC_KEY, "\n".join(dict.fromkeys(parts)) or None
    else:
        return None
    if found is None:
        return None
    return key, found.replace("\x00", " ")
