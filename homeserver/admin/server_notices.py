"""Server notices (spec: "Server Notices"), sent by an admin through Synapse's
`send_server_notice`: messages from a system user in a room of their own with each user.

Each local user has exactly one server notices room, recorded in `server_notice_rooms`
and made when their first notice is sent: created by the system user (made on first use,
with no password, so nobody can log in as it), named as configured, with the user invited
(the spec: invite rather than join them) and tagged `m.server_notice` in the user's
account data, which is how clients recognise it. Members other than the system user cannot
post in it (`events_default` 100). A user may not reject the invite
(`MembershipHandler.leave`: 403 `M_CANNOT_LEAVE_SERVER_NOTICE_ROOM`); one who left after
joining is invited again by the next notice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from homeserver.account_data import AccountDataHandler
from homeserver.admin.audit import AdminAudit
from homeserver.admin.users import AdminUsersHandler
from homeserver.auth.tokens import Requester
from homeserver.clock import Clock
from homeserver.config import ServerNoticesConfig
from homeserver.errors import Codes, MatrixError
from homeserver.rooms.creation import RoomCreationHandler, RoomSpec
from homeserver.rooms.membership import MembershipHandler
from homeserver.rooms.sending import EventSendHandler
from storage.stores.accounts import AccountStore, RatelimitOverride, UserInUseError
from storage.stores.rooms import RoomStore
from storage.stores.server_notices import ServerNoticeStore

logger = logging.getLogger(__name__)

SERVER_NOTICE_TAG = "m.server_notice"


class ServerNoticesHandler:
    def __init__(
        self,
        server_name: str,
        config: ServerNoticesConfig,
        clock: Clock,
        accounts: AccountStore,
        notice_rooms: ServerNoticeStore,
        rooms: RoomStore,
        users: AdminUsersHandler,
        room_creation: RoomCreationHandler,
        membership: MembershipHandler,
        sender: EventSendHandler,
        account_data: AccountDataHandler,
        audit: AdminAudit,
    ) -> None:
        self._config = config
        self._clock = clock
        self._accounts = accounts
        self._notice_rooms = notice_rooms
        self._rooms = rooms
        self._users = users
        self._room_creation = room_creation
        self._membership = membership
        self._sender = sender
        self._account_data = account_data
        self._audit = audit
        localpart = config.system_mxid_localpart
        self._system_user = f"@{localpart}:{server_name}" if localpart else None

    async def send_notice(
        self,
        admin: Requester,
        user_id: str,
        event_type: str,
        content: Mapping[str, Any],
        txn_id: str,
    ) -> str:
        """Send one notice to `user_id`; its event ID. `txn_id` makes a retry of the same
        request (the PUT form) send it once."""
        system_user = self._system_user
        if system_user is None:
            raise MatrixError(400, Codes.UNKNOWN, "Server notices are not enabled on this server")
        account = await self._users.require_account(user_id)
        if account.deactivated:
            raise MatrixError(400, Codes.INVALID_PARAM, "The user is deactivated")
        if user_id == system_user:
            raise MatrixError(400, Codes.INVALID_PARAM, "Cannot send a notice to the notices user")
        system = await self._system_requester(system_user)
        room_id = await self._room_for(system, user_id)
        event_id = await self._sender.send_message(
            system, room_id, event_type, content, f"{admin.user_id}/{txn_id}"
        )
        await self._audit.record(
            admin.user_id, "send_server_notice", user_id,
            {"room_id": room_id, "event_id": event_id},
        )
        return event_id

    async def _system_requester(self, system_user: str) -> Requester:
        try:
            await self._accounts.create_account(
                system_user, None, self._clock.time_msec(),
                displayname=self._config.system_mxid_display_name,
            )
            logger.info("created the server notices user %s", system_user)
        except UserInUseError:
            pass
        # Notices are the server's own: no rate limit holds them back.
        return Requester(
            user_id=system_user, device_id="", token_id="", is_admin=False,
            ratelimit_override=RatelimitOverride(0, 0),
        )

    async def _room_for(self, system: Requester, user_id: str) -> str:
        """The user's notices room, made or the user invited back as needed."""
        room_id = await self._notice_rooms.get_room(user_id)
        if room_id is not None:
            mine = await self._rooms.get_membership(room_id, system.user_id)
            if mine is not None and mine.membership == "join":
                theirs = await self._rooms.get_membership(room_id, user_id)
                if theirs is None or theirs.membership not in ("join", "invite"):
                    await self._membership.invite(system, room_id, user_id)
                return room_id
        room_id = await self._room_creation.create_room(
            system,
            RoomSpec(
                preset="private_chat",
                name=self._config.room_name,
                invite=[user_id],
                power_level_content_override={"events_default": 100, "invite": 100},
            ),
        )
        await self._notice_rooms.set_room(user_id, room_id)
        await self._account_data.write(
            user_id, room_id, "m.tag", {"tags": {SERVER_NOTICE_TAG: {"order": 0.5}}}
        )
        return room_id
