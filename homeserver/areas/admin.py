"""The admin API's handlers (`homeserver/admin/`): the audit log every one of them writes
to, and one handler per admin area (users, rooms)."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.admin.audit import AdminAudit
from homeserver.admin.rooms import AdminRoomsHandler
from homeserver.admin.users import AdminUsersHandler
from homeserver.areas.auth import Auth
from homeserver.areas.core import Core
from homeserver.areas.rooms import Rooms
from homeserver.areas.stores import Stores


@dataclass(frozen=True)
class Admin:
    audit: AdminAudit
    users: AdminUsersHandler
    rooms: AdminRoomsHandler


def build_admin(core: Core, stores: Stores, auth: Auth, rooms: Rooms) -> Admin:
    audit = AdminAudit(core.clock, stores.admin_audit_store)
    users = AdminUsersHandler(
        core.server_name,
        core.clock,
        stores.accounts,
        stores.user_admin_store,
        stores.profile_store,
        stores.room_store,
        auth.registration,
        auth.account,
        auth.devices,
        auth.tokens,
        rooms.profiles,
        rooms.membership,
        audit,
    )
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
    )
    # A purge removes memberships without a stream change: cached room lists must hear.
    admin_rooms.purge_listeners.extend(rooms.membership.forget_listeners)
    return Admin(audit=audit, users=users, rooms=admin_rooms)
