"""Push rules as data: the spec's server-default rules, what a user changed, and the merged
ruleset clients see. Pure functions, no I/O (spec v1.19: "Push Rules", "Predefined Rules",
api/client-server/pushrules.yaml).

A user's effective ruleset is computed, never stored whole. The global account data event
`m.push_rules` holds only what the user changed (`UserPushRules.to_content`):

    {"global": {"override": [<user rule>, ..., {"rule_id": ".m.rule.master", "default": true,
                                                 "enabled": true}], "content": [...], ...}}

- entries whose `rule_id` does not start with "." are the user's own rules, in priority order;
- entries whose `rule_id` starts with "." hold the user's `enabled` / `actions` for a
  server-default rule (only the fields the user set).

Every read turns that into the full ruleset with `push_rules_content`, so a server whose
defaults change (a new spec version) serves the new defaults to everyone, keeping each
user's own settings.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import check_room_id, split_user_id

JsonDict = dict[str, Any]

# In the order they are checked (spec: "Push Rules").
KINDS = ("override", "content", "room", "sender", "underride")
MASTER_RULE_ID = ".m.rule.master"
# The spec writes this where a default rule names its owner; replaced per user.
USER_ID_PLACEHOLDER = "[the user's Matrix ID]"

# Spec: "Historical Actions" — clients and servers MUST ignore these. A rule keeps them as
# its owner set them (older clients read their own `["dont_notify"]` back to show a room as
# muted); the evaluator gives them no effect.
HISTORICAL_ACTIONS = frozenset({"dont_notify", "coalesce"})
_MEMBER_COUNT = re.compile(r"^(==|<|>|>=|<=)?[0-9]+$")
_MAX_SAFE_INTEGER = 2**53 - 1


def _event_match(key: str, pattern: str) -> JsonDict:
    return {"kind": "event_match", "key": key, "pattern": pattern}


_SOUND_DEFAULT = {"set_tweak": "sound", "value": "default"}
_HIGHLIGHT = {"set_tweak": "highlight"}


def _rule(
    rule_id: str, conditions: list[JsonDict], actions: list[Any], enabled: bool = True
) -> JsonDict:
    return {
        "rule_id": rule_id,
        "default": True,
        "enabled": enabled,
        "conditions": conditions,
        "actions": actions,
    }


# The server-default rules of spec v1.19, per kind, in the spec's order, plus two legacy
# body-matching override rules that spec v1.17 removed: `.m.rule.contains_display_name` and
# `.m.rule.roomnotif`, as the spec defined them before. Synapse still serves both, right after
# the mention rules that replaced them, and matrix-js-sdk warns about a ruleset without them
# (and adds local copies): clients that do not send `m.mentions` rely on them. The third
# legacy rule, `.m.rule.contains_user_name` (a content rule), is not served: matrix-js-sdk
# does not expect it, and `.m.rule.is_user_mention` does its work.
DEFAULT_RULES: dict[str, list[JsonDict]] = {
    "override": [
        _rule(MASTER_RULE_ID, [], [], enabled=False),
        _rule(".m.rule.suppress_notices", [_event_match("content.msgtype", "m.notice")], []),
        _rule(
            ".m.rule.invite_for_me",
            [
                _event_match("type", "m.room.member"),
                _event_match("content.membership", "invite"),
                _event_match("state_key", USER_ID_PLACEHOLDER),
            ],
            ["notify", _SOUND_DEFAULT],
        ),
        _rule(".m.rule.member_event", [_event_match("type", "m.room.member")], []),
        _rule(
            ".m.rule.is_user_mention",
            [
                {
                    "kind": "event_property_contains",
                    "key": "content.m\\.mentions.user_ids",
                    "value": USER_ID_PLACEHOLDER,
                }
            ],
            ["notify", _SOUND_DEFAULT, _HIGHLIGHT],
        ),
        _rule(
            ".m.rule.contains_display_name",
            [{"kind": "contains_display_name"}],
            ["notify", _SOUND_DEFAULT, _HIGHLIGHT],
        ),
        _rule(
            ".m.rule.is_room_mention",
            [
                {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
                {"kind": "sender_notification_permission", "key": "room"},
            ],
            ["notify", _HIGHLIGHT],
        ),
        _rule(
            ".m.rule.roomnotif",
            [
                _event_match("content.body", "@room"),
                {"kind": "sender_notification_permission", "key": "room"},
            ],
            ["notify", _HIGHLIGHT],
        ),
        _rule(
            ".m.rule.tombstone",
            [_event_match("type", "m.room.tombstone"), _event_match("state_key", "")],
            ["notify", _HIGHLIGHT],
        ),
        _rule(".m.rule.reaction", [_event_match("type", "m.reaction")], []),
        _rule(
            ".m.rule.room.server_acl",
            [_event_match("type", "m.room.server_acl"), _event_match("state_key", "")],
            [],
        ),
        _rule(
            ".m.rule.suppress_edits",
            [
                {
                    "kind": "event_property_is",
                    "key": "content.m\\.relates_to.rel_type",
                    "value": "m.replace",
                }
            ],
            [],
        ),
    ],
    "content": [],
    "room": [],
    "sender": [],
    "underride": [
        _rule(
            ".m.rule.call",
            [_event_match("type", "m.call.invite")],
            ["notify", {"set_tweak": "sound", "value": "ring"}],
        ),
        _rule(
            ".m.rule.encrypted_room_one_to_one",
            [{"kind": "room_member_count", "is": "2"}, _event_match("type", "m.room.encrypted")],
            ["notify", _SOUND_DEFAULT],
        ),
        _rule(
            ".m.rule.room_one_to_one",
            [{"kind": "room_member_count", "is": "2"}, _event_match("type", "m.room.message")],
            ["notify", _SOUND_DEFAULT],
        ),
        _rule(".m.rule.message", [_event_match("type", "m.room.message")], ["notify"]),
        _rule(".m.rule.encrypted", [_event_match("type", "m.room.encrypted")], ["notify"]),
    ],
}

_DEFAULT_RULE_IDS = {kind: {r["rule_id"] for r in rules} for kind, rules in DEFAULT_RULES.items()}


def default_rules(user_id: str, kind: str) -> list[JsonDict]:
    """Fresh copies of the server-default rules of `kind`, with the user's ID filled in."""
    return [_substitute(copy.deepcopy(rule), user_id) for rule in DEFAULT_RULES[kind]]


def _substitute(value: Any, user_id: str) -> Any:
    if value == USER_ID_PLACEHOLDER:
        return user_id
    if isinstance(value, dict):
        return {k: _substitute(v, user_id) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, user_id) for v in value]
    return value


def is_default_rule(kind: str, rule_id: str) -> bool:
    return rule_id in _DEFAULT_RULE_IDS[kind]


# ----- what a user changed ------------------------------------------------------------------


@dataclass
class UserPushRules:
    """A user's own rules (per kind, most important first) and their settings for
    server-default rules (per kind, rule_id -> {"enabled"?, "actions"?})."""

    rules: dict[str, list[JsonDict]] = field(default_factory=lambda: {k: [] for k in KINDS})
    default_settings: dict[str, dict[str, JsonDict]] = field(
        default_factory=lambda: {k: {} for k in KINDS}
    )

    @classmethod
    def from_content(cls, content: JsonDict | None) -> UserPushRules:
        """Read the stored `m.push_rules` content; entries that make no sense are skipped."""
        user = cls()
        ruleset = (content or {}).get("global")
        if not isinstance(ruleset, dict):
            return user
        for kind in KINDS:
            entries = ruleset.get(kind)
            if not isinstance(entries, list):
                continue
            for entry in entries:
                if not isinstance(entry, dict) or not isinstance(entry.get("rule_id"), str):
                    continue
                rule_id = entry["rule_id"]
                if rule_id.startswith("."):
                    if is_default_rule(kind, rule_id):
                        settings = {k: entry[k] for k in ("enabled", "actions") if k in entry}
                        user.default_settings[kind][rule_id] = settings
                elif not any(r["rule_id"] == rule_id for r in user.rules[kind]):
                    user.rules[kind].append(entry)
        return user

    def to_content(self) -> JsonDict:
        ruleset: JsonDict = {}
        for kind in KINDS:
            entries = list(self.rules[kind])
            for rule_id, settings in self.default_settings[kind].items():
                entries.append({"rule_id": rule_id, "default": True, **settings})
            ruleset[kind] = entries
        return {"global": ruleset}

    # ----- changes (each raises MatrixError for what the client got wrong) -------------------

    def put_rule(
        self, kind: str, rule_id: str, body: JsonDict, before: str | None, after: str | None
    ) -> None:
        """Add or replace a user rule (spec: PUT /pushrules/global/{kind}/{ruleId})."""
        check_kind(kind)
        check_new_rule_id(kind, rule_id)
        rule = parse_rule(kind, rule_id, body)
        own = self.rules[kind]
        index = _index(own, rule_id)
        if index is not None:
            # An update keeps the rule's enabled state; only new rules start enabled.
            rule["enabled"] = own[index].get("enabled", True)
        # With both, `before` decides (spec).
        relative = before if before is not None else after
        if relative is None:
            if index is not None:
                own[index] = rule
            else:
                # A new rule becomes the most important user rule of its kind.
                own.insert(0, rule)
            return
        if relative.startswith("."):
            raise MatrixError(
                400,
                Codes.INVALID_PARAM,
                "Cannot place a rule relative to a server-default rule",
            )
        others = [r for r in own if r["rule_id"] != rule_id]
        position = _index(others, relative)
        if position is None:
            # Spec: 400, with this very message and M_UNKNOWN as its example.
            raise MatrixError(400, Codes.UNKNOWN, f"before/after rule not found: {relative}")
        others.insert(position if before is not None else position + 1, rule)
        self.rules[kind] = others

    def delete_rule(self, kind: str, rule_id: str) -> None:
        check_kind(kind)
        if is_default_rule(kind, rule_id):
            raise MatrixError(400, Codes.INVALID_PARAM, "Server-default rules cannot be deleted")
        index = _index(self.rules[kind], rule_id)
        if index is None:
            raise _not_found()
        del self.rules[kind][index]

    def set_enabled(self, kind: str, rule_id: str, enabled: bool) -> None:
        self._settings_of(kind, rule_id)["enabled"] = enabled

    def set_actions(self, kind: str, rule_id: str, actions: list[Any]) -> None:
        self._settings_of(kind, rule_id)["actions"] = actions

    def copy_room_rules(self, old_room_id: str, new_room_id: str) -> bool:
        """After a room upgrade, give the new room a copy of each enabled rule about the old
        one (a `room` rule named after it, or a rule with a `room_id` condition on it), named
        after the new room as Synapse names them. False if there was nothing to copy."""
        copied = False
        for kind in KINDS:
            own = self.rules[kind]
            for rule in list(own):
                if not rule.get("enabled", True) or not _is_about_room(kind, rule, old_room_id):
                    continue
                copy_ = copy.deepcopy(rule)
                copy_["rule_id"] = new_room_id
                if kind in ("override", "underride"):
                    copy_["conditions"] = [
                        {**c, "pattern": new_room_id} if _is_room_condition(c, old_room_id) else c
                        for c in copy_.get("conditions", [])
                    ]
                index = _index(own, new_room_id)
                if index is None:
                    own.insert(0, copy_)
                else:
                    own[index] = copy_
                copied = True
        return copied

    def _settings_of(self, kind: str, rule_id: str) -> JsonDict:
        """Where `enabled` / `actions` of an existing rule live: the user rule itself, or the
        user's settings for a server-default rule. 404 if the rule does not exist."""
        check_kind(kind)
        if is_default_rule(kind, rule_id):
            return self.default_settings[kind].setdefault(rule_id, {})
        index = _index(self.rules[kind], rule_id)
        if index is None:
            raise _not_found()
        return self.rules[kind][index]


def _is_room_condition(condition: Any, room_id: str) -> bool:
    return (
        isinstance(condition, dict)
        and condition.get("key") == "room_id"
        and condition.get("pattern") == room_id
    )


def _is_about_room(kind: str, rule: JsonDict, room_id: str) -> bool:
    if kind == "room":
        return bool(rule["rule_id"] == room_id)
    conditions = rule.get("conditions")
    return isinstance(conditions, list) and any(_is_room_condition(c, room_id) for c in conditions)


def _index(rules: list[JsonDict], rule_id: str) -> int | None:
    for i, rule in enumerate(rules):
        if rule["rule_id"] == rule_id:
            return i
    return None


def _not_found() -> MatrixError:
    return MatrixError(404, Codes.NOT_FOUND, "The push rule was not found.")


# ----- the ruleset clients see ----------------------------------------------------------------


def build_ruleset(user_id: str, user: UserPushRules) -> JsonDict:
    """The user's rules of every kind, most important first.

    User rules come before server-default rules of the same kind, except `.m.rule.master`,
    which is always first (spec: "Predefined Rules").
    """
    ruleset: JsonDict = {}
    for kind in KINDS:
        defaults = default_rules(user_id, kind)
        for rule in defaults:
            rule.update(copy.deepcopy(user.default_settings[kind].get(rule["rule_id"], {})))
        own = [_format_user_rule(kind, rule) for rule in user.rules[kind]]
        if kind == "override":
            master = [r for r in defaults if r["rule_id"] == MASTER_RULE_ID]
            rest = [r for r in defaults if r["rule_id"] != MASTER_RULE_ID]
            ruleset[kind] = master + own + rest
        else:
            ruleset[kind] = own + defaults
    return ruleset


def _format_user_rule(kind: str, rule: JsonDict) -> JsonDict:
    formatted: JsonDict = {
        "rule_id": rule["rule_id"],
        "default": False,
        "enabled": bool(rule.get("enabled", True)),
    }
    if kind in ("override", "underride"):
        formatted["conditions"] = copy.deepcopy(rule.get("conditions", []))
    elif kind == "content":
        formatted["pattern"] = rule.get("pattern", "")
    formatted["actions"] = copy.deepcopy(rule.get("actions", []))
    return formatted


def push_rules_content(user_id: str, stored: JsonDict | None) -> JsonDict:
    """The `m.push_rules` account data content for the user, from what is stored (or None)."""
    return {"global": build_ruleset(user_id, UserPushRules.from_content(stored))}


def find_rule(ruleset: JsonDict, kind: str, rule_id: str) -> JsonDict:
    check_kind(kind)
    for rule in ruleset[kind]:
        if rule["rule_id"] == rule_id:
            return rule
    raise _not_found()


# ----- validation -----------------------------------------------------------------------------


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise MatrixError(
            400, Codes.INVALID_PARAM, f"Unknown push rule kind {kind!r}; expected one of {KINDS}"
        )


def check_new_rule_id(kind: str, rule_id: str) -> None:
    """Spec: IDs starting with "." are reserved for server-default rules; no slashes or
    backslashes. Room rules are named by the room's ID, sender rules by the user's."""
    if rule_id.startswith("."):
        raise MatrixError(
            400,
            Codes.INVALID_PARAM,
            "Rule IDs starting with '.' are reserved for server-default rules",
        )
    if "/" in rule_id or "\\" in rule_id:
        raise MatrixError(
            400, Codes.INVALID_PARAM, "Rule IDs may not contain slashes or backslashes"
        )
    if kind == "room":
        check_room_id(rule_id)
    elif kind == "sender":
        split_user_id(rule_id)


def parse_rule(kind: str, rule_id: str, body: JsonDict) -> JsonDict:
    """A new user rule from a PUT body: `actions` always; `conditions` for override and
    underride rules (none means the rule always matches); `pattern` for content rules."""
    if "actions" not in body:
        raise MatrixError(400, Codes.BAD_JSON, "Missing 'actions'")
    rule: JsonDict = {"rule_id": rule_id, "default": False, "enabled": True}
    if kind in ("override", "underride"):
        rule["conditions"] = parse_conditions(body.get("conditions", []))
    elif kind == "content":
        pattern = body.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise MatrixError(400, Codes.BAD_JSON, "Content rules need a 'pattern' string")
        rule["pattern"] = pattern
    rule["actions"] = parse_actions(body["actions"])
    return rule


def parse_actions(actions: Any) -> list[Any]:
    """Validate actions. The historical `dont_notify` and `coalesce` are accepted and kept,
    to mean nothing (spec: "Historical Actions")."""
    if not isinstance(actions, list):
        raise MatrixError(400, Codes.BAD_JSON, "'actions' must be a list")
    kept: list[Any] = []
    for action in actions:
        if action == "notify" or (isinstance(action, str) and action in HISTORICAL_ACTIONS):
            kept.append(action)
        elif isinstance(action, dict) and isinstance(action.get("set_tweak"), str):
            kept.append(action)
        else:
            raise MatrixError(400, Codes.BAD_JSON, f"Unrecognised action: {action!r}")
    return kept


def parse_conditions(conditions: Any) -> list[JsonDict]:
    """Validate the parameters of the conditions the spec defines. Other kinds are kept as
    they are: the spec says an unrecognised condition never matches, not that it is invalid."""
    if not isinstance(conditions, list):
        raise MatrixError(400, Codes.BAD_JSON, "'conditions' must be a list")
    for condition in conditions:
        if not isinstance(condition, dict) or not isinstance(condition.get("kind"), str):
            raise MatrixError(400, Codes.BAD_JSON, "Each condition must be an object with a 'kind'")
        _check_condition(condition)
    return conditions


def _check_condition(condition: JsonDict) -> None:
    kind = condition["kind"]

    def need_string(name: str) -> None:
        if not isinstance(condition.get(name), str):
            raise MatrixError(400, Codes.BAD_JSON, f"'{kind}' conditions need a '{name}' string")

    if kind == "event_match":
        need_string("key")
        need_string("pattern")
    elif kind in ("event_property_is", "event_property_contains"):
        need_string("key")
        if "value" not in condition or not _is_scalar(condition["value"]):
            raise MatrixError(
                400,
                Codes.BAD_JSON,
                f"'{kind}' conditions need a 'value': a string, integer, boolean or null",
            )
    elif kind == "room_member_count":
        need_string("is")
        if not _MEMBER_COUNT.fullmatch(condition["is"]):
            raise MatrixError(
                400, Codes.BAD_JSON, "'is' must be a number, optionally after ==, <, >, >= or <="
            )
    elif kind == "sender_notification_permission":
        need_string("key")


def _is_scalar(value: Any) -> bool:
    """Spec: non-compound canonical JSON values (strings, integers in the safe range,
    booleans, null)."""
    if value is None or isinstance(value, str | bool):
        return True
    return isinstance(value, int) and -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER


def parse_enabled(body: JsonDict) -> bool:
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise MatrixError(400, Codes.BAD_JSON, "'enabled' must be true or false")
    return enabled
