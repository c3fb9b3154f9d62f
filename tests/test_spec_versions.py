"""/versions advertises a spec version only when Heddle has what it needs.

`homeserver/spec_versions.py` is the table: per version, the endpoints it added and whether
its other changes have been checked. Here one test per version names the endpoints it still
lacks, which must be exactly those `EXPECTED_MISSING` (tests/test_endpoint_coverage.py) says
other branches are building; as they land, the versions turn on by themselves, up to the
first one not yet `checked`.
"""

from __future__ import annotations

import importlib
from typing import Any

from twisted.trial import unittest

from client_api.http import Router
from client_api.routes import CLIENT_SERVLETS
from homeserver.spec_versions import (
    NOT_SERVED,
    SPEC_VERSIONS,
    SpecVersion,
    advertised_versions,
    example_path,
    missing_endpoints,
)
from tests.harness import HomeserverTestCase, on_both_engines
from tests.test_endpoint_coverage import ENDPOINTS_TSV, EXPECTED_MISSING, spec_endpoints


class _NoServer:
    """Servlets keep what they are built with; building the route table needs nothing."""

    def __getattr__(self, name: str) -> Any:
        return None


def route_table() -> Router:
    router = Router()
    for servlet_class in CLIENT_SERVLETS:
        router.register_servlet(servlet_class(_NoServer()))  # type: ignore[arg-type]
    return router


def expected_advertised() -> list[str]:
    """The versions before the first one with an expected gap or not yet checked."""
    names = []
    for version in SPEC_VERSIONS:
        if not version.checked or set(version.endpoints) & EXPECTED_MISSING:
            break
        names.append(version.name)
    return names


class SpecVersionTableTests(unittest.TestCase):
    def test_table_has_every_spec_endpoint_once(self) -> None:
        if not ENDPOINTS_TSV.exists():
            raise unittest.SkipTest(f"{ENDPOINTS_TSV} is not here")
        listed = [e for v in SPEC_VERSIONS for e in v.endpoints]
        self.assertEqual(len(listed), len(set(listed)))
        in_spec = {e.key for e in spec_endpoints()} - set(NOT_SERVED)
        self.assertEqual(sorted(in_spec - set(listed)), [])
        self.assertEqual(sorted(set(listed) - in_spec), [])

    def test_advertising_stops_at_the_first_incomplete_version(self) -> None:
        table_gap = SPEC_VERSIONS[4].endpoints[0]

        def serves_all_but_one(method: str, path: str) -> bool:
            return (method, path) != (table_gap[0], example_path(table_gap[1]))

        names = advertised_versions(lambda method, path: True)
        # Once every endpoint is served: r0.5.0 to v1.19, every version in the table.
        self.assertEqual((names[0], names[-1]), ("r0.5.0", "v1.19"))
        self.assertEqual(names, [v.name for v in SPEC_VERSIONS])
        self.assertEqual(
            advertised_versions(serves_all_but_one), [v.name for v in SPEC_VERSIONS[:4]]
        )


def _version_test(version: SpecVersion) -> Any:
    def test(self: unittest.TestCase) -> None:
        router = route_table()
        missing = missing_endpoints(version, router.serves)
        expected = sorted(set(version.endpoints) & EXPECTED_MISSING)
        self.assertEqual(
            sorted(missing),
            expected,
            f"{version.name} ({version.about or 'no new endpoints'}) lacks these endpoints; "
            "EXPECTED_MISSING must name exactly them",
        )

    test.__name__ = f"test_{version.name.replace('.', '_')}_has_its_endpoints"
    return test


def _behaviour_test(version: SpecVersion) -> Any:
    def test(self: unittest.TestCase) -> None:
        for name in version.verified_by:
            module_name, class_name, test_name = name.rsplit(".", 2)
            case = getattr(importlib.import_module(module_name), class_name, None)
            self.assertTrue(callable(getattr(case, test_name, None)), f"{name} does not exist")

    test.__name__ = f"test_{version.name.replace('.', '_')}_behaviour_is_tested"
    return test


class PerVersionTests(unittest.TestCase):
    def test_checked_versions_since_v1_12_name_their_tests(self) -> None:
        # From v1.12 on, checking a version means naming the tests that show its changes.
        since = [v.name for v in SPEC_VERSIONS].index("v1.12")
        for version in SPEC_VERSIONS[since:]:
            self.assertEqual(bool(version.verified_by), version.checked, version.name)


for _version in SPEC_VERSIONS:
    _test = _version_test(_version)
    setattr(PerVersionTests, _test.__name__, _test)
    if _version.verified_by:
        _test = _behaviour_test(_version)
        setattr(PerVersionTests, _test.__name__, _test)


@on_both_engines
class VersionsEndpointTests(HomeserverTestCase):
    async def test_versions_follow_the_table(self):
        r = await self.request("GET", "/_matrix/client/versions")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json["versions"], expected_advertised())
        self.assertEqual(r.json["versions"], advertised_versions(route_table().serves))
