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
class Members:
    """The users of one room who share one ruleset, with their display names there: what
    the user-dependent conditions are checked against all at once (`CompiledRuleset.
    evaluate_many`). Made once per version of the room's state (the push generator holds
    it); what it indexes is built when first needed and kept with it."""

    __slots__ = ("names", "_all_but", "_by_word", "_unindexed")

    def __init__(self, names: Mapping[str, str | None]) -> None:
        # user_id -> display name (None without one), in a stable order.
        self.names: dict[str, str | None] = dict(names)
        self._all_but: dict[str | None, tuple[str, ...]] = {}
        self._by_word: dict[str, list[str]] | None = None
        self._unindexed: list[str] = []

    def all_but(self, excluded: str | None) -> tuple[str, ...]:
        """Every member but `excluded` (the sender), the same tuple for each event of the
        same sender: the users a rule matching everyone gives its actions to."""
        key = excluded if excluded in self.names else None
        found = self._all_but.get(key)
        if found is None:
            if len(self._all_but) >= _ALL_BUT_HELD:
                self._all_but.clear()
            found = self._all_but[key] = tuple(u for u in self.names if u != key)
        return found

    def may_be_named_in(self, lowered: str | None) -> list[str]:
        """The members whose display name a body may contain (a superset, each checked
        with its regular expression after), given the body lowered if ASCII (else None:
        every member with a name). A name's first run of word characters is a whole word of
        any body its regular expression matches (the match starts and ends at word
        boundaries), so members are indexed by that word and a body's words find them."""
        if lowered is None:
            return [u for u, name in self.names.items() if name]
        if self._by_word is None:
            self._by_word = {}
            for user_id, name in self.names.items():
                if not name or not name.strip():
                    continue
                first = _WORD.search(name.lower()) if name.isascii() else None
                if first is None:
                    self._unindexed.append(user_id)
                else:
                    self._by_word.setdefault(first.group(), []).append(user_id)
        found = list(self._unindexed)
        for word in set(_WORD.findall(lowered)):
            found.extend(self._by_word.get(word, ()))
        return found


# Senders whose "everyone but them" tuples a `Members` keeps.
_ALL_BUT_HELD = 16
# A run of word characters in a lowered ASCII string (spec: word boundaries).
_WORD = re.compile(r"[a-z0-9_]+")


def _member_context(ctx: PushContext, members: Members, user_id: str) -> PushContext:
    return PushContext(
        ctx.member_count, members.names.get(user_id), ctx.sender_power,
        ctx.notification_levels, user_id,
    )


# Select the members (all of them for None, else those listed) for whom a condition holds.
Selector = Callable[[EventView, PushContext, Members, "Sequence[str] | None"], list[str]]


class _PerUser:
    """A condition that depends on the user (their ID, their display name). Checked for one
    user (`__call__`), or for the members of a room sharing a ruleset at once (`select`):
    then what it needs of the event (a mention list as a set, the body's words) is worked
    out once, and only the members it could hold for are looked at."""

    __slots__ = ("_test", "_select")

    def __init__(self, test: Matcher, select: Selector | None = None) -> None:
        self._test = test
        self._select = select

    def __call__(self, view: EventView, ctx: PushContext) -> bool:
        return self._test(view, ctx)

    def select(
        self, view: EventView, ctx: PushContext, members: Members, among: Sequence[str] | None
    ) -> list[str]:
        """The members (`among` them, if given) for whom the condition holds; `ctx` is the
        room's (its display name and user ID are not read)."""
        if self._select is not None:
            return self._select(view, ctx, members, among)
        pool = members.names if among is None else among
        return [u for u in pool if self._test(view, _member_context(ctx, members, u))]


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

        def select_self(
            view: EventView, _ctx: PushContext, members: Members, among: Sequence[str] | None
        ) -> list[str]:
            value = view.value(path)
            if not isinstance(value, str):
                return []
            lowered = _lowered_ascii(view, path)
            pool = members.names if among is None else among
            return [u for u in pool if _may_match(lowered, u) and matches(value, u)]

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


def _select_display_name(
    view: EventView, _ctx: PushContext, members: Members, among: Sequence[str] | None
) -> list[str]:
    body = view.value(("content", "body"))
    if not isinstance(body, str):
        return []
    lowered = _lowered_ascii(view, ("content", "body"))
    pool = members.may_be_named_in(lowered) if among is None else among
    names = members.names
    found = []
    for user_id in pool:
        name = names.get(user_id)
        if (
            name
            and _may_match(lowered, name)
            and name.strip()
            and _display_name_regex(name).search(body) is not None
        ):
            found.append(user_id)
    return found


_DISPLAY_NAME = _PerUser(_contains_display_name, _select_display_name)


@functools.lru_cache(maxsize=10_000)
def _display_name_regex(name: str) -> re.Pattern[str]:
    return re.compile(_WORD_START + re.escape(name) + _WORD_END, re.IGNORECASE)


def _property_self(kind: str, path: tuple[str, ...]) -> Matcher:
    """`event_property_is` / `_contains` of the ruleset owner's user ID."""
    if kind == "event_property_is":

        def select_is(
            view: EventView, _ctx: PushContext, members: Members, among: Sequence[str] | None
        ) -> list[str]:
            value = view.value(path)
            if among is not None:
                return [u for u in among if u == value]
            return [value] if isinstance(value, str) and value in members.names else []

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

    def select_contains(
        view: EventView, _ctx: PushContext, members: Members, among: Sequence[str] | None
    ) -> list[str]:
        strings = strings_of(view)
        if among is not None:
            return [u for u in among if u in strings]
        return [u for u in strings if u in members.names]

    return _PerUser(lambda view, ctx: ctx.user_id in strings_of(view), select_contains)


_NEVER = _PerUser(lambda _view, _ctx: False, lambda _view, _ctx, _members, _among: [])


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
        self, view: EventView, ctx: PushContext, members: Members, excluded: str | None
    ) -> list[tuple[CompiledRule, Sequence[str]]]:
        """`evaluate` for every member but `excluded` (the sender) at once: the matching
        rules, each with the members it matched, in rule order; members no rule matched
        are left out. `ctx` is the room's. Each rule's user conditions select their members
        a condition at a time (a mention: the members named; a display name: the members
        whose name's first word is in the body), so a big room's members cost nothing each
        unless a condition could hold for them; the rule that matches everyone else gives
        them the same tuple event after event."""
        plan = view.plans.get(self)
        if plan is None:
            plan = view.plans[self] = self._plan(view, ctx)
        matched_rules: list[tuple[CompiledRule, Sequence[str]]] = []
        taken: set[str] = set()
        for rule, conditions in plan.candidates:
            matched: list[str] | None = None
            for condition in conditions:
                matched = _select(condition, view, ctx, members, matched)
                if not matched:
                    break
            if not matched:
                continue
            fresh = [u for u in matched if u not in taken and u != excluded]
            if fresh:
                matched_rules.append((rule, fresh))
                taken.update(fresh)
        if plan.fallback is not None:
            everyone = members.all_but(excluded)
            rest = tuple(u for u in everyone if u not in taken) if taken else everyone
            if rest:
                matched_rules.append((plan.fallback, rest))
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
    condition: Matcher,
    view: EventView,
    ctx: PushContext,
    members: Members,
    among: Sequence[str] | None,
) -> list[str]:
    if isinstance(condition, _PerUser):
        return condition.select(view, ctx, members, among)
    pool = members.names if among is None else among
    return [u for u in pool if condition(view, _member_context(ctx, members, u))]


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
    groups: Iterable[tuple[CompiledRuleset, Members]],
    excluded: str | None,
) -> list[tuple[CompiledRule, Sequence[str]]]:
    """The rules that notify or highlight, each with the users it matched, for a room's
    users grouped by the ruleset they share, all but `excluded` (`ctx` is the room's).
    Equivalent to `evaluate_all`; a group whose evaluation fails is evaluated again user by
    user, so one user's failure is logged and skipped, never the others'."""
    results: list[tuple[CompiledRule, Sequence[str]]] = []
    for ruleset, members in groups:
        try:
            matched = ruleset.evaluate_many(view, ctx, members, excluded)
        except Exception:
            matched = []
            for user_id in members.all_but(excluded):
                try:
                    rule = ruleset.evaluate(view, _member_context(ctx, members, user_id))
                except Exception:
                    logger.exception("Evaluating the push rules of %s failed", user_id)
                    continue
                if rule is not None:
                    matched.append((rule, [user_id]))
        results.extend((rule, users) for rule, users in matched if rule.notify or rule.highlight)
    return results
