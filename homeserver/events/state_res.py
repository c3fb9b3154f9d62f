"""State resolution v2 (room versions 2-11) and v2.1 (room version 12).

Pure functions; no I/O. Follows rooms/fragments/v2-state-res.md and the "State resolution"
section of rooms/v12.md. The caller supplies `event_map`, which must hold every event named
by the state sets and every event in their auth chains; events missing from it are ignored.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence

from homeserver.events.auth import (
    AuthError,
    auth_types_for_event,
    check_auth_rules,
    user_power_level,
)
from homeserver.events.hashing import room_id_from_create_event_id
from homeserver.events.model import Event, StateKey
from homeserver.events.room_versions import RoomVersion, StateResAlgorithm
from homeserver.events.types import CREATE, JOIN_RULES, MEMBER, POWER_LEVELS

StateIds = Mapping[StateKey, str]
EventMap = Mapping[str, Event]


# ----- definitions ------------------------------------------------------------------------


def is_power_event(event: Event) -> bool:
    """m.room.power_levels, m.room.join_rules, or a leave/ban of someone else."""
    if not event.is_state:
        return False
    if event.type in (POWER_LEVELS, JOIN_RULES):
        return True
    if event.type == MEMBER:
        return event.membership in ("leave", "ban") and event.sender != event.state_key
    return False


def separate(state_sets: Sequence[StateIds]) -> tuple[dict[StateKey, str], set[str]]:
    """The unconflicted state map and the conflicted state set (of event IDs)."""
    unconflicted: dict[StateKey, str] = {}
    conflicted: set[str] = set()
    keys: set[StateKey] = set()
    for state in state_sets:
        keys.update(state)
    for key in keys:
        values = {state.get(key) for state in state_sets}
        if len(values) == 1 and None not in values:
            unconflicted[key] = next(iter(values))  # type: ignore[assignment]
        else:
            conflicted.update(v for v in values if v is not None)
    return unconflicted, conflicted


def auth_chain(event_ids: Iterable[str], event_map: EventMap) -> set[str]:
    """Every event reachable from `event_ids` along `auth_events` (excluding the starts,
    unless one is reachable from another)."""
    chain: set[str] = set()
    stack: list[str] = []
    for event_id in event_ids:
        event = event_map.get(event_id)
        if event is not None:
            stack.extend(event.auth_event_ids)
    while stack:
        event_id = stack.pop()
        if event_id in chain:
            continue
        chain.add(event_id)
        event = event_map.get(event_id)
        if event is not None:
            stack.extend(a for a in event.auth_event_ids if a not in chain)
    return chain


def auth_difference(state_sets: Sequence[StateIds], event_map: EventMap) -> set[str]:
    """∪ C_i − ∩ C_i, where C_i is the full auth chain of state set i."""
    chains = [auth_chain(state.values(), event_map) for state in state_sets]
    if not chains:
        return set()
    union: set[str] = set().union(*chains)
    common = chains[0].intersection(*chains[1:])
    return union - common


def conflicted_subgraph(conflicted: set[str], event_map: EventMap) -> set[str]:
    """Room v12: every event on an auth_events path between two conflicted events."""
    # Events reachable from the conflicted set (including it) ...
    reachable = auth_chain(conflicted, event_map) | conflicted
    # ... which can themselves reach a conflicted event: walk auth edges backwards.
    cited_by: dict[str, list[str]] = {}
    for event_id in reachable:
        event = event_map.get(event_id)
        if event is None:
            continue
        for auth_id in event.auth_event_ids:
            cited_by.setdefault(auth_id, []).append(event_id)
    reaches: set[str] = set()
    stack = list(conflicted)
    while stack:
        event_id = stack.pop()
        if event_id in reaches:
            continue
        reaches.add(event_id)
        stack.extend(cited_by.get(event_id, ()))
    return reachable & reaches


def full_conflicted_set(
    room_version: RoomVersion, state_sets: Sequence[StateIds], conflicted: set[str],
    event_map: EventMap,
) -> set[str]:
    full = conflicted | auth_difference(state_sets, event_map)
    if room_version.state_res is StateResAlgorithm.V2_1:
        full |= conflicted_subgraph(conflicted, event_map)
    return full


# ----- orderings --------------------------------------------------------------------------


def find_create_event(event: Event, event_map: EventMap) -> Event | None:
    """Room v12: the create event of `event`'s room (not cited in auth_events)."""
    room_id = event.room_id
    if room_id.startswith("!"):
        # The room ID is the create event's ID with `!` for `$`.
        direct = event_map.get("$" + room_id[1:])
        if direct is not None and direct.type == CREATE and direct.state_key == "":
            return direct
    candidates = sorted(
        (e for e in event_map.values() if e.type == CREATE and e.state_key == ""),
        key=lambda e: e.event_id,
    )
    for candidate in candidates:
        if room_id_from_create_event_id(candidate.event_id) == event.room_id:
            return candidate
    return candidates[0] if candidates else None


def _auth_events_state(event: Event, event_map: EventMap) -> dict[StateKey, Event]:
    """The event's (present, non-rejected, state) auth events as a state map."""
    state: dict[StateKey, Event] = {}
    for auth_id in event.auth_event_ids:
        auth_event = event_map.get(auth_id)
        if auth_event is None or not auth_event.is_state or auth_event.rejected_reason is not None:
            continue
        state[auth_event.state_tuple] = auth_event
    return state


def sender_power_level(event: Event, event_map: EventMap) -> float:
    """The sender's power level as seen from the event's own auth events."""
    state = _auth_events_state(event, event_map)
    rv = event.room_version
    if rv.room_id_is_create_hash and (CREATE, "") not in state:
        create = find_create_event(event, event_map)
        if create is not None:
            state[(CREATE, "")] = create
    return user_power_level(event.sender, state, rv)


def reverse_topological_power_order(event_ids: Iterable[str], event_map: EventMap) -> list[str]:
    """Kahn's algorithm over the auth DAG restricted to `event_ids`, earliest first, picking
    the smallest candidate by (higher sender power, lower origin_server_ts, lower event_id).
    """
    ids = {e for e in event_ids if e in event_map}
    # Edges auth_event -> event: an event may be output once all its auth events are.
    pending: dict[str, int] = {}
    dependents: dict[str, list[str]] = {e: [] for e in ids}
    for event_id in ids:
        auth_ids = {a for a in event_map[event_id].auth_event_ids if a in ids}
        pending[event_id] = len(auth_ids)
        for auth_id in auth_ids:
            dependents[auth_id].append(event_id)

    def key(event_id: str) -> tuple[float, int, str]:
        event = event_map[event_id]
        return (-sender_power_level(event, event_map), event.origin_server_ts, event_id)

    heap = [key(e) for e in ids if pending[e] == 0]
    heapq.heapify(heap)
    order: list[str] = []
    while heap:
        _, _, event_id = heapq.heappop(heap)
        order.append(event_id)
        for dependent in dependents[event_id]:
            pending[dependent] -= 1
            if pending[dependent] == 0:
                heapq.heappush(heap, key(dependent))
    return order


def _power_levels_in_auth_events(event: Event, event_map: EventMap) -> Event | None:
    for auth_id in event.auth_event_ids:
        auth_event = event_map.get(auth_id)
        if auth_event is not None and auth_event.type == POWER_LEVELS and auth_event.state_key == "":
            return auth_event
    return None


def mainline(power_levels_id: str | None, event_map: EventMap) -> list[str]:
    """[P_0, P_1, ..., P_n]: P_0 and the chain of power levels events each cites."""
    result: list[str] = []
    event = event_map.get(power_levels_id) if power_levels_id is not None else None
    while event is not None and event.event_id not in result:
        result.append(event.event_id)
        event = _power_levels_in_auth_events(event, event_map)
    return result


def mainline_position(event: Event, positions: Mapping[str, int], event_map: EventMap) -> float:
    """The index in the mainline of the first of e_1, e_2, ... on it, else infinity."""
    seen: set[str] = set()
    current = _power_levels_in_auth_events(event, event_map)
    while current is not None and current.event_id not in seen:
        if current.event_id in positions:
            return positions[current.event_id]
        seen.add(current.event_id)
        current = _power_levels_in_auth_events(current, event_map)
    return float("inf")


def mainline_order(
    event_ids: Iterable[str], power_levels_id: str | None, event_map: EventMap
) -> list[str]:
    """Sort by (greater mainline position, lower origin_server_ts, lower event_id)."""
    positions = {e: i for i, e in enumerate(mainline(power_levels_id, event_map))}

    def key(event_id: str) -> tuple[float, int, str]:
        event = event_map[event_id]
        return (-mainline_position(event, positions, event_map), event.origin_server_ts, event_id)

    return sorted((e for e in event_ids if e in event_map), key=key)


# ----- iterative auth checks --------------------------------------------------------------


def iterative_auth_checks(
    initial: StateIds, event_ids: Sequence[str], event_map: EventMap
) -> dict[StateKey, str]:
    """Apply each state event in order to the state if the auth rules allow it there.

    The state checked against is the partial state for every key the rules need, falling
    back to the event's own (non-rejected) auth events for keys the partial state lacks.
    """
    state = dict(initial)
    for event_id in event_ids:
        event = event_map.get(event_id)
        if event is None or not event.is_state:
            continue
        rv = event.room_version
        auth_state = _auth_events_state(event, event_map)
        for key in auth_types_for_event(event.type, event.sender, event.state_key,
                                        event.content, rv):
            current_id = state.get(key)
            current = event_map.get(current_id) if current_id is not None else None
            if current is not None:
                auth_state[key] = current
        create: Event | None = None
        if rv.room_id_is_create_hash and event.type != CREATE:
            create = find_create_event(event, event_map)
        try:
            check_auth_rules(event, auth_state, create)
        except AuthError:
            continue
        state[event.state_tuple] = event_id
    return state


# ----- the algorithm ----------------------------------------------------------------------


def resolve_state(
    room_version: RoomVersion, state_sets: Sequence[StateIds], event_map: EventMap
) -> dict[StateKey, str]:
    """Resolve state sets (maps of (type, state_key) -> event ID) into one."""
    if room_version.state_res not in (StateResAlgorithm.V2, StateResAlgorithm.V2_1):
        raise ValueError(f"room version {room_version.identifier} does not use state res v2")
    if not state_sets:
        return {}
    unconflicted, conflicted = separate(state_sets)
    if not conflicted:
        return unconflicted
    full = full_conflicted_set(room_version, state_sets, conflicted, event_map)
    full = {e for e in full if e in event_map}

    # 1. Power events in the full conflicted set, plus their auth chains within it.
    power = {e for e in full if is_power_event(event_map[e])}
    selected = set(power)
    for event_id in power:
        selected |= auth_chain([event_id], event_map) & full
    power_order = reverse_topological_power_order(selected, event_map)

    # 2. Iterative auth checks from the unconflicted state (v2) or empty state (v2.1).
    start: StateIds = {} if room_version.state_res is StateResAlgorithm.V2_1 else unconflicted
    partial = iterative_auth_checks(start, power_order, event_map)

    # 3. The rest, by mainline ordering on the resolved power levels.
    remaining = full - selected
    others = mainline_order(remaining, partial.get((POWER_LEVELS, "")), event_map)

    # 4. Iterative auth checks on top of the partial state.
    resolved = iterative_auth_checks(partial, others, event_map)

    # 5. The unconflicted state wins.
    resolved.update(unconflicted)
    return resolved
