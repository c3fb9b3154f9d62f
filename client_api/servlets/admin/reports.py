"""The admin API for abuse reports: `/_synapse/admin/v1/event_reports` (Synapse's documented
paths and JSON), `/v1/user_reports` (Synapse's) and `/v1/room_reports` (Heddle's, shaped
like them), each a list and one report to read or delete. The work is
`homeserver.admin.reports.AdminReportsHandler`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from client_api.http import HeddleRequest, query_string
from client_api.servlets.admin.access import (
    admin_path,
    parse_direction,
    parse_page,
    require_admin,
)
from homeserver.errors import Codes, MatrixError
from storage.stores.reports import EVENT_REPORTS, ROOM_REPORTS, USER_REPORTS, ReportKind

if TYPE_CHECKING:
    from homeserver.app import HomeServer

# The query parameter each filter column is given by: Synapse's names.
_FILTER_PARAMETERS = {
    "user_id": "user_id",
    "room_id": "room_id",
    "event_sender": "event_sender_user_id",
    "target_user_id": "target_user_id",
}
# Report IDs are BIGINTs.
_REPORT_ID = re.compile(r"[0-9]{1,18}")


def _report_id(raw: str) -> int:
    """400 M_INVALID_PARAM unless the path's report ID is a non-negative integer."""
    if not _REPORT_ID.fullmatch(raw):
        raise MatrixError(
            400,
            Codes.INVALID_PARAM,
            "The report_id parameter must be a string representing a positive integer.",
        )
    return int(raw)


class _ReportsServlet:
    """A page of the kind's reports, newest first unless `dir=f` (Synapse's default),
    filtered on the exact values given; `next_token` (an integer, as Synapse's) while more
    follow."""

    kind: ReportKind

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        offset, limit = parse_page(request)
        direction = parse_direction(request, default="b")
        filters = {
            column: value
            for column in self.kind.filter_columns
            if (value := query_string(request, _FILTER_PARAMETERS[column]))
        }
        reports, total = await self._hs.admin_reports.list_reports(
            self.kind, offset, limit, direction == "b", filters
        )
        body: dict[str, Any] = {self.kind.table: reports, "total": total}
        if offset + len(reports) < total:
            body["next_token"] = offset + len(reports)
        return 200, body


class _ReportServlet:
    """One report of the kind: read it, or delete it."""

    kind: ReportKind

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, report_id: str) -> tuple[int, Any]:
        await require_admin(self._hs, request)
        return 200, await self._hs.admin_reports.get_report(self.kind, _report_id(report_id))

    async def on_DELETE(self, request: HeddleRequest, report_id: str) -> tuple[int, Any]:
        admin = await require_admin(self._hs, request)
        await self._hs.admin_reports.delete_report(admin, self.kind, _report_id(report_id))
        return 200, {}


_ONE = "/(?P<report_id>[^/]*)"


class EventReportsServlet(_ReportsServlet):
    kind = EVENT_REPORTS
    PATTERNS = [admin_path("/event_reports")]


class EventReportServlet(_ReportServlet):
    kind = EVENT_REPORTS
    PATTERNS = [admin_path("/event_reports" + _ONE)]


class RoomReportsServlet(_ReportsServlet):
    kind = ROOM_REPORTS
    PATTERNS = [admin_path("/room_reports")]


class RoomReportServlet(_ReportServlet):
    kind = ROOM_REPORTS
    PATTERNS = [admin_path("/room_reports" + _ONE)]


class UserReportsServlet(_ReportsServlet):
    kind = USER_REPORTS
    PATTERNS = [admin_path("/user_reports")]


class UserReportServlet(_ReportServlet):
    kind = USER_REPORTS
    PATTERNS = [admin_path("/user_reports" + _ONE)]
