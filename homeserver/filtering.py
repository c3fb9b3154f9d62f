"""Filters (client-server API "Filtering"): what a client asks to see, parsed and validated.

The model mirrors the spec's JSON:

- `Filter` (POST /user/{userId}/filter, /sync `filter`): `event_fields`, `event_format`,
  `presence` and `account_data` (`EventFilter`), `room` (`RoomFilter`).
- `RoomFilter`: `rooms`/`not_rooms` (which rooms at all), `include_leave`, and one
  `RoomEventFilter` for each of `timeline`, `state`, `ephemeral`, `account_data`.
- `EventFilter`: `limit`, `types`/`not_types` (`*` wildcards), `senders`/`not_senders`.
- `RoomEventFilter`: an `EventFilter` plus `rooms`/`not_rooms`, `contains_url`,
  `lazy_load_members`, `include_redundant_members`, `unread_thread_notifications`.

Every part has a default that lets everything through, so code never checks for None:
`Filter.default().room.timeline.allows(event)` is True for every event.

Using a filter (e.g. in /sync):

    flt = await hs.filtering.resolve_filter(user_id, query_string(request, "filter"))
    if not flt.room.allows_room(room_id): ...               # room.rooms / room.not_rooms
    timeline = flt.room.timeline.filter_events(events)      # events: Event/StoredEvent/dict
    limit = flt.room.timeline.limit_or(10)
    flt.lazy_load_members                                   # room.state.lazy_load_members
    body = flt.format_event(client_event, pdu)              # event_format + event_fields

`allows` / `filter_events` accept `Event`, `StoredEvent` or a JSON dict (EDUs, account data:
whatever has `type` and optionally `sender`, `room_id`, `content`); `matches(...)` takes
the fields directly (e.g. presence: `matches("m.presence", sender=user_id)`).

Malformed filters raise `MatrixError(400, M_BAD_JSON)` by default (a request body); pass
`errcode=Codes.INVALID_PARAM` when the filter came in a query parameter.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

from homeserver.caches import LruCache
from homeserver.errors import Codes, MatrixError
from homeserver.events.canonical import encode_canonical_json, load_json
from homeserver.events.model import Event

if TYPE_CHECKING:
    from storage.stores.events import StoredEvent
    from storage.stores.filters import FilterStore

T = TypeVar("T")

EVENT_FORMATS = ("client", "federation")
# Parsed filters kept in memory by (user, filter ID): /sync long-polls send the same ID on
# every request, and stored filters never change.
FILTER_CACHE_SIZE = 2000
# Parsed filters by definition: every client of the same app sends the same filter, and a
# `Filter` is immutable, so each held subscription (thousands of WebSockets) shares one
# instead of holding a parse of its own, about 3 KiB.
SHARED_FILTERS_SIZE = 1000


class _Invalid(Exception):
    """A validation failure: where in the filter, and what is wrong."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")


# ----- JSON field readers (null counts as absent: several clients send explicit nulls) -------


def _object(raw: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Invalid(f"{path}.{key}", "must be an object")
    return value


def _bool(raw: Mapping[str, Any], key: str, path: str) -> bool | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _Invalid(f"{path}.{key}", "must be a boolean")
    return value


def _string_list(
    raw: Mapping[str, Any], key: str, path: str, prefix: str | None = None
) -> tuple[str, ...] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise _Invalid(f"{path}.{key}", "must be an array of strings")
    for item in value:
        if not isinstance(item, str):
            raise _Invalid(f"{path}.{key}", "must be an array of strings")
        if prefix is not None and not item.startswith(prefix):
            raise _Invalid(f"{path}.{key}", f"entries must start with {prefix!r}")
    return tuple(value)


def _limit(raw: Mapping[str, Any], path: str) -> int | None:
    value = raw.get("limit")
    if value is None:
        return None
    # bool is an int subclass in Python, but `true` is not a number in JSON.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"{path}.limit", "must be an integer")
    # The spec says "greater than 0"; 0 is accepted because clients send it to ask for no
    # events at all (e.g. a /sync timeline limit of 0), and refusing it breaks them.
    if value < 0:
        raise _Invalid(f"{path}.limit", "must not be negative")
    return value


# ----- matching ------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _wildcard(pattern: str) -> re.Pattern[str]:
    """`*` matches any sequence of characters; everything else is literal."""
    parts = re.split(r"(\*)", pattern)
    regex = "".join(".*" if part == "*" else re.escape(part) for part in parts)
    return re.compile(regex + r"\Z", re.DOTALL)


def _allowed_by_lists(
    value: str | None, included: Collection[str] | None, excluded: Collection[str]
) -> bool:
    """The spec's inclusion/exclusion lists (senders, rooms): exclusion wins; no inclusion
    list means everything not excluded."""
    if value is not None and value in excluded:
        return False
    return included is None or value in included


def type_matches(event_type: str | None, pattern: str) -> bool:
    if event_type is None:
        return False
    if "*" not in pattern:
        return event_type == pattern
    return _wildcard(pattern).match(event_type) is not None


def _event_fields(
    event: Event | StoredEvent | Mapping[str, Any],
) -> tuple[str | None, str | None, str | None, Mapping[str, Any]]:
    """(type, sender, room_id, content) of an event in any of the shapes we filter."""
    if isinstance(event, Event):
        return event.type, event.sender, event.room_id, event.content
    if isinstance(event, Mapping):
        content = event.get("content")
        if not isinstance(content, Mapping):
            # Account data may have non-object content; treat it as empty.
            content = {}
        sender = event.get("sender")
        event_type = event.get("type")
        room_id = event.get("room_id")
        return (
            event_type if isinstance(event_type, str) else None,
            sender if isinstance(sender, str) else None,
            room_id if isinstance(room_id, str) else None,
            content,
        )
    inner = event.event  # StoredEvent
    return inner.type, inner.sender, inner.room_id, inner.content


@dataclass(frozen=True)
class EventFilter:
    """Spec `EventFilter`. `None` for an inclusion list means "not given": allow all."""

    limit: int | None = None
    types: tuple[str, ...] | None = None
    not_types: tuple[str, ...] = ()
    senders: frozenset[str] | None = None
    not_senders: frozenset[str] = frozenset()

    @classmethod
    def from_json(
        cls, raw: Mapping[str, Any] | None, errcode: str = Codes.BAD_JSON
    ) -> EventFilter:
        """Parse a client's EventFilter JSON; 400 `errcode` if malformed."""
        return _parse(lambda: cls._parse(raw or {}, "filter"), errcode)

    @classmethod
    def _parse(cls, raw: Mapping[str, Any], path: str) -> EventFilter:
        return cls(**_event_filter_kwargs(raw, path))

    def limit_or(self, default: int, maximum: int | None = None) -> int:
        """The filter's `limit`, or `default` when it has none, capped at `maximum`."""
        limit = default if self.limit is None else self.limit
        return min(limit, maximum) if maximum is not None else limit

    def _type_allowed(self, event_type: str | None) -> bool:
        if any(type_matches(event_type, p) for p in self.not_types):
            return False
        return self.types is None or any(type_matches(event_type, p) for p in self.types)

    def _sender_allowed(self, sender: str | None) -> bool:
        return _allowed_by_lists(sender, self.senders, self.not_senders)

    def matches(
        self,
        event_type: str | None,
        sender: str | None = None,
        room_id: str | None = None,
        content: Mapping[str, Any] | None = None,
    ) -> bool:
        """Whether an event with these fields passes. `not_*` lists win over inclusion lists."""
        return self._type_allowed(event_type) and self._sender_allowed(sender)

    def allows(self, event: Event | StoredEvent | Mapping[str, Any]) -> bool:
        event_type, sender, room_id, content = _event_fields(event)
        return self.matches(event_type, sender, room_id, content)

    def allows_all(self) -> bool:
        """Whether every event passes (no list or condition given): what most clients'
        filters are, and then nothing need be looked at per event."""
        return self.types is None and not self.not_types and self.senders is None and not (
            self.not_senders
        )

    def filter_events(self, events: Iterable[T]) -> list[T]:
        """The events that pass, in order (Event, StoredEvent or JSON dicts)."""
        if self.allows_all():
            return list(events)
        return [e for e in events if self.allows(e)]  # type: ignore[arg-type]


def _event_filter_kwargs(raw: Mapping[str, Any], path: str) -> dict[str, Any]:
    senders = _string_list(raw, "senders", path, "@")
    return {
        "limit": _limit(raw, path),
        "types": _string_list(raw, "types", path),
        "not_types": _string_list(raw, "not_types", path) or (),
        "senders": frozenset(senders) if senders is not None else None,
        "not_senders": frozenset(_string_list(raw, "not_senders", path, "@") or ()),
    }


@dataclass(frozen=True)
class RoomEventFilter(EventFilter):
    """Spec `RoomEventFilter`: what /messages, /context and each part of /sync rooms take."""

    rooms: frozenset[str] | None = None
    not_rooms: frozenset[str] = frozenset()
    # True: only events whose content has a string `url`; False: only those without; None: any.
    contains_url: bool | None = None
    lazy_load_members: bool = False
    include_redundant_members: bool = False
    unread_thread_notifications: bool = False

    @classmethod
    def from_json(
        cls, raw: Mapping[str, Any] | None, errcode: str = Codes.BAD_JSON
    ) -> RoomEventFilter:
        return _parse(lambda: cls._parse(raw or {}, "filter"), errcode)

    @classmethod
    def _parse(cls, raw: Mapping[str, Any], path: str) -> RoomEventFilter:
        rooms = _string_list(raw, "rooms", path, "!")
        return cls(
            **_event_filter_kwargs(raw, path),
            rooms=frozenset(rooms) if rooms is not None else None,
            not_rooms=frozenset(_string_list(raw, "not_rooms", path, "!") or ()),
            contains_url=_bool(raw, "contains_url", path),
            lazy_load_members=bool(_bool(raw, "lazy_load_members", path)),
            include_redundant_members=bool(_bool(raw, "include_redundant_members", path)),
            unread_thread_notifications=bool(_bool(raw, "unread_thread_notifications", path)),
        )

    def allows_room(self, room_id: str | None) -> bool:
        return _allowed_by_lists(room_id, self.rooms, self.not_rooms)

    def allows_all(self) -> bool:
        return (
            super().allows_all()
            and self.rooms is None
            and not self.not_rooms
            and self.contains_url is None
        )

    def matches(
        self,
        event_type: str | None,
        sender: str | None = None,
        room_id: str | None = None,
        content: Mapping[str, Any] | None = None,
    ) -> bool:
        if not super().matches(event_type, sender, room_id, content):
            return False
        if not self.allows_room(room_id):
            return False
        if self.contains_url is not None:
            has_url = isinstance((content or {}).get("url"), str)
            if has_url != self.contains_url:
                return False
        return True


@dataclass(frozen=True)
class RoomFilter:
    """Spec `RoomFilter`: which rooms /sync reports, and a filter per section of each room."""

    rooms: frozenset[str] | None = None
    not_rooms: frozenset[str] = frozenset()
    include_leave: bool = False
    timeline: RoomEventFilter = field(default_factory=RoomEventFilter)
    state: RoomEventFilter = field(default_factory=RoomEventFilter)
    ephemeral: RoomEventFilter = field(default_factory=RoomEventFilter)
    account_data: RoomEventFilter = field(default_factory=RoomEventFilter)

    @classmethod
    def _parse(cls, raw: Mapping[str, Any], path: str) -> RoomFilter:
        rooms = _string_list(raw, "rooms", path, "!")

        def section(name: str) -> RoomEventFilter:
            return RoomEventFilter._parse(_object(raw, name, path) or {}, f"{path}.{name}")

        return cls(
            rooms=frozenset(rooms) if rooms is not None else None,
            not_rooms=frozenset(_string_list(raw, "not_rooms", path, "!") or ()),
            include_leave=bool(_bool(raw, "include_leave", path)),
            timeline=section("timeline"),
            state=section("state"),
            ephemeral=section("ephemeral"),
            account_data=section("account_data"),
        )

    def allows_room(self, room_id: str) -> bool:
        """`room.rooms`/`room.not_rooms`: applied before the per-section filters."""
        return _allowed_by_lists(room_id, self.rooms, self.not_rooms)


@dataclass(frozen=True)
class Filter:
    """Spec `Filter`, the whole thing a client uploads or passes inline to /sync."""

    event_fields: tuple[str, ...] | None = None
    event_format: str = "client"
    presence: EventFilter = field(default_factory=EventFilter)
    account_data: EventFilter = field(default_factory=EventFilter)
    room: RoomFilter = field(default_factory=RoomFilter)

    def __hash__(self) -> int:
        # Sync keys its shared room sections by filter, for every woken listener: hashing
        # the nested dataclasses each time costs more than the lookup, so it is done once.
        try:
            return self.__dict__["_hash"]  # type: ignore[no-any-return]
        except KeyError:
            value = hash((self.event_fields, self.event_format, self.presence,
                          self.account_data, self.room))
            object.__setattr__(self, "_hash", value)
            return value

    @classmethod
    def default(cls) -> Filter:
        return _DEFAULT_FILTER

    @classmethod
    def from_json(cls, raw: Any, errcode: str = Codes.BAD_JSON) -> Filter:
        """Parse and validate a client's filter JSON; 400 `errcode` if malformed."""

        def parse() -> Filter:
            if not isinstance(raw, dict):
                raise _Invalid("filter", "must be an object")
            return cls._parse(raw, "filter")

        return _parse(parse, errcode)

    @classmethod
    def _parse(cls, raw: Mapping[str, Any], path: str) -> Filter:
        event_format = raw.get("event_format")
        if event_format is None:
            event_format = "client"
        if event_format not in EVENT_FORMATS:
            raise _Invalid(f"{path}.event_format", "must be 'client' or 'federation'")
        return cls(
            event_fields=_string_list(raw, "event_fields", path),
            event_format=event_format,
            presence=EventFilter._parse(_object(raw, "presence", path) or {}, f"{path}.presence"),
            account_data=EventFilter._parse(
                _object(raw, "account_data", path) or {}, f"{path}.account_data"
            ),
            room=RoomFilter._parse(_object(raw, "room", path) or {}, f"{path}.room"),
        )

    @property
    def lazy_load_members(self) -> bool:
        """Lazy-loading for /sync is switched on in the `room.state` filter (as Synapse and
        matrix-js-sdk do)."""
        return self.room.state.lazy_load_members

    @property
    def include_redundant_members(self) -> bool:
        return self.room.state.include_redundant_members

    def format_event(
        self, client_event: dict[str, Any], pdu: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Apply `event_format` and `event_fields` to one serialized event.

        `pdu` is the federation form (used for `event_format: federation`; pass the pruned
        PDU for a redacted event). Without it the client form is kept.
        """
        result = dict(pdu) if self.event_format == "federation" and pdu is not None else client_event
        if self.event_fields is not None:
            result = only_fields(result, self.event_fields)
        return result


_DEFAULT_FILTER = Filter()


def _parse(parse: Any, errcode: str) -> Any:
    try:
        return parse()
    except _Invalid as e:
        raise MatrixError(400, errcode, f"Invalid filter: {e}") from None


# ----- event_fields ------------------------------------------------------------------------


def split_field_path(path: str) -> list[str]:
    """Split a dot-separated property path, honouring `\\.` and `\\\\` escapes (appendices:
    "Dot-separated property paths"); any other backslash is literal."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(path):
        char = path[i]
        if char == "\\" and i + 1 < len(path) and path[i + 1] in ".\\":
            current.append(path[i + 1])
            i += 2
            continue
        if char == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def only_fields(event: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """A copy of `event` holding only the listed dot-separated paths (those that exist)."""
    result: dict[str, Any] = {}
    for path in fields:
        keys = split_field_path(path)
        source: Any = event
        for key in keys:
            if not isinstance(source, Mapping) or key not in source:
                break
            source = source[key]
        else:
            target = result
            for key in keys[:-1]:
                existing = target.get(key)
                if not isinstance(existing, dict):
                    existing = target[key] = {}
                target = existing
            target[keys[-1]] = source
    return result


# ----- stored filters and the `filter` query parameter -------------------------------------


class Filtering:
    """Users' stored filters, and resolving a `filter` query parameter (ID or inline JSON)."""

    def __init__(self, store: FilterStore) -> None:
        self._store = store
        # (user_id, filter ID) -> the parsed filter; stored filters never change.
        self._cache: LruCache[tuple[str, str], Filter] = LruCache("filters", FILTER_CACHE_SIZE)
        # The definition as canonical JSON -> the one parsed filter given for it.
        self._shared: LruCache[bytes, Filter] = LruCache(
            "filters_by_definition", SHARED_FILTERS_SIZE
        )
        # An inline filter's text, as given -> the filter it parses to.
        self._inline: LruCache[str, Filter] = LruCache("filters_inline", SHARED_FILTERS_SIZE)

    def parse(self, raw: Any, errcode: str = Codes.BAD_JSON) -> Filter:
        """`Filter.from_json` of decoded JSON, giving the same `Filter` for the same
        definition."""
        key = encode_canonical_json(raw)
        shared = self._shared.get(key)
        if shared is None:
            shared = Filter.from_json(raw, errcode)
            self._shared.set(key, shared)
        return shared

    async def create_filter(self, user_id: str, raw: Any) -> str:
        """Validate (400 M_BAD_JSON) and store a filter; returns its ID. Uploading the same
        filter again returns the same ID."""
        Filter.from_json(raw)
        return str(await self._store.add_filter(user_id, raw))

    async def get_filter_json(self, user_id: str, filter_id: str) -> dict[str, Any]:
        """The JSON the user uploaded; 404 M_NOT_FOUND if there is no such filter."""
        raw = None
        if filter_id.isascii() and filter_id.isdigit() and len(filter_id) <= 18:
            raw = await self._store.get_filter(user_id, int(filter_id))
        if raw is None:
            raise MatrixError(404, Codes.NOT_FOUND, "No such filter")
        return raw

    async def get_filter(self, user_id: str, filter_id: str) -> Filter:
        """A stored filter, parsed; 404 M_NOT_FOUND if unknown."""
        key = (user_id, filter_id)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        parsed = self.parse(await self.get_filter_json(user_id, filter_id))
        self._cache.set(key, parsed)
        return parsed

    async def resolve_filter(self, user_id: str, param: str | None) -> Filter:
        """The `filter` query parameter of /sync: a filter ID, or a Filter as inline JSON
        (anything starting with `{`). None gives the default filter.

        Malformed inline JSON, or an ID the user never uploaded: 400 M_INVALID_PARAM.
        """
        if param is None or param == "":
            return Filter.default()
        if param.startswith("{"):
            # A client long-polling sends the same text again and again: parsed once.
            inline = self._inline.get(param)
            if inline is None:
                inline = self.parse(_decode_inline(param), errcode=Codes.INVALID_PARAM)
                self._inline.set(param, inline)
            return inline
        try:
            return await self.get_filter(user_id, param)
        except MatrixError as e:
            if e.errcode != Codes.NOT_FOUND:
                raise
            raise MatrixError(400, Codes.INVALID_PARAM, f"Unknown filter ID {param[:50]!r}") from None

    async def resolve_room_event_filter(self, user_id: str, param: str | None) -> RoomEventFilter:
        """The `filter` query parameter of /messages and /context: a RoomEventFilter as
        inline JSON, or the ID of a stored filter (whose `room.timeline` part is used).

        400 M_INVALID_PARAM when malformed or unknown.
        """
        if param is None or param == "":
            return RoomEventFilter()
        if param.startswith("{"):
            return RoomEventFilter.from_json(_decode_inline(param), errcode=Codes.INVALID_PARAM)
        return (await self.resolve_filter(user_id, param)).room.timeline


def _decode_inline(param: str) -> dict[str, Any]:
    try:
        raw = load_json(param)
    except ValueError:
        raise MatrixError(400, Codes.INVALID_PARAM, "filter is not valid JSON") from None
    if not isinstance(raw, dict):
        raise MatrixError(400, Codes.INVALID_PARAM, "filter must be a JSON object")
    return raw
