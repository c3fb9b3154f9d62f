"""Push rules: /pushrules/, /pushrules/global/, /pushrules/global/{kind}/,
/pushrules/global/{kind}/{ruleId}[/enabled|/actions].

Spec: api/client-server/pushrules.yaml. Only the `global` scope exists; any other is an
unknown endpoint (404 M_UNRECOGNIZED).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object, query_string
from homeserver.errors import Codes, MatrixError
from homeserver.push.rules import parse_enabled

if TYPE_CHECKING:
    from homeserver.app import HomeServer

RULE = "/pushrules/global/(?P<kind>[^/]+)/(?P<rule_id>[^/]+)"


class PushRulesServlet:
    # The spec's path ends in a slash; clients that leave it off are served too.
    PATTERNS = [client_path("/pushrules/?")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        return 200, {"global": await self._hs.push_rules.get_ruleset(requester.user_id)}


class GlobalPushRulesServlet:
    PATTERNS = [client_path("/pushrules/global/?")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        return 200, await self._hs.push_rules.get_ruleset(requester.user_id)


class PushRulesOfKindServlet:
    """GET /pushrules/global/{kind}/: the rules of one kind, most important first. Not in
    the spec (which lists the whole ruleset), but Synapse serves it and clients written
    against it read one kind at a time."""

    PATTERNS = [client_path("/pushrules/global/(?P<kind>[^/]+)/")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, kind: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        return 200, await self._hs.push_rules.get_rules_of_kind(requester.user_id, kind)


class PushRuleServlet:
    PATTERNS = [client_path(RULE)]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, kind: str, rule_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        return 200, await self._hs.push_rules.get_rule(requester.user_id, kind, rule_id)

    async def on_PUT(self, request: HeddleRequest, kind: str, rule_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_json_object(request)
        await self._hs.push_rules.set_rule(
            requester.user_id,
            kind,
            rule_id,
            body,
            before=query_string(request, "before"),
            after=query_string(request, "after"),
        )
        return 200, {}

    async def on_DELETE(self, request: HeddleRequest, kind: str, rule_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        await self._hs.push_rules.delete_rule(requester.user_id, kind, rule_id)
        return 200, {}


class PushRuleEnabledServlet:
    PATTERNS = [client_path(f"{RULE}/enabled")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, kind: str, rule_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        rule = await self._hs.push_rules.get_rule(requester.user_id, kind, rule_id)
        return 200, {"enabled": rule["enabled"]}

    async def on_PUT(self, request: HeddleRequest, kind: str, rule_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        enabled = parse_enabled(parse_json_object(request))
        await self._hs.push_rules.set_enabled(requester.user_id, kind, rule_id, enabled)
        return 200, {}


class PushRuleActionsServlet:
    PATTERNS = [client_path(f"{RULE}/actions")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, kind: str, rule_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        rule = await self._hs.push_rules.get_rule(requester.user_id, kind, rule_id)
        return 200, {"actions": rule["actions"]}

    async def on_PUT(self, request: HeddleRequest, kind: str, rule_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_json_object(request)
        if "actions" not in body:
            raise MatrixError(400, Codes.BAD_JSON, "Missing 'actions'")
        await self._hs.push_rules.set_actions(requester.user_id, kind, rule_id, body["actions"])
        return 200, {}
