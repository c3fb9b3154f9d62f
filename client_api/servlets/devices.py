"""Device listing, renaming and deletion."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client_api.auth import require_user
from client_api.http import HeddleRequest, client_path, parse_json_object
from client_api.validation import RequestBody, parse_body
from homeserver.auth.devices import check_display_name
from homeserver.auth.uia import PASSWORD
from storage.stores.devices import Device

if TYPE_CHECKING:
    from homeserver.app import HomeServer


def device_json(device: Device) -> dict[str, Any]:
    return {
        "device_id": device.device_id,
        "display_name": device.display_name,
        "last_seen_ip": device.last_seen_ip,
        "last_seen_ts": device.last_seen_ts,
    }


class DevicesServlet:
    PATTERNS = [client_path("/devices")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=True)
        devices = await self._hs.devices.get_devices(requester.user_id)
        return 200, {"devices": [device_json(d) for d in devices]}


class DeviceUpdateBody(RequestBody):
    display_name: str | None = None


class DeleteBody(RequestBody):
    auth: dict[str, Any] | None = None


class DeviceServlet:
    PATTERNS = [client_path("/devices/(?P<device_id>[^/]+)")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_GET(self, request: HeddleRequest, device_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=True)
        return 200, device_json(await self._hs.devices.get_device(requester.user_id, device_id))

    async def on_PUT(self, request: HeddleRequest, device_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request, allow_guest=True)
        body = parse_body(parse_json_object(request), DeviceUpdateBody)
        display_name = check_display_name(body.display_name)
        if display_name is None:
            # Nothing to change, but the device must still exist.
            await self._hs.devices.get_device(requester.user_id, device_id)
        else:
            await self._hs.devices.set_display_name(requester.user_id, device_id, display_name)
        return 200, {}

    async def on_DELETE(self, request: HeddleRequest, device_id: str) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        raw = parse_json_object(request)
        parse_body(raw, DeleteBody)
        # No 404 for an unknown device: the spec answers 200 for a device that "had been
        # removed previously", so a retried deletion succeeds.
        async with self._hs.uia.operation(
            raw, "DELETE", f"/devices/{device_id}", [[PASSWORD]], user_id=requester.user_id
        ):
            await self._hs.devices.delete_devices(requester.user_id, [device_id])
        return 200, {}


class DeleteDevicesBody(RequestBody):
    devices: list[str]
    auth: dict[str, Any] | None = None


class DeleteDevicesServlet:
    PATTERNS = [client_path("/delete_devices")]

    def __init__(self, hs: HomeServer) -> None:
        self._hs = hs

    async def on_POST(self, request: HeddleRequest) -> tuple[int, Any]:
        requester = await require_user(self._hs, request)
        raw = parse_json_object(request)
        body = parse_body(raw, DeleteDevicesBody)
        async with self._hs.uia.operation(
            raw, "POST", "/delete_devices", [[PASSWORD]], user_id=requester.user_id
        ):
            await self._hs.devices.delete_devices(requester.user_id, body.devices)
        return 200, {}
