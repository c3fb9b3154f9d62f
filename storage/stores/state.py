"""State groups (the state at every event) and the current state of rooms.

A state group is a full state map stored as a delta against a parent group. Chains are cut
at `MAX_CHAIN_LENGTH`: a group whose parent chain is that long is stored in full, so reading
any group touches at most that many groups.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Mapping

from storage.database import Database, Transaction

StateKey = tuple[str, str]
StateMap = Mapping[StateKey, str]

MAX_CHAIN_LENGTH = 50
GROUP_CACHE_SIZE = 2000
# Single (group, key) lookups cached by `get_state_for_groups`.
KEY_CACHE_SIZE = 100_000


def _load_group_txn(txn: Transaction, group: int) -> dict[StateKey, str]:
    """Resolve a group to its full state by walking its parents."""
    chain: list[int] = []
    current: int | None = group
    while current is not None:
        chain.append(current)
        row = txn.select_one("SELECT prev_group FROM state_groups WHERE id = ?", (current,))
        if row is None:
            raise KeyError(f"unknown state group {current}")
        current = row[0]
    state: dict[StateKey, str | None] = {}
    # Oldest first, so nearer deltas overwrite.
    for member in reversed(chain):
        for type_, state_key, event_id in txn.select_all(
            "SELECT type, state_key, event_id FROM state_group_entries WHERE state_group = ?",
            (member,),
        ):
            state[(type_, state_key)] = event_id
    return {k: v for k, v in state.items() if v is not None}


def _lookup_keys_txn(
    txn: Transaction, group: int, keys: list[StateKey]
) -> dict[StateKey, str | None]:
    """The event for each of `keys` in a group (None: not in its state), in one query that
    walks the group's delta chain; the nearest group in the chain that mentions a key wins."""
    conditions = " OR ".join("(e.type = ? AND e.state_key = ?)" for _ in keys)
    rows = txn.select_all(
        "WITH RECURSIVE chain(id, distance) AS ("
        " SELECT id, 0 FROM state_groups WHERE id = ?"
        " UNION ALL"
        " SELECT g.prev_group, c.distance + 1 FROM state_groups g JOIN chain c ON g.id = c.id"
        " WHERE g.prev_group IS NOT NULL)"
        " SELECT e.type, e.state_key, e.event_id, c.distance"
        " FROM state_group_entries e JOIN chain c ON e.state_group = c.id"
        f" WHERE {conditions}",
        [group, *(part for key in keys for part in key)],
    )
    nearest: dict[StateKey, tuple[int, str | None]] = {}
    for type_, state_key, event_id, distance in rows:
        key = (type_, state_key)
        if key not in nearest or distance < nearest[key][0]:
            nearest[key] = (distance, event_id)
    return {key: nearest[key][1] if key in nearest else None for key in keys}


def create_state_group_txn(
    txn: Transaction,
    group_id: int,
    room_id: str,
    prev_group: int | None,
    delta: Mapping[StateKey, str | None],
    full_state: Mapping[StateKey, str] | None = None,
) -> None:
    """Store group `group_id` as `prev_group` + `delta`, or in full if the chain is too long.

    `full_state` must be given when there is no parent (or to avoid re-reading it).
    """
    chain_length = 0
    if prev_group is not None:
        row = txn.select_one("SELECT chain_length FROM state_groups WHERE id = ?", (prev_group,))
        if row is None:
            raise KeyError(f"unknown state group {prev_group}")
        chain_length = row[0] + 1
    entries: dict[StateKey, str | None]
    if prev_group is not None and chain_length < MAX_CHAIN_LENGTH:
        entries = dict(delta)
    else:
        if full_state is not None:
            base = dict(full_state)
        else:
            base = _load_group_txn(txn, prev_group) if prev_group is not None else {}
        entries = dict(apply_state_delta(base, delta))
        prev_group, chain_length = None, 0
    txn.execute(
        "INSERT INTO state_groups (id, room_id, prev_group, chain_length) VALUES (?, ?, ?, ?)",
        (group_id, room_id, prev_group, chain_length),
    )
    txn.execute_many(
        "INSERT INTO state_group_entries (state_group, type, state_key, event_id)"
        " VALUES (?, ?, ?, ?)",
        [(group_id, k[0], k[1], v) for k, v in entries.items()],
    )


def apply_state_delta(
    state: Mapping[StateKey, str], delta: Mapping[StateKey, str | None]
) -> dict[StateKey, str]:
    result = dict(state)
    for key, value in delta.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


class StateStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        # State groups never change once written, so caching them is always safe.
        self._group_cache: OrderedDict[int, dict[StateKey, str]] = OrderedDict()
        self._key_cache: OrderedDict[tuple[int, StateKey], str | None] = OrderedDict()

    async def get_state_group(self, group: int) -> dict[StateKey, str]:
        """The full state map (type, state_key) -> event_id of a group."""
        cached = self._group_cache.get(group)
        if cached is not None:
            self._group_cache.move_to_end(group)
            return cached
        state = await self._db.run_interaction("get_state_group", _load_group_txn, group)
        self._group_cache[group] = state
        while len(self._group_cache) > GROUP_CACHE_SIZE:
            self._group_cache.popitem(last=False)
        return state

    async def get_state_for_groups(
        self, groups: Collection[int], keys: Collection[StateKey]
    ) -> dict[int, dict[StateKey, str]]:
        """For each group, the event IDs of those of `keys` that are in its state.

        For reading a few keys (a user's membership, the history visibility) at many
        events without loading whole state maps, which are large in big rooms.
        """
        wanted_keys = list(dict.fromkeys(keys))
        result: dict[int, dict[StateKey, str]] = {}
        to_fetch: dict[int, list[StateKey]] = {}
        for group in dict.fromkeys(groups):
            full = self._group_cache.get(group)
            found: dict[StateKey, str] = {}
            result[group] = found
            for key in wanted_keys:
                if full is not None:
                    if key in full:
                        found[key] = full[key]
                    continue
                cache_key = (group, key)
                if cache_key in self._key_cache:
                    cached = self._key_cache[cache_key]
                    if cached is not None:
                        found[key] = cached
                else:
                    to_fetch.setdefault(group, []).append(key)
        if not to_fetch:
            return result

        def txn_fn(txn: Transaction) -> dict[int, dict[StateKey, str | None]]:
            return {group: _lookup_keys_txn(txn, group, ks) for group, ks in to_fetch.items()}

        fetched = await self._db.run_interaction("get_state_for_groups", txn_fn)
        for group, values in fetched.items():
            for key, event_id in values.items():
                self._key_cache[(group, key)] = event_id
                if event_id is not None:
                    result[group][key] = event_id
        while len(self._key_cache) > KEY_CACHE_SIZE:
            self._key_cache.popitem(last=False)
        return result

    async def get_max_state_group(self) -> int:
        row = await self._db.run_interaction(
            "get_max_state_group", lambda txn: txn.select_one("SELECT MAX(id) FROM state_groups")
        )
        return row[0] if row and row[0] is not None else 0

    async def get_state_group_after_event(self, event_id: str) -> int | None:
        """The group of the state after `event_id` (the state at it, for non-state events)."""
        row = await self._db.run_interaction(
            "get_state_group_after_event",
            lambda txn: txn.select_one(
                "SELECT state_group_after FROM events WHERE event_id = ?", (event_id,)
            ),
        )
        return row[0] if row else None

    async def get_state_group_at_position(
        self, room_id: str, topological: int | None, stream: int
    ) -> int | None:
        """The group of the room's state at a point in its history: the state after the
        latest timeline event at or before (topological, stream), or before stream position
        `stream` when `topological` is None (a sync token). None if no event is that early."""

        def txn_fn(txn: Transaction) -> tuple | None:
            if topological is None:
                return txn.select_one(
                    "SELECT state_group_after FROM events WHERE room_id = ?"
                    " AND stream_ordering <= ? AND outlier = ? AND rejected_reason IS NULL"
                    " ORDER BY stream_ordering DESC LIMIT 1",
                    (room_id, stream, False),
                )
            return txn.select_one(
                "SELECT state_group_after FROM events WHERE room_id = ?"
                " AND (topological_ordering < ? OR (topological_ordering = ? AND stream_ordering <= ?))"
                " AND outlier = ? AND rejected_reason IS NULL"
                " ORDER BY topological_ordering DESC, stream_ordering DESC LIMIT 1",
                (room_id, topological, topological, stream, False),
            )

        row = await self._db.run_interaction("get_state_group_at_position", txn_fn)
        return row[0] if row else None

    async def get_current_state_ids(self, room_id: str) -> dict[StateKey, str]:
        rows = await self._db.run_interaction(
            "get_current_state_ids",
            lambda txn: txn.select_all(
                "SELECT type, state_key, event_id FROM current_state_events WHERE room_id = ?",
                (room_id,),
            ),
        )
        return {(t, k): e for t, k, e in rows}

    async def get_current_state_event_id(
        self, room_id: str, event_type: str, state_key: str
    ) -> str | None:
        row = await self._db.run_interaction(
            "get_current_state_event_id",
            lambda txn: txn.select_one(
                "SELECT event_id FROM current_state_events"
                " WHERE room_id = ? AND type = ? AND state_key = ?",
                (room_id, event_type, state_key),
            ),
        )
        return row[0] if row else None

    async def get_current_members(
        self, room_id: str, membership: str | None = "join"
    ) -> dict[str, str]:
        """user_id -> member event ID, for users with `membership` (all if None)."""

        def txn_fn(txn: Transaction) -> list[tuple]:
            if membership is None:
                return txn.select_all(
                    "SELECT state_key, event_id FROM current_state_events"
                    " WHERE room_id = ? AND type = 'm.room.member'",
                    (room_id,),
                )
            return txn.select_all(
                "SELECT state_key, event_id FROM current_state_events"
                " WHERE room_id = ? AND type = 'm.room.member' AND membership = ?",
                (room_id, membership),
            )

        rows = await self._db.run_interaction("get_current_members", txn_fn)
        return {user_id: event_id for user_id, event_id in rows}
