"""The one table of federation-listener routes (/_matrix/federation and /_matrix/key)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from client_api.http import HeddleRequest, Router

if TYPE_CHECKING:
    from homeserver.app import HomeServer


def federation_path(path: str, versions: str = "v1") -> re.Pattern[str]:
    """A pattern for `/_matrix/federation/{versions}{path}`; `path` may use (?P<name>[^/]+)."""
    return re.compile(f"^/_matrix/federation/(?:{versions}){path}$")


def key_path(path: str) -> re.Pattern[str]:
    return re.compile(f"^/_matrix/key/v2{path}$")


class FederationVersionServlet:
    """GET /_matrix/federation/v1/version: unauthenticated, names the implementation."""

    PATTERNS = [federation_path("/version")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        from homeserver import __version__

        return 200, {"server": {"name": "Heddle", "version": __version__}}


def federation_servlets() -> list[Any]:
    # Imported here so each servlet module can import this one for its path helpers.
    from federation.transport.events import (
        BackfillServlet,
        EventAuthServlet,
        EventServlet,
        GetMissingEventsServlet,
        StateIdsServlet,
        StateServlet,
        TimestampToEventServlet,
    )
    from federation.transport.keys import (
        BulkQueryServerKeysServlet,
        QueryServerKeysServlet,
        ServerKeysServlet,
    )
    from federation.transport.media import FederationDownloadServlet, FederationThumbnailServlet
    from federation.transport.membership import (
        InviteServlet,
        MakeMembershipServlet,
        SendMembershipServlet,
        SendTransactionServlet,
    )
    from federation.transport.openid import OpenIdUserInfoServlet
    from federation.transport.queries import (
        FederationPublicRoomsServlet,
        FederationSpaceHierarchyServlet,
        QueryDirectoryServlet,
        QueryProfileServlet,
        QueryServlet,
    )
    from federation.transport.third_party import ThirdPartyOnBindServlet
    from federation.transport.user_devices import UserDevicesServlet
    from federation.transport.user_keys import UserKeysClaimServlet, UserKeysQueryServlet

    return [
        FederationVersionServlet,
        ServerKeysServlet,
        QueryServerKeysServlet,
        BulkQueryServerKeysServlet,
        EventServlet,
        StateServlet,
        StateIdsServlet,
        EventAuthServlet,
        BackfillServlet,
        GetMissingEventsServlet,
        QueryProfileServlet,
        QueryDirectoryServlet,
        # After the specific query types: it answers every other one.
        QueryServlet,
        FederationPublicRoomsServlet,
        FederationSpaceHierarchyServlet,
        SendTransactionServlet,
        MakeMembershipServlet,
        SendMembershipServlet,
        InviteServlet,
        FederationDownloadServlet,
        FederationThumbnailServlet,
        UserKeysQueryServlet,
        UserKeysClaimServlet,
        UserDevicesServlet,
        OpenIdUserInfoServlet,
        TimestampToEventServlet,
        ThirdPartyOnBindServlet,
    ]


def register_federation_servlets(router: Router, hs: HomeServer) -> None:
    for servlet_class in federation_servlets():
        router.register_servlet(servlet_class(hs))
