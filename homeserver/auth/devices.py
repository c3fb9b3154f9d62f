from __future__ import annotations

import secrets
import string
from collections.abc import Collection
from typing import Protocol

from homeserver.auth.tokens import TokenHandler
from homeserver.caches import LruCache
from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from storage.stores.devices import DeletedDevices, Device, DeviceStore

MAX_DEVICE_DISPLAY_NAME_LENGTH = 100
MAX_DEVICE_ID_LENGTH = 255
# Record last-seen at most this often per device, so every request is not a write.
LAST_SEEN_INTERVAL_MS = 60 * 1000
# Devices whose last-seen write is remembered; one forgotten early is written again sooner.
LAST_SEEN_CACHE_SIZE = 100_000


class DeviceListUpdates(Protocol):
    """Who hears of device changes (`DeviceListHandler`)."""

    async def device_changed(
        self, user_id: str, device_ids: Collection[str], deleted: bool = False
    ) -> None: ...


def generate_device_id() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(10))


def check_display_name(display_name: object) -> str | None:
    if display_name is None:
        return None
    if not isinstance(display_name, str):
        raise MatrixError(400, Codes.BAD_JSON, "'display_name' must be a string")
    if len(display_name) > MAX_DEVICE_DISPLAY_NAME_LENGTH:
        raise MatrixError(
            400,
            Codes.TOO_LARGE,
            f"Device display name may not be longer than {MAX_DEVICE_DISPLAY_NAME_LENGTH}",
        )
    return display_name


def check_device_id(device_id: object) -> str:
    if not isinstance(device_id, str) or not device_id:
        raise MatrixError(400, Codes.BAD_JSON, "'device_id' must be a non-empty string")
    if len(device_id) > MAX_DEVICE_ID_LENGTH or not device_id.isprintable():
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid device ID")
    return device_id


class DeviceHandler:
    def __init__(
        self,
        clock: Clock,
        store: DeviceStore,
        tokens: TokenHandler,
        device_lists: DeviceListUpdates | None = None,
    ) -> None:
        self._clock = clock
        self._store = store
        self._tokens = tokens
        # (user_id, device_id) -> when last-seen was written, for LAST_SEEN_INTERVAL_MS.
        self._last_seen_written: LruCache[tuple[str, str], int] = LruCache(
            "device_last_seen_written",
            LAST_SEEN_CACHE_SIZE,
            ttl_s=LAST_SEEN_INTERVAL_MS / 1000,
            clock=clock,
        )
        # Told of new, renamed and deleted devices.
        self.device_lists = device_lists

    async def ensure_device(
        self, user_id: str, device_id: str | None, display_name: str | None
    ) -> tuple[str, bool]:
        """Create the device (generating an ID if none is given); returns (id, created)."""
        if device_id is None:
            device_id = generate_device_id()
        created = await self._store.ensure_device(
            user_id, device_id, display_name, self._clock.time_msec()
        )
        if created and self.device_lists is not None:
            await self.device_lists.device_changed(user_id, [device_id])
        return device_id, created

    async def get_devices(self, user_id: str) -> list[Device]:
        return await self._store.get_devices(user_id)

    async def get_device(self, user_id: str, device_id: str) -> Device:
        device = await self._store.get_device(user_id, device_id)
        if device is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Device not found")
        return device

    async def set_display_name(self, user_id: str, device_id: str, display_name: str) -> None:
        if not await self._store.set_display_name(user_id, device_id, display_name):
            raise MatrixError(404, Codes.NOT_FOUND, "Device not found")
        if self.device_lists is not None:
            await self.device_lists.device_changed(user_id, [device_id])

    async def delete_devices(self, user_id: str, device_ids: list[str]) -> None:
        """Delete devices with their keys and to-device messages, revoke their tokens, and
        tell the user's room-mates (unknown device IDs are ignored, as in the spec)."""
        await self._deleted(user_id, await self._store.delete_devices(user_id, device_ids))

    async def delete_all_devices(self, user_id: str, except_device_id: str | None = None) -> None:
        await self._deleted(
            user_id, await self._store.delete_all_devices(user_id, except_device_id)
        )

    async def _deleted(self, user_id: str, deleted: DeletedDevices) -> None:
        self._tokens.forget(deleted.revoked_token_ids)
        for device_id in deleted.device_ids:
            self._last_seen_written.pop((user_id, device_id))
        if deleted.device_ids and self.device_lists is not None:
            await self.device_lists.device_changed(user_id, deleted.device_ids, deleted=True)

    async def record_activity(
        self, user_id: str, device_id: str, ip: str, user_agent: str | None
    ) -> None:
        key = (user_id, device_id)
        if self._last_seen_written.get(key) is not None:
            return
        now = self._clock.time_msec()
        self._last_seen_written.set(key, now)
        await self._store.record_last_seen(user_id, device_id, ip, user_agent, now)
