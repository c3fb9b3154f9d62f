"""Abuse reports over real HTTP on both engines: the client API's event, room and user
reports (who may report what, the bad input each refuses, the rate limit, the user report
that never says whether a user exists), and the admin API's `event_reports` (checked
against the examples in Synapse's docs/admin_api/event_reports.md), `user_reports`
(Synapse's JSON) and `room_reports` (Heddle's): lists, pages, filters, one report, deleting
one (audited), and a room's purge taking its reports with it."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

from twisted.internet import threads

from homeserver.admin import cli as admin_cli
from homeserver.cli import _parser
from storage.stores.reports import EVENT_REPORTS, ROOM_REPORTS, USER_REPORTS, Report, ReportKind
from tests.admin_helpers import ADMIN, AdminTestCase, User, q
from tests.harness import SERVER_NAME, on_both_engines
from tests.test_admin_rooms import RoomAdminTestCase

API = "/_matrix/client/v3"
SYNAPSE_EVENT_REPORT_KEYS = {
    "event_id",
    "id",
    "reason",
    "score",
    "received_ts",
    "canonical_alias",
    "room_id",
    "name",
    "sender",
    "user_id",
}
# Synapse's `/_synapse/admin/v1/user_reports` answers (synapse/rest/admin/user_reports.py).
SYNAPSE_USER_REPORT_KEYS = {"id", "received_ts", "target_user_id", "user_id", "reason"}
ROOM_REPORT_KEYS = {"id", "received_ts", "room_id", "user_id", "reason", "name", "canonical_alias"}


class ReportTestCase(AdminTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.room_id = await self.create_room(
            self.alice, name="Town square", room_alias_name="square", preset="public_chat"
        )
        self.assertEqual((await self.join(self.bob, self.room_id)).code, 200)
        r = await self.send(self.alice, self.room_id, {"msgtype": "m.text", "body": "rude"})
        self.event_id = r.json["event_id"]

    async def report_event(
        self, user: User | None, room_id: str, event_id: str, body: Any = None
    ) -> Any:
        return await self.request(
            "POST",
            f"{API}/rooms/{q(room_id)}/report/{q(event_id)}",
            {} if body is None else body,
            token=user.token if user else None,
        )

    async def report_room(self, user: User | None, room_id: str, body: Any) -> Any:
        return await self.request(
            "POST", f"{API}/rooms/{q(room_id)}/report", body, token=user.token if user else None
        )

    async def report_user(self, user: User | None, user_id: str, body: Any) -> Any:
        return await self.request(
            "POST", f"{API}/users/{q(user_id)}/report", body, token=user.token if user else None
        )

    async def stored(self, kind: ReportKind) -> list[Report]:
        reports, _ = await self.hs.report_store.list_reports(kind, 0, 1000, False, {})
        return reports


@on_both_engines
class ClientReportingTests(ReportTestCase):
    async def test_joined_member_reports_an_event(self):
        before = self.hs.clock.time_msec()
        r = await self.report_event(
            self.bob, self.room_id, self.event_id, {"reason": "this makes me sad", "score": -100}
        )
        self.assertEqual((r.code, r.json), (200, {}))
        (report,) = await self.stored(EVENT_REPORTS)
        self.assertEqual(
            (report.room_id, report.event_id, report.event_sender, report.user_id),
            (self.room_id, self.event_id, self.alice.user_id, self.bob.user_id),
        )
        self.assertEqual((report.reason, report.score), ("this makes me sad", -100))
        self.assertGreaterEqual(report.received_ts, before)

    async def test_event_report_reason_and_score_are_optional(self):
        r = await self.report_event(self.bob, self.room_id, self.event_id, {})
        self.assertEqual(r.code, 200, r)
        (report,) = await self.stored(EVENT_REPORTS)
        self.assertEqual((report.reason, report.score), (None, None))

    async def test_event_report_bad_reason_or_score(self):
        for body in (
            {"reason": 5},
            {"reason": ["x"]},
            {"reason": "x" * 1001},
            {"score": "-100"},
            {"score": -1.5},
            {"score": True},
            {"score": 1},
            {"score": -101},
            {"score": 2**70},
        ):
            r = await self.report_event(self.bob, self.room_id, self.event_id, body)
            self.assertError(r, 400, "M_BAD_JSON")
        r = await self.report_event(self.bob, self.room_id, self.event_id, ["not", "an object"])
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request(
            "POST",
            f"{API}/rooms/{q(self.room_id)}/report/{q(self.event_id)}",
            raw=b"{not json",
            token=self.bob.token,
        )
        self.assertError(r, 400, "M_NOT_JSON")
        self.assertEqual(await self.stored(EVENT_REPORTS), [])

    async def test_reporting_needs_a_token(self):
        r = await self.report_event(None, self.room_id, self.event_id)
        self.assertError(r, 401, "M_MISSING_TOKEN")
        self.assertError(
            await self.report_room(None, self.room_id, {"reason": ""}), 401, "M_MISSING_TOKEN"
        )
        self.assertError(
            await self.report_user(None, self.alice.user_id, {"reason": ""}), 401, "M_MISSING_TOKEN"
        )

    async def test_only_joined_members_report_events(self):
        carol = await self.user("carol")
        # The room is public and shared history: carol could read the event, but the spec
        # wants reporters joined.
        r = await self.report_event(carol, self.room_id, self.event_id)
        body = self.assertError(r, 404, "M_NOT_FOUND")
        self.assertEqual(await self.stored(EVENT_REPORTS), [])
        # Nor once they have left.
        self.assertEqual((await self.membership_action(self.bob, self.room_id, "leave")).code, 200)
        r = await self.report_event(self.bob, self.room_id, self.event_id)
        self.assertEqual(self.assertError(r, 404, "M_NOT_FOUND"), body)
        self.assertEqual(await self.stored(EVENT_REPORTS), [])

    async def test_an_event_the_reporter_cannot_see(self):
        room_id = await self.create_room(
            self.alice,
            preset="public_chat",
            initial_state=[
                {
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": {"history_visibility": "joined"},
                }
            ],
        )
        r = await self.send(self.alice, room_id, {"msgtype": "m.text", "body": "before bob"})
        hidden = r.json["event_id"]
        self.assertEqual((await self.join(self.bob, room_id)).code, 200)
        r = await self.send(self.alice, room_id, {"msgtype": "m.text", "body": "after bob"})
        seen = r.json["event_id"]
        self.assertError(await self.report_event(self.bob, room_id, hidden), 404, "M_NOT_FOUND")
        self.assertEqual((await self.report_event(self.bob, room_id, seen)).code, 200)
        self.assertEqual([r.event_id for r in await self.stored(EVENT_REPORTS)], [seen])

    async def test_unknown_events_and_rooms(self):
        other_room = await self.create_room(self.bob)
        r = await self.send(self.bob, other_room)
        elsewhere = r.json["event_id"]
        for room_id, event_id in (
            (self.room_id, "$nosuchevent"),
            # An event of another room, named as if it were in this one.
            (self.room_id, elsewhere),
            (f"!nosuchroom:{SERVER_NAME}", self.event_id),
        ):
            r = await self.report_event(self.bob, room_id, event_id)
            self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.report_event(self.bob, "notaroom", self.event_id)
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.report_event(self.bob, self.room_id, "notanevent")
        self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertEqual(await self.stored(EVENT_REPORTS), [])

    async def test_a_redacted_event_cannot_be_reported(self):
        r = await self.request(
            "PUT",
            f"{API}/rooms/{q(self.room_id)}/redact/{q(self.event_id)}/t1",
            {},
            token=self.alice.token,
        )
        self.assertEqual(r.code, 200, r)
        r = await self.report_event(self.bob, self.room_id, self.event_id)
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_room_reports_need_no_membership(self):
        carol = await self.user("carol")
        r = await self.report_room(carol, self.room_id, {"reason": "spam everywhere"})
        self.assertEqual((r.code, r.json), (200, {}))
        r = await self.report_room(self.bob, self.room_id, {"reason": ""})
        self.assertEqual(r.code, 200, r)
        reports = await self.stored(ROOM_REPORTS)
        self.assertEqual(
            [(x.room_id, x.user_id, x.reason) for x in reports],
            [
                (self.room_id, carol.user_id, "spam everywhere"),
                (self.room_id, self.bob.user_id, ""),
            ],
        )

    async def test_room_report_bad_input(self):
        for body in ({}, {"reason": None}, {"reason": 3}, {"reason": "x" * 1001}):
            self.assertError(
                await self.report_room(self.bob, self.room_id, body), 400, "M_BAD_JSON"
            )
        r = await self.report_room(self.bob, f"!nosuchroom:{SERVER_NAME}", {"reason": "x"})
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.report_room(self.bob, "#alias:" + SERVER_NAME, {"reason": "x"})
        self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertEqual(await self.stored(ROOM_REPORTS), [])

    async def test_user_reports(self):
        r = await self.report_user(self.bob, self.alice.user_id, {"reason": "harasses me"})
        self.assertEqual((r.code, r.json), (200, {}))
        (report,) = await self.stored(USER_REPORTS)
        self.assertEqual(
            (report.target_user_id, report.user_id, report.reason),
            (self.alice.user_id, self.bob.user_id, "harasses me"),
        )

    async def test_reporting_a_user_never_says_whether_they_exist(self):
        existing = await self.report_user(self.bob, self.alice.user_id, {"reason": "x"})
        for target in (f"@nobody:{SERVER_NAME}", "@somebody:elsewhere.example"):
            r = await self.report_user(self.bob, target, {"reason": "x"})
            self.assertEqual((r.code, r.json), (existing.code, existing.json))
        # Only the report about a user this server's admins can act on is kept.
        self.assertEqual(
            [x.target_user_id for x in await self.stored(USER_REPORTS)], [self.alice.user_id]
        )

    async def test_user_report_bad_input(self):
        for body in ({}, {"reason": 1}, {"reason": "x" * 1001}):
            r = await self.report_user(self.bob, self.alice.user_id, body)
            self.assertError(r, 400, "M_BAD_JSON")
        for target in ("alice", "@", "@alice"):
            r = await self.report_user(self.bob, target, {"reason": "x"})
            self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertEqual(await self.stored(USER_REPORTS), [])


@on_both_engines
class ReportRateLimitTests(ReportTestCase):
    config_overrides = {
        "rate_limits": {
            "enabled": True,
            "reports_per_user": {"per_second": 0.001, "burst_count": 3},
            "registration_per_address": {"per_second": 100.0, "burst_count": 100},
        }
    }

    async def test_reports_are_rate_limited_per_user(self):
        self.assertEqual((await self.report_event(self.bob, self.room_id, self.event_id)).code, 200)
        self.assertEqual((await self.report_room(self.bob, self.room_id, {"reason": ""})).code, 200)
        # A report about nobody counts too, so the limit says nothing about who exists.
        r = await self.report_user(self.bob, f"@nobody:{SERVER_NAME}", {"reason": ""})
        self.assertEqual(r.code, 200, r)
        for r in (
            await self.report_user(self.bob, self.alice.user_id, {"reason": ""}),
            await self.report_user(self.bob, f"@nobody:{SERVER_NAME}", {"reason": ""}),
            await self.report_room(self.bob, self.room_id, {"reason": ""}),
            await self.report_event(self.bob, self.room_id, self.event_id),
        ):
            body = self.assertError(r, 429, "M_LIMIT_EXCEEDED")
            self.assertGreater(body["retry_after_ms"], 0)
        # Another user has their own allowance.
        r = await self.report_user(self.alice, self.bob.user_id, {"reason": ""})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(len(await self.stored(USER_REPORTS)), 1)


def report_paths(report_id: str) -> list[tuple[str, str]]:
    paths = []
    for table in ("event_reports", "room_reports", "user_reports"):
        paths += [
            ("GET", f"{ADMIN}/v1/{table}"),
            ("GET", f"{ADMIN}/v1/{table}/{report_id}"),
            ("DELETE", f"{ADMIN}/v1/{table}/{report_id}"),
        ]
    return paths


@on_both_engines
class AdminReportsTests(ReportTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.admin = await self.make_admin()

    async def file_event_reports(self, count: int) -> list[int]:
        for n in range(count):
            r = await self.report_event(
                self.bob, self.room_id, self.event_id, {"reason": f"r{n}", "score": -n}
            )
            self.assertEqual(r.code, 200, r)
        return [x.id for x in await self.stored(EVENT_REPORTS)]

    async def test_every_endpoint_needs_a_token(self):
        (report_id,) = await self.file_event_reports(1)
        for method, path in report_paths(str(report_id)):
            self.assertError(await self.request(method, path), 401, "M_MISSING_TOKEN")

    async def test_every_endpoint_refuses_non_admins(self):
        (report_id,) = await self.file_event_reports(1)
        # Also for IDs that do not exist or are not IDs: nothing is looked up first.
        for report in (str(report_id), "999999", "notanid"):
            for method, path in report_paths(report):
                r = await self.request(method, path, token=self.bob.token)
                self.assertError(r, 403, "M_FORBIDDEN")
        self.assertEqual(len(await self.stored(EVENT_REPORTS)), 1)

    async def test_event_reports_list_has_synapse_shape(self):
        (first, second) = await self.file_event_reports(2)
        r = await self.admin_get(self.admin, "/v1/event_reports")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(set(r.json), {"event_reports", "total"})
        self.assertEqual(r.json["total"], 2)
        # Newest first by default (Synapse's `dir=b`).
        newest, oldest = r.json["event_reports"]
        self.assertEqual((newest["id"], oldest["id"]), (second, first))
        self.assertEqual(set(newest), SYNAPSE_EVENT_REPORT_KEYS)
        self.assertEqual(
            {k: v for k, v in oldest.items() if k != "received_ts"},
            {
                "id": first,
                "event_id": self.event_id,
                "room_id": self.room_id,
                "name": "Town square",
                "canonical_alias": f"#square:{SERVER_NAME}",
                "sender": self.alice.user_id,
                "user_id": self.bob.user_id,
                "reason": "r0",
                "score": 0,
            },
        )
        self.assertIsInstance(oldest["received_ts"], int)

    async def test_event_reports_pages(self):
        ids = await self.file_event_reports(5)
        r = await self.admin_get(self.admin, "/v1/event_reports", limit=2)
        self.assertEqual([x["id"] for x in r.json["event_reports"]], ids[::-1][:2])
        self.assertEqual((r.json["next_token"], r.json["total"]), (2, 5))
        self.assertIsInstance(r.json["next_token"], int)
        r = await self.admin_get(self.admin, "/v1/event_reports", limit=2, **{"from": 4})
        self.assertEqual([x["id"] for x in r.json["event_reports"]], ids[:1])
        self.assertNotIn("next_token", r.json)
        r = await self.admin_get(self.admin, "/v1/event_reports", dir="f", limit=3)
        self.assertEqual([x["id"] for x in r.json["event_reports"]], ids[:3])
        self.assertEqual(r.json["next_token"], 3)
        # Past the end: an empty page, the total, no next token.
        r = await self.admin_get(self.admin, "/v1/event_reports", **{"from": 50})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"event_reports": [], "total": 5})

    async def test_list_bad_parameters(self):
        await self.file_event_reports(1)
        for table in ("event_reports", "room_reports", "user_reports"):
            for params in (
                {"from": -1},
                {"from": "x"},
                {"limit": 0},
                {"limit": -5},
                {"limit": "many"},
                {"dir": "sideways"},
            ):
                r = await self.admin_get(self.admin, f"/v1/{table}", **params)
                self.assertError(r, 400, "M_INVALID_PARAM")

    async def test_event_reports_filters(self):
        carol = await self.user("carol")
        other_room = await self.create_room(carol, preset="public_chat")
        self.assertEqual((await self.join(self.bob, other_room)).code, 200)
        r = await self.send(carol, other_room)
        carols_event = r.json["event_id"]
        await self.file_event_reports(2)
        self.assertEqual((await self.report_event(self.bob, other_room, carols_event)).code, 200)
        self.assertEqual((await self.report_event(carol, other_room, carols_event)).code, 200)

        async def listed(**params: str) -> tuple[list[tuple[str, str, str]], int]:
            r = await self.admin_get(self.admin, "/v1/event_reports", dir="f", **params)
            self.assertEqual(r.code, 200, r)
            rows = [(x["user_id"], x["room_id"], x["sender"]) for x in r.json["event_reports"]]
            return rows, r.json["total"]

        bob, alice = self.bob.user_id, self.alice.user_id
        self.assertEqual(
            await listed(user_id=carol.user_id), ([(carol.user_id, other_room, carol.user_id)], 1)
        )
        self.assertEqual(
            await listed(room_id=self.room_id),
            ([(bob, self.room_id, alice), (bob, self.room_id, alice)], 2),
        )
        self.assertEqual(
            await listed(event_sender_user_id=carol.user_id, user_id=bob),
            ([(bob, other_room, carol.user_id)], 1),
        )
        self.assertEqual(await listed(user_id=f"@nobody:{SERVER_NAME}"), ([], 0))

    async def test_one_event_report_with_the_event(self):
        (report_id,) = await self.file_event_reports(1)
        r = await self.admin_get(self.admin, f"/v1/event_reports/{report_id}")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(set(r.json), SYNAPSE_EVENT_REPORT_KEYS | {"event_json"})
        self.assertEqual((r.json["id"], r.json["event_id"]), (report_id, self.event_id))
        event = r.json["event_json"]
        # The event as stored: the PDU, with its hashes and signatures, as Synapse's example.
        for key in (
            "auth_events",
            "content",
            "depth",
            "hashes",
            "origin_server_ts",
            "prev_events",
            "room_id",
            "sender",
            "signatures",
            "type",
        ):
            self.assertIn(key, event)
        self.assertEqual(
            (event["content"]["body"], event["sender"], event["room_id"], event["type"]),
            ("rude", self.alice.user_id, self.room_id, "m.room.message"),
        )
        self.assertIn(SERVER_NAME, event["signatures"])

    async def test_unknown_and_malformed_report_ids(self):
        await self.file_event_reports(1)
        for table in ("event_reports", "room_reports", "user_reports"):
            for method in ("GET", "DELETE"):
                r = await self.admin_call(self.admin, method, f"/v1/{table}/424242")
                self.assertError(r, 404, "M_NOT_FOUND")
                r = await self.admin_call(self.admin, method, f"/v1/{table}/{'9' * 30}")
                self.assertError(r, 400, "M_INVALID_PARAM")
                for bad in ("abc", "-1", "1.5"):
                    r = await self.admin_call(self.admin, method, f"/v1/{table}/{bad}")
                    self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertEqual(len(await self.stored(EVENT_REPORTS)), 1)

    async def test_deleting_an_event_report(self):
        keep, gone = await self.file_event_reports(2)
        r = await self.admin_call(self.admin, "DELETE", f"/v1/event_reports/{gone}")
        self.assertEqual((r.code, r.json), (200, {}))
        r = await self.admin_get(self.admin, f"/v1/event_reports/{gone}")
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.admin_call(self.admin, "DELETE", f"/v1/event_reports/{gone}")
        self.assertError(r, 404, "M_NOT_FOUND")
        self.assertEqual([x.id for x in await self.stored(EVENT_REPORTS)], [keep])
        (entry,) = await self.audit(f"event_report:{gone}")
        self.assertEqual(
            (entry.admin_user_id, entry.action), (self.admin.user_id, "delete_event_report")
        )
        self.assertEqual(
            entry.details,
            {"reporter": self.bob.user_id, "room_id": self.room_id, "event_id": self.event_id},
        )

    async def test_room_reports(self):
        carol = await self.user("carol")
        for user, reason in ((self.bob, "one"), (carol, "two")):
            r = await self.report_room(user, self.room_id, {"reason": reason})
            self.assertEqual(r.code, 200, r)
        r = await self.admin_get(self.admin, "/v1/room_reports")
        self.assertEqual(set(r.json), {"room_reports", "total"})
        newest, oldest = r.json["room_reports"]
        self.assertEqual(set(newest), ROOM_REPORT_KEYS)
        self.assertEqual(
            {k: v for k, v in oldest.items() if k not in ("id", "received_ts")},
            {
                "room_id": self.room_id,
                "user_id": self.bob.user_id,
                "reason": "one",
                "name": "Town square",
                "canonical_alias": f"#square:{SERVER_NAME}",
            },
        )
        r = await self.admin_get(self.admin, "/v1/room_reports", user_id=carol.user_id)
        self.assertEqual(
            ([x["reason"] for x in r.json["room_reports"]], r.json["total"]), (["two"], 1)
        )
        r = await self.admin_get(self.admin, f"/v1/room_reports/{oldest['id']}")
        self.assertEqual(r.json, oldest)
        r = await self.admin_call(self.admin, "DELETE", f"/v1/room_reports/{oldest['id']}")
        self.assertEqual(r.code, 200, r)
        self.assertEqual([x.id for x in await self.stored(ROOM_REPORTS)], [newest["id"]])
        (entry,) = await self.audit(f"room_report:{oldest['id']}")
        self.assertEqual(entry.action, "delete_room_report")

    async def test_user_reports_have_synapse_shape(self):
        carol = await self.user("carol")
        for user, target in ((self.bob, self.alice), (carol, self.alice), (self.bob, carol)):
            r = await self.report_user(user, target.user_id, {"reason": f"about {target.user_id}"})
            self.assertEqual(r.code, 200, r)
        r = await self.admin_get(self.admin, "/v1/user_reports", dir="f", limit=2)
        self.assertEqual(set(r.json), {"user_reports", "total", "next_token"})
        self.assertEqual((r.json["total"], r.json["next_token"]), (3, 2))
        first = r.json["user_reports"][0]
        self.assertEqual(set(first), SYNAPSE_USER_REPORT_KEYS)
        self.assertEqual(
            (first["user_id"], first["target_user_id"], first["reason"]),
            (self.bob.user_id, self.alice.user_id, f"about {self.alice.user_id}"),
        )
        r = await self.admin_get(self.admin, "/v1/user_reports", target_user_id=self.alice.user_id)
        self.assertEqual(r.json["total"], 2)
        r = await self.admin_get(
            self.admin, "/v1/user_reports", target_user_id=carol.user_id, user_id=self.bob.user_id
        )
        self.assertEqual([x["reason"] for x in r.json["user_reports"]], [f"about {carol.user_id}"])
        r = await self.admin_get(self.admin, f"/v1/user_reports/{first['id']}")
        self.assertEqual(r.json, first)
        r = await self.admin_call(self.admin, "DELETE", f"/v1/user_reports/{first['id']}")
        self.assertEqual(r.code, 200, r)
        self.assertError(
            await self.admin_get(self.admin, f"/v1/user_reports/{first['id']}"), 404, "M_NOT_FOUND"
        )
        (entry,) = await self.audit(f"user_report:{first['id']}")
        self.assertEqual(
            (entry.action, entry.details),
            (
                "delete_user_report",
                {"reporter": self.bob.user_id, "target_user_id": self.alice.user_id},
            ),
        )

    async def test_cli_lists_shows_and_deletes_reports(self):
        keep, gone = await self.file_event_reports(2)
        self.assertEqual(
            (await self.report_room(self.bob, self.room_id, {"reason": "r"})).code, 200
        )

        async def heddle_admin(*argv: str) -> tuple[int, Any, str]:
            args = _parser().parse_args(
                ["admin", "--url", self.base_url, "--token", self.admin.token, *argv]
            )
            out, err = io.StringIO(), io.StringIO()

            def run() -> int:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    return admin_cli.run(args)

            status = await threads.deferToThread(run)
            return status, json.loads(out.getvalue()) if out.getvalue() else None, err.getvalue()

        status, listed, _ = await heddle_admin("reports", "list", "--limit", "1")
        self.assertEqual(status, 0)
        self.assertEqual(([x["id"] for x in listed["event_reports"]], listed["total"]), ([gone], 2))
        status, listed, _ = await heddle_admin("reports", "list", "--kind", "room")
        self.assertEqual([x["reason"] for x in listed["room_reports"]], ["r"])
        status, listed, _ = await heddle_admin(
            "reports",
            "list",
            "--dir",
            "f",
            "--room-id",
            self.room_id,
            "--user-id",
            self.bob.user_id,
        )
        self.assertEqual([x["id"] for x in listed["event_reports"]], [keep, gone])
        status, shown, _ = await heddle_admin("reports", "show", str(keep))
        self.assertEqual(
            (status, shown["id"], shown["event_json"]["content"]["body"]), (0, keep, "rude")
        )
        status, deleted, _ = await heddle_admin("reports", "delete", str(gone))
        self.assertEqual((status, deleted), (0, {}))
        self.assertEqual([x.id for x in await self.stored(EVENT_REPORTS)], [keep])
        status, _, err = await heddle_admin("reports", "show", str(gone))
        self.assertEqual(status, 1)
        self.assertIn("M_NOT_FOUND", err)
        status, _, err = await heddle_admin("reports", "show")
        self.assertEqual(status, 1)
        self.assertIn("report ID", err)
        status, _, err = await heddle_admin("reports", "list", "--kind", "user", "--room-id", "!x")
        self.assertEqual(status, 1)
        self.assertIn("--room-id", err)


@on_both_engines
class RoomPurgeDeletesReportsTests(RoomAdminTestCase, ReportTestCase):
    async def test_deleting_a_room_deletes_its_reports(self):
        admin = await self.make_admin()
        other_room = await self.create_room(self.alice, preset="public_chat")
        self.assertEqual((await self.join(self.bob, other_room)).code, 200)
        other_event = (await self.send(self.alice, other_room)).json["event_id"]
        for room_id, event_id in ((self.room_id, self.event_id), (other_room, other_event)):
            self.assertEqual((await self.report_event(self.bob, room_id, event_id)).code, 200)
            self.assertEqual((await self.report_room(self.bob, room_id, {"reason": ""})).code, 200)
        self.assertEqual(
            (await self.report_user(self.bob, self.alice.user_id, {"reason": ""})).code, 200
        )
        r = await self.admin_call(admin, "DELETE", f"/v2/rooms/{q(self.room_id)}", {})
        self.assertEqual(r.code, 200, r)
        status = await self.wait_for_delete(admin, r.json["delete_id"])
        self.assertEqual(status["status"], "complete", status)
        for table in ("event_reports", "room_reports"):
            r = await self.admin_get(admin, f"/v1/{table}")
            self.assertEqual(
                ([x["room_id"] for x in r.json[table]], r.json["total"]), ([other_room], 1)
            )
        # Reports about users are not the room's.
        self.assertEqual(len(await self.stored(USER_REPORTS)), 1)
