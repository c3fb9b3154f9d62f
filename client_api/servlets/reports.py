"""Reporting content: POST /rooms/{roomId}/report/{eventId}, POST /rooms/{roomId}/report and
POST /users/{userId}/report. The rules are `homeserver.reports.ReportsHandler`'s."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object
from client_api.validation import RequestBody, parse_body

if TYPE_CHECKING:
    from homeserver.app import HomeServer

# A reason longer than this is refused (400 M_BAD_JSON), as Synapse refuses user reports':
# reports are stored for admins to read, not a place for documents.
MAX_REASON_LENGTH = 1000


class EventReportBody(RequestBody):
    reason: str | None = Field(None, max_length=MAX_REASON_LENGTH)
    # Removed from the spec in v1.18; still sent by older clients, and shown to admins.
    # -100 is the most offensive, 0 inoffensive (the spec's range before its removal).
    score: int | None = Field(None, ge=-100, le=0)


class ReasonBody(RequestBody):
    """A room or user report's body: a reason, which may be blank."""

    reason: str = Field(max_length=MAX_REASON_LENGTH)


class ReportEventServlet:
    PATTERNS = [client_path("/rooms/(?P<room_id>[^/]+)/report/(?P<event_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, room_id: str, event_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_body(parse_json_object(request), EventReportBody)
        await self._hs.abuse_reports.report_event(
            requester, room_id, event_id, body.reason, body.score
        )
        return 200, {}


class ReportRoomServlet:
    PATTERNS = [client_path("/rooms/(?P<room_id>[^/]+)/report", versions="v3")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, room_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_body(parse_json_object(request), ReasonBody)
        await self._hs.abuse_reports.report_room(requester, room_id, body.reason)
        return 200, {}


class ReportUserServlet:
    PATTERNS = [client_path("/users/(?P<user_id>[^/]+)/report", versions="v3")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest, user_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        body = parse_body(parse_json_object(request), ReasonBody)
        await self._hs.abuse_reports.report_user(requester, user_id, body.reason)
        return 200, {}
