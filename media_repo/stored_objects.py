"""Storing an object under its content hash and pointing a new row at it, safely against
an admin deleting the same object at the same moment.

Identical uploads share one stored object (and identical thumbnails another), so an
upload can find the object it needs already stored, just as a deletion of the last row
referring to it decides to remove it. `media_storage_keys` (schema 0022) orders the two:
the deletion marks the key (`deleting`, a new `generation`) in the transaction that finds
it unreferenced and clears the mark once the object is gone; the upload reads the
generation before it looks for the object, stores it if missing, and adds its row only if
the generation is unchanged (`claim_storage_key_txn`). Otherwise it waits for the deletion
to end and starts again, storing the object anew.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from homeserver.clock import Clock
from media_repo.providers.base import StorageProvider, StorageUnavailable
from storage.stores.media import MediaStore, StorageKeyChanged

T = TypeVar("T")

# How long an upload waits for a deletion of the object it needs (a storage round trip).
DELETION_POLL_S = 0.05
MAX_ATTEMPTS = 200


async def store_and_reference(
    clock: Clock,
    provider: StorageProvider,
    store: MediaStore,
    key: str,
    data: bytes,
    content_type: str,
    reference: Callable[[int], Awaitable[T]],
) -> T:
    """Make sure `data` is stored under `key`, then call `reference(generation)`, which
    adds the row pointing at it (raising `StorageKeyChanged` if a deletion overtook us).
    StorageUnavailable (timed out) if a deletion of the key never ends."""
    for _ in range(MAX_ATTEMPTS):
        generation = await store.storage_key_generation(key)
        if generation is not None:
            if not await provider.exists(key):
                await provider.store(key, data, content_type)
            try:
                return await reference(generation)
            except StorageKeyChanged:
                pass
        await clock.sleep(DELETION_POLL_S)
    raise StorageUnavailable(f"stored object {key} is still being deleted", timed_out=True)
