"""Who shares a room with whom, answered from memory.

Presence (every incremental sync while anyone's presence changes), device lists and
federation's EDUs ask "which users share a room with U (among these)?" on hot paths. A
database join per question made each of them a transaction; here the answer is built from
two things held in memory:

- each user's memberships (read once from `room_memberships`, then kept until the events
  stream's index of membership changes says the user's memberships moved);
- each room's joined members, from the state store's current-state cache, which the
  persister updates after every commit that changes it.

Why this is never behind a change a caller could already know about: a membership change
commits, updates the state store's member lists (an after-commit callback), becomes visible
on the events stream and is recorded in the membership index (`StreamBus.publish`), all
before anything yields, and before the bus delivers it (so before the notifier wakes anyone
and before the request that made the change returns). A user's memberships are cached with
the events position read before the database read: whatever committed at or below it is in
what was read, and whatever commits later moves the index past it, so the next lookup reads
again.

`RoomStore.get_users_sharing_rooms` remains the database's answer for anything that needs it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from homeserver.caches import LruCache
from homeserver.streams.registry import Stream
from homeserver.sync.change_cache import StreamChangeCache
from storage.stores.rooms import Membership, RoomStore
from storage.stores.state import StateStore

# Users whose memberships are held. A user's entry is the list of their current (not
# forgotten) memberships, so this bounds memory by users times rooms they know of.
MEMBERSHIPS_CACHE_SIZE = 50_000
# The memberships read and kept per user (what sync lists; forgotten rooms excluded).
KEPT_MEMBERSHIPS = ("join", "invite", "leave", "ban", "knock")


@dataclass(frozen=True)
class _UserRooms:
    # The events position read before the memberships were: valid while the membership
    # index has nothing newer for the user.
    position: int
    memberships: tuple[Membership, ...]
    joined: frozenset[str]


class SharedRooms:
    def __init__(self, rooms: RoomStore, state: StateStore, events: Stream) -> None:
        self._rooms = rooms
        self._state = state
        self._events = events
        self._membership_changes: StreamChangeCache = events.users_index()
        self._by_user: LruCache[str, _UserRooms] = LruCache(
            "user_memberships", MEMBERSHIPS_CACHE_SIZE
        )
        # Bumped by `forget`, which changes no stream position: a read in flight across one
        # may hold the forgotten room and is then not kept.
        self._forgets = 0

    async def memberships_of(self, user_id: str) -> Sequence[Membership]:
        """The user's current memberships of every kind, forgotten rooms left out."""
        return (await self._user_rooms(user_id)).memberships

    async def joined_rooms(self, user_id: str) -> frozenset[str]:
        """The rooms the user is joined to."""
        return (await self._user_rooms(user_id)).joined

    async def get_users_sharing_rooms(
        self, user_id: str, among: Collection[str] | None = None
    ) -> set[str]:
        """Users joined to at least one room `user_id` is joined to (the user included, if
        joined anywhere); with `among`, only those of them. As
        `RoomStore.get_users_sharing_rooms` answers, without the database once warm."""
        rooms = await self._user_rooms(user_id)
        if among is None:
            sharing: set[str] = set()
            for room_id in rooms.joined:
                sharing.update(await self._state.get_current_members(room_id, "join"))
            return sharing
        wanted = set(among)
        found: set[str] = set()
        for room_id in rooms.joined:
            if not wanted:
                break
            members = await self._state.get_current_members(room_id, "join")
            here = {u for u in wanted if u in members}
            found |= here
            wanted -= here
        return found

    async def joined_rooms_in_common(self, user_id: str, other_user_id: str) -> set[str]:
        """The rooms both users are joined to (`other_user_id` may be another server's)."""
        rooms = await self._user_rooms(user_id)
        return {
            room_id
            for room_id in rooms.joined
            if other_user_id in await self._state.get_current_members(room_id, "join")
        }

    def forget(self, user_id: str) -> None:
        """The user forgot a room (no stream position moves): read their rooms again."""
        self._forgets += 1
        self._by_user.pop(user_id)

    async def _user_rooms(self, user_id: str) -> _UserRooms:
        cached = self._by_user.get(user_id)
        if cached is not None and not self._membership_changes.has_changed_since(
            user_id, cached.position
        ):
            return cached
        # The position first (see the module docstring).
        position = self._events.current
        forgets = self._forgets
        memberships = tuple(await self._rooms.get_rooms_for_user(user_id, KEPT_MEMBERSHIPS))
        read = _UserRooms(
            position,
            memberships,
            frozenset(m.room_id for m in memberships if m.membership == "join"),
        )
        if forgets == self._forgets:
            self._by_user.set(user_id, read)
        return read
