"""Asking other servers about their users, aliases and room directories (server-server API
"Querying for information", "Public Room Directory"): the client side of the query
endpoints, used by the profile and directory handlers for remote users and aliases.

Errors, for the client-server API: the remote server answering 404 is `404 M_NOT_FOUND`;
any other failure (unreachable, an error status, a malformed answer) is `502 M_UNKNOWN`,
as Synapse answers, so a client can tell "no such thing" from "could not ask". With
federation disabled the lookups fail with 404 M_NOT_FOUND saying so.

Remote profiles are cached in memory for PROFILE_CACHE_S (successes only).

Space hierarchies (`hierarchy/{roomId}`) are asked of each `via` server in turn until one
gives a well-formed answer about the room; a server that fails is logged and skipped, and
when none answers the caller gets None (the space walk leaves the room out). Answers are
cached for HIERARCHY_CACHE_S, as the spec recommends.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote

from federation.errors import FederationError, HttpResponseError
from homeserver.caches import LruCache
from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from homeserver.identifiers import split_room_alias, split_user_id
from storage.stores.profiles import Profile

if TYPE_CHECKING:
    from homeserver.rooms.directory import PublicRoomsQuery

logger = logging.getLogger(__name__)

QUERY_PATH = "/_matrix/federation/v1/query/%s"
PUBLIC_ROOMS_PATH = "/_matrix/federation/v1/publicRooms"
HIERARCHY_PATH = "/_matrix/federation/v1/hierarchy/%s"
PROFILE_CACHE_S = 60.0
# Another server's answer about a space, reused by walks this long after it came.
HIERARCHY_CACHE_S = 60.0
HIERARCHY_CACHE_SIZE = 1_000
PROFILE_CACHE_SIZE = 10_000
# A lookup a user waits for should not take the federation client's full default timeout.
QUERY_TIMEOUT_MS = 30 * 1000


class RemoteQueries:
    """Outbound queries. `client` is the FederationClient (anything with its `get_json` and
    `post_json`); `enabled` is `federation.enabled`."""

    def __init__(self, clock: Clock, client: Any, enabled: bool = True) -> None:
        self._clock = clock
        self._client = client
        self._enabled = enabled
        self._profiles: LruCache[str, Profile] = LruCache(
            "remote_profiles", PROFILE_CACHE_SIZE, ttl_s=PROFILE_CACHE_S, clock=clock
        )
        self._hierarchies: LruCache[tuple[str, bool], dict[str, Any]] = LruCache(
            "remote_space_hierarchies", HIERARCHY_CACHE_SIZE, ttl_s=HIERARCHY_CACHE_S, clock=clock
        )

    def _require_enabled(self, what: str) -> None:
        if not self._enabled:
            raise MatrixError(404, Codes.NOT_FOUND, f"{what}: federation is disabled on this server")

    async def get_profile(self, user_id: str) -> Profile:
        """A remote user's profile, from their server's `query/profile`."""
        _, server = split_user_id(user_id)
        self._require_enabled(f"Cannot look up the profile of {user_id}")
        cached = self._profiles.get(user_id)
        if cached is not None:
            return cached
        try:
            answer = await self._client.get_json(
                server,
                QUERY_PATH % "profile",
                {"user_id": [user_id]},
                timeout_ms=QUERY_TIMEOUT_MS,
            )
        except FederationError as e:
            _fail(e, f"Profile of {user_id}")
        if not isinstance(answer, dict):
            _bad_answer(server, f"Profile of {user_id}")
        # The extended fields (spec v1.16) are any JSON; display name and avatar URL only
        # count when they are strings.
        fields = {k: v for k, v in answer.items() if k not in ("displayname", "avatar_url")}
        profile = Profile(_string(answer, "displayname"), _string(answer, "avatar_url"), fields)
        self._profiles.set(user_id, profile)
        return profile

    async def resolve_room_alias(self, room_alias: str) -> tuple[str, list[str]]:
        """(room ID, servers) for an alias on another server, from its `query/directory`."""
        _, server = split_room_alias(room_alias)
        self._require_enabled(f"Cannot resolve room alias {room_alias}")
        try:
            answer = await self._client.get_json(
                server,
                QUERY_PATH % "directory",
                {"room_alias": [room_alias]},
                timeout_ms=QUERY_TIMEOUT_MS,
            )
        except FederationError as e:
            _fail(e, f"Room alias {room_alias}")
        room_id = answer.get("room_id") if isinstance(answer, dict) else None
        servers = answer.get("servers") if isinstance(answer, dict) else None
        if not isinstance(room_id, str) or not isinstance(servers, list):
            _bad_answer(server, f"Room alias {room_alias}")
        return room_id, [s for s in servers if isinstance(s, str)]

    async def get_public_rooms(self, server: str, query: PublicRoomsQuery) -> dict[str, Any]:
        """A page of another server's published room directory: GET when there is no
        filter, POST with the filter when there is one."""
        self._require_enabled(f"Cannot list the room directory of {server}")
        try:
            if query.search_term is None and query.room_types is None:
                args: dict[str, list[str]] = {}
                if query.limit is not None:
                    args["limit"] = [str(query.limit)]
                if query.since is not None:
                    args["since"] = [query.since]
                if query.third_party_instance_id is not None:
                    args["third_party_instance_id"] = [query.third_party_instance_id]
                answer = await self._client.get_json(
                    server, PUBLIC_ROOMS_PATH, args, timeout_ms=QUERY_TIMEOUT_MS
                )
            else:
                body: dict[str, Any] = {"filter": {}}
                if query.search_term is not None:
                    body["filter"]["generic_search_term"] = query.search_term
                if query.room_types is not None:
                    body["filter"]["room_types"] = list(query.room_types)
                for key in ("limit", "since", "third_party_instance_id"):
                    if getattr(query, key) is not None:
                        body[key] = getattr(query, key)
                answer = await self._client.post_json(
                    server, PUBLIC_ROOMS_PATH, body, timeout_ms=QUERY_TIMEOUT_MS
                )
        except FederationError as e:
            _fail(e, f"Room directory of {server}")
        if not isinstance(answer, dict) or not isinstance(answer.get("chunk"), list):
            _bad_answer(server, f"Room directory of {server}")
        return answer

    async def get_space_hierarchy(
        self, room_id: str, servers: Sequence[str], suggested_only: bool
    ) -> dict[str, Any] | None:
        """Another server's federation hierarchy answer for `room_id` (`room`, `children`,
        `inaccessible_children`), from the first of `servers` that gives one; None if none
        does (or federation is off)."""
        if not self._enabled:
            return None
        key = (room_id, suggested_only)
        cached = self._hierarchies.get(key)
        if cached is not None:
            return cached
        args = {"suggested_only": ["true" if suggested_only else "false"]}
        for server in dict.fromkeys(servers):
            try:
                answer = await self._client.get_json(
                    server,
                    HIERARCHY_PATH % quote(room_id, safe=""),
                    args,
                    timeout_ms=QUERY_TIMEOUT_MS,
                )
            except FederationError as e:
                logger.info("Space hierarchy of %s from %s failed: %s", room_id, server, e)
                continue
            if not _well_formed_hierarchy(answer, room_id):
                logger.info("Space hierarchy of %s: malformed answer from %s", room_id, server)
                continue
            self._hierarchies.set(key, answer)
            return answer
        return None


def _well_formed_hierarchy(answer: Any, room_id: str) -> bool:
    if not isinstance(answer, dict):
        return False
    room = answer.get("room")
    return (
        isinstance(room, dict)
        and room.get("room_id") == room_id
        and isinstance(room.get("children_state", []), list)
        and isinstance(answer.get("children", []), list)
    )


def _string(answer: Mapping[str, Any], key: str) -> str | None:
    value = answer.get(key)
    return value if isinstance(value, str) else None


def _fail(e: FederationError, what: str) -> NoReturn:
    if isinstance(e, HttpResponseError) and e.code == 404:
        raise MatrixError(404, Codes.NOT_FOUND, f"{what} not found") from None
    logger.info("%s: federation query failed: %s", what, e)
    raise MatrixError(502, Codes.UNKNOWN, f"{what}: could not get an answer from its server") from None


def _bad_answer(server: str, what: str) -> NoReturn:
    logger.info("%s: malformed answer from %s", what, server)
    raise MatrixError(502, Codes.UNKNOWN, f"{what}: {server} gave a malformed answer")
