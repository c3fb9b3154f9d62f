"""User profiles: local users', and other servers' users' through a federation profile query
(`federation/queries.py`: cached briefly; their server answering 404 is 404 M_NOT_FOUND,
failing to answer is 502 M_UNKNOWN).

Display name and avatar URL go into the user's member events when they change; every other
field (`m.tz`, custom keys, spec v1.16) is only stored and served, as Synapse's."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from homeserver.auth.restrictions import check_not_suspended
from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError
from homeserver.events.types import MEMBER
from homeserver.identifiers import split_user_id
from homeserver.rooms.creator import EventCreator
from storage.stores.events import EventStore
from storage.stores.profiles import Profile, ProfileStore
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore

if TYPE_CHECKING:
    from federation.queries import RemoteQueries

logger = logging.getLogger(__name__)
_MISSING = object()

MAX_DISPLAYNAME_LENGTH = 256
MAX_AVATAR_URL_LENGTH = 1000
# The spec's limits for PUT /profile/{userId}/{keyName}: the whole profile under 64 KiB, a
# key at most 255 bytes (longer: M_KEY_TOO_LARGE) following the Common Namespaced Identifier
# Grammar (or one of the keys the spec defines).
MAX_PROFILE_BYTES = 64 * 1024
MAX_PROFILE_KEY_BYTES = 255
_PROFILE_KEY = re.compile(r"avatar_url|displayname|m\.tz|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
DISPLAYNAME, AVATAR_URL, TIME_ZONE = "displayname", "avatar_url", "m.tz"
# Member event keys that belonged to the original join and must not be repeated: a reason
# was for that change, and a restricted-join authorisation only applies to joining.
_NOT_CARRIED_OVER = ("reason", "join_authorised_via_users_server")


def check_displayname(value: object) -> str | None:
    """`value`, if a display name a profile may hold (or None); 400 otherwise."""
    if value is not None and not isinstance(value, str):
        raise MatrixError(400, Codes.BAD_JSON, "'displayname' must be a string")
    if value is not None and len(value) > MAX_DISPLAYNAME_LENGTH:
        raise MatrixError(
            400, Codes.TOO_LARGE, f"Display name may not exceed {MAX_DISPLAYNAME_LENGTH} characters"
        )
    return value


def check_avatar_url(value: object) -> str | None:
    """`value`, if an avatar URL a profile may hold (or None); 400 otherwise."""
    if value is not None and not isinstance(value, str):
        raise MatrixError(400, Codes.BAD_JSON, "'avatar_url' must be a string")
    if value is not None and len(value) > MAX_AVATAR_URL_LENGTH:
        raise MatrixError(
            400, Codes.TOO_LARGE, f"Avatar URL may not exceed {MAX_AVATAR_URL_LENGTH} characters"
        )
    return value


def check_profile_key(key: str) -> str:
    """`key`, if a profile may have a field by that name; 400 otherwise."""
    if len(key.encode()) > MAX_PROFILE_KEY_BYTES:
        raise MatrixError(
            400, Codes.KEY_TOO_LARGE, f"Profile keys may not exceed {MAX_PROFILE_KEY_BYTES} bytes"
        )
    if not _PROFILE_KEY.fullmatch(key):
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid profile key")
    return key


def profile_json(profile: Profile) -> dict[str, Any]:
    """The profile as GET /profile and the federation query show it: unset fields left out."""
    body: dict[str, Any] = dict(profile.fields)
    if profile.displayname is not None:
        body[DISPLAYNAME] = profile.displayname
    if profile.avatar_url is not None:
        body[AVATAR_URL] = profile.avatar_url
    return body


class ProfileHandler:
    def __init__(
        self,
        server_name: str,
        store: ProfileStore,
        rooms: RoomStore,
        state: StateStore,
        events: EventStore,
        creator: EventCreator,
        remote: RemoteQueries | None = None,
    ) -> None:
        self._server_name = server_name
        # Other servers' answers (`federation.queries.RemoteQueries`); None: local only.
        self.remote = remote
        self._store = store
        self._rooms = rooms
        self._state = state
        self._events = events
        self._creator = creator

    async def get_profile(self, user_id: str) -> Profile:
        """Any user's profile; 404 M_NOT_FOUND if there is none."""
        _, server = split_user_id(user_id)
        if server != self._server_name:
            if self.remote is None:
                raise MatrixError(
                    404, Codes.NOT_FOUND, "Profile lookups on other servers are not available"
                )
            return await self.remote.get_profile(user_id)
        return await self.get_local_profile(user_id)

    async def get_local_profile(self, user_id: str) -> Profile:
        """A profile of one of our users; 404 M_NOT_FOUND for anyone else."""
        _, server = split_user_id(user_id)
        if server != self._server_name:
            raise MatrixError(404, Codes.NOT_FOUND, f"{user_id} is not a user of this server")
        profile = await self._store.get_profile(user_id)
        if profile is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Profile was not found")
        return profile

    async def get_full_profile(self, user_id: str) -> Profile:
        """Any user's profile with all its fields; 404 M_NOT_FOUND if there is none."""
        _, server = split_user_id(user_id)
        if server != self._server_name:
            # A remote profile already carries every field its server gave.
            return await self.get_profile(user_id)
        profile = await self.get_local_profile(user_id)
        fields = await self._store.get_fields(user_id)
        return Profile(profile.displayname, profile.avatar_url, fields)

    async def get_field(self, user_id: str, key: str) -> Any:
        """One field of any user's profile; 404 M_NOT_FOUND if it is not set."""
        check_profile_key(key)
        profile = await self.get_full_profile(user_id)
        value = profile_json(profile).get(key, _MISSING)
        if value is _MISSING:
            # The spec's 404: "There is no profile field with this key for this user".
            raise MatrixError(404, Codes.NOT_FOUND, f"The user has no {key}")
        return value

    async def set_field(self, requester: Requester, user_id: str, key: str, value: Any) -> None:
        """Set any field: display name and avatar URL as before (into member events), others
        stored as given (any JSON, null included, as the spec lets servers keep it)."""
        check_profile_key(key)
        if key == DISPLAYNAME:
            await self.set_displayname(requester, user_id, value)
            return
        if key == AVATAR_URL:
            await self.set_avatar_url(requester, user_id, value)
            return
        self._check_can_edit(requester, user_id)
        if key == TIME_ZONE and not isinstance(value, str):
            raise MatrixError(400, Codes.BAD_JSON, "'m.tz' must be a string")
        await self.get_local_profile(user_id)
        if not await self._store.set_field(user_id, key, value, MAX_PROFILE_BYTES):
            raise MatrixError(
                400, Codes.PROFILE_TOO_LARGE, f"A profile may not exceed {MAX_PROFILE_BYTES} bytes"
            )

    async def delete_field(self, requester: Requester, user_id: str, key: str) -> None:
        """Remove a field (200 even if it was not set, as the spec says)."""
        check_profile_key(key)
        if key == DISPLAYNAME:
            await self.set_displayname(requester, user_id, None)
            return
        if key == AVATAR_URL:
            await self.set_avatar_url(requester, user_id, None)
            return
        self._check_can_edit(requester, user_id)
        await self.get_local_profile(user_id)
        await self._store.delete_field(user_id, key)

    def _check_can_edit(self, requester: Requester, user_id: str) -> None:
        split_user_id(user_id)
        if requester.user_id != user_id and not requester.is_admin:
            raise MatrixError(403, Codes.FORBIDDEN, "You cannot change another user's profile")
        if requester.user_id == user_id:
            check_not_suspended(requester)

    async def set_displayname(self, requester: Requester, user_id: str, value: object) -> None:
        self._check_can_edit(requester, user_id)
        value = check_displayname(value)
        await self.get_local_profile(user_id)
        await self._store.set_displayname(user_id, value or None)
        await self.update_member_events(user_id)

    async def set_avatar_url(self, requester: Requester, user_id: str, value: object) -> None:
        self._check_can_edit(requester, user_id)
        value = check_avatar_url(value)
        await self.get_local_profile(user_id)
        await self._store.set_avatar_url(user_id, value or None)
        await self.update_member_events(user_id)

    async def update_member_events(self, user_id: str) -> int:
        """Send the user's current profile into every room they are joined to, as a new
        m.room.member join event (spec: "Events on Change of Profile Information").

        The rest of the member content is kept. A room that refuses the event (or fails)
        is logged and skipped: it must not stop the others. Returns how many were sent.
        """
        profile = await self.get_local_profile(user_id)
        sent = 0
        for membership in await self._rooms.get_rooms_for_user(user_id, ("join",)):
            room_id = membership.room_id
            try:
                content = await self._member_content(room_id, user_id, profile)
                if content is None:
                    continue
                await self._creator.send(room_id, user_id, MEMBER, content, state_key=user_id)
                sent += 1
            except Exception as e:
                logger.warning("profile of %s not updated in %s: %s", user_id, room_id, e)
        return sent

    async def _member_content(
        self, room_id: str, user_id: str, profile: Profile
    ) -> dict[str, Any] | None:
        """The new join content for `room_id`, or None if the current one already matches."""
        event_id = await self._state.get_current_state_event_id(room_id, MEMBER, user_id)
        current = await self._events.get_event(event_id) if event_id is not None else None
        if current is None or current.content.get("membership") != "join":
            return None
        content = {k: v for k, v in current.content.items() if k not in _NOT_CARRIED_OVER}
        for key, value in (("displayname", profile.displayname), ("avatar_url", profile.avatar_url)):
            if value is None:
                content.pop(key, None)
            else:
                content[key] = value
        return None if content == dict(current.content) else content
