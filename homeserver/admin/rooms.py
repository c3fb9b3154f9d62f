"""Admin actions on rooms: the room list and details, members, state, history, an event's
context and the event nearest a time, read as an admin who needn't be joined; blocking;
trimming forward extremities; deleting a room (kick the local members, optionally move
them and the aliases to a new room, purge the database) and purging its history, both in
the background as admin tasks (`homeserver.admin.tasks`), the synchronous delete waiting
for its task.

Every method validates the room ID (400 M_INVALID_PARAM) and answers 404 M_NOT_FOUND for
rooms this server does not know (blocking excepted: a room can be blocked before it is
known). Changes are recorded in the audit log after they succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from homeserver.admin.audit import AdminAudit
from homeserver.admin.tasks import DELETE_ROOM, INTERRUPTED, PURGE_HISTORY, AdminTasks
from homeserver.auth.tokens import Requester
from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from homeserver.events.auth import INFINITE_POWER, required_power_level, user_power_level
from homeserver.events.serialize import EventSerializer
from homeserver.events.types import (
    AVATAR,
    CREATE,
    JOIN_RULES,
    POWER_LEVELS,
    TOMBSTONE,
    TOPIC,
)
from homeserver.filtering import RoomEventFilter
from homeserver.identifiers import check_room_id, split_user_id
from homeserver.rooms.creation import RoomCreationHandler, RoomSpec
from homeserver.rooms.creator import EventCreator
from homeserver.rooms.directory import StateContents
from homeserver.rooms.membership import MembershipHandler
from homeserver.rooms.messages import MessagesHandler
from storage.stores.accounts import RatelimitOverride
from storage.stores.admin_tasks import AdminTask, TaskQuery
from storage.stores.aliases import AliasStore
from storage.stores.directory import RoomDirectoryStore
from storage.stores.events import EventStore
from storage.stores.room_admin import (
    PURGE_BATCH,
    PURGE_EVENT_BATCH,
    HistoryPosition,
    RoomAdminStore,
    RoomFigures,
    RoomListFilter,
)
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore

logger = logging.getLogger(__name__)

# order_by -> (the store's sort key, whether `dir=f` is largest first), as Synapse's list.
ORDER_BY: dict[str, tuple[str, bool]] = {
    "name": ("name", False),
    "alphabetical": ("name", False),
    "canonical_alias": ("canonical_alias", False),
    "joined_members": ("joined_members", True),
    "size": ("joined_members", True),
    "joined_local_members": ("joined_local_members", True),
    "version": ("version", True),
    "creator": ("creator", False),
    "encryption": ("encryption", False),
    "federatable": ("federatable", True),
    "public": ("public", True),
    "join_rules": ("join_rules", False),
    "guest_access": ("guest_access", False),
    "history_visibility": ("history_visibility", False),
    "state_events": ("state_events", True),
}

DEFAULT_NEW_ROOM_NAME = "Content Violation Notification"
DEFAULT_NEW_ROOM_MESSAGE = (
    "Sharing illegal content on this server is not permitted and rooms in violation will be"
    " blocked."
)
# The longest a purge rests between two batches (it rests as long as the last one took).
MAX_PURGE_PAUSE_S = 1.0
# A requester for users the server acts for: no rate limit applies to what an admin does.
_NO_LIMIT = RatelimitOverride(0, 0)


@dataclass(frozen=True)
class RoomQuery:
    order_by: str = "name"
    backwards: bool = False
    search_term: str | None = None
    public_rooms: bool | None = None
    empty_rooms: bool | None = None


@dataclass(frozen=True)
class DeleteParams:
    new_room_user_id: str | None = None
    room_name: str | None = None
    message: str | None = None
    block: bool = False
    purge: bool = True
    force_purge: bool = False


@dataclass
class DeleteTask:
    """A room delete as the status endpoints describe it."""

    delete_id: str
    room_id: str
    # active, complete, failed (Synapse's words).
    status: str = "active"
    error: str | None = None
    kicked_users: list[str] = field(default_factory=list)
    failed_to_kick_users: list[str] = field(default_factory=list)
    local_aliases: list[str] = field(default_factory=list)
    new_room_id: str | None = None

    def shutdown_room(self) -> dict[str, Any]:
        """What the delete did to the room (Synapse's `shutdown_room`, and the answer of
        the synchronous delete)."""
        return {
            "kicked_users": list(self.kicked_users),
            "failed_to_kick_users": list(self.failed_to_kick_users),
            "local_aliases": list(self.local_aliases),
            "new_room_id": self.new_room_id,
        }

    @classmethod
    def from_record(cls, task: AdminTask) -> DeleteTask:
        done = task.result or {}
        return cls(
            delete_id=task.id,
            room_id=task.resource_id,
            status=task.status,
            error=task.error,
            kicked_users=list(done.get("kicked_users", [])),
            failed_to_kick_users=list(done.get("failed_to_kick_users", [])),
            local_aliases=list(done.get("local_aliases", [])),
            new_room_id=done.get("new_room_id"),
        )


class AdminRoomsHandler:
    def __init__(
        self,
        server_name: str,
        clock: Clock,
        store: RoomAdminStore,
        events: EventStore,
        state: StateStore,
        rooms: RoomStore,
        aliases: AliasStore,
        directory: RoomDirectoryStore,
        contents: StateContents,
        serializer: EventSerializer,
        messages: MessagesHandler,
        membership: MembershipHandler,
        room_creation: RoomCreationHandler,
        creator: EventCreator,
        audit: AdminAudit,
        tasks: AdminTasks,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._store = store
        self._events = events
        self._state = state
        self._rooms = rooms
        self._aliases = aliases
        self._directory = directory
        self._contents = contents
        self._serializer = serializer
        self._messages = messages
        self._membership = membership
        self._room_creation = room_creation
        self._creator = creator
        self._audit = audit
        self._tasks = tasks
        # Called with the user ID of each local user whose membership of a purged room was
        # removed (caches of the user's rooms must drop their copy).
        self.purge_listeners: list[Callable[[str], None]] = []

    # ----- looking rooms up ------------------------------------------------------------

    async def _require_figures(self, room_id: str) -> RoomFigures:
        check_room_id(room_id)
        figures = await self._store.room_figures(room_id)
        if figures is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Room not found")
        return figures

    async def require_room(self, room_id: str) -> None:
        await self._require_figures(room_id)

    # ----- reading -----------------------------------------------------------------------

    async def list_rooms(
        self, query: RoomQuery, offset: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of the room list and how many rooms the query matches in all, filtered,
        sorted and paged by the database from its summary of each room."""
        sort_key, largest_first = ORDER_BY[query.order_by]
        rooms, total = await self._store.list_rooms(
            RoomListFilter(query.search_term, query.public_rooms, query.empty_rooms),
            sort_key,
            largest_first != query.backwards,
            offset,
            limit,
        )
        return [_describe(room) for room in rooms], total

    async def room_details(self, room_id: str) -> dict[str, Any]:
        details = _describe(await self._require_figures(room_id))
        contents = await self._contents.current_contents(room_id, (TOPIC, AVATAR, TOMBSTONE))
        tombstone = contents.get(TOMBSTONE, {})
        replacement = tombstone.get("replacement_room")
        details.update(
            topic=_text(contents.get(TOPIC, {}).get("topic")),
            avatar=_text(contents.get(AVATAR, {}).get("url")),
            joined_local_devices=await self._store.local_devices_in_room(room_id),
            forgotten=await self._store.forgotten_by_all_local_users(self._server_name, room_id),
            tombstoned=TOMBSTONE in contents,
            replacement_room=replacement if isinstance(replacement, str) else None,
        )
        return details

    async def members(self, room_id: str) -> list[str]:
        await self.require_room(room_id)
        return sorted(await self._state.get_current_members(room_id, "join"))

    async def state(self, room_id: str, event_type: str | None) -> list[dict[str, Any]]:
        await self.require_room(room_id)
        ids = await self._state.get_current_state_ids(room_id)
        wanted = [eid for key, eid in ids.items() if event_type is None or key[0] == event_type]
        stored = await self._events.get_stored_events(wanted)
        return await self._serializer.serialize(
            [stored[eid] for eid in wanted if eid in stored]
        )

    async def messages(
        self,
        admin: Requester,
        room_id: str,
        direction: str,
        from_token: str | None,
        to_token: str | None,
        limit: int,
        event_filter: RoomEventFilter,
    ) -> dict[str, Any]:
        await self.require_room(room_id)
        return await self._messages.get_messages(
            admin, room_id, direction, from_token, to_token, limit, event_filter, as_admin=True
        )

    async def forward_extremities(self, room_id: str) -> list[dict[str, Any]]:
        await self.require_room(room_id)
        found = await self._store.forward_extremities(room_id)
        stored = await self._events.get_stored_events([eid for eid, _, _ in found])
        return [
            {
                "event_id": event_id,
                "state_group": group,
                "depth": depth,
                # Heddle keeps no receive time; the sender's timestamp stands in.
                "received_ts": stored[event_id].event.origin_server_ts
                if event_id in stored
                else None,
            }
            for event_id, group, depth in found
        ]

    async def delete_forward_extremities(self, admin: Requester, room_id: str) -> int:
        """Keep only the room's newest forward extremity; how many others were deleted."""
        await self.require_room(room_id)
        deleted = await self._store.delete_extra_forward_extremities(room_id)
        self._events.forget_dag_tip(room_id)
        await self._audit.record(
            admin.user_id, "delete_forward_extremities", room_id, {"deleted": deleted}
        )
        return deleted

    async def context(
        self, admin: Requester, room_id: str, event_id: str, limit: int, event_filter: RoomEventFilter
    ) -> dict[str, Any]:
        await self.require_room(room_id)
        return await self._messages.get_context(
            admin, room_id, event_id, limit, event_filter, as_admin=True
        )

    async def timestamp_to_event(self, room_id: str, ts: int, forwards: bool) -> dict[str, Any]:
        await self.require_room(room_id)
        found = await self._store.closest_event_to_ts(room_id, ts, forwards)
        if found is None:
            raise MatrixError(
                404,
                Codes.NOT_FOUND,
                f"Unable to find event from {ts} in direction {'f' if forwards else 'b'}",
            )
        event_id, origin_server_ts = found
        return {"event_id": event_id, "origin_server_ts": origin_server_ts}

    # ----- make room admin ---------------------------------------------------------------

    async def make_room_admin(self, admin: Requester, room_id: str, user_id: str) -> None:
        """Give `user_id` (local) the highest power level a joined local member has, sent as
        that member; invite the user first unless they are joined or the room is public.
        400 if no joined local member may change the power levels."""
        await self.require_room(room_id)
        _, server = split_user_id(user_id)
        if server != self._server_name:
            raise MatrixError(400, Codes.INVALID_PARAM, "Only local users can be admins of rooms")
        room_version = await self._events.get_room_version(room_id)
        assert room_version is not None
        ids = {}
        for key in ((CREATE, ""), (POWER_LEVELS, "")):
            event_id = await self._state.get_current_state_event_id(room_id, *key)
            if event_id is not None:
                ids[key] = event_id
        loaded = await self._events.get_events(ids.values())
        state = {key: loaded[eid] for key, eid in ids.items() if eid in loaded}
        needed = required_power_level(POWER_LEVELS, True, state, room_version)
        joined = await self._state.get_current_members(room_id, "join")
        candidates = sorted(
            (
                (user_power_level(member, state, room_version), member)
                for member in joined
                if split_user_id(member)[1] == self._server_name
            ),
            key=lambda pair: (-pair[0], pair[1]),
        )
        if not candidates or candidates[0][0] < needed:
            raise MatrixError(400, Codes.UNKNOWN, "No local admin user in room")
        level, acting = candidates[0]
        power_levels = state.get((POWER_LEVELS, ""))
        content = dict(power_levels.content) if power_levels is not None else {}
        users = dict(content.get("users") or {})
        if level == INFINITE_POWER:
            # A room v12 creator: no level stands for theirs; the highest listed one (at
            # least 100) is the most another user can be given.
            numbers = [v for v in users.values() if isinstance(v, int)]
            level = max([100, *numbers])
        if user_id not in joined:
            rules = await self._contents.current_contents(room_id, [JOIN_RULES])
            if rules.get(JOIN_RULES, {}).get("join_rule") != "public":
                await self._membership.invite(_acting_as(acting), room_id, user_id)
        if acting != user_id and not (
            room_version.room_id_is_create_hash
            and user_power_level(user_id, state, room_version) == INFINITE_POWER
        ):
            users[user_id] = int(level)
            content["users"] = users
            await self._creator.send(room_id, acting, POWER_LEVELS, content, state_key="")
        await self._audit.record(
            admin.user_id, "make_room_admin", room_id, {"user_id": user_id, "level": int(level)}
        )

    # ----- blocking ----------------------------------------------------------------------

    async def get_block(self, room_id: str) -> str | None:
        check_room_id(room_id)
        return await self._store.get_block(room_id)

    async def set_block(self, admin: Requester, room_id: str, block: bool) -> None:
        """Block or unblock; a room unknown to this server can be blocked too."""
        check_room_id(room_id)
        await self._store.set_block(
            room_id, admin.user_id if block else None, self._clock.time_msec()
        )
        await self._audit.record(
            admin.user_id, "block_room" if block else "unblock_room", room_id
        )

    # ----- deleting ----------------------------------------------------------------------

    async def start_delete(
        self, admin: Requester, room_id: str, params: DeleteParams
    ) -> str:
        """Start deleting the room in the background; its delete ID. 400 if a delete or
        history purge of the room is already under way (as Synapse)."""
        task, run = await self._begin_delete(admin, room_id, params)
        defer.ensureDeferred(run)
        return task.delete_id

    async def delete_now(
        self, admin: Requester, room_id: str, params: DeleteParams
    ) -> dict[str, Any]:
        """Delete the room and answer when done (the synchronous delete): what was done
        to it. A room this server does not know can be blocked this way, if asked; the
        delete's failure is the request's."""
        check_room_id(room_id)
        if params.block and await self._events.get_room_version(room_id) is None:
            await self.set_block(admin, room_id, True)
            return DeleteTask(delete_id="", room_id=room_id).shutdown_room()
        task, run = await self._begin_delete(admin, room_id, params)
        failure = await run
        if failure is not None:
            raise failure
        return task.shutdown_room()

    async def _begin_delete(
        self, admin: Requester, room_id: str, params: DeleteParams
    ) -> tuple[DeleteTask, Coroutine[Any, Any, MatrixError | None]]:
        await self.require_room(room_id)
        if params.new_room_user_id is not None:
            _, server = split_user_id(params.new_room_user_id)
            if server != self._server_name:
                raise MatrixError(
                    400, Codes.INVALID_PARAM, "User must be our own: new_room_user_id"
                )
        task = DeleteTask(delete_id="", room_id=room_id)
        task.delete_id = await self._tasks.start(DELETE_ROOM, room_id, task.shutdown_room())
        await self._audit.record(
            admin.user_id,
            "delete_room",
            room_id,
            {
                "delete_id": task.delete_id,
                "new_room_user_id": params.new_room_user_id,
                "block": params.block,
                "purge": params.purge,
                "force_purge": params.force_purge,
            },
        )
        return task, self._run_delete(admin, task, params)

    async def delete_status(self, delete_id: str) -> DeleteTask:
        task = await self._tasks.get(delete_id, DELETE_ROOM)
        if task is None:
            raise MatrixError(404, Codes.NOT_FOUND, "delete id not found")
        return DeleteTask.from_record(task)

    async def delete_statuses(self, room_id: str) -> list[DeleteTask]:
        check_room_id(room_id)
        found = await self._tasks.find(TaskQuery(action=DELETE_ROOM, resource_id=room_id))
        if not found:
            raise MatrixError(404, Codes.NOT_FOUND, "No delete task for room_id found")
        return [DeleteTask.from_record(task) for task in found]

    async def recover_interrupted(self) -> None:
        """At the writer's start: the tasks its predecessor left running. A delete that had
        begun its purge (the room's row is gone, so the room is already unknown and only
        rows nobody reads are left) finishes it in the background; any other task is
        marked failed, to be run again if the admin wants (its room is still there)."""
        for task in await self._tasks.interrupted():
            room_gone = await self._events.get_room_version(task.resource_id) is None
            if task.action == DELETE_ROOM and room_gone:
                logger.info("Finishing the purge of %s (%s)", task.resource_id, task.id)
                self._tasks.resume(task)
                defer.ensureDeferred(self._finish_purge(task))
            else:
                logger.warning(
                    "Admin task %s (%s of %s) was interrupted", task.id, task.action,
                    task.resource_id,
                )
                await self._tasks.finish(task.id, task.result, INTERRUPTED)

    async def _finish_purge(self, task: AdminTask) -> None:
        error = None
        try:
            await self._purge_rows(task.id, task.resource_id)
        except Exception as e:
            logger.exception("Finishing the purge of %s failed", task.resource_id)
            error = str(e) or type(e).__name__
        await self._tasks.finish(task.id, task.result, error)

    # ----- purging history -------------------------------------------------------------

    async def start_purge_history(
        self,
        admin: Requester,
        room_id: str,
        event_id: str | None,
        ts: int | None,
        delete_local_events: bool,
    ) -> str:
        """Start deleting the room's history before `event_id` (or the last event sent
        before `ts`) in the background; the purge ID."""
        await self.require_room(room_id)
        if event_id is not None:
            stored = await self._events.get_stored_event(event_id)
            if stored is None or stored.event.room_id != room_id:
                raise MatrixError(404, Codes.NOT_FOUND, "Event not found in this room")
            depth = stored.topological_ordering
        elif ts is not None:
            found = await self._store.depth_before_ts(room_id, ts)
            if found is None:
                raise MatrixError(404, Codes.NOT_FOUND, "There is no event to be purged")
            depth = found
        else:
            raise MatrixError(
                400, Codes.BAD_JSON, "must specify purge_up_to_event_id or purge_up_to_ts"
            )
        purge_id = await self._tasks.start(PURGE_HISTORY, room_id, {})
        await self._audit.record(
            admin.user_id,
            "purge_history",
            room_id,
            {"purge_id": purge_id, "below_depth": depth, "delete_local_events": delete_local_events},
        )
        defer.ensureDeferred(
            self._run_purge_history(purge_id, room_id, depth, delete_local_events)
        )
        return purge_id

    async def purge_history_status(self, purge_id: str) -> AdminTask:
        purge = await self._tasks.get(purge_id, PURGE_HISTORY)
        if purge is None:
            raise MatrixError(404, Codes.NOT_FOUND, "purge id not found")
        return purge

    async def _run_purge_history(
        self, purge_id: str, room_id: str, depth: int, delete_local_events: bool
    ) -> None:
        keep = None if delete_local_events else self._server_name

        after: HistoryPosition | None = None

        async def batch() -> int:
            nonlocal after
            purged, after = await self._store.purge_history_batch(
                room_id, depth, keep, after, self._purge_event_batch
            )
            self._events.forget_room(room_id, purged)
            return len(purged)

        error = None
        try:
            await self._in_batches(purge_id, batch)
        except Exception as e:
            logger.exception("Purging the history of %s failed", room_id)
            error = str(e) or type(e).__name__
        await self._tasks.finish(purge_id, {}, error)

    async def _in_batches(self, task_id: str, batch: Callable[[], Awaitable[int]]) -> None:
        """Run `batch` (one transaction, answering how many rows it deleted) until it
        deletes nothing, waiting while tasks are paused and recording the progress."""
        while True:
            await self._tasks.wait_until_enabled()
            started = self._clock.time_msec()
            done = await batch()
            if not done:
                return
            took_ms = self._clock.time_msec() - started
            await self._tasks.progress(task_id, done, took_ms)
            if self._store.one_connection:
                # On a database of one connection (SQLite), every other request waits for
                # the batch's transaction: leave it to them for as long as the batch held
                # it, so a purge takes at most half of it and a request arriving meanwhile
                # waits for one short batch, not for a run of them. (With a pool, as on
                # PostgreSQL, they run beside the purge: resting would only make it longer.)
                await self._clock.sleep(min(took_ms / 1000, MAX_PURGE_PAUSE_S))

    async def _run_delete(
        self, admin: Requester, task: DeleteTask, params: DeleteParams
    ) -> MatrixError | None:
        """The delete's work; what made it fail, if it did (a MatrixError the synchronous
        delete answers with)."""
        failure: MatrixError | None = None
        try:
            await self._shut_down(admin, task, params)
            await self._tasks.record_result(task.delete_id, task.shutdown_room())
            if params.purge:
                await self._purge(task.delete_id, task.room_id, params.force_purge)
            logger.info("Deleted room %s (%s)", task.room_id, task.delete_id)
        except Exception as e:
            # Any failure ends the task with its reason on record, never a lost Deferred.
            logger.exception("Deleting room %s failed", task.room_id)
            failure = (
                e
                if isinstance(e, MatrixError)
                else MatrixError(500, Codes.UNKNOWN, str(e) or type(e).__name__)
            )
        await self._tasks.finish(
            task.delete_id, task.shutdown_room(), failure.message if failure else None
        )
        return failure

    async def _shut_down(self, admin: Requester, task: DeleteTask, params: DeleteParams) -> None:
        room_id = task.room_id
        if params.block:
            await self._store.set_block(room_id, admin.user_id, self._clock.time_msec())
        new_room_id = None
        if params.new_room_user_id is not None:
            new_room_id = await self._new_room(params)
            task.new_room_id = new_room_id
        # Published no more, so nobody finds it while the members are being removed.
        await self._directory.set_visibility(room_id, False)
        local = [
            user_id
            for membership in ("join", "invite", "knock")
            for user_id in await self._state.get_current_members(room_id, membership)
            if split_user_id(user_id)[1] == self._server_name
        ]
        joined = set(await self._state.get_current_members(room_id, "join"))
        for user_id in sorted(set(local)):
            as_user = _acting_as(user_id)
            try:
                await self._membership.leave(as_user, room_id)
                task.kicked_users.append(user_id)
                if new_room_id is not None and user_id in joined and user_id != params.new_room_user_id:
                    assert params.new_room_user_id is not None
                    await self._membership.invite(
                        _acting_as(params.new_room_user_id), new_room_id, user_id
                    )
                    await self._membership.join(as_user, new_room_id)
            except MatrixError as e:
                logger.warning("Could not remove %s from %s: %s", user_id, room_id, e.message)
                task.failed_to_kick_users.append(user_id)
        if new_room_id is not None:
            task.local_aliases = await self._store.move_aliases(room_id, new_room_id)
        else:
            task.local_aliases = await self._aliases.get_aliases_for_room(room_id)
            for alias in task.local_aliases:
                await self._aliases.delete_alias(alias)

    async def _new_room(self, params: DeleteParams) -> str:
        assert params.new_room_user_id is not None
        owner = _acting_as(params.new_room_user_id)
        room_id = await self._room_creation.create_room(
            owner,
            RoomSpec(
                preset="public_chat",
                name=params.room_name or DEFAULT_NEW_ROOM_NAME,
                # Those moved here may read, not speak (Synapse's choice).
                power_level_content_override={"users_default": -10},
            ),
        )
        await self._creator.send(
            room_id,
            owner.user_id,
            "m.room.message",
            {"msgtype": "m.text", "body": params.message or DEFAULT_NEW_ROOM_MESSAGE},
        )
        return room_id

    async def _purge(self, task_id: str, room_id: str, force: bool) -> None:
        """Remove the room from the database, a bounded batch per transaction."""
        joined = await self._state.get_current_members(room_id, "join")
        local_joined = [u for u in joined if split_user_id(u)[1] == self._server_name]
        if local_joined and not force:
            raise MatrixError(
                400, Codes.UNKNOWN, f"Users are still joined to this room: {local_joined}"
            )
        had_membership = [
            user_id
            for user_id in await self._state.get_current_members(room_id, None)
            if split_user_id(user_id)[1] == self._server_name
        ]
        # The room's row and aliases first: from then on the room is unknown here, so
        # nothing (a remote server's event, a join) adds to it while the batches run.
        await self._store.purge_room_start(room_id)
        await self._purge_rows(task_id, room_id)
        for user_id in had_membership:
            for listener in self.purge_listeners:
                listener(user_id)

    async def _purge_rows(self, task_id: str, room_id: str) -> None:
        """The rest of a purge once the room's row is gone: its events, state groups and
        other rows, a batch per transaction."""
        self._events.forget_room(room_id, ())
        purged: list[str] = []

        async def events() -> int:
            batch = await self._store.purge_event_batch(room_id, self._purge_event_batch)
            purged.extend(batch)
            return len(batch)

        await self._in_batches(task_id, events)
        await self._in_batches(task_id, lambda: self._store.purge_state_group_batch(room_id))
        await self._in_batches(task_id, lambda: self._store.purge_room_row_batch(room_id))
        self._events.forget_room(room_id, purged)
        # Other processes drop their copy of the room's current state too.
        self._state.current_state_replaced(room_id)


    @property
    def _purge_event_batch(self) -> int:
        """Events per purge transaction: few on a database of one connection (SQLite),
        where every other request waits for it; more with a pool, where none does."""
        return PURGE_EVENT_BATCH if self._store.one_connection else PURGE_BATCH


def _acting_as(user_id: str) -> Requester:
    return Requester(
        user_id=user_id, device_id="", token_id="", is_admin=False, ratelimit_override=_NO_LIMIT
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _describe(figures: RoomFigures) -> dict[str, Any]:
    return {
        "room_id": figures.room_id,
        "name": figures.name,
        "canonical_alias": figures.canonical_alias,
        "joined_members": figures.joined_members,
        "joined_local_members": figures.joined_local_members,
        "version": figures.room_version,
        "creator": figures.creator,
        "encryption": figures.encryption,
        "federatable": figures.federatable,
        "public": figures.is_public,
        "join_rules": figures.join_rules,
        "guest_access": figures.guest_access,
        "history_visibility": figures.history_visibility,
        "state_events": figures.state_events,
        "room_type": figures.room_type,
    }
