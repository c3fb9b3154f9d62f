"""The admin API for federation destinations (Synapse's `/_synapse/admin/v1/federation/
destinations...`) and the server's version, over real HTTP on both engines."""

from __future__ import annotations

from homeserver import __version__
from storage.stores.federation_queue import RetryState
from tests.admin_helpers import ADMIN, AdminTestCase, q
from tests.harness import on_both_engines

DESTINATIONS = "/v1/federation/destinations"


@on_both_engines
class AdminFederationTests(AdminTestCase):
    async def record(self) -> None:
        """Three destinations: one healthy, two backing off since different times."""
        store = self.hs.federation_queue_store
        await store.set_retry_state("b.example", RetryState(0, 0, None))
        await store.set_retry_state("a.example", RetryState(5_000, 60_000, 1_000))
        await store.set_retry_state("c.example", RetryState(9_000, 10_000, 2_000))

    async def test_non_admins_are_refused(self):
        await self.record()
        mallory = await self.user("mallory")
        paths = [
            ("GET", DESTINATIONS),
            ("GET", f"{DESTINATIONS}/a.example"),
            ("POST", f"{DESTINATIONS}/a.example/reset_connection"),
            ("GET", f"{DESTINATIONS}/a.example/rooms"),
        ]
        for method, path in paths:
            self.assertError(await self.request(method, ADMIN + path, {}), 401, "M_MISSING_TOKEN")
            r = await self.request(method, ADMIN + path, {}, token=mallory.token)
            self.assertError(r, 403, "M_FORBIDDEN")
        state = await self.hs.federation_queue_store.get_retry_state("a.example")
        self.assertEqual(state, RetryState(5_000, 60_000, 1_000))

    async def test_list_orders_and_pages(self):
        await self.record()
        admin = await self.make_admin()
        r = await self.admin_get(admin, DESTINATIONS)
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["total"], 3)
        self.assertNotIn("next_token", r.json)
        self.assertEqual(
            r.json["destinations"][0],
            {"destination": "a.example", "retry_last_ts": 5_000, "retry_interval": 60_000,
             "failure_ts": 1_000, "last_successful_stream_ordering": None},
        )
        names = [d["destination"] for d in r.json["destinations"]]
        self.assertEqual(names, ["a.example", "b.example", "c.example"])

        async def order(**params: str) -> list[str]:
            r = await self.admin_get(admin, DESTINATIONS, **params)
            self.assertEqual(r.code, 200, r)
            return [d["destination"] for d in r.json["destinations"]]

        # A healthy destination's null failure_ts sorts first, on both engines.
        self.assertEqual(await order(order_by="failure_ts"), ["b.example", "a.example", "c.example"])
        self.assertEqual(
            await order(order_by="retry_interval", dir="b"), ["a.example", "c.example", "b.example"]
        )
        r = await self.admin_get(admin, DESTINATIONS, limit="2")
        self.assertEqual(r.json["next_token"], "2")
        r = await self.admin_get(admin, DESTINATIONS, limit="2", **{"from": "2"})
        self.assertEqual([d["destination"] for d in r.json["destinations"]], ["c.example"])
        self.assertNotIn("next_token", r.json)

    async def test_bad_parameters_are_refused(self):
        admin = await self.make_admin()
        for params in ({"from": "-1"}, {"from": "x"}, {"limit": "0"}, {"order_by": "name"},
                       {"dir": "up"}):
            r = await self.admin_get(admin, DESTINATIONS, **params)
            self.assertError(r, 400, "M_INVALID_PARAM")

    async def test_details_and_unknown_destinations(self):
        await self.record()
        admin = await self.make_admin()
        r = await self.admin_get(admin, f"{DESTINATIONS}/c.example")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["retry_interval"], 10_000)
        r = await self.admin_get(admin, f"{DESTINATIONS}/{q('nowhere.example')}")
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.admin_call(admin, "POST", f"{DESTINATIONS}/nowhere.example/reset_connection", {})
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_destination_rooms(self):
        await self.record()
        admin = await self.make_admin()
        # Memberships as federation would leave them: only joined users of a.example count,
        # each room once; ba.example and a.example.org are other servers.
        memberships = [
            ("!r1:x", "@u:a.example", "join"),
            ("!r2:x", "@u:a.example", "join"),
            ("!r2:x", "@v:a.example", "join"),
            ("!r3:x", "@u:a.example", "leave"),
            ("!r4:x", "@u:ba.example", "join"),
            ("!r5:x", "@u:a.example.org", "join"),
        ]
        await self.hs.db.run_interaction(
            "test_memberships",
            lambda txn: [
                txn.execute(
                    "INSERT INTO room_memberships"
                    " (room_id, user_id, event_id, membership, stream_ordering)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (room_id, user_id, f"$e{n}", membership, n),
                )
                for n, (room_id, user_id, membership) in enumerate(memberships)
            ],
        )
        path = f"{DESTINATIONS}/a.example/rooms"
        r = await self.admin_get(admin, path)
        self.assertEqual((r.code, r.json["total"]), (200, 2), r)
        self.assertEqual(
            r.json["rooms"],
            [{"room_id": "!r1:x", "stream_ordering": None},
             {"room_id": "!r2:x", "stream_ordering": None}],
        )
        self.assertNotIn("next_token", r.json)
        r = await self.admin_get(admin, path, dir="b", limit="1")
        self.assertEqual(([x["room_id"] for x in r.json["rooms"]], r.json["next_token"]),
                         (["!r2:x"], "1"))
        r = await self.admin_get(admin, f"{DESTINATIONS}/b.example/rooms")
        self.assertEqual((r.json["rooms"], r.json["total"]), ([], 0))
        self.assertError(await self.admin_get(admin, f"{DESTINATIONS}/nowhere.example/rooms"),
                         404, "M_NOT_FOUND")
        self.assertError(await self.admin_get(admin, path, limit="0"), 400, "M_INVALID_PARAM")

    async def test_reset_connection_ends_a_backoff_and_is_audited(self):
        await self.record()
        admin = await self.make_admin()
        r = await self.admin_call(admin, "POST", f"{DESTINATIONS}/a.example/reset_connection", {})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {})
        state = await self.hs.federation_queue_store.get_retry_state("a.example")
        self.assertEqual((state.retry_last_ts, state.retry_interval_ms), (0, 0))
        self.assertEqual([e.action for e in await self.audit("a.example")], ["reset_destination"])
        # A destination not backing off has nothing to reset (as Synapse answers).
        r = await self.admin_call(admin, "POST", f"{DESTINATIONS}/b.example/reset_connection", {})
        self.assertError(r, 400, "M_UNKNOWN")
        r = await self.admin_call(admin, "POST", f"{DESTINATIONS}/c.example/reset_connection", "x")
        self.assertEqual(r.code, 400, r)

    async def test_server_version(self):
        admin = await self.make_admin()
        r = await self.admin_get(admin, "/v1/server_version")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {"server_version": __version__})
        # Public, as Synapse's (federation's /version says the same to anyone).
        r = await self.request("GET", ADMIN + "/v1/server_version")
        self.assertEqual((r.code, r.json), (200, {"server_version": __version__}))
