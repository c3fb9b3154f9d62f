"""Shared set-up for the admin API tests: an admin user, plain users, and raw requests to
the admin endpoints."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from tests.harness import Response
from tests.room_helpers import RoomTestCase, User, q

ADMIN = "/_synapse/admin"


class AdminTestCase(RoomTestCase):
    async def make_admin(self, localpart: str = "root") -> User:
        user = await self.user(localpart)
        await self.hs.accounts.set_admin(user.user_id, True)
        # Its token may have been validated (and cached) before it became an admin.
        self.hs.tokens.forget_user(user.user_id)
        return user

    async def admin_get(self, admin: User, path: str, **params: Any) -> Response:
        if params:
            path += "?" + urlencode(params, doseq=True)
        return await self.request("GET", ADMIN + path, token=admin.token)

    async def admin_call(
        self, admin: User, method: str, path: str, body: Any = None
    ) -> Response:
        return await self.request(method, ADMIN + path, body, token=admin.token)

    async def audit(self, target: str) -> list[Any]:
        """The audit log's entries about `target`, oldest first."""
        return list(reversed(await self.hs.admin_audit_store.entries(target=target)))


__all__ = ["ADMIN", "AdminTestCase", "User", "q"]
