"""The admin API's handlers (`homeserver/admin/`): the audit log every one of them writes
to, and one handler per admin area (users today)."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.admin.audit import AdminAudit
from homeserver.admin.federation import AdminFederationHandler, DestinationWaker
from homeserver.admin.users import AdminUsersHandler
from homeserver.areas.auth import Auth
from homeserver.areas.core import Core
from homeserver.areas.rooms import Rooms
from homeserver.areas.stores import Stores
from homeserver.rooms.deactivation import AccountDeactivation


@dataclass(frozen=True)
class Admin:
    audit: AdminAudit
    users: AdminUsersHandler
    # Deactivating an account (its user's request or an admin's): built here, where the
    # account and the rooms it leaves are both at hand.
    deactivation: AccountDeactivation
    federation: AdminFederationHandler


def build_admin(
    core: Core, stores: Stores, auth: Auth, rooms: Rooms, federation_sender: DestinationWaker
) -> Admin:
    audit = AdminAudit(core.clock, stores.admin_audit_store)
    deactivation = AccountDeactivation(auth.account, stores.room_store, rooms.membership)
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
        deactivation,
        audit,
    )
    return Admin(
        audit=audit,
        users=users,
        deactivation=deactivation,
        federation=AdminFederationHandler(
            stores.federation_queue_store, federation_sender, audit
        ),
    )
