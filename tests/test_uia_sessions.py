"""A completed user-interactive auth session authorises one operation, not more."""

from tests.harness import PASSWORD, HomeserverTestCase, on_both_engines, password_auth


@on_both_engines
class UiaSessionReuse(HomeserverTestCase):
    async def test_completed_session_cannot_be_replayed(self):
        await self.register("alice")
        main = await self.login("alice")
        second = await self.login("alice")
        third = await self.login("alice")
        token = main["access_token"]
        r = await self.request("POST", "/_matrix/client/v3/delete_devices",
                               {"devices": [second["device_id"]]}, token=token)
        self.assertEqual(r.code, 401)
        session = r.json["session"]
        auth = password_auth(session=session)
        r = await self.request("POST", "/_matrix/client/v3/delete_devices",
                               {"devices": [second["device_id"]], "auth": auth}, token=token)
        self.assertEqual(r.code, 200, r)
        # The same session, now for another device: refused, the third device survives.
        r = await self.request("POST", "/_matrix/client/v3/delete_devices",
                               {"devices": [third["device_id"]], "auth": {"session": session}},
                               token=token)
        self.assertError(r, 400, "M_INVALID_PARAM")
        r = await self.request("GET", "/_matrix/client/v3/account/whoami", token=third["access_token"])
        self.assertEqual(r.code, 200)

    async def test_a_failed_stage_says_what_was_completed(self):
        await self.register("alice")
        token = (await self.login("alice"))["access_token"]
        r = await self.request("POST", "/_matrix/client/v3/account/deactivate", {}, token=token)
        self.assertEqual(r.code, 401, r)
        auth = password_auth(session=r.json["session"])
        auth["password"] = "not the password"
        r = await self.request(
            "POST", "/_matrix/client/v3/account/deactivate", {"auth": auth}, token=token
        )
        self.assertEqual(r.code, 401, r)
        self.assertEqual(r.json["errcode"], "M_FORBIDDEN")
        self.assertEqual(r.json["completed"], [])
        self.assertIn(["m.login.password"], [f["stages"] for f in r.json["flows"]])

    async def test_registration_session_is_single_use(self):
        r = await self.request("POST", "/_matrix/client/v3/register", {"username": "a1", "password": PASSWORD})
        session = r.json["session"]
        body = {"username": "a1", "password": PASSWORD, "auth": {"type": "m.login.dummy", "session": session}}
        r = await self.request("POST", "/_matrix/client/v3/register", body)
        self.assertEqual(r.code, 200, r)
        body = {"username": "a2", "password": PASSWORD, "auth": {"session": session}}
        r = await self.request("POST", "/_matrix/client/v3/register", body)
        self.assertError(r, 400, "M_INVALID_PARAM")


@on_both_engines
class UiaConcurrentUse(HomeserverTestCase):
    async def test_two_concurrent_operations_cannot_share_a_session(self):
        from twisted.internet import defer

        await self.register("alice")
        token = (await self.login("alice"))["access_token"]
        path = "/_matrix/client/v3/account/password"
        r = await self.request("POST", path, {"new_password": "short"}, token=token)
        session = r.json["session"]
        auth = password_auth(session=session)
        # The stage completes, then the operation fails (weak password): the session lives on.
        r = await self.request("POST", path, {"new_password": "short", "auth": auth}, token=token)
        self.assertError(r, 400, "M_WEAK_PASSWORD")
        results = await defer.gatherResults([
            defer.ensureDeferred(self.request(
                "POST", path,
                {"new_password": new, "auth": {"session": session}, "logout_devices": False},
                token=token,
            ))
            for new in ("first new password", "second new password")
        ])
        self.assertEqual(sorted(r.code for r in results), [200, 400], results)


@on_both_engines
class RegistrationSessionsAreRateLimited(HomeserverTestCase):
    config_overrides = {
        "rate_limits": {
            "enabled": True,
            "registration_sessions_per_address": {"per_second": 0.001, "burst_count": 3},
        }
    }

    async def test_opening_sessions_without_auth_is_limited(self):
        codes = []
        for i in range(5):
            r = await self.request("POST", "/_matrix/client/v3/register", {"username": f"u{i}", "password": PASSWORD})
            codes.append(r.code)
        self.assertEqual(codes, [401, 401, 401, 429, 429])
        self.assertError(r, 429, "M_LIMIT_EXCEEDED")
