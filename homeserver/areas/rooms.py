"""Rooms and events: persisting and creating events, profiles, visibility and power,
aliases and directories, membership, sending, room creation, state and history."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from federation.queries import RemoteQueries
from homeserver.account_data import AccountDataHandler, IgnoredUsers, InvitePermissions
from homeserver.areas.core import Core
from homeserver.areas.stores import Stores
from homeserver.areas.streams import Streams
from homeserver.events.model import Event
from homeserver.events.serialize import EventSerializer
from homeserver.presence import PresenceHandler
from homeserver.profile import ProfileHandler
from homeserver.push.actions import PushActionGenerator
from homeserver.push.counts import NotificationCounts, SummaryRotator
from homeserver.push.handler import PushRulesHandler
from homeserver.push.notifications import NotificationsHandler
from homeserver.ratelimit import RateLimiter
from homeserver.rooms.creation import RoomCreationHandler
from homeserver.rooms.creator import EventCreator
from homeserver.rooms.directory import DirectoryHandler, RoomListHandler, StateContents
from homeserver.rooms.membership import MembershipHandler, RemoteMembership
from homeserver.rooms.messages import Backfill, MessagesHandler
from homeserver.rooms.mutual_rooms import MutualRooms
from homeserver.rooms.power import RoomPower
from homeserver.rooms.relations import RelationsHandler
from homeserver.rooms.search import SearchHandler
from homeserver.rooms.sending import EventSendHandler
from homeserver.rooms.spaces import SpaceHierarchyHandler
from homeserver.rooms.state import RoomStateHandler
from homeserver.rooms.upgrade import RoomUpgradeHandler
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.threepids.identity_client import IdentityServerClient
from homeserver.threepids.invites import ThirdPartyInvites
from homeserver.user_directory import UserDirectoryHandler
from storage.persister import EventPersister, IdAllocator
from storage.stream_ids import StreamIdGenerator


@dataclass(frozen=True)
class RoomsFederation:
    """What rooms need from federation, None each when it is disabled. The values may be
    late-bound (see `homeserver.areas.federation.LateRoomFederation`): federation's
    handlers are built from rooms' own."""

    membership: RemoteMembership | None = None
    remote_invite: Callable[[Event], Awaitable[Event]] | None = None
    backfill: Backfill | None = None
    outbound_destinations: Callable[[Event], Awaitable[list[str]]] | None = None


@dataclass(frozen=True)
class Rooms:
    event_stream: StreamIdGenerator
    state_group_ids: IdAllocator
    backfill_ids: IdAllocator
    persister: EventPersister
    push_actions: PushActionGenerator
    notifications: NotificationsHandler
    event_creator: EventCreator
    event_serializer: EventSerializer
    profiles: ProfileHandler
    history_visibility: HistoryVisibility
    room_power: RoomPower
    state_contents: StateContents
    directory: DirectoryHandler
    room_list: RoomListHandler
    spaces: SpaceHierarchyHandler
    user_directory: UserDirectoryHandler
    membership: MembershipHandler
    message_limiter: RateLimiter
    event_sender: EventSendHandler
    room_creation: RoomCreationHandler
    room_upgrades: RoomUpgradeHandler
    room_state: RoomStateHandler
    messages: MessagesHandler
    relations: RelationsHandler
    search: SearchHandler
    # Whom each user ignores (spec: "Ignoring Users"), held in memory.
    ignored_users: IgnoredUsers
    invite_permissions: InvitePermissions
    mutual_rooms: MutualRooms
    # Invites by e-mail address through identity servers.
    third_party_invites: ThirdPartyInvites


def build_rooms(
    core: Core,
    stores: Stores,
    streams: Streams,
    presence: PresenceHandler,
    remote: RemoteQueries,
    federation: RoomsFederation,
    account_data: AccountDataHandler,
    push_rules: PushRulesHandler,
    counts: NotificationCounts,
) -> Rooms:
    events, state, rooms = stores.event_store, stores.state_store, stores.room_store
    event_stream = streams.registry["events"].id_generator()
    state_group_ids = IdAllocator()
    # Outliers and backfilled events take positions below zero, counting down.
    backfill_ids = IdAllocator(0, step=-1)
    # Every event a local user can see is evaluated against their push rules before it is
    # written; the actions are written with it.
    # Whom each user ignores (and who ignores whom), held in memory.
    ignored = IgnoredUsers(stores.account_data_store)
    account_data.change_listeners.append(ignored.account_data_changed)
    # Who blocks invites, held in memory the same way.
    invite_permissions = InvitePermissions(stores.account_data_store)
    account_data.change_listeners.append(invite_permissions.account_data_changed)
    push_actions = PushActionGenerator(
        core.server_name,
        core.clock,
        events,
        state,
        stores.account_data_store,
        counts,
        SummaryRotator(core.reactor, stores.push_action_store),
        ignored.ignorers_of,
    )
    account_data.change_listeners.append(push_actions.account_data_changed)
    persister = EventPersister(
        core.db, events, state, event_stream, state_group_ids, backfill_ids, push_actions,
        server_name=core.server_name,
    )
    creator = EventCreator(
        core.server_name,
        core.signing_key,
        core.clock,
        events,
        state,
        rooms,
        persister,
        streams.bus,
        outbound_destinations=federation.outbound_destinations,
        remote_invite=federation.remote_invite,
    )
    profiles = ProfileHandler(
        core.server_name, stores.profile_store, rooms, state, events, creator, remote
    )
    # Who may read a room (history visibility) and who has the power to act in it.
    visibility = HistoryVisibility(core.server_name, events, state, rooms, stores.accounts)
    serializer = EventSerializer(
        core.clock,
        events,
        stores.relation_store,
        visibility.filter_events_for_user,
        ignored.of,
        visibility.filter_relations_for_user,
    )
    power = RoomPower(events, state, rooms)
    state_contents = StateContents(events, state)
    # Aliases, the published room directory and the user directory.
    directory = DirectoryHandler(
        core.server_name,
        stores.alias_store,
        events,
        state,
        rooms,
        state_contents,
        power,
        visibility,
        creator,
        remote,
    )
    membership = MembershipHandler(
        core.server_name,
        creator,
        events,
        state,
        rooms,
        directory,
        stores.profile_store,
        stores.accounts,
        power,
        federation.membership,
        stores.server_notice_store.is_notice_room_of,
        blocked_rooms=stores.room_admin_store,
        blocks_invites=invite_permissions.blocks_invites,
    )
    # A forget changes no stream position: the cached memberships of the user must hear of it.
    membership.forget_listeners.append(streams.shared_rooms.forget)
    message_limiter = core.limiter("message_per_user", core.config.rate_limits.message_per_user)
    room_upgrades = RoomUpgradeHandler(
        core.server_name,
        core.clock,
        creator,
        membership,
        events,
        state,
        state_contents,
        stores.alias_store,
        stores.room_directory_store,
        account_data,
        push_rules,
        message_limiter,
    )
    membership.remote_join_listeners.append(room_upgrades.joined_remote_room)
    identity = core.config.identity_servers
    third_party_invites = ThirdPartyInvites(
        core.server_name,
        IdentityServerClient(core.reactor, identity) if identity.third_party_invites else None,
        membership,
        creator,
        events,
        state,
        state_contents,
        rooms,
        power,
    )
    relations = RelationsHandler(
        events, stores.relation_store, visibility, serializer, ignored.of
    )
    room_state = RoomStateHandler(events, state, rooms, visibility)
    messages = MessagesHandler(
        events, state, visibility, serializer, federation.backfill, ignored.of
    )
    return Rooms(
        event_stream=event_stream,
        state_group_ids=state_group_ids,
        backfill_ids=backfill_ids,
        persister=persister,
        push_actions=push_actions,
        notifications=NotificationsHandler(stores.push_action_store, events, serializer),
        event_creator=creator,
        event_serializer=serializer,
        profiles=profiles,
        history_visibility=visibility,
        room_power=power,
        state_contents=state_contents,
        directory=directory,
        room_list=RoomListHandler(
            core.server_name, stores.room_directory_store, state_contents, power, remote
        ),
        spaces=SpaceHierarchyHandler(
            core.server_name,
            core.clock,
            events,
            state,
            rooms,
            state_contents,
            remote,
            directory.resolve_room_alias,
        ),
        user_directory=UserDirectoryHandler(stores.user_directory_store),
        membership=membership,
        message_limiter=message_limiter,
        event_sender=EventSendHandler(
            core.server_name,
            creator,
            events,
            state,
            rooms,
            directory,
            membership,
            power,
            message_limiter,
            presence,
            relations,
            core.clock,
        ),
        room_creation=RoomCreationHandler(
            core.server_name,
            core.config.rooms,
            creator,
            membership,
            stores.alias_store,
            message_limiter,
            third_party_invites,
        ),
        room_upgrades=room_upgrades,
        # Reading history (/messages, /context, /event) and state, and searching it.
        room_state=room_state,
        messages=messages,
        relations=relations,
        search=SearchHandler(
            stores.search_store, events, rooms, visibility, messages, room_state, serializer,
            ignored.of,
        ),
        ignored_users=ignored,
        invite_permissions=invite_permissions,
        mutual_rooms=MutualRooms(streams.shared_rooms),
        third_party_invites=third_party_invites,
    )
