from nio import AsyncClient, LoginResponse

from tests.harness import HomeserverTestCase, nio, on_both_engines


@on_both_engines
class Smoke(HomeserverTestCase):
    async def test_versions(self):
        r = await self.request("GET", "/_matrix/client/versions")
        self.assertEqual(r.code, 200)

    async def test_nio_register_login(self):
        await self.register("alice")
        client = AsyncClient(self.base_url, "@alice:test.heddle")
        self.addCleanup(lambda: nio(client.close()))
        resp = await nio(client.login("correct horse battery", device_name="nio"))
        self.assertIsInstance(resp, LoginResponse)
        who = await nio(client.whoami())
        self.assertEqual(who.user_id, "@alice:test.heddle")
