"""Membership across servers: joining, leaving and knocking on rooms another server hosts
(make_*/send_* as the joining server), serving those requests as a resident server, and
invites in both directions (server-server API, "Joining Rooms", "Inviting to a room",
"Leaving Rooms", "Knocking")."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from signedjson.sign import sign_json
from twisted.internet import defer

from federation.client import build_path
from federation.errors import FederationError, HttpResponseError, RequestSendFailed
from federation.event_checks import InvalidPdu, parse_pdu, server_of
from homeserver.errors import Codes, MatrixError
from homeserver.events.auth import CREATE, MEMBER
from homeserver.events.model import Event, StateKey
from homeserver.events.redaction import prune_event_dict
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from storage.persister import EventContext
from storage.stores.events import StoredEvent

if TYPE_CHECKING:
    from federation.event_handler import FederationEventHandler
    from federation.sender import FederationSender
    from homeserver.clock import Clock
    from homeserver.rooms.creator import EventCreator
    from homeserver.rooms.membership import MembershipHandler
    from storage.persister import EventPersister
    from storage.stores.accounts import AccountStore
    from storage.stores.events import EventStore
    from storage.stores.federation_events import FederationEventStore
    from storage.stores.rooms import RoomStore
    from storage.stores.state import StateStore

logger = logging.getLogger(__name__)

# State given to invitees and knockers (spec: "Stripped state").
STRIPPED_STATE_TYPES = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.canonical_alias",
    "m.room.avatar",
    "m.room.name",
    "m.room.encryption",
    "m.room.topic",
)
_MAKE_PATHS = {
    "join": "/_matrix/federation/v1/make_join/%s/%s",
    "leave": "/_matrix/federation/v1/make_leave/%s/%s",
    "knock": "/_matrix/federation/v1/make_knock/%s/%s",
}
_SEND_PATHS = {
    "join": "/_matrix/federation/v2/send_join/%s/%s",
    "leave": "/_matrix/federation/v2/send_leave/%s/%s",
    "knock": "/_matrix/federation/v1/send_knock/%s/%s",
}
# Where a server that does not know the v2 API is asked instead (spec: the v1 send_join and
# send_leave, whose answer is the v2 answer wrapped in `[200, ...]`).
_V1_SEND_PATHS = {
    "join": "/_matrix/federation/v1/send_join/%s/%s",
    "leave": "/_matrix/federation/v1/send_leave/%s/%s",
}


def _unknown_endpoint(error: FederationError) -> bool:
    """Whether a server answered that it does not serve the path (as Synapse tells it)."""
    return isinstance(error, HttpResponseError) and (
        error.code in (404, 405) or (error.code == 400 and error.errcode == Codes.UNRECOGNIZED)
    )


def stripped(event: Event) -> dict[str, Any]:
    return {
        "type": event.type,
        "state_key": event.state_key,
        "sender": event.sender,
        "content": dict(event.content),
    }


class FederationMembership:
    def __init__(
        self,
        server_name: str,
        signing_key: Any,
        clock: Clock,
        client: Any,
        event_handler: FederationEventHandler,
        creator: EventCreator,
        persister: EventPersister,
        events: EventStore,
        fed_events: FederationEventStore,
        state: StateStore,
        rooms: RoomStore,
        accounts: AccountStore,
        local_membership: MembershipHandler,
        sender: FederationSender | None,
        max_join_response_bytes: int,
    ) -> None:
        self._server_name = server_name
        self._signing_key = signing_key
        self._clock = clock
        self._client = client
        self._handler = event_handler
        self._creator = creator
        self._persister = persister
        self._events = events
        self._fed_events = fed_events
        self._state = state
        self._rooms = rooms
        self._accounts = accounts
        self._local = local_membership
        self.sender = sender
        self._max_join_bytes = max_join_response_bytes
        # Rooms being joined through another server (count of joins), and who waits for them.
        self._joins_in_progress: dict[str, int] = {}
        self._join_waiters: dict[str, list[defer.Deferred[None]]] = {}

    # ----- helpers ------------------------------------------------------------------------

    async def is_resident(self, room_id: str) -> bool:
        """Whether this server takes part in the room: it holds the room's current state
        and one of its users is joined."""
        members = await self._state.get_current_members(room_id, "join")
        return any(server_of(user) == self._server_name for user in members)

    async def room_servers(self, room_id: str) -> list[str]:
        """Servers with joined members, this one excluded."""
        members = await self._state.get_current_members(room_id, "join")
        return sorted({server_of(u) for u in members} - {self._server_name, ""})

    def _sign(self, pdu: dict[str, Any], room_version: RoomVersion) -> None:
        """Add this server's signature to someone else's event (invites, restricted joins)."""
        redacted = prune_event_dict(pdu, room_version)
        redacted.pop("unsigned", None)
        signed = sign_json(redacted, self._server_name, self._signing_key)
        pdu.setdefault("signatures", {}).setdefault(self._server_name, {}).update(
            signed["signatures"][self._server_name]
        )

    async def _stripped_state(self, room_id: str, extra: Iterable[Event] = ()) -> list[dict]:
        state = await self._state.get_current_state_ids(room_id)
        ids = [state[(t, "")] for t in STRIPPED_STATE_TYPES if (t, "") in state]
        events = await self._events.get_events(ids)
        return [stripped(e) for e in [*events.values(), *extra]]

    # ----- as the joining server -----------------------------------------------------------

    async def remote_join(
        self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]
    ) -> StoredEvent:
        """Join `user_id` to a room hosted elsewhere, through the first of `servers` that
        will have us; the returned state and auth chain are checked before the room is
        stored."""
        self._joins_in_progress[room_id] = self._joins_in_progress.get(room_id, 0) + 1
        try:
            return await self._remote_join(user_id, room_id, servers, content)
        finally:
            self._joins_in_progress[room_id] -= 1
            if not self._joins_in_progress[room_id]:
                del self._joins_in_progress[room_id]
                for waiter in self._join_waiters.pop(room_id, []):
                    waiter.callback(None)

    async def wait_for_joins(self, room_id: str) -> None:
        """Return once no join of the room through another server is in progress: events
        the room's servers send meanwhile must wait for the room's state to be stored."""
        while room_id in self._joins_in_progress:
            waiter: defer.Deferred[None] = defer.Deferred()
            self._join_waiters.setdefault(room_id, []).append(waiter)
            await waiter

    async def _remote_join(
        self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]
    ) -> StoredEvent:
        last_error: Exception | None = None
        for server in _candidates(servers, self._server_name):
            try:
                template, room_version = await self._make(server, "join", room_id, user_id)
            except (FederationError, MatrixError) as e:
                last_error = e
                continue
            event = self._event_from_template(template, room_version, user_id, "join", content)
            try:
                response = await self._send_membership_to(
                    server, "join", event, max_response_bytes=self._max_join_bytes
                )
            except FederationError as e:
                last_error = e
                continue
            return await self._complete_join(server, room_id, event, room_version, response)
        raise _as_matrix_error(last_error, f"Cannot join {room_id} through {list(servers)}")

    async def _send_membership_to(
        self, server: str, membership: str, event: Event, **kwargs: Any
    ) -> Any:
        """send_join / send_leave through the v2 API, or the v1 API for a server that does
        not serve v2 (as Synapse falls back); the answer unwrapped from v1's `[200, ...]`."""
        try:
            return await self._client.put_json(
                server, build_path(_SEND_PATHS[membership], event.room_id, event.event_id),
                event.pdu, **kwargs,
            )
        except FederationError as e:
            if membership not in _V1_SEND_PATHS or not _unknown_endpoint(e):
                raise
        response = await self._client.put_json(
            server, build_path(_V1_SEND_PATHS[membership], event.room_id, event.event_id),
            event.pdu, **kwargs,
        )
        if isinstance(response, list) and len(response) == 2 and response[0] == 200:
            return response[1]
        raise RequestSendFailed(server, f"bad v1 send_{membership} answer")

    async def _make(
        self, server: str, membership: str, room_id: str, user_id: str
    ) -> tuple[dict[str, Any], RoomVersion]:
        args = {"ver": sorted(KNOWN_ROOM_VERSIONS)} if membership in ("join", "knock") else None
        response = await self._client.get_json(
            server, build_path(_MAKE_PATHS[membership], room_id, user_id), args=args
        )
        if not isinstance(response, dict) or not isinstance(response.get("event"), dict):
            raise MatrixError(502, Codes.UNKNOWN, f"Bad make_{membership} answer from {server}")
        version_id = response.get("room_version", "1")
        room_version = KNOWN_ROOM_VERSIONS.get(version_id) if isinstance(version_id, str) else None
        if room_version is None:
            named: dict[str, Any] = {"room_version": version_id} if isinstance(version_id, str) else {}
            raise MatrixError(
                400, Codes.INCOMPATIBLE_ROOM_VERSION, f"Room version {version_id!r} is unsupported",
                **named,
            )
        template = response["event"]
        if (
            template.get("type") != MEMBER
            or template.get("state_key") != user_id
            or template.get("sender") != user_id
            or template.get("room_id") != room_id
            or not isinstance(template.get("content"), dict)
            or template["content"].get("membership") != membership
        ):
            raise MatrixError(502, Codes.UNKNOWN, f"{server} sent an unusable {membership} template")
        return template, room_version

    def _event_from_template(
        self,
        template: dict[str, Any],
        room_version: RoomVersion,
        user_id: str,
        membership: str,
        content: Mapping[str, Any],
    ) -> Event:
        pdu = {
            k: v
            for k, v in template.items()
            if k not in ("signatures", "hashes", "unsigned", "event_id", "origin_server_ts")
        }
        pdu["content"] = {**template["content"], **content, "membership": membership}
        pdu["origin_server_ts"] = self._clock.time_msec()
        if "origin" in pdu:
            pdu["origin"] = self._server_name
        return self._creator.finish_event(pdu, room_version)

    async def _complete_join(
        self,
        server: str,
        room_id: str,
        join: Event,
        room_version: RoomVersion,
        response: Any,
    ) -> StoredEvent:
        if not isinstance(response, dict):
            raise MatrixError(502, Codes.UNKNOWN, f"Bad send_join answer from {server}")
        if isinstance(response.get("event"), dict):
            # A restricted join comes back signed by the authorising server too.
            returned = response["event"]
            try:
                signed_join = parse_pdu(returned, room_version, expected_room_id=room_id)
            except InvalidPdu as e:
                raise MatrixError(502, Codes.UNKNOWN, f"Bad join event from {server}: {e}") from None
            if signed_join.event_id == join.event_id:
                join = signed_join
        if await self.is_resident(room_id):
            # Already in the room (another server had to authorise this restricted join):
            # the join is one more event of a room we hold, checked like any other.
            join = await self._handler.check_pdu(join.pdu, room_version, room_id)
            async with self._creator.room_writer(room_id):
                processed = await self._handler.process_event(server, join)
            if processed.event.rejected_reason is not None or \
                    processed.internal_metadata.get("soft_failed"):
                raise MatrixError(403, Codes.FORBIDDEN, "The join was not allowed")
            return processed
        state_pdus = response.get("state")
        chain_pdus = response.get("auth_chain")
        if not isinstance(state_pdus, list) or not isinstance(chain_pdus, list):
            raise MatrixError(502, Codes.UNKNOWN, f"send_join answer from {server} lacks state")
        state_events = await self._handler.check_pdus(state_pdus, room_version, room_id)
        chain_events = await self._handler.check_pdus(chain_pdus, room_version, room_id)
        create = next((e for e in state_events if e.type == CREATE and e.state_key == ""), None)
        if create is None:
            raise MatrixError(502, Codes.UNKNOWN, f"{server} sent a room state without m.room.create")
        if create.content.get("room_version", "1") != room_version.identifier:
            raise MatrixError(502, Codes.UNKNOWN, "The room's create event names another version")
        creator = create.sender
        if await self._events.get_room_version(room_id) is None:
            await self._rooms.store_room(
                room_id, room_version.identifier, creator, False, self._clock.time_msec()
            )
        # Every event is checked against its own auth events; rejected ones never count.
        await self._handler.store_outliers([*chain_events, *state_events])
        held = await self._events.get_stored_events(e.event_id for e in state_events)
        state: dict[StateKey, str] = {}
        for event in state_events:
            stored = held.get(event.event_id)
            if stored is not None and stored.event.rejected_reason is None and event.is_state:
                state[event.state_tuple] = event.event_id
        async with self._creator.room_writer(room_id):
            try:
                await self._creator.check_auth(join, state)
            except MatrixError as e:
                raise MatrixError(502, Codes.UNKNOWN, f"Our join is not allowed by the state "
                                  f"{server} sent: {e.message}") from None
            after = {**state, join.state_tuple: join.event_id}
            context = EventContext(
                state_group_before=None,
                state_before=state,
                current_state=after,
                replace_outlier=True,
            )
            stored_join = await self._creator.persist_and_notify(room_id, join, context)
        logger.info("%s joined %s through %s (%d state events)", join.sender, room_id,
                    server, len(state))
        return stored_join

    async def remote_leave(self, user_id: str, room_id: str, servers: Sequence[str],
                           content: Mapping[str, Any]) -> StoredEvent:
        """Leave (or reject an invite to) a room this server is not in."""
        last_error: Exception | None = None
        for server in _candidates(servers, self._server_name):
            try:
                template, room_version = await self._make(server, "leave", room_id, user_id)
                event = self._event_from_template(template, room_version, user_id, "leave",
                                                  content)
                await self._send_membership_to(server, "leave", event)
            except (FederationError, MatrixError) as e:
                last_error = e
                continue
            return await self._store_out_of_room_membership(event, {})
        local = await self._local_out_of_band_leave(user_id, room_id, content)
        if local is not None:
            logger.info("%s: no server took %s's leave (%s); left locally", room_id, user_id,
                        last_error)
            return local
        raise _as_matrix_error(last_error, f"Cannot leave {room_id} through {list(servers)}")

    async def _local_out_of_band_leave(
        self, user_id: str, room_id: str, content: Mapping[str, Any]
    ) -> StoredEvent | None:
        """When no server of the room takes the leave answering an invite or a knock (it
        refuses it, fails or is unreachable), the user still gets out, as with Synapse: a
        leave of our own making, citing the invite or knock as its prev and auth event, kept
        here only (nobody else would accept it). None when there is no such invite or knock.
        """
        current = await self._rooms.get_membership(room_id, user_id)
        if current is None or current.membership not in ("invite", "knock"):
            return None
        prior = await self._events.get_event(current.event_id)
        if prior is None:
            return None
        pdu: dict[str, Any] = {
            "type": MEMBER,
            "room_id": room_id,
            "sender": user_id,
            "state_key": user_id,
            "content": {**content, "membership": "leave"},
            "prev_events": [prior.event_id],
            "auth_events": [prior.event_id],
            "depth": prior.depth + 1,
            "origin_server_ts": self._clock.time_msec(),
        }
        event = self._creator.finish_event(pdu, prior.room_version)
        return await self._store_out_of_room_membership(event, {"out_of_band": True})

    async def remote_knock(self, user_id: str, room_id: str, servers: Sequence[str],
                           content: Mapping[str, Any]) -> StoredEvent:
        last_error: Exception | None = None
        for server in _candidates(servers, self._server_name):
            try:
                template, room_version = await self._make(server, "knock", room_id, user_id)
                event = self._event_from_template(template, room_version, user_id, "knock",
                                                  content)
                response = await self._client.put_json(
                    server, build_path(_SEND_PATHS["knock"], room_id, event.event_id), event.pdu
                )
            except (FederationError, MatrixError) as e:
                last_error = e
                continue
            state = response.get("knock_room_state") if isinstance(response, dict) else None
            if await self._events.get_room_version(room_id) is None:
                await self._rooms.store_room(room_id, room_version.identifier, "", False,
                                             self._clock.time_msec())
            return await self._store_out_of_room_membership(
                event, {"knock_room_state": state if isinstance(state, list) else []}
            )
        raise _as_matrix_error(last_error, f"Cannot knock on {room_id} through {list(servers)}")

    async def _store_out_of_room_membership(
        self, event: Event, metadata: dict[str, Any]
    ) -> StoredEvent:
        """A membership of a local user in a room we hold no state for (an invite received,
        a knock or leave sent): an outlier that still moves the user's membership."""
        stored = await self._persister.persist_out_of_room_membership(event, metadata)
        await self._creator.notify_membership(stored)
        return stored

    async def receive_out_of_room_membership(self, origin: str, event: Event) -> bool:
        """A leave or ban of one of our users in a room we are not in, answering the invite
        or knock we hold (an invite rescinded, a knock refused). We have no room state to
        check it against, so it must cite that invite or knock among its auth events; it is
        then kept like them, so the user's sync shows the room left. False when this does
        not apply (the event then goes through the usual checks)."""
        target = event.state_key
        if (
            event.type != MEMBER
            or target is None
            or server_of(target) != self._server_name
            or event.membership not in ("leave", "ban")
            or await self.is_resident(event.room_id)
        ):
            return False
        current = await self._rooms.get_membership(event.room_id, target)
        if current is None or current.membership not in ("invite", "knock") or \
                current.event_id not in event.auth_event_ids:
            return False
        logger.info("%s: %s's %s answered by %s's %s", event.room_id, target,
                    current.membership, event.sender, event.membership)
        await self._store_out_of_room_membership(event, {})
        return True

    async def invite_remote_user(self, event: Event) -> Event:
        """Ask the invitee's server to countersign our invite (v2 invite API) before it is
        sent to the room; returns the invite carrying both signatures."""
        invitee = event.state_key or ""
        destination = server_of(invitee)
        body = {
            "event": event.pdu,
            "room_version": event.room_version.identifier,
            "invite_room_state": await self._stripped_state(event.room_id),
        }
        try:
            response = await self._client.put_json(
                destination,
                build_path("/_matrix/federation/v2/invite/%s/%s", event.room_id, event.event_id),
                body,
            )
        except FederationError as e:
            raise _as_matrix_error(e, f"Cannot invite {invitee}") from None
        returned = response.get("event") if isinstance(response, dict) else None
        try:
            signed = parse_pdu(returned, event.room_version, expected_room_id=event.room_id)
        except InvalidPdu as e:
            raise MatrixError(502, Codes.UNKNOWN, f"{destination} returned a bad invite: {e}") \
                from None
        if signed.event_id != event.event_id:
            raise MatrixError(502, Codes.UNKNOWN, f"{destination} changed the invite event")
        signatures = signed.signatures.get(destination)
        if not isinstance(signatures, dict) or not signatures:
            raise MatrixError(502, Codes.UNKNOWN, f"{destination} did not sign the invite")
        pdu = dict(event.pdu)
        pdu["signatures"] = {**event.signatures, destination: signatures}
        return Event(pdu, event.room_version, event_id=event.event_id)

    # ----- as the resident server ------------------------------------------------------------

    async def _resident_room(self, room_id: str) -> RoomVersion:
        room_version = await self._events.get_room_version(room_id)
        if room_version is None or not await self.is_resident(room_id):
            raise MatrixError(404, Codes.NOT_FOUND, "This server is not in that room")
        return room_version

    async def make_membership(
        self,
        origin: str,
        room_id: str,
        user_id: str,
        membership: str,
        supported_versions: Sequence[str] | None,
    ) -> dict[str, Any]:
        """A make_join/make_leave/make_knock template for a user of `origin`."""
        if server_of(user_id) != origin:
            raise MatrixError(403, Codes.FORBIDDEN, "The user does not belong to the requesting server")
        room_version = await self._resident_room(room_id)
        if membership in ("join", "knock"):
            versions = supported_versions if supported_versions else ["1"]
            if room_version.identifier not in versions:
                raise MatrixError(
                    400,
                    Codes.INCOMPATIBLE_ROOM_VERSION,
                    f"The room's version {room_version.identifier} is not supported",
                    room_version=room_version.identifier,
                )
        if membership == "knock" and not room_version.knock:
            raise MatrixError(
                400, Codes.INCOMPATIBLE_ROOM_VERSION, "Knocking is not supported in this room",
                room_version=room_version.identifier,
            )
        content: dict[str, Any] = {"membership": membership}
        if membership == "join":
            extra = await self._local.restricted_join_authoriser(user_id, room_id, room_version)
            if extra:
                content.update(extra)
        current = await self._state.get_current_state_ids(room_id)
        pdu = await self._creator.build_pdu(
            room_id, room_version, user_id, MEMBER, content, user_id, current, on_tip=False
        )
        checked = dict(pdu)
        if "join_authorised_via_users_server" in content:
            # We countersign the join at send_join; the auth rules want that signature.
            self._sign(checked, room_version)
        template = Event(checked, room_version, event_id="$template:" + self._server_name)
        try:
            await self._creator.check_auth(template, current)
        except MatrixError as e:
            raise MatrixError(403, Codes.FORBIDDEN, f"You cannot {membership} this room: "
                              f"{e.message}") from None
        return {"room_version": room_version.identifier, "event": pdu}

    async def send_membership(
        self, origin: str, room_id: str, event_id: str, pdu: Any, membership: str
    ) -> tuple[Event, StoredEvent]:
        """Accept a signed join/leave/knock from `origin` into a room we are in."""
        room_version = await self._resident_room(room_id)
        try:
            event = parse_pdu(pdu, room_version, expected_room_id=room_id)
        except InvalidPdu as e:
            raise MatrixError(400, Codes.BAD_JSON, f"Invalid event: {e}") from None
        if event.event_id != event_id:
            raise MatrixError(400, Codes.BAD_JSON, "The event ID does not match the event")
        if (
            event.type != MEMBER
            or event.state_key != event.sender
            or event.membership != membership
        ):
            raise MatrixError(400, Codes.BAD_JSON, f"Not a {membership} event for its sender")
        if server_of(event.sender) != origin:
            raise MatrixError(403, Codes.FORBIDDEN, "The sender does not belong to the origin")
        authoriser = event.content.get("join_authorised_via_users_server")
        if membership == "join" and isinstance(authoriser, str) and \
                server_of(authoriser) == self._server_name and room_version.restricted_join_rule:
            signed_pdu = dict(event.pdu)
            signed_pdu["signatures"] = {k: dict(v) for k, v in event.signatures.items()}
            self._sign(signed_pdu, room_version)
            event = Event(signed_pdu, room_version, event_id=event.event_id)
        event = await self._checked_inbound(event, room_version, room_id)
        async with self._creator.room_writer(room_id):
            held = await self._fed_events.get_held_event_ids([event.event_id], False)
            if held:
                stored = await self._events.get_stored_event(event.event_id)
                assert stored is not None
            else:
                stored = await self._handler.process_event(origin, event)
        if stored.event.rejected_reason is not None or stored.internal_metadata.get("soft_failed"):
            raise MatrixError(403, Codes.FORBIDDEN, f"The {membership} is not allowed")
        if self.sender is not None and not held:
            destinations = set(await self.room_servers(room_id)) - {origin}
            await self.sender.send_pdu(
                event.event_id, room_id, stored.stream_ordering, destinations
            )
        return event, stored

    async def _checked_inbound(self, event: Event, room_version: RoomVersion, room_id: str) -> Event:
        """A membership event another server hands us (send_join/leave/knock, invite) with
        its signatures and hashes checked: 403 M_FORBIDDEN when they are wrong."""
        try:
            return await self._handler.check_pdu(event.pdu, room_version, room_id)
        except (InvalidPdu, FederationError) as e:
            raise MatrixError(403, Codes.FORBIDDEN, f"Bad signature or hash: {e}") from None

    async def join_response(self, event: Event) -> dict[str, Any]:
        """The state before a join and its auth chain (send_join's answer)."""
        group = (await self._events.get_state_groups_for_events([event.event_id])).get(
            event.event_id, (None, None)
        )[0]
        state_ids = list((await self._state.get_state_group(group)).values()) if group else []
        chain = await self._fed_events.get_auth_chain_ids([*state_ids, event.event_id])
        events = await self._events.get_events([*state_ids, *chain])
        return {
            "origin": self._server_name,
            "state": [events[e].pdu for e in state_ids if e in events],
            "auth_chain": [events[e].pdu for e in chain if e in events],
            "event": event.pdu,
            "members_omitted": False,
        }

    async def knock_response(self, event: Event) -> dict[str, Any]:
        return {"knock_room_state": await self._stripped_state(event.room_id)}

    async def receive_invite(
        self, origin: str, room_id: str, event_id: str, pdu: Any, version_id: Any,
        invite_room_state: Any,
    ) -> dict[str, Any]:
        """Countersign an invite of one of our users to a room on another server and keep
        it (with the room's stripped state) so the user sees it in /sync."""
        room_version = KNOWN_ROOM_VERSIONS.get(version_id) if isinstance(version_id, str) else None
        if room_version is None:
            raise MatrixError(400, Codes.INCOMPATIBLE_ROOM_VERSION,
                              f"Room version {version_id!r} is not supported",
                              room_version=version_id if isinstance(version_id, str) else None)
        try:
            event = parse_pdu(pdu, room_version, expected_room_id=room_id)
        except InvalidPdu as e:
            raise MatrixError(400, Codes.BAD_JSON, f"Invalid event: {e}") from None
        if event.event_id != event_id:
            raise MatrixError(400, Codes.BAD_JSON, "The event ID does not match the event")
        if event.type != MEMBER or event.membership != "invite" or event.state_key is None:
            raise MatrixError(400, Codes.BAD_JSON, "Not an invite event")
        if server_of(event.sender) != origin:
            raise MatrixError(403, Codes.FORBIDDEN, "The sender does not belong to the origin")
        invitee = event.state_key
        if server_of(invitee) != self._server_name:
            raise MatrixError(400, Codes.INVALID_PARAM, "The invitee is not a user of this server")
        if await self._accounts.get_account(invitee) is None:
            raise MatrixError(404, Codes.NOT_FOUND, f"Unknown user {invitee}")
        # As for a local invite: nobody here is drawn into a room an admin blocked, nor
        # invited when they block invites.
        await self._local.check_not_blocked(room_id)
        await self._local.check_invites_allowed(invitee)
        event = await self._checked_inbound(event, room_version, room_id)
        signed_pdu = dict(event.pdu)
        signed_pdu["signatures"] = {k: dict(v) for k, v in event.signatures.items()}
        self._sign(signed_pdu, room_version)
        signed = Event(signed_pdu, room_version, event_id=event.event_id)
        if await self.is_resident(room_id):
            # We will receive it through the room as well; the auth rules apply then.
            current = await self._state.get_current_state_ids(room_id)
            try:
                await self._creator.check_auth(signed, current)
            except MatrixError:
                raise MatrixError(403, Codes.FORBIDDEN, "The invite is not allowed") from None
        else:
            if await self._events.get_room_version(room_id) is None:
                await self._rooms.store_room(room_id, room_version.identifier, "", False,
                                             self._clock.time_msec())
            state = [s for s in invite_room_state if isinstance(s, dict)] \
                if isinstance(invite_room_state, list) else []
            await self._store_out_of_room_membership(signed, {"invite_room_state": state})
        return {"event": signed_pdu}


def _candidates(servers: Sequence[str], own: str) -> list[str]:
    seen: list[str] = []
    for server in servers:
        if server and server != own and server not in seen:
            seen.append(server)
    return seen


def _as_matrix_error(error: Exception | None, message: str) -> MatrixError:
    if isinstance(error, MatrixError):
        return error
    if isinstance(error, HttpResponseError) and 400 <= error.code < 500 and error.errcode:
        extra: dict[str, Any] = {}
        version = error.body.get("room_version") if isinstance(error.body, dict) else None
        if error.errcode == Codes.INCOMPATIBLE_ROOM_VERSION and isinstance(version, str):
            # The spec's error names the room's version, for the client to show or act on.
            extra["room_version"] = version
        return MatrixError(
            error.code, error.errcode, f"{message}: {error.error or error.errcode}", **extra
        )
    if error is None:
        return MatrixError(404, Codes.NOT_FOUND, f"{message}: no server to ask")
    return MatrixError(502, Codes.UNKNOWN, f"{message}: {error}")

