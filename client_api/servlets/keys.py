"""End-to-end encryption keys: upload, query, claim, cross-signing keys and signatures.

Spec: api/client-server/keys.yaml and cross_signing.yaml. The bodies are checked for shape
here (400 M_BAD_JSON); the handler (`E2eKeysHandler`) checks what the keys say.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object
from client_api.validation import RequestBody, parse_body
from homeserver.auth.uia import PASSWORD
from homeserver.e2e.keys import DEFAULT_TIMEOUT_MS

if TYPE_CHECKING:
    from homeserver.app import HomeServer


class DeviceKeysBody(RequestBody):
    user_id: str
    device_id: str
    algorithms: list[str]
    keys: dict[str, str]
    signatures: dict[str, dict[str, str]]


class KeyObjectBody(RequestBody):
    key: str
    signatures: dict[str, dict[str, str]]
    fallback: bool | None = None


class KeysUploadBody(RequestBody):
    device_keys: DeviceKeysBody | None = None
    one_time_keys: dict[str, str | KeyObjectBody] | None = None
    fallback_keys: dict[str, str | KeyObjectBody] | None = None


class KeysQueryBody(RequestBody):
    device_keys: dict[str, list[str]]
    timeout: int = Field(default=DEFAULT_TIMEOUT_MS, ge=0)


class KeysClaimBody(RequestBody):
    one_time_keys: dict[str, dict[str, str]]
    timeout: int = Field(default=DEFAULT_TIMEOUT_MS, ge=0)


class CrossSigningKeyBody(RequestBody):
    user_id: str
    usage: list[str]
    keys: dict[str, str]
    signatures: dict[str, dict[str, str]] | None = None


class CrossSigningUploadBody(RequestBody):
    master_key: CrossSigningKeyBody | None = None
    self_signing_key: CrossSigningKeyBody | None = None
    user_signing_key: CrossSigningKeyBody | None = None
    auth: dict[str, Any] | None = None


def _without_nulls(raw: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """JSON null counts as absent for these optional fields."""
    return {k: v for k, v in raw.items() if not (k in fields and v is None)}


class KeysUploadServlet:
    PATTERNS = [client_path("/keys/upload")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=True)
        raw = _without_nulls(
            parse_json_object(request), ("device_keys", "one_time_keys", "fallback_keys")
        )
        parse_body(raw, KeysUploadBody)
        return 200, await self._hs.e2e_keys.upload_keys(requester.user_id, requester.device_id, raw)


class KeysQueryServlet:
    PATTERNS = [client_path("/keys/query")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=True)
        body = parse_body(parse_json_object(request), KeysQueryBody)
        return 200, await self._hs.e2e_keys.query_keys(
            requester.user_id, body.device_keys, body.timeout
        )


class KeysClaimServlet:
    PATTERNS = [client_path("/keys/claim")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        await require_user(self._hs, request, allow_guest=True)
        body = parse_body(parse_json_object(request), KeysClaimBody)
        return 200, await self._hs.e2e_keys.claim_keys(body.one_time_keys, body.timeout)


class CrossSigningUploadServlet:
    PATTERNS = [client_path("/keys/device_signing/upload")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        raw = _without_nulls(
            parse_json_object(request), ("master_key", "self_signing_key", "user_signing_key")
        )
        parse_body(raw, CrossSigningUploadBody)
        keys = self._hs.e2e_keys
        # The spec lets the first keys (and a retry of the same upload) through without
        # user-interactive auth; replacing keys needs it.
        if not await keys.cross_signing_upload_needs_auth(requester.user_id, raw):
            await keys.upload_cross_signing_keys(requester.user_id, raw)
            return 200, {}
        async with self._hs.uia.operation(
            raw, "POST", "/keys/device_signing/upload", [[PASSWORD]], user_id=requester.user_id
        ):
            await keys.upload_cross_signing_keys(requester.user_id, raw)
        return 200, {}


class SignaturesUploadBody(RequestBody):
    # user ID -> key ID (device ID or master public key) -> signed object.
    signed: dict[str, dict[str, dict[str, Any]]]


class SignaturesUploadServlet:
    PATTERNS = [client_path("/keys/signatures/upload")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        raw = parse_json_object(request)
        parse_body({"signed": raw}, SignaturesUploadBody)
        return 200, await self._hs.e2e_keys.upload_signatures(requester.user_id, raw)
