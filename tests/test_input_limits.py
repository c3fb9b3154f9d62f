"""Inputs that are well-formed JSON or URLs but still not acceptable: 400, never 500."""

from tests.harness import HomeserverTestCase, on_both_engines


@on_both_engines
class InputLimits(HomeserverTestCase):
    async def setup_room(self):
        self.token = (await self.register("alice"))["access_token"]
        r = await self.request("POST", "/_matrix/client/v3/createRoom", {}, token=self.token)
        self.room_id = r.json["room_id"]

    async def test_lone_surrogates_are_refused(self):
        await self.setup_room()
        raw = b'{"msgtype": "m.text", "body": "\\ud800"}'
        r = await self.request("PUT", f"/_matrix/client/v3/rooms/{self.room_id}/send/m.room.message/s1", raw=raw, token=self.token)
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request("PUT", "/_matrix/client/v3/profile/@alice:test.heddle/displayname", raw=b'{"displayname": "\\udfff"}', token=self.token)
        self.assertError(r, 400, "M_BAD_JSON")
        # A proper surrogate pair (an emoji) is fine.
        raw = b'{"msgtype": "m.text", "body": "\\ud83d\\ude00"}'
        r = await self.request("PUT", f"/_matrix/client/v3/rooms/{self.room_id}/send/m.room.message/s2", raw=raw, token=self.token)
        self.assertEqual(r.code, 200, r)

    async def test_huge_token_numbers_are_invalid(self):
        await self.setup_room()
        for path in (
            f"/_matrix/client/v3/rooms/{self.room_id}/messages?dir=b&from=t9999999999999999999-1",
            f"/_matrix/client/v3/rooms/{self.room_id}/messages?dir=b&from=s9999999999999999999",
            "/_matrix/client/v3/sync?since=s9999999999999999999_0",
        ):
            r = await self.request("GET", path, token=self.token)
            self.assertError(r, 400, "M_INVALID_PARAM")

    async def test_event_type_and_state_key_limits(self):
        await self.setup_room()
        long = "x" * 256
        r = await self.request("PUT", f"/_matrix/client/v3/rooms/{self.room_id}/send/{long}/t1", {}, token=self.token)
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request("PUT", f"/_matrix/client/v3/rooms/{self.room_id}/state/org.example/{long}", {}, token=self.token)
        self.assertError(r, 400, "M_BAD_JSON")
        ok = "y" * 255
        r = await self.request("PUT", f"/_matrix/client/v3/rooms/{self.room_id}/state/org.example/{ok}", {}, token=self.token)
        self.assertEqual(r.code, 200, r)
