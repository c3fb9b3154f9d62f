"""Push rules: /pushrules/ and /pushrules/global/{kind}/{ruleId}[/enabled|/actions], and the
`m.push_rules` account data that /sync carries.

Spec: api/client-server/pushrules.yaml; client-server API "Push Rules", "Predefined Rules",
"Push Rules: Events".
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from nio import (
    DeletePushRuleError,
    DeletePushRuleResponse,
    EnablePushRuleResponse,
    PushEventMatch,
    PushNotify,
    PushRuleKind,
    PushRulesEvent,
    PushSetTweak,
    SetPushRuleActionsResponse,
    SetPushRuleError,
    SetPushRuleResponse,
    SyncResponse,
)
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from homeserver.errors import MatrixError
from homeserver.push.rules import (
    DEFAULT_RULES,
    UserPushRules,
    build_ruleset,
    push_rules_content,
)
from tests.harness import Response, nio, on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q

# The spec's, with the two legacy rules Synapse still serves after the mention rules.
DEFAULT_OVERRIDE_IDS = [
    ".m.rule.master",
    ".m.rule.suppress_notices",
    ".m.rule.invite_for_me",
    ".m.rule.member_event",
    ".m.rule.is_user_mention",
    ".m.rule.contains_display_name",
    ".m.rule.is_room_mention",
    ".m.rule.roomnotif",
    ".m.rule.tombstone",
    ".m.rule.reaction",
    ".m.rule.room.server_acl",
    ".m.rule.suppress_edits",
]
SPEC_UNDERRIDE_IDS = [
    ".m.rule.call",
    ".m.rule.encrypted_room_one_to_one",
    ".m.rule.room_one_to_one",
    ".m.rule.message",
    ".m.rule.encrypted",
]
KINDS = ["override", "content", "room", "sender", "underride"]


def rule_path(kind: str, rule_id: str, attribute: str | None = None, **query: str) -> str:
    path = f"{API}/pushrules/global/{q(kind)}/{q(rule_id)}"
    if attribute is not None:
        path += f"/{attribute}"
    return path + (f"?{urlencode(query)}" if query else "")


def ids(rules: list[dict[str, Any]]) -> list[str]:
    return [r["rule_id"] for r in rules]


def push_rules_events(sync_body: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in sync_body["account_data"]["events"] if e["type"] == "m.push_rules"]


BEER = {
    "conditions": [
        {"kind": "event_match", "key": "content.body", "pattern": "beer"},
        {"kind": "room_member_count", "is": "<=10"},
    ],
    "actions": ["notify", {"set_tweak": "sound", "value": "beeroclock.wav"}],
}


class PushRulesTestCase(RoomTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")

    async def get(self, path: str, user: User | None = None) -> Response:
        return await self.request("GET", path, token=(user or self.alice).token)

    async def put(self, path: str, body: Any, user: User | None = None) -> Response:
        return await self.request("PUT", path, body, token=(user or self.alice).token)

    async def delete(self, path: str, user: User | None = None) -> Response:
        return await self.request("DELETE", path, token=(user or self.alice).token)

    async def ruleset(self, user: User | None = None) -> dict[str, Any]:
        r = await self.get(f"{API}/pushrules/global/", user)
        self.assertEqual(r.code, 200, r)
        return r.json

    async def sync(self, user: User, since: str | None = None, **params: Any) -> dict[str, Any]:
        if since is not None:
            params["since"] = since
        r = await self.request("GET", f"{API}/sync?{urlencode(params)}", token=user.token)
        self.assertEqual(r.code, 200, r)
        return r.json


@on_both_engines
class PushRulesApiTests(PushRulesTestCase):
    async def test_defaults_present_in_spec_order(self):
        r = await self.get(f"{API}/pushrules/")
        self.assertEqual(r.code, 200, r)
        ruleset = r.json["global"]
        self.assertEqual(sorted(ruleset), sorted(KINDS))
        self.assertEqual(ids(ruleset["override"]), DEFAULT_OVERRIDE_IDS)
        self.assertEqual(ids(ruleset["underride"]), SPEC_UNDERRIDE_IDS)
        # No content rules by default: spec v1.17 removed `.m.rule.contains_user_name`.
        self.assertEqual((ruleset["content"], ruleset["room"], ruleset["sender"]), ([], [], []))
        for rule in ruleset["override"] + ruleset["underride"]:
            self.assertTrue(rule["default"], rule)
            self.assertEqual(rule["enabled"], rule["rule_id"] != ".m.rule.master", rule)
        # The same ruleset at /pushrules/global/ (and without the trailing slashes).
        self.assertEqual(await self.ruleset(), ruleset)
        r = await self.get(f"{API}/pushrules")
        self.assertEqual(r.json, {"global": ruleset})

    async def test_default_rules_are_the_spec_definitions_for_this_user(self):
        ruleset = await self.ruleset()
        rules = {r["rule_id"]: r for r in ruleset["override"] + ruleset["underride"]}
        me = self.alice.user_id
        self.assertEqual(
            rules[".m.rule.invite_for_me"],
            {
                "rule_id": ".m.rule.invite_for_me",
                "default": True,
                "enabled": True,
                "conditions": [
                    {"key": "type", "kind": "event_match", "pattern": "m.room.member"},
                    {"key": "content.membership", "kind": "event_match", "pattern": "invite"},
                    {"key": "state_key", "kind": "event_match", "pattern": me},
                ],
                "actions": ["notify", {"set_tweak": "sound", "value": "default"}],
            },
        )
        self.assertEqual(
            rules[".m.rule.is_user_mention"]["conditions"],
            [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": me}],
        )
        self.assertEqual(
            rules[".m.rule.is_room_mention"],
            {
                "rule_id": ".m.rule.is_room_mention",
                "default": True,
                "enabled": True,
                "conditions": [
                    {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
                    {"kind": "sender_notification_permission", "key": "room"},
                ],
                "actions": ["notify", {"set_tweak": "highlight"}],
            },
        )
        self.assertEqual(
            rules[".m.rule.encrypted_room_one_to_one"]["conditions"],
            [
                {"kind": "room_member_count", "is": "2"},
                {"kind": "event_match", "key": "type", "pattern": "m.room.encrypted"},
            ],
        )
        self.assertEqual(rules[".m.rule.call"]["actions"], ["notify", {"set_tweak": "sound", "value": "ring"}])
        # Bob's rules name Bob.
        bob_rules = await self.ruleset(self.bob)
        self.assertEqual(bob_rules["override"][2]["conditions"][2]["pattern"], self.bob.user_id)

    async def test_legacy_mention_rules_are_served_where_clients_expect_them(self):
        """`.m.rule.contains_display_name` and `.m.rule.roomnotif`, which matrix-js-sdk warns
        about when missing: override rules, as the spec defined them before v1.17, each right
        after the `m.mentions` rule that replaced it (Synapse's order, and the SDK's)."""
        override = (await self.ruleset())["override"]
        position = ids(override).index
        self.assertEqual(position(".m.rule.contains_display_name"), position(".m.rule.is_user_mention") + 1)
        self.assertEqual(position(".m.rule.roomnotif"), position(".m.rule.is_room_mention") + 1)
        self.assertEqual(
            override[position(".m.rule.contains_display_name")],
            {
                "rule_id": ".m.rule.contains_display_name",
                "default": True,
                "enabled": True,
                "conditions": [{"kind": "contains_display_name"}],
                "actions": ["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}],
            },
        )
        self.assertEqual(
            override[position(".m.rule.roomnotif")],
            {
                "rule_id": ".m.rule.roomnotif",
                "default": True,
                "enabled": True,
                "conditions": [
                    {"kind": "event_match", "key": "content.body", "pattern": "@room"},
                    {"kind": "sender_notification_permission", "key": "room"},
                ],
                "actions": ["notify", {"set_tweak": "highlight"}],
            },
        )
        # Only as override rules.
        for kind in ("content", "underride"):
            r = await self.get(rule_path(kind, ".m.rule.contains_display_name"))
            self.assertError(r, 404, "M_NOT_FOUND")

    async def test_legacy_mention_rules_can_be_disabled_and_changed(self):
        for rule_id in (".m.rule.contains_display_name", ".m.rule.roomnotif"):
            r = await self.get(rule_path("override", rule_id))
            self.assertEqual(r.code, 200, r)
            self.assertTrue(r.json["enabled"])
            r = await self.put(rule_path("override", rule_id, "enabled"), {"enabled": False})
            self.assertEqual((r.code, r.json), (200, {}))
            self.assertEqual((await self.get(rule_path("override", rule_id, "enabled"))).json, {"enabled": False})
        r = await self.put(rule_path("override", ".m.rule.roomnotif", "actions"), {"actions": ["notify"]})
        self.assertEqual((r.code, r.json), (200, {}))
        override = (await self.ruleset())["override"]
        self.assertEqual(ids(override), DEFAULT_OVERRIDE_IDS)
        rules = {r["rule_id"]: r for r in override}
        self.assertFalse(rules[".m.rule.contains_display_name"]["enabled"])
        self.assertEqual(
            (rules[".m.rule.roomnotif"]["enabled"], rules[".m.rule.roomnotif"]["actions"]),
            (False, ["notify"]),
        )
        # Server-default rules: they cannot be deleted.
        r = await self.delete(rule_path("override", ".m.rule.roomnotif"))
        self.assertError(r, 400, "M_INVALID_PARAM")
        # Back on; Bob's were never touched.
        r = await self.put(rule_path("override", ".m.rule.contains_display_name", "enabled"), {"enabled": True})
        self.assertEqual(r.code, 200, r)
        r = await self.get(rule_path("override", ".m.rule.contains_display_name", "enabled"))
        self.assertEqual(r.json, {"enabled": True})
        bob_rules = {r["rule_id"]: r for r in (await self.ruleset(self.bob))["override"]}
        self.assertTrue(bob_rules[".m.rule.roomnotif"]["enabled"])
        self.assertEqual(bob_rules[".m.rule.roomnotif"]["actions"], ["notify", {"set_tweak": "highlight"}])

    async def test_get_one_rule_and_its_attributes(self):
        r = await self.get(rule_path("underride", ".m.rule.message"))
        self.assertEqual(
            (r.code, r.json),
            (
                200,
                {
                    "rule_id": ".m.rule.message",
                    "default": True,
                    "enabled": True,
                    "conditions": [{"kind": "event_match", "key": "type", "pattern": "m.room.message"}],
                    "actions": ["notify"],
                },
            ),
        )
        r = await self.get(rule_path("override", ".m.rule.master", "enabled"))
        self.assertEqual((r.code, r.json), (200, {"enabled": False}))
        r = await self.get(rule_path("underride", ".m.rule.call", "actions"))
        self.assertEqual(
            (r.code, r.json), (200, {"actions": ["notify", {"set_tweak": "sound", "value": "ring"}]})
        )

    async def test_add_move_and_delete_custom_rules(self):
        r = await self.put(rule_path("override", "beer"), BEER)
        self.assertEqual((r.code, r.json), (200, {}))
        r = await self.get(rule_path("override", "beer"))
        self.assertEqual(
            r.json,
            {
                "rule_id": "beer",
                "default": False,
                "enabled": True,
                "conditions": BEER["conditions"],
                "actions": BEER["actions"],
            },
        )
        # User rules come after .m.rule.master and before the other server-default rules.
        override = (await self.ruleset())["override"]
        self.assertEqual(ids(override), [".m.rule.master", "beer", *DEFAULT_OVERRIDE_IDS[1:]])

        # A new rule with neither before nor after is the most important user rule.
        await self.put(rule_path("override", "wine"), {"actions": []})
        # Placed relative to user rules.
        r = await self.put(rule_path("override", "cider", after="beer"), {"actions": ["notify"]})
        self.assertEqual(r.code, 200, r)
        r = await self.put(rule_path("override", "mead", before="beer"), {"actions": ["notify"]})
        self.assertEqual(r.code, 200, r)

        async def user_overrides() -> list[str]:
            return [i for i in ids((await self.ruleset())["override"]) if not i.startswith(".")]

        self.assertEqual(await user_overrides(), ["wine", "mead", "beer", "cider"])
        # Moving an existing rule; with both before and after, before wins (spec).
        await self.put(rule_path("override", "wine", after="cider"), {"actions": []})
        self.assertEqual(await user_overrides(), ["mead", "beer", "cider", "wine"])
        await self.put(rule_path("override", "wine", before="mead", after="cider"), {"actions": []})
        self.assertEqual(await user_overrides(), ["wine", "mead", "beer", "cider"])

        # Updating in place keeps the position and the enabled state; replaces the rest.
        await self.put(rule_path("override", "beer", "enabled"), {"enabled": False})
        await self.put(rule_path("override", "beer"), {"actions": ["notify"], "conditions": []})
        self.assertEqual(await user_overrides(), ["wine", "mead", "beer", "cider"])
        r = await self.get(rule_path("override", "beer"))
        self.assertEqual(
            r.json,
            {"rule_id": "beer", "default": False, "enabled": False, "conditions": [], "actions": ["notify"]},
        )

        r = await self.delete(rule_path("override", "mead"))
        self.assertEqual((r.code, r.json), (200, {}))
        self.assertEqual(await user_overrides(), ["wine", "beer", "cider"])
        self.assertError(await self.get(rule_path("override", "mead")), 404, "M_NOT_FOUND")
        self.assertError(await self.delete(rule_path("override", "mead")), 404, "M_NOT_FOUND")
        # Bob has none of Alice's rules.
        self.assertEqual(
            ids((await self.ruleset(self.bob))["override"]), DEFAULT_OVERRIDE_IDS
        )

    async def test_content_room_and_sender_rules(self):
        room_id = "!dj234r78wl45Gh4D:matrix.org"
        r = await self.put(
            rule_path("content", "cake"),
            {"pattern": "cake", "actions": ["notify", {"set_tweak": "sound", "value": "cakealarm.wav"}]},
        )
        self.assertEqual(r.code, 200, r)
        r = await self.put(rule_path("content", "nocake", before="cake"), {"pattern": "cake*lie", "actions": ["notify"]})
        self.assertEqual(r.code, 200, r)
        r = await self.put(rule_path("room", room_id), {"actions": []})
        self.assertEqual(r.code, 200, r)
        r = await self.put(rule_path("sender", "@spambot:matrix.org"), {"actions": []})
        self.assertEqual(r.code, 200, r)
        r = await self.put(rule_path("underride", "catchall"), {"actions": ["notify"]})
        self.assertEqual(r.code, 200, r)
        ruleset = await self.ruleset()
        self.assertEqual(
            ruleset["content"],
            [
                {"rule_id": "nocake", "default": False, "enabled": True, "pattern": "cake*lie", "actions": ["notify"]},
                {
                    "rule_id": "cake",
                    "default": False,
                    "enabled": True,
                    "pattern": "cake",
                    "actions": ["notify", {"set_tweak": "sound", "value": "cakealarm.wav"}],
                },
            ],
        )
        # Room and sender rules are named by the room or user; they have no conditions.
        self.assertEqual(ruleset["room"], [{"rule_id": room_id, "default": False, "enabled": True, "actions": []}])
        self.assertEqual(
            ruleset["sender"],
            [{"rule_id": "@spambot:matrix.org", "default": False, "enabled": True, "actions": []}],
        )
        # A rule with no conditions (always matches) comes before the default underrides.
        self.assertEqual(ids(ruleset["underride"]), ["catchall", *SPEC_UNDERRIDE_IDS])
        self.assertEqual(ruleset["underride"][0]["conditions"], [])

    async def test_enable_disable_and_change_actions_of_default_rules(self):
        r = await self.put(rule_path("override", ".m.rule.master", "enabled"), {"enabled": True})
        self.assertEqual((r.code, r.json), (200, {}))
        r = await self.get(rule_path("override", ".m.rule.master", "enabled"))
        self.assertEqual(r.json, {"enabled": True})
        await self.put(rule_path("underride", ".m.rule.message", "enabled"), {"enabled": False})
        r = await self.put(
            rule_path("underride", ".m.rule.message", "actions"),
            {"actions": ["notify", {"set_tweak": "highlight", "value": True}]},
        )
        self.assertEqual((r.code, r.json), (200, {}))
        r = await self.get(rule_path("underride", ".m.rule.message", "actions"))
        self.assertEqual(r.json, {"actions": ["notify", {"set_tweak": "highlight", "value": True}]})
        ruleset = await self.ruleset()
        self.assertEqual(ids(ruleset["override"]), DEFAULT_OVERRIDE_IDS)
        self.assertEqual(ids(ruleset["underride"]), SPEC_UNDERRIDE_IDS)
        message = ruleset["underride"][3]
        self.assertEqual(
            message,
            {
                "rule_id": ".m.rule.message",
                "default": True,
                "enabled": False,
                "conditions": [{"kind": "event_match", "key": "type", "pattern": "m.room.message"}],
                "actions": ["notify", {"set_tweak": "highlight", "value": True}],
            },
        )
        self.assertTrue(ruleset["override"][0]["enabled"])
        # Only what changed is stored; the rest follows the server's defaults.
        stored = await self.hs.account_data.get(self.alice.user_id, None, "m.push_rules")
        assert stored is not None
        self.assertEqual(
            stored["global"]["override"], [{"rule_id": ".m.rule.master", "default": True, "enabled": True}]
        )
        self.assertEqual(
            stored["global"]["underride"],
            [
                {
                    "rule_id": ".m.rule.message",
                    "default": True,
                    "enabled": False,
                    "actions": ["notify", {"set_tweak": "highlight", "value": True}],
                }
            ],
        )
        # And back on again; Bob's defaults were never touched.
        await self.put(rule_path("underride", ".m.rule.message", "enabled"), {"enabled": True})
        self.assertEqual((await self.get(rule_path("underride", ".m.rule.message", "enabled"))).json, {"enabled": True})
        self.assertEqual((await self.get(rule_path("override", ".m.rule.master", "enabled"), self.bob)).json, {"enabled": False})

    async def test_historical_actions_are_kept_and_mean_nothing(self):
        # Spec ("Historical Actions"): dont_notify and coalesce are ignored, not refused.
        # Older clients mute with ["dont_notify"] and read it back to show the room muted.
        for kind, rule_id in (("underride", ".m.rule.message"), ("override", ".m.rule.master")):
            r = await self.put(rule_path(kind, rule_id, "actions"), {"actions": ["dont_notify"]})
            self.assertEqual((r.code, r.json), (200, {}))
            r = await self.get(rule_path(kind, rule_id, "actions"))
            self.assertEqual(r.json, {"actions": ["dont_notify"]})
        r = await self.put(rule_path("sender", self.bob.user_id), {"actions": ["dont_notify", "coalesce"]})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(
            (await self.get(rule_path("sender", self.bob.user_id, "actions"))).json,
            {"actions": ["dont_notify", "coalesce"]},
        )
        # Bob's messages match the sender rule, whose actions are as good as none.
        room_id = await self.create_room(self.bob, preset="public_chat")
        r = await self.join(self.alice, room_id)
        self.assertEqual(r.code, 200, r)
        r = await self.send(self.bob, room_id, {"msgtype": "m.text", "body": "muted"})
        self.assertEqual(r.code, 200, r)
        r = await self.get(f"{API}/notifications")
        self.assertEqual(r.json["notifications"], [])
        # With notify beside it, the rule notifies.
        r = await self.put(rule_path("sender", self.bob.user_id, "actions"), {"actions": ["notify", "dont_notify"]})
        self.assertEqual(r.code, 200, r)
        r = await self.send(self.bob, room_id, {"msgtype": "m.text", "body": "loud"})
        self.assertEqual(r.code, 200, r)
        r = await self.get(f"{API}/notifications")
        self.assertEqual([n["event"]["content"]["body"] for n in r.json["notifications"]], ["loud"])
        self.assertEqual(r.json["notifications"][0]["actions"], ["notify"])

    async def test_rules_of_one_kind(self):
        # GET /pushrules/global/{kind}/ (Synapse's, beyond the spec): the kind's rules, in order.
        await self.put(rule_path("override", "beer"), BEER)
        await self.put(rule_path("sender", self.bob.user_id), {"actions": ["notify"]})
        ruleset = await self.ruleset()
        for kind in KINDS:
            r = await self.get(f"{API}/pushrules/global/{kind}/")
            self.assertEqual((r.code, r.json), (200, ruleset[kind]))
        self.assertEqual(ids(ruleset["sender"]), [self.bob.user_id])
        self.assertError(await self.get(f"{API}/pushrules/global/colour/"), 400, "M_INVALID_PARAM")

    async def test_enabled_and_actions_of_user_rules(self):
        await self.put(rule_path("sender", "@spambot:matrix.org"), {"actions": []})
        r = await self.put(rule_path("sender", "@spambot:matrix.org", "enabled"), {"enabled": False})
        self.assertEqual(r.code, 200, r)
        r = await self.put(rule_path("sender", "@spambot:matrix.org", "actions"), {"actions": ["notify"]})
        self.assertEqual(r.code, 200, r)
        r = await self.get(rule_path("sender", "@spambot:matrix.org"))
        self.assertEqual(
            r.json, {"rule_id": "@spambot:matrix.org", "default": False, "enabled": False, "actions": ["notify"]}
        )

    async def test_account_data_api_serves_the_full_ruleset(self):
        path = f"{API}/user/{q(self.alice.user_id)}/account_data/m.push_rules"
        r = await self.get(path)
        self.assertEqual((r.code, r.json), (200, {"global": await self.ruleset()}))
        await self.put(rule_path("override", "beer"), BEER)
        r = await self.get(path)
        self.assertEqual(r.json, {"global": await self.ruleset()})
        self.assertIn("beer", ids(r.json["global"]["override"]))
        # Clients still cannot write it directly.
        self.assertError(await self.put(path, {"global": {}}), 405, "M_BAD_JSON")

    async def test_concurrent_changes_are_all_kept(self):
        names = [f"rule{i}" for i in range(8)]
        responses = await defer.gatherResults(
            [defer.ensureDeferred(self.put(rule_path("override", n), {"actions": []})) for n in names]
        )
        self.assertEqual([r.code for r in responses], [200] * len(names))
        user_rules = [i for i in ids((await self.ruleset())["override"]) if not i.startswith(".")]
        self.assertEqual(sorted(user_rules), names)


@on_both_engines
class PushRulesBadInputTests(PushRulesTestCase):
    async def test_unknown_kind_scope_and_rule(self):
        for method in ("GET", "PUT", "DELETE"):
            r = await self.request(method, rule_path("postcontent", "x"), {"actions": []}, token=self.alice.token)
            self.assertError(r, 400, "M_INVALID_PARAM")
        for attribute in ("enabled", "actions"):
            self.assertError(await self.get(rule_path("nope", "x", attribute)), 400, "M_INVALID_PARAM")
        r = await self.put(rule_path("nope", "x", "enabled"), {"enabled": True})
        self.assertError(r, 400, "M_INVALID_PARAM")
        # Only the global scope exists: others are unknown endpoints.
        r = await self.get(f"{API}/pushrules/device/override/x")
        self.assertError(r, 404, "M_UNRECOGNIZED")
        r = await self.put(f"{API}/pushrules/device/override/x", {"actions": []})
        self.assertError(r, 404, "M_UNRECOGNIZED")
        self.assertError(await self.get(rule_path("override", "x", "colour")), 404, "M_UNRECOGNIZED")
        # Rules that do not exist (or not in that kind).
        self.assertError(await self.get(rule_path("override", "missing")), 404, "M_NOT_FOUND")
        self.assertError(await self.get(rule_path("underride", ".m.rule.master")), 404, "M_NOT_FOUND")
        self.assertError(await self.get(rule_path("override", "missing", "enabled")), 404, "M_NOT_FOUND")
        self.assertError(await self.get(rule_path("override", "missing", "actions")), 404, "M_NOT_FOUND")
        r = await self.put(rule_path("override", "missing", "enabled"), {"enabled": False})
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.put(rule_path("override", "missing", "actions"), {"actions": []})
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.put(rule_path("override", ".m.rule.nonexistent", "enabled"), {"enabled": False})
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_rule_ids_reserved_or_malformed(self):
        # Dotted IDs are the server's: not even an existing default can be replaced.
        for rule_id in (".m.rule.master", ".mine"):
            r = await self.put(rule_path("override", rule_id), {"actions": []})
            self.assertError(r, 400, "M_INVALID_PARAM")
        for rule_id in ("a/b", "a\\b"):
            r = await self.put(rule_path("override", rule_id), {"actions": []})
            self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertError(await self.put(rule_path("room", "notaroom"), {"actions": []}), 400, "M_INVALID_PARAM")
        self.assertError(await self.put(rule_path("sender", "nobody"), {"actions": []}), 400, "M_INVALID_PARAM")
        # Server-default rules cannot be deleted.
        self.assertError(await self.delete(rule_path("override", ".m.rule.master")), 400, "M_INVALID_PARAM")
        self.assertEqual(ids((await self.ruleset())["override"]), DEFAULT_OVERRIDE_IDS)

    async def test_unknown_before_and_after(self):
        await self.put(rule_path("override", "beer"), BEER)
        # The spec's 400 response has exactly this case as its example (with M_UNKNOWN).
        r = await self.put(rule_path("override", "wine", before="nope"), {"actions": []})
        self.assertError(r, 400, "M_UNKNOWN")
        r = await self.put(rule_path("override", "wine", after="nope"), {"actions": []})
        self.assertError(r, 400, "M_UNKNOWN")
        # Rules of another kind are not "the given user defined rule".
        r = await self.put(rule_path("underride", "wine", after="beer"), {"actions": []})
        self.assertError(r, 400, "M_UNKNOWN")
        # Spec: "It is not possible to add a rule relative to a predefined server rule."
        r = await self.put(rule_path("override", "wine", before=".m.rule.master"), {"actions": []})
        self.assertError(r, 400, "M_INVALID_PARAM")
        # Nothing was written by the failed requests.
        self.assertError(await self.get(rule_path("override", "wine")), 404, "M_NOT_FOUND")
        self.assertError(await self.get(rule_path("underride", "wine")), 404, "M_NOT_FOUND")

    async def test_malformed_actions_and_conditions(self):
        path = rule_path("override", "bad")
        bodies = [
            {},
            {"conditions": []},
            {"actions": "notify"},
            {"actions": ["notify", "explode"]},
            {"actions": [{"tweak": "sound"}]},
            {"actions": [{"set_tweak": 1}]},
            {"actions": [], "conditions": {"kind": "event_match"}},
            {"actions": [], "conditions": [{"key": "type", "pattern": "x"}]},
            {"actions": [], "conditions": ["event_match"]},
            {"actions": [], "conditions": [{"kind": "event_match", "key": "type"}]},
            {"actions": [], "conditions": [{"kind": "event_match", "pattern": "x"}]},
            {"actions": [], "conditions": [{"kind": "event_property_is", "key": "content.x"}]},
            {"actions": [], "conditions": [{"kind": "event_property_is", "key": "content.x", "value": [1]}]},
            {"actions": [], "conditions": [{"kind": "event_property_contains", "key": "x", "value": 2**60}]},
            {"actions": [], "conditions": [{"kind": "room_member_count", "is": "lots"}]},
            {"actions": [], "conditions": [{"kind": "room_member_count", "is": 2}]},
            {"actions": [], "conditions": [{"kind": "sender_notification_permission"}]},
        ]
        for body in bodies:
            r = await self.put(path, body)
            self.assertError(r, 400, "M_BAD_JSON")
        for pattern_body in ({"actions": []}, {"actions": [], "pattern": 5}, {"actions": [], "pattern": ""}):
            self.assertError(await self.put(rule_path("content", "c"), pattern_body), 400, "M_BAD_JSON")
        for actions_body in ({}, {"actions": None}, {"actions": ["louder"]}):
            r = await self.put(rule_path("underride", ".m.rule.message", "actions"), actions_body)
            self.assertError(r, 400, "M_BAD_JSON")
        for enabled_body in ({}, {"enabled": "yes"}, {"enabled": 1}):
            r = await self.put(rule_path("override", ".m.rule.master", "enabled"), enabled_body)
            self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request("PUT", path, raw=b"{nope", token=self.alice.token)
        self.assertError(r, 400, "M_NOT_JSON")
        r = await self.request("PUT", path, raw=b"[]", token=self.alice.token)
        self.assertError(r, 400, "M_BAD_JSON")
        # Nothing stored by any of it.
        self.assertIsNone(await self.hs.account_data.get(self.alice.user_id, None, "m.push_rules"))

    async def test_unrecognised_condition_kinds_are_kept(self):
        # Spec: unrecognised conditions never match; they are not invalid.
        conditions = [{"kind": "org.example.future", "anything": [1, 2]}, {"kind": "contains_display_name"}]
        r = await self.put(rule_path("override", "future"), {"actions": [], "conditions": conditions})
        self.assertEqual(r.code, 200, r)
        self.assertEqual((await self.get(rule_path("override", "future"))).json["conditions"], conditions)

    async def test_authentication_required(self):
        for path in (f"{API}/pushrules/", f"{API}/pushrules/global/", rule_path("override", ".m.rule.master")):
            self.assertError(await self.request("GET", path), 401, "M_MISSING_TOKEN")
        r = await self.request("PUT", rule_path("override", "x"), {"actions": []})
        self.assertError(r, 401, "M_MISSING_TOKEN")


@on_both_engines
class PushRulesSyncTests(PushRulesTestCase):
    async def test_initial_sync_has_default_rules_without_any_write(self):
        first = await self.sync(self.alice)
        events = push_rules_events(first)
        self.assertEqual(events, [{"type": "m.push_rules", "content": {"global": await self.ruleset()}}])
        self.assertEqual(ids(events[0]["content"]["global"]["override"]), DEFAULT_OVERRIDE_IDS)
        # Reading them wrote nothing: the account data stream has not moved.
        self.assertEqual(self.hs.account_data.current_position, 0)
        # Incremental syncs do not repeat them.
        second = await self.sync(self.alice, first["next_batch"])
        self.assertEqual(push_rules_events(second), [])
        # full_state sends everything again.
        again = await self.sync(self.alice, first["next_batch"], full_state="true")
        self.assertEqual(len(push_rules_events(again)), 1)

    async def test_incremental_sync_delivers_changes(self):
        first = await self.sync(self.alice)
        bob_first = await self.sync(self.bob)
        await self.put(rule_path("override", "beer"), BEER)
        second = await self.sync(self.alice, first["next_batch"])
        events = push_rules_events(second)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["content"], {"global": await self.ruleset()})
        self.assertEqual(ids(events[0]["content"]["global"]["override"])[:2], [".m.rule.master", "beer"])
        # A default rule's change comes the same way, with the whole ruleset.
        await self.put(rule_path("underride", ".m.rule.message", "enabled"), {"enabled": False})
        third = await self.sync(self.alice, second["next_batch"])
        (event,) = push_rules_events(third)
        message = [r for r in event["content"]["global"]["underride"] if r["rule_id"] == ".m.rule.message"]
        self.assertEqual(message[0]["enabled"], False)
        self.assertIn("beer", ids(event["content"]["global"]["override"]))
        # Bob hears nothing of Alice's rules.
        bob_second = await self.sync(self.bob, bob_first["next_batch"])
        self.assertEqual(push_rules_events(bob_second), [])
        # A fresh initial sync has the stored rules, not the defaults.
        fresh = await self.sync(self.alice)
        self.assertEqual(push_rules_events(fresh), [event])

    async def test_change_wakes_a_waiting_sync(self):
        first = await self.sync(self.alice)
        pending = defer.ensureDeferred(self.sync(self.alice, first["next_batch"], timeout=10000))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(pending.called)
        await self.put(rule_path("override", ".m.rule.master", "enabled"), {"enabled": True})
        result = await pending
        (event,) = push_rules_events(result)
        self.assertTrue(event["content"]["global"]["override"][0]["enabled"])

    async def test_filter_can_leave_push_rules_out(self):
        body = await self.sync(self.alice, filter='{"account_data":{"not_types":["m.push_rules"]}}')
        self.assertEqual(push_rules_events(body), [])


@on_both_engines
class PushRulesNioTests(PushRulesTestCase):
    async def test_nio_manages_rules_and_sees_them_in_sync(self):
        client = self.nio_client(self.alice)
        synced = await nio(client.sync(timeout=0))
        self.assertIsInstance(synced, SyncResponse)
        (event,) = [e for e in synced.account_data_events if isinstance(e, PushRulesEvent)]
        self.assertEqual([r.id for r in event.global_rules.override], DEFAULT_OVERRIDE_IDS)
        self.assertEqual([r.id for r in event.global_rules.underride], SPEC_UNDERRIDE_IDS)

        resp = await nio(
            client.set_pushrule(
                "global",
                PushRuleKind.override,
                "tea",
                actions=[PushNotify(), PushSetTweak("sound", "kettle.wav")],
                conditions=[PushEventMatch("content.body", "tea")],
            )
        )
        self.assertIsInstance(resp, SetPushRuleResponse)
        resp = await nio(
            client.set_pushrule(
                "global", PushRuleKind.override, "time", after="tea", actions=[PushNotify()], conditions=[]
            )
        )
        self.assertIsInstance(resp, SetPushRuleResponse)
        resp = await nio(
            client.enable_pushrule("global", PushRuleKind.underride, ".m.rule.message", False)
        )
        self.assertIsInstance(resp, EnablePushRuleResponse)
        resp = await nio(
            client.set_pushrule_actions("global", PushRuleKind.override, "tea", [PushNotify()])
        )
        self.assertIsInstance(resp, SetPushRuleActionsResponse)
        refused = await nio(client.set_pushrule("global", PushRuleKind.override, ".mine", actions=[]))
        self.assertIsInstance(refused, SetPushRuleError)
        self.assertEqual(refused.status_code, "M_INVALID_PARAM")

        later = await nio(client.sync(timeout=0, since=synced.next_batch))
        (event,) = [e for e in later.account_data_events if isinstance(e, PushRulesEvent)]
        override = event.global_rules.override
        self.assertEqual([r.id for r in override[:3]], [".m.rule.master", "tea", "time"])
        tea = override[1]
        self.assertFalse(tea.default)
        self.assertEqual([a.as_value for a in tea.actions], ["notify"])
        self.assertEqual(tea.conditions, [PushEventMatch("content.body", "tea")])
        message = [r for r in event.global_rules.underride if r.id == ".m.rule.message"][0]
        self.assertFalse(message.enabled)

        resp = await nio(client.delete_pushrule("global", PushRuleKind.override, "tea"))
        self.assertIsInstance(resp, DeletePushRuleResponse)
        missing = await nio(client.delete_pushrule("global", PushRuleKind.override, "tea"))
        self.assertIsInstance(missing, DeletePushRuleError)
        self.assertEqual(missing.status_code, "M_NOT_FOUND")
        last = await nio(client.sync(timeout=0, since=later.next_batch))
        (event,) = [e for e in last.account_data_events if isinstance(e, PushRulesEvent)]
        self.assertEqual([r.id for r in event.global_rules.override[:2]], [".m.rule.master", "time"])


class PushRulesDataTests(unittest.TestCase):
    """The pure module: no server needed."""

    def test_stored_changes_round_trip(self):
        rules = UserPushRules()
        rules.put_rule("override", "beer", BEER, None, None)
        rules.put_rule("content", "cake", {"pattern": "cake", "actions": ["notify"]}, None, None)
        rules.set_enabled("underride", ".m.rule.call", False)
        rules.set_actions("override", ".m.rule.suppress_notices", ["notify"])
        content = rules.to_content()
        again = UserPushRules.from_content(content)
        self.assertEqual(again.to_content(), content)
        ruleset = build_ruleset("@a:x", again)
        self.assertEqual(ids(ruleset["content"]), ["cake"])
        self.assertFalse([r for r in ruleset["underride"] if r["rule_id"] == ".m.rule.call"][0]["enabled"])

    def test_junk_and_stale_stored_entries_are_ignored(self):
        stored = {
            "global": {
                "override": [
                    "junk",
                    {"no": "id"},
                    {"rule_id": ".m.rule.retired", "default": True, "enabled": False},
                    {"rule_id": "mine", "default": False, "enabled": True, "conditions": [], "actions": []},
                    {"rule_id": "mine", "default": False, "enabled": True, "conditions": [], "actions": ["notify"]},
                ],
                "content": "not a list",
            }
        }
        ruleset = push_rules_content("@a:x", stored)["global"]
        self.assertEqual(ids(ruleset["override"]), [".m.rule.master", "mine", *DEFAULT_OVERRIDE_IDS[1:]])
        self.assertEqual(ruleset["override"][1]["actions"], [])
        self.assertEqual(push_rules_content("@a:x", {"global": 5})["global"]["content"], [])

    def test_defaults_are_not_shared_between_users(self):
        first = push_rules_content("@a:x", None)
        first["global"]["override"][0]["actions"].append("notify")
        self.assertEqual(push_rules_content("@b:x", None)["global"]["override"][0]["actions"], [])
        self.assertEqual(DEFAULT_RULES["override"][0]["actions"], [])
        invite = push_rules_content("@b:x", None)["global"]["override"][2]
        self.assertEqual(invite["conditions"][2]["pattern"], "@b:x")

    def test_failed_change_leaves_rules_untouched(self):
        rules = UserPushRules()
        rules.put_rule("override", "beer", BEER, None, None)
        before = rules.to_content()
        with self.assertRaises(MatrixError):
            rules.put_rule("override", "wine", {"actions": []}, "nope", None)
        with self.assertRaises(MatrixError):
            rules.put_rule("override", "beer", {"actions": "x"}, None, None)
        self.assertEqual(rules.to_content(), before)
