"""Third-party invites (spec: client-server "Third-party invites", server-server "Third-party
invites"): inviting someone by e-mail address through an identity server.

- `invite`: the identity server the client names is asked who the address belongs to. A
  Matrix user: an ordinary invite. Nobody yet: the identity server stores the invite and
  answers with a token and its public keys, and the inviter sends an
  `m.room.third_party_invite` state event keyed by that token.
- `on_bind`: when the address is bound to an account, the identity server calls
  `/_matrix/federation/v1/3pid/onbind` with each invite it stored, signed. For rooms held
  here, the invite becomes an `m.room.member` invite of that account, sent as the original
  inviter, with the signed block as `third_party_invite` (what exchange_third_party_invite
  does for a room held elsewhere); the auth rules check the signature against the keys in
  the `m.room.third_party_invite` event.
"""

from __future__ import annotations

import logging
from typing import Any

from homeserver.auth.restrictions import check_not_suspended
from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError
from homeserver.events.auth import third_party_signed_with
from homeserver.events.types import (
    AVATAR,
    CANONICAL_ALIAS,
    CREATE,
    JOIN_RULES,
    MEMBER,
    NAME,
    THIRD_PARTY_INVITE,
)
from homeserver.identifiers import split_user_id
from homeserver.rooms.creator import EventCreator
from homeserver.rooms.directory import StateContents
from homeserver.rooms.lookup import require_room
from homeserver.rooms.membership import MembershipHandler
from homeserver.rooms.power import RoomPower
from homeserver.threepids.addresses import EMAIL, MSISDN
from homeserver.threepids.identity_client import (
    IdentityServerClient,
    IdentityServerError,
    check_id_access_token,
    check_id_server,
)
from storage.stores.events import EventStore
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]


def _not_enabled() -> MatrixError:
    return MatrixError(403, Codes.FORBIDDEN, "Inviting by third-party identifier is not supported")


class ThirdPartyInvites:
    def __init__(
        self,
        server_name: str,
        client: IdentityServerClient | None,
        membership: MembershipHandler,
        creator: EventCreator,
        events: EventStore,
        state: StateStore,
        state_contents: StateContents,
        rooms: RoomStore,
        power: RoomPower,
    ) -> None:
        self._rooms = rooms
        self._power = power
        self._server_name = server_name
        # None: third-party invites are off.
        self._client = client
        self._membership = membership
        self._creator = creator
        self._events = events
        self._state = state
        self._state_contents = state_contents

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def require_enabled(self) -> None:
        """403 when third-party invites are off (checked before the request's body is)."""
        if self._client is None:
            raise _not_enabled()

    async def invite(
        self,
        requester: Requester,
        room_id: str,
        id_server: str,
        id_access_token: str | None,
        medium: str,
        address: str,
    ) -> None:
        if self._client is None:
            raise _not_enabled()
        check_id_server(id_server)
        if not id_access_token:
            raise MatrixError(
                400, Codes.MISSING_PARAM, "id_access_token is needed to ask the identity server"
            )
        check_id_access_token(id_access_token)
        if medium not in (EMAIL, MSISDN):
            raise MatrixError(400, Codes.INVALID_PARAM, "medium must be 'email' or 'msisdn'")
        if not address:
            raise MatrixError(400, Codes.INVALID_PARAM, "address is empty")
        check_not_suspended(requester)
        await require_room(self._events, room_id)
        await self._membership.check_not_blocked(room_id)
        # Checked before the identity server hears of anything (the auth rules check again):
        # an invite, or an m.room.third_party_invite, needs a member with the invite level.
        if not await self._rooms.is_joined(room_id, requester.user_id) or not (
            await self._power.has_named_level(room_id, requester.user_id, "invite")
        ):
            raise MatrixError(403, Codes.FORBIDDEN, "You cannot invite to this room")
        try:
            mxid = await self._client.lookup(id_server, id_access_token, medium, address)
        except IdentityServerError as e:
            raise _unreachable(id_server, e) from None
        if mxid is not None:
            await self._membership.invite(requester, room_id, mxid)
            return
        if requester.shadow_banned:
            logger.info("%s: dropped third-party invite by shadow-banned %s", room_id,
                        requester.user_id)
            return
        request = await self._store_invite_request(requester.user_id, room_id, medium, address)
        try:
            answer = await self._client.store_invite(id_server, id_access_token, request)
        except IdentityServerError as e:
            raise _unreachable(id_server, e) from None
        token, content = _invite_event(answer)
        await self._creator.send(
            room_id, requester.user_id, THIRD_PARTY_INVITE, content, state_key=token
        )
        logger.info("%s: %s invited a %s address through %s", room_id, requester.user_id,
                    medium, id_server)

    async def _store_invite_request(
        self, sender: str, room_id: str, medium: str, address: str
    ) -> JsonDict:
        """What the identity server is told of the room and the inviter (spec: store-invite),
        for the message it may send to the address."""
        state = await self._state_contents.current_contents(
            room_id, (NAME, CANONICAL_ALIAS, AVATAR, JOIN_RULES, CREATE)
        )
        request: JsonDict = {
            "medium": medium, "address": address, "room_id": room_id, "sender": sender,
        }
        for field, event_type, key in (
            ("room_name", NAME, "name"),
            ("room_alias", CANONICAL_ALIAS, "alias"),
            ("room_avatar_url", AVATAR, "url"),
            ("room_join_rules", JOIN_RULES, "join_rule"),
            ("room_type", CREATE, "type"),
        ):
            value = state.get(event_type, {}).get(key)
            if isinstance(value, str) and value:
                request[field] = value
        member_id = await self._state.get_current_state_event_id(room_id, MEMBER, sender)
        member = await self._events.get_event(member_id) if member_id else None
        if member is not None:
            for field, key in (("sender_display_name", "displayname"),
                               ("sender_avatar_url", "avatar_url")):
                value = member.content.get(key)
                if isinstance(value, str) and value:
                    request[field] = value
        return request

    async def on_bind(self, body: JsonDict) -> None:
        """An identity server says an address is now bound (POST .../3pid/onbind): turn each
        of its stored invites to rooms held here into an invite of the account. One invite
        that cannot be exchanged does not stop the others."""
        invites = body.get("invites", [])
        if not isinstance(invites, list):
            raise MatrixError(400, Codes.BAD_JSON, "'invites' must be a list")
        failure: MatrixError | None = None
        for invite in invites:
            try:
                await self._exchange(invite)
            except MatrixError as e:
                logger.info("third-party invite %r not exchanged: %s", invite, e.message)
                failure = failure or e
        if failure is not None:
            # The identity server hears that (at least) one invite was not honoured.
            raise failure

    async def accept_signed(self, requester: Requester, room_id: str, signed: Any) -> None:
        """A join with `third_party_signed` (the identity server's signature that the joining
        user owns the invited address): the invite is exchanged first, as on onbind, so the
        join that follows is an invited one. Only for rooms held here."""
        self.require_enabled()
        if not isinstance(signed, dict):
            raise MatrixError(400, Codes.BAD_JSON, "third_party_signed must be an object")
        if signed.get("mxid") != requester.user_id:
            raise MatrixError(403, Codes.FORBIDDEN, "third_party_signed is for another user")
        if await self._rooms.is_joined(room_id, requester.user_id):
            return
        await self._exchange({"room_id": room_id, "sender": signed.get("sender"), "signed": signed})

    async def _exchange(self, invite: Any) -> None:
        if not isinstance(invite, dict):
            raise MatrixError(400, Codes.BAD_JSON, "invite is not an object")
        room_id, sender, signed = invite.get("room_id"), invite.get("sender"), invite.get("signed")
        if not isinstance(room_id, str) or not isinstance(sender, str):
            raise MatrixError(400, Codes.BAD_JSON, "invite needs room_id and sender")
        if not isinstance(signed, dict) or not isinstance(signed.get("token"), str):
            raise MatrixError(400, Codes.BAD_JSON, "invite needs a signed block with a token")
        mxid = signed.get("mxid")
        if not isinstance(mxid, str):
            raise MatrixError(400, Codes.BAD_JSON, "signed block needs mxid")
        # Only the inviter's server can send as the inviter.
        if split_user_id(sender)[1] != self._server_name:
            raise MatrixError(400, Codes.INVALID_PARAM, f"{sender} is not a local user")
        token = signed["token"]
        event_id = await self._state.get_current_state_event_id(room_id, THIRD_PARTY_INVITE, token)
        pending = await self._events.get_event(event_id) if event_id else None
        if pending is None:
            raise MatrixError(404, Codes.NOT_FOUND, "no such third-party invite in the room")
        await self._check_key_still_valid(pending.content, signed)
        display_name = pending.content.get("display_name")
        await self._membership.invite_by_third_party(
            sender, room_id, mxid,
            {"display_name": display_name if isinstance(display_name, str) else "",
             "signed": signed},
        )
        logger.info("%s: third-party invite by %s exchanged for %s", room_id, sender, mxid)

    async def _check_key_still_valid(self, invite: Any, signed: JsonDict) -> None:
        """The key that signed `signed` must be one the m.room.third_party_invite names, and
        still valid at its key_validity_url: a revoked key, or an identity server that cannot
        say, honours no invite. (The auth rules check the signature, not revocation.)"""
        assert self._client is not None
        keys = [
            (k.get("public_key"), k.get("key_validity_url"))
            for k in (invite.get("public_keys") or [])
            if isinstance(k, dict)
        ]
        keys.append((invite.get("public_key"), invite.get("key_validity_url")))
        for public_key, url in keys:
            if not isinstance(public_key, str) or not isinstance(url, str):
                continue
            if not third_party_signed_with(signed, public_key):
                continue
            try:
                valid = await self._client.key_is_valid(url, public_key)
            except IdentityServerError as e:
                raise MatrixError(
                    403, Codes.FORBIDDEN, f"Could not check the identity server's key: {e}"
                ) from None
            if not valid:
                raise MatrixError(403, Codes.FORBIDDEN, "The identity server's key was revoked")
            return
        raise MatrixError(403, Codes.FORBIDDEN, "The invite is not signed by the room's keys")


def _unreachable(id_server: str, error: IdentityServerError) -> MatrixError:
    return MatrixError(502, Codes.UNKNOWN, f"Could not ask identity server {id_server}: {error}")


def _invite_event(answer: JsonDict) -> tuple[str, JsonDict]:
    """The state key (the token) and content of the m.room.third_party_invite event from the
    identity server's store-invite answer."""
    token = answer.get("token")
    display_name = answer.get("display_name")
    public_keys = [
        {"public_key": k["public_key"], "key_validity_url": k["key_validity_url"]}
        for k in answer.get("public_keys") or []
        if isinstance(k, dict)
        and isinstance(k.get("public_key"), str)
        and isinstance(k.get("key_validity_url"), str)
    ]
    if not isinstance(token, str) or not token or not public_keys:
        raise MatrixError(502, Codes.UNKNOWN, "The identity server's answer has no token or keys")
    content: JsonDict = {
        "display_name": display_name if isinstance(display_name, str) else "",
        # The first key, as the spec's older single-key fields.
        "public_key": public_keys[0]["public_key"],
        "key_validity_url": public_keys[0]["key_validity_url"],
        "public_keys": public_keys,
    }
    return token, content
