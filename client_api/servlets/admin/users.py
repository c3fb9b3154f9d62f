"""The admin API for users, at Synapse's paths and with its JSON (so tools written for
Synapse work), plus the spec's `/admin/whois`, `/admin/lock` and `/admin/suspend`. The work
is `homeserver.admin.users.AdminUsersHandler`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import (
    HeddleRequest,
    client_path,
    parse_bool_query,
    parse_json_object,
    query_string,
    require_query_string,
)
from client_api.servlets.admin.access import (
    admin_path,
    parse_direction,
    parse_page,
    require_admin,
)
from client_api.validation import RequestBody, parse_body
from homeserver.admin.users import UserChanges, UserDetails
from homeserver.errors import Codes, MatrixError
from storage.stores.accounts import RatelimitOverride
from storage.stores.devices import Device
from storage.stores.user_admin import ORDER_COLUMNS, UserListing, UserQuery

if TYPE_CHECKING:
    from homeserver.app import HomeServer

USER = r"/(?P<user_id>[^/]+)"


def listing_json(user: UserListing) -> dict[str, Any]:
    return {
        "name": user.user_id,
        "is_guest": user.is_guest,
        "admin": user.is_admin,
        "user_type": user.user_type,
        "deactivated": user.deactivated,
        "erased": user.erased,
        "shadow_banned": user.shadow_banned,
        "displayname": user.displayname,
        "avatar_url": user.avatar_url,
        # Milliseconds here, seconds in the single-user query: Synapse's two answers differ
        # so, and tools written for it expect each as it is.
        "creation_ts": user.created_ts,
        "last_seen_ts": user.last_seen_ts,
        # Not `suspended`: Synapse's list leaves it out (its single-user query has it).
        "locked": user.locked,
    }


def details_json(details: UserDetails) -> dict[str, Any]:
    account, profile = details.account, details.profile
    return {
        "name": account.user_id,
        "displayname": profile.displayname if profile else None,
        "avatar_url": profile.avatar_url if profile else None,
        "threepids": details.threepids,
        # Heddle has no SSO.
        "external_ids": [],
        "is_guest": account.is_guest,
        "admin": account.is_admin,
        "deactivated": account.deactivated,
        "erased": account.erased,
        "shadow_banned": account.shadow_banned,
        "creation_ts": account.created_ts // 1000,
        "last_seen_ts": details.last_seen_ts,
        "appservice_id": None,
        "consent_server_notice_sent": None,
        "consent_version": None,
        "consent_ts": None,
        "user_type": account.user_type,
        "locked": account.locked,
        "suspended": account.suspended,
    }


def admin_device_json(device: Device) -> dict[str, Any]:
    return {
        "device_id": device.device_id,
        "display_name": device.display_name,
        "last_seen_ip": device.last_seen_ip,
        "last_seen_user_agent": device.last_seen_user_agent,
        "last_seen_ts": device.last_seen_ts,
        # No `dehydrated`: Synapse adds it only for a user who has a dehydrated device, and
        # Heddle has none.
        "user_id": device.user_id,
    }


# ----- the list --------------------------------------------------------------------------


def _user_query(request: HeddleRequest, version: str) -> UserQuery:
    order_by = query_string(request, "order_by") or "name"
    if order_by not in ORDER_COLUMNS:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Unknown value for 'order_by': {order_by!r}")
    direction = parse_direction(request)
    deactivated = parse_bool_query(request, "deactivated")
    if version == "v2":
        # v2: deactivated accounts are left out unless asked for.
        deactivated = None if deactivated else False
    assert request.args is not None
    not_user_types = tuple(
        value.decode("utf-8", "replace") for value in request.args.get(b"not_user_type", [])
    )
    return UserQuery(
        user_id_contains=query_string(request, "user_id") or None,
        name_contains=query_string(request, "name") or None,
        # Guests are listed unless `guests=false`; locked accounts only with `locked=true`
        # (as Synapse).
        guests=None if parse_bool_query(request, "guests") is not False else False,
        deactivated=deactivated,
        admins=parse_bool_query(request, "admins"),
        locked=None if parse_bool_query(request, "locked") else False,
        not_user_types=not_user_types,
        order_by=order_by,
        backwards=direction == "b",
    )


class UsersServlet:
    PATTERNS = [admin_path("/users", versions="(?P<version>v2|v3)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, version: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        offset, limit = parse_page(request)
        users, total = await self._hs.admin_users.list_users(
            _user_query(request, version), offset, limit
        )
        body: dict[str, Any] = {"users": [listing_json(u) for u in users], "total": total}
        if offset + len(users) < total:
            body["next_token"] = str(offset + len(users))
        return 200, body


# ----- one account -----------------------------------------------------------------------


class PutUserBody(RequestBody):
    password: str | None = None
    logout_devices: bool = True
    displayname: str | None = None
    avatar_url: str | None = None
    admin: bool | None = None
    deactivated: bool | None = None
    locked: bool | None = None
    user_type: str | None = None
    threepids: list[Any] | None = None
    external_ids: list[Any] | None = None


def _threepid_pairs(threepids: list[Any] | None) -> list[tuple[str, str]] | None:
    """Synapse's `threepids`: objects with `medium` and `address` strings."""
    if threepids is None:
        return None
    pairs = []
    for threepid in threepids:
        if not (
            isinstance(threepid, dict)
            and isinstance(threepid.get("medium"), str)
            and isinstance(threepid.get("address"), str)
        ):
            raise MatrixError(
                400, Codes.INVALID_PARAM, "Each of 'threepids' needs 'medium' and 'address'"
            )
        pairs.append((threepid["medium"], threepid["address"]))
    return pairs


class UserServlet:
    PATTERNS = [admin_path("/users" + USER, versions="v2")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        return 200, details_json(await self._hs.admin_users.get_user(user_id))

    async def on_PUT(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        body = parse_body(parse_json_object(request), PutUserBody)
        if body.external_ids:
            raise MatrixError(400, Codes.INVALID_PARAM, "Heddle does not store SSO identities")
        changes = UserChanges(
            password=body.password,
            logout_devices=body.logout_devices,
            displayname=body.displayname,
            avatar_url=body.avatar_url,
            admin=body.admin,
            deactivated=body.deactivated,
            locked=body.locked,
            user_type_given="user_type" in body.model_fields_set,
            user_type=body.user_type,
            threepids=_threepid_pairs(body.threepids),
        )
        created, details = await self._hs.admin_users.create_or_modify(admin, user_id, changes)
        return (201 if created else 200), details_json(details)


class AdminFlagBody(RequestBody):
    admin: bool


class UserAdminServlet:
    """Synapse's `/v1/users/{userId}/admin`: whether the user is a server admin."""

    PATTERNS = [admin_path("/users" + USER + "/admin")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        details = await self._hs.admin_users.get_user(user_id)
        return 200, {"admin": details.account.is_admin}

    async def on_PUT(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        body = parse_body(parse_json_object(request), AdminFlagBody)
        await self._hs.admin_users.set_admin(admin, user_id, body.admin)
        return 200, {}


class DeactivateBody(RequestBody):
    erase: bool = False


class DeactivateServlet:
    PATTERNS = [admin_path("/deactivate" + USER)]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        # An empty body is allowed (Synapse keeps it for older tools).
        body = parse_body(parse_json_object(request), DeactivateBody)
        await self._hs.admin_users.deactivate(admin, user_id, body.erase)
        return 200, {"id_server_unbind_result": "success"}


class ResetPasswordBody(RequestBody):
    new_password: str
    logout_devices: bool = True


class ResetPasswordServlet:
    PATTERNS = [admin_path("/reset_password" + USER)]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        body = parse_body(parse_json_object(request), ResetPasswordBody)
        await self._hs.admin_users.reset_password(
            admin, user_id, body.new_password, body.logout_devices
        )
        return 200, {}


class WhoisServlet:
    """Synapse's path and the spec's; the spec lets users ask about themselves too."""

    PATTERNS = [admin_path("/whois" + USER), client_path("/admin/whois" + USER)]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        devices = await self._hs.admin_users.whois(requester, user_id)
        return 200, {
            "user_id": user_id,
            "devices": {
                device_id: {
                    # One session per device (a device's tokens share its last-seen record),
                    # with its one last-seen connection if it was ever used.
                    "sessions": [
                        {
                            "connections": [
                                {
                                    "ip": device.last_seen_ip,
                                    "last_seen": device.last_seen_ts,
                                    "user_agent": device.last_seen_user_agent,
                                }
                                for device in sessions
                                if device.last_seen_ts is not None
                            ]
                        }
                    ]
                }
                for device_id, sessions in devices.items()
            },
        }


# ----- devices -----------------------------------------------------------------------------


class CreateDeviceBody(RequestBody):
    device_id: str


class UserDevicesServlet:
    PATTERNS = [admin_path("/users" + USER + "/devices", versions="v2")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        devices = await self._hs.admin_users.devices(user_id)
        return 200, {"devices": [admin_device_json(d) for d in devices], "total": len(devices)}

    async def on_POST(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        body = parse_body(parse_json_object(request), CreateDeviceBody)
        await self._hs.admin_users.create_device(admin, user_id, body.device_id)
        return 201, {}


class RenameDeviceBody(RequestBody):
    display_name: str | None = None


class UserDeviceServlet:
    PATTERNS = [admin_path("/users" + USER + "/devices/(?P<device_id>[^/]+)", versions="v2")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(
        self, request: HeddleRequest, user_id: str, device_id: str
    ) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        return 200, admin_device_json(await self._hs.admin_users.device(user_id, device_id))

    async def on_PUT(
        self, request: HeddleRequest, user_id: str, device_id: str
    ) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        body = parse_body(parse_json_object(request), RenameDeviceBody)
        await self._hs.admin_users.rename_device(admin, user_id, device_id, body.display_name)
        return 200, {}

    async def on_DELETE(
        self, request: HeddleRequest, user_id: str, device_id: str
    ) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        await self._hs.admin_users.delete_devices(admin, user_id, [device_id])
        return 200, {}


class DeleteDevicesBody(RequestBody):
    devices: list[str]


class DeleteDevicesServlet:
    PATTERNS = [admin_path("/users" + USER + "/delete_devices", versions="v2")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        body = parse_body(parse_json_object(request), DeleteDevicesBody)
        await self._hs.admin_users.delete_devices(admin, user_id, body.devices)
        return 200, {}


# ----- rooms, account data, login-as -------------------------------------------------------


class JoinedRoomsServlet:
    PATTERNS = [admin_path("/users" + USER + "/joined_rooms")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        rooms = await self._hs.admin_users.joined_rooms(user_id)
        return 200, {"joined_rooms": rooms, "total": len(rooms)}


class MembershipsServlet:
    PATTERNS = [admin_path("/users" + USER + "/memberships")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        return 200, {"memberships": await self._hs.admin_users.memberships(user_id)}


class PushersServlet:
    PATTERNS = [admin_path("/users" + USER + "/pushers")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        pushers = await self._hs.admin_users.pushers(user_id)
        return 200, {"pushers": pushers, "total": len(pushers)}


class UsernameAvailableServlet:
    """As the client API's /register/available, whether registration is open or not."""

    PATTERNS = [admin_path("/username_available")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        await self._hs.admin_users.username_available(require_query_string(request, "username"))
        return 200, {"available": True}


class AccountDataServlet:
    PATTERNS = [admin_path("/users" + USER + "/accountdata")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        global_data, rooms = await self._hs.admin_users.account_data(user_id)
        return 200, {"account_data": {"global": global_data, "rooms": rooms}}


class LoginAsBody(RequestBody):
    valid_until_ms: int | None = None


class LoginAsServlet:
    PATTERNS = [admin_path("/users" + USER + "/login")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        body = parse_body(parse_json_object(request), LoginAsBody)
        token = await self._hs.admin_users.login_as(admin, user_id, body.valid_until_ms)
        return 200, {"access_token": token}


# ----- restrictions ------------------------------------------------------------------------


class ShadowBanServlet:
    PATTERNS = [admin_path("/users" + USER + "/shadow_ban")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        await self._hs.admin_users.set_shadow_banned(admin, user_id, True)
        return 200, {}

    async def on_DELETE(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        await self._hs.admin_users.set_shadow_banned(admin, user_id, False)
        return 200, {}


class RatelimitBody(RequestBody):
    messages_per_second: int = 0
    burst_count: int = 0


class RatelimitOverrideServlet:
    PATTERNS = [admin_path("/users" + USER + "/override_ratelimit")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        override = await self._hs.admin_users.ratelimit_override(user_id)
        if override is None:
            return 200, {}
        return 200, {
            "messages_per_second": override.messages_per_second,
            "burst_count": override.burst_count,
        }

    async def on_POST(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        body = parse_body(parse_json_object(request), RatelimitBody)
        for name, value in (
            ("messages_per_second", body.messages_per_second),
            ("burst_count", body.burst_count),
        ):
            if not 0 <= value < 2**63:
                raise MatrixError(
                    400, Codes.INVALID_PARAM, f"'{name}' must be a non-negative integer"
                )
        override = RatelimitOverride(body.messages_per_second, body.burst_count)
        await self._hs.admin_users.set_ratelimit_override(admin, user_id, override)
        return 200, {
            "messages_per_second": override.messages_per_second,
            "burst_count": override.burst_count,
        }

    async def on_DELETE(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        await self._hs.admin_users.set_ratelimit_override(admin, user_id, None)
        return 200, {}


class LockBody(RequestBody):
    locked: bool


class LockServlet:
    """The spec's account locking (v1.18)."""

    PATTERNS = [client_path("/admin/lock" + USER, versions="v1")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        return 200, {"locked": await self._hs.admin_users.is_locked(user_id)}

    async def on_PUT(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        body = parse_body(parse_json_object(request), LockBody)
        await self._hs.admin_users.set_locked(admin, user_id, body.locked)
        return 200, {"locked": body.locked}


class SuspendBody(RequestBody):
    suspended: bool


class SuspendServlet:
    """The spec's account suspension (v1.18)."""

    PATTERNS = [client_path("/admin/suspend" + USER, versions="v1")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        return 200, {"suspended": await self._hs.admin_users.is_suspended(user_id)}

    async def on_PUT(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        body = parse_body(parse_json_object(request), SuspendBody)
        await self._hs.admin_users.set_suspended(admin, user_id, body.suspended)
        return 200, {"suspended": body.suspended}


class SynapseSuspendBody(RequestBody):
    suspend: bool


class SynapseSuspendServlet:
    """Synapse's older suspension endpoint, `{"suspend": bool}`."""

    PATTERNS = [admin_path("/suspend" + USER)]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_PUT(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        body = parse_body(parse_json_object(request), SynapseSuspendBody)
        await self._hs.admin_users.set_suspended(admin, user_id, body.suspend)
        return 200, {f"user_{user_id}_suspended": body.suspend}
