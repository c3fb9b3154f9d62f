"""Account data (spec: "Client Config") and room tags (spec: "Room Tagging").

Each user's data is private to them. Every write takes the next position in the account
data stream and wakes the owner's syncs. Tags are the room account data event `m.tag`.
Push rules are the global `m.push_rules` (written by `homeserver.push.handler`): what is
stored is what the user changed, and every read serves the full ruleset, defaults included.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from homeserver.auth.tokens import Requester
from homeserver.caches import LruCache
from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import check_room_id
from homeserver.linearizer import Linearizer
from homeserver.push.rules import push_rules_content
from homeserver.streams.bus import StreamBus, StreamUpdate
from homeserver.streams.registry import Stream
from storage.stores.account_data import AccountDataStore

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]

TAG = "m.tag"
FULLY_READ = "m.fully_read"
# Spec: "Direct Messaging". Its content is `{"<user_id>": ["<room_id>", ...], ...}`.
DIRECT = "m.direct"
PUSH_RULES = "m.push_rules"
# Spec: "Ignoring Users". Its content is `{"ignored_users": {"<user_id>": {}, ...}}`.
IGNORED_USER_LIST = "m.ignored_user_list"
# Spec: "Invite permission". Its content is `{"default_action": "block"}` to block every
# invite; a missing, invalid or unsupported value receives invites as normal.
INVITE_PERMISSION_CONFIG = "m.invite_permission_config"
# Types the server manages; clients may read them but not set them through this API.
SERVER_MANAGED_TYPES = frozenset({FULLY_READ, PUSH_RULES})
MAX_TAG_BYTES = 255
# Users whose ignore list (or invite permission) is held (every syncing user's is read).
IGNORED_USERS_CACHE_SIZE = 100_000
INVITE_PERMISSIONS_CACHE_SIZE = 100_000

T = TypeVar("T")
_NOT_HELD: Any = object()


def ignored_users_of(content: JsonDict | None) -> frozenset[str]:
    """The users an `m.ignored_user_list` content ignores; anything malformed ignores no one
    (clients write this event freely, so a bad one must not break reading)."""
    ignored = content.get("ignored_users") if content is not None else None
    if not isinstance(ignored, dict):
        return frozenset()
    return frozenset(user_id for user_id in ignored if isinstance(user_id, str))


def blocks_invites(content: JsonDict | None) -> bool:
    """Whether an `m.invite_permission_config` content blocks every invite: only
    `default_action` set to `block` does (spec: anything else receives invites as normal)."""
    return content is not None and content.get("default_action") == "block"


class HeldGlobalAccountData(Generic[T]):
    """What one type of global account data means for each user, read once and held in
    memory: answered for many users at once (sync, invites). Kept current by
    `account_data_changed` (an `AccountDataHandler` change listener), so a new value takes
    effect on the next read."""

    def __init__(
        self,
        store: AccountDataStore,
        data_type: str,
        meaning: Callable[[JsonDict | None], T],
        cache_name: str,
        max_size: int,
    ) -> None:
        self._store = store
        self.data_type = data_type
        self._meaning = meaning
        self._cache: LruCache[str, T] = LruCache(cache_name, max_size)
        # Bumped by every change, so a read that raced one is not kept.
        self._changes = 0

    async def of(self, user_id: str) -> T:
        held = self._cache.get(user_id, _NOT_HELD)
        if held is not _NOT_HELD:
            return held
        changes = self._changes
        meant = self._meaning(await self._store.get_account_data(user_id, None, self.data_type))
        if changes == self._changes:
            self._cache.set(user_id, meant)
        return meant

    def account_data_changed(self, user_id: str, room_id: str | None, data_type: str) -> None:
        if room_id is None and data_type == self.data_type:
            self._changes += 1
            self._cache.pop(user_id)


class InvitePermissions(HeldGlobalAccountData[bool]):
    """Whether each user blocks invites (spec: "Invite permission"): asked for every local
    invite, every invite arriving over federation and every invite /sync would serve."""

    def __init__(self, store: AccountDataStore) -> None:
        super().__init__(
            store,
            INVITE_PERMISSION_CONFIG,
            blocks_invites,
            "invite_permissions",
            INVITE_PERMISSIONS_CACHE_SIZE,
        )

    async def blocks_invites(self, user_id: str) -> bool:
        return await self.of(user_id)


class IgnoredUsers:
    """Whom each user ignores, held in memory: sync asks for every viewer it computes a room
    for, many at once when a message wakes a room's listeners. Kept current by
    `account_data_changed` (an `AccountDataHandler` change listener), so an update of the
    list takes effect on the next sync (spec: "the sync API for all clients should
    immediately start ignoring (or un-ignoring) the user")."""

    def __init__(self, store: AccountDataStore) -> None:
        self._store = store
        self._held = HeldGlobalAccountData(
            store, IGNORED_USER_LIST, ignored_users_of, "ignored_users", IGNORED_USERS_CACHE_SIZE
        )
        # The other way round, for push rules (who must not be notified of a sender's
        # events): user_id -> the users who ignore them. Every list is read once, on first
        # use (few users ignore anyone); a user whose list changed is read again before the
        # next answer.
        self._ignorers: dict[str, set[str]] | None = None
        self._ignoring: dict[str, frozenset[str]] = {}
        self._stale: set[str] = set()

    async def of(self, user_id: str) -> frozenset[str]:
        return await self._held.of(user_id)

    async def ignorers_of(self, user_id: str) -> frozenset[str]:
        """The users who ignore `user_id`."""
        if self._ignorers is None:
            everyone = await self._store.get_global_of_type(IGNORED_USER_LIST)
            if self._ignorers is None:
                self._ignorers = {}
                for ignorer, content in everyone.items():
                    self._set_ignoring(ignorer, ignored_users_of(content))
        while self._stale:
            ignorer = self._stale.pop()
            self._set_ignoring(ignorer, ignored_users_of(
                await self._store.get_account_data(ignorer, None, IGNORED_USER_LIST)
            ))
        return frozenset(self._ignorers.get(user_id, ()))

    def _set_ignoring(self, ignorer: str, ignored: frozenset[str]) -> None:
        assert self._ignorers is not None
        for user_id in self._ignoring.pop(ignorer, frozenset()):
            held = self._ignorers.get(user_id)
            if held is not None:
                held.discard(ignorer)
                if not held:
                    del self._ignorers[user_id]
        if ignored:
            self._ignoring[ignorer] = ignored
            for user_id in ignored:
                self._ignorers.setdefault(user_id, set()).add(ignorer)

    def account_data_changed(self, user_id: str, room_id: str | None, data_type: str) -> None:
        self._held.account_data_changed(user_id, room_id, data_type)
        if room_id is None and data_type == IGNORED_USER_LIST:
            if self._ignorers is not None:
                self._stale.add(user_id)


@dataclass
class AccountDataChanges:
    """What sync sends: `{"type", "content"}` events, global and per room."""

    global_events: list[JsonDict] = field(default_factory=list)
    room_events: dict[str, list[JsonDict]] = field(default_factory=dict)


class AccountDataHandler:
    def __init__(
        self,
        store: AccountDataStore,
        stream: Stream,
        bus: StreamBus,
    ) -> None:
        self._store = store
        self._stream = stream
        self._ids = stream.id_generator()
        # Keyed by user_id.
        self._changes = stream.users_index()
        self._bus = bus
        # Read-modify-write of m.tag, per (user, room).
        self._tag_writers = Linearizer("room_tags")
        # Called with (user_id, room_id, type) after each write commits, before it is
        # published (the push evaluator forgets a user's compiled rules).
        self.change_listeners: list[Callable[[str, str | None, str], None]] = []

    @property
    def current_position(self) -> int:
        return self._stream.current

    # ----- client API ----------------------------------------------------------------------

    @staticmethod
    def _check_owner(requester: Requester, user_id: str, action: str) -> None:
        if requester.user_id != user_id:
            raise MatrixError(403, Codes.FORBIDDEN, f"Cannot {action} account data for other users")

    @staticmethod
    def _check_settable(data_type: str) -> None:
        if data_type in SERVER_MANAGED_TYPES:
            # The spec's 405 for server-managed types comes with M_BAD_JSON.
            raise MatrixError(405, Codes.BAD_JSON, f"Cannot set {data_type} through this API")

    async def set_client_account_data(
        self,
        requester: Requester,
        user_id: str,
        room_id: str | None,
        data_type: str,
        content: JsonDict,
    ) -> None:
        """PUT account data (global if `room_id` is None), refusing server-managed types."""
        self._check_owner(requester, user_id, "add")
        if room_id is not None:
            check_room_id(room_id)
        self._check_settable(data_type)
        await self.write(user_id, room_id, data_type, content)

    async def get_client_account_data(
        self, requester: Requester, user_id: str, room_id: str | None, data_type: str
    ) -> JsonDict:
        """GET account data; 404 M_NOT_FOUND if it was never set."""
        self._check_owner(requester, user_id, "get")
        if room_id is not None:
            check_room_id(room_id)
        content = await self._store.get_account_data(user_id, room_id, data_type)
        if room_id is None and data_type == PUSH_RULES:
            return push_rules_content(user_id, content)
        if content is None:
            where = "Room account data" if room_id is not None else "Account data"
            raise MatrixError(404, Codes.NOT_FOUND, f"{where} not found")
        return content

    async def get_tags(self, requester: Requester, user_id: str, room_id: str) -> JsonDict:
        self._check_owner(requester, user_id, "get")
        check_room_id(room_id)
        return await self._current_tags(user_id, room_id)

    async def add_tag(
        self, requester: Requester, user_id: str, room_id: str, tag: str, content: JsonDict
    ) -> None:
        self._check_owner(requester, user_id, "add")
        check_room_id(room_id)
        _check_tag(tag)
        order = content.get("order")
        if "order" in content and (isinstance(order, bool) or not isinstance(order, int | float)):
            raise MatrixError(400, Codes.BAD_JSON, "'order' must be a number")
        async with self._tag_writers.queue((user_id, room_id)):
            tags = await self._current_tags(user_id, room_id)
            tags[tag] = content
            await self.write(user_id, room_id, TAG, {"tags": tags})

    async def remove_tag(self, requester: Requester, user_id: str, room_id: str, tag: str) -> None:
        """Remove a tag; removing one the room does not have succeeds and changes nothing."""
        self._check_owner(requester, user_id, "remove")
        check_room_id(room_id)
        async with self._tag_writers.queue((user_id, room_id)):
            tags = await self._current_tags(user_id, room_id)
            if tag not in tags:
                return
            del tags[tag]
            await self.write(user_id, room_id, TAG, {"tags": tags})

    async def copy_to_upgraded_room(self, user_id: str, old_room_id: str, new_room_id: str) -> None:
        """A room was upgraded: the user's tags of the old room are added to the new room's,
        and a direct chat with it lists the new room too (as Synapse does)."""
        async with self._tag_writers.queue((user_id, new_room_id)):
            old_tags = await self._current_tags(user_id, old_room_id)
            if old_tags:
                tags = await self._current_tags(user_id, new_room_id)
                tags.update(old_tags)
                await self.write(user_id, new_room_id, TAG, {"tags": tags})
        direct = await self._store.get_account_data(user_id, None, DIRECT)
        if not isinstance(direct, dict):
            return
        for partner, rooms in direct.items():
            if isinstance(rooms, list) and old_room_id in rooms and new_room_id not in rooms:
                # The first chat naming the room, as Synapse does.
                await self.write(
                    user_id, None, DIRECT, {**direct, partner: [*rooms, new_room_id]}
                )
                return

    async def _current_tags(self, user_id: str, room_id: str) -> JsonDict:
        content = await self._store.get_account_data(user_id, room_id, TAG)
        tags = (content or {}).get("tags")
        return dict(tags) if isinstance(tags, dict) else {}

    # ----- for the server itself (read markers) ----------------------------------------------

    async def get(self, user_id: str, room_id: str | None, data_type: str) -> JsonDict | None:
        return await self._store.get_account_data(user_id, room_id, data_type)

    async def write(
        self, user_id: str, room_id: str | None, data_type: str, content: JsonDict
    ) -> int:
        """Store account data with no checks; returns its stream position."""
        async with self._ids.next() as stream_id:
            await self._store.set_account_data(user_id, room_id, data_type, content, stream_id)
            for listener in self.change_listeners:
                listener(user_id, room_id, data_type)
        await self._bus.publish(
            StreamUpdate.of("account_data", stream_id, users=[user_id], wake=[user_id])
        )
        logger.debug("account data %s of %s in %s at %d", data_type, user_id, room_id, stream_id)
        return stream_id

    # ----- for sync --------------------------------------------------------------------------

    async def get_changes(
        self, user_id: str, since: int, up_to: int | None = None, *, initial: bool = False
    ) -> AccountDataChanges:
        """The user's account data written after `since` (everything for 0), up to `up_to`.

        Each type appears once, with its latest content. `initial` (a sync from scratch) adds
        the server-default push rules for a user who never wrote any.
        """
        changes = AccountDataChanges()
        # Since 0 too: a user who never wrote account data costs no read (the index knows
        # whether anything was written since it started).
        if not initial and not self._changes.has_changed_since(user_id, since):
            return changes
        for data in await self._store.get_account_data_changed(user_id, since, up_to):
            event = {"type": data.type, "content": data.content}
            if data.room_id is None:
                if data.type == PUSH_RULES:
                    event["content"] = push_rules_content(user_id, data.content)
                changes.global_events.append(event)
            else:
                changes.room_events.setdefault(data.room_id, []).append(event)
        if initial and not any(e["type"] == PUSH_RULES for e in changes.global_events):
            # Clients need push rules at start-up. A user who never changed theirs has no
            # stored m.push_rules: the server-default rules apply, so send those. (One stored
            # but written after `up_to` comes with the next sync, like any other change.)
            # Not for `since` 0 alone: an incremental sync before any write has that too.
            if await self._store.get_account_data(user_id, None, PUSH_RULES) is None:
                changes.global_events.append(
                    {"type": PUSH_RULES, "content": push_rules_content(user_id, None)}
                )
        return changes


def _check_tag(tag: str) -> None:
    if len(tag.encode("utf-8")) > MAX_TAG_BYTES:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Tag names may not exceed {MAX_TAG_BYTES} bytes")
