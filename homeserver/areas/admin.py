"""The admin API's handlers (`homeserver/admin/`): the audit log every one of them writes
to, and one handler per admin area (users today)."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.admin.audit import AdminAudit
from homeserver.admin.media import AdminMediaHandler
from homeserver.admin.registration_tokens import AdminRegistrationTokensHandler
from homeserver.admin.users import AdminUsersHandler
from homeserver.areas.auth import Auth
from homeserver.areas.core import Core
from homeserver.areas.media import Media
from homeserver.areas.rooms import Rooms
from homeserver.areas.stores import Stores


@dataclass(frozen=True)
class Admin:
    audit: AdminAudit
    users: AdminUsersHandler
    registration_tokens: AdminRegistrationTokensHandler
    media: AdminMediaHandler


def build_admin(
    core: Core, stores: Stores, auth: Auth, rooms: Rooms, media: Media
) -> Admin:
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
    registration_tokens = AdminRegistrationTokensHandler(
        core.clock, stores.registration_token_store, audit
    )
    media_handler = AdminMediaHandler(
        core.server_name, stores.media_admin_store, media.provider, users, audit
    )
    return Admin(
        audit=audit,
        users=users,
        registration_tokens=registration_tokens,
        media=media_handler,
    )
