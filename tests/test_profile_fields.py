"""Extended profile fields (spec v1.16): GET/PUT/DELETE /profile/{userId}/{keyName} for any
key, the whole profile in GET /profile and in the federation profile query, and the spec's
limits. Over real HTTP on both engines; two Heddles for the federation part.

Spec: api/client-server/profile.yaml, api/client-server/capabilities.yaml (m.profile_fields).
"""

from __future__ import annotations

from urllib.parse import quote

from tests.federation_helpers import FederationTestCase
from tests.harness import SERVER_NAME, HomeserverTestCase, ensure_deferred, on_both_engines

API = "/_matrix/client/v3"
ALICE = f"@alice:{SERVER_NAME}"
BOB = f"@bob:{SERVER_NAME}"


def field_path(user_id: str, key: str | None = None) -> str:
    path = f"{API}/profile/{quote(user_id, safe='@:')}"
    return f"{path}/{quote(key, safe='')}" if key is not None else path


@on_both_engines
class ProfileFields(HomeserverTestCase):
    async def setUp(self):
        await super().setUp()
        self.alice = (await self.register("alice"))["access_token"]
        self.bob = (await self.register("bob"))["access_token"]

    async def put(self, key: str, value: object, user_id: str = ALICE, token: str | None = None):
        return await self.request(
            "PUT", field_path(user_id, key), {key: value}, token=token or self.alice
        )

    async def test_set_get_and_delete_custom_fields(self):
        for key, value in (
            ("m.tz", "Europe/London"),
            ("org.example.job", {"title": "Engineer", "since": 2020}),
            ("org.example.nothing", None),
        ):
            r = await self.put(key, value)
            self.assertEqual((r.code, r.json), (200, {}), key)
            r = await self.request("GET", field_path(ALICE, key))
            self.assertEqual((r.code, r.json), (200, {key: value}), key)
        r = await self.put("displayname", "Alice")
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", field_path(ALICE))
        self.assertEqual(
            r.json,
            {
                "displayname": "Alice",
                "m.tz": "Europe/London",
                "org.example.job": {"title": "Engineer", "since": 2020},
                "org.example.nothing": None,
            },
        )
        # Overwritten, then deleted (deleting again is still 200).
        r = await self.put("m.tz", "Europe/Paris")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(
            (await self.request("GET", field_path(ALICE, "m.tz"))).json["m.tz"], "Europe/Paris"
        )
        for _ in range(2):
            r = await self.request("DELETE", field_path(ALICE, "m.tz"), token=self.alice)
            self.assertEqual((r.code, r.json), (200, {}))
        r = await self.request("GET", field_path(ALICE, "m.tz"))
        self.assertError(r, 404, "M_NOT_FOUND")
        self.assertNotIn("m.tz", (await self.request("GET", field_path(ALICE))).json)

    async def test_delete_displayname_clears_it(self):
        await self.put("displayname", "Alice")
        r = await self.request("DELETE", field_path(ALICE, "displayname"), token=self.alice)
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", field_path(ALICE, "displayname"))
        self.assertError(r, 404, "M_NOT_FOUND")

    async def test_bad_key_names(self):
        for key in ("Org.Example", "nodots", "org..example", "org.example-dash", "1org.example"):
            for method in ("PUT", "GET", "DELETE"):
                r = await self.request(
                    method,
                    field_path(ALICE, key),
                    {key: 1} if method == "PUT" else None,
                    token=self.alice,
                )
                self.assertError(r, 400, "M_INVALID_PARAM")
        long_key = "org.example." + "a" * 250
        r = await self.put(long_key, 1)
        self.assertError(r, 400, "M_KEY_TOO_LARGE")
        r = await self.request("GET", field_path(ALICE, long_key))
        self.assertError(r, 400, "M_KEY_TOO_LARGE")

    async def test_bad_bodies(self):
        r = await self.request("PUT", field_path(ALICE, "m.tz"), {"other": "x"}, token=self.alice)
        self.assertError(r, 400, "M_MISSING_PARAM")
        r = await self.put("m.tz", 3)
        self.assertError(r, 400, "M_BAD_JSON")
        r = await self.request("PUT", field_path(ALICE, "m.tz"), raw=b"[1]", token=self.alice)
        self.assertError(r, 400, "M_BAD_JSON")

    async def test_profile_too_large(self):
        # Just under 64 KiB in one field, then one more byte's worth elsewhere.
        r = await self.put("org.example.big", "x" * 60_000)
        self.assertEqual(r.code, 200, r)
        r = await self.put("org.example.more", "y" * 6_000)
        self.assertError(r, 400, "M_PROFILE_TOO_LARGE")
        self.assertNotIn("org.example.more", (await self.request("GET", field_path(ALICE))).json)
        # Replacing the big field counts only the new value.
        r = await self.put("org.example.big", "z" * 65_000)
        self.assertEqual(r.code, 200, r)
        r = await self.put("org.example.big", "z" * 65_600)
        self.assertError(r, 400, "M_PROFILE_TOO_LARGE")

    async def test_someone_elses_profile(self):
        r = await self.put("m.tz", "Europe/London", user_id=BOB)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.request("DELETE", field_path(BOB, "m.tz"), token=self.alice)
        self.assertError(r, 403, "M_FORBIDDEN")
        r = await self.request("PUT", field_path(ALICE, "m.tz"), {"m.tz": "UTC"})
        self.assertError(r, 401, "M_MISSING_TOKEN")

    async def test_capability(self):
        r = await self.request("GET", f"{API}/capabilities", token=self.alice)
        self.assertEqual(r.json["capabilities"]["m.profile_fields"], {"enabled": True})

    async def test_erasing_deactivation_removes_fields(self):
        await self.put("m.tz", "Europe/London")
        r = await self.request(
            "POST",
            f"{API}/account/deactivate",
            {
                "erase": True,
                "auth": {
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": "alice"},
                    "password": "correct horse battery",
                },
            },
            token=self.alice,
        )
        self.assertEqual(r.code, 200, r)
        r = await self.request("GET", field_path(ALICE, "m.tz"))
        self.assertError(r, 404, "M_NOT_FOUND")


@on_both_engines
class ProfileFieldsOverFederation(FederationTestCase):
    @ensure_deferred
    async def test_remote_profile_carries_every_field(self):
        a, b, alice, bob = await self.two_peers()
        for key, value in (("m.tz", "Europe/Berlin"), ("org.example.pets", ["cat"])):
            r = await self.user_call(alice, "PUT", field_path(alice.user_id, key), {key: value})
            self.assertEqual(r.code, 200, r)
        r = await self.user_call(bob, "GET", field_path(alice.user_id))
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["m.tz"], "Europe/Berlin")
        self.assertEqual(r.json["org.example.pets"], ["cat"])
        r = await self.user_call(bob, "GET", field_path(alice.user_id, "org.example.pets"))
        self.assertEqual((r.code, r.json), (200, {"org.example.pets": ["cat"]}))
        r = await self.user_call(bob, "GET", field_path(alice.user_id, "org.example.none"))
        self.assertError(r, 404, "M_NOT_FOUND")
        # The query itself, field by field.
        client = b.hs.federation_client
        body = await client.get_json(
            a.server_name,
            "/_matrix/federation/v1/query/profile",
            {"user_id": [alice.user_id], "field": ["m.tz"]},
        )
        self.assertEqual(body, {"m.tz": "Europe/Berlin"})
