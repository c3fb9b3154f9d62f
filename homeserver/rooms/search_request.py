"""POST /search: the request body and the `next_batch` token, parsed and validated (pure).

A malformed body is `400 M_BAD_JSON` (as for a filter in a body, `homeserver.filtering`);
a malformed `next_batch` query parameter is `400 M_INVALID_PARAM`. Unknown categories and
unknown search keys are refused rather than ignored: a client asking for something this
server does not search would otherwise get an empty answer that looks like "no results".
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from homeserver.errors import Codes, MatrixError
from homeserver.events.search import SEARCH_KEYS
from homeserver.filtering import RoomEventFilter
from homeserver.identifiers import check_room_id
from storage.stores.search import RANK, RECENT

ROOM_EVENTS = "room_events"
GROUP_KEYS = ("room_id", "sender")
# Results per page: the filter's `limit`, else this, never more than the maximum (each result
# may carry context, and every one is checked against history visibility).
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
DEFAULT_CONTEXT = 5
MAX_CONTEXT = 100
MAX_TERM_LENGTH = 1000
MAX_WORDS = 32
# A token this server made is a few dozen bytes; anything far longer is not one.
MAX_BATCH_LENGTH = 1024
# Stream positions are 64-bit.
_MAX_POSITION = 2**63 - 1

# A word: letters, digits and the joining marks of any script (what both engines' tokenizers
# split on, give or take `_`, which they treat as a separator and a quoted word keeps as one).
_WORD = re.compile(r"\w+")


def search_words(term: str) -> tuple[str, ...]:
    """The words of a search term, lower-cased, first occurrence first."""
    return tuple(dict.fromkeys(word.lower() for word in _WORD.findall(term)))


def highlight_words(words: tuple[str, ...], texts: list[str]) -> list[str]:
    """Words to highlight: the query's, and each word of the results' text that a query word
    begins (or that begins one): stemming finds "meetings" for "meeting", and the client
    should mark what it found."""
    found: dict[str, None] = dict.fromkeys(words)
    for text in texts:
        for word in _WORD.findall(text):
            lowered = word.lower()
            if lowered in found:
                continue
            if any(
                len(lowered) >= 3 and (lowered.startswith(q) or q.startswith(lowered))
                for q in words
            ):
                found[word] = None
    return list(found)


@dataclass(frozen=True)
class EventContextRequest:
    before_limit: int = DEFAULT_CONTEXT
    after_limit: int = DEFAULT_CONTEXT
    include_profile: bool = False


@dataclass(frozen=True)
class SearchRequest:
    """The `room_events` criteria of a search."""

    search_term: str
    words: tuple[str, ...]
    keys: tuple[str, ...]
    event_filter: RoomEventFilter
    order_by: str
    event_context: EventContextRequest | None
    include_state: bool
    group_by: tuple[str, ...]

    @property
    def limit(self) -> int:
        return self.event_filter.limit_or(DEFAULT_LIMIT, MAX_LIMIT)


def _bad(message: str) -> MatrixError:
    return MatrixError(400, Codes.BAD_JSON, message)


def _optional_object(raw: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{path}.{key} must be an object")
    return value


def _optional_bool(raw: Mapping[str, Any], key: str, path: str) -> bool:
    value = raw.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"{path}.{key} must be a boolean")
    return value


def _context_limit(raw: Mapping[str, Any], key: str) -> int:
    value = raw.get(key)
    if value is None:
        return DEFAULT_CONTEXT
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(f"event_context.{key} must be a non-negative integer")
    return min(value, MAX_CONTEXT)


def parse_search_body(body: Mapping[str, Any]) -> SearchRequest | None:
    """The body's `room_events` criteria; None when it asks for no category at all."""
    categories = body.get("search_categories")
    if not isinstance(categories, dict):
        raise _bad("search_categories must be an object")
    unknown = sorted(set(categories) - {ROOM_EVENTS})
    if unknown:
        raise _bad(f"Unknown search categories: {', '.join(unknown)}")
    raw = categories.get(ROOM_EVENTS)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _bad("search_categories.room_events must be an object")
    path = "room_events"

    term = raw.get("search_term")
    if not isinstance(term, str):
        raise _bad(f"{path}.search_term must be a string")
    if len(term) > MAX_TERM_LENGTH:
        raise _bad(f"{path}.search_term is longer than {MAX_TERM_LENGTH} characters")
    words = search_words(term)
    if not words:
        raise _bad(f"{path}.search_term has no word to search for")
    if len(words) > MAX_WORDS:
        raise _bad(f"{path}.search_term has more than {MAX_WORDS} words")

    keys_raw = raw.get("keys")
    if keys_raw is None:
        keys = SEARCH_KEYS
    else:
        if not isinstance(keys_raw, list) or not keys_raw:
            raise _bad(f"{path}.keys must be a non-empty array")
        for key in keys_raw:
            if key not in SEARCH_KEYS:
                raise _bad(f"{path}.keys: unknown key {key!r} (known: {', '.join(SEARCH_KEYS)})")
        keys = tuple(dict.fromkeys(keys_raw))

    filter_raw = raw.get("filter")
    if filter_raw is not None and not isinstance(filter_raw, dict):
        raise _bad(f"{path}.filter must be an object")
    event_filter = RoomEventFilter.from_json(filter_raw)

    order_by = raw.get("order_by")
    if order_by is None:
        order_by = RANK
    if order_by not in (RANK, RECENT):
        raise _bad(f"{path}.order_by must be {RANK!r} or {RECENT!r}")

    context: EventContextRequest | None = None
    if raw.get("event_context") is not None:
        context_raw = _optional_object(raw, "event_context", path)
        context = EventContextRequest(
            _context_limit(context_raw, "before_limit"),
            _context_limit(context_raw, "after_limit"),
            _optional_bool(context_raw, "include_profile", f"{path}.event_context"),
        )

    groupings = _optional_object(raw, "groupings", path)
    group_by_raw = groupings.get("group_by")
    group_by: list[str] = []
    if group_by_raw is not None:
        if not isinstance(group_by_raw, list):
            raise _bad(f"{path}.groupings.group_by must be an array")
        for group in group_by_raw:
            key = group.get("key") if isinstance(group, dict) else None
            if key not in GROUP_KEYS:
                raise _bad(f"{path}.groupings.group_by: each key must be 'room_id' or 'sender'")
            group_by.append(key)

    return SearchRequest(
        search_term=term,
        words=words,
        keys=keys,
        event_filter=event_filter,
        order_by=order_by,
        event_context=context,
        include_state=_optional_bool(raw, "include_state", path),
        group_by=tuple(dict.fromkeys(group_by)),
    )


# ----- next_batch --------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchBatch:
    """Where a page of results carries on: for `recent`, below a stream position; for `rank`,
    after that many rows in rank order. `room_id`: the page was a room group's."""

    order_by: str
    position: int
    room_id: str | None = None

    def encode(self) -> str:
        raw = f"{self.order_by}\n{self.position}\n{self.room_id or ''}".encode()
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    def in_room(self, room_id: str) -> SearchBatch:
        return SearchBatch(self.order_by, self.position, room_id)


def _invalid_batch() -> MatrixError:
    return MatrixError(400, Codes.INVALID_PARAM, "Invalid next_batch token")


def parse_batch(token: str, order_by: str) -> SearchBatch:
    """A `next_batch` this server made for a search ordered by `order_by`; 400 otherwise."""
    if len(token) > MAX_BATCH_LENGTH:
        raise _invalid_batch()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8")
    except (binascii.Error, ValueError):
        raise _invalid_batch() from None
    parts = raw.split("\n")
    if len(parts) != 3:
        raise _invalid_batch()
    order, position_text, room_id = parts
    if order != order_by:
        raise MatrixError(
            400, Codes.INVALID_PARAM, f"next_batch belongs to a search ordered by {order!r}"
        )
    if not re.fullmatch(r"-?[0-9]{1,19}", position_text):
        raise _invalid_batch()
    position = int(position_text)
    if abs(position) > _MAX_POSITION or (order == RANK and position < 0):
        raise _invalid_batch()
    if room_id:
        try:
            check_room_id(room_id)
        except MatrixError:
            raise _invalid_batch() from None
    return SearchBatch(order, position, room_id or None)
