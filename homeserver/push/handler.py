"""The push rules client API: read the user's ruleset, change it.

What a user changed is kept as their global account data event `m.push_rules` (see
`homeserver.push.rules`), written through `AccountDataHandler.write`: each change takes the
next account data stream position and wakes the user's syncs, which then carry the new
ruleset. The account data handler turns the stored content into the full ruleset on every
read, and supplies the defaults to users who never changed anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from homeserver.account_data import PUSH_RULES, AccountDataHandler
from homeserver.linearizer import Linearizer
from homeserver.push.rules import (
    UserPushRules,
    build_ruleset,
    check_kind,
    find_rule,
    parse_actions,
)

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]


class PushRulesHandler:
    def __init__(self, account_data: AccountDataHandler) -> None:
        self._account_data = account_data
        # Read-modify-write of a user's m.push_rules.
        self._writers = Linearizer("push_rules")

    # ----- reading ---------------------------------------------------------------------------

    async def get_ruleset(self, user_id: str) -> JsonDict:
        """The global ruleset: every kind, most important rule first."""
        return build_ruleset(user_id, await self._load(user_id))

    async def get_rules_of_kind(self, user_id: str, kind: str) -> list[JsonDict]:
        check_kind(kind)
        rules: list[JsonDict] = (await self.get_ruleset(user_id))[kind]
        return rules

    async def get_rule(self, user_id: str, kind: str, rule_id: str) -> JsonDict:
        return find_rule(await self.get_ruleset(user_id), kind, rule_id)

    # ----- changing --------------------------------------------------------------------------

    async def set_rule(
        self,
        user_id: str,
        kind: str,
        rule_id: str,
        body: JsonDict,
        before: str | None = None,
        after: str | None = None,
    ) -> None:
        await self._change(
            user_id,
            "set",
            kind,
            rule_id,
            lambda rules: rules.put_rule(kind, rule_id, body, before, after),
        )

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> None:
        await self._change(user_id, "delete", kind, rule_id, lambda r: r.delete_rule(kind, rule_id))

    async def set_enabled(self, user_id: str, kind: str, rule_id: str, enabled: bool) -> None:
        await self._change(
            user_id,
            "enable" if enabled else "disable",
            kind,
            rule_id,
            lambda rules: rules.set_enabled(kind, rule_id, enabled),
        )

    async def set_actions(self, user_id: str, kind: str, rule_id: str, actions: Any) -> None:
        # Validate before queueing, so bad input never waits behind other writes.
        check_kind(kind)
        cleaned = parse_actions(actions)
        await self._change(
            user_id,
            "set actions of",
            kind,
            rule_id,
            lambda rules: rules.set_actions(kind, rule_id, cleaned),
        )

    async def copy_room_rules(self, user_id: str, old_room_id: str, new_room_id: str) -> None:
        """A room was upgraded: the user's rules about the old room now apply to the new one
        too (see `UserPushRules.copy_room_rules`)."""
        async with self._writers.queue(user_id):
            rules = await self._load(user_id)
            if rules.copy_room_rules(old_room_id, new_room_id):
                await self._account_data.write(user_id, None, PUSH_RULES, rules.to_content())
                logger.info("copied %s's push rules for %s to %s", user_id, old_room_id,
                            new_room_id)

    async def _load(self, user_id: str) -> UserPushRules:
        return UserPushRules.from_content(await self._account_data.get(user_id, None, PUSH_RULES))

    async def _change(
        self,
        user_id: str,
        what: str,
        kind: str,
        rule_id: str,
        change: Callable[[UserPushRules], None],
    ) -> None:
        """Apply `change` to the user's stored rules and write them back, one change per user
        at a time. `change` raises MatrixError for bad requests, before anything is written."""
        async with self._writers.queue(user_id):
            rules = await self._load(user_id)
            change(rules)
            await self._account_data.write(user_id, None, PUSH_RULES, rules.to_content())
        logger.info("%s %s push rule %s/%s", user_id, what, kind, rule_id)
