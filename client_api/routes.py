"""The one table of client-listener routes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from client_api.http import Router
from client_api.servlets import (
    account,
    admin,
    devices,
    discovery,
    login,
    profile,
    register,
    sync,
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
]


def register_client_servlets(router: Router, hs: HomeServer) -> None:
    for servlet_class in CLIENT_SERVLETS:
        router.register_servlet(servlet_class(hs))
