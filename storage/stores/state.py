"""State groups (the state at every event) and the current state of rooms.

A state group is a full state map stored as a delta against a parent group. Chains are cut
at `MAX_CHAIN_LENGTH`: a group whose parent chain is that long is stored in full, so reading
any group touches at most that many groups.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from homeserver.caches import LruCache
from homeserver.events.auth import MEMBER
from storage.database import Database, Transaction

StateKey = tuple[str, str]
StateMap = Mapping[StateKey, str]

MAX_CHAIN_LENGTH = 50
GROUP_CACHE_SIZE = 2000
# Single (group, key) lookups cached by `get_state_for_groups`.
KEY_CACHE_SIZE = 100_000
# Rooms whose current state (and member lists) are held in memory, least recently used out.
CURRENT_STATE_CACHE_ROOMS = 1000
# A (group, key) lookup not cached at all (None is cached too: the group lacks the key).
_UNKNOWN = object()


def load_group_txn(txn: Transaction, group: int) -> dict[StateKey, str]:
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
            base = load_group_txn(txn, prev_group) if prev_group is not None else {}
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


@dataclass(frozen=True)
class _CurrentState:
    """A room's current state as `current_state_events` holds it. Never changed in place (a
    change builds a new one), so what callers were handed stays as it was."""

    state: Mapping[StateKey, str]
    # membership -> user_id -> member event ID.
    members: Mapping[str, Mapping[str, str]]

    @classmethod
    def from_rows(cls, rows: list[tuple]) -> _CurrentState:
        state: dict[StateKey, str] = {}
        members: dict[str, dict[str, str]] = {}
        for type_, state_key, event_id, membership in rows:
            state[(type_, state_key)] = event_id
            if type_ == MEMBER and membership is not None:
                members.setdefault(membership, {})[state_key] = event_id
        return cls(
            MappingProxyType(state),
            MappingProxyType({m: MappingProxyType(users) for m, users in members.items()}),
        )

    def apply(self, key: StateKey, event_id: str, membership: str | None) -> _CurrentState:
        """This state with `key` set to `event_id`, as `_update_current_state_txn` does to
        the table. Copies the state map (and, for a member event, the affected member lists):
        linear in the room's size, but only for state events, and in memory."""
        state = dict(self.state)
        state[key] = event_id
        members = dict(self.members)
        if key[0] == MEMBER:
            user_id = key[1]
            for group, users in self.members.items():
                if user_id in users and group != membership:
                    members[group] = MappingProxyType(
                        {u: e for u, e in users.items() if u != user_id}
                    )
            if membership is not None:
                members[membership] = MappingProxyType(
                    {**self.members.get(membership, {}), user_id: event_id}
                )
        return _CurrentState(MappingProxyType(state), MappingProxyType(members))


class StateStore:
    def __init__(self, db: Database, current_state_rooms: int = CURRENT_STATE_CACHE_ROOMS) -> None:
        self._db = db
        # State groups never change once written, so caching them is always safe.
        self._group_cache: LruCache[int, dict[StateKey, str]] = LruCache(
            "state_groups", GROUP_CACHE_SIZE
        )
        # (group, key) -> event ID, or None: the group has no such key.
        self._key_cache: LruCache[tuple[int, StateKey], str | None] = LruCache(
            "state_group_keys", KEY_CACHE_SIZE
        )
        # Current state of recently used rooms. Unlike groups it changes: the persister calls
        # `current_state_changed` after each commit that moves it (see `_load_current`).
        self._current: LruCache[str, _CurrentState] = LruCache(
            "current_state", current_state_rooms
        )
        # room_id -> reads of its current state in flight, and how often it changed during
        # them (entries exist only while reads are in flight).
        self._current_loads: Counter[str] = Counter()
        self._current_changes: Counter[str] = Counter()
        # Called with a room_id after this process changed the room's current state. The
        # cache is per process: with several processes on one database, the others must drop
        # their copy, which `homeserver/areas/stores.py` wires to the "current_state" replication
        # stream (Redis). Until the message arrives they may answer from the older copy, as
        # from a read made a moment earlier; without Redis, run one process only.
        self.current_state_listeners: list[Callable[[str], None]] = []

    async def get_state_group(self, group: int) -> dict[StateKey, str]:
        """The full state map (type, state_key) -> event_id of a group."""
        cached = self._group_cache.get(group)
        if cached is not None:
            return cached
        state = await self._db.run_interaction("get_state_group", load_group_txn, group)
        self._group_cache.set(group, state)
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
            full = self._group_cache.peek(group)
            found: dict[StateKey, str] = {}
            result[group] = found
            for key in wanted_keys:
                if full is not None:
                    if key in full:
                        found[key] = full[key]
                    continue
                cache_key = (group, key)
                cached = self._key_cache.get(cache_key, _UNKNOWN)
                if cached is _UNKNOWN:
                    to_fetch.setdefault(group, []).append(key)
                elif isinstance(cached, str):
                    found[key] = cached
        if not to_fetch:
            return result

        def txn_fn(txn: Transaction) -> dict[int, dict[StateKey, str | None]]:
            return {group: _lookup_keys_txn(txn, group, ks) for group, ks in to_fetch.items()}

        fetched = await self._db.run_interaction("get_state_for_groups", txn_fn)
        for group, values in fetched.items():
            for key, event_id in values.items():
                self._key_cache.set((group, key), event_id)
                if event_id is not None:
                    result[group][key] = event_id
        return result

    async def get_max_state_group(self) -> int:
        row = await self._db.run_interaction(
            "get_max_state_group", lambda txn: txn.select_one("SELECT MAX(id) FROM state_groups")
        )
        return row[0] if row and row[0] is not None else 0

    # ----- current state (cached) ---------------------------------------------------------

    async def _load_current(self, room_id: str) -> _CurrentState:
        """The room's current state, from memory if held, else read and (if nothing changed
        it meanwhile) remembered.

        A read that began before a change committed may return the older state after the
        change's `current_state_changed` ran; such a read is used by its caller (as any read
        may be slightly old) but not cached, so the cache never goes back in time.
        """
        cached = self._current.get(room_id)
        if cached is not None:
            return cached
        changes_before = self._current_changes[room_id]
        self._current_loads[room_id] += 1
        try:
            rows = await self._db.run_interaction(
                "get_current_state",
                lambda txn: txn.select_all(
                    "SELECT type, state_key, event_id, membership FROM current_state_events"
                    " WHERE room_id = ?",
                    (room_id,),
                ),
            )
        finally:
            unchanged = self._current_changes[room_id] == changes_before
            self._current_loads[room_id] -= 1
            if self._current_loads[room_id] <= 0:
                del self._current_loads[room_id]
                self._current_changes.pop(room_id, None)
        loaded = _CurrentState.from_rows(rows)
        if unchanged and room_id not in self._current:
            self._current.set(room_id, loaded)
        return loaded

    def _current_state_moved(self, room_id: str) -> None:
        if room_id in self._current_loads:
            self._current_changes[room_id] += 1

    def current_state_changed(
        self, room_id: str, key: StateKey, event_id: str, membership: str | None
    ) -> None:
        """After commit: the persister set `key` to `event_id` in the room's current state
        (`membership` as stored for member events, else None). Per room these calls come in
        commit order, as writes to a room are serialised (`EventCreator`)."""
        self._current_state_moved(room_id)
        cached = self._current.peek(room_id)
        if cached is not None:
            self._current.replace(room_id, cached.apply(key, event_id, membership))
        for listener in self.current_state_listeners:
            listener(room_id)

    def current_state_replaced(self, room_id: str) -> None:
        """After commit: the persister rewrote the room's current state wholesale (a remote
        join, resolved forks); forget the cached copy here and in other processes."""
        self.invalidate_current_state(room_id)
        for listener in self.current_state_listeners:
            listener(room_id)

    def invalidate_current_state(self, room_id: str) -> None:
        """Forget the room's current state (another process changed it)."""
        self._current_state_moved(room_id)
        self._current.pop(room_id, None)

    def clear_current_state_cache(self) -> None:
        """Forget every room's current state (changes may have been missed)."""
        for room_id in self._current_loads:
            self._current_changes[room_id] += 1
        self._current.clear()

    async def get_current_state_ids(self, room_id: str) -> Mapping[StateKey, str]:
        """(type, state_key) -> event_id of the room's current state. Read-only and shared:
        copy it to change it."""
        return (await self._load_current(room_id)).state

    async def get_current_state_event_id(
        self, room_id: str, event_type: str, state_key: str
    ) -> str | None:
        cached = self._current.get(room_id)
        if cached is not None:
            return cached.state.get((event_type, state_key))
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
    ) -> Mapping[str, str]:
        """user_id -> member event ID, for users with `membership` (all if None). Read-only
        and shared: copy it to change it."""
        current = await self._load_current(room_id)
        if membership is not None:
            return current.members.get(membership, MappingProxyType({}))
        return MappingProxyType(
            {key[1]: event_id for key, event_id in current.state.items() if key[0] == MEMBER}
        )
