"""The authorisation rules of room versions 1-12, checked rule by rule against the spec.

Derived from the spec text (rooms/v1.md ... v12.md, fragments v1/v3/v8-auth-rules.md,
v1-stringy-power-levels.md, v1-floaty-power-levels.md, and "Auth events selection" in
server-server-api.md), not from the implementation. Rule numbers in comments use the v12
numbering unless a version is named ("v1 rule 11" = redactions in v1/v2).

Every test checks both an allowed and a refused case; each loops over the room versions the
rule applies to (and, where the rule is version-specific, the versions it does not).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from typing import Any

from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from twisted.trial import unittest

from homeserver.events.auth import (
    AuthError,
    auth_types_for_event,
    check_auth_events,
    check_auth_rules,
    parse_power_level,
    required_power_level,
    user_power_level,
)
from homeserver.events.hashing import unpadded_base64
from homeserver.events.model import Event, StateKey
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS

CREATE = "m.room.create"
MEMBER = "m.room.member"
JOIN_RULES = "m.room.join_rules"
POWER_LEVELS = "m.room.power_levels"
TPI = "m.room.third_party_invite"
ALIASES = "m.room.aliases"
REDACTION = "m.room.redaction"
MESSAGE = "m.room.message"
NAME = "m.room.name"

# Room version families, read off the spec (which fragment / "added-in" each page uses).
ALL = [str(v) for v in range(1, 13)]
V1_V2 = ["1", "2"]  # v1-auth-rules: aliases (rule 4) and redactions (rule 11)
V3_PLUS = [str(v) for v in range(3, 13)]
V1_V5 = [str(v) for v in range(1, 6)]  # aliases special case; floaty power levels
V6_PLUS = [str(v) for v in range(6, 13)]  # `notifications` covered by the PL rules
PRE_KNOCK = [str(v) for v in range(1, 7)]
KNOCK = [str(v) for v in range(7, 13)]
PRE_RESTRICTED = [str(v) for v in range(1, 8)]
RESTRICTED = [str(v) for v in range(8, 13)]
PRE_KNOCK_RESTRICTED = [str(v) for v in range(1, 10)]
KNOCK_RESTRICTED = ["10", "11", "12"]
STRINGY = [str(v) for v in range(1, 10)]  # v1-stringy-power-levels up to v9
INTEGER_PL = ["10", "11", "12"]
EXPLICIT_CREATOR = [str(v) for v in range(1, 11)]  # content.creator required
IMPLICIT_CREATOR = ["11", "12"]
PRE_V12 = [str(v) for v in range(1, 12)]
V12 = ["12"]

ALICE = "@alice:example.org"  # always the room creator
BOB = "@bob:example.org"
CAROL = "@carol:example.org"
DAVE = "@dave:example.org"
EVE = "@eve:remote.test"  # on another server
ID_SERVER = "id.example.org"

# Marks a power levels entry to delete in PowerLevelsChanges.
_REMOVE = object()

# In v12 the create event's ID is chosen here; the room ID is derived from it.
V12_CREATE_ID = "$CreateEventReferenceHash"
V12_ROOM_ID = "!CreateEventReferenceHash"


def server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1]


class Room:
    """A room's state, built event by event, for one room version.

    Alice creates the room. Events get readable IDs `$evN:<sender's server>`.
    """

    def __init__(
        self,
        version: str,
        *,
        creator: str = ALICE,
        create_content: Mapping[str, Any] | None = None,
        with_creator_field: bool | None = None,
    ) -> None:
        self.version = version
        self.rv = KNOWN_ROOM_VERSIONS[version]
        self.is_v12 = version == "12"
        self.creator = creator
        self._n = 0
        content: dict[str, Any] = {"room_version": version}
        if with_creator_field is None:
            with_creator_field = version in EXPLICIT_CREATOR
        if with_creator_field:
            content["creator"] = creator
        content.update(create_content or {})
        pdu: dict[str, Any] = {
            "type": CREATE,
            "state_key": "",
            "sender": creator,
            "content": content,
            "prev_events": [],
            "auth_events": [],
            "depth": 1,
            "origin_server_ts": 0,
        }
        if self.is_v12:
            self.room_id = V12_ROOM_ID
            create_id = V12_CREATE_ID
        else:
            self.room_id = "!room:example.org"
            pdu["room_id"] = self.room_id
            create_id = "$create:example.org"
        self.create = Event(pdu, self.rv, event_id=create_id)
        self.state: dict[StateKey, Event] = {(CREATE, ""): self.create}

    # ----- building events ---------------------------------------------------------------

    def refs(self, ids: Iterable[str]) -> list[Any]:
        """prev_events / auth_events in this version's format ([id, hashes] pairs in v1/v2)."""
        if self.version in V1_V2:
            return [[i, {"sha256": "aGFzaA"}] for i in ids]
        return list(ids)

    def event(
        self,
        etype: str,
        sender: str,
        content: Mapping[str, Any] | None = None,
        state_key: str | None = None,
        *,
        prev: Iterable[str] | None = None,
        event_id: str | None = None,
        room_id: str | None = None,
        rejected: str | None = None,
        **extra: Any,
    ) -> Event:
        self._n += 1
        pdu: dict[str, Any] = {
            "type": etype,
            "sender": sender,
            "room_id": room_id or self.room_id,
            "content": dict(content or {}),
            "prev_events": self.refs(prev if prev is not None else ["$prev:example.org"]),
            "auth_events": [],
            "depth": 5,
            "origin_server_ts": 1000 + self._n,
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        pdu.update(extra)
        return Event(
            pdu,
            self.rv,
            event_id=event_id or f"$ev{self._n}:{server_of(sender)}",
            rejected_reason=rejected,
        )

    def member_event(
        self, target: str, membership: str, sender: str | None = None, **content: Any
    ) -> Event:
        return self.event(
            MEMBER, sender or target, {"membership": membership, **content}, state_key=target
        )

    # ----- changing the state ------------------------------------------------------------

    def put(self, event: Event) -> Event:
        self.state[event.state_tuple] = event
        return event

    def set_member(self, target: str, membership: str, sender: str | None = None) -> Event:
        return self.put(self.member_event(target, membership, sender))

    def join(self, *users: str) -> Room:
        for user in users:
            self.set_member(user, "join")
        return self

    def set_join_rule(self, rule: str, **content: Any) -> Event:
        return self.put(self.event(JOIN_RULES, self.creator, {"join_rule": rule, **content}, ""))

    def pl_content(self, users: Mapping[str, Any] | None = None, **levels: Any) -> dict[str, Any]:
        """Power levels content; the creator gets 100 except in v12 (where it may not be listed)."""
        all_users: dict[str, Any] = {} if self.is_v12 else {self.creator: 100}
        all_users.update(users or {})
        return {"users": all_users, **levels}

    def set_power_levels(
        self, users: Mapping[str, Any] | None = None, *, raw: Mapping[str, Any] | None = None,
        **levels: Any,
    ) -> Event:
        content = dict(raw) if raw is not None else self.pl_content(users, **levels)
        return self.put(self.event(POWER_LEVELS, self.creator, content, ""))

    # ----- checking ----------------------------------------------------------------------

    def check(self, event: Event, state: Mapping[StateKey, Event] | None = None) -> None:
        state = self.state if state is None else state
        if self.is_v12:
            # v12: the create event is not an auth event; it is found from the room ID.
            rest = {k: v for k, v in state.items() if k != (CREATE, "")}
            check_auth_rules(event, rest, create_event=self.create)
        else:
            check_auth_rules(event, state)


def standard_room(
    version: str,
    *,
    join_rule: str | None = "public",
    members: Mapping[str, str] | None = None,
    users: Mapping[str, Any] | None = None,
    levels: Mapping[str, Any] | None = None,
    power_levels: bool = True,
) -> Room:
    """Alice (creator) joined; a power levels event (unless power_levels=False); a join rule."""
    room = Room(version)
    room.join(ALICE)
    if power_levels:
        room.set_power_levels(users, **(levels or {}))
    if join_rule is not None:
        room.set_join_rule(join_rule)
    for user, membership in (members or {}).items():
        room.set_member(user, membership)
    return room


class AuthCase(unittest.TestCase):
    def allowed(self, room: Room, event: Event, why: str, state: Any = None) -> None:
        try:
            room.check(event, state)
        except AuthError as e:
            self.fail(f"room v{room.version}: expected ALLOWED ({why}); refused: {e}")

    def refused(self, room: Room, event: Event, why: str, state: Any = None) -> None:
        try:
            room.check(event, state)
        except AuthError:
            return
        self.fail(f"room v{room.version}: expected REFUSED ({why}); it was allowed")


# =========================================================================================
# Rule 1: m.room.create
# =========================================================================================


class CreateEventRules(AuthCase):
    def create(self, version: str, **overrides: Any) -> tuple[Room, Event]:
        room = Room(version)
        pdu = copy.deepcopy(room.create.pdu)
        content_overrides = overrides.pop("content", None)
        if content_overrides is not None:
            pdu["content"] = content_overrides
        drop = overrides.pop("drop", ())
        for key in drop:
            pdu.pop(key, None)
        pdu.update(overrides)
        return room, Event(pdu, room.rv, event_id=room.create.event_id)

    def test_valid_create_is_allowed(self) -> None:
        for v in ALL:
            room, event = self.create(v)
            self.allowed(room, event, "well-formed create event", state={})

    def test_1_1_prev_events_rejected(self) -> None:
        for v in ALL:
            room, event = self.create(v, prev_events=room_refs(v, ["$other:example.org"]))
            self.refused(room, event, "create with prev_events", state={})

    def test_1_2_room_id_domain_must_match_sender_before_v12(self) -> None:
        for v in PRE_V12:
            room, event = self.create(v, room_id="!room:elsewhere.org")
            self.refused(room, event, "room_id domain differs from sender's", state={})
            room, event = self.create(v, room_id="!other:example.org")
            self.allowed(room, event, "room_id on the sender's server", state={})
            # Create event from a server with a port: the domain includes the port.
            room, event = self.create(
                v, room_id="!r:example.org:8448", sender="@alice:example.org:8448",
                content={"room_version": v, "creator": "@alice:example.org:8448"},
            )
            self.allowed(room, event, "domain with port matches", state={})

    def test_1_2_v12_create_must_not_have_room_id(self) -> None:
        for v in V12:
            room, event = self.create(v, room_id=V12_ROOM_ID)
            self.refused(room, event, "v12 create event with a room_id", state={})
            room, event = self.create(v, room_id="!room:example.org")
            self.refused(room, event, "v12 create event with a domain room_id", state={})
            room, event = self.create(v)
            self.assertNotIn("room_id", event.pdu)
            self.allowed(room, event, "v12 create event without room_id", state={})
            # The sender's domain does not matter any more (no room_id domain).
            room, event = self.create(v, sender="@alice:elsewhere.org")
            self.allowed(room, event, "v12: no domain comparison", state={})

    def test_1_3_room_version_must_be_recognised(self) -> None:
        for v in ALL:
            base = dict(Room(v).create.content)
            for bad in ("999", "1.0", "", "v10", 10, None):
                room, event = self.create(v, content={**base, "room_version": bad})
                self.refused(room, event, f"unrecognised room_version {bad!r}", state={})
            for known in ALL:
                room, event = self.create(v, content={**base, "room_version": known})
                self.allowed(room, event, f"recognised room_version {known}", state={})
            content = {k: val for k, val in base.items() if k != "room_version"}
            room, event = self.create(v, content=content)
            self.allowed(room, event, "room_version absent (defaults to 1)", state={})

    def test_1_4_creator_required_up_to_v10(self) -> None:
        for v in EXPLICIT_CREATOR:
            room, event = self.create(v, content={"room_version": v})
            self.refused(room, event, "no content.creator", state={})
            room, event = self.create(v, content={"room_version": v, "creator": ALICE})
            self.allowed(room, event, "content.creator present", state={})

    def test_creator_not_needed_from_v11(self) -> None:
        for v in IMPLICIT_CREATOR:
            room, event = self.create(v, content={"room_version": v})
            self.allowed(room, event, "v11+: no creator property needed", state={})
            # A stray `creator` is not a reason to refuse either.
            room, event = self.create(v, content={"room_version": v, "creator": BOB})
            self.allowed(room, event, "v11+: creator property ignored", state={})
            # ...and the federation rule is still checked: prev_events refuse.
            room, event = self.create(
                v, content={"room_version": v}, prev_events=["$x:example.org"]
            )
            self.refused(room, event, "v11+: prev_events still refused", state={})

    def test_1_4_v12_additional_creators_must_be_user_ids(self) -> None:
        for v in V12:
            good: list[Any] = [[], [BOB], [BOB, EVE], ["@x:[::1]:8448"], ["@Old_Style:example.org"]]
            for value in good:
                room, event = self.create(
                    v, content={"room_version": v, "additional_creators": value}
                )
                self.allowed(room, event, f"additional_creators={value!r}", state={})
            bad: list[Any] = [
                BOB,  # not an array
                {"user": BOB},
                [BOB, 5],
                [None],
                ["bob"],
                ["@bob"],
                ["#alias:example.org"],
                ["@bob:"],
                ["@bob:bad domain"],
            ]
            for value in bad:
                room, event = self.create(
                    v, content={"room_version": v, "additional_creators": value}
                )
                self.refused(room, event, f"additional_creators={value!r}", state={})

    def test_additional_creators_not_validated_before_v12(self) -> None:
        for v in PRE_V12:
            content = dict(Room(v).create.content)
            content["additional_creators"] = "not a list"
            room, event = self.create(v, content=content)
            self.allowed(room, event, "additional_creators means nothing before v12", state={})


def room_refs(version: str, ids: list[str]) -> list[Any]:
    return Room(version).refs(ids)


# =========================================================================================
# Auth events selection and rule 2 (v12 rule 3): the auth_events list itself
# =========================================================================================


class AuthEventSelection(AuthCase):
    def keys(self, room: Room, event: Event) -> set[StateKey]:
        return set(
            auth_types_for_event(event.type, event.sender, event.state_key, event.content, room.rv)
        )

    def base(self, room: Room, sender: str) -> set[StateKey]:
        keys = {(POWER_LEVELS, ""), (MEMBER, sender)}
        if not room.is_v12:
            keys.add((CREATE, ""))
        return keys

    def test_create_event_selects_nothing(self) -> None:
        for v in ALL:
            room = Room(v)
            self.assertEqual(self.keys(room, room.create), set(), v)

    def test_create_is_selected_before_v12_and_never_in_v12(self) -> None:
        for v in ALL:
            room = Room(v)
            msg = room.event(MESSAGE, BOB, {"body": "hi"})
            keys = self.keys(room, msg)
            self.assertEqual(keys, self.base(room, BOB), v)
            if v in V12:
                self.assertNotIn((CREATE, ""), keys)
            else:
                self.assertIn((CREATE, ""), keys)

    def test_membership_selection(self) -> None:
        for v in ALL:
            room = Room(v)
            base = self.base(room, BOB)
            join_rules = (JOIN_RULES, "")
            cases = [
                (room.member_event(BOB, "join"), base | {join_rules}),
                (room.member_event(CAROL, "invite", BOB), base | {(MEMBER, CAROL), join_rules}),
                (room.member_event(BOB, "knock"), base | {join_rules}),
                (room.member_event(BOB, "leave"), base),
                (room.member_event(CAROL, "leave", BOB), base | {(MEMBER, CAROL)}),
                (room.member_event(CAROL, "ban", BOB), base | {(MEMBER, CAROL)}),
            ]
            for event, expected in cases:
                self.assertEqual(self.keys(room, event), expected, f"v{v} {event.membership}")

    def test_third_party_invite_token_selected(self) -> None:
        for v in ALL:
            room = Room(v)
            invite = room.member_event(
                CAROL, "invite", BOB,
                third_party_invite={"signed": {"mxid": CAROL, "token": "abc", "signatures": {}}},
            )
            self.assertIn((TPI, "abc"), self.keys(room, invite), v)
            # Only for invites.
            join = room.member_event(
                BOB, "join", third_party_invite={"signed": {"mxid": BOB, "token": "abc"}}
            )
            self.assertNotIn((TPI, "abc"), self.keys(room, join), v)

    def test_join_authorised_via_users_server_selected_from_v8(self) -> None:
        for v in ALL:
            room = Room(v)
            join = room.member_event(CAROL, "join", join_authorised_via_users_server=BOB)
            keys = self.keys(room, join)
            if v in RESTRICTED:
                self.assertIn((MEMBER, BOB), keys, v)
            else:
                self.assertNotIn((MEMBER, BOB), keys, v)
            # Only for joins.
            leave = room.member_event(CAROL, "leave", join_authorised_via_users_server=BOB)
            self.assertNotIn((MEMBER, BOB), self.keys(room, leave), v)

    # ----- check_auth_events ---------------------------------------------------------------

    def auth_list(self, room: Room, *keys: StateKey) -> list[Event]:
        return [room.state[k] for k in keys]

    def test_correct_auth_events_accepted(self) -> None:
        for v in ALL:
            room = standard_room(v, members={BOB: "join"})
            msg = room.event(MESSAGE, BOB, {"body": "hi"})
            keys = [(POWER_LEVELS, ""), (MEMBER, BOB)] + ([] if room.is_v12 else [(CREATE, "")])
            by_key = check_auth_events(msg, self.auth_list(room, *keys))
            self.assertEqual(set(by_key), set(keys), v)
            # A subset is fine (rule 2.2 only refuses unexpected entries).
            if not room.is_v12:
                check_auth_events(msg, self.auth_list(room, (CREATE, "")))
            else:
                check_auth_events(msg, [])

    def test_2_1_duplicate_type_state_key_refused(self) -> None:
        for v in ALL:
            room = standard_room(v, members={BOB: "join"})
            msg = room.event(MESSAGE, BOB, {"body": "hi"})
            other_pl = room.event(POWER_LEVELS, ALICE, room.pl_content(), "")
            entries = self.auth_list(room, (POWER_LEVELS, ""), (MEMBER, BOB)) + [other_pl]
            if not room.is_v12:
                entries.append(room.create)
            with self.assertRaises(AuthError, msg=v):
                check_auth_events(msg, entries)

    def test_2_2_unexpected_entries_refused(self) -> None:
        for v in ALL:
            room = standard_room(v, members={BOB: "join", CAROL: "join"})
            room.put(room.event(NAME, ALICE, {"name": "n"}, ""))
            msg = room.event(MESSAGE, BOB, {"body": "hi"})
            base = [] if room.is_v12 else [room.create]
            for extra in [(JOIN_RULES, ""), (MEMBER, CAROL), (NAME, "")]:
                with self.assertRaises(AuthError, msg=f"v{v} {extra}"):
                    check_auth_events(msg, base + self.auth_list(room, extra))
            # Join rules are expected for a join, but not for a leave.
            join = room.member_event(DAVE, "join")
            check_auth_events(join, base + self.auth_list(room, (JOIN_RULES, "")))
            leave = room.member_event(CAROL, "leave")
            with self.assertRaises(AuthError, msg=v):
                check_auth_events(leave, base + self.auth_list(room, (JOIN_RULES, "")))
            # A third-party invite event is expected only with the matching token.
            tpi = room.put(room.event(TPI, BOB, {"public_key": "x"}, "tok"))
            other_tpi = room.put(room.event(TPI, BOB, {"public_key": "x"}, "other"))
            invite = room.member_event(
                DAVE, "invite", BOB,
                third_party_invite={"signed": {"mxid": DAVE, "token": "tok", "signatures": {}}},
            )
            check_auth_events(invite, base + [tpi])
            with self.assertRaises(AuthError, msg=v):
                check_auth_events(invite, base + [other_tpi])

    def test_2_2_authorising_user_member_event_only_from_v8(self) -> None:
        for v in ALL:
            room = standard_room(v, members={BOB: "join"})
            base = [] if room.is_v12 else [room.create]
            join = room.member_event(CAROL, "join", join_authorised_via_users_server=BOB)
            if v in RESTRICTED:
                check_auth_events(join, base + self.auth_list(room, (MEMBER, BOB)))
            else:
                with self.assertRaises(AuthError, msg=v):
                    check_auth_events(join, base + self.auth_list(room, (MEMBER, BOB)))

    def test_create_event_may_not_cite_auth_events(self) -> None:
        for v in ALL:
            room = standard_room(v)
            check_auth_events(room.create, [])
            with self.assertRaises(AuthError, msg=v):
                check_auth_events(room.create, self.auth_list(room, (MEMBER, ALICE)))

    def test_2_3_rejected_auth_event_refused(self) -> None:
        for v in ALL:
            room = standard_room(v, members={BOB: "join"})
            base = [] if room.is_v12 else [room.create]
            msg = room.event(MESSAGE, BOB, {"body": "hi"})
            rejected_pl = room.event(POWER_LEVELS, ALICE, room.pl_content(), "", rejected="auth")
            with self.assertRaises(AuthError, msg=v):
                check_auth_events(msg, base + [rejected_pl])
            check_auth_events(msg, base + self.auth_list(room, (POWER_LEVELS, "")))

    def test_2_4_create_event_required_before_v12(self) -> None:
        for v in ALL:
            room = standard_room(v, members={BOB: "join"})
            msg = room.event(MESSAGE, BOB, {"body": "hi"})
            rest = self.auth_list(room, (POWER_LEVELS, ""), (MEMBER, BOB))
            if room.is_v12:
                check_auth_events(msg, rest)
            else:
                with self.assertRaises(AuthError, msg=v):
                    check_auth_events(msg, rest)
                check_auth_events(msg, [room.create] + rest)

    def test_v12_3_2_create_event_must_not_be_cited(self) -> None:
        for v in V12:
            room = standard_room(v, members={BOB: "join"})
            msg = room.event(MESSAGE, BOB, {"body": "hi"})
            with self.assertRaises(AuthError):
                check_auth_events(msg, [room.create])
            with self.assertRaises(AuthError):
                check_auth_events(msg, [room.create] + self.auth_list(room, (MEMBER, BOB)))

    def test_2_5_auth_event_from_another_room_refused(self) -> None:
        for v in ALL:
            room = standard_room(v, members={BOB: "join"})
            base = [] if room.is_v12 else [room.create]
            msg = room.event(MESSAGE, BOB, {"body": "hi"})
            foreign_member = room.event(
                MEMBER, BOB, {"membership": "join"}, BOB, room_id="!other:example.org"
            )
            with self.assertRaises(AuthError, msg=v):
                check_auth_events(msg, base + [foreign_member])
            if not room.is_v12:
                foreign_create = Event(
                    {**room.create.pdu, "room_id": "!other:example.org"}, room.rv,
                    event_id="$othercreate:example.org",
                )
                with self.assertRaises(AuthError, msg=v):
                    check_auth_events(msg, [foreign_create])


# =========================================================================================
# v12 rule 2: the room ID names an accepted create event
# =========================================================================================


class V12RoomIdRule(AuthCase):
    def test_room_id_must_be_create_event_id(self) -> None:
        for v in V12:
            room = standard_room(v, members={BOB: "join"})
            self.allowed(room, room.event(MESSAGE, BOB, {"body": "hi"}), "room ID = create ID")
            wrong = room.event(MESSAGE, BOB, {"body": "hi"}, room_id="!SomeOtherHash")
            self.refused(room, wrong, "room ID is not the create event's ID")
            domain = room.event(MESSAGE, BOB, {"body": "hi"}, room_id="!CreateEventReferenceHash:x")
            self.refused(room, domain, "room ID with a domain")

    def test_create_event_must_not_be_rejected(self) -> None:
        for v in V12:
            room = standard_room(v, members={BOB: "join"})
            rejected_create = Event(
                room.create.pdu, room.rv, event_id=V12_CREATE_ID, rejected_reason="bad"
            )
            msg = room.event(MESSAGE, BOB, {"body": "hi"})
            state = {k: e for k, e in room.state.items() if k != (CREATE, "")}
            with self.assertRaises(AuthError):
                check_auth_rules(msg, state, create_event=rejected_create)
            check_auth_rules(msg, state, create_event=room.create)

    def test_create_event_may_also_come_from_state(self) -> None:
        for v in V12:
            room = standard_room(v, members={BOB: "join"})
            check_auth_rules(room.event(MESSAGE, BOB, {"body": "hi"}), room.state)
            with self.assertRaises(AuthError):
                check_auth_rules(
                    room.event(MESSAGE, BOB, {"body": "hi"}, room_id="!nope"), room.state
                )


# =========================================================================================
# Rule 3 (v12 rule 4): m.federate
# =========================================================================================


class FederateRule(AuthCase):
    def test_m_federate_false_refuses_other_servers(self) -> None:
        for v in ALL:
            room = Room(v, create_content={"m.federate": False})
            room.join(ALICE)
            room.set_power_levels()
            room.set_join_rule("public")
            self.refused(room, room.member_event(EVE, "join"), "remote join, m.federate false")
            self.allowed(room, room.member_event(BOB, "join"), "local join, m.federate false")
            # Even an already-joined remote user cannot send.
            room.set_member(EVE, "join")
            self.refused(room, room.event(MESSAGE, EVE, {"body": "x"}), "remote message")
            room.set_member(BOB, "join")
            self.allowed(room, room.event(MESSAGE, BOB, {"body": "x"}), "local message")
            # An invite of a remote user is sent by a local user: this rule allows it.
            frank = "@frank:remote.test"
            self.allowed(room, room.member_event(frank, "invite", BOB), "local invites remote")

    def test_m_federate_true_or_absent_allows_other_servers(self) -> None:
        for v in ALL:
            for create_content in ({"m.federate": True}, {}):
                room = Room(v, create_content=create_content)
                room.join(ALICE)
                room.set_power_levels()
                room.set_join_rule("public")
                self.allowed(room, room.member_event(EVE, "join"), f"remote join {create_content}")

    def test_m_federate_must_be_exactly_false(self) -> None:
        for v in ALL:
            for value in (0, "false", None):
                room = Room(v, create_content={"m.federate": value})
                room.join(ALICE)
                room.set_join_rule("public")
                self.allowed(room, room.member_event(EVE, "join"), f"m.federate={value!r}")


# =========================================================================================
# v1-v5 rule 4: m.room.aliases
# =========================================================================================


class AliasesRule(AuthCase):
    def test_aliases_special_case_v1_to_v5(self) -> None:
        for v in V1_V5:
            room = standard_room(v)
            # The sender need not even be in the room, nor have any power.
            ok = room.event(ALIASES, EVE, {"aliases": ["#a:remote.test"]}, "remote.test")
            self.allowed(room, ok, "state_key is the sender's domain")
            wrong = room.event(ALIASES, EVE, {"aliases": []}, "example.org")
            self.refused(room, wrong, "state_key is another domain")
            no_key = room.event(ALIASES, EVE, {"aliases": []})
            self.refused(room, no_key, "no state_key")
            # Even a high-power member must use their own domain.
            self.refused(room, room.event(ALIASES, ALICE, {}, "remote.test"), "creator, wrong domain")
            # Rule 3 (m.federate) comes first.
            closed = Room(v, create_content={"m.federate": False})
            self.refused(closed, closed.event(ALIASES, EVE, {}, "remote.test"), "m.federate false")

    def test_aliases_is_ordinary_state_from_v6(self) -> None:
        for v in V6_PLUS:
            room = standard_room(v, members={BOB: "join"}, users={BOB: 50})
            # Not joined: refused (no special case).
            self.refused(room, room.event(ALIASES, EVE, {}, "remote.test"), "non-member")
            # Joined but below state_default (50).
            room.set_member(EVE, "join")
            self.refused(room, room.event(ALIASES, EVE, {}, "remote.test"), "below state_default")
            # Joined with enough power: any state key domain is fine.
            self.allowed(room, room.event(ALIASES, BOB, {}, "remote.test"), "state event rules only")


# =========================================================================================
# Membership rules (v12 rule 5; rule 4 in v3-v11 except v1/v2 where it is rule 5)
# =========================================================================================


class MembershipBasics(AuthCase):
    def test_5_1_state_key_and_membership_required(self) -> None:
        for v in ALL:
            room = standard_room(v)
            no_key = room.event(MEMBER, BOB, {"membership": "join"})
            self.refused(room, no_key, "member event without state_key")
            no_membership = room.event(MEMBER, BOB, {"displayname": "Bob"}, BOB)
            self.refused(room, no_membership, "no membership property")
            self.allowed(room, room.member_event(BOB, "join"), "well-formed join")

    def test_unknown_membership_refused(self) -> None:
        for v in ALL:
            room = standard_room(v, members={BOB: "join"}, users={BOB: 100})
            for membership in ("foo", "JOIN", "", "kick"):
                self.refused(
                    room, room.member_event(CAROL, membership, BOB), f"membership {membership!r}"
                )

    def test_5_2_join_authorised_via_users_server_must_have_signature_v8_plus(self) -> None:
        for v in RESTRICTED:
            room = standard_room(v, members={BOB: "join"})
            unsigned = room.member_event(CAROL, "join", join_authorised_via_users_server=EVE)
            self.refused(room, unsigned, "no signature from the authorising user's server")
            signed = room.event(
                MEMBER, CAROL, {"membership": "join", "join_authorised_via_users_server": EVE},
                CAROL, signatures={"remote.test": {"ed25519:a": "sig"}},
            )
            self.allowed(room, signed, "signed by the authorising user's server (public room)")
            wrong_server = room.event(
                MEMBER, CAROL, {"membership": "join", "join_authorised_via_users_server": EVE},
                CAROL, signatures={"example.org": {"ed25519:a": "sig"}},
            )
            self.refused(room, wrong_server, "signed only by another server")
            # The rule is about any membership that carries the key, not just joins.
            room.set_member(CAROL, "join")
            leave = room.member_event(CAROL, "leave", join_authorised_via_users_server=EVE)
            self.refused(room, leave, "leave carrying the key without the signature")

    def test_join_authorised_via_users_server_ignored_before_v8(self) -> None:
        for v in PRE_RESTRICTED:
            room = standard_room(v)
            join = room.member_event(CAROL, "join", join_authorised_via_users_server=EVE)
            self.allowed(room, join, "key means nothing before v8 (public room)")


class JoinRules(AuthCase):
    def test_creator_first_join(self) -> None:
        for v in ALL:
            room = Room(v)
            first = room.member_event(ALICE, "join")
            first_only_create = room.event(
                MEMBER, ALICE, {"membership": "join"}, ALICE, prev=[room.create.event_id]
            )
            self.allowed(room, first_only_create, "creator joins right after create")
            self.refused(room, first, "prev event is not the create event (no join rule)")
            two_prevs = room.event(
                MEMBER, ALICE, {"membership": "join"}, ALICE,
                prev=[room.create.event_id, "$other:example.org"],
            )
            self.refused(room, two_prevs, "create is not the only previous event")
            other = room.event(MEMBER, BOB, {"membership": "join"}, BOB, prev=[room.create.event_id])
            self.refused(room, other, "non-creator right after create")

    def test_creator_is_content_creator_up_to_v10(self) -> None:
        for v in EXPLICIT_CREATOR:
            # Alice sent the create event but names Bob as the creator.
            room = Room(v, create_content={"creator": BOB})
            bob = room.event(MEMBER, BOB, {"membership": "join"}, BOB, prev=[room.create.event_id])
            self.allowed(room, bob, "content.creator joins first")
            alice = room.event(
                MEMBER, ALICE, {"membership": "join"}, ALICE, prev=[room.create.event_id]
            )
            self.refused(room, alice, "create sender is not the creator before v11")

    def test_creator_is_create_sender_from_v11(self) -> None:
        for v in IMPLICIT_CREATOR:
            room = Room(v, create_content={"creator": BOB})
            alice = room.event(
                MEMBER, ALICE, {"membership": "join"}, ALICE, prev=[room.create.event_id]
            )
            self.allowed(room, alice, "create sender joins first")
            bob = room.event(MEMBER, BOB, {"membership": "join"}, BOB, prev=[room.create.event_id])
            self.refused(room, bob, "content.creator means nothing from v11")

    def test_v12_additional_creator_has_no_first_join_privilege(self) -> None:
        for v in V12:
            room = Room(v, create_content={"additional_creators": [BOB]})
            bob = room.event(MEMBER, BOB, {"membership": "join"}, BOB, prev=[room.create.event_id])
            self.refused(room, bob, "only the create sender has the first-join special case")

    def test_join_for_someone_else_refused(self) -> None:
        for v in ALL:
            room = standard_room(v, members={BOB: "join"}, users={BOB: 100})
            self.refused(room, room.member_event(CAROL, "join", BOB), "sender != state_key")
            self.allowed(room, room.member_event(CAROL, "join"), "own join, public room")

    def test_banned_user_cannot_join(self) -> None:
        for v in ALL:
            for rule in ("public", "invite"):
                room = standard_room(v, join_rule=rule, members={CAROL: "ban"})
                self.refused(room, room.member_event(CAROL, "join"), f"banned, {rule} room")

    def test_public_room(self) -> None:
        for v in ALL:
            for current in ("leave", "invite", "join", "knock"):
                if current == "knock" and v not in KNOCK:
                    continue
                room = standard_room(v, join_rule="public", members={CAROL: current})
                self.allowed(room, room.member_event(CAROL, "join"), f"public, from {current}")
            room = standard_room(v, join_rule="public")
            self.allowed(room, room.member_event(CAROL, "join"), "public, never seen before")

    def test_invite_only_room(self) -> None:
        for v in ALL:
            for current, ok in (("invite", True), ("join", True), ("leave", False)):
                room = standard_room(v, join_rule="invite", members={CAROL: current})
                event = room.member_event(CAROL, "join")
                (self.allowed if ok else self.refused)(room, event, f"invite rule, from {current}")
            room = standard_room(v, join_rule="invite")
            self.refused(room, room.member_event(CAROL, "join"), "invite rule, no membership")
            if v in KNOCK:
                room = standard_room(v, join_rule="invite", members={CAROL: "knock"})
                self.refused(room, room.member_event(CAROL, "join"), "knocked, not yet invited")

    def test_knock_join_rule(self) -> None:
        for v in ALL:
            for current in ("invite", "join", "leave"):
                room = standard_room(v, join_rule="knock", members={CAROL: current})
                event = room.member_event(CAROL, "join")
                if v in KNOCK and current in ("invite", "join"):
                    self.allowed(room, event, f"knock rule acts as invite, from {current}")
                else:
                    self.refused(room, event, f"knock rule, from {current}")
            if v in KNOCK:
                room = standard_room(v, join_rule="knock", members={CAROL: "knock"})
                self.refused(room, room.member_event(CAROL, "join"), "knocked, not yet invited")

    def test_restricted_join_rule(self) -> None:
        for v in ALL:
            for rule in ("restricted", "knock_restricted"):
                supported = v in (RESTRICTED if rule == "restricted" else KNOCK_RESTRICTED)
                self.check_restricted(v, rule, supported)

    def check_restricted(self, v: str, rule: str, supported: bool) -> None:
        def room_for(carol: str | None = None, bob: str = "join", **levels: Any) -> Room:
            room = standard_room(
                v, join_rule=None, members={BOB: bob}, users={BOB: 50}, levels=levels
            )
            room.set_join_rule(rule, allow=[{"type": "m.room_membership", "room_id": "!o:x"}])
            if carol is not None:
                room.set_member(CAROL, carol)
            return room

        def via_join(room: Room, via: str | None) -> Event:
            content: dict[str, Any] = {"membership": "join"}
            extra: dict[str, Any] = {}
            if via is not None:
                content["join_authorised_via_users_server"] = via
                extra["signatures"] = {server_of(via): {"ed25519:k": "sig"}}
            return room.event(MEMBER, CAROL, content, CAROL, **extra)

        label = f"{rule} (supported={supported})"
        # 5.3.5.1: already invited or joined.
        for current in ("invite", "join"):
            room = room_for(carol=current)
            event = via_join(room, None)
            if supported:
                self.allowed(room, event, f"{label}: from {current}")
            else:
                # An unsupported join rule falls through to "Otherwise, reject".
                self.refused(room, event, f"{label}: from {current}")
        # 5.3.5.2: authorising user must be joined and able to invite.
        room = room_for(invite=50)
        event = via_join(room, BOB)
        (self.allowed if supported else self.refused)(room, event, f"{label}: via joined PL=invite")
        room = room_for(invite=0)
        (self.allowed if supported else self.refused)(
            room, via_join(room, BOB), f"{label}: via joined above invite"
        )
        room = room_for(invite=51)
        self.refused(room, via_join(room, BOB), f"{label}: via below the invite level")
        room = room_for(bob="leave")
        self.refused(room, via_join(room, BOB), f"{label}: via not joined")
        room = room_for(bob="invite")
        self.refused(room, via_join(room, BOB), f"{label}: via only invited")
        room = room_for()
        self.refused(room, via_join(room, None), f"{label}: no authorising user")
        self.refused(room, via_join(room, DAVE), f"{label}: via never in the room")
        # The banned check comes first.
        room = room_for(carol="ban")
        self.refused(room, via_join(room, BOB), f"{label}: banned")

    def test_knock_restricted_allows_knocking_only_from_v10(self) -> None:
        for v in KNOCK:
            room = standard_room(v, join_rule="knock_restricted")
            event = room.member_event(CAROL, "knock")
            if v in KNOCK_RESTRICTED:
                self.allowed(room, event, "knock in knock_restricted room")
            else:
                self.refused(room, event, "knock_restricted not a knock rule before v10")

    def test_other_join_rules_refused(self) -> None:
        for v in ALL:
            for rule in ("private", "custom.rule", ""):
                room = standard_room(v, join_rule=rule, members={CAROL: "invite"})
                self.refused(room, room.member_event(CAROL, "join"), f"join_rule {rule!r}")

    def test_no_join_rules_event(self) -> None:
        # Without any m.room.join_rules event a stranger cannot join (rule 5.3.7).
        for v in ALL:
            room = standard_room(v, join_rule=None)
            self.refused(room, room.member_event(CAROL, "join"), "no join rules, not invited")


class InviteRules(AuthCase):
    def test_sender_must_be_joined(self) -> None:
        for v in ALL:
            for current in ("leave", "invite", "ban") + (("knock",) if v in KNOCK else ()):
                room = standard_room(v, members={BOB: current})
                self.refused(room, room.member_event(CAROL, "invite", BOB), f"sender {current}")
            room = standard_room(v, members={BOB: "join"})
            self.allowed(room, room.member_event(CAROL, "invite", BOB), "sender joined")

    def test_target_joined_or_banned_refused(self) -> None:
        for v in ALL:
            for current, ok in (
                ("join", False), ("ban", False), ("leave", True), ("invite", True)
            ) + ((("knock", True),) if v in KNOCK else ()):
                room = standard_room(v, members={BOB: "join", CAROL: current})
                event = room.member_event(CAROL, "invite", BOB)
                (self.allowed if ok else self.refused)(room, event, f"target is {current}")

    def test_invite_level(self) -> None:
        for v in ALL:
            for bob_level, invite_level, ok in (
                (50, 50, True),  # equal is enough
                (51, 50, True),
                (49, 50, False),
                (0, None, True),  # invite defaults to 0
                (-1, None, False),
            ):
                levels = {} if invite_level is None else {"invite": invite_level}
                room = standard_room(
                    v, members={BOB: "join"}, users={BOB: bob_level}, levels=levels
                )
                event = room.member_event(CAROL, "invite", BOB)
                (self.allowed if ok else self.refused)(
                    room, event, f"PL {bob_level} vs invite {invite_level}"
                )

    def test_users_default_counts_for_unlisted_sender(self) -> None:
        for v in ALL:
            room = standard_room(v, members={BOB: "join"}, levels={"invite": 10, "users_default": 10})
            self.allowed(room, room.member_event(CAROL, "invite", BOB), "users_default == invite")
            room = standard_room(v, members={BOB: "join"}, levels={"invite": 10, "users_default": 9})
            self.refused(room, room.member_event(CAROL, "invite", BOB), "users_default < invite")


class ThirdPartyInvite(AuthCase):
    def setup(
        self, v: str, *, key_style: str = "public_key", sender_membership: str = "join",
        carol: str | None = None,
    ) -> tuple[Room, Any]:
        room = standard_room(v, members={BOB: sender_membership, DAVE: "join"}, users={DAVE: 50})
        if carol is not None:
            room.set_member(CAROL, carol)
        key = generate_signing_key("0")
        public = encode_verify_key_base64(get_verify_key(key))
        decoy = encode_verify_key_base64(get_verify_key(generate_signing_key("1")))
        validity = "https://id.example.org/_matrix/identity/v2/pubkey/isvalid"
        if key_style == "public_key":
            content = {"display_name": "c...@e", "key_validity_url": validity, "public_key": public}
        elif key_style == "public_keys":
            content = {
                "display_name": "c...@e",
                "key_validity_url": validity,
                "public_key": decoy,
                "public_keys": [
                    {"public_key": decoy, "key_validity_url": validity},
                    {"public_key": public, "key_validity_url": validity},
                ],
            }
        elif key_style == "urlsafe":
            raw = get_verify_key(key).encode()
            content = {"display_name": "c", "public_key": unpadded_base64(raw, urlsafe=True)}
        else:
            raise AssertionError(key_style)
        # Bob (joined, in sender_membership) sent the m.room.third_party_invite.
        room.put(room.event(TPI, BOB, content, "tok"))
        return room, key

    def signed(self, key: Any, mxid: str = CAROL, token: str = "tok") -> dict[str, Any]:
        return sign_json({"mxid": mxid, "token": token, "sender": BOB}, ID_SERVER, key)

    def invite(self, room: Room, third_party_invite: Any, sender: str = BOB) -> Event:
        return room.member_event(CAROL, "invite", sender, third_party_invite=third_party_invite)

    def test_valid_signature_allows(self) -> None:
        for v in ALL:
            for style in ("public_key", "public_keys", "urlsafe"):
                room, key = self.setup(v, key_style=style)
                event = self.invite(room, {"display_name": "c", "signed": self.signed(key)})
                self.allowed(room, event, f"valid third-party invite ({style})")

    def test_3pid_path_does_not_consult_invite_level_or_sender_membership(self) -> None:
        # Rule 5.4.1.7 allows outright; 5.4.2-5.4.4 are never reached.
        for v in ALL:
            room, key = self.setup(v)
            room.set_power_levels({DAVE: 50}, invite=100)
            event = self.invite(room, {"signed": self.signed(key)})
            self.allowed(room, event, "3pid invite below the invite level")
            room, key = self.setup(v, sender_membership="leave")
            event = self.invite(room, {"signed": self.signed(key)})
            self.allowed(room, event, "3pid invite by a sender who left")

    def test_5_4_1_1_banned_target_refused(self) -> None:
        for v in ALL:
            room, key = self.setup(v, carol="ban")
            self.refused(room, self.invite(room, {"signed": self.signed(key)}), "target banned")

    def test_5_4_1_2_signed_required(self) -> None:
        for v in ALL:
            room, key = self.setup(v)
            self.refused(room, self.invite(room, {"display_name": "c"}), "no signed")
            self.refused(room, self.invite(room, {"signed": "x"}), "signed not an object")
            self.refused(room, self.invite(room, "not an object"), "third_party_invite a string")

    def test_5_4_1_3_mxid_and_token_required(self) -> None:
        for v in ALL:
            room, key = self.setup(v)
            no_mxid = sign_json({"token": "tok"}, ID_SERVER, key)
            no_token = sign_json({"mxid": CAROL}, ID_SERVER, key)
            self.refused(room, self.invite(room, {"signed": no_mxid}), "no mxid")
            self.refused(room, self.invite(room, {"signed": no_token}), "no token")

    def test_5_4_1_4_mxid_must_match_state_key(self) -> None:
        for v in ALL:
            room, key = self.setup(v)
            event = self.invite(room, {"signed": self.signed(key, mxid=DAVE)})
            self.refused(room, event, "signed.mxid is someone else")

    def test_5_4_1_5_matching_third_party_invite_event_required(self) -> None:
        for v in ALL:
            room, key = self.setup(v)
            event = self.invite(room, {"signed": self.signed(key, token="other")})
            self.refused(room, event, "no m.room.third_party_invite for this token")

    def test_5_4_1_6_sender_must_match_third_party_invite_sender(self) -> None:
        for v in ALL:
            room, key = self.setup(v)
            event = self.invite(room, {"signed": self.signed(key)}, sender=DAVE)
            self.refused(room, event, "invite sent by someone other than the 3pid inviter")

    def test_5_4_1_8_bad_signatures_refused(self) -> None:
        for v in ALL:
            room, key = self.setup(v)
            other_key = generate_signing_key("0")
            event = self.invite(room, {"signed": self.signed(other_key)})
            self.refused(room, event, "signed by a key the invite does not list")
            tampered = self.signed(key)
            tampered["sender"] = DAVE
            self.refused(room, self.invite(room, {"signed": tampered}), "signed block altered")
            unsigned = {"mxid": CAROL, "token": "tok"}
            self.refused(room, self.invite(room, {"signed": unsigned}), "no signatures at all")


class LeaveRules(AuthCase):
    def test_own_leave(self) -> None:
        for v in ALL:
            cases = [("join", True), ("invite", True), ("leave", False), ("ban", False)]
            cases.append(("knock", v in KNOCK))
            for current, ok in cases:
                room = standard_room(v, members={CAROL: current})
                event = room.member_event(CAROL, "leave")
                (self.allowed if ok else self.refused)(room, event, f"own leave from {current}")
            room = standard_room(v)
            self.refused(room, room.member_event(CAROL, "leave"), "own leave, never in room")

    def test_kick_requires_sender_joined(self) -> None:
        for v in ALL:
            room = standard_room(v, members={BOB: "invite", CAROL: "join"}, users={BOB: 100})
            self.refused(room, room.member_event(CAROL, "leave", BOB), "kicker not joined")

    def test_kick_power(self) -> None:
        for v in ALL:
            for bob, carol, kick, ok, why in (
                (50, 0, 50, True, "kicker at kick level, target lower"),
                (50, 49, 50, True, "target just below"),
                (50, 50, 50, False, "target equal power"),
                (50, 60, 50, False, "target higher"),
                (49, 0, 50, False, "kicker below kick level"),
                (10, 0, 5, True, "custom kick level"),
            ):
                room = standard_room(
                    v, members={BOB: "join", CAROL: "join"}, users={BOB: bob, CAROL: carol},
                    levels={"kick": kick},
                )
                event = room.member_event(CAROL, "leave", BOB)
                (self.allowed if ok else self.refused)(room, event, why)

    def test_kick_default_level_is_50(self) -> None:
        for v in ALL:
            room = standard_room(v, members={BOB: "join", CAROL: "join"}, users={BOB: 50})
            self.allowed(room, room.member_event(CAROL, "leave", BOB), "default kick 50")
            room = standard_room(v, members={BOB: "join", CAROL: "join"}, users={BOB: 49})
            self.refused(room, room.member_event(CAROL, "leave", BOB), "below default kick 50")

    def test_kick_of_invited_or_absent_user(self) -> None:
        for v in ALL:
            for current in ("invite", "leave") + (("knock",) if v in KNOCK else ()):
                room = standard_room(v, members={BOB: "join", CAROL: current}, users={BOB: 50})
                self.allowed(room, room.member_event(CAROL, "leave", BOB), f"kick from {current}")

    def test_unban(self) -> None:
        # "To unban somebody, you must have power level greater than or equal to both the kick
        # and ban levels, and greater than the target user's power level."
        for v in ALL:
            for bob, ban, kick, carol, ok, why in (
                (50, 50, 50, 0, True, "at both levels"),
                (50, 60, 50, 0, False, "below ban level though at kick level"),
                (50, 50, 60, 0, False, "below kick level though at ban level"),
                (50, 50, 50, 50, False, "target equal power"),
                (100, 50, 50, 99, True, "target just below"),
            ):
                room = standard_room(
                    v, members={BOB: "join", CAROL: "ban"}, users={BOB: bob, CAROL: carol},
                    levels={"ban": ban, "kick": kick},
                )
                event = room.member_event(CAROL, "leave", BOB)
                (self.allowed if ok else self.refused)(room, event, f"unban: {why}")


class BanRules(AuthCase):
    def test_ban_requires_sender_joined(self) -> None:
        for v in ALL:
            for current in ("invite", "leave"):
                room = standard_room(v, members={BOB: current}, users={BOB: 100})
                self.refused(room, room.member_event(CAROL, "ban", BOB), f"banner is {current}")

    def test_ban_power(self) -> None:
        for v in ALL:
            for bob, carol, ban, ok, why in (
                (50, 0, 50, True, "at ban level, target lower"),
                (50, 49, None, True, "default ban level 50"),
                (49, 0, None, False, "below default ban level 50"),
                (50, 50, 50, False, "target equal power"),
                (50, 70, 50, False, "target higher"),
                (60, 0, 61, False, "below ban level"),
                (5, 0, 5, True, "custom ban level"),
            ):
                levels = {} if ban is None else {"ban": ban}
                room = standard_room(
                    v, members={BOB: "join", CAROL: "join"}, users={BOB: bob, CAROL: carol},
                    levels=levels,
                )
                event = room.member_event(CAROL, "ban", BOB)
                (self.allowed if ok else self.refused)(room, event, why)

    def test_ban_of_non_member_and_banned(self) -> None:
        for v in ALL:
            for current in ("leave", "invite", "ban"):
                room = standard_room(v, members={BOB: "join", CAROL: current}, users={BOB: 50})
                self.allowed(room, room.member_event(CAROL, "ban", BOB), f"ban from {current}")
            room = standard_room(v, members={BOB: "join"}, users={BOB: 50})
            self.allowed(room, room.member_event(EVE, "ban", BOB), "ban a user never seen")

    def test_cannot_ban_self(self) -> None:
        for v in ALL:
            room = standard_room(v, members={BOB: "join"}, users={BOB: 50})
            self.refused(room, room.member_event(BOB, "ban", BOB), "own power is not lower")


class KnockRules(AuthCase):
    def test_knock_before_v7_is_unknown_membership(self) -> None:
        for v in PRE_KNOCK:
            room = standard_room(v, join_rule="knock")
            self.refused(room, room.member_event(CAROL, "knock"), "no knocking before v7")

    def test_knock_needs_knock_join_rule(self) -> None:
        for v in KNOCK:
            rules = ["public", "invite", "restricted", "private"]
            if v not in KNOCK_RESTRICTED:
                rules.append("knock_restricted")
            for rule in rules:
                room = standard_room(v, join_rule=rule)
                self.refused(room, room.member_event(CAROL, "knock"), f"knock in {rule} room")
            room = standard_room(v, join_rule="knock")
            self.allowed(room, room.member_event(CAROL, "knock"), "knock in knock room")

    def test_knock_for_someone_else_refused(self) -> None:
        for v in KNOCK:
            room = standard_room(v, join_rule="knock", members={BOB: "join"}, users={BOB: 100})
            self.refused(room, room.member_event(CAROL, "knock", BOB), "sender != state_key")

    def test_knock_from_each_membership(self) -> None:
        for v in KNOCK:
            for rule in ("knock",) + (("knock_restricted",) if v in KNOCK_RESTRICTED else ()):
                for current, ok in (
                    ("leave", True), ("knock", True),
                    ("ban", False), ("invite", False), ("join", False),
                ):
                    room = standard_room(v, join_rule=rule, members={CAROL: current})
                    event = room.member_event(CAROL, "knock")
                    (self.allowed if ok else self.refused)(room, event, f"{rule}: from {current}")


# =========================================================================================
# Rules for all other events (v12 rules 6-11)
# =========================================================================================


class SenderMustBeJoined(AuthCase):
    def test_non_members_cannot_send(self) -> None:
        for v in ALL:
            for current in ("invite", "leave", "ban") + (("knock",) if v in KNOCK else ()):
                room = standard_room(v, members={BOB: current}, users={BOB: 100})
                self.refused(room, room.event(MESSAGE, BOB, {"body": "x"}), f"message, {current}")
                self.refused(room, room.event(NAME, BOB, {"name": "x"}, ""), f"state, {current}")
            room = standard_room(v, users={BOB: 100})
            self.refused(room, room.event(MESSAGE, BOB, {"body": "x"}), "never in the room")
            room.set_member(BOB, "join")
            self.allowed(room, room.event(MESSAGE, BOB, {"body": "x"}), "joined")
            self.allowed(room, room.event(NAME, BOB, {"name": "x"}, ""), "joined, PL 100")


class ThirdPartyInviteEvent(AuthCase):
    def test_invite_level_governs(self) -> None:
        for v in ALL:
            for bob, invite, ok in ((50, 50, True), (49, 50, False), (0, None, True)):
                # Neither state_default nor events[...] applies: only the invite level.
                levels: dict[str, Any] = {"state_default": 100, "events": {TPI: 100}}
                if invite is not None:
                    levels["invite"] = invite
                room = standard_room(v, members={BOB: "join"}, users={BOB: bob}, levels=levels)
                event = room.event(TPI, BOB, {"public_key": "x"}, "tok")
                (self.allowed if ok else self.refused)(room, event, f"PL {bob} vs invite {invite}")

    def test_sender_must_be_joined(self) -> None:
        for v in ALL:
            room = standard_room(v, members={BOB: "invite"}, users={BOB: 100})
            self.refused(room, room.event(TPI, BOB, {"public_key": "x"}, "tok"), "not joined")


class RequiredPowerLevel(AuthCase):
    def test_message_events_use_events_default(self) -> None:
        for v in ALL:
            for bob, default, ok in ((0, None, True), (0, 1, False), (10, 10, True), (9, 10, False)):
                levels = {} if default is None else {"events_default": default}
                room = standard_room(v, members={BOB: "join"}, users={BOB: bob}, levels=levels)
                event = room.event(MESSAGE, BOB, {"body": "x"})
                (self.allowed if ok else self.refused)(room, event, f"PL {bob}, default {default}")

    def test_state_events_use_state_default(self) -> None:
        for v in ALL:
            for bob, default, ok in (
                (50, None, True), (49, None, False), (10, 10, True), (9, 10, False), (0, 0, True)
            ):
                levels = {} if default is None else {"state_default": default}
                room = standard_room(v, members={BOB: "join"}, users={BOB: bob}, levels=levels)
                event = room.event(NAME, BOB, {"name": "x"}, "")
                (self.allowed if ok else self.refused)(room, event, f"PL {bob}, default {default}")

    def test_events_map_overrides_defaults(self) -> None:
        for v in ALL:
            room = standard_room(
                v, members={BOB: "join"}, users={BOB: 20},
                levels={"events": {MESSAGE: 30, NAME: 20, "m.custom.state": 20},
                        "events_default": 0, "state_default": 100},
            )
            self.refused(room, room.event(MESSAGE, BOB, {"body": "x"}), "events[msg]=30 > 20")
            self.allowed(room, room.event(NAME, BOB, {"name": "x"}, ""), "events[name]=20 == 20")
            self.allowed(room, room.event("m.custom.state", BOB, {}, "k"), "events[custom]=20")
            self.refused(room, room.event("m.topic.other", BOB, {}, ""), "state_default 100")
            self.allowed(room, room.event("m.reaction", BOB, {}), "events_default 0")

    def test_state_and_message_of_same_type_differ(self) -> None:
        for v in ALL:
            room = standard_room(v, members={BOB: "join"}, users={BOB: 0})
            self.allowed(room, room.event("m.custom", BOB, {}), "message: events_default 0")
            self.refused(room, room.event("m.custom", BOB, {}, ""), "state: state_default 50")

    def test_users_default_applies_to_unlisted_users(self) -> None:
        for v in ALL:
            room = standard_room(v, members={BOB: "join"}, levels={"users_default": 50})
            self.allowed(room, room.event(NAME, BOB, {"name": "x"}, ""), "users_default 50")
            room = standard_room(
                v, members={BOB: "join"}, users={BOB: 10}, levels={"users_default": 50}
            )
            self.refused(room, room.event(NAME, BOB, {"name": "x"}, ""), "explicit entry wins")

    def test_no_power_levels_event(self) -> None:
        # "If the room contains no m.room.power_levels event, the room's creator has a power
        # level of 100, and all other users have a power level of 0." and "If there is no
        # state_default in the m.room.power_levels event, or there is no
        # m.room.power_levels event, the state_default is 50."
        for v in ALL:
            room = standard_room(v, members={BOB: "join"}, power_levels=False)
            self.allowed(room, room.event(NAME, ALICE, {"name": "x"}, ""), "creator sends state")
            self.allowed(room, room.event(MESSAGE, BOB, {"body": "x"}), "anyone sends messages")
            self.refused(room, room.event(NAME, BOB, {"name": "x"}, ""), "PL 0 < state_default 50")
            self.refused(
                room, room.event(POWER_LEVELS, BOB, {"users": {BOB: 100}}, ""),
                "a non-creator cannot seize power",
            )

    def test_v12_creators_have_infinite_power(self) -> None:
        for v in V12:
            room = Room(v, create_content={"additional_creators": [BOB]})
            room.join(ALICE, BOB, CAROL)
            huge = 2**53 - 1
            room.set_power_levels({CAROL: huge}, events_default=huge, state_default=huge)
            for creator in (ALICE, BOB):
                self.allowed(room, room.event(MESSAGE, creator, {"body": "x"}), f"{creator} msg")
                self.allowed(room, room.event(NAME, creator, {"name": "x"}, ""), f"{creator} st")
            self.allowed(room, room.event(NAME, CAROL, {"name": "x"}, ""), "max integer level")
            room.set_member(DAVE, "join")
            self.refused(room, room.event(MESSAGE, DAVE, {"body": "x"}), "ordinary user")

    def test_creator_power_before_v12_is_ordinary(self) -> None:
        # Before v12 the creator's power comes only from the power levels event.
        for v in PRE_V12:
            room = Room(v)
            room.join(ALICE)
            room.set_power_levels(raw={"users": {ALICE: 10}, "state_default": 50})
            self.refused(room, room.event(NAME, ALICE, {"name": "x"}, ""), "creator at PL 10")

    def test_additional_creators_give_no_power_before_v12(self) -> None:
        for v in PRE_V12:
            room = Room(v, create_content={"additional_creators": [BOB]})
            room.join(ALICE, BOB)
            room.set_power_levels()
            self.refused(room, room.event(NAME, BOB, {"name": "x"}, ""), "not a creator pre-v12")


class AtStateKeys(AuthCase):
    def test_state_keys_starting_with_at(self) -> None:
        for v in ALL:
            room = standard_room(v, members={BOB: "join"}, users={BOB: 100})
            self.allowed(room, room.event("m.custom", BOB, {}, BOB), "own user ID as state key")
            self.refused(room, room.event("m.custom", BOB, {}, CAROL), "another user's ID")
            self.refused(room, room.event("m.custom", ALICE, {}, BOB), "creator, other's ID")
            self.refused(room, room.event("m.custom", BOB, {}, BOB + "x"), "prefix of own ID")
            self.refused(room, room.event("m.custom", BOB, {}, "@"), "bare @")
            self.allowed(room, room.event("m.custom", BOB, {}, "x" + CAROL), "@ not at start")
            self.allowed(room, room.event("m.custom", BOB, {}, ""), "empty state key")

    def test_power_check_comes_first(self) -> None:
        for v in ALL:
            room = standard_room(v, members={BOB: "join"}, users={BOB: 0})
            self.refused(room, room.event("m.custom", BOB, {}, BOB), "own key, but below level")


# =========================================================================================
# v1/v2 rule 11: redactions
# =========================================================================================


class RedactionRule(AuthCase):
    def redaction(self, room: Room, sender: str, redacts: str) -> Event:
        if room.version in IMPLICIT_CREATOR:
            return room.event(REDACTION, sender, {"redacts": redacts})
        return room.event(REDACTION, sender, {}, redacts=redacts)

    def test_v1_v2_redaction_rule(self) -> None:
        for v in V1_V2:
            room = standard_room(v, members={BOB: "join", EVE: "join"}, users={BOB: 50})
            # Redact level (default 50) lets anyone's event be redacted.
            self.allowed(room, self.redaction(room, BOB, "$x:remote.test"), "PL >= redact")
            # Otherwise the redacted event must come from the redaction's own domain.
            self.allowed(room, self.redaction(room, EVE, "$x:remote.test"), "same domain")
            self.refused(room, self.redaction(room, EVE, "$x:example.org"), "other domain")
            room.set_power_levels({BOB: 50}, redact=51)
            self.refused(room, self.redaction(room, BOB, "$x:remote.test"), "PL < redact")
            self.allowed(room, self.redaction(room, BOB, "$y:example.org"), "same domain, low PL")

    def test_v1_v2_redaction_still_needs_event_power(self) -> None:
        for v in V1_V2:
            room = standard_room(
                v, members={BOB: "join"}, users={BOB: 50}, levels={"events": {REDACTION: 60}}
            )
            self.refused(room, self.redaction(room, BOB, "$x:example.org"), "rule 8 first")

    def test_v3_plus_redaction_is_an_ordinary_event(self) -> None:
        # "In particular, the redact level is not considered by the auth rules."
        for v in V3_PLUS:
            room = standard_room(
                v, members={EVE: "join"}, levels={"redact": 100}
            )
            self.allowed(room, self.redaction(room, EVE, "$x:example.org"), "redact level ignored")
            room.set_power_levels(events={REDACTION: 10})
            self.refused(room, self.redaction(room, EVE, "$x:remote.test"), "events[redaction]")
            room = standard_room(v, members={EVE: "join"}, levels={"events_default": 5})
            self.refused(room, self.redaction(room, EVE, "$x:remote.test"), "events_default")


# =========================================================================================
# Power levels (v12 rule 10; rule 9 in v3-v11, rule 10 in v1/v2)
# =========================================================================================


class PowerLevelsShape(AuthCase):
    """Rules 10.1-10.3 (v10+) / 10.1 (before): the content must be well formed."""

    def pl_event(self, room: Room, content: Mapping[str, Any], sender: str = ALICE) -> Event:
        return room.event(POWER_LEVELS, sender, content, "")

    def test_users_must_map_user_ids_to_integers(self) -> None:
        for v in ALL:
            room = standard_room(v)
            base = room.pl_content()
            for users, why in (
                ([BOB], "users is a list"),
                ("x", "users is a string"),
                ({"bob": 10}, "key without @"),
                ({"@bob": 10}, "key without domain"),
                ({"@bob:": 10}, "key with empty domain"),
                ({"#bob:example.org": 10}, "room alias as key"),
                ({BOB: None}, "null level"),
                ({BOB: True}, "boolean level"),
                ({BOB: [10]}, "list level"),
                ({BOB: "ten"}, "non-numeric string"),
                ({BOB: "1.5"}, "decimal string"),
            ):
                content = {**base, "users": {**base["users"], **users}} if isinstance(
                    users, dict
                ) else {**base, "users": users}
                self.refused(room, self.pl_event(room, content), why)
            ok = {**base, "users": {**base["users"], BOB: 10, "@x:[::1]:8448": -5}}
            self.allowed(room, self.pl_event(room, ok), "valid users map")
            # Historical user IDs "MUST" be accepted (appendices: any localpart without
            # `:` or NUL, even empty).
            historical = {"@Old Style!:example.org": 1, "@:example.org": 2, "@ü:example.org": 3}
            ok = {**base, "users": {**base["users"], **historical}}
            self.allowed(room, self.pl_event(room, ok), "historical user IDs")
            # No `users` at all is fine (for Alice this removes her own entry, which 10.9
            # does not restrict).
            no_users = {k: val for k, val in base.items() if k != "users"}
            self.allowed(room, self.pl_event(room, no_users), "users absent")

    def test_stringy_user_levels_before_v10(self) -> None:
        for v in ALL:
            room = standard_room(v)
            base = room.pl_content()
            event = self.pl_event(room, {**base, "users": {**base["users"], BOB: " +10 "}})
            if v in STRINGY:
                self.allowed(room, event, "string integer level")
            else:
                self.refused(room, event, "string level in v10+")

    def test_float_user_levels_only_v1_to_v5(self) -> None:
        for v in ALL:
            room = standard_room(v)
            base = room.pl_content()
            event = self.pl_event(room, {**base, "users": {**base["users"], BOB: 50.57}})
            if v in V1_V5:
                self.allowed(room, event, "floaty power level (truncated)")
            else:
                self.refused(room, event, "float level outside v1-v5")
            for bad in (math.nan, math.inf, -math.inf):
                event = self.pl_event(room, {**base, "users": {**base["users"], BOB: bad}})
                self.refused(room, event, f"{bad} level")

    def test_v10_scalars_must_be_integers(self) -> None:
        for v in ALL:
            room = standard_room(v)
            base = room.pl_content()
            for key in ("users_default", "events_default", "state_default", "ban", "redact",
                        "kick", "invite"):
                self.allowed(room, self.pl_event(room, {**base, key: 10}), f"{key}: 10")
                event = self.pl_event(room, {**base, key: "10"})
                if v in INTEGER_PL:
                    self.refused(room, event, f"{key}: '10' in v10+")
                else:
                    self.allowed(room, event, f"{key}: '10' (stringy)")
                if v in INTEGER_PL:
                    for bad in (10.0, True, None, [10], {"a": 1}):
                        self.refused(room, self.pl_event(room, {**base, key: bad}), f"{key}={bad}")

    def test_non_finite_floats_rejected_in_floaty_versions(self) -> None:
        # v1-floaty-power-levels: "Infinity, -Infinity and NaN" cause the event to be rejected.
        for v in V1_V5:
            room = standard_room(v)
            base = room.pl_content()
            for bad in (math.nan, math.inf, -math.inf):
                self.refused(room, self.pl_event(room, {**base, "ban": bad}), f"ban={bad}")
                self.refused(
                    room, self.pl_event(room, {**base, "events": {NAME: bad}}), f"events={bad}"
                )
            self.allowed(room, self.pl_event(room, {**base, "ban": 5.114698e1}), "finite float")

    def test_v10_events_and_notifications_must_map_to_integers(self) -> None:
        for v in ALL:
            room = standard_room(v)
            base = room.pl_content()
            for key in ("events", "notifications"):
                ok = self.pl_event(room, {**base, key: {"a.b": 10}})
                self.allowed(room, ok, f"{key} maps to an integer")
                stringy = self.pl_event(room, {**base, key: {"a.b": "10"}})
                if v in INTEGER_PL:
                    self.refused(room, stringy, f"{key} value '10' in v10+")
                    for bad in ([10], "x", 10, {"a.b": None}, {"a.b": 1.0}, {"a.b": False}):
                        self.refused(room, self.pl_event(room, {**base, key: bad}), f"{key}={bad}")
                else:
                    self.allowed(room, stringy, f"{key} value '10' (stringy)")


class PowerLevelsChanges(AuthCase):
    """Rules 10.4-10.10 (v12 numbering): who may change what."""

    SCALARS = ("users_default", "events_default", "state_default", "ban", "redact", "kick",
               "invite")

    def room(self, v: str, **levels: Any) -> Room:
        """Bob (PL 50) is the actor; Carol 40, Dave 50.

        Sending m.room.power_levels needs 50 unless the test replaces `events`, so that a
        raised `state_default` does not stop Bob at rule 8.
        """
        levels.setdefault("events", {POWER_LEVELS: 50})
        room = standard_room(
            v, members={BOB: "join", CAROL: "join", DAVE: "join"},
            users={BOB: 50, CAROL: 40, DAVE: 50}, levels=levels,
        )
        return room

    def change(self, room: Room, sender: str = BOB, **changes: Any) -> Event:
        content = copy.deepcopy(dict(room.state[(POWER_LEVELS, "")].content))
        for key, value in changes.items():
            if value is _REMOVE:
                content.pop(key, None)
            else:
                content[key] = value
        return room.event(POWER_LEVELS, sender, content, "")

    def users_change(self, room: Room, sender: str = BOB, **changes: Any) -> Event:
        users = dict(room.state[(POWER_LEVELS, "")].content.get("users", {}))
        for user, value in changes.items():
            uid = {"bob": BOB, "carol": CAROL, "dave": DAVE, "eve": EVE}[user]
            if value is _REMOVE:
                users.pop(uid, None)
            else:
                users[uid] = value
        return self.change(room, sender, users=users)

    def test_first_power_levels_event_is_allowed(self) -> None:
        for v in ALL:
            room = standard_room(v, members={BOB: "join"}, power_levels=False)
            content = room.pl_content({BOB: 9000}, ban=9000, events={"x": 9000})
            self.allowed(room, room.event(POWER_LEVELS, ALICE, content, ""), "no previous PL")

    def test_unchanged_content_is_allowed(self) -> None:
        for v in ALL:
            room = self.room(v, ban=100, events={NAME: 100}, notifications={"room": 100})
            self.allowed(room, self.change(room), "resend identical power levels")

    def test_scalar_changes(self) -> None:
        for v in ALL:
            for key in self.SCALARS:
                for old, new, ok, why in (
                    (50, 40, True, "current == sender, lowered"),
                    (40, 50, True, "raised to the sender's level"),
                    (60, 40, False, "current above sender"),
                    (40, 51, False, "new above sender"),
                    (None, 50, True, "added at sender's level"),
                    (None, 51, False, "added above sender"),
                    (50, None, True, "removed at sender's level"),
                    (51, None, False, "removed from above sender"),
                    (60, 60, True, "unchanged though above sender"),
                ):
                    levels = {} if old is None else {key: old}
                    room = self.room(v, **levels)
                    event = self.change(room, **{key: _REMOVE if new is None else new})
                    (self.allowed if ok else self.refused)(room, event, f"{key}: {why}")

    def test_events_and_notifications_changes(self) -> None:
        for v in ALL:
            for name in ("events", "notifications"):
                checked = name == "events" or v in V6_PLUS
                for old, new, ok, why in (
                    ({"k": 50}, {"k": 40}, True, "current == sender, lowered"),
                    ({"k": 40}, {"k": 50}, True, "raised to sender's level"),
                    ({"k": 60}, {"k": 40}, False, "current above sender"),
                    ({"k": 40}, {"k": 51}, False, "new above sender"),
                    ({}, {"k": 50}, True, "added at sender's level"),
                    ({}, {"k": 51}, False, "added above sender"),
                    ({"k": 50}, {}, True, "removed at sender's level"),
                    ({"k": 51}, {}, False, "removed from above sender"),
                    ({"k": 60, "j": 0}, {"k": 60, "j": 10}, True, "other entry above sender"),
                    (None, {"k": 51}, False, "whole map added above sender"),
                    ({"k": 51}, None, False, "whole map removed from above sender"),
                ):
                    room = self.room(v) if old is None else self.room(v, **{name: old})
                    event = self.change(room, **{name: _REMOVE if new is None else new})
                    label = f"{name}: {why}"
                    if ok or not checked:
                        self.allowed(room, event, label + ("" if checked else " (unchecked pre-v6)"))
                    else:
                        self.refused(room, event, label)

    def test_users_changes(self) -> None:
        for v in ALL:
            for changes, ok, why in (
                ({"carol": 30}, True, "lower a user below the sender"),
                ({"carol": 50}, True, "raise a user to the sender's level"),
                ({"carol": 51}, False, "raise a user above the sender"),
                ({"carol": _REMOVE}, True, "remove a user below the sender"),
                ({"dave": 40}, False, "lower a user at the sender's level"),
                ({"dave": _REMOVE}, False, "remove a user at the sender's level"),
                ({"eve": 50}, True, "add a user at the sender's level"),
                ({"eve": 51}, False, "add a user above the sender"),
                ({"bob": 10}, True, "sender lowers own level"),
                ({"bob": _REMOVE}, True, "sender removes own entry"),
                ({"bob": 51}, False, "sender raises own level"),
                ({"dave": 50}, True, "unchanged entry at the sender's level"),
            ):
                room = self.room(v)
                event = self.users_change(room, **changes)
                (self.allowed if ok else self.refused)(room, event, why)

    def test_higher_user_untouchable(self) -> None:
        for v in ALL:
            room = standard_room(
                v, members={BOB: "join", CAROL: "join"}, users={BOB: 50, CAROL: 75}
            )
            event = self.users_change(room, carol=0)
            self.refused(room, event, "demote a user above the sender")
            # The higher user may demote the lower one.
            event = self.users_change(room, sender=CAROL, bob=0)
            self.allowed(room, event, "demote a lower user")

    def test_sender_power_comes_from_current_state(self) -> None:
        # A sender cannot rely on the level the new event would give them.
        for v in ALL:
            room = self.room(v)
            event = self.change(room, users={**room.state[(POWER_LEVELS, "")].content["users"],
                                             BOB: 100}, ban=100)
            self.refused(room, event, "self-promotion in the same event")

    def test_stringy_values_compared_as_integers(self) -> None:
        for v in STRINGY:
            room = standard_room(
                v, members={BOB: "join", CAROL: "join"}, users={BOB: "50", CAROL: " 60 "},
                levels={"ban": "+40"},
            )
            self.refused(room, self.users_change(room, carol=0), "'60' is above Bob's '50'")
            self.allowed(room, self.change(room, ban=50), "'+40' -> 50 within Bob's 50")
            self.refused(room, self.change(room, ban="0051"), "'0051' above Bob's 50")
            self.allowed(room, self.users_change(room, eve="050"), "'050' == Bob's 50")

    def test_floaty_values_truncated(self) -> None:
        for v in V1_V5:
            room = standard_room(
                v, members={BOB: "join", CAROL: "join"}, users={BOB: 50.9, CAROL: 50.2}
            )
            # Both are 50: Bob cannot touch Carol (equal power).
            self.refused(room, self.users_change(room, carol=0), "50.2 ~ 50 equals Bob's 50.9 ~ 50")
            self.refused(room, self.change(room, ban=51), "51 above truncated 50")
            self.allowed(room, self.change(room, ban=50.99), "50.99 truncates to 50")

    def test_v12_creators_cannot_be_listed(self) -> None:
        for v in V12:
            room = Room(v, create_content={"additional_creators": [BOB]})
            room.join(ALICE, BOB, CAROL)
            for users, why in (({ALICE: 100}, "create sender"), ({BOB: 100}, "additional")):
                # Refused even as the first power levels event.
                event = room.event(POWER_LEVELS, ALICE, {"users": users}, "")
                self.refused(room, event, f"{why} creator listed (first PL)")
            room.set_power_levels({CAROL: 100})
            for users, why in (({ALICE: 100}, "create sender"), ({BOB: 100}, "additional")):
                event = room.event(POWER_LEVELS, ALICE, {"users": {CAROL: 100, **users}}, "")
                self.refused(room, event, f"{why} creator listed")
            event = room.event(POWER_LEVELS, BOB, {"users": {CAROL: 0}, "ban": 2**53 - 1}, "")
            self.allowed(room, event, "a creator may set anything else")

    def test_creators_may_be_listed_before_v12(self) -> None:
        for v in PRE_V12:
            room = Room(v, create_content={"additional_creators": [BOB]})
            room.join(ALICE, BOB)
            event = room.event(POWER_LEVELS, ALICE, {"users": {ALICE: 100, BOB: 100}}, "")
            self.allowed(room, event, "creator listed")

    def test_v12_creator_outranks_everyone(self) -> None:
        for v in V12:
            room = Room(v)
            room.join(ALICE, BOB)
            room.set_power_levels({BOB: 2**53 - 1}, ban=2**53 - 1)
            event = room.event(POWER_LEVELS, ALICE, {"users": {BOB: 0}, "ban": 0}, "")
            self.allowed(room, event, "creator demotes a user at the maximum integer")
            # Bob, at the maximum integer, may still manage lower users...
            event = room.event(POWER_LEVELS, BOB, {"users": {BOB: 2**53 - 1, CAROL: 10}}, "")
            self.allowed(room, event, "Bob adds a lower user")
            # ...but cannot list the creator, whatever level he gives her.
            event = room.event(POWER_LEVELS, BOB, {"users": {BOB: 2**53 - 1, ALICE: 0}}, "")
            self.refused(room, event, "Bob lists the creator")



# =========================================================================================
# Membership power comparisons involving v12 creators
# =========================================================================================


class V12CreatorMembership(AuthCase):
    def test_creators_cannot_be_kicked_or_banned(self) -> None:
        for v in V12:
            room = Room(v, create_content={"additional_creators": [BOB]})
            room.join(ALICE, BOB, CAROL)
            room.set_power_levels({CAROL: 2**53 - 1})
            room.set_join_rule("public")
            for creator in (ALICE, BOB):
                self.refused(room, room.member_event(creator, "leave", CAROL), f"kick {creator}")
                self.refused(room, room.member_event(creator, "ban", CAROL), f"ban {creator}")
            self.allowed(room, room.member_event(CAROL, "ban", BOB), "additional creator bans")
            self.allowed(room, room.member_event(CAROL, "leave", ALICE), "creator kicks")
            # Creators are equal: neither can kick the other.
            self.refused(room, room.member_event(BOB, "leave", ALICE), "creator kicks creator")
            self.refused(room, room.member_event(ALICE, "ban", BOB), "creator bans creator")

    def test_additional_creator_can_invite_and_authorise_joins(self) -> None:
        for v in V12:
            room = Room(v, create_content={"additional_creators": [BOB]})
            room.join(ALICE, BOB)
            room.set_power_levels(invite=2**53 - 1)
            room.set_join_rule("restricted", allow=[])
            self.allowed(room, room.member_event(CAROL, "invite", BOB), "creator invites")
            join = room.event(
                MEMBER, CAROL, {"membership": "join", "join_authorised_via_users_server": BOB},
                CAROL, signatures={"example.org": {"ed25519:a": "s"}},
            )
            self.allowed(room, join, "creator authorises a restricted join")
            room.join(DAVE)
            self.refused(room, room.member_event(CAROL, "invite", DAVE), "ordinary user")


# =========================================================================================
# Helpers: power level parsing and lookup
# =========================================================================================


class PowerLevelHelpers(unittest.TestCase):
    def test_parse_integers_everywhere(self) -> None:
        for v in ALL:
            rv = KNOWN_ROOM_VERSIONS[v]
            for value in (0, 100, -5, 2**53 - 1):
                self.assertEqual(parse_power_level(value, rv), value, v)
            for value in (None, True, False, [1], {"a": 1}):
                self.assertIsNone(parse_power_level(value, rv), f"v{v} {value!r}")

    def test_stringy_formats(self) -> None:
        good = {
            "100": 100, "000100": 100, "+100": 100, "-100": -100, " 100 ": 100,
            " 00100 ": 100, " +100 ": 100, " -100 ": -100, "0": 0, "\t7\n": 7,
        }
        bad = ["", " ", "+", "-", "1.5", "1e3", "abc", "+-1", "--1", "- 1", "1 0", "0x10",
               "١٠", "²"]
        for v in ALL:
            rv = KNOWN_ROOM_VERSIONS[v]
            for text, expected in good.items():
                parsed = parse_power_level(text, rv)
                if v in STRINGY:
                    self.assertEqual(parsed, expected, f"v{v} {text!r}")
                else:
                    self.assertIsNone(parsed, f"v{v} {text!r}")
            for text in bad:
                self.assertIsNone(parse_power_level(text, rv), f"v{v} {text!r}")

    def test_floaty_values(self) -> None:
        for v in ALL:
            rv = KNOWN_ROOM_VERSIONS[v]
            cases = {5.114698e4: 51146, 50.57: 50, 50.0: 50, -1.5: -1}
            for value, expected in cases.items():
                parsed = parse_power_level(value, rv)
                if v in V1_V5:
                    self.assertEqual(parsed, expected, f"v{v} {value!r}")
                else:
                    self.assertIsNone(parsed, f"v{v} {value!r}")
            for value in (math.nan, math.inf, -math.inf):
                self.assertIsNone(parse_power_level(value, rv), f"v{v} {value!r}")

    def test_user_power_level_without_power_levels_event(self) -> None:
        for v in ALL:
            room = Room(v, create_content={"additional_creators": [CAROL]})
            creator_level = user_power_level(ALICE, room.state, room.rv)
            if v in V12:
                self.assertEqual(creator_level, math.inf)
                self.assertEqual(user_power_level(CAROL, room.state, room.rv), math.inf)
            else:
                self.assertEqual(creator_level, 100, v)
                self.assertEqual(user_power_level(CAROL, room.state, room.rv), 0, v)
            self.assertEqual(user_power_level(BOB, room.state, room.rv), 0, v)

    def test_user_power_level_creator_field(self) -> None:
        for v in EXPLICIT_CREATOR:
            room = Room(v, create_content={"creator": BOB})
            self.assertEqual(user_power_level(BOB, room.state, room.rv), 100, v)
            self.assertEqual(user_power_level(ALICE, room.state, room.rv), 0, v)
        for v in ["11"]:
            room = Room(v, create_content={"creator": BOB})
            self.assertEqual(user_power_level(ALICE, room.state, room.rv), 100, v)
            self.assertEqual(user_power_level(BOB, room.state, room.rv), 0, v)

    def test_user_power_level_with_power_levels_event(self) -> None:
        for v in ALL:
            room = Room(v)
            room.set_power_levels({BOB: 42}, users_default=7)
            self.assertEqual(user_power_level(BOB, room.state, room.rv), 42, v)
            self.assertEqual(user_power_level(CAROL, room.state, room.rv), 7, v)
            expected_creator = math.inf if v in V12 else 100
            self.assertEqual(user_power_level(ALICE, room.state, room.rv), expected_creator, v)
            room.set_power_levels({BOB: 42})
            self.assertEqual(user_power_level(CAROL, room.state, room.rv), 0, v)

    def test_required_power_level_defaults(self) -> None:
        for v in ALL:
            room = Room(v)
            # No power levels event: state_default 50, events_default 0.
            self.assertEqual(required_power_level(NAME, True, room.state, room.rv), 50, v)
            self.assertEqual(required_power_level(MESSAGE, False, room.state, room.rv), 0, v)
            room.set_power_levels()
            self.assertEqual(required_power_level(NAME, True, room.state, room.rv), 50, v)
            self.assertEqual(required_power_level(MESSAGE, False, room.state, room.rv), 0, v)
            room.set_power_levels(events={NAME: 5, MESSAGE: 6}, state_default=1, events_default=2)
            self.assertEqual(required_power_level(NAME, True, room.state, room.rv), 5, v)
            self.assertEqual(required_power_level(MESSAGE, False, room.state, room.rv), 6, v)
            self.assertEqual(required_power_level("x", True, room.state, room.rv), 1, v)
            self.assertEqual(required_power_level("x", False, room.state, room.rv), 2, v)
