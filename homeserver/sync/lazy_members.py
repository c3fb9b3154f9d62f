"""Which lazily loaded membership events each device has been sent, so that incremental syncs
can leave out the redundant ones (spec: "Lazy-loading room members": the server MAY assume
clients remember the membership events they were sent, unless the filter sets
`include_redundant_members`).

An entry remembers the sync position (`next_batch`'s events position) of the response that
carried the event. A later sync trusts it only when its `since` is at or past that position,
so a client retrying an older token (its response lost) is sent the events again; and only
when it was sent since the device's latest initial sync, after which a client is assumed to
have forgotten everything. In memory only: after a restart, or on another process, events
are sent again, which the spec allows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from homeserver.caches import LruCache

# (user, device, room, member) entries kept; the least recently used are forgotten (and
# then merely sent again).
SENT_MEMBERS_SIZE = 200_000
DEVICES_SIZE = 50_000


class LazyMembersSent:
    def __init__(self) -> None:
        # (user_id, device_id, room_id, member) -> (event_id, position it was sent at).
        self._sent: LruCache[tuple[str, str, str, str], tuple[str, int]] = LruCache(
            "sync_lazy_members_sent", SENT_MEMBERS_SIZE
        )
        # (user_id, device_id) -> position of the device's latest initial sync (or of the
        # first incremental one seen, when that was not seen).
        self._epochs: LruCache[tuple[str, str], int] = LruCache(
            "sync_lazy_members_epochs", DEVICES_SIZE
        )

    def start(self, user_id: str, device_id: str, since: int | None, now: int) -> None:
        """Called once per lazy-loading sync pass, which reaches `now`: an initial sync (no
        `since`) starts afresh."""
        device = (user_id, device_id)
        if since is None:
            self._epochs.set(device, now)
        elif self._epochs.peek(device) is None:
            self._epochs.set(device, since + 1)

    def unsent(
        self, user_id: str, device_id: str, room_id: str, since: int,
        members: Mapping[str, str],
    ) -> dict[str, str]:
        """Of `members` (member -> membership event id), those the device may not have."""
        epoch = self._epochs.get((user_id, device_id))
        if epoch is None:
            return dict(members)
        result = {}
        for member, event_id in members.items():
            sent = self._sent.get((user_id, device_id, room_id, member))
            if sent is None or sent[0] != event_id or not epoch <= sent[1] <= since:
                result[member] = event_id
        return result

    def record(
        self, user_id: str, device_id: str, room_id: str, position: int,
        members: Iterable[tuple[str, str]],
    ) -> None:
        """The device is being sent these (member, event id) pairs in a response whose
        `next_batch` is at `position`."""
        epoch = self._epochs.get((user_id, device_id))
        for member, event_id in members:
            key = (user_id, device_id, room_id, member)
            sent = self._sent.peek(key)
            if (
                sent is not None
                and sent[0] == event_id
                and epoch is not None
                and epoch <= sent[1] <= position
            ):
                continue  # already known from an earlier response: keep that position
            self._sent.set(key, (event_id, position))
