"""The one table of client-listener routes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from client_api.http import Router
from client_api.servlets import (
    account,
    account_data,
    admin,
    devices,
    directory,
    discovery,
    filters,
    history,
    login,
    membership,
    presence,
    profile,
    push_rules,
    receipts,
    register,
    rooms,
    sync,
    typing,
)

if TYPE_CHECKING:
    from homeserver.app import HomeServer

CLIENT_SERVLETS = [
    discovery.VersionsServlet,
    discovery.ClientWellKnownServlet,
    discovery.ServerWellKnownServlet,
    discovery.CapabilitiesServlet,
    discovery.HealthServlet,
    login.LoginServlet,
    login.RefreshServlet,
    login.LogoutServlet,
    login.LogoutAllServlet,
    register.RegisterServlet,
    register.RegisterAvailableServlet,
    register.RegistrationTokenValidityServlet,
    account.WhoamiServlet,
    account.PasswordServlet,
    account.DeactivateServlet,
    account.ThreepidServlet,
    devices.DevicesServlet,
    devices.DeviceServlet,
    devices.DeleteDevicesServlet,
    profile.ProfileServlet,
    profile.ProfileFieldServlet,
    admin.SharedSecretRegisterServlet,
    sync.SyncServlet,
    rooms.CreateRoomServlet,
    rooms.SendEventServlet,
    rooms.StateEventServlet,
    rooms.RoomStateServlet,
    rooms.RedactServlet,
    rooms.MembersServlet,
    rooms.JoinedMembersServlet,
    membership.JoinRoomByIdServlet,
    membership.JoinServlet,
    membership.KnockServlet,
    membership.InviteServlet,
    membership.LeaveServlet,
    membership.ForgetServlet,
    membership.TargetMembershipServlet,
    membership.JoinedRoomsServlet,
    filters.CreateFilterServlet,
    filters.GetFilterServlet,
    history.MessagesServlet,
    history.ContextServlet,
    history.EventServlet,
    typing.TypingServlet,
    receipts.ReceiptServlet,
    receipts.ReadMarkersServlet,
    account_data.AccountDataServlet,
    account_data.RoomAccountDataServlet,
    account_data.TagsServlet,
    account_data.TagServlet,
    push_rules.PushRulesServlet,
    push_rules.GlobalPushRulesServlet,
    push_rules.PushRuleServlet,
    push_rules.PushRuleEnabledServlet,
    push_rules.PushRuleActionsServlet,
    presence.PresenceStatusServlet,
    directory.RoomAliasServlet,
    directory.RoomAliasesServlet,
    directory.RoomVisibilityServlet,
    directory.PublicRoomsServlet,
    directory.UserDirectorySearchServlet,
]


def register_client_servlets(router: Router, hs: HomeServer) -> None:
    for servlet_class in CLIENT_SERVLETS:
        router.register_servlet(servlet_class(hs))
