"""Push rules applied to every event a local user can see: the actions the persister stores
with the event, and the seam pushers hang on.

`PushActionGenerator.for_event` runs before the event's write transaction (the persister
calls it; the room's writer lock is held, so the room's state is the state the event
extends). It evaluates each local joined member's rules, except the sender's (and a local
invitee's, for `.m.rule.invite_for_me`), and returns what the persister writes in the
event's own transaction: the users grouped by outcome (`ActionGroup`), one row for the
event (see `storage.stores.push_actions`). Everything it needs is held in memory once warm:

- each user's compiled ruleset (`CompiledRuleset`), read for all the room's users in one
  transaction on a miss, and forgotten when their `m.push_rules` account data changes;
- per room, the local joined members' display names, the member count and the power levels,
  rebuilt only when the state store's current state of the room changes, and the members
  grouped by the ruleset they share (`Members`), each group evaluated at once
  (`evaluate_members`): a thousand members who changed no rule cost a few set lookups per
  event, and the users the fallback rule matches come as one tuple reused event after
  event.

After the commit, `committed` moves the cached notification counts, schedules the rotation
of the event's actions into the counts summary (`SummaryRotator`), and then calls each of
`notification_listeners` (pushers) with every user a new action notifies (for a listener
added with `add_notification_listener(listener, interested)`, only those it is interested
in):

    await listener(user_id, room_id, event, actions, counts)

`actions` is the matching rule's actions (a tuple of the spec's action values) and `counts`
the user's `RoomCounts` in that room, this event included, when held in memory (a syncing
user's are), else None: nothing is read for users no listener cares about. Listeners run in the
background, after the event is published; one that raises is logged and the others still
run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from homeserver.caches import LruCache
from homeserver.clock import Clock
from homeserver.events.auth import user_power_level
from homeserver.events.model import Event
from homeserver.events.room_versions import RoomVersion
from homeserver.events.types import CREATE, MEMBER, POWER_LEVELS
from homeserver.push.counts import NotificationCounts, SummaryRotator
from homeserver.push.evaluator import (
    DEFAULT_NOTIFICATION_LEVEL,
    SELF,
    CompiledRuleset,
    EventView,
    Members,
    PushContext,
    compile_ruleset,
    evaluate_members,
    thread_id_of,
)
from homeserver.push.rules import UserPushRules, build_ruleset
from storage.persister import EventContext
from storage.stores.account_data import AccountDataStore
from storage.stores.events import EventStore
from storage.stores.push_actions import ActionGroup, PushActionBatch, RoomCounts
from storage.stores.state import StateKey, StateStore

logger = logging.getLogger(__name__)

PUSH_RULES = "m.push_rules"
JsonDict = dict[str, Any]
# Compiled rulesets held: every local member of a few big rooms.
RULESETS_CACHE_SIZE = 100_000
# Distinct stored rulesets compiled (users who changed nothing share one).
SHARED_RULESETS_CACHE_SIZE = 10_000
# Rooms whose push-relevant state is held.
ROOM_CACHE_SIZE = 10_000

NotificationListener = Callable[
    [str, str, Event, tuple[Any, ...], RoomCounts | None], Awaitable[None]
]


@dataclass(frozen=True)
class _RoomPushState:
    """What evaluation needs of a room's current state, for one version of it."""

    state: Mapping[StateKey, str]
    member_count: int
    # Local joined members -> display name in the room (None without one).
    local_members: Mapping[str, str | None]
    # (type, state_key) -> event, for the power level rules: create and power levels.
    power_state: Mapping[StateKey, Event]
    notification_levels: Mapping[str, int]
    room_version: RoomVersion
    # [rules generation, [(ruleset, its members), ...]]: the local members grouped by the
    # ruleset they share, as long as nobody's rules changed (saves a thousand cache
    # lookups per event in a big room, and keeps each group's indexes).
    rulesets: list[Any] = field(default_factory=list, compare=False)


class PushActionGenerator:
    def __init__(
        self,
        server_name: str,
        clock: Clock,
        events: EventStore,
        state: StateStore,
        account_data: AccountDataStore,
        counts: NotificationCounts,
        rotator: SummaryRotator | None = None,
    ) -> None:
        self._rotator = rotator
        self._suffix = ":" + server_name
        self._clock = clock
        self._events = events
        self._state = state
        self._account_data = account_data
        self._counts = counts
        # user_id -> their compiled ruleset; users with the same stored rules (most have
        # none) share one, found by the stored content's JSON.
        self._rulesets: LruCache[str, CompiledRuleset] = LruCache(
            "push_rulesets", RULESETS_CACHE_SIZE
        )
        self._shared_rulesets: LruCache[str, CompiledRuleset] = LruCache(
            "push_shared_rulesets", SHARED_RULESETS_CACHE_SIZE
        )
        # Bumped by every change of anyone's rules: a load that overlapped one is used but
        # not cached.
        self._rules_generation = 0
        self._rooms: LruCache[str, _RoomPushState] = LruCache("push_room_state", ROOM_CACHE_SIZE)
        self.notification_listeners: list[NotificationListener] = []
        # A listener -> the users it wants to hear of (see `add_notification_listener`).
        self._interest: dict[NotificationListener, Callable[[], Collection[str]]] = {}

    # ----- rules ---------------------------------------------------------------------------

    def account_data_changed(self, user_id: str, room_id: str | None, data_type: str) -> None:
        if room_id is None and data_type == PUSH_RULES:
            self._rules_generation += 1
            self._rulesets.pop(user_id, None)

    async def rulesets_of(self, user_ids: list[str]) -> dict[str, CompiledRuleset]:
        found, missing = self._rulesets.get_many(user_ids)
        if not missing:
            return found
        generation = self._rules_generation
        stored = await self._account_data.get_global_for_users(missing, PUSH_RULES)
        for user_id in missing:
            ruleset = self._compiled(user_id, stored.get(user_id))
            found[user_id] = ruleset
            if generation == self._rules_generation:
                self._rulesets.set(user_id, ruleset)
        return found

    def _compiled(self, user_id: str, content: JsonDict | None) -> CompiledRuleset:
        """The ruleset of stored rules `content`, compiled once for every user with them:
        the owner's own ID is `SELF` in it."""
        key = json.dumps(content, sort_keys=True)
        ruleset = self._shared_rulesets.get(key)
        if ruleset is None:
            ruleset = compile_ruleset(
                user_id, build_ruleset(SELF, UserPushRules.from_content(content))
            )
            self._shared_rulesets.set(key, ruleset)
        return ruleset

    async def _member_rulesets(
        self, room: _RoomPushState
    ) -> list[tuple[CompiledRuleset, Members]]:
        """The local members grouped by the ruleset they share."""
        if room.rulesets and room.rulesets[0] == self._rules_generation:
            return room.rulesets[1]  # type: ignore[no-any-return]
        generation = self._rules_generation
        rulesets = await self.rulesets_of(list(room.local_members))
        by_ruleset: dict[int, tuple[CompiledRuleset, dict[str, str | None]]] = {}
        for user_id, name in room.local_members.items():
            ruleset = rulesets.get(user_id)
            if ruleset is not None:
                by_ruleset.setdefault(id(ruleset), (ruleset, {}))[1][user_id] = name
        grouped = [(ruleset, Members(names)) for ruleset, names in by_ruleset.values()]
        if generation == self._rules_generation:
            room.rulesets[:] = [generation, grouped]
        return grouped

    # ----- rooms ---------------------------------------------------------------------------

    async def _room_state(self, room_id: str) -> _RoomPushState | None:
        state = await self._state.get_current_state_ids(room_id)
        cached = self._rooms.get(room_id)
        if cached is not None and cached.state is state:
            return cached
        room_version = await self._events.get_room_version(room_id)
        if room_version is None:
            return None
        joined = await self._state.get_current_members(room_id, "join")
        # (A user ID with a space cannot be ours, and the stored actions list users
        # space-separated: `encode_groups`.)
        local = {u: e for u, e in joined.items() if u.endswith(self._suffix) and " " not in u}
        wanted = [*local.values()]
        wanted += [state[k] for k in ((CREATE, ""), (POWER_LEVELS, "")) if k in state]
        loaded = await self._events.get_events(wanted)
        names: dict[str, str | None] = {}
        for user_id, event_id in local.items():
            member = loaded.get(event_id)
            name = member.content.get("displayname") if member is not None else None
            names[user_id] = name if isinstance(name, str) else None
        power_state = {
            k: loaded[state[k]]
            for k in ((CREATE, ""), (POWER_LEVELS, ""))
            if k in state and state[k] in loaded
        }
        levels: dict[str, int] = {}
        power_levels = power_state.get((POWER_LEVELS, ""))
        notifications = power_levels.content.get("notifications") if power_levels else None
        if isinstance(notifications, Mapping):
            for key, value in notifications.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    levels[key] = value
                elif isinstance(value, str) and value.lstrip("-").isdigit():
                    levels[key] = int(value)  # room versions before 10 allow strings
        room = _RoomPushState(state, len(joined), names, power_state, levels, room_version)
        self._rooms.set(room_id, room)
        return room

    # ----- evaluation ----------------------------------------------------------------------

    async def for_event(self, event: Event, context: EventContext) -> PushActionBatch | None:
        """The actions to store with the event: None for events no one is notified of
        (outliers, backfilled history, rejected or soft-failed events)."""
        if (
            context.outlier
            or context.backfilled
            or context.soft_failed
            or event.rejected_reason is not None
        ):
            return None
        room = await self._room_state(event.room_id)
        if room is None:
            return None
        sender = event.sender
        thread_id = thread_id_of(event.content)
        local_sender = sender if sender.endswith(self._suffix) else None
        # Every local member but the sender, grouped by the ruleset they share.
        groups = list(await self._member_rulesets(room))
        target = event.state_key
        if (
            event.type == MEMBER
            and target is not None
            and target.endswith(self._suffix)
            and " " not in target
            and target != sender
            and target not in room.local_members
        ):
            # An invitee (or anyone else acted upon) is no member, but
            # `.m.rule.invite_for_me` is for them.
            invitee = await self.rulesets_of([target])
            if target in invitee:
                groups.append((invitee[target], Members({target: None})))
        ts = self._clock.time_msec()
        if not any(members.all_but(sender) for _, members in groups):
            return PushActionBatch((), thread_id, local_sender, ts)
        sender_power = user_power_level(sender, room.power_state, room.room_version)
        levels = room.notification_levels or {"room": DEFAULT_NOTIFICATION_LEVEL}
        view = EventView({**event.pdu, "room_id": event.room_id, "event_id": event.event_id})
        # The room's context: each member brings their own ID and display name.
        ctx = PushContext(room.member_count, None, sender_power, levels)
        # Users with the same outcome (most of a room, for most events) share one group.
        outcomes: dict[tuple[str, bool, bool], list[Sequence[str]]] = {}
        for rule, users in evaluate_members(view, ctx, groups, sender):
            outcomes.setdefault((rule.actions_json, rule.notify, rule.highlight), []).append(
                users
            )
        return PushActionBatch(
            tuple(
                ActionGroup(
                    actions, notify, highlight,
                    # One part (the usual case): the tuple as evaluation gave it.
                    parts[0] if len(parts) == 1 and isinstance(parts[0], tuple)
                    else tuple(u for part in parts for u in part),
                )
                for (actions, notify, highlight), parts in outcomes.items()
            ),
            thread_id,
            local_sender,
            ts,
        )

    def committed(self, event: Event, stream_ordering: int, batch: PushActionBatch) -> None:
        """After the event's transaction committed: move the counts, then (in the
        background) tell the listeners."""
        self._counts.actions_committed(event.room_id, stream_ordering, batch)
        if batch.groups and self._rotator is not None:
            self._rotator.queued()
        if self.notification_listeners and batch.groups:
            defer.ensureDeferred(self._tell_listeners(event, batch))

    def commit_uncertain(self, event: Event, batch: PushActionBatch) -> None:
        """The event's transaction failed, perhaps after committing: what is held of these
        users' counts in the room is in doubt."""
        for group in batch.groups:
            for user_id in group.users:
                self._counts.forget(user_id, event.room_id)
        if batch.local_sender is not None:
            self._counts.forget(batch.local_sender, event.room_id)

    async def stop(self) -> None:
        if self._rotator is not None:
            await self._rotator.stop()

    def add_notification_listener(
        self,
        listener: NotificationListener,
        interested: Callable[[], Collection[str]] | None = None,
    ) -> None:
        """Call `listener` for each user a new action notifies; with `interested`, only for
        the users in what it returns (a pusher bridge: the users with a pusher), so a
        thousand-member room costs a set lookup per notified user, not a call."""
        self.notification_listeners.append(listener)
        if interested is not None:
            self._interest[listener] = interested

    async def _tell_listeners(self, event: Event, batch: PushActionBatch) -> None:
        for listener in list(self.notification_listeners):
            interested = self._interest.get(listener)
            wanted = interested() if interested is not None else None
            if wanted is not None and not wanted:
                continue
            for group in batch.groups:
                if not group.notify:
                    continue
                users: Iterable[str] = group.users
                if wanted is not None:
                    users = [u for u in group.users if u in wanted]
                actions = tuple(json.loads(group.actions))
                for user_id in users:
                    # What is held (a syncing user's counts always are); no read for the
                    # others.
                    counts = self._counts.held(user_id, event.room_id)
                    try:
                        await listener(user_id, event.room_id, event, actions, counts)
                    except Exception:
                        logger.exception("A notification listener failed for %s", user_id)
