"""Deactivating an account, whether its user asks (`POST /account/deactivate`) or an admin
does: the account's own part (`AccountHandler.deactivate`: devices, tokens, pushers,
password, optionally the profile), then its memberships: it leaves every room it is in
and declines its invites and knocks, so the rooms stop counting it as a member and no
longer send it anything. The spec leaves what deactivation does to rooms to the server;
Synapse parts the user from every room, and clients expect a deactivated user to appear
as having left."""

from __future__ import annotations

import logging

from homeserver.auth.account import AccountHandler
from homeserver.auth.tokens import Requester
from homeserver.rooms.membership import MembershipHandler
from storage.stores.rooms import RoomStore

logger = logging.getLogger(__name__)


class AccountDeactivation:
    def __init__(
        self, account: AccountHandler, rooms: RoomStore, membership: MembershipHandler
    ) -> None:
        self._account = account
        self._rooms = rooms
        self._membership = membership

    async def deactivate(self, user_id: str, erase: bool, keep_an_admin: bool = False) -> None:
        """`keep_an_admin`: see `AccountHandler.deactivate`."""
        await self._account.deactivate(user_id, erase, keep_an_admin)
        as_user = Requester(user_id=user_id, device_id="", token_id="", is_admin=False)
        for membership in await self._rooms.get_rooms_for_user(
            user_id, ("join", "invite", "knock")
        ):
            try:
                await self._membership.leave(as_user, membership.room_id)
            except Exception as e:
                # One room refusing (its state forbids the leave, or the server holding an
                # invite is unreachable) must not keep the account in the others, nor turn a
                # deactivation that happened into an error.
                logger.warning(
                    "deactivating %s: could not leave %s: %s", user_id, membership.room_id, e
                )
