"""State resolution v2 (room versions 2-11) and v2.1 (room version 12), on hand-built DAGs.

Derived from rooms/fragments/v2-state-res.md and the "State resolution" section of
rooms/v12.md. No server: events are built directly and resolved with the pure functions.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from homeserver.events.model import Event, StateKey
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.events.state_res import (
    auth_chain,
    auth_difference,
    conflicted_subgraph,
    is_power_event,
    mainline,
    mainline_order,
    resolve_state,
    reverse_topological_power_order,
    separate,
)

CREATE = "m.room.create"
MEMBER = "m.room.member"
JOIN_RULES = "m.room.join_rules"
POWER_LEVELS = "m.room.power_levels"
TOPIC = "m.room.topic"

ALICE = "@alice:a.example"
BOB = "@bob:b.example"
CHARLIE = "@charlie:c.example"
DAVE = "@dave:d.example"

VERSIONS = ["2", "6", "10", "11", "12"]


class Dag:
    """A room's auth DAG built by hand. Event IDs are given; auth_events are explicit."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.rv = KNOWN_ROOM_VERSIONS[version]
        self.v12 = version == "12"
        self.events: dict[str, Event] = {}
        self.room_id = "!CREATE" if self.v12 else "!room:a.example"
        content: dict[str, Any] = {"room_version": version}
        if int(version) < 11:
            content["creator"] = ALICE
        self.add("$CREATE", CREATE, ALICE, content, "", [], ts=0)

    def _id(self, name: str) -> str:
        # Room versions 1-2 need domain-qualified event IDs.
        return name if name.startswith("$") else f"${name}"

    def add(self, name: str, etype: str, sender: str, content: Mapping[str, Any],
            state_key: str | None, auth: Iterable[str], ts: int = 1) -> str:
        event_id = self._id(name)
        auth_ids = [self._id(a) for a in auth]
        if self.v12:
            auth_ids = [a for a in auth_ids if a != "$CREATE"]
        refs: list[Any] = (
            [[a, {"sha256": "aGFzaA"}] for a in auth_ids] if self.version in ("1", "2")
            else auth_ids
        )
        pdu: dict[str, Any] = {
            "type": etype,
            "sender": sender,
            "content": dict(content),
            "auth_events": refs,
            "prev_events": [],
            "depth": 1,
            "origin_server_ts": ts,
        }
        if not (self.v12 and etype == CREATE):
            pdu["room_id"] = self.room_id
        if state_key is not None:
            pdu["state_key"] = state_key
        if self.version in ("1", "2"):
            pdu["event_id"] = event_id
        self.events[event_id] = Event(pdu, self.rv, event_id=event_id)
        return event_id

    def pl(self, users: Mapping[str, int]) -> dict[str, Any]:
        all_users = dict(users)
        if self.v12:
            all_users.pop(ALICE, None)  # creators cannot be listed in v12
        return {"users": all_users, "state_default": 50, "events_default": 0}

    def state(self, *names: str) -> dict[StateKey, str]:
        result: dict[StateKey, str] = {}
        for name in names:
            event = self.events[self._id(name)]
            result[event.state_tuple] = event.event_id
        return result

    def resolve(self, *state_sets: Mapping[StateKey, str]) -> dict[StateKey, str]:
        return resolve_state(self.rv, list(state_sets), self.events)


def base_room(version: str) -> Dag:
    """create; alice joins; PL1 (alice 100, bob 50); public join rules; bob and charlie join."""
    d = Dag(version)
    d.add("IMA", MEMBER, ALICE, {"membership": "join"}, ALICE, ["CREATE"], ts=1)
    d.add("PL1", POWER_LEVELS, ALICE, d.pl({ALICE: 100, BOB: 50}), "", ["CREATE", "IMA"], ts=2)
    d.add("JR1", JOIN_RULES, ALICE, {"join_rule": "public"}, "", ["CREATE", "IMA", "PL1"], ts=3)
    d.add("IMB", MEMBER, BOB, {"membership": "join"}, BOB, ["CREATE", "PL1", "JR1"], ts=4)
    d.add("IMC", MEMBER, CHARLIE, {"membership": "join"}, CHARLIE, ["CREATE", "PL1", "JR1"], ts=5)
    return d


BASE = ("CREATE", "IMA", "PL1", "JR1", "IMB", "IMC")


class ClassicCasesTest(unittest.TestCase):
    def test_ban_beats_power_level_change(self) -> None:
        # Alice bans Bob while Bob (concurrently, earlier by the clock) changes the power
        # levels. Alice's higher power orders her ban first; Bob's change then fails.
        for version in VERSIONS:
            d = base_room(version)
            d.add("BAN", MEMBER, ALICE, {"membership": "ban"}, BOB,
                  ["CREATE", "IMA", "PL1", "IMB"], ts=20)
            d.add("PL2", POWER_LEVELS, BOB, d.pl({ALICE: 100, BOB: 50, CHARLIE: 50}), "",
                  ["CREATE", "IMB", "PL1"], ts=10)
            s1 = d.state(*BASE, "BAN")
            s2 = d.state(*BASE, "PL2")
            order = reverse_topological_power_order(["$BAN", "$PL2"], d.events)
            self.assertEqual(order, ["$BAN", "$PL2"], version)
            for sets in ([s1, s2], [s2, s1]):
                resolved = d.resolve(*sets)
                self.assertEqual(resolved[(MEMBER, BOB)], "$BAN", version)
                self.assertEqual(resolved[(POWER_LEVELS, "")], "$PL1", version)

    def test_topics_resolved_by_mainline(self) -> None:
        # T1 is authed by PL1, T2 by the later PL2: T2 is further along the mainline and
        # wins although its origin_server_ts is smaller.
        for version in VERSIONS:
            d = base_room(version)
            d.add("PL2", POWER_LEVELS, ALICE, d.pl({ALICE: 100, BOB: 50, CHARLIE: 10}), "",
                  ["CREATE", "IMA", "PL1"], ts=10)
            d.add("T1", TOPIC, ALICE, {"topic": "one"}, "", ["CREATE", "IMA", "PL1"], ts=30)
            d.add("T2", TOPIC, ALICE, {"topic": "two"}, "", ["CREATE", "IMA", "PL2"], ts=20)
            self.assertEqual(mainline("$PL2", d.events), ["$PL2", "$PL1"])
            self.assertEqual(mainline_order(["$T2", "$T1"], "$PL2", d.events), ["$T1", "$T2"])
            s1 = d.state(*BASE, "PL2", "T1")
            s2 = d.state(*BASE, "PL2", "T2")
            for sets in ([s1, s2], [s2, s1]):
                self.assertEqual(d.resolve(*sets)[(TOPIC, "")], "$T2", version)

    def test_topics_same_mainline_position_use_ts_then_event_id(self) -> None:
        for version in VERSIONS:
            d = base_room(version)
            d.add("TA", TOPIC, ALICE, {"topic": "a"}, "", ["CREATE", "IMA", "PL1"], ts=40)
            d.add("TB", TOPIC, ALICE, {"topic": "b"}, "", ["CREATE", "IMA", "PL1"], ts=30)
            d.add("TC", TOPIC, ALICE, {"topic": "c"}, "", ["CREATE", "IMA", "PL1"], ts=40)
            # The last applied wins: later ts; at equal ts, the larger event ID.
            self.assertEqual(d.resolve(d.state(*BASE, "TA"), d.state(*BASE, "TB"))[(TOPIC, "")],
                             "$TA")
            self.assertEqual(d.resolve(d.state(*BASE, "TA"), d.state(*BASE, "TC"))[(TOPIC, "")],
                             "$TC")

    def test_join_rules_change_beats_join(self) -> None:
        # Alice makes the room invite-only while Dave joins under the public join rule.
        for version in VERSIONS:
            d = base_room(version)
            d.add("JR2", JOIN_RULES, ALICE, {"join_rule": "invite"}, "",
                  ["CREATE", "IMA", "PL1", "JR1"], ts=20)
            d.add("IMD", MEMBER, DAVE, {"membership": "join"}, DAVE,
                  ["CREATE", "PL1", "JR1"], ts=30)
            s1 = d.state(*BASE, "JR2")
            s2 = d.state(*BASE, "IMD")
            s2[(JOIN_RULES, "")] = "$JR1"
            for sets in ([s1, s2], [s2, s1]):
                resolved = d.resolve(*sets)
                self.assertEqual(resolved[(JOIN_RULES, "")], "$JR2", version)
                self.assertNotIn((MEMBER, DAVE), resolved, version)

    def test_unconflicted_state_preserved(self) -> None:
        for version in VERSIONS:
            d = base_room(version)
            d.add("T1", TOPIC, ALICE, {"topic": "one"}, "", ["CREATE", "IMA", "PL1"], ts=20)
            d.add("T2", TOPIC, ALICE, {"topic": "two"}, "", ["CREATE", "IMA", "PL1"], ts=21)
            d.add("LC", MEMBER, CHARLIE, {"membership": "leave"}, CHARLIE,
                  ["CREATE", "PL1", "IMC"], ts=22)
            s1 = d.state(*BASE, "T1", "LC")
            s2 = d.state(*BASE, "T2", "LC")
            resolved = d.resolve(s1, s2)
            for key, value in s1.items():
                if key != (TOPIC, ""):
                    self.assertEqual(resolved[key], value, version)
            self.assertEqual(resolved[(TOPIC, "")], "$T2", version)
            # Trivial cases: one state set, or identical ones, resolve to themselves.
            self.assertEqual(d.resolve(s1), s1)
            self.assertEqual(d.resolve(s1, dict(s1)), s1)
            self.assertEqual(resolve_state(d.rv, [], d.events), {})

    def test_rejected_auth_events_not_used(self) -> None:
        # Dave's join cites JRX, a "public" join rules event that was rejected (Charlie may
        # not send state). Neither state set has join rules, so the key is missing from the
        # partial state; the rejected auth event must not fill it, and the join fails.
        for version in VERSIONS:
            for rejected in (True, False):
                d = base_room(version)
                d.add("JRX", JOIN_RULES, CHARLIE, {"join_rule": "public"}, "",
                      ["CREATE", "IMC", "PL1"], ts=20)
                if rejected:
                    jrx = d.events["$JRX"]
                    d.events["$JRX"] = Event(jrx.pdu, jrx.room_version, jrx.event_id,
                                             rejected_reason="auth")
                d.add("IMD", MEMBER, DAVE, {"membership": "join"}, DAVE,
                      ["CREATE", "PL1", "JRX"], ts=30)
                base = d.state("CREATE", "IMA", "PL1", "IMB", "IMC")
                resolved = d.resolve(base, {**base, (MEMBER, DAVE): "$IMD"})
                # JRX itself is re-checked (it is in the auth difference) and refused.
                self.assertNotIn((JOIN_RULES, ""), resolved, version)
                if rejected:
                    self.assertNotIn((MEMBER, DAVE), resolved, version)
                else:
                    self.assertEqual(resolved[(MEMBER, DAVE)], "$IMD", version)

    def test_v2_and_v21_differ_on_starting_state(self) -> None:
        # Both state sets agree Bob is banned (unconflicted) but disagree on the power
        # levels: PL2 is Bob's change, authed by his earlier join. v2 checks PL2 against the
        # unconflicted state (Bob banned: refused); v2.1 starts from an empty state, so
        # PL2 is checked against its own auth events (Bob joined: allowed).
        results = {}
        for version in ("11", "12"):
            d = base_room(version)
            d.add("BAN", MEMBER, ALICE, {"membership": "ban"}, BOB,
                  ["CREATE", "IMA", "PL1", "IMB"], ts=20)
            d.add("PL2", POWER_LEVELS, BOB, d.pl({ALICE: 100, BOB: 50, CHARLIE: 50}), "",
                  ["CREATE", "IMB", "PL1"], ts=10)
            s1 = d.state(*BASE, "BAN")
            s2 = d.state(*BASE, "BAN", "PL2")
            resolved = d.resolve(s1, s2)
            self.assertEqual(resolved[(MEMBER, BOB)], "$BAN")
            results[version] = resolved[(POWER_LEVELS, "")]
        self.assertEqual(results, {"11": "$PL1", "12": "$PL2"})


class DefinitionsTest(unittest.TestCase):
    def test_power_events(self) -> None:
        d = base_room("11")
        d.add("KICK", MEMBER, ALICE, {"membership": "leave"}, BOB, ["CREATE"], ts=9)
        d.add("LEAVE", MEMBER, BOB, {"membership": "leave"}, BOB, ["CREATE"], ts=9)
        e = d.events
        self.assertTrue(is_power_event(e["$PL1"]))
        self.assertTrue(is_power_event(e["$JR1"]))
        self.assertTrue(is_power_event(e["$KICK"]))
        self.assertFalse(is_power_event(e["$LEAVE"]))
        self.assertFalse(is_power_event(e["$IMB"]))
        self.assertFalse(is_power_event(e["$CREATE"]))

    def test_separate_and_auth_difference(self) -> None:
        d = base_room("11")
        d.add("T1", TOPIC, ALICE, {"topic": "one"}, "", ["CREATE", "IMA", "PL1"], ts=20)
        d.add("PL2", POWER_LEVELS, ALICE, d.pl({ALICE: 100}), "", ["CREATE", "IMA", "PL1"], ts=21)
        d.add("T2", TOPIC, ALICE, {"topic": "two"}, "", ["CREATE", "IMA", "PL2"], ts=22)
        s1 = d.state("CREATE", "IMA", "T1")
        s2 = d.state("CREATE", "IMA", "T2", "IMB")
        unconflicted, conflicted = separate([s1, s2])
        self.assertEqual(unconflicted, d.state("CREATE", "IMA"))
        self.assertEqual(conflicted, {"$T1", "$T2", "$IMB"})
        self.assertEqual(auth_chain(["$T2"], d.events), {"$CREATE", "$IMA", "$PL1", "$PL2"})
        # C1 = {CREATE, IMA, PL1}; C2 adds PL2 and JR1 (from IMB's chain).
        self.assertEqual(auth_difference([s1, s2], d.events), {"$PL2", "$JR1"})

    def test_reverse_topological_power_order(self) -> None:
        # Auth edges come first; among candidates, higher sender power, then lower ts, then
        # lower event ID.
        for version in VERSIONS:
            d = base_room(version)
            d.add("PB", POWER_LEVELS, BOB, d.pl({ALICE: 100, BOB: 50}), "",
                  ["CREATE", "IMB", "PL1"], ts=1)
            d.add("PA", POWER_LEVELS, ALICE, d.pl({ALICE: 100, BOB: 50}), "",
                  ["CREATE", "IMA", "PB"], ts=0)
            d.add("JA", JOIN_RULES, ALICE, {"join_rule": "public"}, "",
                  ["CREATE", "IMA", "PL1"], ts=9)
            d.add("JB", JOIN_RULES, ALICE, {"join_rule": "public"}, "",
                  ["CREATE", "IMA", "PL1"], ts=9)
            order = reverse_topological_power_order(["$PA", "$PB", "$JB", "$JA"], d.events)
            # PA (Alice, ts 0) must wait for PB, which it cites; Alice's JA/JB come first.
            self.assertEqual(order, ["$JA", "$JB", "$PB", "$PA"], version)

    def test_conflicted_subgraph(self) -> None:
        # A chain X1 <- M <- X2 (X2 cites M cites X1), with X1 and X2 conflicted: M is on
        # the path; N (cited by nothing conflicted beyond X1) is not.
        d = base_room("12")
        d.add("X1", POWER_LEVELS, ALICE, d.pl({}), "", ["CREATE", "IMA"], ts=10)
        d.add("M", POWER_LEVELS, ALICE, d.pl({}), "", ["CREATE", "IMA", "X1"], ts=11)
        d.add("X2", POWER_LEVELS, ALICE, d.pl({}), "", ["CREATE", "IMA", "M"], ts=12)
        sub = conflicted_subgraph({"$X1", "$X2"}, d.events)
        self.assertEqual(sub, {"$X1", "$M", "$X2"})
        self.assertEqual(conflicted_subgraph({"$X2", "$IMB"}, d.events), {"$X2", "$IMB"})


# ----- properties -------------------------------------------------------------------------


def pool(version: str) -> Dag:
    """A room with several concurrent branches, to draw state sets from."""
    d = base_room(version)
    d.add("BAN", MEMBER, ALICE, {"membership": "ban"}, BOB, ["CREATE", "IMA", "PL1", "IMB"], 20)
    d.add("PL2", POWER_LEVELS, BOB, d.pl({ALICE: 100, BOB: 50, CHARLIE: 50}), "",
          ["CREATE", "IMB", "PL1"], 10)
    d.add("PL3", POWER_LEVELS, ALICE, d.pl({ALICE: 100, CHARLIE: 20}), "",
          ["CREATE", "IMA", "PL1"], 10)
    d.add("JR2", JOIN_RULES, ALICE, {"join_rule": "invite"}, "", ["CREATE", "IMA", "PL1", "JR1"], 15)
    d.add("IMD", MEMBER, DAVE, {"membership": "join"}, DAVE, ["CREATE", "PL1", "JR1"], 15)
    d.add("T1", TOPIC, BOB, {"topic": "one"}, "", ["CREATE", "IMB", "PL1"], 25)
    d.add("T2", TOPIC, CHARLIE, {"topic": "two"}, "", ["CREATE", "IMC", "PL2"], 25)
    d.add("T3", TOPIC, ALICE, {"topic": "three"}, "", ["CREATE", "IMA", "PL3"], 5)
    d.add("LC", MEMBER, CHARLIE, {"membership": "leave"}, CHARLIE, ["CREATE", "PL1", "IMC"], 30)
    d.add("KC", MEMBER, BOB, {"membership": "leave"}, CHARLIE, ["CREATE", "IMB", "PL2", "IMC"], 31)
    return d


POOLS = {v: pool(v) for v in ("6", "11", "12")}


def candidates(d: Dag) -> dict[StateKey, list[str | None]]:
    by_key: dict[StateKey, list[str | None]] = {}
    for event in d.events.values():
        if event.type == CREATE:
            continue
        by_key.setdefault(event.state_tuple, [None]).append(event.event_id)
    return by_key


@st.composite
def scenario(draw: Any) -> tuple[str, list[dict[StateKey, str]]]:
    version = draw(st.sampled_from(sorted(POOLS)))
    d = POOLS[version]
    options = candidates(d)
    n = draw(st.integers(min_value=1, max_value=4))
    state_sets = []
    for _ in range(n):
        state: dict[StateKey, str] = {(CREATE, ""): "$CREATE"}
        for key in sorted(options):
            choice = draw(st.sampled_from(options[key]))
            if choice is not None:
                state[key] = choice
        state_sets.append(state)
    return version, state_sets


class PropertiesTest(unittest.TestCase):
    @settings(max_examples=150, deadline=None)
    @given(scenario(), st.randoms(use_true_random=False))
    def test_independent_of_input_order(
        self, case: tuple[str, list[dict[StateKey, str]]], rnd: random.Random
    ) -> None:
        version, state_sets = case
        d = POOLS[version]
        expected = resolve_state(d.rv, state_sets, d.events)
        # Deterministic.
        self.assertEqual(resolve_state(d.rv, state_sets, d.events), expected)
        # Order of the state sets.
        shuffled_sets = list(state_sets)
        rnd.shuffle(shuffled_sets)
        # Iteration order of event_map and of each state map.
        items = list(d.events.items())
        rnd.shuffle(items)
        shuffled_map = dict(items)
        reordered_sets = []
        for s in shuffled_sets:
            pairs = list(s.items())
            rnd.shuffle(pairs)
            reordered_sets.append(dict(pairs))
        self.assertEqual(resolve_state(d.rv, reordered_sets, shuffled_map), expected)
        # Duplicating a state set changes nothing.
        self.assertEqual(resolve_state(d.rv, state_sets + [state_sets[0]], d.events), expected)
        # The result only names events from the inputs, and keeps the unconflicted state.
        unconflicted, _ = separate(state_sets)
        for key, value in unconflicted.items():
            self.assertEqual(expected[key], value)
        for key, value in expected.items():
            self.assertEqual(d.events[value].state_tuple, key)
