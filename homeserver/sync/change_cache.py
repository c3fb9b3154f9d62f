"""Which entities (rooms, users) changed after a stream position, answered from memory.

Incremental sync asks "which of this user's rooms changed since position P?". Answering by
scanning every room would make the cost grow with the number of rooms; this index makes it
grow with what changed. It remembers the latest position per entity for everything after
`earliest_known`; for older positions it cannot tell, and callers fall back to the database.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterator
from collections.abc import Set as AbstractSet

from sortedcontainers import SortedDict

from homeserver.caches import keep_newer_half, report_size

MAX_ENTITIES = 100_000


class StreamChangeCache:
    def __init__(self, name: str, current: int, max_entities: int = MAX_ENTITIES) -> None:
        self.name = name
        # Positions at or before this one may have changes we do not know about.
        self.earliest_known = current
        self._max_entities = max_entities
        self._latest: dict[Hashable, int] = {}
        # The same, by position: "what changed after P" walks only the positions after P
        # (a presence change of one user must not cost a scan of every user who changed).
        self._by_position: SortedDict = SortedDict()
        # The latest position of any change held (`earliest_known` when none).
        self._newest = current
        report_size(self, f"stream_changes_{name}", max_entities, len)

    def __len__(self) -> int:
        """Entities whose latest change is held."""
        return len(self._latest)

    def initialise(self, current: int) -> None:
        """Start knowing changes from `current` on (at start-up)."""
        self.earliest_known = current
        self._newest = current
        self._latest.clear()
        self._by_position.clear()

    def entity_changed(self, entity: Hashable, position: int) -> None:
        previous = self._latest.get(entity)
        if position <= (self.earliest_known if previous is None else previous):
            return
        if previous is not None:
            self._unindex(entity, previous)
        self._latest[entity] = position
        self._by_position.setdefault(position, set()).add(entity)
        self._newest = max(self._newest, position)
        if len(self._latest) > self._max_entities:
            self._evict()

    def _evict(self) -> None:
        # Forget the older half; positions before what we keep become unknown.
        self._latest, cutoff = keep_newer_half(self._latest)
        self.earliest_known = max(self.earliest_known, cutoff)
        for position in list(self._by_position.irange(maximum=cutoff)):
            del self._by_position[position]

    def _unindex(self, entity: Hashable, position: int) -> None:
        at = self._by_position.get(position)
        if at is not None:
            at.discard(entity)
            if not at:
                del self._by_position[position]

    def _changed_after(self, position: int) -> Iterator[Hashable]:
        for at in self._by_position.irange(minimum=position, inclusive=(False, True)):
            yield from self._by_position[at]

    def knows_since(self, position: int) -> bool:
        return position >= self.earliest_known

    def has_changed_since(self, entity: Hashable, position: int) -> bool:
        """True if it changed, or if we cannot tell (position too old)."""
        if not self.knows_since(position):
            return True
        return self._latest.get(entity, self.earliest_known) > position

    def changed_since(
        self, entities: Collection[Hashable], position: int
    ) -> set[Hashable] | None:
        """The subset of `entities` changed after `position`, or None if we cannot tell."""
        if not self.knows_since(position):
            return None
        if len(entities) > len(self._latest):
            # Callers often pass lists: one set, not a scan of `entities` per entry.
            wanted = entities if isinstance(entities, AbstractSet) else set(entities)
            return {e for e in self._changed_after(position) if e in wanted}
        return {e for e in entities if self._latest.get(e, self.earliest_known) > position}

    def any_changed_since(self, position: int) -> bool:
        """True if anything changed after `position`, or if we cannot tell."""
        return not self.knows_since(position) or self._newest > position

    def all_changed_since(self, position: int) -> set[Hashable] | None:
        if not self.knows_since(position):
            return None
        return set(self._changed_after(position))
