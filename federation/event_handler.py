"""Events arriving from other servers: checked, authorised and persisted (server-server API,
"Checks performed on receipt of a PDU"), with gaps in the DAG filled from the sender.

Order of the checks, per the spec:
1. valid format, 2. valid signatures, 3. valid content hash (else a redacted copy is used)
   -- `federation.event_checks`, before anything here;
4. passes the auth rules against its own auth events, else rejected;
5. passes them against the state before it (resolved across its prev_events), else
   rejected;
6. passes them against the room's current state, else soft-failed (kept, hidden).
Rejected events are stored too (so they are not fetched again) but never become state.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from federation.client import build_path
from federation.errors import FederationError
from federation.event_checks import InvalidPdu, check_signatures_and_hashes, parse_pdu
from homeserver.errors import Codes, MatrixError
from homeserver.events.auth import (
    CREATE,
    AuthError,
    auth_types_for_event,
    check_auth_events,
    check_auth_rules,
)
from homeserver.events.hashing import room_id_from_create_event_id
from homeserver.events.model import Event, StateKey
from homeserver.events.room_versions import RoomVersion, StateResAlgorithm
from homeserver.events.state_res import resolve_state, separate
from homeserver.events.state_res_v1 import resolve_state_v1
from storage.persister import EventContext
from storage.stores.events import StoredEvent

if TYPE_CHECKING:
    from federation.keys import KeyRing
    from homeserver.rooms.creator import EventCreator
    from storage.persister import EventPersister
    from storage.stores.events import EventStore
    from storage.stores.federation_events import FederationEventStore
    from storage.stores.state import StateStore

logger = logging.getLogger(__name__)

# get_missing_events asks for at most this many events at a time (what Synapse serves).
MISSING_EVENTS_LIMIT = 20
# A gap before a received event is filled with at most this many events; beyond that the
# rest is left to backfill, so one event cannot make us fetch a room's whole history.
MISSING_EVENTS_MAX = 2000
# With more than this many events of a state snapshot unknown, /state fetches them all at
# once instead of one /event request each.
FETCH_INDIVIDUALLY_MAX = 20

StateMap = dict[StateKey, str]


class FederationEventHandler:
    def __init__(
        self,
        server_name: str,
        keyring: KeyRing,
        client: Any,
        events: EventStore,
        fed_events: FederationEventStore,
        state: StateStore,
        persister: EventPersister,
        creator: EventCreator,
    ) -> None:
        self._server_name = server_name
        self._keyring = keyring
        self._client = client
        self._events = events
        self._fed_events = fed_events
        self._state = state
        self._persister = persister
        self._creator = creator
        # FederationMembership's, joined by `build_federation`: keeps a leave or ban
        # answering a local user's invite or knock to a room we are not in (True when it
        # took the event).
        self.out_of_room_membership: Callable[[str, Event], Awaitable[bool]] | None = None

    # ----- checking PDUs ------------------------------------------------------------------

    async def check_pdu(
        self, pdu: Any, room_version: RoomVersion, room_id: str | None = None
    ) -> Event:
        """Steps 1-3; raises InvalidPdu or a FederationError when the PDU is to be dropped."""
        event = parse_pdu(pdu, room_version, expected_room_id=room_id)
        return await check_signatures_and_hashes(self._keyring, event)

    async def check_pdus(
        self, pdus: Iterable[Any], room_version: RoomVersion, room_id: str | None = None
    ) -> list[Event]:
        """Steps 1-3 for many PDUs; those failing are dropped (and logged)."""
        checked: list[Event] = []
        for pdu in pdus:
            try:
                checked.append(await self.check_pdu(pdu, room_version, room_id))
            except (InvalidPdu, FederationError) as e:
                logger.warning("dropping a PDU: %s", e)
        return checked

    # ----- receiving a PDU (/send) --------------------------------------------------------

    async def on_receive_pdu(self, origin: str, event: Event) -> None:
        """Handle a checked PDU pushed to us in a transaction. Raises MatrixError for a
        problem to report in the transaction's per-PDU results."""
        room_id = event.room_id
        async with self._creator.room_writer(room_id):
            held = await self._fed_events.get_held_event_ids([event.event_id], False)
            if held:
                return
            if self.out_of_room_membership is not None and \
                    await self.out_of_room_membership(origin, event):
                return
            prevs = event.prev_event_ids
            missing = set(prevs) - await self._fed_events.get_held_event_ids(prevs, False)
            if missing:
                await self._fetch_missing_events(origin, event)
                missing -= await self._fed_events.get_held_event_ids(list(missing), False)
                if missing:
                    # The sender pushed it, so it holds its prev_events and should have
                    # served them. Taking the state there from it instead would let one
                    # event (which may become the room's only forward extremity) dictate
                    # the room's state: dropped, as Synapse does.
                    raise MatrixError(
                        403, Codes.FORBIDDEN,
                        f"The sender did not serve the prev_events {sorted(missing)}",
                    )
            await self.process_event(origin, event)

    async def _fetch_missing_events(self, origin: str, event: Event) -> None:
        """Ask the sender for the events between our forward extremities and `event`, round
        after round (a server answers at most 20 at a time), until every prev_event is held
        or fetched, or `MISSING_EVENTS_MAX` is reached; then process them, oldest first.
        A sender catching up after an outage may send only its newest event in the room
        (Synapse does), so this is how the rest of the backlog reaches our users. Whatever is
        still missing before the fetched events is a gap: the state there is fetched
        (`_state_after_remote`) and the gap is filled by backfill when a client paginates
        into it. (A pushed event whose own prev_events are still missing is dropped.)"""
        room_id = event.room_id
        forward = await self._events.get_forward_extremities(room_id)
        extremities = [eid for eid, _ in forward]
        min_depth = min((depth for _, depth in forward), default=0)
        fetched: dict[str, Event] = {}
        frontier = [event]
        while frontier and len(fetched) < MISSING_EVENTS_MAX:
            new = await self._get_missing_events_round(
                origin, event, extremities, [e.event_id for e in frontier], min_depth, fetched
            )
            if not new:
                break
            # The next round walks back from the fetched events whose prev_events we still
            # lack (neither held nor fetched), the oldest first.
            wanted = {p for e in fetched.values() for p in e.prev_event_ids if p not in fetched}
            lacking = wanted - await self._fed_events.get_held_event_ids(wanted, False)
            frontier = sorted(
                (e for e in fetched.values() if not lacking.isdisjoint(e.prev_event_ids)),
                key=lambda e: (e.depth, e.event_id),
            )[:MISSING_EVENTS_LIMIT]
        if len(fetched) >= MISSING_EVENTS_MAX:
            logger.info(
                "gap before %s in %s from %s: fetched %d events, leaving the rest to backfill",
                event.event_id, room_id, origin, len(fetched),
            )
        for missing_event in sorted(fetched.values(), key=lambda e: (e.depth, e.event_id)):
            if await self._fed_events.get_held_event_ids([missing_event.event_id], False):
                continue
            try:
                await self.process_event(origin, missing_event)
            except (MatrixError, FederationError) as e:
                logger.info("missing event %s not processed: %s", missing_event.event_id, e)

    async def _get_missing_events_round(
        self,
        origin: str,
        event: Event,
        earliest: list[str],
        latest: list[str],
        min_depth: int,
        fetched: dict[str, Event],
    ) -> list[Event]:
        """One get_missing_events request; the checked events it brought that are new to
        `fetched` (added to it)."""
        room_id = event.room_id
        try:
            response = await self._client.post_json(
                origin,
                build_path("/_matrix/federation/v1/get_missing_events/%s", room_id),
                {
                    "earliest_events": earliest,
                    "latest_events": latest,
                    "limit": MISSING_EVENTS_LIMIT,
                    "min_depth": min_depth,
                },
            )
        except FederationError as e:
            logger.info("get_missing_events from %s failed: %s", origin, e)
            return []
        pdus = response.get("events") if isinstance(response, dict) else None
        if not isinstance(pdus, list):
            return []
        checked = await self.check_pdus(pdus[:MISSING_EVENTS_LIMIT], event.room_version, room_id)
        new = [pdu for pdu in checked if pdu.event_id not in fetched and pdu.event_id != event.event_id]
        for pdu in new:
            fetched[pdu.event_id] = pdu
        return new

    async def process_event(
        self, origin: str, event: Event, backfilled: bool = False
    ) -> StoredEvent:
        """Steps 4-6 and persistence of a checked event; the caller holds the room's writer
        lock (`EventCreator.room_writer`). Missing auth events and the state at missing
        prev_events are fetched from `origin`."""
        room_version = event.room_version
        room_id = event.room_id

        # 4. Against its own auth events.
        auth_events = await self._auth_events_of(origin, event)
        rejected: str | None = None
        try:
            by_key = check_auth_events(event, auth_events.values())
            check_auth_rules(event, by_key, create_event=await self._create_event(event, by_key))
        except AuthError as e:
            rejected = f"auth events: {e}"

        # 5. Against the state before it.
        state_before, base_group, single_group = await self._state_before(origin, event)
        if rejected is None:
            try:
                await self._check_against_state(event, state_before)
            except AuthError as e:
                rejected = f"state before: {e}"
        if rejected is not None:
            logger.info("rejecting %s from %s: %s", event.event_id, origin, rejected)
            event = Event(event.pdu, room_version, event.event_id, rejected_reason=rejected)
            # Kept with the state before it, which is also the state after it (a rejected
            # event changes nothing): a later event citing it as a prev_event has its
            # state here rather than asking a server that may not serve it.
            return await self._persist(
                room_id,
                event,
                EventContext(
                    state_group_before=single_group,
                    state_before=None if single_group is not None else state_before,
                    state_before_base=base_group,
                    updates_current_state=False,
                ),
            )

        state_after = dict(state_before)
        if event.is_state:
            state_after[event.state_tuple] = event.event_id
        if backfilled:
            context = EventContext(
                state_group_before=single_group,
                state_before=None if single_group is not None else state_before,
                state_before_base=base_group,
                backfilled=True,
                updates_current_state=False,
            )
            return await self._persist(room_id, event, context)

        # 6. Against the current state: soft failure.
        current = dict(await self._state.get_current_state_ids(room_id))
        soft_failed = False
        try:
            await self._check_against_state(event, current)
        except AuthError as e:
            logger.info("soft-failing %s from %s: %s", event.event_id, origin, e)
            soft_failed = True

        context = EventContext(
            state_group_before=single_group,
            state_before=None if single_group is not None else state_before,
            state_before_base=base_group,
            soft_failed=soft_failed,
            replaces_state=state_before.get(event.state_tuple) if event.is_state else None,
        )
        if not soft_failed:
            extremities = {eid for eid, _ in await self._events.get_forward_extremities(room_id)}
            remaining = extremities - set(event.prev_event_ids)
            current_group = await self._events.get_current_state_group(room_id)
            if remaining:
                # A fork: the room's state is the resolution of every branch.
                context.current_state = await self.resolve(
                    room_version, [current, state_after], extra=[event]
                )
            elif single_group is None or single_group != current_group:
                context.current_state = state_after
        return await self._persist(room_id, event, context)

    async def _persist(self, room_id: str, event: Event, context: EventContext) -> StoredEvent:
        context.replace_outlier = True
        self._events.forget_event(event.event_id)
        try:
            return await self._creator.persist_and_notify(room_id, event, context)
        finally:
            self._events.forget_event(event.event_id)

    async def _check_against_state(self, event: Event, state: Mapping[StateKey, str]) -> None:
        rv = event.room_version
        keys = auth_types_for_event(event.type, event.sender, event.state_key, event.content, rv)
        wanted = {k: state[k] for k in keys if k in state}
        if (CREATE, "") in state:
            wanted[(CREATE, "")] = state[(CREATE, "")]
        loaded = await self._events.get_events(wanted.values())
        state_events = {k: loaded[eid] for k, eid in wanted.items() if eid in loaded}
        check_auth_rules(event, state_events, create_event=await self._create_event(event, state_events))

    async def _create_event(
        self, event: Event, state: Mapping[StateKey, Event]
    ) -> Event | None:
        if (CREATE, "") in state:
            return state[(CREATE, "")]
        if event.room_version.room_id_is_create_hash and event.type != CREATE:
            create_id = "$" + event.room_id[1:]
            return await self._events.get_event(create_id)
        return None

    async def _auth_events_of(self, origin: str, event: Event) -> dict[str, Event]:
        """The event's auth events, fetched from `origin` (with their own auth chains,
        checked and stored as outliers) when we lack any."""
        wanted = event.auth_event_ids
        have = await self._events.get_events(wanted)
        if all(eid in have for eid in wanted):
            return have
        try:
            response = await self._client.get_json(
                origin,
                build_path("/_matrix/federation/v1/event_auth/%s/%s", event.room_id,
                           event.event_id),
            )
        except FederationError as e:
            logger.info("event_auth for %s from %s failed: %s", event.event_id, origin, e)
            return have
        pdus = response.get("auth_chain") if isinstance(response, dict) else None
        if isinstance(pdus, list):
            fetched = await self.check_pdus(pdus, event.room_version, event.room_id)
            await self.store_outliers(fetched)
        return await self._events.get_events(wanted)

    async def store_outliers(self, events: Sequence[Event]) -> None:
        """Auth-check events against their own auth events (in depth order, so each one's
        auth events come first) and store them as outliers; failures are stored rejected."""
        by_id: dict[str, Event] = {e.event_id: e for e in events}
        unknown_auth = {a for e in events for a in e.auth_event_ids if a not in by_id}
        if unknown_auth:
            by_id.update(
                {eid: ev for eid, ev in (await self._events.get_events(unknown_auth)).items()}
            )
        ordered = sorted(events, key=lambda e: (e.depth, e.event_id))
        checked: dict[str, Event] = {}
        for event in ordered:
            if event.event_id in checked:
                continue
            reason: str | None = None
            try:
                auth = [by_id[a] for a in event.auth_event_ids if a in by_id]
                if len(auth) != len(set(event.auth_event_ids)):
                    raise AuthError("missing auth events")
                auth = [checked.get(a.event_id, a) for a in auth]
                by_key = check_auth_events(event, auth)
                create = by_key.get((CREATE, ""))
                if create is None and event.room_version.room_id_is_create_hash:
                    create_id = "$" + event.room_id[1:]
                    create = checked.get(create_id) or by_id.get(create_id)
                check_auth_rules(event, by_key, create_event=create)
            except AuthError as e:
                reason = f"auth events: {e}"
            if reason is not None:
                logger.info("outlier %s rejected: %s", event.event_id, reason)
                event = Event(event.pdu, event.room_version, event.event_id,
                              rejected_reason=reason)
            checked[event.event_id] = event
            by_id[event.event_id] = event
        await self._persister.persist_outliers(checked.values())

    # ----- state --------------------------------------------------------------------------

    async def _state_before(
        self, origin: str, event: Event
    ) -> tuple[StateMap, int | None, int | None]:
        """(state before the event, a group to store it as a delta against, the group that
        is exactly that state when one is)."""
        prevs = list(dict.fromkeys(event.prev_event_ids))
        groups = await self._events.get_state_groups_for_events(prevs)
        held = await self._events.get_stored_events(prevs)
        states: list[StateMap] = []
        after_groups: list[int] = []
        for prev in prevs:
            stored = held.get(prev)
            group = groups.get(prev, (None, None))[1]
            # Timeline events, and soft-failed ones (flagged as outliers, but with state).
            known_state = stored is not None and group is not None and (
                not stored.outlier or stored.internal_metadata.get("soft_failed")
            )
            if known_state and group is not None:
                after_groups.append(group)
                states.append(dict(await self._state.get_state_group(group)))
            else:
                states.append(await self._state_after_remote(origin, event.room_id, prev,
                                                             event.room_version))
        if len(set(after_groups)) == 1 and len(after_groups) == len(prevs):
            return states[0], None, after_groups[0]
        resolved = await self.resolve(event.room_version, states)
        return resolved, (after_groups[0] if after_groups else None), None

    async def _state_after_remote(
        self, origin: str, room_id: str, event_id: str, room_version: RoomVersion
    ) -> StateMap:
        """The state after an event we do not have, as `origin` says: /state_ids gives the
        state before it; the events we lack are fetched, checked and kept as outliers."""
        try:
            response = await self._client.get_json(
                origin,
                build_path("/_matrix/federation/v1/state_ids/%s", room_id),
                args={"event_id": [event_id]},
            )
        except FederationError as e:
            raise MatrixError(502, Codes.UNKNOWN, f"Cannot get the state at {event_id}: {e}") from None
        pdu_ids = response.get("pdu_ids") if isinstance(response, dict) else None
        chain_ids = response.get("auth_chain_ids") if isinstance(response, dict) else None
        if not isinstance(pdu_ids, list) or not isinstance(chain_ids, list) or not all(
            isinstance(x, str) for x in pdu_ids + chain_ids
        ):
            raise MatrixError(502, Codes.UNKNOWN, f"Bad /state_ids answer for {event_id}")
        wanted = set(pdu_ids) | set(chain_ids) | {event_id}
        have = await self._fed_events.get_held_event_ids(wanted)
        lacking = wanted - have
        if len(lacking) > FETCH_INDIVIDUALLY_MAX:
            await self._fetch_state_snapshot(origin, room_id, event_id, room_version)
        else:
            await self._fetch_events(origin, room_id, lacking, room_version)
        events = await self._events.get_events(set(pdu_ids) | {event_id})
        state: StateMap = {}
        for eid in pdu_ids:
            ev = events.get(eid)
            if ev is not None and ev.is_state and ev.rejected_reason is None:
                state[ev.state_tuple] = eid
        prev_event = events.get(event_id)
        if prev_event is not None and prev_event.is_state and prev_event.rejected_reason is None:
            state[prev_event.state_tuple] = event_id
        return state

    async def _fetch_state_snapshot(
        self, origin: str, room_id: str, event_id: str, room_version: RoomVersion
    ) -> None:
        try:
            response = await self._client.get_json(
                origin,
                build_path("/_matrix/federation/v1/state/%s", room_id),
                args={"event_id": [event_id]},
            )
        except FederationError as e:
            raise MatrixError(502, Codes.UNKNOWN, f"Cannot get the state at {event_id}: {e}") from None
        if not isinstance(response, dict):
            raise MatrixError(502, Codes.UNKNOWN, "Bad /state answer")
        pdus = [*(response.get("pdus") or []), *(response.get("auth_chain") or [])]
        await self.store_outliers(await self.check_pdus(pdus, room_version, room_id))
        await self._fetch_events(origin, room_id, {event_id}, room_version)

    async def _fetch_events(
        self, origin: str, room_id: str, event_ids: Iterable[str], room_version: RoomVersion
    ) -> None:
        fetched: list[Event] = []
        for event_id in event_ids:
            if await self._fed_events.get_held_event_ids([event_id]):
                continue
            try:
                response = await self._client.get_json(
                    origin, build_path("/_matrix/federation/v1/event/%s", event_id)
                )
            except FederationError as e:
                logger.info("cannot fetch %s from %s: %s", event_id, origin, e)
                continue
            pdus = response.get("pdus") if isinstance(response, dict) else None
            if isinstance(pdus, list):
                for event in await self.check_pdus(pdus[:1], room_version, room_id):
                    if event.event_id == event_id:
                        fetched.append(event)
        if fetched:
            await self.store_outliers(fetched)

    async def resolve(self, room_version: RoomVersion, states: Sequence[Mapping[StateKey, str]],
                      extra: Sequence[Event] = ()) -> StateMap:
        """State resolution over full state maps, loading the events it needs; `extra` are
        events the states name that are not stored yet (the event being processed)."""
        if not states:
            return {}
        unconflicted, conflicted = separate(states)
        if not conflicted:
            return dict(unconflicted)
        unstored = {e.event_id: e for e in extra}
        all_ids = {eid for s in states for eid in s.values()}
        their_auth = {a for e in unstored.values() for a in e.auth_event_ids}
        chain = await self._fed_events.get_auth_chain_ids((all_ids - unstored.keys()) | their_auth)
        event_map = {
            **await self._events.get_events((all_ids | chain | their_auth) - unstored.keys()),
            **unstored,
        }
        if room_version.state_res is StateResAlgorithm.V1:
            return resolve_state_v1(room_version, states, event_map)
        return resolve_state(room_version, states, event_map)

    # ----- helpers for membership and backfill ----------------------------------------------

    async def backfill(
        self,
        room_id: str,
        find_servers: Callable[[], Awaitable[Sequence[str]]],
        limit: int = 100,
        cited_between: tuple[int | None, int | None] = (None, None),
    ) -> bool:
        """Ask the room's other servers (`find_servers()`, asked only when something is
        missing) for history before what we hold (our backward extremities); True when
        anything new was stored. `cited_between` (lowest, highest; None: no bound) keeps to
        the gaps below events of those depths: where a reader is."""
        lowest, highest = cited_between
        extremities = [
            (event_id, depth)
            for event_id, depth in await self._fed_events.get_backward_extremities(room_id)
            if (lowest is None or depth >= lowest) and (highest is None or depth <= highest)
        ]
        if not extremities:
            return False
        room_version = await self._events.get_room_version(room_id)
        if room_version is None:
            return False
        # The most recent gaps first: those are what a reader scrolling back reaches.
        extremities.sort(key=lambda e: e[1], reverse=True)
        wanted = [eid for eid, _ in extremities[:5]]
        for server in await find_servers():
            try:
                response = await self._client.get_json(
                    server,
                    build_path("/_matrix/federation/v1/backfill/%s", room_id),
                    args={"v": wanted, "limit": [str(limit)]},
                )
            except FederationError as e:
                logger.info("backfill of %s from %s failed: %s", room_id, server, e)
                continue
            pdus = response.get("pdus") if isinstance(response, dict) else None
            if not isinstance(pdus, list):
                continue
            events = await self.check_pdus(pdus[:limit], room_version, room_id)
            if await self.process_backfilled(server, events):
                return True
        return False

    async def process_backfilled(self, origin: str, events: Sequence[Event]) -> int:
        """Persist backfilled events (oldest first) below the sync stream; returns how many
        were new."""
        count = 0
        for event in sorted(events, key=lambda e: (e.depth, e.event_id)):
            async with self._creator.room_writer(event.room_id):
                if await self._fed_events.get_held_event_ids([event.event_id], False):
                    continue
                try:
                    await self.process_event(origin, event, backfilled=True)
                    count += 1
                except (MatrixError, FederationError) as e:
                    logger.info("backfilled event %s not stored: %s", event.event_id, e)
        return count


def room_id_matches_create(room_id: str, create: Event) -> bool:
    if create.room_version.room_id_is_create_hash:
        return room_id == room_id_from_create_event_id(create.event_id)
    return create.room_id == room_id
