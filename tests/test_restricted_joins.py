"""Restricted and knock_restricted rooms: members of an allowed room join without invite."""

import urllib.parse

from tests.harness import HomeserverTestCase, on_both_engines

API = "/_matrix/client/v3"


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@on_both_engines
class RestrictedJoins(HomeserverTestCase):
    async def setup_rooms(self, join_rule: str, version: str = "11"):
        self.alice = (await self.register("alice"))["access_token"]
        self.bob = (await self.register("bob"))["access_token"]
        self.carol = (await self.register("carol"))["access_token"]
        r = await self.request("POST", f"{API}/createRoom", {"preset": "public_chat"}, token=self.alice)
        self.space = r.json["room_id"]
        r = await self.request("POST", f"{API}/createRoom", {
            "room_version": version,
            "initial_state": [{
                "type": "m.room.join_rules", "state_key": "",
                "content": {"join_rule": join_rule,
                            "allow": [{"type": "m.room_membership", "room_id": self.space}]},
            }],
        }, token=self.alice)
        self.assertEqual(r.code, 200, r)
        self.room = r.json["room_id"]
        r = await self.request("POST", f"{API}/join/{q(self.space)}", {}, token=self.bob)
        self.assertEqual(r.code, 200, r)

    async def test_member_of_allowed_room_joins_and_others_cannot(self):
        await self.setup_rooms("restricted")
        r = await self.request("POST", f"{API}/join/{q(self.room)}", {}, token=self.bob)
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", f"{API}/rooms/{q(self.room)}/state/m.room.member/{q('@bob:test.heddle')}",
                               token=self.bob)
        self.assertEqual(r.json["join_authorised_via_users_server"], "@alice:test.heddle")
        r = await self.request("POST", f"{API}/join/{q(self.room)}", {}, token=self.carol)
        self.assertError(r, 403, "M_FORBIDDEN")

    async def test_knock_restricted_in_v10_plus(self):
        await self.setup_rooms("knock_restricted", version="10")
        r = await self.request("POST", f"{API}/join/{q(self.room)}", {}, token=self.bob)
        self.assertEqual(r.code, 200, r)
        # Not in the allowed room: carol can knock instead.
        r = await self.request("POST", f"{API}/knock/{q(self.room)}", {}, token=self.carol)
        self.assertEqual(r.code, 200, r)

    async def test_v12_room(self):
        await self.setup_rooms("restricted", version="12")
        r = await self.request("POST", f"{API}/join/{q(self.room)}", {}, token=self.bob)
        self.assertEqual(r.code, 200, r)
