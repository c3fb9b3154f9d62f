"""The admin API's background tasks over real HTTP on both engines: the synchronous (v1)
room delete, delete and purge statuses kept in the database across a restart (a task
running when the server stopped is failed), and Synapse's background updates and
scheduled tasks endpoints answering from those tasks."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task

from homeserver.errors import Codes, MatrixError
from tests.admin_helpers import ADMIN, q
from tests.harness import SERVER_NAME, on_both_engines
from tests.test_admin_rooms import RoomAdminTestCase

UNKNOWN_ROOM = f"!nosuchroom:{SERVER_NAME}"

NEW_PATHS: list[tuple[str, str, Any]] = [
    ("DELETE", f"{ADMIN}/v1/rooms/{q(UNKNOWN_ROOM)}", {}),
    ("GET", f"{ADMIN}/v1/background_updates/status", None),
    ("GET", f"{ADMIN}/v1/background_updates/enabled", None),
    ("POST", f"{ADMIN}/v1/background_updates/enabled", {"enabled": False}),
    ("POST", f"{ADMIN}/v1/background_updates/start_job", {"job_name": "regenerate_directory"}),
    ("GET", f"{ADMIN}/v1/scheduled_tasks", None),
]


class TaskTestCase(RoomAdminTestCase):
    async def setUp(self):
        await super().setUp()
        self.admin = await self.make_admin()
        self.alice = await self.user("alice")
        self.room_id = await self.create_room(
            self.alice, name="Doomed", visibility="public", room_alias_name="doomed"
        )
        for _ in range(5):
            await self.send(self.alice, self.room_id)

    async def restart(self) -> None:
        """Stop the server and start another on the same database (tokens are in the
        database: the users' sessions carry on)."""
        await self.restart_server()

    async def sleep(self) -> None:
        await task.deferLater(reactor, 0.02, lambda: None)

    async def count(self, table: str, room_id: str) -> int:
        row = await self.hs.db.run_interaction(
            "count",
            lambda txn: txn.select_one(
                f"SELECT COUNT(*) FROM {table} WHERE room_id = ?", (room_id,)
            ),
        )
        return int(row[0])

    async def delete_v2(self, body: Any = None) -> str:
        r = await self.admin_call(
            self.admin, "DELETE", f"/v2/rooms/{q(self.room_id)}", {} if body is None else body
        )
        self.assertEqual(r.code, 200, r)
        return r.json["delete_id"]


@on_both_engines
class AccessTests(TaskTestCase):
    async def test_no_token_is_401_and_non_admins_get_403(self):
        for method, path, body in NEW_PATHS:
            self.assertError(await self.request(method, path, body), 401, "M_MISSING_TOKEN")
            r = await self.request(method, path, body, token=self.alice.token)
            self.assertError(r, 403, "M_FORBIDDEN")
        # Nothing was paused by the refused request.
        self.assertTrue(self.hs.admin_tasks.enabled)


@on_both_engines
class SynchronousDeleteTests(TaskTestCase):
    async def test_answers_when_done(self):
        r = await self.admin_call(self.admin, "DELETE", f"/v1/rooms/{q(self.room_id)}", {})
        self.assertEqual(r.code, 200, r)
        self.assertEqual(
            r.json,
            {
                "kicked_users": [self.alice.user_id],
                "failed_to_kick_users": [],
                "local_aliases": [f"#doomed:{SERVER_NAME}"],
                "new_room_id": None,
            },
        )
        r = await self.admin_get(self.admin, f"/v1/rooms/{q(self.room_id)}")
        self.assertError(r, 404, "M_NOT_FOUND")
        # Recorded like a v2 delete.
        r = await self.admin_get(self.admin, f"/v2/rooms/{q(self.room_id)}/delete_status")
        (task,) = r.json["results"]
        self.assertEqual(task["status"], "complete")

    async def test_unknown_rooms_are_not_found_unless_blocked(self):
        r = await self.admin_call(self.admin, "DELETE", f"/v1/rooms/{q(UNKNOWN_ROOM)}", {})
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.admin_call(
            self.admin, "DELETE", f"/v1/rooms/{q(UNKNOWN_ROOM)}", {"block": True}
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["kicked_users"], [])
        self.assertEqual(await self.hs.room_admin_store.get_block(UNKNOWN_ROOM), self.admin.user_id)

    async def test_a_failed_delete_is_the_requests_error(self):
        # A local user still joined after the kicks, without force_purge: refused.
        self.patch(self.hs.membership, "leave", _refuse_leave)
        r = await self.admin_call(self.admin, "DELETE", f"/v1/rooms/{q(self.room_id)}", {})
        self.assertError(r, 400, "M_UNKNOWN")
        self.assertEqual(await self.membership_of(self.room_id, self.alice), "join")

    async def test_a_room_mid_delete_cannot_be_deleted_again(self):
        release = self.hold_purge_start()
        delete_id = await self.delete_v2()
        r = await self.admin_call(self.admin, "DELETE", f"/v1/rooms/{q(self.room_id)}", {})
        self.assertError(r, 400, "M_UNKNOWN")
        release.callback(None)
        status = await self.wait_for_delete(self.admin, delete_id)
        self.assertEqual(status["status"], "complete")

    async def test_bad_bodies_are_refused(self):
        path = f"/v1/rooms/{q(self.room_id)}"
        for body in (None, [], {"block": "yes"}, {"new_room_user_id": "@x:elsewhere.example"}):
            r = await self.admin_call(self.admin, "DELETE", path, body)
            self.assertEqual(r.code, 400, (body, r))
        r = await self.admin_call(self.admin, "DELETE", f"/v1/rooms/{q('not-a-room')}", {})
        self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertEqual(await self.membership_of(self.room_id, self.alice), "join")


async def _refuse_leave(*args: Any, **kwargs: Any) -> None:
    raise MatrixError(403, Codes.FORBIDDEN, "not now")


@on_both_engines
class RestartTests(TaskTestCase):
    async def test_statuses_survive_a_restart(self):
        delete_id = await self.delete_v2({"purge": False})
        done = await self.wait_for_delete(self.admin, delete_id)
        self.assertEqual(done["status"], "complete")
        other = await self.create_room(self.alice)
        for _ in range(3):
            last = (await self.send(self.alice, other)).json["event_id"]
        r = await self.admin_call(
            self.admin, "POST", f"/v1/purge_history/{q(other)}/{q(last)}",
            {"delete_local_events": True},
        )
        purge_id = r.json["purge_id"]
        for _ in range(300):
            r = await self.admin_get(self.admin, f"/v1/purge_history_status/{purge_id}")
            if r.json["status"] != "active":
                break
            await self.sleep()
        self.assertEqual(r.json, {"status": "complete"})
        await self.restart()
        r = await self.admin_get(self.admin, f"/v2/rooms/delete_status/{delete_id}")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, done)
        r = await self.admin_get(self.admin, f"/v1/purge_history_status/{purge_id}")
        self.assertEqual((r.code, r.json), (200, {"status": "complete"}))

    async def test_a_task_running_at_a_stop_is_failed_at_the_next_start(self):
        self.hold_purge_start()  # never released: the server stops mid-delete
        delete_id = await self.delete_v2()
        for _ in range(300):
            r = await self.admin_get(self.admin, f"/v2/rooms/delete_status/{delete_id}")
            if r.json["shutdown_room"]["kicked_users"]:
                break
            await self.sleep()
        self.assertEqual(r.json["status"], "active")
        await self.restart()
        r = await self.admin_get(self.admin, f"/v2/rooms/delete_status/{delete_id}")
        self.assertEqual(r.json["status"], "failed")
        self.assertIn("run it again", r.json["error"])
        # What was done before the stop is still told.
        self.assertEqual(r.json["shutdown_room"]["kicked_users"], [self.alice.user_id])
        # The room is not busy any more: it can be deleted again, to the end.
        status = await self.wait_for_delete(self.admin, await self.delete_v2())
        self.assertEqual(status["status"], "complete")


    async def test_a_purge_begun_before_a_stop_is_finished_at_the_next_start(self):
        # Held after the room's row is gone, before any event is deleted.
        store = self.hs.room_admin_store
        reached: defer.Deferred[None] = defer.Deferred()

        async def held(room_id: str, limit: int = 0) -> list[str]:
            reached.callback(None)
            await defer.Deferred()  # never: the server stops here
            return []

        self.patch(store, "purge_event_batch", held)
        delete_id = await self.delete_v2()
        await reached
        self.assertGreater(await self.count("events", self.room_id), 0)
        await self.restart()
        status = await self.wait_for_delete(self.admin, delete_id)
        self.assertEqual(status["status"], "complete", status)
        self.assertEqual(status["shutdown_room"]["kicked_users"], [self.alice.user_id])
        for table in ("events", "current_state_events", "room_memberships", "state_groups"):
            self.assertEqual(await self.count(table, self.room_id), 0, table)


@on_both_engines
class BackgroundUpdatesTests(TaskTestCase):
    async def status(self) -> dict[str, Any]:
        r = await self.admin_get(self.admin, "/v1/background_updates/status")
        self.assertEqual(r.code, 200, r)
        return r.json

    async def set_enabled(self, enabled: Any) -> Any:
        return await self.admin_call(
            self.admin, "POST", "/v1/background_updates/enabled", {"enabled": enabled}
        )

    async def test_idle(self):
        self.assertEqual(await self.status(), {"enabled": True, "current_updates": {}})
        r = await self.admin_get(self.admin, "/v1/background_updates/enabled")
        self.assertEqual(r.json, {"enabled": True})

    async def test_a_paused_delete_waits_and_is_reported(self):
        from storage.stores import room_admin

        self.patch(room_admin, "PURGE_BATCH", 3)
        store = self.hs.room_admin_store
        original = store.purge_event_batch
        calls = []

        async def pausing(room_id: str, limit: int = 3) -> list[str]:
            found = await original(room_id, 3)
            calls.append(len(found))
            if len(calls) == 2:
                # As if an admin paused the tasks now: the loop stops before the next batch.
                r = await self.set_enabled(False)
                self.assertEqual(r.json, {"enabled": False})
            return found

        self.patch(store, "purge_event_batch", pausing)
        delete_id = await self.delete_v2()
        for _ in range(300):
            status = await self.status()
            if status["current_updates"].get("master", {}).get("total_item_count") == 6:
                break
            await self.sleep()
        self.assertEqual(status["enabled"], False)
        update = status["current_updates"]["master"]
        self.assertEqual(update["name"], f"shutdown_and_purge_room {self.room_id}")
        self.assertEqual(update["total_item_count"], 6)
        self.assertIsInstance(update["total_duration_ms"], float)
        self.assertIsInstance(update["average_items_per_ms"], float)
        await self.sleep()
        self.assertEqual(len(calls), 2)  # paused: no batch since
        r = await self.admin_get(self.admin, f"/v2/rooms/delete_status/{delete_id}")
        self.assertEqual(r.json["status"], "active")
        self.assertEqual((await self.set_enabled(True)).json, {"enabled": True})
        done = await self.wait_for_delete(self.admin, delete_id)
        self.assertEqual(done["status"], "complete")
        self.assertGreater(len(calls), 2)
        self.assertEqual(await self.status(), {"enabled": True, "current_updates": {}})
        actions = [e.action for e in await self.audit("admin_tasks")]
        self.assertEqual(actions, ["background_updates_enabled"] * 2)

    async def test_start_job(self):
        path = "/v1/background_updates/start_job"
        for name in ("populate_stats_process_rooms", "regenerate_directory", "event_resign"):
            r = await self.admin_call(self.admin, "POST", path, {"job_name": name})
            self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.admin_call(self.admin, "POST", path, {"job_name": "nonsense"})
        self.assertError(r, 400, "M_UNKNOWN")
        r = await self.admin_call(self.admin, "POST", path, {})
        self.assertError(r, 400, "M_MISSING_PARAM")
        r = await self.admin_call(self.admin, "POST", path, {"job_name": 5})
        self.assertError(r, 400, "M_BAD_JSON")

    async def test_bad_enabled_bodies(self):
        for body in ("no", 1, None):
            r = await self.set_enabled(body)
            self.assertEqual(r.code, 400, (body, r))
        r = await self.admin_call(self.admin, "POST", "/v1/background_updates/enabled", [])
        self.assertEqual(r.code, 400, r)
        self.assertTrue(self.hs.admin_tasks.enabled)


@on_both_engines
class ScheduledTasksTests(TaskTestCase):
    async def test_lists_deletes_and_purges(self):
        other = await self.create_room(self.alice)
        last = (await self.send(self.alice, other)).json["event_id"]
        r = await self.admin_call(
            self.admin, "POST", f"/v1/purge_history/{q(other)}/{q(last)}", {}
        )
        purge_id = r.json["purge_id"]
        delete_id = await self.delete_v2({"purge": False})
        await self.wait_for_delete(self.admin, delete_id)
        r = await self.admin_get(self.admin, "/v1/scheduled_tasks")
        self.assertEqual(r.code, 200, r)
        by_id = {t["id"]: t for t in r.json["scheduled_tasks"]}
        self.assertEqual(set(by_id), {purge_id, delete_id})
        delete = by_id[delete_id]
        self.assertEqual(
            (delete["action"], delete["resource_id"], delete["status"], delete["error"]),
            ("shutdown_and_purge_room", self.room_id, "complete", None),
        )
        self.assertEqual(delete["result"]["kicked_users"], [self.alice.user_id])
        self.assertIsInstance(delete["timestamp_ms"], int)
        self.assertEqual(by_id[purge_id]["action"], "purge_history")
        # Filters.
        r = await self.admin_get(self.admin, "/v1/scheduled_tasks", action_name="purge_history")
        self.assertEqual([t["id"] for t in r.json["scheduled_tasks"]], [purge_id])
        r = await self.admin_get(self.admin, "/v1/scheduled_tasks", resource_id=self.room_id)
        self.assertEqual([t["id"] for t in r.json["scheduled_tasks"]], [delete_id])
        r = await self.admin_get(self.admin, "/v1/scheduled_tasks", status="failed")
        self.assertEqual(r.json["scheduled_tasks"], [])
        r = await self.admin_get(self.admin, "/v1/scheduled_tasks", max_timestamp=0)
        self.assertEqual(r.json["scheduled_tasks"], [])

    async def test_bad_parameters(self):
        for params in ({"status": "sleeping"}, {"max_timestamp": "later"}):
            r = await self.admin_get(self.admin, "/v1/scheduled_tasks", **params)
            self.assertError(r, 400, "M_INVALID_PARAM")
