"""The admin API for abuse reports: listing, reading and deleting what users reported
(`homeserver/reports.py` files them). Event reports have Synapse's documented JSON
(`/_synapse/admin/v1/event_reports`), user reports the JSON of Synapse's
`/_synapse/admin/v1/user_reports`; Synapse has no admin API for room reports, so theirs
is Heddle's, shaped like the other two (see docs/architecture.md, "Admin API")."""

from __future__ import annotations

from typing import Any

from homeserver.admin.audit import AdminAudit
from homeserver.auth.tokens import Requester
from homeserver.errors import Codes, MatrixError
from homeserver.events.types import CANONICAL_ALIAS, NAME
from homeserver.rooms.directory import StateContents
from storage.stores.events import EventStore
from storage.stores.reports import EVENT_REPORTS, USER_REPORTS, Report, ReportKind, ReportStore


class AdminReportsHandler:
    def __init__(
        self,
        store: ReportStore,
        events: EventStore,
        contents: StateContents,
        audit: AdminAudit,
    ) -> None:
        self._store = store
        self._events = events
        self._contents = contents
        self._audit = audit

    async def list_reports(
        self,
        kind: ReportKind,
        offset: int,
        limit: int,
        newest_first: bool,
        filters: dict[str, str],
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of the kind's reports as the admin API shows them, and how many match
        `filters` in all."""
        reports, total = await self._store.list_reports(kind, offset, limit, newest_first, filters)
        return await self._describe(kind, reports), total

    async def get_report(self, kind: ReportKind, report_id: int) -> dict[str, Any]:
        """One report; an event report with the reported event as stored (`event_json`,
        null once the event was purged from the room's history)."""
        report = await self._store.get_report(kind, report_id)
        if report is None:
            raise MatrixError(404, Codes.NOT_FOUND, f"{kind.name.capitalize()} report not found")
        (described,) = await self._describe(kind, [report])
        if kind is EVENT_REPORTS:
            assert report.event_id is not None
            event = await self._events.get_event(report.event_id)
            described["event_json"] = dict(event.pdu) if event is not None else None
        return described

    async def delete_report(self, admin: Requester, kind: ReportKind, report_id: int) -> None:
        deleted = await self._store.delete_report(kind, report_id)
        if deleted is None:
            raise MatrixError(404, Codes.NOT_FOUND, f"{kind.name.capitalize()} report not found")
        await self._audit.record(
            admin.user_id,
            f"delete_{kind.name}_report",
            f"{kind.name}_report:{report_id}",
            _audit_details(deleted),
        )

    async def _describe(self, kind: ReportKind, reports: list[Report]) -> list[dict[str, Any]]:
        if kind is USER_REPORTS:
            return [_base(report) | {"target_user_id": report.target_user_id} for report in reports]
        # Event and room reports name the room as it is called now (null once purged).
        names: dict[str, dict[str, str | None]] = {}
        for room_id in {r.room_id for r in reports if r.room_id is not None}:
            contents = await self._contents.current_contents(room_id, (NAME, CANONICAL_ALIAS))
            names[room_id] = {
                "name": _text(contents.get(NAME, {}).get("name")),
                "canonical_alias": _text(contents.get(CANONICAL_ALIAS, {}).get("alias")),
            }
        described = []
        for report in reports:
            assert report.room_id is not None
            body = _base(report) | {"room_id": report.room_id} | names[report.room_id]
            if kind is EVENT_REPORTS:
                body |= {
                    "event_id": report.event_id,
                    "sender": report.event_sender,
                    "score": report.score,
                }
            described.append(body)
        return described


def _base(report: Report) -> dict[str, Any]:
    return {
        "id": report.id,
        "received_ts": report.received_ts,
        "user_id": report.user_id,
        "reason": report.reason,
    }


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _audit_details(report: Report) -> dict[str, Any]:
    """What the deleted report was about and who filed it (its reason stays out of the
    log: it is the reporter's words, possibly quoting what they reported)."""
    details: dict[str, Any] = {"reporter": report.user_id}
    for field in ("room_id", "event_id", "target_user_id"):
        value = getattr(report, field)
        if value is not None:
            details[field] = value
    return details
