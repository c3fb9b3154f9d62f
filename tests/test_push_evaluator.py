"""The push rule evaluator (homeserver/push/evaluator.py): conditions, actions, the spec's
server-default rules, and malformed rules. Pure functions, no server.

Spec: client-server API "Push Rules" ("Conditions", "Predefined Rules"), appendices
"Glob-style matching" and "Dot-separated property paths".
"""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from homeserver.push.evaluator import (
    SELF,
    CompiledRuleset,
    EventView,
    Members,
    PushContext,
    compile_condition,
    compile_ruleset,
    evaluate_all,
    evaluate_members,
    split_path,
    thread_id_of,
)
from homeserver.push.rules import UserPushRules, build_ruleset

ME = "@me:test"
OTHER = "@other:test"
ROOM = "!room:test"


def event(type_: str = "m.room.message", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": type_,
        "sender": OTHER,
        "room_id": ROOM,
        "event_id": "$e",
        "content": {"msgtype": "m.text", "body": "hello"},
    }
    base.update(fields)
    return base


def ctx(
    members: int = 5, name: str | None = "Me Myself", sender_power: float = 0, room_level: int = 50
) -> PushContext:
    return PushContext(members, name, sender_power, {"room": room_level})


def matches(condition: dict[str, Any], ev: dict[str, Any], context: PushContext | None = None) -> bool:
    return compile_condition(condition)(EventView(ev), context or ctx())


def default_ruleset(content: dict[str, Any] | None = None) -> CompiledRuleset:
    return compile_ruleset(ME, build_ruleset(ME, UserPushRules.from_content(content)))


def outcome(ev: dict[str, Any], context: PushContext | None = None, content: Any = None) -> str:
    """The matching rule's ID and whether it notifies / highlights, e.g. '.m.rule.message n'."""
    rule = default_ruleset(content).evaluate(EventView(ev), context or ctx())
    if rule is None:
        return "none"
    return f"{rule.rule_id} {'n' if rule.notify else ''}{'h' if rule.highlight else ''}".strip()


class PropertyPaths(unittest.TestCase):
    def test_escaped_dots_and_backslashes(self) -> None:
        self.assertEqual(split_path("content.body"), ("content", "body"))
        self.assertEqual(split_path("content.m\\.relates_to.rel_type"),
                         ("content", "m.relates_to", "rel_type"))
        self.assertEqual(split_path("content.m\\\\foo"), ("content", "m\\foo"))
        # Other escapes are a literal backslash and the character.
        self.assertEqual(split_path("content.a\\xb"), ("content", "a\\xb"))


class EventMatch(unittest.TestCase):
    def test_spec_topic_example(self) -> None:
        cond = {"kind": "event_match", "key": "content.topic", "pattern": "lunc?*"}
        for topic, expected in [("Lunch plans", True), ("LUNCH", True), (" lunch", False),
                                ("lunc", False), (None, False)]:
            ev = event("m.room.topic", content={"topic": topic}, state_key="")
            self.assertEqual(matches(cond, ev), expected, topic)

    def test_missing_or_non_string_never_matches_even_star(self) -> None:
        cond = {"kind": "event_match", "key": "content.nope", "pattern": "*"}
        self.assertFalse(matches(cond, event()))
        cond = {"kind": "event_match", "key": "content.n", "pattern": "*"}
        self.assertFalse(matches(cond, event(content={"n": 3})))

    def test_body_word_boundaries(self) -> None:
        cond = {"kind": "event_match", "key": "content.body", "pattern": "ex*ple"}
        for body, expected in [("An example event.", True), ("exple", True),
                               ("An exciting triple-whammy", True), ("examples", False),
                               ("anexample", False), ("exampled", False)]:
            self.assertEqual(matches(cond, event(content={"body": body})), expected, body)

    def test_other_keys_match_whole_value(self) -> None:
        cond = {"kind": "event_match", "key": "content.msgtype", "pattern": "m.notice"}
        self.assertTrue(matches(cond, event(content={"msgtype": "M.NOTICE"})))
        self.assertFalse(matches(cond, event(content={"msgtype": "m.notice2"})))
        # Regex metacharacters in a pattern are literal.
        cond = {"kind": "event_match", "key": "content.msgtype", "pattern": "m.n(tice"}
        self.assertFalse(matches(cond, event(content={"msgtype": "mxn(tice"})))


class PropertyConditions(unittest.TestCase):
    def test_property_is_exact_types(self) -> None:
        cond = {"kind": "event_property_is", "key": "content.m\\.federate", "value": True}
        self.assertTrue(matches(cond, event(content={"m.federate": True})))
        self.assertFalse(matches(cond, event(content={"m.federate": "true"})))
        self.assertFalse(matches(cond, event(content={"m.federate": 1})))
        self.assertFalse(matches(cond, event(content={})))
        null = {"kind": "event_property_is", "key": "content.x", "value": None}
        self.assertTrue(matches(null, event(content={"x": None})))
        self.assertFalse(matches(null, event(content={})))

    def test_property_contains(self) -> None:
        cond = {"kind": "event_property_contains", "key": "content.alt_aliases",
                "value": "#myroom:example.com"}
        self.assertTrue(matches(cond, event(content={"alt_aliases": ["#a:x", "#myroom:example.com"]})))
        self.assertFalse(matches(cond, event(content={"alt_aliases": [":example.com"]})))
        self.assertFalse(matches(cond, event(content={"alt_aliases": "#myroom:example.com"})))
        ints = {"kind": "event_property_contains", "key": "content.n", "value": 1}
        self.assertFalse(matches(ints, event(content={"n": [True, "1"]})))
        self.assertTrue(matches(ints, event(content={"n": [{"a": 1}, 1]})))

    def test_member_count(self) -> None:
        for spec, count, expected in [("2", 2, True), ("2", 3, False), ("==2", 2, True),
                                      ("<3", 2, True), ("<3", 3, False), (">3", 4, True),
                                      (">=3", 3, True), ("<=3", 4, False)]:
            cond = {"kind": "room_member_count", "is": spec}
            self.assertEqual(matches(cond, event(), ctx(members=count)), expected, (spec, count))

    def test_sender_permission(self) -> None:
        cond = {"kind": "sender_notification_permission", "key": "room"}
        self.assertTrue(matches(cond, event(), ctx(sender_power=50)))
        self.assertFalse(matches(cond, event(), ctx(sender_power=49)))
        self.assertTrue(matches(cond, event(), ctx(sender_power=10, room_level=10)))
        # A key without a level defaults to 50.
        other = {"kind": "sender_notification_permission", "key": "other"}
        self.assertFalse(matches(other, event(), ctx(sender_power=49)))

    def test_contains_display_name(self) -> None:
        cond = {"kind": "contains_display_name"}
        self.assertTrue(matches(cond, event(content={"body": "hi me myself!"})))
        self.assertFalse(matches(cond, event(content={"body": "hi me myselfish"})))
        self.assertFalse(matches(cond, event(content={"body": "hi"})))
        self.assertFalse(matches(cond, event(content={"body": "hi"}), ctx(name=None)))
        self.assertFalse(matches(cond, event(content={"body": "a b"}), ctx(name=" ")))
        # A display name is not a pattern.
        self.assertFalse(matches(cond, event(content={"body": "ab"}), ctx(name="a*")))

    def test_unknown_kind_never_matches(self) -> None:
        self.assertFalse(matches({"kind": "org.example.future"}, event()))


class DefaultRules(unittest.TestCase):
    def test_plain_message_notifies(self) -> None:
        self.assertEqual(outcome(event()), ".m.rule.message n")

    def test_one_to_one(self) -> None:
        self.assertEqual(outcome(event(), ctx(members=2)), ".m.rule.room_one_to_one n")
        self.assertEqual(outcome(event("m.room.encrypted", content={"ciphertext": "x"}),
                                 ctx(members=2)),
                         ".m.rule.encrypted_room_one_to_one n")
        self.assertEqual(outcome(event("m.room.encrypted", content={"ciphertext": "x"})),
                         ".m.rule.encrypted n")

    def test_user_mention_highlights(self) -> None:
        ev = event(content={"body": "hey", "m.mentions": {"user_ids": [ME]}})
        self.assertEqual(outcome(ev), ".m.rule.is_user_mention nh")
        ev = event(content={"body": "hey", "m.mentions": {"user_ids": [OTHER]}})
        self.assertEqual(outcome(ev), ".m.rule.message n")

    def test_room_mention_needs_permission(self) -> None:
        ev = event(content={"body": "all", "m.mentions": {"room": True}})
        self.assertEqual(outcome(ev, ctx(sender_power=50)), ".m.rule.is_room_mention nh")
        self.assertEqual(outcome(ev, ctx(sender_power=0)), ".m.rule.message n")
        legacy = event(content={"body": "@room look"})
        self.assertEqual(outcome(legacy, ctx(sender_power=100)), ".m.rule.roomnotif nh")
        self.assertEqual(outcome(legacy, ctx(sender_power=0)), ".m.rule.message n")

    def test_display_name_legacy_rule(self) -> None:
        self.assertEqual(outcome(event(content={"body": "ping Me Myself"})),
                         ".m.rule.contains_display_name nh")

    def test_suppressed(self) -> None:
        self.assertEqual(outcome(event(content={"msgtype": "m.notice", "body": "bot"})),
                         ".m.rule.suppress_notices")
        self.assertEqual(outcome(event("m.reaction", content={})), ".m.rule.reaction")
        member = event("m.room.member", state_key=OTHER, content={"membership": "join"})
        self.assertEqual(outcome(member), ".m.rule.member_event")
        edit = event(content={"body": "* x", "m.relates_to": {"rel_type": "m.replace",
                                                               "event_id": "$o"}})
        self.assertEqual(outcome(edit), ".m.rule.suppress_edits")

    def test_invite_for_me(self) -> None:
        invite = event("m.room.member", state_key=ME, content={"membership": "invite"})
        self.assertEqual(outcome(invite), ".m.rule.invite_for_me n")

    def test_tombstone(self) -> None:
        ev = event("m.room.tombstone", state_key="", content={"body": "moved"})
        self.assertEqual(outcome(ev), ".m.rule.tombstone nh")
        # Not a state event: no match of the tombstone rule.
        ev = event("m.room.tombstone", content={"body": "moved"})
        self.assertEqual(outcome(ev), "none")

    def test_master_rule(self) -> None:
        content = {"global": {"override": [{"rule_id": ".m.rule.master", "enabled": True}]}}
        self.assertEqual(outcome(event(), content=content), ".m.rule.master")
        mention = event(content={"body": "x", "m.mentions": {"user_ids": [ME]}})
        self.assertEqual(outcome(mention, content=content), ".m.rule.master")

    def test_user_rules_override_defaults(self) -> None:
        content = {"global": {
            "room": [{"rule_id": ROOM, "actions": []}],
            "content": [{"rule_id": "cake", "pattern": "cake*", "actions": [
                "notify", {"set_tweak": "highlight"}]}],
        }}
        self.assertEqual(outcome(event(content={"body": "I like Cakes"}), content=content),
                         "cake nh")
        self.assertEqual(outcome(event(), content=content), ROOM)
        sender = {"global": {"sender": [{"rule_id": OTHER, "actions": ["notify", {
            "set_tweak": "highlight", "value": False}]}]}}
        self.assertEqual(outcome(event(), content=sender), f"{OTHER} n")

    def test_disabled_default_rule(self) -> None:
        content = {"global": {"underride": [{"rule_id": ".m.rule.message", "enabled": False}]}}
        self.assertEqual(outcome(event(), content=content), "none")


class MalformedRules(unittest.TestCase):
    def test_bad_rules_are_skipped_the_rest_apply(self) -> None:
        bad_conditions: list[Any] = [
            "not an object",
            {"kind": "event_match", "key": 3, "pattern": "x"},
            {"kind": "event_match", "key": "type"},
            {"kind": "room_member_count", "is": "lots"},
            {"kind": "event_property_is", "key": "content.x", "value": {"a": 1}},
            {"no": "kind"},
        ]
        overrides: list[Any] = [
            {"rule_id": f"bad{i}", "conditions": [c], "actions": ["notify"]}
            for i, c in enumerate(bad_conditions)
        ]
        overrides += [
            {"rule_id": "noconds", "conditions": "x", "actions": ["notify"]},
            {"rule_id": "noactions", "conditions": [], "actions": "notify"},
            "garbage",
            {"rule_id": 5},
        ]
        content = {"global": {"override": overrides,
                              "content": [{"rule_id": "nopattern", "actions": ["notify"]}]}}
        # from_content keeps what it can; compile drops the rest.
        ruleset = {"override": overrides, "content": [{"rule_id": "c", "pattern": 5}],
                   "underride": build_ruleset(ME, UserPushRules())["underride"]}
        compiled = compile_ruleset(ME, ruleset)
        self.assertEqual([r.rule_id for r in compiled.rules][:1], [".m.rule.call"])
        rule = compiled.evaluate(EventView(event()), ctx())
        assert rule is not None
        self.assertEqual(rule.rule_id, ".m.rule.message")
        self.assertEqual(outcome(event(), content=content), ".m.rule.message n")

    def test_one_user_failing_does_not_stop_others(self) -> None:
        good = default_ruleset()

        class Exploding(CompiledRuleset):
            def evaluate(self, view: EventView, ctx: PushContext) -> Any:
                raise RuntimeError("boom")

        result = evaluate_all(EventView(event()), [
            ("@a:test", Exploding(()), ctx()), ("@b:test", good, ctx()),
        ])
        self.assertEqual(list(result), ["@b:test"])


class Threads(unittest.TestCase):
    def test_thread_id(self) -> None:
        self.assertEqual(thread_id_of({"body": "x"}), "main")
        self.assertEqual(
            thread_id_of({"m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}), "$root"
        )
        self.assertEqual(
            thread_id_of({"m.relates_to": {"rel_type": "m.replace", "event_id": "$o"}}), "main"
        )


class ManyUsersAtOnce(unittest.TestCase):
    """`evaluate_members` (every member of a room sharing a ruleset at once, conditions
    selecting members) gives each user the rule `evaluate` gives them alone."""

    NAMES = {
        "@alice:test": "Alice",
        "@bob:test": "Bob Smith",
        "@bobby:test": "bobby",
        "@carol:test": None,
        "@dan:test": "  ",
        "@eve:test": "[bot] Eve",
        "@zoe:test": "Zoë",
        "@kelvin:test": "Kim",
        "@st:test": "stef",
        "@me:test": "Me Myself",
        OTHER: "Other",
        "@glob*:test": "globby",
    }
    BODIES = [
        "hello",
        "hi Alice, and bob smith!",
        "bobby? Bob",
        "[bot] eve says hi",
        "zoë and ZOË",
        "\u212aim here",  # KELVIN SIGN: matches "k" ignoring case
        "\u017ftef",  # LONG S: matches "s" ignoring case
        "@me:test ping",
        "@glob-xyz:test",
        "bobsmith",
        "",
    ]
    CONTENTS: list[Any] = [
        None,
        {"global": {"override": [{"rule_id": "mine", "conditions": [
            {"kind": "event_match", "key": "content.body", "pattern": "*@*:test*"},
            {"kind": "contains_display_name"}], "actions": ["notify"]}],
            "content": [{"rule_id": "word", "pattern": "ping",
                         "actions": ["notify", {"set_tweak": "highlight"}]}]}},
        {"global": {"override": [
            {"rule_id": "self_body", "conditions": [
                {"kind": "event_match", "key": "content.body", "pattern": "@me:test*"}],
             "actions": ["notify", {"set_tweak": "sound", "value": "x"}]},
            {"rule_id": "future", "conditions": [{"kind": "org.example.unknown"}],
             "actions": ["notify"]}]}},
    ]

    def test_same_rule_per_user_as_one_at_a_time(self) -> None:
        members = Members(self.NAMES)
        room = PushContext(7, None, 100, {"room": 50})
        checked = 0
        for content in self.CONTENTS:
            ruleset = compile_ruleset(SELF, build_ruleset(SELF, UserPushRules.from_content(content)))
            # A condition on the user's own ID in the body (`SELF` stands for each user).
            ruleset_self = compile_ruleset(SELF, build_ruleset(SELF, UserPushRules.from_content({
                "global": {"override": [{"rule_id": "id", "conditions": [
                    {"kind": "event_match", "key": "content.body", "pattern": SELF}],
                    "actions": ["notify", {"set_tweak": "highlight"}]}]}})))
            for compiled in (ruleset, ruleset_self):
                for body in self.BODIES:
                    for mentions in ({}, {"m.mentions": {"user_ids": ["@bob:test", "@x:test"],
                                                         "room": True}}):
                        ev = event(content={"msgtype": "m.text", "body": body, **mentions})
                        view = EventView(ev)
                        together = {
                            u: rule.rule_id
                            for rule, users in evaluate_members(view, room, [(compiled, members)],
                                                                OTHER)
                            for u in users
                        }
                        alone = {}
                        for user_id, name in self.NAMES.items():
                            if user_id == OTHER:
                                continue
                            rule = compiled.evaluate(
                                EventView(ev), PushContext(7, name, 100, {"room": 50}, user_id)
                            )
                            if rule is not None and (rule.notify or rule.highlight):
                                alone[user_id] = rule.rule_id
                        self.assertEqual(together, alone, (content, body, mentions))
                        checked += 1
        self.assertEqual(checked, 3 * 2 * len(self.BODIES) * 2)

    def test_one_group_failing_is_evaluated_user_by_user(self) -> None:
        good = default_ruleset()
        calls: list[str] = []

        class Exploding(CompiledRuleset):
            def evaluate_many(self, *args: Any) -> Any:
                raise RuntimeError("boom")

            def evaluate(self, view: EventView, ctx: PushContext) -> Any:
                calls.append(ctx.user_id)
                if ctx.user_id == "@a:test":
                    raise RuntimeError("boom")
                return good.evaluate(view, ctx)

        result = evaluate_members(
            EventView(event()), ctx(),
            [(Exploding(()), Members({"@a:test": None, "@b:test": None}))], None,
        )
        self.assertEqual([(rule.rule_id, list(users)) for rule, users in result],
                         [(".m.rule.message", ["@b:test"])])
        self.assertEqual(calls, ["@a:test", "@b:test"])
        self.flushLoggedErrors(RuntimeError)
