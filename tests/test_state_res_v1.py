"""State resolution for room version 1 (the original algorithm), on hand-built rooms.

Derived from the "State resolution" section of rooms/v1.md. No server: events are built
directly (room version 1 carries the event ID in the PDU) and resolved with the pure
function.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.trial import unittest

from homeserver.events.model import Event, StateKey
from homeserver.events.room_versions import V1, V2
from homeserver.events.state_res_v1 import preferred_order, resolve_state_v1, separate_v1

CREATE = "m.room.create"
MEMBER = "m.room.member"
JOIN_RULES = "m.room.join_rules"
POWER_LEVELS = "m.room.power_levels"
TOPIC = "m.room.topic"
NAME = "m.room.name"

ALICE = "@alice:a.example"
BOB = "@bob:b.example"
CHARLIE = "@charlie:c.example"
DAVE = "@dave:d.example"


def eid(name: str) -> str:
    return f"${name}:a.example"


def sha1(event_id: str) -> bytes:
    return hashlib.sha1(event_id.encode("utf-8")).digest()


class Room:
    """A version 1 room built by hand: given names, depths and auth events."""

    def __init__(self) -> None:
        self.room_id = "!room:a.example"
        self.events: dict[str, Event] = {}
        self.add("CREATE", CREATE, ALICE, {"creator": ALICE}, "", [], depth=1)

    def add(self, name: str, etype: str, sender: str, content: Mapping[str, Any],
            state_key: str | None, auth: Iterable[str], depth: int,
            prev: Iterable[str] = ()) -> str:
        event_id = eid(name)
        pdu: dict[str, Any] = {
            "event_id": event_id,
            "room_id": self.room_id,
            "type": etype,
            "sender": sender,
            "content": dict(content),
            "auth_events": [[eid(a), {"sha256": "aGFzaA"}] for a in auth],
            "prev_events": [[eid(p), {"sha256": "aGFzaA"}] for p in prev],
            "depth": depth,
            "origin_server_ts": depth * 1000,
            "hashes": {"sha256": "aGFzaA"},
            "signatures": {},
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        self.events[event_id] = Event(pdu, V1, event_id=event_id)
        return event_id

    def state(self, *names: str) -> dict[StateKey, str]:
        result: dict[StateKey, str] = {}
        for name in names:
            event = self.events[eid(name)]
            result[event.state_tuple] = event.event_id
        return result

    def resolve(self, *state_sets: Mapping[StateKey, str]) -> dict[StateKey, str]:
        return resolve_state_v1(V1, list(state_sets), self.events)

    def resolve_both_ways(self, s1: Mapping[StateKey, str], s2: Mapping[StateKey, str]
                          ) -> dict[StateKey, str]:
        first = self.resolve(s1, s2)
        assert first == self.resolve(s2, s1)
        return first


def pl(users: Mapping[str, int]) -> dict[str, Any]:
    return {"users": dict(users), "state_default": 50, "events_default": 0, "ban": 50,
            "kick": 50}


def base_room() -> Room:
    """create; alice joins; PL1 (alice 100, bob 50); public join rules; bob, charlie join."""
    r = Room()
    r.add("IMA", MEMBER, ALICE, {"membership": "join"}, ALICE, ["CREATE"], depth=2,
          prev=["CREATE"])
    r.add("PL1", POWER_LEVELS, ALICE, pl({ALICE: 100, BOB: 50}), "", ["CREATE", "IMA"], depth=3)
    r.add("JR1", JOIN_RULES, ALICE, {"join_rule": "public"}, "", ["CREATE", "IMA", "PL1"],
          depth=4)
    r.add("IMB", MEMBER, BOB, {"membership": "join"}, BOB, ["CREATE", "PL1", "JR1"], depth=5)
    r.add("IMC", MEMBER, CHARLIE, {"membership": "join"}, CHARLIE, ["CREATE", "PL1", "JR1"],
          depth=6)
    return r


BASE = ("CREATE", "IMA", "PL1", "JR1", "IMB", "IMC")
AUTH_A = ["CREATE", "IMA", "PL1"]


class UnconflictedStateTest(unittest.TestCase):
    def test_identical_state_sets_resolve_to_themselves(self) -> None:
        r = base_room()
        s = r.state(*BASE)
        self.assertEqual(r.resolve(s), s)
        self.assertEqual(r.resolve(s, dict(s), dict(s)), s)
        self.assertEqual(resolve_state_v1(V1, [], r.events), {})

    def test_unconflicted_keys_pass_through_around_a_conflict(self) -> None:
        r = base_room()
        r.add("T1", TOPIC, ALICE, {"topic": "one"}, "", AUTH_A, depth=7)
        r.add("T2", TOPIC, ALICE, {"topic": "two"}, "", AUTH_A, depth=8)
        s1 = r.state(*BASE, "T1")
        s2 = r.state(*BASE, "T2")
        resolved = r.resolve_both_ways(s1, s2)
        for key, value in r.state(*BASE).items():
            self.assertEqual(resolved[key], value)
        self.assertEqual(set(resolved), set(s1))

    def test_key_missing_from_one_set_is_not_a_conflict(self) -> None:
        # "A conflict occurs between states where those states have different event_ids for
        # the same (event_type, state_key)": a key only one set has is kept without any auth
        # check, even when it would fail one (Dave's join to an invite-only room). This is
        # where v1 differs from v2, whose unconflicted map needs the key in every set.
        r = base_room()
        r.add("JR2", JOIN_RULES, ALICE, {"join_rule": "invite"}, "", [*AUTH_A, "JR1"], depth=7)
        r.add("IMD", MEMBER, DAVE, {"membership": "join"}, DAVE, ["CREATE", "PL1", "JR1"],
              depth=8)
        s1 = r.state(*BASE, "JR2")
        s2 = r.state(*BASE, "IMD")
        unconflicted, conflicted = separate_v1([s1, s2])
        self.assertEqual(set(conflicted), {(JOIN_RULES, "")})
        self.assertEqual(unconflicted[(MEMBER, DAVE)], eid("IMD"))
        resolved = r.resolve_both_ways(s1, s2)
        self.assertEqual(resolved[(JOIN_RULES, "")], eid("JR2"))
        self.assertEqual(resolved[(MEMBER, DAVE)], eid("IMD"))

    def test_other_algorithms_are_refused(self) -> None:
        r = base_room()
        with self.assertRaises(ValueError):
            resolve_state_v1(V2, [r.state(*BASE)], r.events)


class PowerLevelsTest(unittest.TestCase):
    def test_unauthorised_power_levels_change_is_refused(self) -> None:
        # Alice (100) gives Charlie 50 at depth 7; Bob (50) promotes himself to 100 at
        # depth 8. Ascending depth: PL2 first (taken as is), then PL3 is checked against
        # R with PL2 and refused (Bob cannot set a level above his own).
        r = base_room()
        r.add("PL2", POWER_LEVELS, ALICE, pl({ALICE: 100, BOB: 50, CHARLIE: 50}), "", AUTH_A,
              depth=7)
        r.add("PL3", POWER_LEVELS, BOB, pl({ALICE: 100, BOB: 100}), "",
              ["CREATE", "IMB", "PL1"], depth=8)
        resolved = r.resolve_both_ways(r.state(*BASE, "PL2"), r.state(*BASE, "PL3"))
        self.assertEqual(resolved[(POWER_LEVELS, "")], eid("PL2"))

    def test_authorised_later_power_levels_change_wins(self) -> None:
        # Bob's PL3 (depth 8) only gives Charlie 40, which he may: it replaces PL2.
        r = base_room()
        r.add("PL2", POWER_LEVELS, ALICE, pl({ALICE: 100, BOB: 50}) | {"topic_level": 1}, "",
              AUTH_A, depth=7)
        r.add("PL3", POWER_LEVELS, BOB, pl({ALICE: 100, BOB: 50, CHARLIE: 40}), "",
              ["CREATE", "IMB", "PL1"], depth=8)
        resolved = r.resolve_both_ways(r.state(*BASE, "PL2"), r.state(*BASE, "PL3"))
        self.assertEqual(resolved[(POWER_LEVELS, "")], eid("PL3"))

    def test_lowest_depth_power_levels_is_taken_unchecked(self) -> None:
        # "Add the first event in the list to R" without an auth check: Charlie's forged
        # PL (depth 7, never authorised) goes in, and Alice's later PL is then refused
        # against it because it demotes Charlie, who is not below her there. The spec's
        # warning about v1 ("admins and moderators could lose their power level") in action.
        r = base_room()
        r.add("PLX", POWER_LEVELS, CHARLIE, pl({ALICE: 100, BOB: 50, CHARLIE: 100}), "",
              ["CREATE", "IMC", "PL1"], depth=7)
        r.add("PL2", POWER_LEVELS, ALICE, pl({ALICE: 100, BOB: 50, DAVE: 10}), "", AUTH_A,
              depth=9)
        resolved = r.resolve_both_ways(r.state(*BASE, "PLX"), r.state(*BASE, "PL2"))
        self.assertEqual(resolved[(POWER_LEVELS, "")], eid("PLX"))

    def test_walk_stops_at_first_refusal(self) -> None:
        # Three candidates: PL2 (7) in, PL3 (8, Bob self-promotes) refused, PL4 (9) would be
        # allowed after PL2 but is never considered: "stop and continue below".
        r = base_room()
        r.add("PL2", POWER_LEVELS, ALICE, pl({ALICE: 100, BOB: 50, CHARLIE: 10}), "", AUTH_A,
              depth=7)
        r.add("PL3", POWER_LEVELS, BOB, pl({ALICE: 100, BOB: 100, CHARLIE: 10}), "",
              ["CREATE", "IMB", "PL1"], depth=8)
        r.add("PL4", POWER_LEVELS, ALICE, pl({ALICE: 100, BOB: 50, CHARLIE: 20}), "", AUTH_A,
              depth=9)
        sets = [r.state(*BASE, "PL2"), r.state(*BASE, "PL3"), r.state(*BASE, "PL4")]
        self.assertEqual(r.resolve(*sets)[(POWER_LEVELS, "")], eid("PL2"))


class MembershipTest(unittest.TestCase):
    def test_ban_beats_join_whichever_is_deeper(self) -> None:
        for join_depth, ban_depth in ((7, 8), (8, 7)):
            r = base_room()
            r.add("IMD", MEMBER, DAVE, {"membership": "join"}, DAVE, ["CREATE", "PL1", "JR1"],
                  depth=join_depth)
            r.add("BAN", MEMBER, ALICE, {"membership": "ban"}, DAVE, AUTH_A, depth=ban_depth)
            resolved = r.resolve_both_ways(r.state(*BASE, "IMD"), r.state(*BASE, "BAN"))
            # Join first: the ban is allowed on top of it. Ban first: the join is refused.
            self.assertEqual(resolved[(MEMBER, DAVE)], eid("BAN"), (join_depth, ban_depth))

    def test_ban_by_demoted_moderator_is_refused(self) -> None:
        # Power levels are resolved first: PL2 (Alice demotes Bob to 0) wins, so Bob's ban
        # of Dave, checked against R with PL2, is refused and Dave's join stays.
        r = base_room()
        r.add("PL2", POWER_LEVELS, ALICE, pl({ALICE: 100}), "", AUTH_A, depth=7)
        r.add("IMD", MEMBER, DAVE, {"membership": "join"}, DAVE, ["CREATE", "PL1", "JR1"],
              depth=8)
        r.add("BAN", MEMBER, BOB, {"membership": "ban"}, DAVE, ["CREATE", "PL1", "IMB"],
              depth=9)
        s1 = r.state(*BASE, "PL2", "IMD")
        s2 = r.state(*BASE, "BAN")
        resolved = r.resolve_both_ways(s1, s2)
        self.assertEqual(resolved[(POWER_LEVELS, "")], eid("PL2"))
        self.assertEqual(resolved[(MEMBER, DAVE)], eid("IMD"))

    def test_join_checked_against_resolved_join_rules(self) -> None:
        # Join rules before members: JR2 (invite) wins; Dave's later leave->join is then
        # refused, so his earlier leave (depth 8, first in the list) stays.
        r = base_room()
        r.add("JR2", JOIN_RULES, ALICE, {"join_rule": "invite"}, "", [*AUTH_A, "JR1"], depth=7)
        r.add("IMD", MEMBER, DAVE, {"membership": "join"}, DAVE, ["CREATE", "PL1", "JR1"],
              depth=7)
        r.add("LD", MEMBER, DAVE, {"membership": "leave"}, DAVE, ["CREATE", "PL1", "IMD"],
              depth=8)
        r.add("IMD2", MEMBER, DAVE, {"membership": "join"}, DAVE, ["CREATE", "PL1", "JR1", "LD"],
              depth=9)
        s1 = r.state(*BASE, "JR2", "LD")
        s2 = r.state(*BASE, "IMD2")
        resolved = r.resolve_both_ways(s1, s2)
        self.assertEqual(resolved[(JOIN_RULES, "")], eid("JR2"))
        self.assertEqual(resolved[(MEMBER, DAVE)], eid("LD"))
        # With the public join rules in both sets, the rejoin wins.
        resolved = r.resolve_both_ways(r.state(*BASE, "LD"), r.state(*BASE, "IMD2"))
        self.assertEqual(resolved[(MEMBER, DAVE)], eid("IMD2"))

    def test_member_keys_resolved_independently(self) -> None:
        # Bob's own membership is in conflict (join vs Alice's kick at depth 8), and Bob
        # kicks Charlie on the other branch. Member keys are each checked against R after
        # the join rules step, where Bob's conflicted membership is absent, so Bob's kick
        # of Charlie is refused even though Bob stays joined.
        r = base_room()
        r.add("BOBLEAVE", MEMBER, BOB, {"membership": "leave"}, BOB, ["CREATE", "PL1", "IMB"],
              depth=7)
        r.add("BOBJOIN", MEMBER, BOB, {"membership": "join"}, BOB,
              ["CREATE", "PL1", "JR1", "BOBLEAVE"], depth=8)
        r.add("KICKC", MEMBER, BOB, {"membership": "leave"}, CHARLIE,
              ["CREATE", "PL1", "IMB", "IMC"], depth=9)
        s1 = r.state(*BASE, "BOBLEAVE")
        s2 = r.state(*BASE, "BOBJOIN", "KICKC")
        resolved = r.resolve_both_ways(s1, s2)
        self.assertEqual(resolved[(MEMBER, BOB)], eid("BOBJOIN"))
        self.assertEqual(resolved[(MEMBER, CHARLIE)], eid("IMC"))


class OtherEventsTest(unittest.TestCase):
    def test_topic_highest_depth_wins(self) -> None:
        r = base_room()
        r.add("T1", TOPIC, ALICE, {"topic": "one"}, "", AUTH_A, depth=9)
        r.add("T2", TOPIC, ALICE, {"topic": "two"}, "", AUTH_A, depth=8)
        resolved = r.resolve_both_ways(r.state(*BASE, "T1"), r.state(*BASE, "T2"))
        self.assertEqual(resolved[(TOPIC, "")], eid("T1"))

    def test_topic_equal_depth_lowest_sha1_wins(self) -> None:
        r = base_room()
        names = ["TB", "TC", "TD"]
        for name in names:
            r.add(name, TOPIC, ALICE, {"topic": name}, "", AUTH_A, depth=8)
        expected = min((eid(n) for n in names), key=sha1)
        # Not simply the smallest event ID: make sure the test means something.
        self.assertNotEqual(expected, min(eid(n) for n in names))
        sets = [r.state(*BASE, n) for n in names]
        self.assertEqual(r.resolve(*sets)[(TOPIC, "")], expected)
        order = preferred_order(r.events[eid(n)] for n in names)
        self.assertEqual([e.event_id for e in order], sorted(map(eid, names), key=sha1))

    def test_unauthorised_topic_skipped_for_an_authorised_one(self) -> None:
        # Charlie (level 0) cannot set state (state_default 50): Alice's shallower topic wins.
        r = base_room()
        r.add("TC", TOPIC, CHARLIE, {"topic": "charlie"}, "", ["CREATE", "PL1", "IMC"], depth=9)
        r.add("TA", TOPIC, ALICE, {"topic": "alice"}, "", AUTH_A, depth=7)
        resolved = r.resolve_both_ways(r.state(*BASE, "TC"), r.state(*BASE, "TA"))
        self.assertEqual(resolved[(TOPIC, "")], eid("TA"))

    def test_no_authorised_candidate_leaves_key_out(self) -> None:
        # Neither name passes in R (Bob was demoted in PL2, Charlie never could): no entry.
        r = base_room()
        r.add("PL2", POWER_LEVELS, ALICE, pl({ALICE: 100}), "", AUTH_A, depth=7)
        r.add("NB", NAME, BOB, {"name": "bob"}, "", ["CREATE", "PL1", "IMB"], depth=8)
        r.add("NC", NAME, CHARLIE, {"name": "charlie"}, "", ["CREATE", "PL1", "IMC"], depth=9)
        resolved = r.resolve_both_ways(r.state(*BASE, "PL2", "NB"), r.state(*BASE, "PL2", "NC"))
        self.assertNotIn((NAME, ""), resolved)
        self.assertEqual(resolved[(POWER_LEVELS, "")], eid("PL2"))

    def test_candidates_missing_from_event_map_are_ignored(self) -> None:
        r = base_room()
        r.add("T1", TOPIC, ALICE, {"topic": "one"}, "", AUTH_A, depth=7)
        s2 = {**r.state(*BASE), (TOPIC, ""): eid("UNKNOWN")}
        resolved = r.resolve_both_ways(r.state(*BASE, "T1"), s2)
        self.assertEqual(resolved[(TOPIC, "")], eid("T1"))


class DeterminismTest(unittest.TestCase):
    def _scenario(self) -> tuple[Room, list[dict[StateKey, str]]]:
        r = base_room()
        r.add("PL2", POWER_LEVELS, ALICE, pl({ALICE: 100, BOB: 50, CHARLIE: 50}), "", AUTH_A,
              depth=7)
        r.add("PL3", POWER_LEVELS, BOB, pl({ALICE: 100, BOB: 100}), "",
              ["CREATE", "IMB", "PL1"], depth=7)
        r.add("JR2", JOIN_RULES, ALICE, {"join_rule": "invite"}, "", [*AUTH_A, "JR1"], depth=8)
        r.add("IMD", MEMBER, DAVE, {"membership": "join"}, DAVE, ["CREATE", "PL1", "JR1"],
              depth=8)
        r.add("BAN", MEMBER, ALICE, {"membership": "ban"}, DAVE, AUTH_A, depth=8)
        r.add("LC", MEMBER, CHARLIE, {"membership": "leave"}, CHARLIE, ["CREATE", "PL1", "IMC"],
              depth=9)
        for i in range(6):
            r.add(f"T{i}", TOPIC, ALICE, {"topic": str(i)}, "", AUTH_A, depth=8 + i % 2)
        sets = [
            r.state(*BASE, "PL2", "IMD", "T0", "LC"),
            r.state(*BASE, "PL3", "BAN", "T1"),
            r.state(*BASE, "JR2", "T2"),
            r.state(*BASE, "T3", "LC"),
            r.state(*BASE, "PL2", "T4"),
            r.state(*BASE, "T5"),
        ]
        return r, sets

    def test_result_independent_of_input_order(self) -> None:
        r, sets = self._scenario()
        expected = resolve_state_v1(V1, sets, r.events)
        rng = random.Random(1)
        for _ in range(30):
            shuffled_sets = [dict(rng.sample(list(s.items()), len(s))) for s in sets]
            rng.shuffle(shuffled_sets)
            items = list(r.events.items())
            rng.shuffle(items)
            self.assertEqual(resolve_state_v1(V1, shuffled_sets, dict(items)), expected)

    def test_scenario_outcome(self) -> None:
        r, sets = self._scenario()
        resolved = resolve_state_v1(V1, sets, r.events)
        # Candidates PL1 (depth 3), PL2 and PL3 (both depth 7). PL1 is taken as is; of the
        # depth-7 pair the larger sha1 comes next. Bob's self-promotion PL3 is refused over
        # PL1 and ends the walk before PL2 is looked at; PL2 first would pass, then PL3 fail.
        pl3_first = sha1(eid("PL3")) > sha1(eid("PL2"))
        self.assertTrue(pl3_first)  # (true of these IDs; the other branch kept for clarity)
        expected_pl = eid("PL1") if pl3_first else eid("PL2")
        self.assertEqual(resolved[(POWER_LEVELS, "")], expected_pl)
        self.assertEqual(resolved[(JOIN_RULES, "")], eid("JR2"))
        self.assertEqual(resolved[(MEMBER, DAVE)], eid("BAN"))
        self.assertEqual(resolved[(MEMBER, CHARLIE)], eid("LC"))
        deepest = [eid(f"T{i}") for i in range(6) if i % 2 == 1]
        self.assertEqual(resolved[(TOPIC, "")], min(deepest, key=sha1))
