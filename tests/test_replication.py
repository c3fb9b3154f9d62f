"""Two processes' worth of Heddle sharing one database: revocation reaches both at once."""

import uuid

from twisted.internet import defer, reactor, task

from homeserver.app import HomeServer
from tests.harness import HomeserverTestCase, on_both_engines


@on_both_engines
class TokenRevocationFanOut(HomeserverTestCase):
    async def start_second_server(self) -> str:
        """Another HomeServer on the same database and Redis; returns its client base URL."""
        other = HomeServer(self.hs.config, reactor, writer_lock=False)
        await other.setup()
        other.start_listening()
        self.addCleanup(lambda: defer.ensureDeferred(other.stop()))
        return f"http://127.0.0.1:{other.ports[0].getHost().port}"

    def setUp(self):
        prefix = f"heddle-test-{uuid.uuid4().hex}"
        return defer.ensureDeferred(
            self.start_server(redis={"enabled": True, "channel_prefix": prefix})
        )

    async def test_logout_on_one_process_revokes_on_the_other(self):
        other_url = await self.start_second_server()
        session = await self.register("alice")
        token = session["access_token"]
        # The second process validates (and caches) the token.
        r = await self.request("GET", "/_matrix/client/v3/account/whoami", token=token, base_url=other_url)
        self.assertEqual(r.code, 200, r)
        r = await self.request("POST", "/_matrix/client/v3/logout", {}, token=token)
        self.assertEqual(r.code, 200, r)
        # Pub/sub delivery is asynchronous but quick; allow it a moment, not a cache TTL.
        for _ in range(50):
            r = await self.request(
                "GET", "/_matrix/client/v3/account/whoami", token=token, base_url=other_url
            )
            if r.code == 401:
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        self.assertError(r, 401, "M_UNKNOWN_TOKEN")

    async def test_without_redis_message_cache_would_hide_revocation(self):
        """Guard for the test above: the second process really does serve from its cache."""
        other_url = await self.start_second_server()
        session = await self.register("bob")
        token = session["access_token"]
        r = await self.request("GET", "/_matrix/client/v3/account/whoami", token=token, base_url=other_url)
        self.assertEqual(r.code, 200)
        # Revoke behind both processes' backs (straight in the database): the cached entry
        # keeps answering until the TTL, which shows the fan-out above is what made it fail.
        await self.hs.token_store.revoke_device_tokens("@bob:test.heddle", session["device_id"])
        r = await self.request("GET", "/_matrix/client/v3/account/whoami", token=token, base_url=other_url)
        self.assertEqual(r.code, 200)

