"""Other servers asking for our users' end-to-end encryption keys (server-server API
"End-to-End Encryption", api/server-server/user_keys.yaml). X-Matrix authenticated.

- `user/keys/query`: device keys and the master and self-signing keys of our users, with
  the signatures anyone may see (user-signing keys are never shared).
- `user/keys/claim`: one-time keys (else fallback keys) of our users' devices, each handed
  out once.

Users of other servers in a request are ignored, like unknown users: they are simply
missing from the answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.http import HeddleRequest
from client_api.validation import RequestBody, parse_body
from federation.transport.auth import federation_json_body_and_origin
from federation.transport.routes import federation_path

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class UserKeysQueryBody(RequestBody):
    device_keys: dict[str, list[str]]


class UserKeysClaimBody(RequestBody):
    one_time_keys: dict[str, dict[str, str]]


class UserKeysQueryServlet:
    """POST /_matrix/federation/v1/user/keys/query"""

    PATTERNS = [federation_path("/user/keys/query")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        _, raw = await federation_json_body_and_origin(self._hs, request)
        body = parse_body(raw, UserKeysQueryBody)
        return 200, await self._hs.e2e_keys.query_local_keys(body.device_keys)


class UserKeysClaimServlet:
    """POST /_matrix/federation/v1/user/keys/claim"""

    PATTERNS = [federation_path("/user/keys/claim")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        _, raw = await federation_json_body_and_origin(self._hs, request)
        body = parse_body(raw, UserKeysClaimBody)
        return 200, {"one_time_keys": await self._hs.e2e_keys.claim_local_keys(body.one_time_keys)}
