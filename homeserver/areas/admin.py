"""The admin API's handlers (`homeserver/admin/`): the audit log every one of them writes
to, and one handler per admin area (users, rooms, federation destinations, server
notices, abuse reports), with the client API's filing of the reports admins read."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.account_data import AccountDataHandler
from homeserver.admin.audit import AdminAudit
from homeserver.admin.federation import AdminFederationHandler, DestinationWaker
from homeserver.admin.media import AdminMediaHandler
from homeserver.admin.registration_tokens import AdminRegistrationTokensHandler
from homeserver.admin.reports import AdminReportsHandler
from homeserver.admin.rooms import AdminRoomsHandler
from homeserver.admin.server_notices import ServerNoticesHandler
from homeserver.admin.tasks import AdminTasks
from homeserver.admin.users import AdminUsersHandler
from homeserver.areas.auth import Auth
from homeserver.areas.core import Core
from homeserver.areas.media import Media
from homeserver.areas.rooms import Rooms
from homeserver.areas.stores import Stores
from homeserver.reports import ReportsHandler
from homeserver.rooms.deactivation import AccountDeactivation


@dataclass(frozen=True)
class Admin:
    audit: AdminAudit
    users: AdminUsersHandler
    # Deactivating an account (its user's request or an admin's): built here, where the
    # account and the rooms it leaves are both at hand.
    deactivation: AccountDeactivation
    federation: AdminFederationHandler
    server_notices: ServerNoticesHandler
    rooms: AdminRoomsHandler
    # Room deletes and history purges running in the background, and their record.
    tasks: AdminTasks
    registration_tokens: AdminRegistrationTokensHandler
    media: AdminMediaHandler
    reports: AdminReportsHandler
    # Users filing abuse reports (the client API): built here, beside the admins' side of
    # the same reports.
    abuse_reports: ReportsHandler


def build_admin(
    core: Core,
    stores: Stores,
    auth: Auth,
    rooms: Rooms,
    media: Media,
    account_data: AccountDataHandler,
    federation_sender: DestinationWaker,
) -> Admin:
    audit = AdminAudit(core.clock, stores.admin_audit_store)
    deactivation = AccountDeactivation(
        auth.account, stores.accounts, stores.room_store, rooms.membership,
        auth.id_server_bindings,
    )
    users = AdminUsersHandler(
        core.server_name,
        core.clock,
        stores.accounts,
        stores.user_admin_store,
        stores.profile_store,
        stores.room_store,
        stores.pusher_store,
        auth.registration,
        auth.account,
        auth.devices,
        auth.tokens,
        rooms.profiles,
        deactivation,
        audit,
        auth.threepids,
    )
    tasks = AdminTasks(core.clock, stores.admin_task_store)
    admin_rooms = AdminRoomsHandler(
        core.server_name,
        core.clock,
        stores.room_admin_store,
        stores.event_store,
        stores.state_store,
        stores.room_store,
        stores.alias_store,
        stores.room_directory_store,
        rooms.state_contents,
        rooms.event_serializer,
        rooms.messages,
        rooms.membership,
        rooms.room_creation,
        rooms.event_creator,
        audit,
        tasks,
    )
    # A purge removes memberships without a stream change: cached room lists must hear.
    admin_rooms.purge_listeners.extend(rooms.membership.forget_listeners)
    return Admin(
        audit=audit,
        users=users,
        rooms=admin_rooms,
        tasks=tasks,
        deactivation=deactivation,
        federation=AdminFederationHandler(
            stores.federation_queue_store, federation_sender, audit
        ),
        server_notices=ServerNoticesHandler(
            core.server_name,
            core.config.server_notices,
            core.clock,
            stores.accounts,
            stores.server_notice_store,
            stores.room_store,
            users,
            rooms.room_creation,
            rooms.membership,
            rooms.event_sender,
            account_data,
            audit,
        ),
        registration_tokens=AdminRegistrationTokensHandler(
            core.clock, stores.registration_token_store, audit
        ),
        media=AdminMediaHandler(
            core.server_name, stores.media_admin_store, media.provider, users, audit
        ),
        reports=AdminReportsHandler(
            stores.report_store, stores.event_store, rooms.state_contents, audit
        ),
        abuse_reports=ReportsHandler(
            core.server_name,
            core.clock,
            stores.report_store,
            stores.event_store,
            stores.room_store,
            stores.accounts,
            rooms.history_visibility,
            core.limiter("reports_per_user", core.config.rate_limits.reports_per_user),
        ),
    )
