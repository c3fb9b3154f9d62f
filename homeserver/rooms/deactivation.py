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
from homeserver.threepids.id_server_bindings import IdentityServerBindings
from storage.stores.accounts import AccountStore
from storage.stores.rooms import RoomStore

logger = logging.getLogger(__name__)


class AccountDeactivation:
    """The account is marked deactivated (and queued in `pending_deactivations`) in one
    transaction, then its sessions and rooms are cleaned up and the queue entry removed.
    A process that dies in between leaves the entry, and `resume_pending` (at start-up)
    finishes the work: every step can be done again."""

    def __init__(
        self,
        account: AccountHandler,
        accounts: AccountStore,
        rooms: RoomStore,
        membership: MembershipHandler,
        id_server_bindings: IdentityServerBindings,
    ) -> None:
        self._account = account
        self._accounts = accounts
        self._rooms = rooms
        self._membership = membership
        self._id_server_bindings = id_server_bindings

    async def deactivate(
        self,
        user_id: str,
        erase: bool,
        keep_an_admin: bool = False,
        id_server: str | None = None,
    ) -> bool:
        """`keep_an_admin`: see `AccountHandler.deactivate`. The addresses bound at identity
        servers for the user are unbound first (an identity server failing stops the
        deactivation); True if every one was (or there were none), False if an identity
        server does not support unbinding. `id_server`: the client's choice for the
        addresses bound at one (each address's recorded servers when there is none)."""
        unbound = await self._id_server_bindings.unbind_all(user_id, id_server)
        await self._account.deactivate(user_id, erase, keep_an_admin)
        await self._leave_rooms(user_id)
        await self._accounts.finish_deactivation(user_id)
        return unbound

    async def resume_pending(self) -> None:
        """Finish the deactivations a stopped process left half done."""
        for user_id in await self._accounts.pending_deactivations():
            logger.info("resuming the deactivation of %s", user_id)
            try:
                await self._account.remove_sessions(user_id)
                await self._leave_rooms(user_id)
                await self._accounts.finish_deactivation(user_id)
            except Exception:
                # Left queued for the next start; the other accounts still get their turn.
                logger.exception("resuming the deactivation of %s failed", user_id)

    async def _leave_rooms(self, user_id: str) -> None:
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
