"""The admin API for media (Synapse's paths and JSON), over real HTTP on both engines:
access, a user's media list, quarantine (by ID, room and user) and what it does to
downloads and thumbnails, protection, deleting media (the bytes and thumbnails leave the disk
or the S3 bucket), deleting old local media, purging the remote media cache, bad input, and
the audit log."""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

from twisted.internet import defer, reactor, task, threads

from media_repo.providers.filesystem import FilesystemProvider
from tests.admin_helpers import ADMIN, AdminTestCase, User, q
from tests.harness import SERVER_NAME, on_both_engines

MEDIA = "/_matrix/media/v3"
CLIENT_MEDIA = "/_matrix/client/v1/media"
REMOTE_SERVER = "elsewhere.example"
UNKNOWN_ID = "NoSuchMediaHere"
FUTURE = 4_000_000_000_000  # 2096, in milliseconds


def jpeg(width: int = 800, height: int = 600, colour: int = 30) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (20, 130, colour)).save(buffer, "JPEG")
    return buffer.getvalue()


def media_paths(user_id: str, room_id: str, media_id: str) -> list[tuple[str, str, Any]]:
    s, u = SERVER_NAME, q(user_id)
    return [
        ("GET", f"{ADMIN}/v1/users/{u}/media", None),
        ("DELETE", f"{ADMIN}/v1/users/{u}/media", None),
        ("GET", f"{ADMIN}/v1/media/{s}/{media_id}", None),
        ("GET", f"{ADMIN}/v1/room/{q(room_id)}/media", None),
        ("POST", f"{ADMIN}/v1/media/quarantine/{s}/{media_id}", {}),
        ("POST", f"{ADMIN}/v1/media/unquarantine/{s}/{media_id}", {}),
        ("POST", f"{ADMIN}/v1/room/{q(room_id)}/media/quarantine", {}),
        ("POST", f"{ADMIN}/v1/quarantine_media/{q(room_id)}", {}),
        ("POST", f"{ADMIN}/v1/user/{u}/media/quarantine", {}),
        ("POST", f"{ADMIN}/v1/media/protect/{media_id}", {}),
        ("POST", f"{ADMIN}/v1/media/unprotect/{media_id}", {}),
        ("DELETE", f"{ADMIN}/v1/media/{s}/{media_id}", None),
        ("POST", f"{ADMIN}/v1/media/delete?before_ts={FUTURE}", {}),
        ("POST", f"{ADMIN}/v1/media/{s}/delete?before_ts={FUTURE}", {}),
        ("POST", f"{ADMIN}/v1/purge_media_cache?before_ts={FUTURE}", {}),
    ]


class MediaAdminTestCase(AdminTestCase):
    async def upload(
        self, user: User, data: bytes, content_type: str = "image/jpeg", name: str | None = None
    ) -> str:
        path = f"{MEDIA}/upload" + (f"?filename={name}" if name else "")
        r = await self.request(
            "POST", path, raw=data, token=user.token, headers={"Content-Type": content_type}
        )
        self.assertEqual(r.code, 200, r)
        server_name, media_id = r.json["content_uri"][len("mxc://"):].split("/")
        self.assertEqual(server_name, SERVER_NAME)
        return str(media_id)

    async def download_code(self, user: User, media_id: str, server: str = SERVER_NAME) -> int:
        r = await self.request(
            "GET", f"{CLIENT_MEDIA}/download/{server}/{media_id}", token=user.token
        )
        return r.code

    async def thumbnail_code(self, user: User, media_id: str) -> int:
        r = await self.request(
            "GET",
            f"{CLIENT_MEDIA}/thumbnail/{SERVER_NAME}/{media_id}?width=32&height=32&method=crop",
            token=user.token,
        )
        return r.code

    async def cache_remote(self, media_id: str, data: bytes) -> None:
        """A cached copy of another server's media, as fetching it would leave."""
        sha256 = hashlib.sha256(data).hexdigest()
        await self.provider().store(sha256, data, "image/png")
        await self.hs.media_store.record_upload(
            REMOTE_SERVER, media_id, None, "image/png", None, len(data), sha256,
            self.hs.clock.time_msec(),
        )

    def provider(self) -> FilesystemProvider:
        config = self.hs.config
        return FilesystemProvider(config.resolve_path(config.media.store_path), reactor)

    async def stored_keys(self, media_id: str) -> list[str]:
        """The storage keys of the media's contents and thumbnails."""
        info = await self.hs.media_store.get_media(SERVER_NAME, media_id)
        assert info is not None and info.sha256 is not None
        thumbs = await self.hs.media_store.get_thumbnails(SERVER_NAME, media_id)
        return [info.sha256, *(t[5] for t in thumbs)]

    async def admin_ok(self, admin: User, method: str, path: str, body: Any = None) -> Any:
        r = await self.admin_call(admin, method, path, body)
        self.assertEqual(r.code, 200, r)
        return r.json


@on_both_engines
class MediaAdminAccessTests(MediaAdminTestCase):
    async def test_every_endpoint_needs_a_token(self):
        for method, path, body in media_paths(f"@alice:{SERVER_NAME}", "!r:x", "abc"):
            r = await self.request(method, path, body)
            self.assertError(r, 401, "M_MISSING_TOKEN")

    async def test_every_endpoint_refuses_non_admins(self):
        alice = await self.user("alice")
        media_id = await self.upload(alice, jpeg())
        room_id = await self.create_room(alice)
        for method, path, body in media_paths(alice.user_id, room_id, media_id):
            r = await self.request(method, path, body, token=alice.token)
            self.assertError(r, 403, "M_FORBIDDEN")
        self.assertEqual(await self.download_code(alice, media_id), 200)
        self.assertEqual(await self.hs.admin_audit_store.entries(), [])

    async def test_unknown_media_is_not_found(self):
        admin = await self.make_admin()
        for path in (
            f"/v1/media/quarantine/{SERVER_NAME}/{UNKNOWN_ID}",
            f"/v1/media/unquarantine/{SERVER_NAME}/{UNKNOWN_ID}",
            # Another server's media never fetched here is unknown too.
            f"/v1/media/quarantine/{REMOTE_SERVER}/{UNKNOWN_ID}",
            f"/v1/media/protect/{UNKNOWN_ID}",
            f"/v1/media/unprotect/{UNKNOWN_ID}",
        ):
            r = await self.admin_call(admin, "POST", path, {})
            self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.admin_call(admin, "DELETE", f"/v1/media/{SERVER_NAME}/{UNKNOWN_ID}")
        self.assertError(r, 404, "M_NOT_FOUND")
        for server in (SERVER_NAME, REMOTE_SERVER):
            r = await self.admin_get(admin, f"/v1/media/{server}/{UNKNOWN_ID}")
            self.assertError(r, 404, "M_NOT_FOUND")
        self.assertEqual(await self.hs.admin_audit_store.entries(), [])

    async def test_bad_media_ids_are_refused(self):
        admin = await self.make_admin()
        for path in (
            f"/v1/media/quarantine/{SERVER_NAME}/bad%21id",
            "/v1/media/protect/bad%2Eid",
        ):
            r = await self.admin_call(admin, "POST", path, {})
            self.assertError(r, 400, "M_INVALID_PARAM")


@on_both_engines
class UserMediaListTests(MediaAdminTestCase):
    async def test_lists_a_users_media_newest_first(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        bob = await self.user("bob")
        first = await self.upload(alice, b"a" * 10, "text/plain", "one.txt")
        second = await self.upload(alice, b"b" * 30, "application/pdf")
        await self.upload(bob, b"c" * 5, "text/plain")
        r = await self.admin_get(admin, f"/v1/users/{q(alice.user_id)}/media")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["total"], 2)
        self.assertNotIn("next_token", r.json)
        media = r.json["media"]
        # Newest first by default (same-millisecond uploads fall back to media ID order).
        self.assertEqual({m["media_id"] for m in media}, {first, second})
        by_id = {m["media_id"]: m for m in media}
        one = by_id[first]
        self.assertEqual(
            {k: one[k] for k in one if k != "created_ts"},
            {
                "media_id": first,
                "media_type": "text/plain",
                "media_length": 10,
                "upload_name": "one.txt",
                "last_access_ts": None,
                "quarantined_by": None,
                "safe_from_quarantine": False,
                "user_id": alice.user_id,
                "url_cache": None,
                "authenticated": None,
                "sha256": hashlib.sha256(b"a" * 10).hexdigest(),
            },
        )
        self.assertIsInstance(one["created_ts"], int)

    async def test_order_and_pagination(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        sizes = [40, 10, 30, 20]
        ids = {await self.upload(alice, bytes([i]) * size, "text/plain"): size
               for i, size in enumerate(sizes)}
        path = f"/v1/users/{q(alice.user_id)}/media"
        r = await self.admin_get(admin, path, order_by="media_length")
        self.assertEqual([m["media_length"] for m in r.json["media"]], [10, 20, 30, 40])
        r = await self.admin_get(admin, path, order_by="media_length", dir="b")
        self.assertEqual([m["media_length"] for m in r.json["media"]], [40, 30, 20, 10])
        r = await self.admin_get(admin, path, order_by="media_id", limit=3)
        self.assertEqual(r.json["next_token"], 3)
        self.assertEqual(r.json["total"], 4)
        page = [m["media_id"] for m in r.json["media"]]
        r = await self.admin_get(admin, path, order_by="media_id", limit=3, **{"from": 3})
        self.assertNotIn("next_token", r.json)
        page += [m["media_id"] for m in r.json["media"]]
        self.assertEqual(page, sorted(ids))

    async def test_missing_names_sort_first_on_both_engines(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        named = await self.upload(alice, b"named", "text/plain", "b.txt")
        unnamed = await self.upload(alice, b"unnamed", "text/plain")
        path = f"/v1/users/{q(alice.user_id)}/media"
        r = await self.admin_get(admin, path, order_by="upload_name")
        self.assertEqual([m["media_id"] for m in r.json["media"]], [unnamed, named])
        r = await self.admin_get(admin, path, order_by="upload_name", dir="b")
        self.assertEqual([m["media_id"] for m in r.json["media"]], [named, unnamed])

    async def test_bad_parameters(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        path = f"/v1/users/{q(alice.user_id)}/media"
        for params in (
            {"order_by": "size"},
            {"dir": "up"},
            {"limit": "-1"},
            {"limit": "many"},
            {"from": "-5"},
        ):
            r = await self.admin_get(admin, path, **params)
            self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.admin_get(admin, f"/v1/users/{q('@someone:' + REMOTE_SERVER)}/media")
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.admin_get(admin, f"/v1/users/{q('@nobody:' + SERVER_NAME)}/media")
        self.assertError(r, 404, "M_NOT_FOUND")


@on_both_engines
class MediaQueryTests(MediaAdminTestCase):
    async def test_query_local_and_remote_media(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        media_id = await self.upload(alice, b"some text", "text/plain", "note.txt")
        r = await self.admin_get(admin, f"/v1/media/{SERVER_NAME}/{media_id}")
        self.assertEqual(r.code, 200, r)
        info = r.json["media_info"]
        self.assertEqual(
            {k: info[k] for k in info if k != "created_ts"},
            {
                "media_origin": None,
                "user_id": alice.user_id,
                "media_id": media_id,
                "media_type": "text/plain",
                "media_length": 9,
                "upload_name": "note.txt",
                "filesystem_id": None,
                "url_cache": None,
                "last_access_ts": None,
                "quarantined_by": None,
                "authenticated": None,
                "safe_from_quarantine": False,
                "sha256": hashlib.sha256(b"some text").hexdigest(),
            },
        )
        await self.cache_remote("RemoteQuery", b"remote")
        await self.admin_ok(admin, "POST", f"/v1/media/quarantine/{REMOTE_SERVER}/RemoteQuery")
        r = await self.admin_get(admin, f"/v1/media/{REMOTE_SERVER}/RemoteQuery")
        info = r.json["media_info"]
        self.assertEqual(
            (info["media_origin"], info["user_id"], info["quarantined_by"],
             info["safe_from_quarantine"]),
            (REMOTE_SERVER, None, admin.user_id, None),
        )

    async def test_list_a_rooms_media(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        image = await self.upload(alice, jpeg())
        await self.send(alice, room_id, {
            "msgtype": "m.image", "body": "a.jpg", "url": f"mxc://{SERVER_NAME}/{image}",
        })
        await self.send(alice, room_id, {
            "msgtype": "m.file", "body": "b", "url": f"mxc://{REMOTE_SERVER}/RemoteFile",
        })
        await self.send(alice, room_id, {"msgtype": "m.text", "body": "mxc://not/a-url"})
        r = await self.admin_get(admin, f"/v1/room/{q(room_id)}/media")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json, {
            "local": [f"mxc://{SERVER_NAME}/{image}"],
            "remote": [f"mxc://{REMOTE_SERVER}/RemoteFile"],
        })
        r = await self.admin_get(admin, f"/v1/room/{q('!nope:' + SERVER_NAME)}/media")
        self.assertError(r, 404, "M_NOT_FOUND")


@on_both_engines
class QuarantineTests(MediaAdminTestCase):
    async def test_quarantined_media_is_not_served(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        media_id = await self.upload(alice, jpeg())
        self.assertEqual(await self.thumbnail_code(alice, media_id), 200)
        await self.admin_ok(admin, "POST", f"/v1/media/quarantine/{SERVER_NAME}/{media_id}", {})
        self.assertEqual(await self.download_code(alice, media_id), 404)
        self.assertEqual(await self.thumbnail_code(alice, media_id), 404)
        r = await self.request("GET", f"{MEDIA}/download/{SERVER_NAME}/{media_id}")
        self.assertError(r, 404, "M_NOT_FOUND")
        # Quarantine keeps the bytes: releasing it serves them again.
        r = await self.admin_get(admin, f"/v1/users/{q(alice.user_id)}/media")
        self.assertEqual(r.json["media"][0]["quarantined_by"], admin.user_id)
        await self.admin_ok(
            admin, "POST", f"/v1/media/unquarantine/{SERVER_NAME}/{media_id}", {}
        )
        self.assertEqual(await self.download_code(alice, media_id), 200)
        self.assertEqual(await self.thumbnail_code(alice, media_id), 200)
        mxc = f"mxc://{SERVER_NAME}/{media_id}"
        self.assertEqual(
            [(e.admin_user_id, e.action) for e in await self.audit(mxc)],
            [(admin.user_id, "quarantine_media"), (admin.user_id, "unquarantine_media")],
        )

    async def test_quarantine_covers_the_same_contents_under_other_ids(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        bob = await self.user("bob")
        data = jpeg(colour=140)
        first = await self.upload(alice, data)
        copy = await self.upload(bob, data)
        other = await self.upload(bob, jpeg(colour=10))
        await self.admin_ok(admin, "POST", f"/v1/media/quarantine/{SERVER_NAME}/{first}", {})
        self.assertEqual(await self.download_code(bob, copy), 404)
        self.assertEqual(await self.download_code(bob, other), 200)
        # Uploading the bytes again does not get them served under a new ID.
        again = await self.upload(bob, data)
        self.assertEqual(await self.download_code(bob, again), 404)
        r = await self.request("POST", "/_matrix/media/v1/create", {}, token=bob.token)
        self.assertEqual(r.code, 200, r)
        pending = r.json["content_uri"].split("/")[-1]
        r = await self.request(
            "PUT", f"{MEDIA}/upload/{SERVER_NAME}/{pending}", raw=data, token=bob.token,
            headers={"Content-Type": "image/jpeg"},
        )
        self.assertEqual(r.code, 200, r)
        self.assertEqual(await self.download_code(bob, pending), 404)
        # Releasing it releases every copy.
        await self.admin_ok(admin, "POST", f"/v1/media/unquarantine/{SERVER_NAME}/{first}", {})
        for media_id in (first, copy, again, pending):
            self.assertEqual(await self.download_code(bob, media_id), 200)

    async def test_cached_remote_media_can_be_quarantined(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        await self.cache_remote("RemoteMedia1", b"remote bytes")
        self.assertEqual(await self.download_code(alice, "RemoteMedia1", REMOTE_SERVER), 200)
        await self.admin_ok(admin, "POST", f"/v1/media/quarantine/{REMOTE_SERVER}/RemoteMedia1")
        self.assertEqual(await self.download_code(alice, "RemoteMedia1", REMOTE_SERVER), 404)

    async def test_quarantine_a_users_media_passes_protected_media_by(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        bob = await self.user("bob")
        kept = await self.upload(alice, b"sticker", "image/png")
        gone = [await self.upload(alice, bytes([i]) * 9, "image/png") for i in range(2)]
        bobs = await self.upload(bob, b"bob's", "image/png")
        await self.admin_ok(admin, "POST", f"/v1/media/protect/{kept}", {})
        body = await self.admin_ok(
            admin, "POST", f"/v1/user/{q(alice.user_id)}/media/quarantine", {}
        )
        self.assertEqual(body, {"num_quarantined": 2})
        for media_id in gone:
            self.assertEqual(await self.download_code(alice, media_id), 404)
        self.assertEqual(await self.download_code(alice, kept), 200)
        self.assertEqual(await self.download_code(alice, bobs), 200)
        # Protection also holds against quarantine by ID, until it is lifted.
        await self.admin_ok(admin, "POST", f"/v1/media/quarantine/{SERVER_NAME}/{kept}", {})
        self.assertEqual(await self.download_code(alice, kept), 200)
        await self.admin_ok(admin, "POST", f"/v1/media/unprotect/{kept}", {})
        await self.admin_ok(admin, "POST", f"/v1/media/quarantine/{SERVER_NAME}/{kept}", {})
        self.assertEqual(await self.download_code(alice, kept), 404)
        actions = [e.action for e in await self.audit(alice.user_id)]
        self.assertEqual(actions, ["quarantine_user_media"])
        actions = [e.action for e in await self.audit(f"mxc://{SERVER_NAME}/{kept}")]
        self.assertEqual(
            actions, ["protect_media", "quarantine_media", "unprotect_media", "quarantine_media"]
        )

    async def test_quarantine_a_users_media_refuses_remote_and_unknown_users(self):
        admin = await self.make_admin()
        r = await self.admin_call(
            admin, "POST", f"/v1/user/{q('@x:' + REMOTE_SERVER)}/media/quarantine", {}
        )
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.admin_call(
            admin, "POST", f"/v1/user/{q('@nobody:' + SERVER_NAME)}/media/quarantine", {}
        )
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_quarantine_a_rooms_media(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        image = await self.upload(alice, jpeg())
        thumb = await self.upload(alice, b"thumbnail", "image/png")
        elsewhere = await self.upload(alice, b"not in the room", "image/png")
        await self.cache_remote("RemoteInRoom", b"remote image")
        r = await self.send(alice, room_id, {
            "msgtype": "m.image",
            "body": "photo.jpg",
            "url": f"mxc://{SERVER_NAME}/{image}",
            "info": {"thumbnail_url": f"mxc://{SERVER_NAME}/{thumb}"},
        })
        self.assertEqual(r.code, 200, r)
        r = await self.send(alice, room_id, {
            "msgtype": "m.image", "body": "r.png", "url": f"mxc://{REMOTE_SERVER}/RemoteInRoom",
        })
        self.assertEqual(r.code, 200, r)
        body = await self.admin_ok(admin, "POST", f"/v1/room/{q(room_id)}/media/quarantine", {})
        self.assertEqual(body, {"num_quarantined": 3})
        for media_id in (image, thumb):
            self.assertEqual(await self.download_code(alice, media_id), 404)
        self.assertEqual(await self.download_code(alice, "RemoteInRoom", REMOTE_SERVER), 404)
        self.assertEqual(await self.download_code(alice, elsewhere), 200)
        # The older path does the same (nothing left to quarantine now).
        body = await self.admin_ok(admin, "POST", f"/v1/quarantine_media/{q(room_id)}", {})
        self.assertEqual(body, {"num_quarantined": 0})
        entries = await self.audit(room_id)
        self.assertEqual([(e.action, e.details) for e in entries], [
            ("quarantine_room_media", {"num_quarantined": 3}),
            ("quarantine_room_media", {"num_quarantined": 0}),
        ])
        r = await self.admin_call(admin, "POST", f"/v1/room/{q('!nope:' + SERVER_NAME)}/media/quarantine", {})
        self.assertError(r, 404, "M_NOT_FOUND")
        r = await self.admin_call(admin, "POST", "/v1/room/not-a-room/media/quarantine", {})
        self.assertError(r, 400, "M_INVALID_PARAM")


@on_both_engines
class DeleteMediaTests(MediaAdminTestCase):
    async def test_delete_removes_the_file_and_thumbnails(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        media_id = await self.upload(alice, jpeg())
        await self.hs.media.stop()  # the thumbnails made at upload
        keys = await self.stored_keys(media_id)
        self.assertGreater(len(keys), 1)
        provider = self.provider()
        for key in keys:
            self.assertTrue(await provider.exists(key), key)
        body = await self.admin_ok(admin, "DELETE", f"/v1/media/{SERVER_NAME}/{media_id}")
        self.assertEqual(body, {"deleted_media": [media_id], "total": 1})
        for key in keys:
            self.assertFalse(await provider.exists(key), key)
        self.assertEqual(await self.download_code(alice, media_id), 404)
        self.assertEqual(await self.thumbnail_code(alice, media_id), 404)
        self.assertIsNone(await self.hs.media_store.get_media(SERVER_NAME, media_id))
        entries = await self.audit(f"mxc://{SERVER_NAME}/{media_id}")
        self.assertEqual([(e.admin_user_id, e.action) for e in entries],
                         [(admin.user_id, "delete_media")])

    async def test_contents_shared_with_other_media_stay(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        data = jpeg(colour=90)
        first = await self.upload(alice, data)
        second = await self.upload(alice, data)
        await self.hs.media.stop()
        keys = await self.stored_keys(first)
        await self.admin_ok(admin, "DELETE", f"/v1/media/{SERVER_NAME}/{first}")
        provider = self.provider()
        # Identical uploads share their bytes and thumbnails: the other still needs them.
        for key in keys:
            self.assertTrue(await provider.exists(key), key)
        r = await self.request(
            "GET", f"{CLIENT_MEDIA}/download/{SERVER_NAME}/{second}", token=alice.token
        )
        self.assertEqual(r.body, data)
        await self.admin_ok(admin, "DELETE", f"/v1/media/{SERVER_NAME}/{second}")
        for key in keys:
            self.assertFalse(await provider.exists(key), key)

    async def test_delete_a_users_media(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        bob = await self.user("bob")
        sizes = {await self.upload(alice, bytes([i]) * size, "text/plain"): size
                 for i, size in enumerate((10, 300, 20))}
        bobs = await self.upload(bob, b"bob's", "text/plain")
        path = f"/v1/users/{q(alice.user_id)}/media?order_by=media_length&dir=b&limit=2"
        body = await self.admin_ok(admin, "DELETE", path)
        largest = sorted(sizes, key=sizes.__getitem__, reverse=True)[:2]
        self.assertEqual(body, {"deleted_media": largest, "total": 2})
        for media_id in largest:
            self.assertFalse(await self.provider().exists(
                hashlib.sha256(bytes([list(sizes).index(media_id)]) * sizes[media_id]).hexdigest()
            ))
        r = await self.admin_get(admin, f"/v1/users/{q(alice.user_id)}/media")
        self.assertEqual(r.json["total"], 1)
        self.assertEqual(await self.download_code(bob, bobs), 200)
        entries = await self.audit(alice.user_id)
        self.assertEqual([(e.action, e.details) for e in entries],
                         [("delete_user_media", {"total": 2})])
        r = await self.admin_call(admin, "DELETE", f"/v1/users/{q('@x:' + REMOTE_SERVER)}/media")
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.admin_call(admin, "DELETE", f"/v1/users/{q(alice.user_id)}/media?dir=x")
        self.assertError(r, 400, "M_INVALID_PARAM")

    async def test_remote_media_cannot_be_deleted_by_id(self):
        admin = await self.make_admin()
        await self.cache_remote("RemoteMedia2", b"remote")
        r = await self.admin_call(admin, "DELETE", f"/v1/media/{REMOTE_SERVER}/RemoteMedia2")
        self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertIsNotNone(await self.hs.media_store.get_media(REMOTE_SERVER, "RemoteMedia2"))

    async def test_delete_old_media_by_date_and_size(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        small = await self.upload(alice, b"s" * 10, "text/plain")
        large = await self.upload(alice, b"L" * 5000, "text/plain")
        protected = await self.upload(alice, b"P" * 5000, "text/plain")
        await self.admin_ok(admin, "POST", f"/v1/media/protect/{protected}", {})
        await self.cache_remote("RemoteMedia3", b"R" * 5000)
        # Nothing is older than a time before the uploads.
        body = await self.admin_ok(admin, "POST", "/v1/media/delete?before_ts=40000000000", {})
        self.assertEqual(body, {"deleted_media": [], "total": 0})
        body = await self.admin_ok(
            admin, "POST", f"/v1/media/delete?before_ts={FUTURE}&size_gt=100", {}
        )
        self.assertEqual(body, {"deleted_media": [large], "total": 1})
        self.assertFalse(await self.provider().exists(hashlib.sha256(b"L" * 5000).hexdigest()))
        body = await self.admin_ok(
            admin, "POST", f"/v1/media/{SERVER_NAME}/delete?before_ts={FUTURE}", {}
        )
        self.assertEqual(body, {"deleted_media": [small], "total": 1})
        # Protected and remote media stay.
        self.assertEqual(await self.download_code(alice, protected), 200)
        self.assertIsNotNone(await self.hs.media_store.get_media(REMOTE_SERVER, "RemoteMedia3"))
        entries = await self.audit(SERVER_NAME)
        self.assertEqual([e.action for e in entries], ["delete_old_media"] * 3)
        self.assertEqual(
            entries[1].details,
            {"before_ts": FUTURE, "size_gt": 100, "keep_profiles": True, "total": 1},
        )

    async def test_keep_profiles_keeps_avatars(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        avatar = await self.upload(alice, jpeg(colour=200))
        room_avatar = await self.upload(alice, jpeg(colour=120))
        room_id = await self.create_room(alice)
        r = await self.request(
            "PUT", f"/_matrix/client/v3/profile/{q(alice.user_id)}/avatar_url",
            {"avatar_url": f"mxc://{SERVER_NAME}/{avatar}"}, token=alice.token,
        )
        self.assertEqual(r.code, 200, r)
        await self.put_state(alice, room_id, "m.room.avatar", {"url": f"mxc://{SERVER_NAME}/{room_avatar}"})
        body = await self.admin_ok(admin, "POST", f"/v1/media/delete?before_ts={FUTURE}", {})
        self.assertEqual(body["total"], 0)
        body = await self.admin_ok(
            admin, "POST", f"/v1/media/delete?before_ts={FUTURE}&keep_profiles=false", {}
        )
        self.assertEqual(sorted(body["deleted_media"]), sorted([avatar, room_avatar]))

    async def test_bad_dates_and_sizes(self):
        admin = await self.make_admin()
        for path in ("/v1/media/delete", "/v1/purge_media_cache"):
            r = await self.admin_call(admin, "POST", path, {})
            self.assertError(r, 400, "M_MISSING_PARAM")
            for before in ("-1", "1700000000", "yesterday", "1.5e12"):
                r = await self.admin_call(admin, "POST", f"{path}?before_ts={before}", {})
                self.assertError(r, 400, "M_INVALID_PARAM")
        for extra in ("size_gt=-1", "size_gt=big", "keep_profiles=maybe"):
            r = await self.admin_call(
                admin, "POST", f"/v1/media/delete?before_ts={FUTURE}&{extra}", {}
            )
            self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.admin_call(
            admin, "POST", f"/v1/media/{REMOTE_SERVER}/delete?before_ts={FUTURE}", {}
        )
        self.assertError(r, 400, "M_INVALID_PARAM")
        self.assertEqual(await self.hs.admin_audit_store.entries(), [])

    async def test_purge_remote_media_cache(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        local = await self.upload(alice, b"local bytes", "text/plain")
        await self.cache_remote("RemoteOld", b"old remote")
        await self.cache_remote("RemoteBad", b"quarantined remote")
        await self.admin_ok(admin, "POST", f"/v1/media/quarantine/{REMOTE_SERVER}/RemoteBad")
        body = await self.admin_ok(admin, "POST", "/v1/purge_media_cache?before_ts=40000000000")
        self.assertEqual(body, {"deleted": 0})
        body = await self.admin_ok(admin, "POST", f"/v1/purge_media_cache?before_ts={FUTURE}")
        self.assertEqual(body, {"deleted": 1})
        self.assertIsNone(await self.hs.media_store.get_media(REMOTE_SERVER, "RemoteOld"))
        self.assertFalse(await self.provider().exists(hashlib.sha256(b"old remote").hexdigest()))
        # Quarantined copies stay, so the quarantine holds; local media is not touched.
        self.assertIsNotNone(await self.hs.media_store.get_media(REMOTE_SERVER, "RemoteBad"))
        self.assertEqual(await self.download_code(alice, local), 200)
        entries = await self.audit(SERVER_NAME)
        self.assertEqual([(e.action, e.details["deleted"]) for e in entries],
                         [("purge_media_cache", 0), ("purge_media_cache", 1)])


class OnS3(MediaAdminTestCase):
    """A server storing media in a fresh moto S3 bucket."""

    async def start_server(self, **overrides: Any) -> Any:
        from tests.moto_server import moto_endpoint, new_bucket

        self.bucket = new_bucket()
        s3 = {
            "bucket": self.bucket,
            "endpoint_url": moto_endpoint(),
            "region": "us-east-1",
            "access_key_id": "testing",
            "secret_access_key": "testing",
            "timeout_ms": 5000,
        }
        return await super().start_server(media={"s3": s3}, **overrides)

    async def bucket_keys(self) -> set[str]:
        from tests.moto_server import s3_client

        return await threads.deferToThread(
            lambda: {o["Key"] for o in
                     s3_client().list_objects_v2(Bucket=self.bucket).get("Contents", [])}
        )


@on_both_engines
class DeleteMediaOnS3Tests(OnS3):
    async def test_delete_removes_the_objects(self):
        admin = await self.make_admin()
        alice = await self.user("alice")
        data = jpeg(colour=77)
        media_id = await self.upload(alice, data)
        kept = await self.upload(alice, os.urandom(1000), "application/octet-stream")
        await self.hs.media.stop()
        keys = set(await self.stored_keys(media_id))
        self.assertGreater(len(keys), 1)
        self.assertLessEqual(keys, await self.bucket_keys())
        await self.admin_ok(admin, "DELETE", f"/v1/media/{SERVER_NAME}/{media_id}")
        remaining = await self.bucket_keys()
        self.assertEqual(keys & remaining, set())
        self.assertEqual(remaining, set(await self.stored_keys(kept)))


class DeleteRacingUploadTests:
    """An admin deleting the last media item holding some contents while an identical
    upload arrives, which finds those contents already stored (uploads share them): the
    new item must end up with its bytes, whichever way the two interleave. Mixed into a
    test case per engine and storage provider."""

    async def assertStored(self, media_id: str, data: bytes) -> None:
        """The media item points at stored bytes, and they are `data` (read from the
        provider: S3 downloads are redirects to the bucket)."""
        info = await self.hs.media_store.get_media(SERVER_NAME, media_id)
        assert info is not None and info.sha256 is not None
        self.assertEqual(await self.hs.media_provider.fetch(info.sha256), data)

    async def test_upload_during_the_deletion_of_its_bytes_keeps_them(self):
        """The upload arrives after the deletion chose to remove the bytes, before they
        are gone: it must not count on them."""
        admin = await self.make_admin()
        alice = await self.user("alice")
        data = os.urandom(2000)
        old = await self.upload(alice, data, "application/octet-stream")
        provider = self.hs.media_provider
        delete = provider.delete
        racing: list[defer.Deferred[str]] = []

        async def delete_while_uploading(key: str) -> None:
            racing.append(defer.ensureDeferred(
                self.upload(alice, data, "application/octet-stream")
            ))
            await task.deferLater(reactor, 0.3, lambda: None)  # the upload goes as far as it can
            await delete(key)

        provider.delete = delete_while_uploading
        await self.admin_ok(admin, "DELETE", f"/v1/media/{SERVER_NAME}/{old}")
        provider.delete = delete
        await self.assertStored(await racing[0], data)

    async def test_deletion_between_the_uploads_check_and_its_row_keeps_the_bytes(self):
        """The upload found the bytes stored, then the deletion removed them before the
        upload's row was written: the upload must notice and store them again."""
        admin = await self.make_admin()
        alice = await self.user("alice")
        data = os.urandom(2000)
        old = await self.upload(alice, data, "application/octet-stream")
        provider = self.hs.media_provider
        exists = provider.exists
        deleted: list[Any] = []

        async def deleted_after_checking(key: str) -> bool:
            found = await exists(key)
            if not deleted:
                deleted.append(
                    await self.admin_call(admin, "DELETE", f"{ADMIN_MEDIA_PATH}/{old}")
                )
            return found

        provider.exists = deleted_after_checking
        new = await self.upload(alice, data, "application/octet-stream")
        provider.exists = exists
        self.assertEqual(deleted[0].code, 200, deleted[0])
        await self.assertStored(new, data)


ADMIN_MEDIA_PATH = f"/v1/media/{SERVER_NAME}"


@on_both_engines
class DeleteRacingUploadOnDiskTests(DeleteRacingUploadTests, MediaAdminTestCase):
    pass


@on_both_engines
class DeleteRacingUploadOnS3Tests(DeleteRacingUploadTests, OnS3):
    pass
