"""Evaluating push rules against an event (spec v1.19: "Push Rules", "Conditions",
"Predefined Rules"). Pure functions, no I/O.

A user's ruleset (`homeserver.push.rules.build_ruleset`) is compiled once into a
`CompiledRuleset`: each enabled rule becomes a tuple of condition matchers (glob patterns
compiled to regular expressions once) and its parsed actions. Evaluating it against an event
(an `EventView`, shared by every user the event is evaluated for) returns the first rule that
matches, in the spec's order. What a condition says about the event alone (its type, its
body, a property's value) does not depend on the user, so its answer is remembered in the
`EventView` and each further user of a big room pays a dictionary lookup for it.

Robustness: a rule that cannot be compiled (a malformed condition stored directly in account
data, say) is skipped and logged; it never stops the user's other rules, nor anyone else's.
A condition of a kind the spec does not define makes its rule never match (spec).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from homeserver.filtering import split_field_path
from homeserver.push.rules import KINDS

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]

# Spec ("sender_notification_permission", m.room.power_levels): `notifications.room`
# defaults to 50; other keys are given the same default.
DEFAULT_NOTIFICATION_LEVEL = 50
_MISSING = object()
# Stands for the ruleset owner's user ID in a compiled ruleset (see `compile_ruleset`), so
# that users with the same stored rules share one: compared with `PushContext.user_id`.
SELF = "\x00self"
_MAX_SAFE_INTEGER = 2**53 - 1
_MEMBER_COUNT = re.compile(r"^(==|<|>|>=|<=)?([0-9]+)$")
# A word boundary (spec): the start or end of the value, or any character outside
# [A-Za-z0-9_].
_WORD_START = r"(?:^|(?<=[^A-Za-z0-9_]))"
_WORD_END = r"(?:$|(?=[^A-Za-z0-9_]))"


@dataclass(frozen=True)
class PushContext:
    """What the conditions need to know beyond the event, for one user. Everything but the
    display name is the room's, and must be the same for every user one `EventView` is
    evaluated for (conditions reading it are answered once per event)."""

    # Joined members of the room.
    member_count: int
    # The user's display name in the room, if any.
    display_name: str | None
    # The sender's power level and the levels `notifications` requires, per key.
    sender_power: float
    notification_levels: Mapping[str, int] = field(default_factory=dict)
    # The user whose rules these are: what `SELF` in a compiled ruleset stands for.
    user_id: str = ""


class EventView:
    """One event as the conditions read it, with what they found remembered: the values at
    property paths, and the answers of conditions that depend on the event alone."""

    __slots__ = ("_event", "_values", "answers", "plans")

    def __init__(self, event: Mapping[str, Any]) -> None:
        self._event = event
        self._values: dict[tuple[str, ...], Any] = {}
        # A condition's memo key -> whether it matched this event (or what it needs of it).
        self.answers: dict[Any, Any] = {}
        # A ruleset -> what of it is left to check per user (see `CompiledRuleset`).
        self.plans: dict[Any, Any] = {}

    def value(self, path: tuple[str, ...]) -> Any:
        """The value at `path`, or `_MISSING`."""
        found = self._values.get(path, _MISSING)
        if found is not _MISSING:
            return found
        current: Any = self._event
        for part in path:
            if not isinstance(current, Mapping) or part not in current:
                current = _MISSING
                break
            current = current[part]
        self._values[path] = current
        return current


# ----- parsing ------------------------------------------------------------------------------


class InvalidRule(ValueError):
    """A rule or condition that cannot be evaluated; the rule is skipped."""


def split_path(key: str) -> tuple[str, ...]:
    """A dot-separated property path (spec appendix): `\\.` is a literal dot and `\\\\` a
    literal backslash; any other backslash is itself."""
    return tuple(split_field_path(key))


def _glob_to_regex(pattern: str) -> str:
    out: list[str] = []
    for char in pattern:
        if char == "*":
            out.append(".*?")
        elif char == "?":
            out.append(".")
        else:
            out.append(re.escape(char))
    return "".join(out)


@functools.lru_cache(maxsize=10_000)
def compile_glob(pattern: str, word_boundary: bool) -> re.Pattern[str]:
    """The regex for a glob (spec appendix: `*` any run of characters, `?` exactly one),
    matched case-insensitively: against the whole value, or with `word_boundary` against any
    substring starting and ending at word boundaries."""
    body = _glob_to_regex(pattern)
    if word_boundary:
        return re.compile(_WORD_START + body + _WORD_END, re.IGNORECASE | re.DOTALL)
    return re.compile(r"\A" + body + r"\Z", re.IGNORECASE | re.DOTALL)


def _is_scalar(value: Any) -> bool:
    if value is None or isinstance(value, str | bool):
        return True
    return isinstance(value, int) and -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER


def _same_scalar(a: Any, b: Any) -> bool:
    """Exact equality of canonical JSON scalars: True is not 1, "1" is not 1."""
    return type(a) is type(b) and a == b


# ----- conditions ---------------------------------------------------------------------------

Matcher = Callable[[EventView, PushContext], bool]
# A user an event is evaluated for, with their display name in the room (None without one).
Member = tuple[str, str | None]


def _member_context(ctx: PushContext, member: Member) -> PushContext:
    return PushContext(
        ctx.member_count, member[1], ctx.sender_power, ctx.notification_levels, member[0]
    )


class _PerUser:
    """A condition that depends on the user (their ID, their display name). Checked for one
    user (`__call__`), or for many users of one ruleset at once (`select`): then what it
    needs of the event (the body lowered, a mention list as a set) is worked out once and
    each user costs a set lookup or a substring test, not a regular expression."""

    __slots__ = ("_test", "_select")

    def __init__(
        self,
        test: Matcher,
        select: Callable[[EventView, list[Member]], list[Member]] | None = None,
    ) -> None:
        self._test = test
        self._select = select

    def __call__(self, view: EventView, ctx: PushContext) -> bool:
        return self._test(view, ctx)

    def select(self, view: EventView, ctx: PushContext, members: list[Member]) -> list[Member]:
        """The members for whom the condition holds; `ctx` is the room's (its display name
        and user ID are not read)."""
        if self._select is not None:
            return self._select(view, members)
        return [m for m in members if self._test(view, _member_context(ctx, m))]


def _lowered_ascii(view: EventView, path: tuple[str, ...]) -> str | None:
    """The string at `path` lowered, if it is ASCII (else None), once per event. Then an
    ASCII needle matching it case-insensitively, at word boundaries or not, is a substring
    of it: a cheap test to rule users out before their regular expression."""
    key = ("lowered_ascii", path)
    if key in view.answers:
        return view.answers[key]  # type: ignore[no-any-return]
    value = view.value(path)
    lowered = value.lower() if isinstance(value, str) and value.isascii() else None
    view.answers[key] = lowered
    return lowered


def _may_match(lowered: str | None, needle: str) -> bool:
    """False only when `needle` (a user ID or display name) cannot match a value whose
    lowered ASCII form is `lowered`, ignoring case. Glob characters in a user ID make no
    promise."""
    if lowered is None or not needle.isascii() or "*" in needle or "?" in needle:
        return True
    return needle.lower() in lowered


class _EventOnly:
    """A condition whose answer is the same for every user the event is evaluated for: it
    reads the event, or the parts of the context that are the room's (member count, the
    sender's power, the notification levels), never the user's display name. Answered once
    per event; `memo_key` names what it tests (equal keys, equal answers)."""

    __slots__ = ("memo_key", "_test")

    def __init__(self, memo_key: Any, test: Callable[[EventView, PushContext], bool]) -> None:
        self.memo_key = memo_key
        self._test = test

    def __call__(self, view: EventView, ctx: PushContext) -> bool:
        answer = view.answers.get(self.memo_key)
        if answer is None:
            answer = view.answers[self.memo_key] = self._test(view, ctx)
        return answer


def _memoized(memo_key: Any, test: Callable[[EventView], bool]) -> Matcher:
    return _EventOnly(memo_key, lambda view, _ctx: test(view))


def _string(condition: Mapping[str, Any], name: str) -> str:
    value = condition.get(name)
    if not isinstance(value, str):
        raise InvalidRule(f"{condition.get('kind')!r} condition needs a {name!r} string")
    return value


def _event_match(key: str, pattern: str) -> Matcher:
    path = split_path(key)
    word_boundary = path == ("content", "body")
    if pattern == SELF:

        def matches(value: Any, user_id: str) -> bool:
            return isinstance(value, str) and (
                compile_glob(user_id, word_boundary).search(value) is not None
            )

        def select_self(view: EventView, members: list[Member]) -> list[Member]:
            value = view.value(path)
            if not isinstance(value, str):
                return []
            lowered = _lowered_ascii(view, path)
            return [
                m for m in members if _may_match(lowered, m[0]) and matches(value, m[0])
            ]

        return _PerUser(lambda view, ctx: matches(view.value(path), ctx.user_id), select_self)
    regex = compile_glob(pattern, word_boundary)

    def test(view: EventView) -> bool:
        value = view.value(path)
        return isinstance(value, str) and regex.search(value) is not None

    return _memoized(("event_match", path, pattern), test)


def _member_count(spec: str) -> Matcher:
    parsed = _MEMBER_COUNT.fullmatch(spec)
    if parsed is None:
        raise InvalidRule(f"room_member_count 'is' is not a number: {spec!r}")
    op, number = parsed.group(1) or "==", int(parsed.group(2))
    compare: Callable[[int], bool] = {
        "==": lambda n: n == number,
        "<": lambda n: n < number,
        ">": lambda n: n > number,
        "<=": lambda n: n <= number,
        ">=": lambda n: n >= number,
    }[op]
    return _EventOnly(("room_member_count", op, number), lambda _v, ctx: compare(ctx.member_count))


def _contains_display_name(view: EventView, ctx: PushContext) -> bool:
    name = ctx.display_name
    if not name or not name.strip():
        return False
    body = view.value(("content", "body"))
    if not isinstance(body, str):
        return False
    regex = _display_name_regex(name)
    return regex.search(body) is not None


def _select_display_name(view: EventView, members: list[Member]) -> list[Member]:
    body = view.value(("content", "body"))
    if not isinstance(body, str):
        return []
    lowered = _lowered_ascii(view, ("content", "body"))
    return [
        m
        for m in members
        if m[1] and _may_match(lowered, m[1]) and m[1].strip()
        and _display_name_regex(m[1]).search(body) is not None
    ]


_DISPLAY_NAME = _PerUser(_contains_display_name, _select_display_name)


@functools.lru_cache(maxsize=10_000)
def _display_name_regex(name: str) -> re.Pattern[str]:
    return re.compile(_WORD_START + re.escape(name) + _WORD_END, re.IGNORECASE)


def _property_self(kind: str, path: tuple[str, ...]) -> Matcher:
    """`event_property_is` / `_contains` of the ruleset owner's user ID."""
    if kind == "event_property_is":

        def select_is(view: EventView, members: list[Member]) -> list[Member]:
            value = view.value(path)
            return [m for m in members if m[0] == value]

        return _PerUser(lambda view, ctx: view.value(path) == ctx.user_id, select_is)

    memo_key = ("self_contains", path)

    def strings_of(view: EventView) -> frozenset[str]:
        # The array's strings as a set, made once per event for all its users.
        strings = view.answers.get(memo_key)
        if strings is None:
            found = view.value(path)
            strings = view.answers[memo_key] = frozenset(
                v for v in found if isinstance(v, str)
            ) if isinstance(found, list) else frozenset()
        return strings  # type: ignore[no-any-return]

    def select_contains(view: EventView, members: list[Member]) -> list[Member]:
        strings = strings_of(view)
        return [m for m in members if m[0] in strings]

    return _PerUser(lambda view, ctx: ctx.user_id in strings_of(view), select_contains)


_NEVER = _PerUser(lambda _view, _ctx: False, lambda _view, _members: [])


def compile_condition(condition: Any) -> Matcher:
    """A matcher for one condition; InvalidRule for one that is malformed. A kind the spec
    does not define never matches (spec)."""
    if not isinstance(condition, Mapping):
        raise InvalidRule(f"condition is not an object: {condition!r}")
    kind = condition.get("kind")
    if kind == "event_match":
        return _event_match(_string(condition, "key"), _string(condition, "pattern"))
    if kind in ("event_property_is", "event_property_contains"):
        path = split_path(_string(condition, "key"))
        if "value" not in condition or not _is_scalar(condition["value"]):
            raise InvalidRule(f"{kind} condition needs a scalar 'value'")
        wanted = condition["value"]
        if wanted == SELF:
            return _property_self(kind, path)
        if kind == "event_property_is":

            def test_is(view: EventView) -> bool:
                found = view.value(path)
                return found is not _MISSING and _same_scalar(found, wanted)

            return _memoized((kind, path, type(wanted), wanted), test_is)

        def test_contains(view: EventView) -> bool:
            found = view.value(path)
            return isinstance(found, list) and any(_same_scalar(v, wanted) for v in found)

        return _memoized((kind, path, type(wanted), wanted), test_contains)
    if kind == "contains_display_name":
        return _DISPLAY_NAME
    if kind == "room_member_count":
        return _member_count(_string(condition, "is"))
    if kind == "sender_notification_permission":
        key = _string(condition, "key")
        return _EventOnly(
            ("sender_notification_permission", key),
            lambda _view, ctx: ctx.sender_power
            >= ctx.notification_levels.get(key, DEFAULT_NOTIFICATION_LEVEL),
        )
    if isinstance(kind, str):
        return _NEVER
    raise InvalidRule(f"condition without a 'kind': {condition!r}")


# ----- rules --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledRule:
    rule_id: str
    kind: str
    conditions: tuple[Matcher, ...]
    # The rule's actions as stored (for /notifications and pushers), and as JSON text.
    actions: tuple[Any, ...]
    notify: bool
    highlight: bool
    actions_json: str = "[]"

    @property
    def event_conditions(self) -> tuple[_EventOnly, ...]:
        """The conditions answered once per event, whoever the user."""
        return tuple(c for c in self.conditions if isinstance(c, _EventOnly))

    @property
    def user_conditions(self) -> tuple[Matcher, ...]:
        """The conditions that depend on the user (display name, own user ID)."""
        return tuple(c for c in self.conditions if not isinstance(c, _EventOnly))

    def matches(self, view: EventView, ctx: PushContext) -> bool:
        for condition in self.conditions:
            if not condition(view, ctx):
                return False
        return True


def parse_actions(actions: Any) -> tuple[tuple[Any, ...], bool, bool]:
    """(actions, notify, highlight). `highlight` is the highlight tweak, whose value
    defaults to true (spec); `dont_notify` and `coalesce` mean nothing (spec)."""
    if not isinstance(actions, list):
        raise InvalidRule(f"actions is not a list: {actions!r}")
    notify = highlight = False
    kept: list[Any] = []
    for action in actions:
        if action == "notify":
            notify = True
            kept.append(action)
        elif isinstance(action, Mapping) and isinstance(action.get("set_tweak"), str):
            kept.append(dict(action))
            if action["set_tweak"] == "highlight":
                highlight = action.get("value", True) is True
        # Anything else (historical actions, garbage) is ignored.
    return tuple(kept), notify, highlight


def compile_rule(kind: str, rule: Any) -> CompiledRule | None:
    """The rule ready to evaluate; None when disabled. InvalidRule when malformed."""
    if not isinstance(rule, Mapping) or not isinstance(rule.get("rule_id"), str):
        raise InvalidRule(f"rule without a rule_id: {rule!r}")
    if rule.get("enabled", True) is not True:
        return None
    rule_id = rule["rule_id"]
    conditions: list[Matcher]
    if kind in ("override", "underride"):
        raw = rule.get("conditions", [])
        if not isinstance(raw, list):
            raise InvalidRule("conditions is not a list")
        conditions = [compile_condition(c) for c in raw]
    elif kind == "content":
        pattern = rule.get("pattern")
        if not isinstance(pattern, str):
            raise InvalidRule("content rule without a pattern")
        conditions = [_event_match("content.body", pattern)]
    elif kind == "room":
        conditions = [_exact(("room_id",), rule_id)]
    elif kind == "sender":
        conditions = [_exact(("sender",), rule_id)]
    else:
        raise InvalidRule(f"unknown kind {kind!r}")
    actions, notify, highlight = parse_actions(rule.get("actions", []))
    return CompiledRule(
        rule_id, kind, tuple(conditions), actions, notify, highlight, json.dumps(list(actions))
    )


def _exact(path: tuple[str, ...], wanted: str) -> Matcher:
    return _memoized(("exact", path, wanted), lambda view: view.value(path) == wanted)


@dataclass(frozen=True)
class _Plan:
    """A ruleset against one event: the rules that may still match, each with only its
    user-dependent conditions left to check, and the rule every other user gets."""

    candidates: tuple[tuple[CompiledRule, tuple[Matcher, ...]], ...]
    fallback: CompiledRule | None


class CompiledRuleset:
    """A user's enabled rules, most important first. Users with the same stored rules share
    one (their own user ID is `SELF` in it): evaluated against an event, what does not
    depend on the user is worked out once (`_Plan`) and each user checks only the rest (a
    mention of them, their display name)."""

    __slots__ = ("rules", "_split")

    def __init__(self, rules: tuple[CompiledRule, ...]) -> None:
        self.rules = rules
        self._split = tuple((r, r.event_conditions, r.user_conditions) for r in rules)

    def evaluate(self, view: EventView, ctx: PushContext) -> CompiledRule | None:
        """The first rule that matches the event (spec: the first match decides)."""
        plan = view.plans.get(self)
        if plan is None:
            plan = view.plans[self] = self._plan(view, ctx)
        for rule, conditions in plan.candidates:
            for condition in conditions:
                if not condition(view, ctx):
                    break
            else:
                return rule
        return plan.fallback

    def evaluate_many(
        self, view: EventView, ctx: PushContext, members: Sequence[Member]
    ) -> list[tuple[CompiledRule, list[str]]]:
        """`evaluate` for every member at once (users sharing this ruleset): the matching
        rules, each with the members it matched, in rule order; members no rule matched
        are left out. `ctx` is the room's; each member brings their ID and display name.
        Each rule's user conditions are checked against the members still unmatched, a
        condition at a time, so what they need of the event is worked out once."""
        plan = view.plans.get(self)
        if plan is None:
            plan = view.plans[self] = self._plan(view, ctx)
        matched_rules: list[tuple[CompiledRule, list[str]]] = []
        remaining = list(members)
        for rule, conditions in plan.candidates:
            if not remaining:
                return matched_rules
            matched = remaining
            for condition in conditions:
                matched = _select(condition, view, ctx, matched)
                if not matched:
                    break
            if not matched:
                continue
            matched_rules.append((rule, [m[0] for m in matched]))
            if len(matched) == len(remaining):
                return matched_rules
            taken = {m[0] for m in matched}
            remaining = [m for m in remaining if m[0] not in taken]
        if remaining and plan.fallback is not None:
            matched_rules.append((plan.fallback, [m[0] for m in remaining]))
        return matched_rules

    def _plan(self, view: EventView, ctx: PushContext) -> _Plan:
        candidates: list[tuple[CompiledRule, tuple[Matcher, ...]]] = []
        for rule, event_conditions, user_conditions in self._split:
            if not all(c(view, ctx) for c in event_conditions):
                continue
            if not user_conditions:
                return _Plan(tuple(candidates), rule)
            candidates.append((rule, user_conditions))
        return _Plan(tuple(candidates), None)


def _select(
    condition: Matcher, view: EventView, ctx: PushContext, members: list[Member]
) -> list[Member]:
    if isinstance(condition, _PerUser):
        return condition.select(view, ctx, members)
    return [m for m in members if condition(view, _member_context(ctx, m))]


def compile_ruleset(user_id: str, ruleset: Mapping[str, Any]) -> CompiledRuleset:
    """Compile a ruleset of the form `build_ruleset` returns; malformed rules are skipped
    (and logged), the rest still apply."""
    compiled: list[CompiledRule] = []
    for kind in KINDS:
        rules = ruleset.get(kind)
        if not isinstance(rules, list):
            continue
        for rule in rules:
            try:
                entry = compile_rule(kind, rule)
            except (InvalidRule, re.error) as e:
                rule_id = rule.get("rule_id") if isinstance(rule, Mapping) else None
                logger.warning("Skipping push rule %s/%s of %s: %s", kind, rule_id, user_id, e)
                continue
            if entry is not None:
                compiled.append(entry)
    return CompiledRuleset(tuple(compiled))


def thread_id_of(content: Mapping[str, Any]) -> str:
    """The thread an event belongs to for notification counts: the root named by an
    `m.thread` relation, else "main"."""
    relates_to = content.get("m.relates_to")
    if isinstance(relates_to, Mapping) and relates_to.get("rel_type") == "m.thread":
        root = relates_to.get("event_id")
        if isinstance(root, str) and root:
            return root
    return "main"


def evaluate_all(
    view: EventView, users: Iterable[tuple[str, CompiledRuleset, PushContext]]
) -> dict[str, CompiledRule]:
    """user_id -> the matching rule, for the users whose matching rule notifies or
    highlights. One user's failure is logged and skipped, never the others'."""
    results: dict[str, CompiledRule] = {}
    for user_id, ruleset, ctx in users:
        try:
            rule = ruleset.evaluate(view, ctx)
        except Exception:
            logger.exception("Evaluating the push rules of %s failed", user_id)
            continue
        if rule is not None and (rule.notify or rule.highlight):
            results[user_id] = rule
    return results


def evaluate_members(
    view: EventView,
    ctx: PushContext,
    groups: Iterable[tuple[CompiledRuleset, Sequence[Member]]],
) -> list[tuple[CompiledRule, list[str]]]:
    """The rules that notify or highlight, each with the users it matched, for users
    grouped by the ruleset they share (`ctx` is the room's). Equivalent to `evaluate_all`;
    a group whose evaluation fails is evaluated again user by user, so one user's failure
    is logged and skipped, never the others'."""
    results: list[tuple[CompiledRule, list[str]]] = []
    for ruleset, members in groups:
        try:
            matched = ruleset.evaluate_many(view, ctx, members)
        except Exception:
            matched = []
            for member in members:
                try:
                    rule = ruleset.evaluate(view, _member_context(ctx, member))
                except Exception:
                    logger.exception("Evaluating the push rules of %s failed", member[0])
                    continue
                if rule is not None:
                    matched.append((rule, [member[0]]))
        results.extend((rule, users) for rule, users in matched if rule.notify or rule.highlight)
    return results
