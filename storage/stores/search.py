"""The full-text index of server-side search (`storage/schema/0024_search.*.sql`).

One `event_search` row per indexed event (what is indexed: `homeserver.events.search`).
The words are indexed by each engine's own full-text machinery:

- SQLite: an FTS5 table (`event_search_fts`, Porter stemming over Unicode words) kept in step
  with `event_search` by triggers; ranked by BM25 (`bm25()`, lower is better, so the rank
  served is its negation).
- PostgreSQL: a generated `tsvector` column (English stemming and stop words) under a GIN
  index; ranked by cover density (`ts_rank_cd`).

Both match every word of the query (AND). The query reaches the engine as plain words only
(`homeserver.search.query.search_words`): FTS5 gets each one quoted, PostgreSQL gets them
through `plainto_tsquery`, so no search term is ever query syntax.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.events.model import Event
from homeserver.events.search import searchable_text
from storage.database import Database, Transaction
from storage.stores.events import redaction_held_txn

RANK = "rank"
RECENT = "recent"


INSERT_SEARCH_SQL = (
    "INSERT INTO event_search (event_id, room_id, sender, type, key, value,"
    " topological_ordering, stream_ordering, origin_server_ts)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING"
)


def index_event_txn(txn: Transaction, event: Event, stream_ordering: int) -> None:
    """Index the event's searchable text, if it has any, unless a redaction of it in its
    room is already held (federation can deliver a redaction before its target)."""
    found = searchable_text(event)
    if found is None:
        return
    if redaction_held_txn(txn, event):
        return
    key, value = found
    txn.execute(
        INSERT_SEARCH_SQL,
        (
            event.event_id,
            event.room_id,
            event.sender,
            event.type,
            key,
            value,
            event.depth,
            stream_ordering,
            event.origin_server_ts,
        ),
    )


def search_rows(events: Iterable[tuple[Event, int]]) -> list[tuple[Any, ...]]:
    """Rows for `INSERT_SEARCH_SQL` of those of (event, stream position) with searchable
    text (the caller leaves out events whose redaction is held, as `index_event_txn`)."""
    rows = []
    for event, stream_ordering in events:
        found = searchable_text(event)
        if found is not None:
            rows.append((event.event_id, event.room_id, event.sender, event.type, found[0],
                         found[1], event.depth, stream_ordering, event.origin_server_ts))
    return rows


def forget_redacted_search_txn(txn: Transaction, redacted_id: str, room_id: str) -> None:
    """A redacted event's text is gone: it is found no more (a redaction only ever applies
    within its own room)."""
    txn.execute(
        "DELETE FROM event_search WHERE event_id = ? AND room_id = ?", (redacted_id, room_id)
    )


@dataclass(frozen=True)
class SearchScope:
    """Which index rows a search may return."""

    # room_id -> the highest stream position readable in it (a user who left reads up to
    # their leave), None for no limit.
    rooms: Mapping[str, int | None]
    # Of `homeserver.events.search.SEARCH_KEYS`.
    keys: Collection[str]
    senders: Collection[str] | None = None
    not_senders: Collection[str] = ()


@dataclass(frozen=True)
class SearchHit:
    event_id: str
    room_id: str
    stream_ordering: int
    # Higher is more relevant; comparable only within one engine.
    rank: float
    value: str


class SearchStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def search(
        self,
        scope: SearchScope,
        words: Sequence[str],
        order_by: str,
        limit: int,
        before_stream: int | None = None,
        offset: int = 0,
    ) -> list[SearchHit]:
        """Up to `limit` rows matching every word, in `order_by` order: `rank` (best first,
        skipping `offset` rows) or `recent` (newest first, below `before_stream`)."""

        def txn_fn(txn: Transaction) -> list[SearchHit]:
            match = _Match.of(txn, words)
            where, args = _scope_sql(scope)
            if order_by == RECENT and before_stream is not None:
                where += " AND s.stream_ordering < ?"
                args.append(before_stream)
            if order_by == RANK:
                order = f"{match.rank} DESC, s.stream_ordering DESC LIMIT ? OFFSET ?"
                args.extend((limit, offset))
            else:
                order = "s.stream_ordering DESC LIMIT ?"
                args.append(limit)
            rows = txn.select_all(
                f"SELECT s.event_id, s.room_id, s.stream_ordering, {match.rank}, s.value"
                f" FROM {match.source} WHERE {match.condition} AND {where} ORDER BY {order}",
                [*match.args, *args],
            )
            return [SearchHit(row[0], row[1], int(row[2]), float(row[3]), row[4]) for row in rows]

        if not scope.rooms or not scope.keys or not words:
            return []
        return await self._db.run_interaction("search_events", txn_fn)

    async def count(self, scope: SearchScope, words: Sequence[str]) -> int:
        """How many rows match (before visibility and filters other than rooms, keys and
        senders apply: the spec's "approximate count")."""

        def txn_fn(txn: Transaction) -> int:
            match = _Match.of(txn, words)
            where, args = _scope_sql(scope)
            row = txn.select_one(
                f"SELECT COUNT(*) FROM {match.source} WHERE {match.condition} AND {where}",
                [*match.args, *args],
            )
            return int(row[0]) if row else 0

        if not scope.rooms or not scope.keys or not words:
            return 0
        return await self._db.run_interaction("count_search_events", txn_fn)


@dataclass(frozen=True)
class _Match:
    """The engine's part of a search query: where the rows come from (as `s`), how they
    match and how they rank."""

    source: str
    condition: str
    rank: str
    args: tuple[Any, ...]

    @classmethod
    def of(cls, txn: Transaction, words: Sequence[str]) -> _Match:
        if txn.engine.name == "postgresql":
            return cls(
                "event_search s, plainto_tsquery('english', ?) AS query",
                "s.vector @@ query",
                "ts_rank_cd(s.vector, query)",
                (" ".join(words),),
            )
        # Each word a quoted FTS5 string (implicit AND between them): nothing in a search
        # term can be read as FTS5 syntax.
        quoted = " ".join('"' + word.replace('"', '""') + '"' for word in words)
        return cls(
            "event_search_fts JOIN event_search s ON s.id = event_search_fts.rowid",
            "event_search_fts MATCH ?",
            "-bm25(event_search_fts)",
            (quoted,),
        )


def _scope_sql(scope: SearchScope) -> tuple[str, list[Any]]:
    """The WHERE conditions (after the match) for the scope's rooms, keys and senders."""
    unbounded = [room for room, limit in scope.rooms.items() if limit is None]
    bounded = [(room, limit) for room, limit in scope.rooms.items() if limit is not None]
    rooms: list[str] = []
    args: list[Any] = []
    if unbounded:
        rooms.append(f"s.room_id IN ({','.join('?' for _ in unbounded)})")
        args.extend(unbounded)
    for room, limit in bounded:
        rooms.append("(s.room_id = ? AND s.stream_ordering <= ?)")
        args.extend((room, limit))
    clauses = [f"({' OR '.join(rooms)})"]
    keys = list(scope.keys)
    clauses.append(f"s.key IN ({','.join('?' for _ in keys)})")
    args.extend(keys)
    if scope.senders is not None:
        senders = list(scope.senders)
        if not senders:
            clauses.append("1 = 0")
        else:
            clauses.append(f"s.sender IN ({','.join('?' for _ in senders)})")
            args.extend(senders)
    if scope.not_senders:
        not_senders = list(scope.not_senders)
        clauses.append(f"s.sender NOT IN ({','.join('?' for _ in not_senders)})")
        args.extend(not_senders)
    return " AND ".join(clauses), args
