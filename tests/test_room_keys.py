"""Server-side key backups: /room_keys/version[/{version}] and
/room_keys/keys[/{roomId}[/{sessionId}]]?version=...

Spec: api/client-server/key_backup.yaml; client-server API "Server-side key backups".
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from twisted.internet import defer
from twisted.trial import unittest

from homeserver.e2e.room_keys import CURVE25519_AES_SHA2, should_replace
from storage.stores.room_keys import RoomKey
from tests.harness import on_both_engines
from tests.room_helpers import API, RoomTestCase, User, q

ROOM = "!room:test.heddle"
OTHER_ROOM = "!other:test.heddle"
AUTH_DATA = {
    "public_key": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo",
    "signatures": {"@alice:test.heddle": {"ed25519:DEVICE": "c2lnbmF0dXJl"}},
}


def key(
    first_message_index: int = 0,
    forwarded_count: int = 0,
    is_verified: bool = False,
    marker: str = "a",
) -> dict[str, Any]:
    """A KeyBackupData body; `marker` tells stored keys apart."""
    return {
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": is_verified,
        "session_data": {"ephemeral": "eph", "ciphertext": f"cipher-{marker}", "mac": "mac"},
    }


def keys_path(
    version: str | None, room_id: str | None = None, session_id: str | None = None
) -> str:
    path = f"{API}/room_keys/keys"
    if room_id is not None:
        path += f"/{q(room_id)}"
        if session_id is not None:
            path += f"/{q(session_id)}"
    if version is not None:
        path += f"?version={quote(version, safe='')}"
    return path


def version_path(version: str | None = None) -> str:
    return f"{API}/room_keys/version" + (f"/{q(version)}" if version is not None else "")


class RoomKeysTestCase(RoomTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")

    async def call(self, method: str, path: str, body: Any = None, user: User | None = None):
        return await self.request(method, path, body, token=(user or self.alice).token)

    async def create_version(self, user: User | None = None, auth_data: Any = None) -> str:
        r = await self.call(
            "POST",
            version_path(),
            {"algorithm": CURVE25519_AES_SHA2, "auth_data": auth_data or AUTH_DATA},
            user,
        )
        self.assertEqual(r.code, 200, r)
        self.assertIsInstance(r.json["version"], str)
        return r.json["version"]

    async def put_key(
        self,
        version: str,
        session_id: str,
        body: dict[str, Any],
        room_id: str = ROOM,
        user: User | None = None,
    ) -> dict[str, Any]:
        r = await self.call("PUT", keys_path(version, room_id, session_id), body, user)
        self.assertEqual(r.code, 200, r)
        return r.json

    async def get_key(self, version: str, session_id: str, room_id: str = ROOM) -> dict[str, Any]:
        r = await self.call("GET", keys_path(version, room_id, session_id))
        self.assertEqual(r.code, 200, r)
        return r.json

    async def stored_key_rows(self, user_id: str) -> int:
        """Rows in room_keys for the user, whatever their version (read past the API)."""
        row = await self.hs.db.run_interaction(
            "test_count",
            lambda txn: txn.select_one(
                "SELECT COUNT(*) FROM room_keys WHERE user_id = ?", (user_id,)
            ),
        )
        assert row is not None
        return int(row[0])


@on_both_engines
class BackupVersionTests(RoomKeysTestCase):
    async def test_no_backup_is_not_found(self):
        self.assertError(await self.call("GET", version_path()), 404, "M_NOT_FOUND")
        self.assertError(await self.call("GET", version_path("1")), 404, "M_NOT_FOUND")

    async def test_create_and_get_version(self):
        version = await self.create_version()
        self.assertEqual(version, "1")
        expected = {
            "algorithm": CURVE25519_AES_SHA2,
            "auth_data": AUTH_DATA,
            "count": 0,
            "version": "1",
        }
        for path in (version_path(), version_path("1")):
            r = await self.call("GET", path)
            self.assertEqual(r.code, 200, r)
            body = r.json
            self.assertIsInstance(body.pop("etag"), str)
            self.assertEqual(body, expected)

    async def test_versions_are_per_user_and_never_reused(self):
        self.assertEqual(await self.create_version(), "1")
        self.assertEqual(await self.create_version(), "2")
        r = await self.call("GET", version_path())
        self.assertEqual(r.json["version"], "2")
        # Deleting the current version makes the newest remaining one current again...
        self.assertEqual((await self.call("DELETE", version_path("2"))).code, 200)
        self.assertEqual((await self.call("GET", version_path())).json["version"], "1")
        # ...but its number is not handed out again.
        self.assertEqual(await self.create_version(), "3")
        for version in ("1", "3"):
            self.assertEqual((await self.call("DELETE", version_path(version))).code, 200)
        self.assertError(await self.call("GET", version_path()), 404, "M_NOT_FOUND")
        self.assertEqual(await self.create_version(), "4")
        # Bob's versions are numbered on their own.
        self.assertEqual(await self.create_version(self.bob), "1")

    async def test_old_version_stays_readable(self):
        await self.create_version()
        await self.create_version()
        r = await self.call("GET", version_path("1"))
        self.assertEqual((r.code, r.json["version"]), (200, "1"))

    async def test_bad_create_bodies(self):
        cases: list[tuple[Any, int, str]] = [
            ({"auth_data": AUTH_DATA}, 400, "M_BAD_JSON"),
            ({"algorithm": CURVE25519_AES_SHA2}, 400, "M_BAD_JSON"),
            ({"algorithm": 1, "auth_data": AUTH_DATA}, 400, "M_BAD_JSON"),
            ({"algorithm": CURVE25519_AES_SHA2, "auth_data": "abc"}, 400, "M_BAD_JSON"),
            ({"algorithm": CURVE25519_AES_SHA2, "auth_data": [AUTH_DATA]}, 400, "M_BAD_JSON"),
            ({"algorithm": CURVE25519_AES_SHA2, "auth_data": {}}, 400, "M_BAD_JSON"),
            ({"algorithm": CURVE25519_AES_SHA2, "auth_data": {"public_key": 5}}, 400, "M_BAD_JSON"),
            (
                {"algorithm": CURVE25519_AES_SHA2, "auth_data": {"public_key": ""}},
                400,
                "M_BAD_JSON",
            ),
            (
                {
                    "algorithm": CURVE25519_AES_SHA2,
                    "auth_data": {"public_key": "k", "signatures": []},
                },
                400,
                "M_BAD_JSON",
            ),
            (
                {
                    "algorithm": CURVE25519_AES_SHA2,
                    "auth_data": {"public_key": "k", "signatures": {"@a:b": {"ed25519:X": 1}}},
                },
                400,
                "M_BAD_JSON",
            ),
            (
                {"algorithm": "m.megolm_backup.v0.rot13", "auth_data": AUTH_DATA},
                400,
                "M_INVALID_PARAM",
            ),
        ]
        for body, code, errcode in cases:
            r = await self.call("POST", version_path(), body)
            self.assertError(r, code, errcode)
        r = await self.request("POST", version_path(), raw=b"{not json", token=self.alice.token)
        self.assertError(r, 400, "M_NOT_JSON")
        r = await self.request("POST", version_path(), raw=b"[]", token=self.alice.token)
        self.assertError(r, 400, "M_BAD_JSON")
        # Nothing was created by any of them.
        self.assertError(await self.call("GET", version_path()), 404, "M_NOT_FOUND")

    async def test_requires_authentication(self):
        for method, path in (
            ("GET", version_path()),
            ("POST", version_path()),
            ("GET", version_path("1")),
            ("GET", keys_path("1")),
            ("PUT", keys_path("1", ROOM, "s")),
        ):
            r = await self.request(method, path, {} if method in ("POST", "PUT") else None)
            self.assertError(r, 401, "M_MISSING_TOKEN")

    async def test_update_auth_data(self):
        version = await self.create_version()
        await self.put_key(version, "s1", key())
        before = (await self.call("GET", version_path(version))).json
        new_auth = {"public_key": "bmV3IGtleQ", "signatures": {}}
        for body in (
            {"algorithm": CURVE25519_AES_SHA2, "auth_data": new_auth},
            {"algorithm": CURVE25519_AES_SHA2, "auth_data": new_auth, "version": version},
        ):
            r = await self.call("PUT", version_path(version), body)
            self.assertEqual((r.code, r.json), (200, {}))
        after = (await self.call("GET", version_path(version))).json
        self.assertEqual(after["auth_data"], new_auth)
        # Only auth_data changes: not the keys, their count or the etag.
        self.assertEqual(
            (after["count"], after["etag"], after["algorithm"]),
            (before["count"], before["etag"], CURVE25519_AES_SHA2),
        )

    async def test_bad_updates(self):
        version = await self.create_version()
        good = {"algorithm": CURVE25519_AES_SHA2, "auth_data": AUTH_DATA}
        r = await self.call("PUT", version_path(version), {**good, "version": "2"})
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.call("PUT", version_path(version), {**good, "version": 1})
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.call(
            "PUT", version_path(version), {**good, "algorithm": "org.example.other_algorithm"}
        )
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.call("PUT", version_path(version), {"algorithm": CURVE25519_AES_SHA2})
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.call("PUT", version_path(version), {**good, "auth_data": {"signatures": {}}})
        self.assertError(r, 400, "M_BAD_JSON")
        for unknown in ("2", "0", "abc", "01"):
            self.assertError(
                await self.call("PUT", version_path(unknown), good), 404, "M_NOT_FOUND"
            )
        # The failed updates changed nothing.
        r = await self.call("GET", version_path(version))
        self.assertEqual(
            (r.json["algorithm"], r.json["auth_data"]), (CURVE25519_AES_SHA2, AUTH_DATA)
        )
        await self.call("DELETE", version_path(version))
        self.assertError(await self.call("PUT", version_path(version), good), 404, "M_NOT_FOUND")

    async def test_delete_version_deletes_its_keys(self):
        version = await self.create_version()
        await self.put_key(version, "s1", key())
        await self.put_key(version, "s2", key(), room_id=OTHER_ROOM)
        self.assertEqual(await self.stored_key_rows(self.alice.user_id), 2)
        r = await self.call("DELETE", version_path(version))
        self.assertEqual((r.code, r.json), (200, {}))
        self.assertEqual(await self.stored_key_rows(self.alice.user_id), 0)
        self.assertError(await self.call("GET", version_path(version)), 404, "M_NOT_FOUND")
        self.assertError(await self.call("GET", version_path()), 404, "M_NOT_FOUND")
        self.assertError(await self.call("GET", keys_path(version)), 404, "M_NOT_FOUND")
        # Deleting it again succeeds (spec); a version never created is not found.
        r = await self.call("DELETE", version_path(version))
        self.assertEqual((r.code, r.json), (200, {}))
        for unknown in ("7", "abc", "0"):
            self.assertError(await self.call("DELETE", version_path(unknown)), 404, "M_NOT_FOUND")
        # A new version starts empty.
        new = await self.create_version()
        self.assertEqual((await self.call("GET", version_path(new))).json["count"], 0)

    async def test_other_users_backup_is_invisible(self):
        version = await self.create_version()
        await self.put_key(version, "s1", key(marker="alice"))
        # Bob has no backup: Alice's version is nowhere to be seen.
        self.assertError(await self.call("GET", version_path(), user=self.bob), 404, "M_NOT_FOUND")
        self.assertError(
            await self.call("GET", version_path(version), user=self.bob), 404, "M_NOT_FOUND"
        )
        for path in (keys_path(version), keys_path(version, ROOM), keys_path(version, ROOM, "s1")):
            self.assertError(await self.call("GET", path, user=self.bob), 404, "M_NOT_FOUND")
            self.assertError(await self.call("DELETE", path, user=self.bob), 404, "M_NOT_FOUND")
        r = await self.call("PUT", keys_path(version, ROOM, "s1"), key(marker="bob"), self.bob)
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.call(
            "PUT",
            version_path(version),
            {"algorithm": CURVE25519_AES_SHA2, "auth_data": {"public_key": "bob"}},
            self.bob,
        )
        self.assertError(r, 404, "M_NOT_FOUND")
        self.assertError(
            await self.call("DELETE", version_path(version), user=self.bob), 404, "M_NOT_FOUND"
        )
        # Bob's own backup has the same number and its own keys.
        bob_version = await self.create_version(self.bob, {"public_key": "bob"})
        self.assertEqual(bob_version, version)
        await self.put_key(bob_version, "s1", key(is_verified=True, marker="bob"), user=self.bob)
        r = await self.call("GET", keys_path(bob_version), user=self.bob)
        self.assertEqual(
            r.json["rooms"][ROOM]["sessions"]["s1"], key(is_verified=True, marker="bob")
        )
        # Alice's backup is untouched by all of it.
        self.assertEqual(await self.get_key(version, "s1"), key(marker="alice"))
        r = await self.call("GET", version_path())
        self.assertEqual((r.json["auth_data"], r.json["count"]), (AUTH_DATA, 1))


@on_both_engines
class BackupKeysTests(RoomKeysTestCase):
    async def test_keys_round_trip_at_every_level(self):
        version = await self.create_version()
        r = await self.call("PUT", keys_path(version, ROOM, "s1"), key(1, marker="one"))
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["count"], 1)
        r = await self.call(
            "PUT", keys_path(version, ROOM), {"sessions": {"s2": key(2, marker="two")}}
        )
        self.assertEqual(r.json["count"], 2)
        r = await self.call(
            "PUT",
            keys_path(version),
            {"rooms": {OTHER_ROOM: {"sessions": {"s3": key(3, 1, True, marker="three")}}}},
        )
        self.assertEqual(r.json["count"], 3)

        self.assertEqual(await self.get_key(version, "s1"), key(1, marker="one"))
        r = await self.call("GET", keys_path(version, ROOM))
        self.assertEqual(
            r.json, {"sessions": {"s1": key(1, marker="one"), "s2": key(2, marker="two")}}
        )
        r = await self.call("GET", keys_path(version))
        self.assertEqual(
            r.json,
            {
                "rooms": {
                    ROOM: {"sessions": {"s1": key(1, marker="one"), "s2": key(2, marker="two")}},
                    OTHER_ROOM: {"sessions": {"s3": key(3, 1, True, marker="three")}},
                }
            },
        )

    async def test_empty_results(self):
        version = await self.create_version()
        r = await self.call("GET", keys_path(version))
        self.assertEqual((r.code, r.json), (200, {"rooms": {}}))
        r = await self.call("GET", keys_path(version, ROOM))
        self.assertEqual((r.code, r.json), (200, {"sessions": {}}))
        r = await self.call("GET", keys_path(version, ROOM, "nope"))
        self.assertError(r, 404, "M_NOT_FOUND")
        # An upload of nothing is fine, and changes nothing.
        r = await self.call("PUT", keys_path(version), {"rooms": {}})
        self.assertEqual((r.code, r.json["count"]), (200, 0))

    async def test_version_parameter_is_required(self):
        await self.create_version()
        for path in (keys_path(None), keys_path(None, ROOM), keys_path(None, ROOM, "s1")):
            for method in ("GET", "DELETE"):
                self.assertError(await self.call(method, path), 400, "M_MISSING_PARAM")
        self.assertError(
            await self.call("PUT", keys_path(None, ROOM, "s1"), key()), 400, "M_MISSING_PARAM"
        )
        self.assertError(
            await self.call("PUT", keys_path(None, ROOM), {"sessions": {}}), 400, "M_MISSING_PARAM"
        )
        self.assertError(
            await self.call("PUT", keys_path(None), {"rooms": {}}), 400, "M_MISSING_PARAM"
        )

    async def test_upload_to_a_version_that_is_not_current(self):
        old = await self.create_version()
        current = await self.create_version()
        await self.call("DELETE", version_path(await self.create_version()))
        # An older version, a deleted one, one that never existed, one that cannot exist:
        # all refused with the current version named, at every level.
        for version in (old, "3", "99", "abc", ""):
            for path, body in (
                (keys_path(version, ROOM, "s1"), key()),
                (keys_path(version, ROOM), {"sessions": {"s1": key()}}),
                (keys_path(version), {"rooms": {ROOM: {"sessions": {"s1": key()}}}}),
            ):
                r = await self.call("PUT", path, body)
                err = self.assertError(r, 403, "M_WRONG_ROOM_KEYS_VERSION")
                self.assertEqual(err["current_version"], current, version)
        self.assertEqual(await self.stored_key_rows(self.alice.user_id), 0)
        self.assertEqual((await self.call("GET", version_path(old))).json["count"], 0)

    async def test_upload_without_any_backup_is_not_found(self):
        r = await self.call("PUT", keys_path("1", ROOM, "s1"), key())
        self.assertError(r, 404, "M_NOT_FOUND")
        version = await self.create_version()
        await self.call("DELETE", version_path(version))
        for v in (version, "abc"):
            r = await self.call("PUT", keys_path(v), {"rooms": {ROOM: {"sessions": {"s": key()}}}})
            self.assertError(r, 404, "M_NOT_FOUND")

    async def test_reading_and_deleting_an_unknown_version_is_not_found(self):
        version = await self.create_version()
        await self.put_key(version, "s1", key())
        for unknown in ("2", "0", "abc", "1.0", ""):
            for path in (
                keys_path(unknown),
                keys_path(unknown, ROOM),
                keys_path(unknown, ROOM, "s1"),
            ):
                self.assertError(await self.call("GET", path), 404, "M_NOT_FOUND")
                self.assertError(await self.call("DELETE", path), 404, "M_NOT_FOUND")
        self.assertEqual(await self.stored_key_rows(self.alice.user_id), 1)

    async def test_older_version_keys_can_be_read_and_deleted(self):
        old = await self.create_version()
        await self.put_key(old, "s1", key(marker="old"))
        await self.put_key(old, "s2", key(marker="old2"))
        new = await self.create_version()
        self.assertEqual(await self.get_key(old, "s1"), key(marker="old"))
        self.assertEqual((await self.call("GET", keys_path(new))).json, {"rooms": {}})
        r = await self.call("DELETE", keys_path(old, ROOM, "s1"))
        self.assertEqual((r.code, r.json["count"]), (200, 1))
        self.assertError(await self.call("GET", keys_path(old, ROOM, "s1")), 404, "M_NOT_FOUND")

    async def test_replacement_rules(self):
        """(stored, uploaded, replaced?) — spec: a verified key beats an unverified one, then
        the lower first_message_index wins, then the lower forwarded_count; a tie keeps the
        stored key."""
        cases = [
            # is_verified decides first, whatever the indexes say.
            (key(5, 0, False), key(10, 3, True), True),
            (key(10, 3, True), key(0, 0, False), False),
            # Same verification: the lower first_message_index wins...
            (key(5, 0, False), key(3, 9, False), True),
            (key(5, 0, True), key(3, 9, True), True),
            (key(3, 0, False), key(5, 0, False), False),
            (key(3, 9, False), key(5, 0, False), False),
            # ...then the lower forwarded_count.
            (key(5, 2, False), key(5, 1, False), True),
            (key(5, 1, True), key(5, 2, True), False),
            # Equal metadata: the stored key stays, even with other session data.
            (key(5, 1, True), key(5, 1, True), False),
        ]
        version = await self.create_version()
        for i, (stored, uploaded, replaced) in enumerate(cases):
            session = f"session{i}"
            stored = {**stored, "session_data": {"which": "stored"}}
            uploaded = {**uploaded, "session_data": {"which": "uploaded"}}
            first = await self.put_key(version, session, stored)
            second = await self.put_key(version, session, uploaded)
            self.assertEqual(second["count"], first["count"], i)
            self.assertEqual(
                await self.get_key(version, session), uploaded if replaced else stored, i
            )
            # The etag moves exactly when the stored key changed.
            self.assertEqual(second["etag"] != first["etag"], replaced, i)

    async def test_replacement_rules_within_one_batch(self):
        version = await self.create_version()
        await self.call(
            "PUT",
            keys_path(version),
            {"rooms": {ROOM: {"sessions": {"a": key(5, marker="a1"), "b": key(0, marker="b1")}}}},
        )
        r = await self.call(
            "PUT",
            keys_path(version),
            {
                "rooms": {
                    ROOM: {"sessions": {"a": key(1, marker="a2"), "b": key(9, marker="b2")}},
                    OTHER_ROOM: {"sessions": {"a": key(7, marker="c")}},
                }
            },
        )
        self.assertEqual(r.json["count"], 3)
        rooms = (await self.call("GET", keys_path(version))).json["rooms"]
        self.assertEqual(
            rooms[ROOM]["sessions"], {"a": key(1, marker="a2"), "b": key(0, marker="b1")}
        )
        self.assertEqual(rooms[OTHER_ROOM]["sessions"], {"a": key(7, marker="c")})

    async def test_etag_and_count(self):
        version = await self.create_version()
        info = (await self.call("GET", version_path())).json
        self.assertEqual(info["count"], 0)
        etags = [info["etag"]]

        def check(response: dict[str, Any], count: int, changed: bool) -> None:
            self.assertEqual(set(response), {"etag", "count"})
            self.assertIsInstance(response["etag"], str)
            self.assertEqual(response["count"], count)
            if changed:
                self.assertNotIn(response["etag"], etags)
            else:
                self.assertEqual(response["etag"], etags[-1])
            etags.append(response["etag"])

        check(await self.put_key(version, "s1", key(5)), 1, changed=True)
        check(await self.put_key(version, "s2", key(5)), 2, changed=True)
        # Not replaced: nothing changed.
        check(await self.put_key(version, "s1", key(6)), 2, changed=False)
        # Replaced: the count stays, the etag moves.
        check(await self.put_key(version, "s1", key(4)), 2, changed=True)
        # GET /room_keys/version agrees with the last write.
        for path in (version_path(), version_path(version)):
            info = (await self.call("GET", path)).json
            self.assertEqual((info["etag"], info["count"]), (etags[-1], 2))
        # Deleting something moves it; deleting nothing does not.
        r = await self.call("DELETE", keys_path(version, ROOM, "nothing-here"))
        check(r.json, 2, changed=False)
        r = await self.call("DELETE", keys_path(version, OTHER_ROOM))
        check(r.json, 2, changed=False)
        r = await self.call("DELETE", keys_path(version, ROOM, "s1"))
        check(r.json, 1, changed=True)
        await self.put_key(version, "s3", key(), room_id=OTHER_ROOM)
        r = await self.call("DELETE", keys_path(version, ROOM))
        check(r.json, 1, changed=True)
        self.assertEqual(
            (await self.call("GET", keys_path(version))).json["rooms"].keys(), {OTHER_ROOM}
        )
        r = await self.call("DELETE", keys_path(version))
        check(r.json, 0, changed=True)
        info = (await self.call("GET", version_path())).json
        self.assertEqual((info["etag"], info["count"]), (etags[-1], 0))

    async def test_concurrent_uploads_keep_every_key_and_etag(self):
        version = await self.create_version()
        uploads = [
            defer.ensureDeferred(
                self.call(
                    "PUT",
                    keys_path(version),
                    {"rooms": {ROOM: {"sessions": {f"s{i}": key(), "shared": key(i)}}}},
                )
            )
            for i in range(12)
        ]
        responses = await defer.gatherResults(uploads, consumeErrors=True)
        self.assertTrue(all(r.code == 200 for r in responses), responses)
        # Each upload added its own session: each saw a different state of the backup.
        counts = sorted(r.json["count"] for r in responses)
        self.assertEqual(counts, list(range(2, 14)))
        self.assertEqual(len({r.json["etag"] for r in responses}), 12)
        info = (await self.call("GET", version_path())).json
        self.assertEqual(info["count"], 13)
        self.assertIn(info["etag"], {r.json["etag"] for r in responses})
        # The shared session kept the lowest first_message_index of all.
        self.assertEqual((await self.get_key(version, "shared"))["first_message_index"], 0)

    async def test_concurrent_store_writes_are_serialised(self):
        """Past the handler's per-user queue, straight to the store: on PostgreSQL the
        transactions conflict and are retried, and no write is lost."""
        store = self.hs.room_keys_store
        user_id = self.alice.user_id
        version = await store.create_version(user_id, CURVE25519_AES_SHA2, AUTH_DATA)
        await store.upload_keys(
            user_id, version, {ROOM: {"s0": RoomKey(0, 0, False, {})}}, should_replace
        )
        uploads = [
            defer.ensureDeferred(
                store.upload_keys(
                    user_id,
                    version,
                    {ROOM: {f"s{i}": RoomKey(0, 0, False, {"i": i})}},
                    should_replace,
                )
            )
            for i in (1, 2)
        ]
        deletion = defer.ensureDeferred(store.delete_keys(user_id, version, ROOM, "s0"))
        results = await defer.gatherResults([*uploads, deletion], consumeErrors=True)
        info = await store.get_version(user_id, version)
        keys = await store.get_keys(user_id, version)
        assert info is not None and keys is not None
        self.assertEqual(sorted(keys[ROOM]), ["s1", "s2"])
        # Four changes, each its own etag: the first upload, then these three in some order.
        self.assertEqual((info.count, info.etag), (2, 4))
        etags = sorted([r.state.etag for r in results[:2]] + [results[2].etag])
        self.assertEqual(etags, [2, 3, 4])

    async def test_bad_key_bodies(self):
        version = await self.create_version()
        good = key()
        bad_keys = [
            {**good, "is_verified": "true"},
            {**good, "is_verified": 1},
            {**good, "first_message_index": "1"},
            {**good, "first_message_index": 1.5},
            {**good, "first_message_index": -1},
            {**good, "first_message_index": 2**53},
            {**good, "forwarded_count": None},
            {**good, "forwarded_count": True},
            {**good, "session_data": "SSBBTSBBIEZJU0gK"},
            {**good, "session_data": None},
            {k: v for k, v in good.items() if k != "forwarded_count"},
            {k: v for k, v in good.items() if k != "session_data"},
            {},
        ]
        for bad in bad_keys:
            r = await self.call("PUT", keys_path(version, ROOM, "s1"), bad)
            self.assertError(r, 400, "M_BAD_JSON")
            # One bad key spoils the whole batch: the good one next to it is not stored.
            r = await self.call(
                "PUT", keys_path(version, ROOM), {"sessions": {"good": good, "bad": bad}}
            )
            self.assertError(r, 400, "M_BAD_JSON")
        for body in (
            {},
            {"sessions": []},
            {"sessions": {"s1": "key"}},
            {"sessions": None},
        ):
            r = await self.call("PUT", keys_path(version, ROOM), body)
            self.assertError(r, 400, "M_BAD_JSON")
        for body in (
            {},
            {"rooms": []},
            {"rooms": {ROOM: {"s1": good}}},
            {"rooms": {ROOM: {"sessions": {"s1": good}}, OTHER_ROOM: []}},
        ):
            r = await self.call("PUT", keys_path(version), body)
            self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request("PUT", keys_path(version), raw=b'{"rooms": ', token=self.alice.token)
        self.assertError(r, 400, "M_NOT_JSON")
        r = await self.request(
            "PUT", keys_path(version, ROOM, "s"), raw=b"[1]", token=self.alice.token
        )
        self.assertError(r, 400, "M_BAD_JSON")
        self.assertEqual(await self.stored_key_rows(self.alice.user_id), 0)
        self.assertEqual((await self.call("GET", version_path())).json["count"], 0)

    async def test_bad_room_and_session_ids(self):
        version = await self.create_version()
        long_session = "s" * 256
        r = await self.call("PUT", keys_path(version, "notaroom", "s1"), key())
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.call("PUT", keys_path(version, ROOM, long_session), key())
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.call("PUT", keys_path(version), {"rooms": {"#alias:x": {"sessions": {}}}})
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.call(
            "PUT",
            keys_path(version),
            {"rooms": {ROOM: {"sessions": {"ok": key(), "": key()}}}},
        )
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.call(
            "PUT", keys_path(version), {"rooms": {"!" + "x" * 255: {"sessions": {"s": key()}}}}
        )
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.call("PUT", keys_path(version, ROOM), {"sessions": {"nul\u0000": key()}})
        self.assertError(r, 400, "M_INVALID_PARAM")
        for method in ("GET", "DELETE"):
            self.assertError(
                await self.call(method, keys_path(version, "notaroom")), 400, "M_INVALID_PARAM"
            )
            self.assertError(
                await self.call(method, keys_path(version, ROOM, long_session)),
                400,
                "M_INVALID_PARAM",
            )
        self.assertEqual(await self.stored_key_rows(self.alice.user_id), 0)
        # At the limit is fine.
        await self.put_key(version, "s" * 255, key())

    async def test_oversized_body_is_refused(self):
        version = await self.create_version()
        limit = self.hs.config.limits.max_request_body_bytes
        huge = key()
        huge["session_data"] = {"ciphertext": "x" * limit}
        r = await self.call("PUT", keys_path(version, ROOM, "s1"), huge)
        self.assertError(r, 413, "M_TOO_LARGE")
        r = await self.call(
            "POST",
            version_path(),
            {"algorithm": CURVE25519_AES_SHA2, "auth_data": {"public_key": "k" * limit}},
        )
        self.assertError(r, 413, "M_TOO_LARGE")
        self.assertEqual(await self.stored_key_rows(self.alice.user_id), 0)

    async def test_large_batch(self):
        """More sessions than one query binds (the store reads them in chunks)."""
        version = await self.create_version()
        rooms = {
            f"!room{r}:test.heddle": {
                "sessions": {
                    f"session{r}-{s}": key(s, marker=f"{r}-{s}")
                    for s in range(700 if r == 0 else 50)
                }
            }
            for r in range(5)
        }
        body = json.dumps({"rooms": rooms}).encode()
        self.assertLess(len(body), self.hs.config.limits.max_request_body_bytes)
        r = await self.request("PUT", keys_path(version), raw=body, token=self.alice.token)
        self.assertEqual((r.code, r.json["count"]), (200, 900), r)
        etag = r.json["etag"]
        # The same again, each key with a higher index: nothing replaced, etag unchanged.
        for room in rooms.values():
            for session in room["sessions"].values():
                session["first_message_index"] += 1
        r = await self.request(
            "PUT",
            keys_path(version),
            raw=json.dumps({"rooms": rooms}).encode(),
            token=self.alice.token,
        )
        self.assertEqual((r.code, r.json), (200, {"etag": etag, "count": 900}))
        got = (await self.call("GET", keys_path(version))).json["rooms"]
        self.assertEqual(sum(len(room["sessions"]) for room in got.values()), 900)
        self.assertEqual(
            got["!room0:test.heddle"]["sessions"]["session0-699"], key(699, marker="0-699")
        )

    async def test_deeply_nested_session_data_round_trips(self):
        version = await self.create_version()
        data: Any = "leaf"
        for _ in range(200):
            data = {"d": data}
        await self.put_key(version, "deep", {**key(), "session_data": data})
        self.assertEqual((await self.get_key(version, "deep"))["session_data"], data)


class ShouldReplaceTests(unittest.TestCase):
    def test_rules_in_order(self):
        def k(fmi: int, fc: int, verified: bool) -> RoomKey:
            return RoomKey(fmi, fc, verified, {})

        self.assertTrue(should_replace(k(0, 0, False), k(9, 9, True)))
        self.assertFalse(should_replace(k(9, 9, True), k(0, 0, False)))
        self.assertTrue(should_replace(k(2, 0, False), k(1, 5, False)))
        self.assertFalse(should_replace(k(1, 5, False), k(2, 0, False)))
        self.assertTrue(should_replace(k(1, 5, True), k(1, 4, True)))
        self.assertFalse(should_replace(k(1, 4, True), k(1, 5, True)))
        self.assertFalse(should_replace(k(1, 4, True), k(1, 4, True)))
