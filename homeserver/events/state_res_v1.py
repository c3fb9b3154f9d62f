"""State resolution for room version 1 (the original algorithm).

Pure functions; no I/O. Follows the "State resolution" section of rooms/v1.md:

1. R := the union of the state sets, without the conflicting events. A *conflict* is a key
   for which the sets hold *different event IDs*; a key that some sets lack is not a
   conflict (unlike state res v2), so it passes straight through.
2. Resolve the m.room.power_levels conflict, then m.room.join_rules, then m.room.member:
   sort the candidates by ascending depth then descending sha1(event_id); the first goes
   into R unchecked; each next one goes into R if the auth rules allow it in R, and the
   first refusal ends the pass for that key.
3. Every other conflicted key: the candidate with the highest depth and lowest
   sha1(event_id) that the auth rules allow in R.

The caller supplies `event_map`, holding (at least) every event that a conflicted key
names and every event of the unconflicted state that the auth rules may consult.
Candidates missing from it are ignored.

Where the spec is silent, the choices made here (each also noted at its place below):

* sha1 representation (matrix-spec issue #706, open): we compare the 20-byte digest of the
  UTF-8 event ID. Comparing the lowercase hex digest, or the digest as a 160-bit integer,
  gives the same order; only a variable-width decimal rendering would differ.
* Several m.room.member keys in conflict: the text describes one list per step, which only
  makes sense per `(type, state_key)`. Each member key is resolved on its own against R as
  it stands after the join rules step, and all winners are added to R together, so the
  result does not depend on an arbitrary order between keys. (A conflicted membership is
  therefore absent from R while another member key is checked: a kick by a user whose own
  membership is in conflict fails, as that user is not joined in R.) The remaining keys
  are treated the same way against R after the member step.
* No candidate for an "other" key passes the auth rules: the spec's "pick the event ...
  that passes" then picks nothing, and the key is left out of the result. (The three
  auth-type steps always keep at least their first candidate.)
* "No other events affect the authorisation rules" is not quite true (m.room.create and
  m.room.third_party_invite do); we follow the text and treat them as other events.

Facts about Synapse, from its public PRs and the spec's history, for comparison only:
Synapse PR #38 (2015) resolves "normal" events by returning the first in its depth/sha1
order that passes auth, with a separate fall-through ("# Oh dear.") when none does; PR
#1818 treats a conflicted key for which only one event could be loaded as unconflicted;
MSC1442 and PR #3122 describe v1's unconflicted state as the keys where every set holds the
same event *or no entry*, i.e. as above.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence

from homeserver.events.auth import AuthError, check_auth_rules
from homeserver.events.model import Event, StateKey
from homeserver.events.room_versions import RoomVersion, StateResAlgorithm
from homeserver.events.types import JOIN_RULES, MEMBER, POWER_LEVELS

StateIds = Mapping[StateKey, str]
EventMap = Mapping[str, Event]

# The event types whose conflicts are resolved first, in this order, by the "walk up the
# list until an event is refused" process.
AUTH_PASSES = (POWER_LEVELS, JOIN_RULES, MEMBER)


# ----- definitions ------------------------------------------------------------------------


def separate_v1(
    state_sets: Sequence[StateIds],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """R (the union without conflicting events) and the candidates of each conflicted key.

    "A conflict occurs between states where those states have different event_ids for the
    same (event_type, state_key)": a key absent from some sets is not in conflict.
    """
    candidates: dict[StateKey, set[str]] = {}
    for state in state_sets:
        for key, event_id in state.items():
            candidates.setdefault(key, set()).add(event_id)
    unconflicted = {key: next(iter(ids)) for key, ids in candidates.items() if len(ids) == 1}
    conflicted = {key: ids for key, ids in candidates.items() if len(ids) > 1}
    return unconflicted, conflicted


def sha1_of_event_id(event_id: str) -> bytes:
    return hashlib.sha1(event_id.encode("utf-8")).digest()


def preferred_order(events: Iterable[Event]) -> list[Event]:
    """Highest depth first, then lowest sha1(event_id): the "other conflicts" order.

    Distinct event IDs have distinct SHA-1 digests (barring a collision), so this order
    is total and its reverse is exactly "ascending depth then descending sha1(event_id)".
    """
    return sorted(events, key=lambda e: (-e.depth, sha1_of_event_id(e.event_id), e.event_id))


class _WithEntry(Mapping[StateKey, Event]):
    """`base` with one key set to `event`, without copying `base` (R may be large)."""

    def __init__(self, base: Mapping[StateKey, Event], key: StateKey, event: Event) -> None:
        self._base, self._key, self._event = base, key, event

    def __getitem__(self, key: StateKey) -> Event:
        return self._event if key == self._key else self._base[key]

    def __iter__(self) -> Iterator[StateKey]:
        yield self._key
        yield from (k for k in self._base if k != self._key)

    def __len__(self) -> int:
        return len(self._base) + (0 if self._key in self._base else 1)


# ----- the steps --------------------------------------------------------------------------


def resolve_auth_key(key: StateKey, candidates: Iterable[Event], state: Mapping[StateKey, Event]
                     ) -> Event:
    """The power levels / join rules / member pass for one key; `candidates` non-empty.

    Ascending depth then descending sha1: the first is taken as is, each next one replaces
    it while the auth rules allow it in R (with `key` set to the one it would replace).
    """
    ascending = list(reversed(preferred_order(candidates)))
    current = ascending[0]
    for event in ascending[1:]:
        try:
            check_auth_rules(event, _WithEntry(state, key, current))
        except AuthError:
            break
        current = event
    return current


def resolve_other_key(candidates: Iterable[Event], state: Mapping[StateKey, Event]
                      ) -> Event | None:
    """The highest-depth, lowest-sha1 candidate that the auth rules allow in R, if any."""
    for event in preferred_order(candidates):
        try:
            check_auth_rules(event, state)
        except AuthError:
            continue
        return event
    return None


# ----- the algorithm ----------------------------------------------------------------------


def resolve_state_v1(
    room_version: RoomVersion, state_sets: Sequence[StateIds], event_map: EventMap
) -> dict[StateKey, str]:
    """Resolve state sets (maps of (type, state_key) -> event ID) into one, as rooms/v1.md."""
    if room_version.state_res is not StateResAlgorithm.V1:
        raise ValueError(f"room version {room_version.identifier} does not use state res v1")
    if not state_sets:
        return {}
    resolved, conflicted = separate_v1(state_sets)
    if not conflicted:
        return resolved

    # R, as events, for the auth rules (unconflicted entries we do not hold are invisible
    # to them but still part of the result).
    r_events: dict[StateKey, Event] = {}
    for key, event_id in resolved.items():
        event = event_map.get(event_id)
        if event is not None:
            r_events[key] = event

    def candidates_of(key: StateKey) -> list[Event]:
        # Sorted by ID only so that iteration order never depends on set order.
        return [event_map[e] for e in sorted(conflicted[key]) if e in event_map]

    def apply(winners: Mapping[StateKey, Event | None]) -> None:
        for key, event in winners.items():
            if event is not None:
                resolved[key] = event.event_id
                r_events[key] = event

    # Power levels, then join rules, then each member key (independently, see above).
    for event_type in AUTH_PASSES:
        keys = sorted(k for k in conflicted if k[0] == event_type)
        winners: dict[StateKey, Event | None] = {}
        for key in keys:
            candidates = candidates_of(key)
            winners[key] = resolve_auth_key(key, candidates, r_events) if candidates else None
        apply(winners)

    # Everything else: the best candidate that passes auth in R; none passing, no entry.
    others = sorted(k for k in conflicted if k[0] not in AUTH_PASSES)
    apply({key: resolve_other_key(candidates_of(key), r_events) for key in others})
    return resolved
