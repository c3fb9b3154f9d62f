"""What another server may see of a room's history (spec: "Server behaviour" of history
visibility): an event is served whole when the room's history was shared or world-readable
at it, or when one of the server's users was joined (or, for `invited`, invited) at it;
otherwise it is served redacted, so the requesting server's DAG stays connected without
leaking content. A server's own users' membership events are always served whole."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from federation.event_checks import server_of
from homeserver.events.redaction import prune_event_dict
from homeserver.events.types import MEMBER

if TYPE_CHECKING:
    from homeserver.app import HomeServer
    from storage.stores.events import StoredEvent

HISTORY_VISIBILITY = ("m.room.history_visibility", "")
OPEN_VISIBILITIES = ("world_readable", "shared")


async def pdus_for_server(
    hs: HomeServer, origin: str, stored_events: Iterable[StoredEvent]
) -> list[dict[str, Any]]:
    """The PDUs as `origin` may see them (redactions applied first), in order."""
    events = list(stored_events)
    forms = await hs.event_serializer.federation_forms(events)
    groups = await hs.event_store.get_state_groups_for_events([s.event.event_id for s in events])
    allowed_by_group: dict[int | None, bool] = {}
    result = []
    for stored, form in zip(events, forms, strict=True):
        event = stored.event
        if event.type == MEMBER and event.state_key and server_of(event.state_key) == origin:
            result.append(form)
            continue
        group = groups.get(event.event_id, (None, None))[0]
        if group not in allowed_by_group:
            allowed_by_group[group] = await _server_may_see(hs, origin, group)
        result.append(form if allowed_by_group[group] else
                      prune_event_dict(form, event.room_version))
    return result


async def _server_may_see(hs: HomeServer, origin: str, group: int | None) -> bool:
    if group is None:
        # No known state before it (the create event, or an outlier): nothing to hide.
        return True
    state = await hs.state_store.get_state_group(group)
    visibility = "shared"
    visibility_id = state.get(HISTORY_VISIBILITY)
    if visibility_id is not None:
        event = await hs.event_store.get_event(visibility_id)
        value = event.content.get("history_visibility") if event is not None else None
        if isinstance(value, str):
            visibility = value
    if visibility in OPEN_VISIBILITIES:
        return True
    member_ids = [
        eid for (etype, key), eid in state.items() if etype == MEMBER and server_of(key) == origin
    ]
    members = await hs.event_store.get_events(member_ids)
    wanted = ("join", "invite") if visibility == "invited" else ("join",)
    return any(m.membership in wanted for m in members.values())
