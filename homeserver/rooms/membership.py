"""Room membership: join, knock, invite, leave, kick, ban, unban and forget.

Every change is an m.room.member event made by `EventCreator.send`, so the auth rules of the
room version decide what is allowed (403 M_FORBIDDEN). This module adds what the rules do
not know: resolving aliases (through `DirectoryHandler`), profile data in member events,
unknown rooms and users (404), repeated requests that change nothing (answered with the
existing event), and the parts that need federation, which answer with a clear
4xx/502 until it exists.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from homeserver.auth.restrictions import check_not_suspended
from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError
from homeserver.events.room_versions import RoomVersion
from homeserver.events.types import GUEST_ACCESS, JOIN_RULES, MEMBER
from homeserver.identifiers import split_user_id
from homeserver.rooms.creator import EventCreator
from homeserver.rooms.directory import DirectoryHandler
from homeserver.rooms.lookup import require_room
from homeserver.rooms.power import RoomPower
from storage.stores.accounts import AccountStore
from storage.stores.events import EventStore, StoredEvent
from storage.stores.profiles import ProfileStore
from storage.stores.room_admin import RoomAdminStore
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore


class RemoteMembership(Protocol):
    """What membership needs from federation (`federation.membership.FederationMembership`):
    joins, leaves and knocks of rooms held by other servers."""

    async def is_resident(self, room_id: str) -> bool: ...

    async def remote_join(
        self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]
    ) -> StoredEvent: ...

    async def remote_leave(
        self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]
    ) -> StoredEvent: ...

    async def remote_knock(
        self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]
    ) -> StoredEvent: ...

logger = logging.getLogger(__name__)


class RemoteAuthorisationNeeded(MatrixError):
    """A restricted join no local member can authorise, but members on `servers` might."""

    def __init__(self, servers: list[str]) -> None:
        super().__init__(
            403, Codes.FORBIDDEN, "No member of this server can authorise joining this room"
        )
        self.servers = servers


def server_of_id(identifier: str) -> str:
    return identifier.split(":", 1)[1] if ":" in identifier else ""

MEMBERSHIPS = ("join", "invite", "knock", "leave", "ban")
# Memberships whose events carry the target's display name and avatar.
_WITH_PROFILE = ("join", "invite", "knock")


# A room we do not know can only be joined over federation.
_NOT_ON_THIS_SERVER = "No known servers: the room is not on this server"


class MembershipHandler:
    def __init__(
        self,
        server_name: str,
        creator: EventCreator,
        events: EventStore,
        state: StateStore,
        rooms: RoomStore,
        directory: DirectoryHandler,
        profiles: ProfileStore,
        accounts: AccountStore,
        power: RoomPower,
        federation: RemoteMembership | None = None,
        is_server_notice_room: Callable[[str, str], Awaitable[bool]] | None = None,
        blocked_rooms: RoomAdminStore | None = None,
        blocks_invites: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        # (user_id, room_id) -> whether it is the user's server notices room, whose invite
        # may not be rejected (spec: "Server Notices").
        self._is_server_notice_room = is_server_notice_room
        self._server_name = server_name
        self._creator = creator
        self._events = events
        self._state = state
        self._rooms = rooms
        self._directory = directory
        self._profiles = profiles
        self._accounts = accounts
        self._power = power
        # Called with the user ID after a forget, which changes no stream: caches of the
        # user's rooms (sync) must drop their copy.
        self.forget_listeners: list[Callable[[str], None]] = []
        # Called with the room ID after a local user's join brought this server into a room
        # held elsewhere (a room upgraded on another server carries user state over then).
        self.remote_join_listeners: list[Callable[[str], Awaitable[None]]] = []
        # Joins, knocks and invite rejections of rooms held by other servers (None when
        # federation is disabled).
        self.federation = federation
        # Rooms an admin blocked (`homeserver/admin/rooms.py`): no local user may join,
        # knock on or be invited to them.
        self._blocked_rooms = blocked_rooms
        # user_id -> whether the (local) user blocks every invite (spec: "Invite
        # permission", `homeserver.account_data.InvitePermissions`).
        self._blocks_invites = blocks_invites

    async def check_not_blocked(self, room_id: str) -> None:
        """403 M_FORBIDDEN if an admin blocked the room."""
        if self._blocked_rooms is not None and await self._blocked_rooms.get_block(room_id):
            raise MatrixError(403, Codes.FORBIDDEN, "This room has been blocked on this server")

    # ----- the actions ---------------------------------------------------------------------

    async def join(
        self,
        requester: Requester,
        room_id_or_alias: str,
        reason: str | None = None,
        via: Sequence[str] = (),
    ) -> str:
        check_not_suspended(requester)
        room_id, servers = await self._room_and_servers(room_id_or_alias, via)
        await self.check_not_blocked(room_id)
        if requester.is_guest:
            await self._check_guest_can_join(room_id)
        remote = await self._remote_servers_if_not_resident(requester.user_id, room_id, servers)
        if remote:
            return await self._join_through(requester.user_id, room_id, remote, reason)
        room_version = await require_room(self._events, room_id, _NOT_ON_THIS_SERVER)
        try:
            extra = await self.restricted_join_authoriser(
                requester.user_id, room_id, room_version
            )
        except RemoteAuthorisationNeeded as e:
            # A restricted room only another server can let this user into: join through it
            # (it names the authorising member and countersigns).
            return await self._join_through(requester.user_id, room_id, e.servers, reason)
        await self._send_member(
            requester.user_id, room_id, requester.user_id, "join", reason, extra=extra
        )
        return room_id

    async def knock(
        self,
        requester: Requester,
        room_id_or_alias: str,
        reason: str | None = None,
        via: Sequence[str] = (),
    ) -> str:
        check_not_suspended(requester)
        room_id, servers = await self._room_and_servers(room_id_or_alias, via)
        await self.check_not_blocked(room_id)
        remote = await self._remote_servers_if_not_resident(requester.user_id, room_id, servers)
        if remote:
            assert self.federation is not None
            content = await self._member_content(requester.user_id, "knock", reason)
            await self.federation.remote_knock(requester.user_id, room_id, remote, content)
            return room_id
        await require_room(self._events, room_id, _NOT_ON_THIS_SERVER)
        await self._send_member(requester.user_id, room_id, requester.user_id, "knock", reason)
        return room_id

    async def invite(
        self,
        requester: Requester,
        room_id: str,
        target: str,
        reason: str | None = None,
        is_direct: bool = False,
    ) -> StoredEvent | None:
        """The invite event, or None when the inviter is shadow-banned: the invite is
        answered as if sent, and dropped."""
        check_not_suspended(requester)
        await require_room(self._events, room_id)
        await self.check_not_blocked(room_id)
        await self.check_invitee(target)
        if requester.shadow_banned:
            logger.info("%s: dropped invite of %s by shadow-banned %s", room_id, target,
                        requester.user_id)
            return None
        extra = {"is_direct": True} if is_direct else None
        return await self._send_member(
            requester.user_id, room_id, target, "invite", reason, extra=extra
        )

    async def invite_by_third_party(
        self, sender: str, room_id: str, target: str, third_party_invite: Mapping[str, Any]
    ) -> StoredEvent:
        """The invite of `target`, sent as `sender` (who invited the address), that turns a
        third-party invite into a Matrix one once an identity server says `target` owns the
        address. The auth rules check the identity server's signature in
        `third_party_invite.signed`, not the sender's membership: the inviter may have left."""
        await require_room(self._events, room_id)
        await self.check_not_blocked(room_id)
        await self.check_invitee(target)
        return await self._send_member(
            sender, room_id, target, "invite", None,
            extra={"third_party_invite": dict(third_party_invite)},
        )

    async def leave(self, requester: Requester, room_id: str, reason: str | None = None) -> None:
        await require_room(self._events, room_id)
        current = await self._rooms.get_membership(room_id, requester.user_id)
        if current is not None and current.membership == "leave":
            # Already gone (left, or kicked): nothing to do, and the auth rules would refuse
            # a second leave.
            return
        if (
            current is not None
            and current.membership == "invite"
            and self._is_server_notice_room is not None
            and await self._is_server_notice_room(requester.user_id, room_id)
        ):
            raise MatrixError(
                403,
                Codes.CANNOT_LEAVE_SERVER_NOTICE_ROOM,
                "You cannot reject this invite: it is your server notices room",
            )
        if current is not None and self.federation is not None and not (
            await self.federation.is_resident(room_id)
        ):
            # Rejecting an invite (or withdrawing a knock) to a room held elsewhere: the
            # leave goes through the server that invited us, or the room's own. When both
            # are this server (a local room everyone has left), the room is here: the
            # leave is sent here like any other.
            event = await self._events.get_event(current.event_id)
            servers = [server_of_id(event.sender)] if event is not None else []
            servers.append(server_of_id(room_id))
            servers = [s for s in dict.fromkeys(servers) if s and s != self._server_name]
            if servers:
                content = await self._member_content(requester.user_id, "leave", reason)
                await self.federation.remote_leave(requester.user_id, room_id, servers, content)
                return
        await self._send_member(requester.user_id, room_id, requester.user_id, "leave", reason)

    async def kick(
        self, requester: Requester, room_id: str, target: str, reason: str | None = None
    ) -> None:
        check_not_suspended(requester)
        split_user_id(target)
        await require_room(self._events, room_id)
        current = await self._rooms.get_membership(room_id, target)
        if current is None or current.membership not in ("join", "invite", "knock"):
            raise MatrixError(403, Codes.FORBIDDEN, "The target user is not in the room")
        await self._send_member(requester.user_id, room_id, target, "leave", reason)

    async def ban(
        self, requester: Requester, room_id: str, target: str, reason: str | None = None
    ) -> None:
        check_not_suspended(requester)
        split_user_id(target)
        await require_room(self._events, room_id)
        await self._send_member(requester.user_id, room_id, target, "ban", reason)

    async def unban(
        self, requester: Requester, room_id: str, target: str, reason: str | None = None
    ) -> None:
        check_not_suspended(requester)
        split_user_id(target)
        await require_room(self._events, room_id)
        current = await self._rooms.get_membership(room_id, target)
        if current is None or current.membership != "ban":
            raise MatrixError(403, Codes.FORBIDDEN, "The user is not banned from the room")
        await self._send_member(requester.user_id, room_id, target, "leave", reason)

    async def set_member_state(
        self, requester: Requester, room_id: str, target: str, content: Mapping[str, Any]
    ) -> StoredEvent:
        """PUT /state/m.room.member/{target}: the client's content, as it wrote it."""
        split_user_id(target)
        membership = content.get("membership")
        if membership not in MEMBERSHIPS:
            raise MatrixError(
                400, Codes.BAD_JSON, f"'membership' must be one of {', '.join(MEMBERSHIPS)}"
            )
        if membership != "leave" or target != requester.user_id:
            # Leaving (rejecting an invite, withdrawing a knock) is all a suspended user may do.
            check_not_suspended(requester)
        await require_room(self._events, room_id)
        if membership in ("invite", "join", "knock"):
            await self.check_not_blocked(room_id)
        if membership == "invite":
            await self.check_invitee(target)
        extra = {k: v for k, v in content.items() if k != "membership"}
        return await self._send_member(
            requester.user_id, room_id, target, membership, None, extra=extra
        )

    async def forget(self, requester: Requester, room_id: str) -> None:
        await require_room(self._events, room_id)
        current = await self._rooms.get_membership(room_id, requester.user_id)
        if current is None:
            # Never in the room: there is nothing to forget.
            return
        if current.membership not in ("leave", "ban"):
            raise MatrixError(
                400, Codes.UNKNOWN, f"User {requester.user_id} is in room {room_id}"
            )
        if not await self._rooms.forget(room_id, requester.user_id):
            # Re-joined (or re-invited) between the two reads.
            raise MatrixError(400, Codes.UNKNOWN, f"User {requester.user_id} is in room {room_id}")
        for listener in self.forget_listeners:
            listener(requester.user_id)

    async def joined_rooms(self, user_id: str) -> list[str]:
        return [m.room_id for m in await self._rooms.get_rooms_for_user(user_id, ("join",))]

    # ----- helpers -------------------------------------------------------------------------

    async def _check_guest_can_join(self, room_id: str) -> None:
        """403 M_FORBIDDEN unless the room's current `m.room.guest_access` is `can_join`
        (spec: "Guest Access"). Guests are a local notion the auth rules know nothing of,
        so this is checked here; a room this server is not in has no state to allow it."""
        event_id = await self._state.get_current_state_event_id(room_id, GUEST_ACCESS, "")
        event = await self._events.get_event(event_id) if event_id is not None else None
        if event is None or event.content.get("guest_access") != "can_join":
            raise MatrixError(403, Codes.FORBIDDEN, "Guests may not join this room")

    async def remove_guests(self, room_id: str) -> None:
        """Make this server's joined guests leave the room: the spec asks for it when the
        room's m.room.guest_access stops being can_join. Each guest leaves by itself, as in
        Synapse, so no power level is needed; one failure does not keep the others in."""
        members = list(await self._state.get_current_members(room_id))
        for user_id in members:
            if not self.is_mine(user_id):
                continue
            account = await self._accounts.get_account(user_id)
            if account is None or not account.is_guest:
                continue
            try:
                await self._send_member(user_id, room_id, user_id, "leave", "Guest access revoked")
            except MatrixError:
                logger.exception("%s: could not remove guest %s", room_id, user_id)

    async def _room_and_servers(
        self, room_id_or_alias: str, via: Sequence[str]
    ) -> tuple[str, list[str]]:
        """The room ID and the servers to join it through: `via` first, then those the
        alias lookup named, then the room ID's own server."""
        servers = list(via)
        if room_id_or_alias.startswith("#"):
            room_id, alias_servers = await self._directory.resolve_room_alias(room_id_or_alias)
            servers.extend(alias_servers)
        else:
            room_id = await self._directory.resolve_room(room_id_or_alias)
        servers.append(server_of_id(room_id))
        return room_id, list(dict.fromkeys(s for s in servers if s))

    async def _remote_servers_if_not_resident(
        self, user_id: str, room_id: str, servers: Sequence[str]
    ) -> list[str]:
        """Servers to ask when the room is held elsewhere: none when this server takes part
        in the room (or federation is off), so the join is local."""
        if self.federation is None or await self.federation.is_resident(room_id):
            return []
        candidates = [s for s in servers if s != self._server_name]
        own = await self._rooms.get_membership(room_id, user_id)
        if own is not None and own.membership == "invite":
            # The inviting server is in the room.
            invite = await self._events.get_event(own.event_id)
            if invite is not None:
                candidates.insert(0, server_of_id(invite.sender))
        return list(dict.fromkeys(c for c in candidates if c != self._server_name))

    async def _member_content(
        self,
        target: str,
        membership: str,
        reason: str | None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A member event's content: `extra`, the membership and reason, and for a local
        target joining, invited or knocking, their profile at the time (spec:
        m.room.member) unless the client set a per-room one."""
        content: dict[str, Any] = dict(extra or {})
        content["membership"] = membership
        if reason is not None:
            content["reason"] = reason
        if membership in _WITH_PROFILE and self.is_mine(target):
            profile = await self._profiles.get_profile(target)
            if profile is not None:
                if "displayname" not in content and profile.displayname is not None:
                    content["displayname"] = profile.displayname
                if "avatar_url" not in content and profile.avatar_url is not None:
                    content["avatar_url"] = profile.avatar_url
        return content

    async def _join_through(
        self, user_id: str, room_id: str, servers: Sequence[str], reason: str | None
    ) -> str:
        assert self.federation is not None
        content = await self._member_content(user_id, "join", reason)
        await self.federation.remote_join(user_id, room_id, servers, content)
        for listener in self.remote_join_listeners:
            try:
                await listener(room_id)
            except Exception:
                # The join itself succeeded: what follows it must not turn it into an error.
                logger.exception("after joining %s", room_id)
        return room_id

    def is_mine(self, user_id: str) -> bool:
        return user_id.split(":", 1)[-1] == self._server_name

    async def check_invitee(self, target: str) -> None:
        """An invite needs a well-formed user ID; a local one must exist (a remote one is
        checked by its server, which must countersign the invite)."""
        _, server = split_user_id(target)
        if server != self._server_name:
            if self.federation is None:
                raise MatrixError(
                    403, Codes.FORBIDDEN, f"Cannot invite {target}: federation is disabled"
                )
            return
        if await self._accounts.get_account(target) is None:
            raise MatrixError(404, Codes.NOT_FOUND, f"Unknown user {target}")
        await self.check_invites_allowed(target)

    async def check_invites_allowed(self, target: str) -> None:
        """403 M_INVITE_BLOCKED if the local user `target` blocks invites, whoever sends
        them (spec: "Invite permission"), over the client API or federation alike."""
        if self._blocks_invites is not None and await self._blocks_invites(target):
            raise MatrixError(403, Codes.INVITE_BLOCKED, f"{target} does not accept invites")

    async def restricted_join_authoriser(
        self, user_id: str, room_id: str, room_version: RoomVersion
    ) -> dict[str, Any] | None:
        """For a restricted room the user may join through its `allow` list, the content
        naming a local member who can invite (`join_authorised_via_users_server`), as the
        auth rules require. None when the join needs no authoriser (other join rules, or
        the user is already invited or joined): the auth rules then decide as usual.
        """
        join_rules_id = await self._state.get_current_state_event_id(room_id, JOIN_RULES, "")
        join_rules = await self._events.get_event(join_rules_id) if join_rules_id else None
        rule = join_rules.content.get("join_rule") if join_rules is not None else None
        restricted = (room_version.restricted_join_rule and rule == "restricted") or (
            room_version.knock_restricted_join_rule and rule == "knock_restricted"
        )
        if not restricted or join_rules is None:
            return None
        own = await self._rooms.get_membership(room_id, user_id)
        if own is not None and own.membership in ("invite", "join"):
            return None
        allow = join_rules.content.get("allow")
        allowed_rooms = [
            condition["room_id"]
            for condition in (allow if isinstance(allow, list) else [])
            if isinstance(condition, dict)
            and condition.get("type") == "m.room_membership"
            and isinstance(condition.get("room_id"), str)
        ]
        members = await self._state.get_current_members(room_id, "join")
        for other in allowed_rooms:
            if await self._rooms.is_joined(other, user_id):
                break
        else:
            # We may not be in the allowed rooms: a server that is can tell.
            for other in allowed_rooms:
                if not await self._is_resident(other):
                    await self._ask_remote_authoriser(room_id, members)
            # knock_restricted rooms still take knocks; joining needs an invite then.
            raise MatrixError(
                403, Codes.FORBIDDEN, "You are not a member of any room this room allows"
            )
        for member in sorted(members):
            if self.is_mine(member) and await self._power.has_named_level(
                room_id, member, "invite"
            ):
                return {"join_authorised_via_users_server": member}
        await self._ask_remote_authoriser(room_id, members)
        raise MatrixError(
            403, Codes.FORBIDDEN, "No member of this server can authorise joining this room"
        )

    async def _is_resident(self, room_id: str) -> bool:
        members = await self._state.get_current_members(room_id, "join")
        return any(self.is_mine(m) for m in members)

    async def _ask_remote_authoriser(self, room_id: str, members: Mapping[str, str]) -> None:
        """Raise RemoteAuthorisationNeeded naming the servers whose members could authorise
        the join (they may invite), when federation can reach them."""
        if self.federation is None:
            return
        servers: list[str] = []
        for member in sorted(members):
            server = server_of_id(member)
            if server != self._server_name and server not in servers and (
                await self._power.has_named_level(room_id, member, "invite")
            ):
                servers.append(server)
        if servers:
            raise RemoteAuthorisationNeeded(servers)

    async def _send_member(
        self,
        sender: str,
        room_id: str,
        target: str,
        membership: str,
        reason: str | None,
        extra: Mapping[str, Any] | None = None,
    ) -> StoredEvent:
        content = await self._member_content(target, membership, reason, extra)
        existing = await self._unchanged(room_id, sender, target, content)
        if existing is not None:
            return existing
        stored = await self._creator.send(room_id, sender, MEMBER, content, state_key=target)
        logger.info("%s: %s set %s's membership to %s", room_id, sender, target, membership)
        return stored

    async def _unchanged(
        self, room_id: str, sender: str, target: str, content: Mapping[str, Any]
    ) -> StoredEvent | None:
        """The current member event, if the new one would repeat it exactly."""
        event_id = await self._state.get_current_state_event_id(room_id, MEMBER, target)
        if event_id is None:
            return None
        current = await self._events.get_stored_event(event_id)
        if current is None or current.event.sender != sender:
            return None
        return current if dict(current.event.content) == dict(content) else None
