"""Sending a message is activity: an unavailable user comes back online."""

from tests.harness import HomeserverTestCase, on_both_engines

ALICE = "@alice:test.heddle"


@on_both_engines
class SendingIsActivity(HomeserverTestCase):
    async def test_unavailable_user_sending_a_message_is_online(self):
        token = (await self.register("alice"))["access_token"]
        r = await self.request("POST", "/_matrix/client/v3/createRoom", {}, token=token)
        room_id = r.json["room_id"]
        r = await self.request("PUT", f"/_matrix/client/v3/presence/{ALICE}/status", {"presence": "unavailable"}, token=token)
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"/_matrix/client/v3/presence/{ALICE}/status", token=token)
        self.assertEqual(r.json["presence"], "unavailable")
        r = await self.request("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1",
                               {"msgtype": "m.text", "body": "back"}, token=token)
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"/_matrix/client/v3/presence/{ALICE}/status", token=token)
        self.assertEqual(r.json["presence"], "online")
        self.assertTrue(r.json["currently_active"])
